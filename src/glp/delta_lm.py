"""ΔLM loss: how much next-token cross-entropy rises when a layer's activations are replaced by a reconstruction.

On held-out documents, every non-BOS position of block `layer`'s residual output is replaced by
  (a) GLP: normalize, noise to t=0.5, denoise along the 20-step schedule (SDEdit), denormalize;
  (b) PCA-k: projection onto the top-k principal components (normalized space) of train activations, k either
      given or matched so that its held-out reconstruction MSE is at most the GLP's (equal-error budget);
  (c) mean-ablation: the train mean.
The report is the mean CE increase over predicted tokens (with a bootstrap CI over tokens) and each method's
reconstruction MSE in normalized space. BOS keeps its activation (the prior never saw BOS rows).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from glp.config import DeltaLMConfig
from glp.artifacts import write_atomic
from glp.evaluate import bootstrap_ci
from glp.lm import SourceLM
from glp.prior import Prior

Replace = Callable[[Tensor], Tensor]  # rows (n, d) -> reconstructions (n, d)


@contextmanager
def replace_positions(lm: SourceLM, layer: int, keep: Tensor, fn: Replace):
    """While active, block `layer`'s output rows where `keep` (B, T) is True are replaced by `fn` of them."""

    def hook(_module: torch.nn.Module, _inputs: tuple, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[keep] = fn(hidden[keep]).to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = lm.block(layer).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def heldout_batches(lm: SourceLM, texts: Sequence[str], max_seq_len: int, max_tokens: int,
                    batch_size: int = 32) -> list[tuple[Tensor, Tensor]]:
    """Right-padded (ids (B, T), mask (B, T)) batches of `[BOS] + tokens`, up to `max_tokens` non-BOS tokens."""
    from glp.activations import tokenize_doc

    seqs, total = [], 0
    for t in texts:
        s = tokenize_doc(lm, t, max_seq_len)
        if len(s) < 2:
            continue
        seqs.append(s[: 1 + max_tokens - total])
        total += len(seqs[-1]) - 1
        if total >= max_tokens:
            break
    out = []
    for b in range(0, len(seqs), batch_size):
        chunk = seqs[b : b + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), lm.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(chunk):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        out.append((ids, mask))
    return out


@torch.inference_mode()
def token_ce(lm: SourceLM, layer: int, batches: Sequence[tuple[Tensor, Tensor]], fn: Replace | None) -> np.ndarray:
    """Next-token CE (nats) of every predicted token, (n_tokens,), with block `layer` replaced by `fn` (None = clean)."""
    ces = []
    for ids, mask in batches:
        ids, mask = ids.to(lm.device), mask.to(lm.device)
        keep = mask.bool().clone()
        keep[:, 0] = False  # BOS keeps its activation
        ctx = replace_positions(lm, layer, keep, fn) if fn is not None else _null()
        with ctx:
            logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")
        ces.append(ce[mask[:, 1:].bool()].cpu().numpy())
    return np.concatenate(ces).astype(np.float64)


@contextmanager
def _null():
    yield


def fit_pca(rows: np.ndarray) -> tuple[Tensor, Tensor]:
    """Mean (d,) and principal axes (d, d), columns by decreasing variance, of rows (n, d)."""
    x = torch.as_tensor(rows, dtype=torch.float64)
    mu = x.mean(0)
    cov = (x - mu).T @ (x - mu) / max(len(x) - 1, 1)
    evals, evecs = torch.linalg.eigh(cov)
    return mu.float(), evecs.flip(1).float()


def pca_mse_by_k(z: Tensor, mu: Tensor, axes: Tensor) -> np.ndarray:
    """Reconstruction MSE (per dim) of rows z (n, d) with the top-k axes, for k = 0..d, (d + 1,)."""
    c = (z - mu) @ axes  # (n, d) coefficients
    total = ((z - mu) ** 2).sum(1).mean()
    explained = torch.cat([torch.zeros(1), (c**2).mean(0).cumsum(0)])
    return ((total - explained) / z.shape[1]).clamp(min=0).double().numpy()


def delta_lm_report(lm: SourceLM, layer: int, prior: Prior, texts: Sequence[str], train_rows: np.ndarray,
                    cfg: DeltaLMConfig, max_seq_len: int = 128) -> dict[str, Any]:
    """ΔCE of GLP, PCA-k and mean-ablation reconstructions on held-out `texts`; train_rows (n, d) fit the PCA."""
    from glp.stats import Normalizer
    from glp.steer import sdedit, sdedit_levels

    norm = Normalizer(prior.normalizer.mean.cpu(), prior.normalizer.std.cpu())
    batches = heldout_batches(lm, texts, max_seq_len, cfg.max_tokens)
    clean = token_ce(lm, layer, batches, None)

    # the layer's held-out rows (non-BOS positions), to measure reconstruction error in normalized space
    from glp.lm import capture_residual, run_until_captured

    rows = []
    with torch.inference_mode(), capture_residual(lm, layer, stop=True) as box:
        for ids, mask in batches:
            acts = run_until_captured(lm, box, input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device))
            keep = mask.bool().clone()
            keep[:, 0] = False
            rows.append(acts[keep.to(acts.device)].float().cpu())
    z = norm.normalize(torch.cat(rows))  # (n, d)

    g = torch.Generator(device=next(prior.denoiser.parameters()).device)

    def glp(a: Tensor) -> Tensor:
        return sdedit(prior, a, cfg.t_start, cfg.steps, "euler", g).to(a.device)

    g.manual_seed(cfg.seed)
    glp_mse = float(((norm.normalize(glp(norm.denormalize(z)).cpu()) - z) ** 2).mean())
    mu, axes = fit_pca(norm.normalize(torch.as_tensor(train_rows[: cfg.pca_rows], dtype=torch.float32)).numpy())
    mse_k = pca_mse_by_k(z, mu, axes)
    k = int(np.argmax(mse_k <= glp_mse)) if cfg.pca_k == "match" and (mse_k <= glp_mse).any() else (
        z.shape[1] if cfg.pca_k == "match" else int(cfg.pca_k))
    P = axes[:, :k]

    def pca(a: Tensor) -> Tensor:
        zz = norm.normalize(a.float().cpu())
        return norm.denormalize(mu + (zz - mu) @ P @ P.T).to(a.device)

    def mean_ablate(a: Tensor) -> Tensor:
        return norm.mean.to(a).expand_as(a).clone()

    methods: dict[str, dict[str, Any]] = {}
    for name, fn, mse in (("glp", glp, glp_mse), ("pca", pca, float(mse_k[k])),
                          ("mean_ablation", mean_ablate, float(mse_k[0]))):
        g.manual_seed(cfg.seed)
        d = token_ce(lm, layer, batches, fn) - clean
        methods[name] = {"delta_ce": float(d.mean()), "delta_ce_ci": bootstrap_ci(d, cfg.n_bootstrap, cfg.seed),
                         "recon_mse_normalized": mse}
    methods["pca"]["k"] = k
    return {"layer": layer, "n_tokens": int(len(clean)), "clean_ce": float(clean.mean()), "methods": methods,
            "glp_passes": len(sdedit_levels(cfg.t_start, cfg.steps)) - 1,
            "pca_budget": "match" if cfg.pca_k == "match" else "fixed", "config": cfg.model_dump(mode="json")}


