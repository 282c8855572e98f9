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

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from numpy.typing import ArrayLike
from torch import Tensor

from glp.ci import auc_score
from glp.prior.manifold import diffusion_score, sdedit_error
from glp.report import inline_interval_chart, markdown_table, pyplot, to_png
from glp.uses.delta_lm import batch_docs, heldout_docs, layer_rows

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
    sets = rep["sets"]
    r_max = max((s["r"] for s in sets if s["kind"] == "steered"), default=None)
    picks = [next((s for s in sets if s["kind"] == k and (s["r"] == r_max or k not in ("steered", "noised"))), None)
             for k in ("steered", "noised", "other_layer", "text")]
    rows = [(s["name"].replace("steered ", "steer ").replace("noised ", "noise "), s["auroc"]["glp"], *s["ci"]["glp"])
            for s in picks if s is not None]
    return inline_interval_chart(rows, "GLP score AUROC vs real", "AUROC", ref=0.5, xlim=(0.0, 1.0))


def _grid(n: int):  # noqa: ANN202 (matplotlib figure, axes)

    cols = 4
    rows = -(-n // cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


def ood_roc_png(hist: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]) -> bytes:
    """ROC curves of every score, one panel per set."""
    from sklearn.metrics import roc_curve


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
