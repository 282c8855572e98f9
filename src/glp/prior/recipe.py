"""The prior's training recipe beyond the network: which optimizer updates which weight, how each row's loss is
weighted by its noise level, and the record a checkpoint keeps of both.

    FlowObjective(denoiser, tcfg)(x0, t, eps) -> (loss to minimise, plain velocity loss)
    build_optimizer(objective, dcfg, tcfg)    -> AdamW, or MuonWithAdamW; per-matrix lr when µP-style transfer is on
    recipe_record(dcfg, tcfg)                 -> what a checkpoint must match to be resumed by this config

The engine trains a `FlowObjective` (the denoiser, plus the learned-weighting head when there is one); only the
denoiser's weights are exported. Every lever is a config field (benchmarks/prior_recipe.py measures each one); the
default is the winner of that benchmark at equal wall time: AdamW with Min-SNR weighting.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from glp.config import DenoiserConfig, TrainConfig
from glp.prior.denoiser import GLPDenoiser, timestep_embedding
from glp.prior.flow import flow_matching_loss

HEAD_DIM = 128  # sinusoid width of the learned-weighting head's input


class FlowObjective(nn.Module):
    """What the DeepSpeed engine trains: the denoiser and, for `loss_weighting="learned"`, EDM2's uncertainty head
    u(t) (Linear(sinusoid(t)) -> scalar, zero-initialised: it starts as the unweighted loss)."""

    def __init__(self, denoiser: GLPDenoiser, tcfg: TrainConfig) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.weighting = tcfg.loss_weighting
        self.gamma = tcfg.min_snr_gamma
        self.log_var = nn.Linear(HEAD_DIM, 1) if tcfg.loss_weighting == "learned" else None
        if self.log_var is not None:
            nn.init.zeros_(self.log_var.weight)
            nn.init.zeros_(self.log_var.bias)

    def forward(self, x0: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """x0, eps (B, d), t (B,) -> (the weighted loss to minimise, the plain velocity loss: the one logged)."""
        if self.weighting == "none":  # the trainer's loss as it always was
            loss = flow_matching_loss(self.denoiser, x0, t=t, eps=eps)
            return loss, loss
        err = flow_matching_loss(self.denoiser, x0, t=t, eps=eps, per_sample=True)  # (B,) float32
        plain = err.mean()
        tf = t.float()
        if self.weighting == "min_snr":  # min(SNR, γ)·|x0_hat - x0|² = min((1-t)², γt²)·|v_hat - v|²
            w = torch.minimum((1 - tf).square(), self.gamma * tf.square())
            # normalized by the whole global batch's weight (mean over ranks of their sums), so W ranks' averaged
            # gradients are one rank's on the whole batch, as for the unweighted loss
            total, world = sum_over_ranks(w.sum())
            return (w * err).sum() / (total / world).clamp_min(1e-12), plain
        u = self.log_var(timestep_embedding(tf, HEAD_DIM)).squeeze(-1).float()  # (B,) log-variance of the loss at t
        return (err * torch.exp(-u) + u).mean(), plain


def sum_over_ranks(value: Tensor) -> tuple[Tensor, int]:
    """(the sum of a per-rank scalar over the data-parallel ranks, detached; the number of ranks), or (value, 1) in
    one process: ÷ the count, the global batch's mean (the ranks take equal slices)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value, 1
    total = value.detach().float().reshape(1).clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.reshape(value.shape), dist.get_world_size()


def denoiser_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The denoiser's entries of a FlowObjective state dict, without the `denoiser.` prefix (the head is dropped)."""
    return {k[len("denoiser."):]: v for k, v in state.items() if k.startswith("denoiser.")}


def _muon_weight(name: str, p: Tensor) -> bool:
    """Muon updates the hidden matrices: the 2-D weights of the blocks and of the time MLP's second layer. The
    in/out projections (the network's 'embedding' and 'head'), biases, norms and the time MLP's input layer
    (fed a fixed sinusoid) stay with AdamW, as in Moonlight and Keller Jordan's Muon."""
    return p.ndim == 2 and (name.startswith("denoiser.blocks.") or name == "denoiser.time_mlp.2.weight")


