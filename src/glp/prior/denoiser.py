"""The GLP denoiser: a per-token, attention-free velocity network over residual-stream activations.

    x (B, d) --in_proj--> (B, D) --[n_blocks x GLPBlock]--> LayerNorm --out_proj--> v (B, d)

Each block is a pre-LayerNorm SwiGLU MLP whose gate pre-activation is multiplied by a per-block
projection of a shared timestep embedding e(t):

    x <- x + W_down( SiLU(W_gate LN(x) * W_time e(t)) * W_up LN(x) )

The post-SwiGLU hidden units (the input of W_down) of every block are the "meta-neurons". The network's output
is the velocity, or (`prediction="x"`) an estimate of the clean activation turned into a velocity in `forward`.
D = width_mult * d and H = hidden_mult * d (paper: 2d and 4d).

By default W_gate, W_up and W_down have no bias, e(t) starts from a 128-wide sinusoid, and the init makes every
block start as the identity. `DenoiserConfig(preset="official")` gives the official code's network (biases
everywhere, a D-wide sinusoid) and `init="torch"` its init; the README's "What differs from the official code, and
why" says what else differs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from glp.config import DenoiserConfig
from glp.prior.flow import affine_velocity

TIME_SCALE = 1000.0
"""t in [0, 1] is multiplied by this before the sinusoidal embedding, as for 1000 discrete diffusion levels."""


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding (B,) -> (B, dim) of the noise level t in [0, 1] (DDPM/Transformer style)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * TIME_SCALE)[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb  # (B, dim), float32


class GLPBlock(nn.Module):
    """Pre-LN SwiGLU residual block with the time embedding multiplying the gate pre-activation."""

    def __init__(self, width: int, hidden: int, time_width: int, bias: bool = False):
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.w_gate = nn.Linear(width, hidden, bias=bias)
        self.w_up = nn.Linear(width, hidden, bias=bias)
        self.w_time = nn.Linear(time_width, hidden)
        self.w_down = nn.Linear(hidden, width, bias=bias)

    def forward(self, x: Tensor, temb: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, D), temb (B, D_t) -> (x + update (B, D), meta-neurons (B, H))."""
        h = self.ln(x)
        gate = self.w_gate(h) * self.w_time(temb)  # (B, H) time-modulated gate pre-activation
        meta = F.silu(gate) * self.w_up(h)  # (B, H)
        return x + self.w_down(meta), meta


