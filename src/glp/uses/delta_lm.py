"""ΔLM loss: how much next-token cross-entropy rises when a layer's activations are replaced by a reconstruction.

On held-out documents, every non-BOS position of block `layer`'s residual output is replaced by
  (a) GLP: normalize, noise to t=0.5, denoise along the 20-step schedule (SDEdit), denormalize;
  (b) SAE: the source's TopK SAE reconstruction (the paper's baseline: 0.051 GLP vs 0.198 SAE on Llama-8B);
  (c) PCA-k: projection onto the top-k principal components (normalized space) of train activations, k either
      given or matched so that its reconstruction MSE is at most the GLP's (equal-error budget), measured on
      *selection* documents that follow the scored ones (k is never chosen on the rows whose CE is scored);
  (d) mean-ablation: the train mean.
The report is the mean CE increase over predicted tokens, each method's reconstruction MSE in normalized space,
and paired differences (GLP - SAE, GLP - PCA); every CI is a bootstrap over documents (a document's tokens are
resampled together: they are not independent). BOS keeps its activation (the prior never saw BOS rows).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from glp.ci import bootstrap_ci
from glp.config import DeltaLMConfig
from glp.data.activations import tokenize_doc
from glp.data.lm import SourceLM, capture_residual, pad_tokens, replace_block_output, run_until_captured
from glp.data.stats import Normalizer, fit_pca, pca_mse_by_k
from glp.prior import Prior
from glp.prior.manifold import sdedit, sdedit_levels
from glp.progress import Log, Progress
from glp.report import markdown_table

Replace = Callable[[Tensor], Tensor]  # rows (n, d) -> reconstructions (n, d)


@contextmanager
def replace_positions(lm: SourceLM, layer: int, keep: Tensor, fn: Replace):
    """While active, block `layer`'s output rows where `keep` (B, T) is True are replaced by `fn` of them."""

    def edit(hidden: Tensor) -> None:
        hidden[keep] = fn(hidden[keep]).to(hidden.dtype)

    with replace_block_output(lm.block(layer), edit):
        yield


def heldout_docs(lm: SourceLM, texts: Sequence[str], max_seq_len: int, max_tokens: int,
                 start: int = 0) -> tuple[list[list[int]], int]:
    """`[BOS] + tokens` of texts[start:], in order, up to `max_tokens` non-BOS tokens; (docs, index after the last
    text used), so that a second call from that index takes documents disjoint from the first."""
    seqs, total, i = [], 0, start
    while i < len(texts) and total < max_tokens:
        s = tokenize_doc(lm, texts[i], max_seq_len)
        i += 1
        if len(s) < 2:
            continue
        seqs.append(s[: 1 + max_tokens - total])
        total += len(seqs[-1]) - 1
    return seqs, i


def batch_docs(lm: SourceLM, seqs: Sequence[Sequence[int]], batch_size: int = 32) -> list[tuple[Tensor, Tensor]]:
    """Right-padded (ids (B, T), mask (B, T)) batches of token sequences, in order."""
    out = []
    for b in range(0, len(seqs), batch_size):
        chunk = seqs[b : b + batch_size]
        out.append(pad_tokens(chunk, lm.pad_id))
    return out


def token_doc_ids(batches: Sequence[tuple[Tensor, Tensor]]) -> np.ndarray:
    """The document index of every predicted token, (n_tokens,), in `token_ce`'s order (documents in batch order)."""
    ids, offset = [], 0
    for _, mask in batches:
        per_doc = mask[:, 1:].sum(1).tolist()
        ids += [np.full(n, offset + i) for i, n in enumerate(per_doc)]
        offset += len(per_doc)
    return np.concatenate(ids) if ids else np.zeros(0, dtype=int)


@torch.inference_mode()
def token_ce(lm: SourceLM, layer: int, batches: Sequence[tuple[Tensor, Tensor]], fn: Replace | None,
             progress: Progress | None = None) -> np.ndarray:
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
        if progress is not None:
            progress.update(1)
    return np.concatenate(ces).astype(np.float64)


@contextmanager
def _null():
    yield


def layer_rows(lm: SourceLM, layer: int, batches: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
    """Block `layer`'s residual output at every non-BOS position of `batches`, (n_tokens, d) float32 on cpu."""
    rows = []
    with torch.inference_mode(), capture_residual(lm, layer, stop=True) as box:
        for ids, mask in batches:
            acts = run_until_captured(lm, box, input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device))
            keep = mask.bool().clone()
            keep[:, 0] = False
            rows.append(acts[keep.to(acts.device)].float().cpu())
    return torch.cat(rows)


