"""Multi-process training speed-up: the prior's trainer on 2 torchrun ranks vs 1, on the same store and steps.

    speed-up = 2-rank rows/s / 1-rank rows/s      (one run each, `glp.prior.train.train_prior` under torchrun, gloo on CPU)

A random store (d = 256 by default; rows = steps x batch) and the default denoiser config; each run is the real
trainer (DeepSpeed engine, the loader, checkpoints at the end) started as `torchrun --standalone --nproc_per_node
W benchmarks/train_ranks.py --rank-worker ...`, and rows/s is `TrainResult.rows_per_s` of rank 0 (from the first
batch to the final checkpoint: imports, the process group and `deepspeed.initialize` excluded). The 1-rank run is
timed twice, on 1 torch thread and on `--threads` (default: all cores); each of the 2 ranks gets 1 thread.
So the two ratios are "2 ranks / 1 rank on 1 thread" (how ranks scale; 2.0 is perfect) and "2 ranks / 1 rank on all
threads" (what ranks buy over intra-op threading on the same cores). The losses of the two are compared too
(the same steps up to float rounding: glp.prior.train).

    python benchmarks/train_ranks.py [--d 256] [--steps 60] [--batch-size 512] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def rank_worker(store: Path, out: Path, steps: int, batch: int, threads: int) -> None:
    import torch

    from glp.config import DenoiserConfig, TrainConfig
    from glp.data.stats import compute_stats
    from glp.data.store import ActivationStore
    from glp.prior.train import train_prior

    torch.set_num_threads(threads)
    s = ActivationStore(store)
    world = int(os.environ["WORLD_SIZE"])
    cfg = TrainConfig(batch_size=batch, steps=steps, world_size=world, checkpoint_every=10**9, snapshots=0)
    _, res = train_prior(s, compute_stats(s, with_cov=False).normalizer(), DenoiserConfig(), cfg,
                         out.parent / f"ckpt-{world}-{threads}", torch.device("cpu"))
    if int(os.environ["RANK"]) == 0:
        out.write_text(json.dumps({"rows_per_s": res.rows_per_s, "seconds": res.seconds, "losses": res.losses,
                                   "n_params": res.n_params}))


def run(world: int, threads: int, store: Path, tmp: Path, args: argparse.Namespace) -> dict:
    out = tmp / f"out-{world}-{threads}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node",
           str(world), __file__, "--rank-worker", "--store", str(store), "--out", str(out), "--steps",
           str(args.steps), "--batch-size", str(args.batch_size), "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    ap.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_worker:
        rank_worker(args.store, args.out, args.steps, args.batch_size, args.threads)
        return

    import numpy as np

    sys.path.insert(0, str(Path(__file__).parent))
    from train import random_store

    with tempfile.TemporaryDirectory(prefix="glp-ranks-") as tmp_name:
        tmp = Path(tmp_name)
        store = random_store(tmp / "store.zarr", args.steps * args.batch_size, args.d, 4096, 0).path
        one_1 = run(1, 1, store, tmp, args)
        one_n = run(1, args.threads, store, tmp, args)
        two = run(2, 1, store, tmp, args)
    diff = float(np.max(np.abs(np.array(two["losses"]) - one_1["losses"]) / np.abs(one_1["losses"])))
    fig = {"d": args.d, "steps": args.steps, "batch_size": args.batch_size, "n_params": one_1["n_params"],
           "cpus": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
           "rows_per_s_1_rank_1_thread": one_1["rows_per_s"], f"rows_per_s_1_rank_{args.threads}_threads": one_n["rows_per_s"],
           "rows_per_s_2_ranks": two["rows_per_s"], "speedup_vs_1_thread": two["rows_per_s"] / one_1["rows_per_s"],
           f"speedup_vs_{args.threads}_threads": two["rows_per_s"] / one_n["rows_per_s"],
           "max_rel_loss_diff_2_vs_1_rank": diff}
    print(f"prior N = {one_1['n_params']:,} (d = {args.d}), {args.steps} steps of {args.batch_size} rows; "
          f"{os.cpu_count()} CPUs, load average {fig['load_avg_1min']:.2f} when done")
    print(f"1 rank, 1 thread:  {one_1['rows_per_s']:9,.0f} rows/s")
    print(f"1 rank, {args.threads} threads: {one_n['rows_per_s']:9,.0f} rows/s")
    print(f"2 ranks, 1 thread: {two['rows_per_s']:9,.0f} rows/s (losses within {diff:.1e} of 1 rank's, relative)")
    print(f"2 ranks / 1 rank (1 thread)  = {fig['speedup_vs_1_thread']:.2f}x speed-up")
    print(f"2 ranks / 1 rank ({args.threads} threads) = {fig[f'speedup_vs_{args.threads}_threads']:.2f}x speed-up")
    if args.json:
        args.json.write_text(json.dumps(fig, indent=2) + "\n")


if __name__ == "__main__":
    main()