class GLPDenoiser(nn.Module):
    """Velocity model v(x_t, t) for flow matching on normalized activations (t = noise level)."""

    def __init__(self, d_model: int, cfg: DenoiserConfig):
        super().__init__()
        self.d_model = d_model
        self.cfg = cfg
        self.width = round(cfg.width_mult * d_model)  # D
        self.hidden = round(cfg.hidden_mult * d_model)  # H
        if self.width < 1 or self.hidden < 1:
            raise ValueError(
                f"denoiser widths D={self.width}, H={self.hidden} for d_model={d_model}: "
                "raise width_mult / hidden_mult so both are at least 1"
            )
        self.time_dim = self.width if cfg.time_dim == "D" else cfg.time_dim  # sinusoid width
        self.time_mlp = nn.Sequential(  # e(t), shared by all blocks
            nn.Linear(self.time_dim, self.width),
            nn.SiLU(),
            nn.Linear(self.width, self.width),
        )
        self.in_proj = nn.Linear(d_model, self.width)
        self.blocks = nn.ModuleList(
            GLPBlock(self.width, self.hidden, self.width, cfg.bias) for _ in range(cfg.n_blocks)
        )
        self.ln_f = nn.LayerNorm(self.width)
        self.out_proj = nn.Linear(self.width, d_model)

        # init="glp", in the spirit of DiT's adaLN-Zero: W_down = 0 (and its bias) makes every block the identity
        # at start (the residual stream does not grow with depth), and W_time's bias = 1 makes the time multiplier
        # start near 1, so each block starts as a plain SwiGLU rather than one with a near-zero gate.
        # init="torch" keeps nn.Linear's default init, as the official code does.
        if cfg.init == "glp":
            for block in self.blocks:
                nn.init.zeros_(block.w_down.weight)
                if block.w_down.bias is not None:
                    nn.init.zeros_(block.w_down.bias)
                nn.init.ones_(block.w_time.bias)
        # skip="affine": the Gaussian prior's velocity as a fixed skip path (buffers, saved with the weights;
        # `set_gaussian` fills them from the training rows). out_proj = 0 makes the network start as exactly it.
        if cfg.skip == "affine":
            self.register_buffer("skip_lam", torch.zeros(d_model))
            self.register_buffer("skip_vecs", torch.zeros(d_model, d_model))
            self.register_buffer("skip_mean", torch.zeros(d_model))
            nn.init.zeros_(self.out_proj.weight)
            nn.init.zeros_(self.out_proj.bias)

    @torch.no_grad()
    def set_gaussian(self, cov: Tensor, mean: Tensor) -> None:
        """Fill the affine skip path with the Gaussian N(mean, cov) of the (normalized) training rows."""
        if self.cfg.skip != "affine":
            raise ValueError("set_gaussian needs DenoiserConfig(skip='affine')")
        lam, vecs = torch.linalg.eigh(cov.double())
        self.skip_lam.copy_(lam.clamp_min(0.0).float())
        self.skip_vecs.copy_(vecs.float())
        self.skip_mean.copy_(mean.float())

    @property
    def n_meta_neurons(self) -> int:
        """Meta-neurons per forward pass: n_blocks * H."""
        return self.cfg.n_blocks * self.hidden

    def forward(self, x: Tensor, t: Tensor | float, return_meta: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, d), t (B,) or scalar -> velocity (B, d) [, meta-neurons (B, n_blocks * H), block-major]."""
        B = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(B)
        temb = self.time_mlp(timestep_embedding(t, self.time_dim).to(x.dtype))  # (B, D)
        h = self.in_proj(x)  # (B, D)
        metas = []
        for block in self.blocks:
            h, meta = block(h, temb)
            metas.append(meta)
        out = self.out_proj(self.ln_f(h))  # (B, d): a velocity, or (prediction "x") a clean-activation estimate
        gauss = None
        if self.cfg.skip == "affine":
            gauss = affine_velocity(x, t, self.skip_lam, self.skip_vecs, self.skip_mean)
        if self.cfg.prediction == "x":
            # v = (x_t - x0_hat) / t. With the skip, x0_hat = the Gaussian's x0 estimate (x_t - t v_gauss) + out, so
            # v = v_gauss - out / t: the network corrects the Gaussian in x0 space. 1/t is clipped at x_t_min.
            inv_t = 1.0 / t.to(out.dtype).clamp_min(self.cfg.x_t_min)[:, None]
            v = gauss - out * inv_t if gauss is not None else (x - out) * inv_t
        else:
            v = out if gauss is None else out + gauss
        if return_meta:
            return v, torch.cat(metas, dim=-1)
        return v

    def config_dict(self) -> dict[str, Any]:
        """JSON-able description from which `from_config_dict` rebuilds the same architecture (and init)."""
        return {"d_model": self.d_model, **self.cfg.model_dump(mode="json")}

    @classmethod
    def from_config_dict(cls, d: dict[str, Any]) -> GLPDenoiser:
        """Rebuild an (untrained) denoiser from `config_dict()` output; load weights separately.

        Dicts saved before a config field existed get that field's default (the architecture they were trained as).
        """
        d = dict(d)
        if "d_model" not in d:
            raise ValueError(f"denoiser config {d} has no 'd_model': was it written by GLPDenoiser.config_dict()?")
        d_model = int(d.pop("d_model"))
        d.setdefault("skip", "none")  # saved before the affine skip existed (and became the default): none
        return cls(d_model, DenoiserConfig(**d))
