"""Exact per-dimension normalization statistics over a whole activation store, and the Normalizer.

One streaming pass in float64 over the store's chunks, merging per-chunk (count, mean, M2) with Chan et
al.'s pairwise update — numerically stable, exact up to float64 rounding, memory O(d²) (the covariance of
the *normalized* data, needed by the Gaussian baseline, is accumulated in the same pass as a second
moment about the running mean and corrected at the end).
(The paper's code estimated the stats from its first shard only.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from glp.artifacts import write_atomic
from glp.data.store import ActivationStore

EPS = 1e-6


@dataclass
class RunningMoments:
    """Count, mean and centered second moments of rows seen so far (float64)."""

    n: int
    mean: np.ndarray  # (d,)
    m2: np.ndarray  # (d,) sum of squared deviations
    cross: np.ndarray | None  # (d, d) sum of outer products of deviations, or None

    @classmethod
    def empty(cls, d: int, with_cov: bool) -> RunningMoments:
        return cls(0, np.zeros(d), np.zeros(d), np.zeros((d, d)) if with_cov else None)

    def update(self, rows: np.ndarray) -> None:
        """Merge a chunk of rows (k, d) — Chan, Golub & LeVeque pairwise combination."""
        x = rows.astype(np.float64)
        k = len(x)
        if k == 0:
            return
        mean_b = x.mean(0)
        dev = x - mean_b
        m2_b = (dev * dev).sum(0)
        delta = mean_b - self.mean
        n = self.n + k
        self.m2 += m2_b + delta * delta * self.n * k / n
        if self.cross is not None:
            self.cross += dev.T @ dev + np.outer(delta, delta) * self.n * k / n
        self.mean = self.mean + delta * k / n
        self.n = n

    @property
    def var(self) -> np.ndarray:
        """Population variance per dimension."""
        return self.m2 / max(self.n, 1)


def tensors_sha256(tensors: Mapping[str, np.ndarray]) -> str:
    """sha256 over named arrays (name, dtype, shape and values, in name order): the checksum an exported
    safetensors file records in its own metadata, so a flipped bit in its data is caught on load."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


class ArtifactCorrupt(ValueError):
    """An exported artifact is truncated, unreadable or does not match its recorded checksum."""


@dataclass
class NormStats:
    """What `norm_stats` stores: per-dim mean/var and the covariance of normalized rows."""

    n: int
    mean: np.ndarray  # (d,)
    var: np.ndarray  # (d,)
    cov_normalized: np.ndarray  # (d, d) covariance of (x - mean) / std
    made_from: dict[str, str] = field(default_factory=dict)
    """Lineage: the version of the train store the stats were computed from (`activations_version`)."""

    def save(self, path: Path) -> None:
        from safetensors.numpy import save

        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"mean": self.mean, "var": self.var, "cov_normalized": self.cov_normalized}
        meta = {"n": str(self.n), "sha256": tensors_sha256(tensors), "made_from": json.dumps(self.made_from)}
        write_atomic(path, save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: Path) -> NormStats:
        from safetensors import safe_open

        if not Path(path).is_file():
            raise FileNotFoundError(f"no normalization stats at {path}: materialize `norm_stats` first")
        fix = "delete it and re-materialize `norm_stats` (dagster asset materialize ... --select norm_stats)"
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in ("mean", "var", "cov_normalized")}
                n = int(meta["n"])
        except Exception as e:  # truncated file, bad header, missing tensor
            raise ArtifactCorrupt(f"{path} is truncated or corrupt ({type(e).__name__}: {e}): {fix}") from e
        if "sha256" in meta and tensors_sha256(tensors) != meta["sha256"]:
            raise ArtifactCorrupt(f"{path} does not match its recorded checksum: {fix}")
        try:
            made_from = json.loads(meta.get("made_from", "{}"))
        except ValueError as e:
            raise ArtifactCorrupt(f"{path} has an unreadable lineage record ({e}): {fix}") from e
        return cls(n, tensors["mean"], tensors["var"], tensors["cov_normalized"], made_from)

    def normalizer(self) -> Normalizer:
        return Normalizer(torch.from_numpy(self.mean).float(), torch.from_numpy(np.sqrt(self.var + EPS)).float())


def std_outliers(var: np.ndarray, ref_var: np.ndarray, max_ratio: float = 3.0) -> list[dict[str, float]]:
    """Dimensions whose std differs from a reference's by more than `max_ratio` either way, worst first.

    The reference is an independent sample of the same law (the held-out store for the train stats): on the
    default source every dimension's train/held-out std ratio lies in 0.67..1.04, while one corrupted value
    (e.g. -165,582 from a flipped exponent bit) multiplies a dimension's std by hundreds."""
    ratio = np.sqrt(np.asarray(var, np.float64) / np.maximum(np.asarray(ref_var, np.float64), 1e-30))
    off = np.abs(np.log(np.maximum(ratio, 1e-30)))
    bad = np.flatnonzero(off > np.log(max_ratio))
    return [{"dim": int(i), "std_ratio": float(ratio[i])} for i in bad[np.argsort(-off[bad])]]


def compute_stats(store: ActivationStore, with_cov: bool = True) -> NormStats:
    """Exact mean/var (and normalized covariance) over every row of the store, streaming by chunk."""
    mom = RunningMoments.empty(store.d_model, with_cov)
    for rows in store.iter_chunks():
        mom.update(rows)
    std = np.sqrt(mom.var + EPS)
    cov = mom.cross / max(mom.n, 1) / np.outer(std, std) if mom.cross is not None else np.zeros((0, 0))
    version = store.attrs.get("version")
    return NormStats(mom.n, mom.mean, mom.var, cov, {"activations_version": version} if version else {})


class Normalizer(torch.nn.Module):
    """Per-dimension z-score: normalize(x) = (x - mean) / std, denormalize is its exact inverse."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x)) / self.std.to(x)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std.to(z) + self.mean.to(z)


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
