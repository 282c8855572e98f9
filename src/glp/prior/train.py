"""Flow-matching training of the GLP denoiser through a DeepSpeed engine (CPU or GPU, same code).

One process by default (the engine is initialised with a gloo/nccl group of size 1; launch with
`deepspeed`/`torchrun` for more: `glp_dagster.pipes_train`). Batches stream shuffled from the Zarr store; every
random choice of step s (t and ε) comes from a generator seeded by (seed, s) and batch s is fixed by (seed, epoch,
index), so a run resumed from a checkpoint takes exactly the same steps as an uninterrupted one. With W ranks, each
rank draws the same global batch, t and ε and trains on its W-th slice of them; DeepSpeed averages the gradients,
so W ranks take the one-rank steps up to float rounding, and the logged loss is the global batch's (all-reduced).

The run checkpoints every `checkpoint_every` steps and resumes from the newest sound checkpoint
(`glp.prior.checkpoints`: sealed by a manifest, loaded weights-only, refused when another recipe wrote it).
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glp.config import DenoiserConfig, TrainConfig
from glp.data.stats import Normalizer
from glp.data.loader import ResidentRows, iter_shuffled_batches, n_batches
from glp.data.store import ActivationStore
from glp.prior.checkpoints import process_rank, resume_tag, save_checkpoint, weights_only_checkpoint_engine
from glp.prior.denoiser import GLPDenoiser
from glp.prior.recipe import FlowObjective, build_optimizer, denoiser_state, recipe_record, sum_over_ranks
from glp.progress import Progress, StageClock, stage


class TrainingInterrupted(RuntimeError):
    """Raised when `interrupt_after` steps are done (tests use it to simulate a killed run)."""


class NonFiniteLoss(ValueError):
    """The training loss went NaN or Inf: nothing of that run is published."""


def _non_finite_message(step: int, epoch: int, losses: list[float], x0: torch.Tensor | None,
                        tcfg: TrainConfig) -> str:
    """`losses` ends with the first non-finite loss (of `step`); `x0` is that step's input batch when known."""
    last = next((f"{v:.4g} at step {k + 1}" for k, v in reversed(list(enumerate(losses[:-1]))) if math.isfinite(v)),
                "none")
    diverged = (f"so the training diverged: lower train.lr (now {tcfg.lr:g}) or raise train.warmup_frac, then "
                "re-materialize `glp_prior`")
    if x0 is None:
        cause = f"every row read is checked finite where it is read, {diverged}"
    elif bool(torch.isfinite(x0).all()):
        cause = f"the input batch was finite (max |x| {float(x0.abs().max()):.3g} after normalization), {diverged}"
    else:
        cause = ("the input batch holds NaN/Inf after normalization (the norm stats or the store are corrupt): "
                 "re-materialize `norm_stats` (and `activations` if its checks fail)")
    return (f"the training loss went {losses[-1]} at step {step} (epoch {epoch}; last finite loss {last}); no "
            f"prior is published and no checkpoint of it is kept: {cause}")


