"""Confidence intervals, one scheme each: a percentile bootstrap of a mean (`bootstrap_ci`), of an AUC resampling
each class separately (`auc_ci`: stratified, so every draw has both classes), and of Spearman's rho resampling
whole groups (`spearman_ci`)."""

from __future__ import annotations

import numpy as np


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


def auc_score(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of `scores` for binary `labels` (1 = positive), ties counted half (Mann-Whitney U)."""
    from scipy.stats import rankdata

    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes; got {n_pos} positives and {n_neg} negatives")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_ci(labels: np.ndarray, scores: np.ndarray, n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUC, resampling each class separately (stratified)."""
    labels = np.asarray(labels).astype(bool)
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
    aucs = [auc_score(y, scores[np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]]) for _ in range(n_boot)]
    lo, hi = np.quantile(aucs, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def spearman_ci(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_boot: int, seed: int,
                level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """Spearman's rho of (x, y) and its percentile bootstrap CI resampling whole groups (prompts)."""
    import warnings

    from scipy.stats import spearmanr

    def rho(i: np.ndarray) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a constant draw has no rho: counted as no trend
            v = spearmanr(x[i], y[i]).statistic
        return float(v) if np.isfinite(v) else 0.0

    codes = np.unique(groups, return_inverse=True)[1]
    members = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)]
    rng = np.random.default_rng(seed)
    boots = [rho(np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))]))
             for _ in range(n_boot)]
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return rho(np.arange(len(x))), (float(lo), float(hi))
