"""Flow-matching training of the GLP denoiser through a DeepSpeed engine (CPU or GPU, same code).

One process by default (the engine is initialised with a gloo/nccl group of size 1; launch with
`deepspeed`/`torchrun` for more). Batches stream shuffled from the Zarr store; every random choice of step
s (t and ε) comes from a generator seeded by (seed, s) and batch s is fixed by (seed, epoch, index), so a
run resumed from a checkpoint takes exactly the same steps as an uninterrupted one.
"""

from __future__ import annotations

import importlib
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glp.config import DenoiserConfig, TrainConfig
from glp.denoiser import GLPDenoiser
from glp.flow import flow_matching_loss
from glp.stats import Normalizer
from glp.store import ActivationStore, iter_shuffled_batches, n_batches


class TrainingInterrupted(RuntimeError):
    """Raised when `interrupt_after` steps are done (tests use it to simulate a killed run)."""


@dataclass
class TrainResult:
    steps: int
    losses: list[float]  # one per step, from step 0 (restored from the checkpoint when resumed)
    seconds: float
    rows_per_s: float
    resumed_from: int
    precision: str
    n_params: int
    flops: float  # 6 · N · rows seen, for the whole run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed_env() -> None:
    """Single-process defaults for torch.distributed/DeepSpeed (a launcher's own env wins)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    if os.environ.get("WORLD_SIZE", "1") == "1":
        # The shared-memory comm op is only used across processes; skip its ~55 s JIT build (STACK.md 3).
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def lr_lambda(total_steps: int, cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warmup over warmup_frac of the steps, then cosine decay to min_lr_ratio (a 0.1x floor)."""
    warmup = max(1, int(round(cfg.warmup_frac * total_steps)))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def resolve_precision(precision: str) -> str:
    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def ds_config(cfg: TrainConfig, precision: str, world_size: int) -> dict[str, Any]:
    if cfg.batch_size % world_size:
        raise ValueError(f"train.batch_size {cfg.batch_size} is not divisible by world size {world_size}")
    return {
        "train_batch_size": cfg.batch_size,
        "train_micro_batch_size_per_gpu": cfg.batch_size // world_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def train_prior(
    store: ActivationStore,
    normalizer: Normalizer,
    dcfg: DenoiserConfig,
    tcfg: TrainConfig,
    ckpt_dir: Path,
    device: torch.device,
    log: Callable[[str], None] | None = None,
    interrupt_after: int | None = None,
) -> tuple[GLPDenoiser, TrainResult]:
    """Train a denoiser on the store's rows; resumes from `ckpt_dir` if it holds a checkpoint of this run."""
    init_distributed_env()
    import deepspeed

    torch.manual_seed(tcfg.seed)
    model = GLPDenoiser(store.d_model, dcfg)
    n_params = sum(p.numel() for p in model.parameters())
    per_epoch = n_batches(store.n_rows, tcfg.batch_size)
    if per_epoch == 0:
        raise ValueError(f"store has {store.n_rows} rows, fewer than one batch of {tcfg.batch_size}: lower train.batch_size")
    total = per_epoch * tcfg.epochs
    precision = resolve_precision(tcfg.precision)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, tcfg))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config(tcfg, precision, world)
    )
    in_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    norm = normalizer.to(engine.device)

    losses: list[float] = []
    start = 0
    if (ckpt_dir / "latest").is_file():
        _, client = engine.load_checkpoint(str(ckpt_dir))
        start, losses = int(client["step"]), list(client["losses"])
        if log:
            log(f"resumed from checkpoint at step {start}/{total}")

    rank = int(os.environ.get("RANK", "0"))
    micro = tcfg.batch_size // world
    engine.train()
    t0 = time.perf_counter()
    step = start
    for epoch in range(start // per_epoch, tcfg.epochs):
        first = step - epoch * per_epoch
        for batch in iter_shuffled_batches(store, tcfg.batch_size, tcfg.seed, epoch, start_batch=first):
            gen = step_generator(tcfg.seed, step)
            t = torch.rand(tcfg.batch_size, generator=gen)
            eps = torch.randn(batch.shape, generator=gen)
            sl = slice(rank * micro, (rank + 1) * micro)  # this rank's share of the global batch
            x0 = norm.normalize(torch.from_numpy(batch[sl]).to(engine.device))
            loss = flow_matching_loss(
                engine, x0.to(in_dtype), t=t[sl].to(engine.device, in_dtype), eps=eps[sl].to(engine.device, in_dtype)
            )
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach()))
            step += 1
            if log and (step % 100 == 0 or step == total):
                log(f"step {step}/{total} loss {np.mean(losses[-100:]):.4f} lr {scheduler.get_last_lr()[0]:.2e}")
            if step % tcfg.checkpoint_every == 0 or step == total:
                engine.save_checkpoint(str(ckpt_dir), tag=f"step{step}", client_state={"step": step, "losses": losses})
                _prune_checkpoints(ckpt_dir, keep=f"step{step}")
            if interrupt_after is not None and step >= interrupt_after:
                raise TrainingInterrupted(f"stopped after step {step} as asked")
    seconds = time.perf_counter() - t0
    rows = (step - start) * tcfg.batch_size
    trained = GLPDenoiser(store.d_model, dcfg)
    trained.load_state_dict(_full_state_dict(engine, tcfg.zero_stage))
    result = TrainResult(
        steps=step, losses=losses, seconds=seconds, rows_per_s=rows / max(seconds, 1e-9), resumed_from=start,
        precision=precision, n_params=n_params, flops=6.0 * n_params * total * tcfg.batch_size,
    )
    return trained.float().eval(), result


def _full_state_dict(engine: Any, zero_stage: int) -> dict[str, torch.Tensor]:
    """fp32 weights of the engine's module (gathered from the partitions under ZeRO-3)."""
    if zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = engine.module.state_dict()
    return {k: v.detach().float().cpu() for k, v in state.items()}


def _prune_checkpoints(ckpt_dir: Path, keep: str) -> None:
    """Keep only the newest checkpoint tag (the `latest` file points at it)."""
    import shutil

    for p in ckpt_dir.iterdir():
        if p.is_dir() and p.name.startswith("step") and p.name != keep:
            shutil.rmtree(p, ignore_errors=True)