_log = logging.getLogger(__name__)


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
    recipe: dict[str, Any] = field(default_factory=dict)  # recipe.recipe_record of the run
    snapshots: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # "step<N>" -> state_dict (fp32)


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
    # The shared-memory comm op serves only DeepSpeed's inference_all_reduce (deepspeed 0.19 comm/torch.py), never
    # training's gradient all-reduce (torch.distributed: gloo / nccl): skip its ~55 s JIT build (STACK.md 3).
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


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of step `step`'s random choices (t and ε). On a CUDA device it is the device's own generator
    (no host-side draw and copy per step; its numbers differ from the CPU generator's, but are as reproducible)."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)


def draw_t(n: int, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Training noise levels (n,) in [0, 1] on the generator's device: uniform, or logit-normal sigmoid(N(t_mean, t_std))."""
    if cfg.t_sampling == "uniform":
        return torch.rand(n, generator=gen, device=gen.device)
    return torch.sigmoid(cfg.t_mean + cfg.t_std * torch.randn(n, generator=gen, device=gen.device))


@torch.no_grad()
def normalized_moments(store: ActivationStore, normalizer: Normalizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (d,) and covariance (d, d), float64, of the store's rows in the normalized space (one streamed pass)."""
    d = store.d_model
    total, outer, n = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64), 0
    for chunk in store.iter_chunks():
        z = normalizer.normalize(torch.from_numpy(chunk)).double()
        total += z.sum(0)
        outer += z.T @ z
        n += len(z)
    mean = total / n
    return mean, (outer - n * torch.outer(mean, mean)) / max(n - 1, 1)


def initial_denoiser(store: ActivationStore, normalizer: Normalizer, dcfg: DenoiserConfig, seed: int) -> GLPDenoiser:
    """The denoiser as training starts it: initialised under `seed`, its affine skip path (if any) filled with the
    Gaussian of the store's normalized rows."""
    torch.manual_seed(seed)
    model = GLPDenoiser(store.d_model, dcfg)
    if dcfg.skip == "affine":
        mean, cov = normalized_moments(store, normalizer)
        model.set_gaussian(cov, mean)
    return model


class WeightAverage:
    """Exponential moving average of a module's floating-point parameters (fp32 copies): p_ema <- d p_ema + (1-d) p."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: p.detach().float().clone() for k, p in module.named_parameters()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for k, p in module.named_parameters():
            self.shadow[k].lerp_(p.detach().float(), 1.0 - self.decay)

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.shadow.items()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        missing = self.shadow.keys() - state.keys()
        if missing:
            raise ValueError(f"checkpoint's weight average lacks {sorted(missing)[:3]}: was ema_decay changed mid-run?")
        self.shadow = {k: state[k].float().clone() for k in self.shadow}


def snapshot_steps(total: int, n: int) -> list[int]:
    """The `n` evenly spaced steps (before the last) at which training keeps a copy of the weights."""
    return sorted({max(1, round(total * (i + 1) / (n + 1))) for i in range(n)} - {total})


def train_prior(
    store: ActivationStore,
    normalizer: Normalizer,
    dcfg: DenoiserConfig,
    tcfg: TrainConfig,
    ckpt_dir: Path,
    device: torch.device,
    log: Callable[[str], None] | None = None,
    interrupt_after: int | None = None,
    clock: StageClock | None = None,
) -> tuple[GLPDenoiser, TrainResult]:
    """Train a denoiser on the store's rows; resumes from the newest good checkpoint of this run in `ckpt_dir`.

    The rows are held on the device when they fit in `tcfg.resident_max_bytes` (read and verified once), else
    streamed by the prefetching loader; either way batch s is the same. `clock` (benchmarks) gets seconds per
    stage: read, verify, shuffle, host->device, noise (t and ε), step, checkpoint, loader wait."""
    ckpt_dir = Path(ckpt_dir)
    init_distributed_env()
    import deepspeed

    model = initial_denoiser(store, normalizer, dcfg, tcfg.seed)
    if tcfg.ema_decay is not None and tcfg.zero_stage == 3:
        raise ValueError("train.ema_decay needs the full weights on every rank: use zero_stage 0-2, or ema_decay None")
    n_params = sum(p.numel() for p in model.parameters())
    objective = FlowObjective(model, tcfg)  # what the engine trains: the denoiser (+ a learned-weighting head)
    per_epoch = n_batches(store.n_rows, tcfg.batch_size)
    if per_epoch == 0:
        raise ValueError(f"store has {store.n_rows} rows, fewer than one batch of {tcfg.batch_size}: lower train.batch_size")
    total = tcfg.steps or per_epoch * tcfg.epochs  # `steps` cycles through as many (partial) epochs as it needs
    precision = resolve_precision(tcfg.precision)
    if tcfg.optimizer == "muon" and precision == "bf16":
        raise ValueError("train.optimizer muon trains in fp32 only (DeepSpeed's bf16 optimizer flattens the weights, "
                         "which Muon cannot orthogonalize), and precision auto chose bf16 on this GPU: set "
                         "train.precision fp32 (GLP_TRAIN__PRECISION=fp32), or train.optimizer adamw")
    optimizer = build_optimizer(objective, dcfg, tcfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, tcfg))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    engine, _, _, _ = deepspeed.initialize(
        model=objective, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config(tcfg, precision, world)
    )
    in_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    norm = normalizer.to(engine.device)

    engine.checkpoint_engine = weights_only_checkpoint_engine()(engine._config)
    say = log or _log.warning  # what happened to a checkpoint must not go unsaid

    losses: list[float] = []
    start = 0
    ema = WeightAverage(engine.module.denoiser, tcfg.ema_decay) if tcfg.ema_decay is not None else None
    keep_at = set(snapshot_steps(total, tcfg.snapshots))
    snap_dir = ckpt_dir / "snapshots"  # written atomically when reached; a resumed run rewrites identical ones
    recipe = recipe_record(dcfg, tcfg)
    tag = resume_tag(ckpt_dir, say, engine.device, recipe)
    if tag is not None:
        _, client = engine.load_checkpoint(str(ckpt_dir), tag=tag)
        start, losses = int(client["step"]), list(client["losses"])
        if ema is not None:
            ema.load(client["ema"])
        say(f"resumed from checkpoint {ckpt_dir / tag} at step {start}/{total}")

    rank = process_rank()
    micro = tcfg.batch_size // world
    engine.train()
    t0 = time.perf_counter()
    resident = ResidentRows(store, engine.device, clock) if store.nbytes_rows <= tcfg.resident_max_bytes else None
    noise_device = engine.device if engine.device.type == "cuda" else torch.device("cpu")
    pending: list[torch.Tensor] = []

    checked = len(losses)  # losses before this index are known finite

    def flushed() -> list[float]:
        """Every step's loss on the host, each checked finite once: the first non-finite one stops the run, before
        any checkpoint of it (a resume restarts from the last good one) and before anything is published."""
        nonlocal checked
        if pending:
            losses.extend(float(x) for x in torch.stack(pending).float().cpu())
            pending.clear()
        bad = next((k for k in range(checked, len(losses)) if not math.isfinite(losses[k])), None)
        if bad is not None:
            raise NonFiniteLoss(_non_finite_message(bad + 1, epoch, losses[: bad + 1],
                                                    x0 if bad + 1 == step else None, tcfg))
        checked = len(losses)
        return losses

    step = start
    progress = Progress("train", total, "step", log, done=start)
    for epoch in range(start // per_epoch, -(-total // per_epoch)):
        first = step - epoch * per_epoch
        if resident is not None:
            batches: Iterator[Any] = resident.batches(tcfg.batch_size, tcfg.seed, epoch, start_batch=first, clock=clock)
        else:
            batches = iter_shuffled_batches(store, tcfg.batch_size, tcfg.seed, epoch, start_batch=first, clock=clock)
        while True:
            with stage(clock, "loader wait"):
                batch = next(batches, None)
            if batch is None or step >= total:
                break
            with stage(clock, "noise"):
                gen = step_generator(tcfg.seed, step, noise_device)
                t = draw_t(tcfg.batch_size, tcfg, gen)
                eps = torch.randn(batch.shape, generator=gen, device=noise_device)
            sl = slice(rank * micro, (rank + 1) * micro)  # this rank's share of the global batch
            with stage(clock, "host->device"):
                x0 = batch[sl] if resident is not None else torch.from_numpy(batch[sl])
                x0 = norm.normalize(x0.to(engine.device))
            with stage(clock, "step"):
                loss, plain = engine(x0.to(in_dtype), t[sl].to(engine.device, in_dtype),
                                     eps[sl].to(engine.device, in_dtype))
                engine.backward(loss)
                engine.step()
            if ema is not None:
                ema.update(engine.module.denoiser)
            if world == 1:  # kept on the device until needed: no host-device sync per step
                pending.append(plain.detach())
            else:
                summed, ranks = sum_over_ranks(plain.detach())
                losses.append(float(summed) / ranks)  # the global batch's loss, on every rank
            step += 1
            if world > 1:  # the loss is on the host already (the all-reduce synchronized)
                flushed()
            if step in keep_at:
                with stage(clock, "checkpoint"):
                    weights = _full_state_dict(engine, tcfg.zero_stage)  # a collective under ZeRO-3: every rank
                    if ema is not None:
                        weights.update(ema.state())
                    if rank == 0:
                        _save_weights(snap_dir / f"step{step}.safetensors", weights)
            progress.set(step, lambda: f"loss {np.mean(flushed()[-100:]):.4f} lr {scheduler.get_last_lr()[0]:.2e}")
            if step % tcfg.checkpoint_every == 0 or step == total:
                with stage(clock, "checkpoint"):
                    client = {"step": step, "losses": flushed()}
                    save_checkpoint(engine, ckpt_dir, step, client if ema is None else {**client, "ema": ema.state()},
                                    recipe)
            if interrupt_after is not None and step >= interrupt_after:
                batches.close()
                raise TrainingInterrupted(f"stopped after step {step} as asked")
        batches.close()  # stops the loader's thread when the run ends inside the epoch
    flushed()
    seconds = time.perf_counter() - t0
    rows = (step - start) * tcfg.batch_size
    trained = GLPDenoiser(store.d_model, dcfg)
    final = _full_state_dict(engine, tcfg.zero_stage)  # buffers (the skip path) come from here
    trained.load_state_dict({**final, **ema.state()} if ema is not None else final)
    result = TrainResult(
        steps=step, losses=losses, seconds=seconds, rows_per_s=rows / max(seconds, 1e-9), resumed_from=start,
        precision=precision, n_params=n_params, flops=6.0 * n_params * total * tcfg.batch_size, recipe=recipe,
        snapshots={f"step{k}": _load_weights(snap_dir / f"step{k}.safetensors") for k in sorted(keep_at)
                   if (snap_dir / f"step{k}.safetensors").is_file()},
    )
    return trained.float().eval(), result


def _save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _full_state_dict(engine: Any, zero_stage: int) -> dict[str, torch.Tensor]:
    """fp32 weights of the engine's denoiser (gathered from the partitions under ZeRO-3; the objective's
    learned-weighting head is not part of the prior)."""
    if zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = engine.module.state_dict()
    return {k: v.detach().float().cpu() for k, v in denoiser_state(state).items()}