def delta_lm_report(lm: SourceLM, layer: int, prior: Prior, texts: Sequence[str], train_rows: np.ndarray,
                    cfg: DeltaLMConfig, max_seq_len: int = 128, sae: Any = None,
                    log: Log | None = None) -> dict[str, Any]:
    """ΔCE of GLP, SAE (if given: a `glp.uses.sae.TopKSAE` on normalized rows), PCA-k and mean-ablation reconstructions
    on held-out `texts`; train_rows (n, d) fit the PCA.

    The first `cfg.max_tokens` tokens of `texts` are scored; the next `cfg.select_tokens` (later documents) are
    where PCA-k is matched to the GLP's error.
    """
    norm = Normalizer(prior.normalizer.mean.cpu(), prior.normalizer.std.cpu())
    scored, next_doc = heldout_docs(lm, texts, max_seq_len, cfg.max_tokens)
    select, _ = heldout_docs(lm, texts, max_seq_len, cfg.select_tokens, start=next_doc)
    if not scored:
        raise ValueError("no held-out document has 2 tokens or more: the corpus's held-out split is empty")
    if not select:
        raise ValueError(f"the held-out split ends after the {cfg.max_tokens} scored tokens: no documents are left to "
                         "choose PCA-k on; lower delta_lm.max_tokens or give the corpus a larger held-out split")
    batches, sel_batches = batch_docs(lm, scored), batch_docs(lm, select)
    docs = token_doc_ids(batches)
    progress = Progress("delta_lm", None, "batch", log)  # its total (clean + each arm) is set once the arms are
    clean = token_ce(lm, layer, batches, None, progress)
    z, z_sel = norm.normalize(layer_rows(lm, layer, batches)), norm.normalize(layer_rows(lm, layer, sel_batches))

    g = torch.Generator(device=next(prior.denoiser.parameters()).device)

    def glp(a: Tensor) -> Tensor:
        return sdedit(prior, a, cfg.t_start, cfg.steps, "euler", g).to(a.device)

    @torch.no_grad()
    def mse_of(fn: Replace, rows: Tensor) -> float:
        g.manual_seed(cfg.seed + 1)
        return float(((norm.normalize(fn(norm.denormalize(rows)).float().cpu()) - rows) ** 2).mean())

    mu, axes = fit_pca(norm.normalize(torch.as_tensor(train_rows[: cfg.pca_rows], dtype=torch.float32)).numpy())
    if cfg.pca_k == "match":  # on the selection documents, never the scored ones
        glp_sel, mse_sel = mse_of(glp, z_sel), pca_mse_by_k(z_sel, mu, axes)
        k = int(np.argmax(mse_sel <= glp_sel)) if (mse_sel <= glp_sel).any() else z.shape[1]
    else:
        k = int(cfg.pca_k)
    P = axes[:, :k]

    def pca(a: Tensor) -> Tensor:
        zz = norm.normalize(a.float().cpu())
        return norm.denormalize(mu + (zz - mu) @ P @ P.T).to(a.device)

    def sae_fn(a: Tensor) -> Tensor:
        dev = next(sae.parameters()).device
        return norm.denormalize(sae(norm.normalize(a.float().cpu()).to(dev))[0].cpu()).to(a.device)

    def mean_ablate(a: Tensor) -> Tensor:
        return norm.mean.to(a).expand_as(a).clone()

    arms: list[tuple[str, Replace]] = [("glp", glp), *([("sae", sae_fn)] if sae is not None else []),
                                       ("pca", pca), ("mean_ablation", mean_ablate)]
    progress.total = len(batches) * (1 + len(arms))
    methods: dict[str, dict[str, Any]] = {}
    deltas: dict[str, np.ndarray] = {}
    for name, fn in arms:
        g.manual_seed(cfg.seed)
        deltas[name] = token_ce(lm, layer, batches, fn, progress) - clean
        methods[name] = {"delta_ce": float(deltas[name].mean()),
                         "delta_ce_ci": bootstrap_ci(deltas[name], cfg.n_bootstrap, cfg.seed, groups=docs),
                         "recon_mse_normalized": mse_of(fn, z)}
    methods["pca"]["k"] = k
    if sae is not None:
        methods["sae"]["k"], methods["sae"]["n_latents"] = sae.k, sae.n_latents
    paired = {f"glp_minus_{b}": {"d": float((deltas["glp"] - deltas[b]).mean()),
                                 "ci": bootstrap_ci(deltas["glp"] - deltas[b], cfg.n_bootstrap, cfg.seed, groups=docs)}
              for b in ("sae", "pca") if b in deltas}
    return {"layer": layer, "n_tokens": int(len(clean)), "n_docs": len(scored), "n_select_tokens": int(len(z_sel)),
            "clean_ce": float(clean.mean()), "methods": methods, "paired": paired,
            "glp_passes": len(sdedit_levels(cfg.t_start, cfg.steps)) - 1,
            "pca_budget": "match" if cfg.pca_k == "match" else "fixed", "config": cfg.model_dump(mode="json")}


def delta_lm_markdown(report: dict[str, Any]) -> str:
    m = report["methods"]
    labels = {"glp": f"GLP SDEdit t={report['config']['t_start']} ({report['glp_passes']} passes)",
              "sae": f"SAE (TopK k={m['sae']['k']}, {m['sae']['n_latents']} latents)" if "sae" in m else "",
              "pca": f"PCA-{m['pca']['k']} ({'MSE-matched on selection docs' if report['pca_budget'] == 'match' else 'fixed k'})",
              "mean_ablation": "mean-ablation"}
    rows = [[labels[name], round(r["delta_ce"], 4), f"[{r['delta_ce_ci'][0]:.4f}, {r['delta_ce_ci'][1]:.4f}]",
             round(r["recon_mse_normalized"], 4)] for name, r in m.items()]
    rows += [[f"GLP − {name.removeprefix('glp_minus_').upper()} (paired)", round(p["d"], 4),
              f"[{p['ci'][0]:.4f}, {p['ci'][1]:.4f}]", ""] for name, p in report.get("paired", {}).items()]
    head = (f"Clean CE {report['clean_ce']:.4f} nats on {report['n_tokens']} held-out tokens"
            + (f" of {report['n_docs']} documents (CIs resample documents)" if "n_docs" in report else "")
            + (f"; prior held-out flow-matching loss {report['prior_heldout_loss']:.4f}"
               if report.get("prior_heldout_loss") is not None else "") + ".\n\n")
    return head + markdown_table(["replacement", "ΔCE (nats)", "95% CI", "recon MSE (normalized)"], rows)