def width_lr_scale(objective: FlowObjective, dcfg: DenoiserConfig, tcfg: TrainConfig) -> dict[str, float]:
    """lr multiplier per parameter name: 1, or with `lr_base_width_mult` (µP-style, for Adam) each matrix's fan-in
    at the base width ÷ its fan-in now."""
    scale = {name: 1.0 for name, _ in objective.named_parameters()}
    if tcfg.lr_base_width_mult is None:
        return scale
    d = objective.denoiser.d_model
    with torch.device("meta"):  # shapes only: no memory, no init
        base = dict(GLPDenoiser(d, dcfg.model_copy(update={"width_mult": tcfg.lr_base_width_mult})).named_parameters())
    for name, p in objective.named_parameters():
        key = name[len("denoiser."):]
        if p.ndim == 2 and key in base:
            scale[name] = base[key].shape[1] / p.shape[1]
    return scale


class MuonWithAdamW(torch.optim.Optimizer):
    """torch.optim.Muon for some parameters and torch.optim.AdamW for the rest, as one optimizer: one DeepSpeed
    engine, one lr scheduler, one state dict. Its param_groups are the inner optimizers' groups (so the scheduler's
    lr reaches both) and both inner optimizers keep their state in this one's `state`."""

    def __init__(self, muon_groups: list[dict[str, Any]], adamw_groups: list[dict[str, Any]], *, lr: float,
                 weight_decay: float, momentum: float, betas: tuple[float, float]) -> None:
        self._muon = torch.optim.Muon(muon_groups, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      adjust_lr_fn="match_rms_adamw")
        self._adamw = torch.optim.AdamW(adamw_groups, lr=lr, weight_decay=weight_decay, betas=betas)
        self._n_muon = len(self._muon.param_groups)
        super().__init__([*self._muon.param_groups, *self._adamw.param_groups], {})
        self._link()

    def _link(self) -> None:
        self._muon.param_groups = self.param_groups[: self._n_muon]
        self._adamw.param_groups = self.param_groups[self._n_muon:]
        self._muon.state = self._adamw.state = self.state

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = closure() if closure is not None else None
        self._muon.step()
        self._adamw.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # rebuilds param_groups and state: the inner optimizers follow
        self._link()


def build_optimizer(objective: FlowObjective, dcfg: DenoiserConfig, tcfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of `tcfg.optimizer` over the objective's parameters, one param group per lr multiplier."""
    scale = width_lr_scale(objective, dcfg, tcfg)
    groups: dict[tuple[bool, float], list[Tensor]] = {}
    for name, p in objective.named_parameters():
        groups.setdefault((tcfg.optimizer == "muon" and _muon_weight(name, p), scale[name]), []).append(p)

    def as_groups(muon: bool) -> list[dict[str, Any]]:
        return [{"params": ps, "lr": tcfg.lr * s} for (m, s), ps in sorted(groups.items(), key=lambda kv: kv[0])
                if m == muon]

    betas = (0.9, 0.999)
    if tcfg.optimizer == "adamw":
        return torch.optim.AdamW(as_groups(False), lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=betas)
    return MuonWithAdamW(as_groups(True), as_groups(False), lr=tcfg.lr, weight_decay=tcfg.weight_decay,
                         momentum=tcfg.muon_momentum, betas=betas)


def recipe_record(dcfg: DenoiserConfig, tcfg: TrainConfig) -> dict[str, Any]:
    """What a checkpoint's optimizer state and weights depend on beyond the shapes: a checkpoint is resumed only
    by a config with the same record (the manifest keeps it)."""
    return {"optimizer": tcfg.optimizer, "prediction": dcfg.prediction, "loss_weighting": tcfg.loss_weighting,
            "lr_base_width_mult": tcfg.lr_base_width_mult, "module": "FlowObjective"}
