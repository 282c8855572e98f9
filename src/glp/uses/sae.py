"""TopK sparse autoencoder (Gao et al. 2024): the SAE baseline of the 1-D probing comparison.

    z = TopK_k( W_enc (x - b_dec) + b_enc )      (B, n_latents), k non-zero per row, ReLU'd
    x_hat = z W_dec + b_dec                        (B, d), decoder rows kept at unit norm

Trained on the same activation store as the prior, z-scored with its normalization stats, for the same
budget of activations (one pass by default); loss = MSE / variance (the fraction of variance unexplained)
plus the AuxK loss that makes dead latents model the residual. Exported as safetensors + a JSON sidecar
(no pickle). No SAE library installs offline here with a TopK trainer for a custom store, so it is ~100 lines.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glp.artifacts import publish_dir, staging_dir
from glp.config import SAEConfig
from glp.data.stats import ArtifactCorrupt, Normalizer, tensors_sha256
from glp.data.loader import iter_shuffled_batches, n_batches
from glp.data.store import ActivationStore
from glp.progress import Progress

WEIGHTS, CONFIG = "sae.safetensors", "config.json"


class TopKSAE(nn.Module):
    """Encoder, TopK, unit-norm decoder; works on normalized activations."""

    def __init__(self, d_model: int, n_latents: int, k: int):
        super().__init__()
        if not 1 <= k <= n_latents:
            raise ValueError(f"SAE k={k} must be in 1..n_latents ({n_latents})")
        self.d_model, self.n_latents, self.k = d_model, n_latents, k
        self.encoder = nn.Linear(d_model, n_latents)
        nn.init.zeros_(self.encoder.bias)
        self.W_dec = nn.Parameter(self.encoder.weight.data.clone())  # (n_latents, d): tied init
        self.b_dec = nn.Parameter(torch.zeros(d_model))
        self.normalize_decoder()

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-8)

    def pre_acts(self, x: Tensor) -> Tensor:
        """(B, d) -> (B, n_latents) ReLU'd pre-activations."""
        return F.relu(self.encoder(x - self.b_dec))

    def encode(self, x: Tensor) -> Tensor:
        """(B, d) -> (B, n_latents) with at most k non-zeros per row: the SAE latents we probe."""
        pre = self.pre_acts(x)
        vals, idx = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, idx, vals)

    def decode(self, z: Tensor) -> Tensor:
        return z @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encode(x)
        return self.decode(z), z


@dataclass
class SAEResult:
    steps: int
    losses: list[float]  # FVU per step
    fvu_last: float  # mean FVU of the last 10% of steps
    heldout_fvu: float | None
    dead_fraction: float  # latents that did not fire in the last `dead_steps` steps
    rows_seen: int
    seconds: float


def fvu(x: Tensor, x_hat: Tensor) -> Tensor:
    """Fraction of variance unexplained: sum of squared errors / total variance about the batch mean."""
    return (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)


