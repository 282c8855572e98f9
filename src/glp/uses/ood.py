"""Off-manifold scores of activations under a GLP, their calibration, and the gated edit built on them.

    diffusion_score(a)  the flow-matching loss of the prior at a few fixed noise levels (default t ∈ {0.1, 0.3,
                        0.5}, as a public OOD use of GLP averages), with noise drawn from a fixed seed: the same
                        activation always gets the same score. High = the prior cannot denoise it = off-manifold.
    sdedit_error(a)     ‖a − SDEdit(a)‖² / d in the normalized space: how far the prior moves it.

Both take normalized activations (B, d) and are batched. `Gate` calibrates a score on held-out activations:
the threshold is the score's (1 − fpr) quantile there, so a fraction `fpr` of real activations is flagged, and
the edit weight ramps linearly from 0 at that threshold to 1 at the (1 − full_fpr) quantile (full_fpr < fpr).
`gated_edit` then moves each activation towards its SDEdit projection by that weight: an activation scored on
the manifold is returned untouched (bit for bit), one far off gets exactly the SDEdit output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from numpy.typing import ArrayLike
from torch import Tensor

from glp.prior.flow import flow_matching_loss, module_device_dtype

DEFAULT_TS = (0.1, 0.3, 0.5)


@torch.no_grad()
def diffusion_score(model: nn.Module, z: Tensor, ts: Sequence[float] = DEFAULT_TS, seed: int = 0,
                    batch_size: int = 4096) -> Tensor:
    """Per-row flow-matching loss of `model` on normalized rows z (B, d), averaged over the noise levels `ts`.

    The noise of row i at level k is the same in every call with the same seed and width (drawn on the CPU per
    batch from a generator seeded by (seed, k)), so scores are reproducible and comparable across calls.
    """
    device, dtype = module_device_dtype(model)
    z = z.reshape(-1, z.shape[-1])
    out = torch.zeros(len(z), dtype=torch.float64)
    for k, t in enumerate(ts):
        g = torch.Generator().manual_seed(seed * 1_000_003 + k)
        # one draw reused by every batch; a draw of fewer rows is the prefix of the full-size draw (same values),
        # so small batches (one token per prompt while steering) pay for their rows only
        noise = torch.randn((min(batch_size, len(z)), z.shape[-1]), generator=g)
        for i in range(0, len(z), batch_size):
            xb = z[i : i + batch_size].to(device, dtype)
            eps = noise[: len(xb)].to(device, dtype)
            out[i : i + len(xb)] += flow_matching_loss(model, xb, t=float(t), eps=eps, per_sample=True).double().cpu()
    return (out / len(ts)).float()


@torch.no_grad()
def sdedit_error(model: nn.Module, z: Tensor, t_start: float = 0.5, steps: int = 20, seed: int = 0) -> Tensor:
    """Per-row mean squared change ‖z − SDEdit(z)‖² / d of normalized rows z (B, d) under the prior."""
    from glp.prior.flow import project_on_manifold

    device, dtype = module_device_dtype(model)
    z = z.reshape(-1, z.shape[-1]).to(device, dtype)
    g = torch.Generator(device=device).manual_seed(seed)
    return ((project_on_manifold(model, z, t_start, steps, generator=g) - z).float() ** 2).mean(-1).cpu()


@dataclass(frozen=True)
class Gate:
    """A calibrated off-manifold gate: weight 0 at or below `threshold`, rising linearly to 1 at `full`."""

    threshold: float
    full: float
    fpr: float
    full_fpr: float
    n_calibration: int
    ts: tuple[float, ...] = DEFAULT_TS
    seed: int = 0

    def weight(self, score: Tensor) -> Tensor:
        """Edit weight in [0, 1] per score."""
        score = score.float()
        span = self.full - self.threshold
        ramp = ((score - self.threshold) / span).clamp(0.0, 1.0) if 0 < span < float("inf") else score * 0
        ramp = torch.where(score >= self.full, torch.ones_like(score), ramp)
        return torch.where(score <= self.threshold, torch.zeros_like(score), ramp)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(scores: Tensor | np.ndarray, fpr: float, full_fpr: float, ts: Sequence[float] = DEFAULT_TS,
              seed: int = 0) -> Gate:
    """The gate whose threshold flags a share `fpr` of these (held-out, real) scores and whose edit is full
    beyond the share `full_fpr` (0 < full_fpr < fpr < 1)."""
    if not 0.0 < full_fpr < fpr < 1.0:
        raise ValueError(f"gate rates fpr={fpr}, full_fpr={full_fpr}: need 0 < full_fpr < fpr < 1")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or len(s) < 10 or not np.isfinite(s).all():
        raise ValueError(f"calibration needs at least 10 finite held-out scores, got {s.shape} "
                         f"({int((~np.isfinite(s)).sum())} non-finite)")
    hi, full = np.quantile(s, [1.0 - fpr, 1.0 - full_fpr])
    return Gate(float(hi), float(max(full, hi)), fpr, full_fpr, len(s), tuple(float(t) for t in ts), seed)


def gated_edit(gate: Gate, scores: Tensor, a: Tensor, project: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """Rows a (B, d) and their off-manifold scores (B,) -> (lerp(a, project(a), w), w), w = gate.weight(scores).

    `project` (the SDEdit projection) runs on the whole batch when any weight is positive, so its random draws
    are those of plain SDEdit on the same batch; w = 0 returns a exactly, w = 1 exactly project(a)."""
    w = gate.weight(scores.float()).to(a.device)
    if not bool((w > 0).any()):
        return a, w
    projected = project(a).to(a.dtype)
    return torch.lerp(a, projected, w.to(a.dtype)[:, None]), w


# ---------------------------------------------------------------- baselines


def mahalanobis_whitener(cov: ArrayLike, floor: float = 1e-6) -> Tensor:
    """W (d, d) float64 with ‖z W‖² the squared Mahalanobis distance under the covariance `cov` (d, d) of normalized
    rows: its principal axes scaled by 1/sqrt(eigenvalue), eigenvalues floored at `floor` x the largest."""
    lam, vecs = np.linalg.eigh(np.asarray(cov, dtype=np.float64))
    lam = np.maximum(lam, floor * lam.max())
    return torch.from_numpy(vecs / np.sqrt(lam))


@torch.no_grad()
def mahalanobis_score(z: Tensor, cov: ArrayLike | None = None, whitener: Tensor | None = None) -> Tensor:
    """Squared Mahalanobis distance of normalized rows z (B, d) from the training mean (0 after normalization)
    under the training covariance: pass `cov` (d, d), or its `mahalanobis_whitener` to score many sets with one
    eigendecomposition."""
    w = whitener if whitener is not None else mahalanobis_whitener(cov)
    return ((z.double().cpu() @ w) ** 2).sum(-1).float()


@torch.no_grad()
def sae_error(sae: nn.Module, z: Tensor, batch_size: int = 4096) -> Tensor:
    """Per-row reconstruction error ‖z − SAE(z)‖² / d of rows z (B, d) in the SAE's own normalized space."""
    out = [((sae(zb.float())[0] - zb.float()) ** 2).mean(-1) for zb in z.split(batch_size)]
    return torch.cat(out).cpu() if out else torch.zeros(0)