def delta_lm_markdown(report: dict[str, Any]) -> str:
    from glp.report import markdown_table

    m = report["methods"]
    rows = []
    for name, label in (("glp", f"GLP SDEdit t={report['config']['t_start']} ({report['glp_passes']} passes)"),
                        ("pca", f"PCA-{m['pca']['k']} ({'MSE-matched' if report['pca_budget'] == 'match' else 'fixed k'})"),
                        ("mean_ablation", "mean-ablation")):
        r = m[name]
        rows.append([label, round(r["delta_ce"], 4), f"[{r['delta_ce_ci'][0]:.4f}, {r['delta_ce_ci'][1]:.4f}]",
                     round(r["recon_mse_normalized"], 4)])
    head = (f"Clean CE {report['clean_ce']:.4f} nats on {report['n_tokens']} held-out tokens"
            + (f"; prior held-out flow-matching loss {report['prior_heldout_loss']:.4f}"
               if report.get("prior_heldout_loss") is not None else "") + ".\n\n")
    return head + markdown_table(["replacement", "ΔCE (nats)", "95% CI", "recon MSE (normalized)"], rows)


def build_delta_lm(settings: Any, source: Any) -> dict[str, Any]:
    """Pipeline step: the ΔLM report on the held-out split, written atomically to `<source root>/delta_lm.json`."""
    from glp import pipeline
    from glp.corpus import load_documents
    from glp.lm import load_source_lm
    from glp.prior import load_prior
    from glp.store import ActivationStore

    paths = pipeline.source_paths(settings, source)
    cfg: DeltaLMConfig = settings.delta_lm
    lm = load_source_lm(pipeline.model_dir(settings, source), settings.device, "float32", settings.trust_remote_code)
    prior = load_prior(paths.prior, lm.device)
    store = ActivationStore(paths.store("train"))
    train_rows = store.acts[: min(cfg.pca_rows, store.n_rows)]
    texts = [d["text"] for d in load_documents(settings.corpus.path, "heldout", settings.corpus)]
    report = delta_lm_report(lm, source.layer, prior, texts, train_rows, cfg, settings.store.max_seq_len)
    report["prior_heldout_loss"] = (json.loads(paths.prior_eval.read_text())["heldout_loss_mean"]
                                    if paths.prior_eval.is_file() else None)
    out = paths.root / "delta_lm.json"
    write_atomic(out, json.dumps(report, indent=1))
    return {**report, "path": str(out)}
