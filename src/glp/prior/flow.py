"""Flow matching on normalized activations, in the paper's convention: t is the noise level.

    x_t = (1 - t) x0 + t eps,    eps ~ N(0, I),    target velocity v = eps - x0

t = 0 is data, t = 1 is pure noise. Training draws t ~ U[0, 1] *continuously* (no 1000-level
discretization: the denoiser's embedding scales t by 1000, so both views agree). Sampling integrates
dx/dt = v(x, t) with Euler steps from t = 1 down to t = 0.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def module_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of a velocity model's first parameter, or first buffer (AffineVelocity has buffers only);
    cpu / float32 for a model with neither."""
    tensor = next(iter([*model.parameters(), *model.buffers()]), None)
    return (tensor.device, tensor.dtype) if tensor is not None else (torch.device("cpu"), torch.float32)


def interpolate(x0: Tensor, eps: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
    """x0, eps (B, d), t (B,) or scalar -> (x_t (B, d), target velocity eps - x0 (B, d))."""
    t = torch.as_tensor(t, device=x0.device, dtype=x0.dtype)
    t = t.reshape(-1, 1) if t.ndim else t  # (B, 1) broadcasts over dims
    return (1 - t) * x0 + t * eps, eps - x0


def flow_matching_loss(
    model: nn.Module,
    x0: Tensor,
    generator: torch.Generator | None = None,
    t: Tensor | float | None = None,
    eps: Tensor | None = None,
    per_sample: bool = False,
) -> Tensor:
    """MSE between predicted and target velocity, averaged over dims and batch (or per row: (B,)).

    x0 (B, d). t defaults to U[0, 1] per row and eps to N(0, I), both drawn from `generator`.
    """
    B = x0.shape[0]
    if t is None:
        t = torch.rand(B, generator=generator, device=x0.device, dtype=x0.dtype)
    t = torch.as_tensor(t, device=x0.device, dtype=x0.dtype)
    if t.ndim == 0:
        t = t.expand(B)
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t, v = interpolate(x0, eps, t)
    err = F.mse_loss(model(x_t, t).float(), v.float(), reduction="none")  # (B, d), float32 for stable means
    return err.mean(dim=-1) if per_sample else err.mean()


def affine_velocity(x: Tensor, t: Tensor | float, lam: Tensor, vecs: Tensor, mean: Tensor) -> Tensor:
    """The optimal affine velocity for data N(mean, S), S = vecs diag(lam) vecs^T: x (B, d), t (B,) or scalar -> (B, d).

        v(x, t) = -mean + (t I - (1-t) S) ((1-t)^2 S + t^2 I)^-1 (x - (1-t) mean), applied in S's eigenbasis.

    Computed in float32 whatever x's dtype (the coefficients blow up for small eigenvalues near t = 0).
    """
    dtype = x.dtype
    x = x.float()
    t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
    t = (t.expand(x.shape[0]) if t.ndim == 0 else t.float())[:, None]  # (B, 1)
    lam, vecs, mean = lam.float(), vecs.float(), mean.float()
    c = t - (1 - t) * lam  # (B, d)
    s = (1 - t) ** 2 * lam + t**2
    coef = torch.where(s > 0, c / s.clamp_min(1e-12), torch.zeros_like(c))
    centred = (x - (1 - t) * mean) @ vecs  # (B, d) in the eigenbasis
    return (-mean + (coef * centred) @ vecs.T).to(dtype)


def euler_schedule(steps: int) -> Tensor:
    """steps + 1 noise levels, linear from 1 (noise) to 0 (data)."""
    if steps < 1:
        raise ValueError(f"steps={steps}: the Euler schedule needs at least 1 step")
    return torch.linspace(1.0, 0.0, steps + 1)


@torch.no_grad()
def _integrate(model: nn.Module, x: Tensor, ts: Tensor) -> Tensor:
    """Euler along the decreasing noise levels ts (k+1,): x <- x + (t_next - t) v(x, t), k model passes."""
    for t, t_next in zip(ts[:-1].tolist(), ts[1:].tolist()):
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
        x = x + (t_next - t) * model(x, tt)
    return x


@torch.no_grad()
def sample(
    model: nn.Module,
    n: int,
    d: int,
    steps: int = 20,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """n samples (n, d) in normalized activation space: Euler from pure noise at t=1 to t=0.

    `generator` must live on `device` (torch draws the initial noise there).
    """
    x = torch.randn(n, d, generator=generator, device=device, dtype=dtype)
    return _integrate(model, x, euler_schedule(steps))


@torch.no_grad()
def project_on_manifold(
    model: nn.Module,
    a_norm: Tensor,
    t_start: float = 0.5,
    steps: int = 20,
    generator: torch.Generator | None = None,
    return_passes: bool = False,
) -> Tensor | tuple[Tensor, int]:
    """SDEdit: noise normalized activations a_norm (..., d) to t_start, then denoise to t=0.

    The denoising follows the levels of the `steps`-step Euler schedule that lie below t_start (so
    t_start=0.5, steps=20 takes 10 passes). t_start=0 returns a_norm unchanged with 0 passes; t_start=1
    ignores a_norm and equals `sample` with the same generator state.
    """
    if not 0.0 <= t_start <= 1.0:
        raise ValueError(f"t_start={t_start} is not a noise level: choose a value in [0, 1]")
    shape = a_norm.shape
    a = a_norm.reshape(-1, shape[-1])  # (B, d)
    ts = euler_schedule(steps)
    below = ts[ts < t_start - 1e-6]  # grid levels strictly below t_start (t_start itself may be on the grid)
    path = torch.cat([torch.tensor([t_start], dtype=ts.dtype), below])
    eps = torch.randn(a.shape, generator=generator, device=a.device, dtype=a.dtype)
    x, _ = interpolate(a, eps, t_start)
    x = _integrate(model, x, path).reshape(shape)
    return (x, len(path) - 1) if return_passes else x
