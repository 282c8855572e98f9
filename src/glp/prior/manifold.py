"""The prior as a manifold: SDEdit (noise an activation to t_start, integrate back to data), the diffusion score
(the flow-matching loss of a row at fixed noise levels), and the gate that post-processes only rows the score
calls off-manifold."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from glp.prior.export import Prior
from glp.prior.flow import euler_schedule, flow_matching_loss, interpolate, module_device_dtype, project_on_manifold


def sdedit_levels(t_start: float, steps: int) -> Tensor:
    """The noise levels SDEdit integrates: t_start, then the `steps`-step grid levels strictly below it
    (the same path as `glp.prior.flow.project_on_manifold`)."""
    ts = euler_schedule(steps)
    return torch.cat([torch.tensor([t_start], dtype=ts.dtype), ts[ts < t_start - 1e-6]])


def solver_passes(t_start: float, steps: int, solver: str) -> int:
    """Denoiser passes per SDEdit call."""
    n = len(sdedit_levels(t_start, steps)) - 1
    return n if solver == "euler" else 2 * n


@torch.no_grad()
def sdedit(
    prior: Prior,
    acts: Tensor,
    t_start: float = 0.5,
    steps: int = 20,
    solver: Literal["euler", "heun", "midpoint"] = "euler",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Project raw activations (..., d) onto the prior's manifold: normalize, noise to t_start, denoise, denormalize."""
    model = prior.denoiser
    device, dtype = module_device_dtype(model)  # the Gaussian prior (AffineVelocity) has buffers only
    z = prior.normalizer.normalize(acts.to(device, dtype))
    if solver == "euler":
        out = project_on_manifold(model, z, t_start, steps, generator=generator)
        return prior.normalizer.denormalize(out).to(acts.dtype)
    shape = z.shape
    z = z.reshape(-1, shape[-1])
    eps = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)  # same draw as project_on_manifold
    x, _ = interpolate(z, eps, t_start)
    levels = sdedit_levels(t_start, steps).tolist()
    for t, t_next in zip(levels[:-1], levels[1:]):
        h = t_next - t  # negative: towards data
        v1 = model(x, torch.full((len(x),), t, device=x.device, dtype=x.dtype))
        if solver == "heun":
            v2 = model(x + h * v1, torch.full((len(x),), t_next, device=x.device, dtype=x.dtype))
            x = x + h * 0.5 * (v1 + v2)
        else:  # midpoint
            v2 = model(x + 0.5 * h * v1, torch.full((len(x),), t + 0.5 * h, device=x.device, dtype=x.dtype))
            x = x + h * v2
    return prior.normalizer.denormalize(x.reshape(shape)).to(acts.dtype)


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