# ---------------------------------------------------------------- off-manifold sets


def moved_rows(acts: Tensor, direction: Tensor, alpha: float) -> Tensor:
    """acts (B, d) + alpha · direction: one unit direction (d,) for all rows (steering) or one per row (B, d)."""
    return acts + alpha * direction


def random_directions(n: int, d: int, seed: int) -> Tensor:
    """n isotropic random unit vectors (n, d): the noised sets move rows by a steering-sized norm this way."""
    eps = torch.randn((n, d), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (eps / eps.norm(dim=1, keepdim=True)).float()


def shuffle_dims(z: Tensor, seed: int) -> Tensor:
    """Each row's coordinates permuted by its own random permutation (B, d). Done in the normalized space, where
    every dimension has mean 0 and variance 1, so the marginals stay close and only the joint structure breaks."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.argsort(torch.rand(z.shape, generator=g), dim=1)
    return torch.gather(z, 1, perm)


def standardize(rows: Tensor) -> Tensor:
    """Per-dimension z-score of rows (B, d) by their own mean and std: another layer's activations expressed with
    this layer's normalized per-dim mean (0) and variance (1), so that only their joint structure tells them apart."""
    rows = rows.double()
    return ((rows - rows.mean(0)) / rows.std(0).clamp(min=1e-8)).float()


def shuffle_words(text: str, rng: np.random.Generator) -> str:
    """The text's whitespace-separated words in a random order (same words, same count)."""
    words = text.split()
    return " ".join(words[i] for i in rng.permutation(len(words)))


def position_matched(pool_positions: np.ndarray, want_positions: np.ndarray, seed: int) -> np.ndarray:
    """Indices into a pool of rows whose token positions match `want_positions` one for one: for each position,
    rows of that position drawn without replacement (with replacement once the pool runs out); a position absent
    from the pool takes the nearest present one. Position moves activations on its own (early tokens differ), so
    a text set is compared with real rows at the same positions."""
    rng = np.random.default_rng(seed)
    present = np.unique(pool_positions)
    members = {int(p): np.flatnonzero(pool_positions == p) for p in present}
    by_pos = {p: list(rng.permutation(m)) for p, m in members.items()}
    out = np.empty(len(want_positions), dtype=np.int64)
    for i, p in enumerate(want_positions):
        q = int(present[np.argmin(np.abs(present - p))])
        bucket = by_pos[q]
        out[i] = bucket.pop() if bucket else rng.choice(members[q])
    return out


# ---------------------------------------------------------------- AUROC with paired bootstrap CIs


def auroc_table(real: dict[str, np.ndarray], off: dict[str, np.ndarray], n_boot: int, seed: int,
                reference: str = "glp") -> dict[str, Any]:
    """AUROC of each score telling `off` rows (positives) from `real` rows, with stratified bootstrap 95% CIs and,
    for every other score, the paired CI of AUROC(reference) − AUROC(score) on the same resamples.

    `real` and `off` map score name -> (n,) scores, higher = more off-manifold."""
    from glp.prior.evaluate import auc_score

    names = list(real)
    n_real, n_off = len(real[names[0]]), len(off[names[0]])
    y = np.r_[np.zeros(n_real, bool), np.ones(n_off, bool)]
    joined = {k: np.r_[real[k], off[k]].astype(np.float64) for k in names}
    auc = {k: auc_score(y, joined[k]) for k in names}
    rng = np.random.default_rng(seed)
    boots = np.empty((n_boot, len(names)))
    for b in range(n_boot):
        idx = np.r_[rng.integers(0, n_real, n_real), n_real + rng.integers(0, n_off, n_off)]
        boots[b] = [auc_score(y[idx], joined[k][idx]) for k in names]
    ci = {k: [float(v) for v in np.quantile(boots[:, j], [0.025, 0.975])] for j, k in enumerate(names)}
    out: dict[str, Any] = {"auroc": auc, "ci": ci, "n_real": n_real, "n_off": n_off, "diff": {}}
    if reference in names:
        r = names.index(reference)
        for j, k in enumerate(names):
            if k != reference:
                d = boots[:, r] - boots[:, j]
                out["diff"][k] = {"d": auc[reference] - auc[k],
                                  "ci": [float(v) for v in np.quantile(d, [0.025, 0.975])]}
    return out


# ---------------------------------------------------------------- the pipeline step

SCORES = ("glp", "sdedit", "mahalanobis", "sae", "norm")
SCORE_LABELS = {"glp": "GLP diffusion loss", "sdedit": "GLP ‖a − SDEdit(a)‖²", "mahalanobis": "Mahalanobis",
                "sae": "SAE error", "norm": "‖a‖"}


def score_rows(prior: Any, whitener: Tensor, sae: nn.Module, sae_norm: nn.Module, acts: Tensor,
               cfg: Any) -> dict[str, np.ndarray]:
    """Every off-manifold score of raw activation rows acts (B, d) under a prior on the cpu: the GLP diffusion score
    and SDEdit error, the Mahalanobis distance under the training covariance (`mahalanobis_whitener`), the SAE's
    reconstruction error and the plain norm."""
    acts = acts.float().cpu()
    z = prior.normalizer.normalize(acts)
    return {
        "glp": diffusion_score(prior.denoiser, z, cfg.ts, cfg.seed).numpy(),
        "sdedit": sdedit_error(prior.denoiser, z, cfg.sdedit_t_start, cfg.sdedit_steps, cfg.seed).numpy(),
        "mahalanobis": mahalanobis_score(z, whitener=whitener).numpy(),
        "sae": sae_error(sae, sae_norm.normalize(acts)).numpy(),
        "norm": acts.double().norm(dim=1).float().numpy(),
    }


def doc_rows(lm: Any, layers: Sequence[int], texts: Sequence[str], max_seq_len: int,
             max_tokens: int) -> tuple[dict[int, Tensor], np.ndarray]:
    """Block outputs at each of `layers` for every non-BOS token of the first texts up to `max_tokens` tokens,
    ({layer: (n, d)}, positions (n,)), rows in document order."""
    from glp.uses.delta_lm import batch_docs, heldout_docs, layer_rows

    seqs, _ = heldout_docs(lm, list(texts), max_seq_len, max_tokens)
    if not seqs:
        raise ValueError("no text with a token after BOS to build an off-manifold set from")
    batches = batch_docs(lm, seqs)
    positions = np.concatenate([np.arange(1, len(s)) for s in seqs])
    return {layer: layer_rows(lm, layer, batches) for layer in layers}, positions


def heldout_split(n_heldout: int, cfg: Any) -> tuple[int, np.ndarray]:
    """(n, perm): rows per set, min(ood.n_rows, a third of the store), and the seeded shuffle of the held-out rows
    whose first n are the real reference, the next n the base of the synthetic sets and the next n the null."""
    return min(cfg.n_rows, n_heldout // 3), np.random.default_rng(cfg.seed).permutation(n_heldout)


def default_other_layers(layer: int, n_layers: int) -> list[int]:
    """A near and a far layer: the one below (above for layer 0) and the one halfway down (the last for layers 0
    and 1), without `layer` itself."""
    cand = [layer - 1 if layer > 0 else layer + 1, layer // 2 if layer >= 2 else n_layers - 1]
    return [x for x in dict.fromkeys(cand) if x != layer and 0 <= x < n_layers]


def build_ood(settings: Any, source: Any, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Pipeline step: real held-out activations vs the off-manifold sets, every score's AUROC with CIs; written
    atomically to `<source root>/ood.json`, `ood_roc.png` and `ood_hist.png`."""
    import json
    import time
    from pathlib import Path

    from glp import pipeline
    from glp.artifacts import write_atomic
    from glp.data.corpus import iter_documents, load_labelled
    from glp.data.lm import load_source_lm
    from glp.prior import load_prior
    from glp.uses.sae import load_sae, sae_dir
    from glp.data.stats import NormStats
    from glp.uses.steer import mean_activation_norm, movie_snippets, sentiment_direction
    from glp.data.store import ActivationStore

    say = log or (lambda _m: None)
    t0 = time.perf_counter()
    cfg = settings.ood
    paths = pipeline.source_paths(settings, source)
    lm = load_source_lm(pipeline.model_dir(settings, source), settings.device, "float32", settings.trust_remote_code)
    prior = load_prior(paths.prior, "cpu")
    store = ActivationStore(paths.store("heldout"))
    if store.d_model != prior.d_model:
        raise ValueError(f"prior input dim {prior.d_model} != held-out store dim {store.d_model}: re-materialize "
                         "`glp_prior` for this source")
    sae, sae_norm, _ = load_sae(sae_dir(paths.root), "cpu")
    if sae.d_model != prior.d_model:
        raise ValueError(f"SAE width {sae.d_model} != prior width {prior.d_model}: re-materialize `sae` for this source")
    whitener = mahalanobis_whitener(NormStats.load(paths.norm_stats).cov_normalized)
    heldout, pos_all = torch.from_numpy(store.rows()), store.provenance("position")
    n, perm = heldout_split(len(heldout), cfg)
    if n < 20:
        raise ValueError(f"the held-out store has {len(heldout)} rows: ood needs 3 x 20 (real, base of the synthetic "
                         "sets, null); raise store.heldout_max_tokens")
    real_idx, base_idx, null_idx = perm[:n], perm[n : 2 * n], perm[2 * n : 3 * n]
    pool = np.setdiff1d(np.arange(len(heldout)), base_idx)  # real rows for the position-matched references
    mean_norm = mean_activation_norm(heldout.numpy())
    layer = source.layer
    other_layers = cfg.other_layers if cfg.other_layers is not None else default_other_layers(layer, lm.n_layers)
    for x in other_layers:
        if not 0 <= x < lm.n_layers or x == layer:
            raise ValueError(f"ood.other_layers has {x}: choose layers in 0..{lm.n_layers - 1} other than {layer}")

    def scores(acts: Tensor) -> dict[str, np.ndarray]:
        return score_rows(prior, whitener, sae, sae_norm, acts, cfg)

    t1 = time.perf_counter()
    real = scores(heldout[real_idx])
    base = heldout[base_idx]
    w = sentiment_direction(lm, layer, movie_snippets(settings.steer.labelled, cfg.n_direction_texts, 2, cfg.seed),
                            settings.steer.direction_max_tokens)
    dirs = random_directions(n, prior.d_model, cfg.seed + 1)
    norm = prior.normalizer  # on the cpu: the prior was loaded there
    z_base = norm.normalize(base)
    # name -> (kind, r or layer, off-manifold raw rows, key of the real reference)
    sets: list[tuple[str, str, float | None, Tensor, str]] = [("real (other held-out rows)", "null", None,
                                                              heldout[null_idx], "heldout")]
    sets += [(f"steered r={r:g}", "steered", r, moved_rows(base, w, r * mean_norm), "heldout") for r in cfg.r_values]
    sets += [(f"noised r={r:g}", "noised", r, moved_rows(base, dirs, r * mean_norm), "heldout") for r in cfg.r_values]
    sets.append(("dims shuffled", "shuffled_dims", None,
                 norm.denormalize(shuffle_dims(z_base, cfg.seed + 2)), "heldout"))
    refs: dict[str, dict[str, np.ndarray]] = {"heldout": real}
    ref_info: dict[str, str] = {"heldout": f"{n} held-out rows (seeded shuffle)"}
    docs = [d["text"] for d in iter_documents(settings.corpus.path, "heldout", settings.corpus)]
    if other_layers:
        by_layer, _ = doc_rows(lm, [layer, *other_layers], docs, cfg.max_seq_len, n)
        refs["same_tokens"] = scores(by_layer[layer])
        ref_info["same_tokens"] = f"layer {layer} at the same {len(by_layer[layer])} held-out tokens"
        for x in other_layers:
            renorm = norm.denormalize(standardize(by_layer[x]))
            sets.append((f"layer {x}", "other_layer", float(x), renorm, "same_tokens"))
    rng = np.random.default_rng(cfg.seed + 3)
    for kind in cfg.text_sets:
        if kind == "tweets":
            rows = load_labelled(settings.steer.labelled, "tweets.jsonl")
            texts = [rows[i]["text"] for i in rng.permutation(len(rows))]
        else:
            texts = [shuffle_words(t, rng) for t in docs]
        by_layer, positions = doc_rows(lm, [layer], texts, cfg.max_seq_len, n)
        key = f"positions_{kind}"
        match = pool[position_matched(pos_all[pool], positions, cfg.seed + 4)]
        refs[key] = scores(heldout[match])
        ref_info[key] = f"{len(match)} held-out rows at the same token positions"
        sets.append((kind.replace("_", " "), "text", None, by_layer[layer], key))
    say(f"ood: {len(sets)} sets of up to {n:,} rows built; scoring ({time.perf_counter() - t1:.0f} s so far)")
    results, hist, t2 = [], {}, time.perf_counter()
    for name, kind, r, acts, ref in sets:
        off = scores(acts)
        nonfinite = {k: int((~np.isfinite(v)).sum()) for k, v in off.items()}
        table = auroc_table(refs[ref], off, cfg.n_bootstrap, cfg.seed)
        results.append({"name": name, "kind": kind, "r": r, "reference": ref, "nonfinite": nonfinite, **table})
        hist[name] = (refs[ref], off)
    say(f"ood: scored and bootstrapped {len(sets)} sets in {time.perf_counter() - t2:.0f} s")
    real_glp = real["glp"].astype(np.float64)
    report: dict[str, Any] = {
        "source": source.key, "config": cfg.model_dump(mode="json"), "n_rows": n, "mean_norm": mean_norm,
        "other_layers": other_layers, "references": ref_info, "scores": {k: SCORE_LABELS[k] for k in SCORES},
        "sets": results, "nonfinite_real": {k: int((~np.isfinite(v)).sum()) for k, v in real.items()},
        # the real held-out distribution of the GLP score: `glp score` flags tokens above its (1 - fpr) quantile
        "glp_heldout_quantiles": {f"{q:g}": float(np.quantile(real_glp, q)) for q in (0.5, 0.9, 1 - cfg.fpr, 0.99)},
        "seconds": {"total": time.perf_counter() - t0},
    }
    report["headline"] = ood_headline(report)
    root = Path(paths.root)
    write_atomic(root / "ood.json", json.dumps(report, indent=1, default=float))
    roc, hst = ood_roc_png(hist), ood_hist_png(hist)
    write_atomic(root / "ood_roc.png", roc)
    write_atomic(root / "ood_hist.png", hst)
    return {**report, "path": str(root / "ood.json"), "roc_png": roc, "hist_png": hst}


# ---------------------------------------------------------------- what the report says


def _beats(rep: dict[str, Any], other: str) -> tuple[list[str], list[str]]:
    off = [s for s in rep["sets"] if s["kind"] != "null"]
    win = [s["name"] for s in off if other in s["diff"] and s["diff"][other]["ci"][0] > 0]
    lose = [s["name"] for s in off if other in s["diff"] and s["diff"][other]["ci"][1] < 0]
    return win, lose


def ood_headline(rep: dict[str, Any]) -> str:
    """One sentence: on how many sets the GLP diffusion score beats / loses to each baseline (paired 95% CIs)."""
    n_sets = sum(s["kind"] != "null" for s in rep["sets"])
    parts = []
    for other in ("mahalanobis", "sae"):
        win, lose = _beats(rep, other)
        lost = f" (loses on {', '.join(lose)})" if lose else ""
        parts.append(f"{SCORE_LABELS[other]} on {len(win)} of {n_sets} sets, loses on {len(lose)}{lost}")
    null = next((s for s in rep["sets"] if s["kind"] == "null"), None)
    chance = f"; real vs real: {null['auroc']['glp']:.3f}" if null else ""
    return f"GLP diffusion score beats {'; '.join(parts)} (paired bootstrap 95% CIs){chance}."


def ood_markdown(rep: dict[str, Any]) -> str:
    """The AUROC table (rows: sets; columns: scores; best per row in bold) and what each reference is."""
    from glp.report import markdown_table

    rows = []
    for s in rep["sets"]:
        best = max(s["auroc"].values())
        cells = [f"{'**' if s['auroc'][k] == best else ''}{s['auroc'][k]:.3f}{'**' if s['auroc'][k] == best else ''} "
                 f"[{s['ci'][k][0]:.3f}, {s['ci'][k][1]:.3f}]" for k in SCORES]
        d = s["diff"]
        rows.append([s["name"], *cells, *(f"{d[k]['d']:+.3f} [{d[k]['ci'][0]:+.3f}, {d[k]['ci'][1]:+.3f}]"
                                         for k in ("mahalanobis", "sae"))])
    header = ["set", *(SCORE_LABELS[k] for k in SCORES), "GLP − Mahalanobis", "GLP − SAE"]
    refs = "; ".join(f"`{k}`: {v}" for k, v in rep["references"].items())
    return (f"{rep['headline']}\n\nAUROC, off-manifold rows vs real ones (0.5 = indistinguishable), 95% bootstrap "
            f"CIs; the last two columns are paired differences.\n\n{markdown_table(header, rows)}\n\n"
            f"References: {refs}.")


def ood_inline(rep: dict[str, Any]) -> str:
    """GLP diffusion-score AUROC of four sets as an inline forest plot (an inline chart must stay under 1,000
    characters: four labelled rows): the strongest steered and noised sets, the first other layer and the first
    other text. The full table is the report."""
    from glp.report import inline_interval_chart

    sets = rep["sets"]
    r_max = max((s["r"] for s in sets if s["kind"] == "steered"), default=None)
    picks = [next((s for s in sets if s["kind"] == k and (s["r"] == r_max or k not in ("steered", "noised"))), None)
             for k in ("steered", "noised", "other_layer", "text")]
    rows = [(s["name"].replace("steered ", "steer ").replace("noised ", "noise "), s["auroc"]["glp"], *s["ci"]["glp"])
            for s in picks if s is not None]
    return inline_interval_chart(rows, "GLP score AUROC vs real", "AUROC", ref=0.5, xlim=(0.0, 1.0))


def _grid(n: int):  # noqa: ANN202 (matplotlib figure, axes)
    from glp.report import pyplot

    cols = 4
    rows = -(-n // cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


def ood_roc_png(hist: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]) -> bytes:
    """ROC curves of every score, one panel per set."""
    from sklearn.metrics import roc_curve

    from glp.report import to_png

    fig, axes = _grid(len(hist))
    for ax, (name, (real, off)) in zip(axes, hist.items()):
        y = np.r_[np.zeros(len(real["glp"])), np.ones(len(off["glp"]))]
        for k in SCORES:
            fpr, tpr, _ = roc_curve(y, np.r_[real[k], off[k]])
            ax.plot(fpr, tpr, lw=1.8 if k == "glp" else 1.0, label=SCORE_LABELS[k])
        ax.plot([0, 1], [0, 1], ls=":", color="gray")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
    axes[0].legend(fontsize=7, loc="lower right")
    return to_png(fig)


def ood_hist_png(hist: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]) -> bytes:
    """Histograms of the GLP diffusion score, real vs each set (log x)."""
    from glp.report import to_png

    fig, axes = _grid(len(hist))
    for ax, (name, (real, off)) in zip(axes, hist.items()):
        both = np.r_[real["glp"], off["glp"]]
        both = both[np.isfinite(both) & (both > 0)]
        bins = np.geomspace(both.min(), both.max(), 40) if len(both) else 10
        ax.hist(real["glp"], bins=bins, alpha=0.55, label="real held-out")
        ax.hist(off["glp"], bins=bins, alpha=0.55, label=name)
        ax.set_xscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("GLP diffusion score")
        ax.legend(fontsize=7)
    return to_png(fig)


# ---------------------------------------------------------------- `glp score`


def score_text(settings: Any, source: Any, text: str) -> dict[str, Any]:
    """Per-token GLP diffusion scores of `text` at the source's layer, each with its percentile among real held-out
    tokens (the `ood` asset's reference rows: same seeded shuffle, same noise) and a flag above the (1 − ood.fpr)
    quantile."""
    from glp import pipeline
    from glp.data.activations import forward_batch, tokenize_doc
    from glp.data.lm import load_source_lm
    from glp.prior import load_prior
    from glp.data.store import ActivationStore

    cfg = settings.ood
    paths = pipeline.source_paths(settings, source)
    lm = load_source_lm(pipeline.model_dir(settings, source), settings.device, "float32", settings.trust_remote_code)
    prior = load_prior(paths.prior, "cpu")
    seq = tokenize_doc(lm, text, cfg.max_seq_len)
    if len(seq) < 2:
        raise ValueError(f"{text!r} has no token to score (empty after tokenization): pass some text")
    store = ActivationStore(paths.store("heldout"))
    if store.d_model != prior.d_model or lm.d_model != prior.d_model:
        raise ValueError(f"prior width {prior.d_model}, model width {lm.d_model} and held-out store width "
                         f"{store.d_model} differ: re-materialize `glp_prior` for this source")
    acts, _, _ = forward_batch(lm, source.layer, [seq])
    norm = prior.normalizer  # on the cpu: the prior was loaded there
    scores = diffusion_score(prior.denoiser, norm.normalize(acts[0, 1:]), cfg.ts, cfg.seed).numpy()
    heldout = store.rows()
    n, perm = heldout_split(len(heldout), cfg)
    real_idx = perm[: n or len(heldout)]  # a store too small for the asset's three sets: every row
    ref = np.sort(diffusion_score(prior.denoiser, norm.normalize(torch.from_numpy(heldout[real_idx])), cfg.ts,
                                  cfg.seed).numpy())
    threshold = float(np.quantile(ref, 1 - cfg.fpr))
    pct = np.searchsorted(ref, scores, side="right") / len(ref) * 100
    tokens = [lm.tokenizer.decode([i]) for i in seq[1:]]
    return {"source": source.key, "tokens": tokens, "scores": scores.tolist(), "percentile": pct.tolist(),
            "off_manifold": (scores > threshold).tolist(), "threshold": threshold, "fpr": cfg.fpr,
            "n_reference": len(ref), "ts": list(cfg.ts)}


def score_table(res: dict[str, Any]) -> str:
    """`glp score`'s printout: one line per token with its score, held-out percentile and flag."""
    lines = [f"{'pos':>4}  {'token':<18} {'score':>8} {'held-out pct':>12}",
             f"{'':>4}  {'':<18} {'':>8} {'':>12}  (flag: above the {100 * (1 - res['fpr']):g}th percentile "
             f"of {res['n_reference']:,} real held-out tokens, score {res['threshold']:.4g})"]
    for i, (tok, s, p, off) in enumerate(zip(res["tokens"], res["scores"], res["percentile"], res["off_manifold"])):
        lines.append(f"{i + 1:>4}  {tok!r:<18} {s:>8.4f} {p:>11.1f}%  {'<- off-manifold' if off else ''}".rstrip())
    n_off = sum(res["off_manifold"])
    lines.append(f"{n_off} of {len(res['tokens'])} tokens flagged off-manifold (source {res['source']})")
    return "\n".join(lines)
