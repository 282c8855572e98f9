"""Held-out evaluation of a GLP prior, with yardsticks that can beat it.

- Flow-matching loss per t against the exact loss of the best *affine* velocity predictor (closed form from a
  covariance): a prior that does not beat it has learned nothing beyond second moments.
- Frechet distances (normalized and raw space) to held-out rows of: GLP samples, samples of a full-covariance
  and of a diagonal Gaussian fitted to the train rows, reconstructions of other held-out rows (SAE, PCA, ...) and
  those rows themselves (the finite-sample noise floor). FD sees only means and covariances, so the
  full-covariance Gaussian is the bar a prior must clear on it, not the diagonal one.
- A classifier two-sample test (C2ST): an MLP told apart held-out rows from each candidate's rows, cross-fitted;
  its AUC (0.5 = indistinguishable) sees beyond second moments, and its floor is real rows against real rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from glp.ci import auc_ci, auc_score
from glp.config import EvalConfig
from glp.prior.flow import affine_velocity, flow_matching_loss, module_device_dtype, sample
from glp.progress import Progress

ArrayLike = np.ndarray | Tensor
Reconstruct = Callable[[Tensor], Tensor]  # normalized rows (n, d) -> reconstructions (n, d)



def _np64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def heldout_ts(n_t: int) -> np.ndarray:
    """The fixed evaluation noise levels: midpoints (i + 0.5) / n_t of n_t equal bins of [0, 1]."""
    return (np.arange(n_t) + 0.5) / n_t


@torch.no_grad()
def heldout_loss(model: nn.Module, x0: ArrayLike, n_t: int, seed: int, batch_size: int = 4096) -> dict[str, Any]:
    """Flow-matching loss of `model` on held-out rows x0 (n, d) at each of the `heldout_ts(n_t)` levels.

    eps is drawn on the CPU from one generator seeded with `seed` (t-major, then batches), so the numbers
    are the same on any device for a given (seed, batch_size).
    """
    device, dtype = module_device_dtype(model)
    x0 = torch.as_tensor(x0, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    ts = heldout_ts(n_t)
    losses = []
    for t in ts:
        total = 0.0
        for i in range(0, len(x0), batch_size):
            xb = x0[i : i + batch_size]
            eps = torch.randn(xb.shape, generator=g)
            xb, eps = (y.to(device, dtype) for y in (xb, eps))
            total += flow_matching_loss(model, xb, t=float(t), eps=eps, per_sample=True).double().sum().item()
        losses.append(total / len(x0))
    return {"t": ts.tolist(), "loss": losses, "mean": float(np.mean(losses))}


def gaussian_baseline_loss(cov: ArrayLike, ts: ArrayLike) -> np.ndarray:
    """Exact per-dim flow-matching loss, at each t, of the optimal affine predictor of v from x_t.

    With x0 of covariance S (the mean does not matter to an affine predictor; ours is normalized,
    mean ~ 0): Cov(x_t) = (1-t)^2 S + t^2 I, Cov(v, x_t) = t I - (1-t) S, Cov(v) = S + I, and
    loss = tr(Cov(v) - Cov(v,x_t) Cov(x_t)^-1 Cov(x_t,v)) / d. All are diagonal in S's eigenbasis:
    per eigenvalue l, loss_i = l + 1 - (t - (1-t) l)^2 / ((1-t)^2 l + t^2). This is also the best a
    denoiser can do when x0 is exactly Gaussian.
    """
    lam = np.clip(np.linalg.eigvalsh(_np64(cov)), 0.0, None)[None, :]  # (1, d)
    t = np.asarray(ts, dtype=np.float64)[:, None]  # (n_t, 1)
    c = t - (1 - t) * lam
    s = (1 - t) ** 2 * lam + t**2
    explained = np.divide(c**2, s, out=np.zeros_like(c * s), where=s > 0)  # s=0 (t=0, l=0): x_t carries nothing
    return (lam + 1 - explained).mean(axis=1)  # (n_t,)


def gaussian_baseline_from_data(x0: ArrayLike, ts: ArrayLike) -> np.ndarray:
    """`gaussian_baseline_loss` with the empirical covariance (float64) of rows x0 (n, d)."""
    return gaussian_baseline_loss(np.cov(_np64(x0), rowvar=False), ts)


class AffineVelocity(nn.Module):
    """The optimal affine velocity predictor for data N(mean, cov): a velocity model whose Euler samples are
    (up to discretization) draws from that Gaussian, and whose loss is `gaussian_baseline_loss`.

    v(x, t) = -mean + (t I - (1-t) S) ((1-t)^2 S + t^2 I)^-1 (x - (1-t) mean), applied in S's eigenbasis.
    The "Gaussian prior": what a GLP that learned only second moments would be.
    """

    def __init__(self, cov: ArrayLike, mean: ArrayLike | None = None):
        super().__init__()
        lam, vecs = np.linalg.eigh(_np64(cov))
        d = len(lam)
        self.register_buffer("lam", torch.from_numpy(np.clip(lam, 0.0, None)).float())
        self.register_buffer("vecs", torch.from_numpy(vecs).float())
        self.register_buffer("mean", torch.zeros(d) if mean is None else torch.as_tensor(_np64(mean)).float())

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        return affine_velocity(x, t, self.lam, self.vecs, self.mean)


def frechet_distance(a: ArrayLike, b: ArrayLike) -> float:
    """Frechet distance between Gaussians fitted to rows a (n, d) and b (m, d):
    ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    tr (S_a S_b)^(1/2) is the sum of the square roots of the eigenvalues of the symmetric PSD matrix
    S_a^(1/2) S_b S_a^(1/2), which has the same spectrum: two symmetric eigendecompositions instead of a
    general matrix square root (the same value as scipy's sqrtm route, without its complex round-off).
    """
    a, b = _np64(a), _np64(b)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(np.clip(inner, 0.0, None)).sum())


def diag_gaussian_samples(x_ref: ArrayLike, n: int, seed: int) -> np.ndarray:
    """n rows (n, d) from N(mean, diag(var)) of x_ref: the "independent dims" baseline for FD."""
    x_ref = _np64(x_ref)
    rng = np.random.default_rng(seed)
    return x_ref.mean(0) + x_ref.std(0, ddof=1) * rng.standard_normal((n, x_ref.shape[1]))


def gaussian_samples(cov: ArrayLike, n: int, seed: int, mean: ArrayLike | None = None) -> np.ndarray:
    """n rows (n, d) from N(mean, cov) (mean 0 by default: normalized space), through cov's eigendecomposition
    (exact for a singular cov too)."""
    w, v = np.linalg.eigh(_np64(cov))
    root = v * np.sqrt(np.clip(w, 0.0, None))  # root @ root.T = cov
    x = np.random.default_rng(seed).standard_normal((n, len(w))) @ root.T
    return x if mean is None else x + _np64(mean)


def c2st(real: ArrayLike, other: ArrayLike, cfg: EvalConfig, seed: int = 0) -> dict[str, Any]:
    """Classifier two-sample test: AUC (with a bootstrap CI) of an MLP telling `other` rows from `real` rows.

    Two-fold cross-fitting: the rows are split in halves at random; a classifier trained on one half scores the
    other, so every row gets an out-of-sample score and the AUC uses all of them. 0.5 = the classifier cannot
    tell the sets apart; 1 = it always can. The MLP (2 hidden layers, GELU) sees beyond second moments, unlike FD.
    """
    x = np.concatenate([_np64(real), _np64(other)]).astype(np.float32)
    y = np.r_[np.zeros(len(real)), np.ones(len(other))].astype(np.float32)
    if min(len(real), len(other)) < 8:
        raise ValueError(f"C2ST needs at least 8 rows per set; got {len(real)} real and {len(other)} other")
    fold = np.random.default_rng(seed).permutation(len(x)) % 2
    scores = np.zeros(len(x))
    torch.manual_seed(seed)
    for f in (0, 1):
        train, test = fold != f, fold == f
        clf = nn.Sequential(nn.Linear(x.shape[1], cfg.c2st_hidden), nn.GELU(),
                            nn.Linear(cfg.c2st_hidden, cfg.c2st_hidden), nn.GELU(), nn.Linear(cfg.c2st_hidden, 1))
        opt = torch.optim.AdamW(clf.parameters(), lr=1e-3, weight_decay=1e-3)
        xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
        for _ in range(cfg.c2st_steps):
            idx = torch.randint(0, len(xt), (min(256, len(xt)),))
            loss = nn.functional.binary_cross_entropy_with_logits(clf(xt[idx]).squeeze(1), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            scores[test] = clf(torch.from_numpy(x[test])).squeeze(1).double().numpy()
    return {"auc": auc_score(y, scores), "auc_ci": list(auc_ci(y, scores, cfg.n_bootstrap, seed)),
            "n": [len(real), len(other)]}


def row_norm_quantiles(x: ArrayLike) -> dict[str, float]:
    """Quantiles of the row norms (n, d) -> {q50, q99, q999, max}: whether a set has the real rows' heavy tail."""
    q = np.quantile(np.linalg.norm(_np64(x), axis=1), [0.5, 0.99, 0.999, 1.0])
    return dict(zip(("q50", "q99", "q999", "max"), (float(v) for v in q)))


def beats_gaussian(report: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """Does the prior beat the full-covariance Gaussian? (passed, reasons it did not).

    Two bars, both of which a prior that learned only second moments fails:
    - held-out flow-matching loss below the optimal affine (Gaussian) predictor's;
    - C2ST: GLP samples told apart from held-out rows less well than full-covariance Gaussian samples,
      with the CIs not overlapping (the GLP's upper bound below the Gaussian's lower bound).
    FD is reported but not a bar: it sees only second moments, where the Gaussian is right by construction.
    """
    reasons = []
    if not report["heldout_loss_mean"] < report["gaussian_baseline_loss_mean"]:
        reasons.append(f"held-out loss {report['heldout_loss_mean']:.4f} is not below the optimal affine "
                       f"predictor's {report['gaussian_baseline_loss_mean']:.4f}")
    glp, gauss = report["c2st"]["glp"], report["c2st"]["gaussian_full"]
    if not glp["auc_ci"][1] < gauss["auc_ci"][0]:
        reasons.append(f"C2ST AUC of GLP samples {glp['auc']:.3f} {_fmt_ci(glp['auc_ci'])} is not clearly below the "
                       f"full-covariance Gaussian's {gauss['auc']:.3f} {_fmt_ci(gauss['auc_ci'])}")
    return not reasons, reasons


def _fmt_ci(ci: tuple[float, float] | list[float]) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


CANDIDATES = {  # report key -> label
    "glp": "GLP samples",
    "gaussian_full": "full-covariance Gaussian samples",
    "gaussian_diag": "diagonal Gaussian samples",
    "heldout_floor": "held-out rows (noise floor)",
}


def evaluate_prior(
    model: nn.Module,
    heldout: ArrayLike,
    train_cov: ArrayLike,
    cfg: EvalConfig,
    device: torch.device | str,
    reconstructions: Mapping[str, tuple[str, Reconstruct]] | None = None,
    denormalize: Callable[[np.ndarray], np.ndarray] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Held-out loss per t vs the affine baseline; FD and C2ST of every candidate against held-out rows.

    heldout (n, d) and train_cov (d, d) are in normalized space (train mean 0). Moves `model` to `device`.
    The held-out rows are shuffled (seeded) into `ref` (the reference every candidate is compared with) and
    `other` (n_fd rows each). Candidates, n_fd rows each: GLP samples (`cfg.sample_steps` Euler steps), samples
    of N(0, train_cov) and of the diagonal Gaussian, `reconstructions` {key: (label, fn)} applied to `other`
    (e.g. an SAE's), and `other` itself (the noise floor). FD is computed in normalized space, in raw space
    (through `denormalize`, if given), and on the first n_fd/4 and n_fd/2 rows (how far FD is from converged);
    `cfg.sweep_steps` re-samples the GLP from the same noise with fewer steps (how far the sampler has converged).
    """
    model = model.to(device)
    heldout = _np64(heldout).astype(np.float32)
    n, d = heldout.shape
    n_fd = min(cfg.n_samples, n // 2)
    if n_fd < 16:
        raise ValueError(f"{n} held-out rows: evaluation needs at least 32 (two sets of 16) for FD and the C2ST; "
                         "raise store.heldout_max_tokens")

    progress = Progress("prior_eval", None, "stage", log)  # its total is set once the candidates are known
    loss = heldout_loss(model, heldout, cfg.n_t, cfg.seed)
    base = gaussian_baseline_loss(train_cov, loss["t"])
    progress.update(1, "held-out loss")

    perm = np.random.default_rng(cfg.seed).permutation(n)
    ref, other = heldout[perm[:n_fd]], heldout[perm[n_fd : 2 * n_fd]]
    dtype = next(model.parameters(), torch.empty(0)).dtype  # parameter-free velocity models (AffineVelocity): fp32

    def glp_samples(steps: int) -> np.ndarray:
        g = torch.Generator(device=device).manual_seed(cfg.seed)  # the same noise for every step count
        return _np64(sample(model, n_fd, d, steps, generator=g, device=device, dtype=dtype))

    sets: dict[str, np.ndarray] = {
        "glp": glp_samples(cfg.sample_steps),
        "gaussian_full": gaussian_samples(train_cov, n_fd, cfg.seed + 1),
        "gaussian_diag": diag_gaussian_samples(heldout[perm[n_fd:]], n_fd, cfg.seed + 2),
    }
    labels = dict(CANDIDATES)
    for key, (label, fn) in (reconstructions or {}).items():
        with torch.no_grad():
            sets[key] = _np64(fn(torch.from_numpy(other)))
        labels[key] = label
    sets["heldout_floor"] = _np64(other)
    sweep_steps = sorted(set(cfg.sweep_steps) - {cfg.sample_steps})
    progress.total = 1 + len(sets) + len(sweep_steps)  # held-out loss, each candidate's FD + C2ST, the sweep

    raw_ref = denormalize(_np64(ref)) if denormalize is not None else None
    sizes = sorted({max(2, n_fd // 4), max(2, n_fd // 2), n_fd})
    candidates = {}
    for i, (key, rows) in enumerate(sets.items()):
        candidates[key] = {
            "label": labels[key],
            "fd": frechet_distance(rows, ref),
            "fd_raw": frechet_distance(denormalize(rows), raw_ref) if raw_ref is not None else None,
            "fd_by_n": {str(m): frechet_distance(rows[:m], ref[:m]) for m in sizes},
            "c2st": c2st(ref, rows, cfg, seed=cfg.seed + i),
            "row_norm": row_norm_quantiles(rows),
        }
        progress.update(1, f"{key}: C2ST AUC {candidates[key]['c2st']['auc']:.3f}")
    sweep = []
    for steps in sweep_steps:
        rows = glp_samples(steps)
        sweep.append({"steps": steps, "fd": frechet_distance(rows, ref), "c2st_auc": c2st(ref, rows, cfg, cfg.seed)["auc"]})
        progress.update(1, f"sampler sweep: {steps} steps")
    sweep.append({"steps": cfg.sample_steps, "fd": candidates["glp"]["fd"], "c2st_auc": candidates["glp"]["c2st"]["auc"]})
    sweep.sort(key=lambda r: r["steps"])

    report = {
        "t": loss["t"],
        "heldout_loss": loss["loss"],
        "heldout_loss_mean": loss["mean"],
        "gaussian_baseline_loss": base.tolist(),
        "gaussian_baseline_loss_mean": float(base.mean()),
        "loss_ratio_vs_gaussian": loss["mean"] / float(base.mean()),
        "candidates": candidates,
        "c2st": {k: {"auc": c["c2st"]["auc"], "auc_ci": c["c2st"]["auc_ci"]} for k, c in candidates.items()},
        "reference_row_norm": row_norm_quantiles(ref),
        "sampler_sweep": sweep,
        # the headline numbers, flat (Dagster metadata, summaries, seed tables)
        "fd_glp": candidates["glp"]["fd"],
        "fd_full_gaussian": candidates["gaussian_full"]["fd"],
        "fd_diag_gaussian": candidates["gaussian_diag"]["fd"],
        "fd_heldout_floor": candidates["heldout_floor"]["fd"],
        "c2st_auc_glp": candidates["glp"]["c2st"]["auc"],
        "c2st_auc_full_gaussian": candidates["gaussian_full"]["c2st"]["auc"],
        "c2st_auc_floor": candidates["heldout_floor"]["c2st"]["auc"],
        "n_fd": n_fd,
        "n_heldout": n,
        "sample_steps": cfg.sample_steps,
    }
    report["beats_gaussian"], report["beats_gaussian_reasons"] = beats_gaussian(report)
    return report

