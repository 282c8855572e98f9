"""Training speed of the prior: `glp.prior.train.train_prior` vs a plain matmul, and the store loader vs the trainer.

    (a) trainer FLOP/s / matmul FLOP/s    trainer FLOP/s = 6 · N · rows/s (N = denoiser parameters); matmul
        FLOP/s = 2·M·K·N/s of a (batch × 1024) @ (1024 × 1024) torch matmul in the trainer's precision (fp32 on
        CPU). How much of the machine's plain-matmul speed the training loop (DeepSpeed engine, flow-matching
        loss, backward, AdamW, loader) turns into model FLOPs; 6·N counts only the dense layers' forward and
        backward, so elementwise work and the optimizer step show up as a lower ratio.
    (b) loader rows/s / trainer rows/s     `glp.data.loader.iter_shuffled_batches` alone over one epoch of the same
        store vs the trainer's rows/s. Above 1, the loader keeps up with the trainer (it is not the bottleneck).

The store holds `steps · batch` random N(0, 1) rows of width d, written with `glp.data.store.StoreWriter`, so one
epoch is `steps` trainer steps. Trainer time is `TrainResult.seconds`: the training loop from the first batch to
the checkpoint after the last step. DeepSpeed's import and `deepspeed.initialize` (process group, engine
build: a one-off cost per run, independent of its length) happen before it and are excluded; their time is
printed as context. The matmul and the loader are measured before and after training, and averaged, so a change
in machine load during the run hits both sides of each ratio alike. Nothing is downloaded.

The denoiser is the default `DenoiserConfig` unless `--profile gpu` (the `GLP_PROFILE=gpu` prior: the paper's
widths D = 2d, H = 4d, 6 blocks, batch 4096, bf16) or the width flags say otherwise. `--model-step` adds a third
ratio, for what a training loop could reach: the same denoiser's own step (flow-matching loss, backward, AdamW)
on batches already on the device, with no DeepSpeed, loader or host-side noise, in the trainer's precision:

    (c) trainer rows/s / model step rows/s   1.0 = the loop costs nothing beyond the model's arithmetic.

`--model-step` also times the DeepSpeed engine's step on the same on-device batches (engine step / bare step: what
the engine costs per step). `--stages` prints instead the stage table of the training loop (read, verify, shuffle,
host->device, noise, step, loader wait; fractions of the loop's wall time), once with the rows streamed by the
prefetching loader (as every run did before rows could be held on the device) and once with them held there.
With `--profile gpu` the store holds bf16 rows in raw chunks, as the gpu profile's extraction writes them.

    python benchmarks/train.py [--d 256] [--steps 100] [--batch-size 512] [--profile gpu] [--n-blocks N]
                               [--width-mult W] [--preset official] [--model-step] [--stages]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from glp.config import DenoiserConfig, StoreConfig, TrainConfig
from glp.data.lm import resolve_device
from glp.data.stats import Normalizer
from glp.data.loader import ResidentRows, iter_shuffled_batches
from glp.data.store import ActivationStore, StoreWriter
from glp.prior.train import init_distributed_env, resolve_precision, train_prior
from glp.progress import StageClock


def random_store(path: Path, n_rows: int, d: int, chunk_rows: int, seed: int, row_dtype: str = "float32",
                 codec: str = "blosc-lz4") -> ActivationStore:
    """A complete store of n_rows random N(0, 1) rows (n_rows, d), written one chunk at a time (bfloat16 rows:
    the float32 draws truncated to bf16)."""
    rng = np.random.default_rng(seed)
    writer = StoreWriter(path, d, chunk_rows, {"model": "random", "split": "bench"}, row_dtype=row_dtype, codec=codec)
    for start in range(0, n_rows, chunk_rows):
        k = min(chunk_rows, n_rows - start)
        zeros = np.zeros(k, np.int32)
        rows = rng.standard_normal((k, d), dtype=np.float32)
        if row_dtype == "bfloat16":
            rows = (rows.view(np.uint32) >> 16).astype(np.uint16)
        writer.append(rows, np.arange(start, start + k), zeros, zeros)
    writer.commit(n_rows)
    return ActivationStore(writer.close())


def matmul_flops(m: int, k: int, n: int, device: torch.device, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """FLOP/s of (m × k) @ (k × n), repeated for about `seconds` after a warm-up."""
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            a @ b
        reps += 10
        sync()
    return 2 * m * k * n * reps / (time.perf_counter() - t0)


def timed_rows_per_s(step: Callable[[int], None], steps: int, batch_size: int, sync: Callable[[], None]) -> float:
    """Rows/s of `steps` calls of step(i) after 3 warm-up calls, the device synchronized before each clock read."""
    for i in range(3):
        step(i)
    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    sync()
    return steps * batch_size / (time.perf_counter() - t0)


def model_step_rows_per_s(d: int, dcfg: DenoiserConfig, batch_size: int, device: torch.device, dtype: torch.dtype,
                          steps: int = 20) -> float:
    """Rows/s of the bare denoiser step: loss, backward, AdamW on random batches already on `device`, params in `dtype`."""
    from glp.prior.denoiser import GLPDenoiser
    from glp.prior.flow import flow_matching_loss

    torch.manual_seed(0)
    model = GLPDenoiser(d, dcfg).to(device, dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0 = torch.randn(4, batch_size, d, device=device, dtype=dtype)  # a few batches, so no step reuses one in cache
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(i: int) -> None:
        loss = flow_matching_loss(model, x0[i % len(x0)])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return timed_rows_per_s(step, steps, batch_size, sync)


def engine_step_rows_per_s(d: int, dcfg: DenoiserConfig, tcfg: TrainConfig, device: torch.device, precision: str,
                           steps: int = 20) -> float:
    """Rows/s of the DeepSpeed engine's step (loss, engine.backward, engine.step with the trainer's config: clip,
    AdamW, LR schedule, bf16 master weights) on batches already on `device`: model_step_rows_per_s with the engine."""
    import deepspeed

    from glp.prior.denoiser import GLPDenoiser
    from glp.prior.flow import flow_matching_loss
    from glp.prior.train import ds_config, lr_lambda

    torch.manual_seed(0)
    model = GLPDenoiser(d, dcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(1000, tcfg))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                           config=ds_config(tcfg, precision, 1))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    x0 = torch.randn(4, tcfg.batch_size, d, device=engine.device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(i: int) -> None:
        loss = flow_matching_loss(engine, x0[i % len(x0)])
        engine.backward(loss)
        engine.step()

    return timed_rows_per_s(step, steps, tcfg.batch_size, sync)


def loader_rows_per_s(store: ActivationStore, batch_size: int, seed: int) -> float:
    """Rows/s of one epoch of `iter_shuffled_batches`, every batch consumed."""
    t0 = time.perf_counter()
    rows = sum(len(batch) for batch in iter_shuffled_batches(store, batch_size, seed))
    return rows / (time.perf_counter() - t0)


STAGES = ("read", "verify", "shuffle", "host->device", "noise", "step", "checkpoint", "loader wait")


def print_stage_tables(store: ActivationStore, dcfg: DenoiserConfig, tcfg: TrainConfig, device: torch.device,
                       tmp: Path) -> None:
    """The training loop's stage table twice: rows streamed by the prefetching loader (resident_max_bytes 0: the
    path every run took before rows could live on the device) and rows held on the device."""
    identity = Normalizer(torch.zeros(store.d_model), torch.ones(store.d_model))
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    walls = {}
    for name, budget in (("streamed (prefetching loader)", 0), ("held on the device", 2**62)):
        clock = StageClock(sync)
        cfg = tcfg.model_copy(update={"resident_max_bytes": budget})
        _, res = train_prior(store, identity, dcfg, cfg, tmp / f"ckpt-{budget}", device, clock=clock)
        walls[name] = res.seconds
        print(f"\n--- training loop, rows {name}: {res.steps} steps of batch {tcfg.batch_size}, d={store.d_model}, "
              f"rows stored as {store.row_dtype} ({store.codec}), precision {res.precision}, device {device}, "
              f"{torch.get_num_threads()} torch threads")
        print(clock.table(res.seconds, STAGES))
        print(f"{res.rows_per_s:,.0f} rows/s (profiled: each stage synchronizes)")
    (a, wa), (b, wb) = walls.items()
    print(f"\ntraining loop seconds, {b} / {a} = {wb / wa:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=256, help="activation width d_model (default 256)")
    p.add_argument("--steps", type=int, default=100, help="trainer steps = one epoch of the store (default 100)")
    p.add_argument("--batch-size", type=int, help="rows per step (default: TrainConfig's, or the profile's)")
    p.add_argument("--profile", choices=["cpu", "gpu"], default="cpu",
                   help="denoiser, batch and precision of this GLP_PROFILE (gpu: glp.config.GPU_PROFILE)")
    p.add_argument("--width-mult", type=float, help="D = width_mult · d (overrides the profile)")
    p.add_argument("--n-blocks", type=int, help="residual blocks (overrides the profile)")
    p.add_argument("--preset", choices=["glp", "official"], help="DenoiserConfig preset (official: the paper's N)")
    p.add_argument("--model-step", action="store_true",
                   help="also time the bare denoiser step (ratio c) and the DeepSpeed engine's step on the same batches")
    p.add_argument("--stages", action="store_true",
                   help="stage tables of the training loop (read, verify, shuffle, host->device, noise, step), the "
                        "rows held on the device vs streamed by the loader")
    p.add_argument("--matmul-k", type=int, default=1024, help="K = N of the baseline (batch × K) @ (K × N) matmul")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    device = resolve_device(args.device)
    from glp.config import GPU_PROFILE

    profile = GPU_PROFILE if args.profile == "gpu" else {}
    over = {k: v for k, v in {"width_mult": args.width_mult, "n_blocks": args.n_blocks, "preset": args.preset}.items()
            if v is not None}
    dcfg = DenoiserConfig(**{**profile.get("denoiser", {}), **over})
    train_over = {"batch_size": args.batch_size} if args.batch_size else {}
    # one checkpoint only, the final save (inside TrainResult.seconds, outside the steady-state window below)
    tcfg = TrainConfig(**{**profile.get("train", {}), **train_over, "seed": args.seed, "checkpoint_every": 10**9})
    args.batch_size = tcfg.batch_size
    precision = resolve_precision(tcfg.precision)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    t0 = time.perf_counter()
    init_distributed_env()
    import deepspeed  # noqa: F401  (imported here so its import time is not mistaken for training)

    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    import_s = time.perf_counter() - t0

    scfg = StoreConfig(**{k: v for k, v in profile.get("store", {}).items() if k in ("row_dtype", "codec")})
    row_dtype = "bfloat16" if scfg.row_dtype == "compute" and precision == "bf16" else "float32"
    with tempfile.TemporaryDirectory(prefix="glp_bench_train_") as tmp:
        tmp = Path(tmp)
        store = random_store(tmp / "rows.zarr", args.steps * args.batch_size, args.d, scfg.chunk_rows, args.seed,
                             row_dtype, scfg.codec)
        if args.stages:
            print_stage_tables(store, dcfg, tcfg, device, tmp)
            return
        mm = [matmul_flops(args.batch_size, args.matmul_k, args.matmul_k, device, dtype)]
        load = [loader_rows_per_s(store, args.batch_size, args.seed)]
        identity = Normalizer(torch.zeros(args.d), torch.ones(args.d))  # rows are already N(0, 1)
        # Steady state: the loader is wrapped to stamp the time each batch is handed to the loop (batch i is taken
        # once step i-1 is done), so the rate between batch 10 and the last one leaves out warm-up and the save.
        import glp.prior.train as train_module

        stamps: list[float] = []

        def stamped(*a, **k):
            for batch in iter_shuffled_batches(*a, **k):
                stamps.append(time.perf_counter())
                yield batch

        resident_batches = ResidentRows.batches

        def stamped_resident(self, *a, **k):
            for batch in resident_batches(self, *a, **k):
                stamps.append(time.perf_counter())
                yield batch

        train_module.iter_shuffled_batches = stamped
        ResidentRows.batches = stamped_resident
        try:
            t0 = time.perf_counter()
            _, res = train_prior(store, identity, dcfg, tcfg, tmp / "ckpt", device)
        finally:
            train_module.iter_shuffled_batches = iter_shuffled_batches
            ResidentRows.batches = resident_batches
        outside_loop_s = time.perf_counter() - t0 - res.seconds  # deepspeed.initialize + final weight export
        mm.append(matmul_flops(args.batch_size, args.matmul_k, args.matmul_k, device, dtype))
        load.append(loader_rows_per_s(store, args.batch_size, args.seed))
        step_rps = model_step_rows_per_s(args.d, dcfg, args.batch_size, device, dtype) if args.model_step else None
        engine_rps = engine_step_rows_per_s(args.d, dcfg, tcfg, device, precision) if args.model_step else None

    trainer_flops = res.flops / res.seconds
    mm_flops, load_rps = statistics.mean(mm), statistics.mean(load)
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    widths = (f"D = {dcfg.width_mult:g}·d, H = {dcfg.hidden_mult:g}·d, {dcfg.n_blocks} blocks"
              f"{', preset ' + dcfg.preset if dcfg.preset else ''}")
    print(f"device {device} ({name}){threads}; precision {res.precision}; d={args.d}, {args.profile} profile denoiser: "
          f"{widths} (N = {res.n_params:,} params); {res.steps} steps of batch {args.batch_size} = one epoch of the store")
    print(f"trainer: {res.seconds:.1f} s, {res.rows_per_s:,.0f} rows/s, {trainer_flops / 1e9:.2f} GFLOP/s (6·N·rows/s); "
          f"excluded: DeepSpeed import {import_s:.1f} s, initialize + export {outside_loop_s:.1f} s")
    print(f"matmul ({args.batch_size}×{args.matmul_k})@({args.matmul_k}×{args.matmul_k}) {precision}: "
          f"{mm_flops / 1e9:.2f} GFLOP/s (before/after training: {mm[0] / 1e9:.2f}/{mm[1] / 1e9:.2f})")
    print(f"loader (iter_shuffled_batches, one epoch): {load_rps:,.0f} rows/s "
          f"(before/after training: {load[0]:,.0f}/{load[1]:,.0f})")
    print(f"trainer FLOP/s / matmul FLOP/s = {trainer_flops / mm_flops:.2f}")
    loop_rps, loop = res.rows_per_s, "end to end"
    if len(stamps) >= 20:  # steady state: from batch 10 to the last batch, so neither warm-up nor the final save counts
        sa, sb = 10, len(stamps) - 1
        ta, tb = stamps[sa], stamps[sb]
        steady_rps = loop_rps = (sb - sa) * args.batch_size / (tb - ta)
        loop = "steady state"
        print(f"trainer steady state, steps {sa}->{sb} (no warm-up, no checkpoint save): {steady_rps:,.0f} rows/s = "
              f"{6 * res.n_params * steady_rps / 1e12:.2f} TFLOP/s")
        print(f"trainer steady-state FLOP/s / matmul FLOP/s = {6 * res.n_params * steady_rps / mm_flops:.2f}")
    print(f"loader rows/s / trainer rows/s = {load_rps / res.rows_per_s:.2f}")
    if step_rps:
        print(f"model step alone (loss, backward, clip, AdamW; {precision} params, data on the device, no DeepSpeed): "
              f"{step_rps:,.0f} rows/s = {6 * res.n_params * step_rps / 1e12:.2f} TFLOP/s = "
              f"{6 * res.n_params * step_rps / mm_flops:.2f} of the matmul")
        print(f"trainer rows/s ({loop}) / model step rows/s = {loop_rps / step_rps:.2f}")
        per_step_ms = (args.batch_size / engine_rps - args.batch_size / step_rps) * 1e3
        print(f"DeepSpeed engine step (same batches on the device, the trainer's config): {engine_rps:,.0f} rows/s; "
              f"engine step / bare step = {engine_rps / step_rps:.2f} ({per_step_ms:+.2f} ms per step)")


if __name__ == "__main__":
    main()