def train_sae(
    store: ActivationStore,
    normalizer: Normalizer,
    cfg: SAEConfig,
    epochs: int,
    device: torch.device,
    heldout: ActivationStore | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[TopKSAE, SAEResult]:
    """Train a TopK SAE on every row of `store` (z-scored) for `epochs` passes, seeded and deterministic."""
    torch.manual_seed(cfg.seed)
    d = store.d_model
    sae = TopKSAE(d, cfg.expansion * d, cfg.k).to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
    per_epoch = n_batches(store.n_rows, cfg.batch_size)
    total = per_epoch * epochs
    if total == 0:
        raise ValueError(f"the store has {store.n_rows} rows, fewer than one SAE batch ({cfg.batch_size}): "
                         "lower sae.batch_size or store more activations")
    warmup = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    norm = normalizer.to(device)
    last_fired = torch.zeros(sae.n_latents, dtype=torch.long, device=device)
    k_aux = d // 2
    losses: list[float] = []
    step = 0
    t0 = time.perf_counter()
    progress = Progress("train sae", total, "step", log)
    for epoch in range(epochs):
        for batch in iter_shuffled_batches(store, cfg.batch_size, cfg.seed, epoch):
            x = norm.normalize(torch.from_numpy(batch).to(device))
            pre = sae.pre_acts(x)
            vals, idx = pre.topk(sae.k, dim=-1, sorted=False)
            z = torch.zeros_like(pre).scatter_(-1, idx, vals)
            x_hat = sae.decode(z)
            loss = fvu(x, x_hat)
            fired = torch.zeros(sae.n_latents, dtype=torch.bool, device=device)
            fired[idx[vals > 0]] = True
            last_fired[fired] = step
            dead = (step - last_fired) >= cfg.dead_steps
            total_loss = loss
            n_dead = int(dead.sum())
            if cfg.auxk_coef > 0 and n_dead:
                # AuxK: the top dead latents reconstruct what the live ones miss
                resid = (x - x_hat).detach()
                aux_vals, aux_idx = pre.masked_fill(~dead, 0).topk(min(k_aux, n_dead), dim=-1, sorted=False)
                aux_hat = torch.zeros_like(pre).scatter_(-1, aux_idx, aux_vals) @ sae.W_dec
                total_loss = total_loss + cfg.auxk_coef * fvu(resid, aux_hat + resid.mean(0)).nan_to_num(0.0)
            opt.zero_grad(set_to_none=True)
            total_loss.backward()
            opt.step()
            sched.step()
            sae.normalize_decoder()
            losses.append(float(loss.detach()))
            step += 1
            progress.set(step, lambda: f"fvu {np.mean(losses[-100:]):.4f}, dead {n_dead}/{sae.n_latents}")
    seconds = time.perf_counter() - t0
    k = max(1, len(losses) // 10)
    held = heldout_fvu(sae, normalizer, heldout, device) if heldout is not None else None
    dead_frac = float(((step - 1 - last_fired) >= cfg.dead_steps).float().mean())
    return sae.eval(), SAEResult(step, losses, float(np.mean(losses[-k:])), held, dead_frac,
                                 step * cfg.batch_size, seconds)


@torch.no_grad()
def heldout_fvu(sae: TopKSAE, normalizer: Normalizer, store: ActivationStore, device: torch.device,
                max_rows: int = 20_000) -> float:
    """FVU of the SAE on (up to `max_rows`) held-out rows."""
    x = normalizer.to(device).normalize(torch.from_numpy(store.rows(0, max_rows)).to(device))
    return float(fvu(x, sae(x)[0]))


@torch.no_grad()
def sae_latents(sae: TopKSAE, normalizer: Normalizer, acts: Tensor, batch_size: int = 4096) -> Tensor:
    """Raw activations (n, d) -> SAE latents (n, n_latents), float32 on cpu."""
    dev = next(sae.parameters()).device
    out = [sae.encode(normalizer.to(dev).normalize(acts[i : i + batch_size].to(dev))).cpu()
           for i in range(0, len(acts), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, sae.n_latents)


def save_sae(path: Path, sae: TopKSAE, normalizer: Normalizer, meta: dict[str, Any]) -> Path:
    """Write `sae.safetensors` (weights + normalization) and `config.json` atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in sae.state_dict().items()}
    tensors |= {"norm.mean": normalizer.mean.float().cpu().contiguous(), "norm.std": normalizer.std.float().cpu().contiguous()}
    with staging_dir(path) as tmp:  # removed if anything below fails
        save_file(tensors, str(tmp / WEIGHTS), metadata={"sha256": tensors_sha256({k: v.numpy() for k, v in tensors.items()})})
        config = {"format": "glp-sae/1", "d_model": sae.d_model, "n_latents": sae.n_latents, "k": sae.k, **meta}
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
        publish_dir(tmp, path)
    return path


def load_sae(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[TopKSAE, Normalizer, dict[str, Any]]:
    """Load an exported SAE (safetensors + JSON; no pickle): (model, its input normalizer, config)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / CONFIG).is_file():
        raise FileNotFoundError(f"no exported SAE at {path}: materialize `sae` first")
    fix = "delete the folder and re-materialize `sae` (dagster asset materialize ... --select sae)"
    try:
        config = json.loads((path / CONFIG).read_text())
        tensors = load_file(str(path / WEIGHTS))
        with safe_open(str(path / WEIGHTS), "pt") as f:
            recorded = (f.metadata() or {}).get("sha256")
    except Exception as e:  # truncated weights, malformed JSON
        raise ArtifactCorrupt(f"the SAE at {path} is truncated or corrupt ({type(e).__name__}: {e}): {fix}") from e
    if recorded and tensors_sha256({k: v.numpy() for k, v in tensors.items()}) != recorded:
        raise ArtifactCorrupt(f"{path / WEIGHTS} does not match its recorded checksum: {fix}")
    sae = TopKSAE(config["d_model"], config["n_latents"], config["k"])
    sae.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("norm.")})
    return sae.to(device).eval(), Normalizer(tensors["norm.mean"], tensors["norm.std"]), config


# ---------------------------------------------------------------- the pipeline step


