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
from torch import Tensor

from glp.flow import flow_matching_loss, module_device_dtype

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
    from glp.flow import project_on_manifold

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
