"""Held-out evaluation of a GLP prior, all in normalized activation space.

Two yardsticks keep the numbers honest:
- the exact flow-matching loss of the best *affine* velocity predictor (closed form from a covariance):
  a prior that does not beat it has learned nothing beyond second moments;
- Frechet distances of GLP samples, of diagonal-Gaussian samples, and of a second held-out subset
  (the finite-sample noise floor) to held-out rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from glp.config import EvalConfig
from glp.flow import flow_matching_loss, sample

ArrayLike = np.ndarray | Tensor


def _np64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def bootstrap_ci(
    x: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95, groups: np.ndarray | None = None
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of x (n,) (or of a paired difference passed as x).

    With `groups` (n,) (e.g. the prompt of each continuation) whole groups are resampled, keeping each group's
    rows together (a cluster bootstrap); the statistic is the mean over the resampled rows.
    """
    x = np.asarray(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    if groups is None:
        means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(1)
    else:
        codes = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
        if len(codes) != len(x):
            raise ValueError(f"groups has {len(codes)} entries for {len(x)} values")
        n_groups = int(codes.max()) + 1
        sums, counts = np.bincount(codes, x, n_groups), np.bincount(codes, minlength=n_groups)
        pick = rng.integers(0, n_groups, size=(n_boot, n_groups))
        means = sums[pick].sum(1) / counts[pick].sum(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def heldout_ts(n_t: int) -> np.ndarray:
    """The fixed evaluation noise levels: midpoints (i + 0.5) / n_t of n_t equal bins of [0, 1]."""
    return (np.arange(n_t) + 0.5) / n_t


@torch.no_grad()
def heldout_loss(model: nn.Module, x0: ArrayLike, n_t: int, seed: int, batch_size: int = 4096) -> dict[str, Any]:
    """Flow-matching loss of `model` on held-out rows x0 (n, d) at each of the `heldout_ts(n_t)` levels.

    eps is drawn on the CPU from one generator seeded with `seed` (t-major, then batches), so the numbers
    are the same on any device for a given (seed, batch_size).
    """
    param = next(model.parameters())
    x0 = torch.as_tensor(x0, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    ts = heldout_ts(n_t)
    losses = []
    for t in ts:
        total = 0.0
        for i in range(0, len(x0), batch_size):
            xb = x0[i : i + batch_size]
            eps = torch.randn(xb.shape, generator=g)
            xb, eps = (y.to(param.device, param.dtype) for y in (xb, eps))
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


def frechet_distance(a: ArrayLike, b: ArrayLike) -> float:
    """Frechet distance between Gaussians fitted to rows a (n, d) and b (m, d):
    ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
    from scipy import linalg

    a, b = _np64(a), _np64(b)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():  # singular product: offset the diagonals (as pytorch-fid does)
        offset = np.eye(len(cov_a)) * 1e-6
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def diag_gaussian_samples(x_ref: ArrayLike, n: int, seed: int) -> np.ndarray:
    """n rows (n, d) from N(mean, diag(var)) of x_ref: the "independent dims" baseline for FD."""
    x_ref = _np64(x_ref)
    rng = np.random.default_rng(seed)
    return x_ref.mean(0) + x_ref.std(0, ddof=1) * rng.standard_normal((n, x_ref.shape[1]))


def evaluate_prior(
    model: nn.Module, heldout: ArrayLike, train_cov: ArrayLike, cfg: EvalConfig, device: torch.device | str
) -> dict[str, Any]:
    """Held-out loss vs the affine baseline, and FDs (GLP / diag-Gaussian / held-out floor) to held-out rows.

    heldout (n, d) and train_cov (d, d) are in normalized space. Moves `model` to `device`. All FDs use the
    same number of rows, n_fd = min(cfg.n_samples, n // 2), so that they are comparable; the floor compares
    two disjoint held-out subsets of that size, and the diagonal Gaussian is fitted on rows outside `ref`.
    """
    model = model.to(device)
    heldout = _np64(heldout).astype(np.float32)
    n, d = heldout.shape
    n_fd = min(cfg.n_samples, n // 2)
    if n_fd < 2:
        raise ValueError(f"{n} held-out rows: evaluation needs at least 4 for the Frechet distances")

    loss = heldout_loss(model, heldout, cfg.n_t, cfg.seed)
    base = gaussian_baseline_loss(train_cov, loss["t"])

    perm = np.random.default_rng(cfg.seed).permutation(n)
    ref, floor = heldout[perm[:n_fd]], heldout[perm[n_fd : 2 * n_fd]]
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    dtype = next(model.parameters()).dtype
    glp = sample(model, n_fd, d, cfg.sample_steps, generator=g, device=device, dtype=dtype)
    fd_glp = frechet_distance(glp, ref)
    fd_diag = frechet_distance(diag_gaussian_samples(heldout[perm[n_fd:]], n_fd, cfg.seed + 1), ref)
    return {
        "t": loss["t"],
        "heldout_loss": loss["loss"],
        "heldout_loss_mean": loss["mean"],
        "gaussian_baseline_loss": base.tolist(),
        "gaussian_baseline_loss_mean": float(base.mean()),
        "loss_ratio_vs_gaussian": loss["mean"] / float(base.mean()),
        "fd_glp": fd_glp,
        "fd_diag_gaussian": fd_diag,
        "fd_heldout_floor": frechet_distance(floor, ref),
        "n_fd": n_fd,
        "n_heldout": n,
        "sample_steps": cfg.sample_steps,
    }
