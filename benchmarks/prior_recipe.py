"""Which prior recipe buys the lowest held-out loss per CPU-minute? Each recipe trains for the same wall time.

    loss / Gaussian = X.XXX   held-out flow-matching loss of the trained prior ÷ that of the optimal affine
                              predictor (the full-covariance Gaussian prior, exact, `gaussian_baseline_loss`),
                              both on the same held-out rows, noise levels and noise draws. Below 1 the prior
                              has learned something a Gaussian cannot; the issue's goal is ≤ 0.80.

Every recipe gets the same budget: the fp32 FLOPs (6·N·rows) that the base recipe trains in `--minutes` on an
idle 2-core CPU (its step time there, `--base-step-s`, measured by `make run`). A budget in FLOPs is fair when
the machine is shared (wall time is not), and for fp32 recipes it is a budget in time: their step time is
proportional to 6·N·batch (the skip path, the EMA and the t draw cost < 1 %). bf16 is a speed knob, not a FLOP
knob: its speed-up over fp32 on the same model is measured interleaved (fp32, bf16, fp32, ...) and multiplies its
step count. The trainer (`glp.prior.train.train_prior`, DeepSpeed, cosine schedule over those steps) then runs; the
wall minutes it took here are printed as context.
Snapshots at 1/4, 1/2 and 3/4 of each run give its loss-vs-minutes curve (a snapshot is the weights mid-way
through a run sized for the whole budget: an upper bound on what a run sized for that time would reach).

Data: the default source's stores (`make run` first: `assets/store/smollm2-135m/L15`), or `--root`. Recipes:

    base        the previous default: width_mult 1, 2 blocks, lr 2e-3, batch 512, t ~ U[0, 1], fp32
    skip        + the affine skip path (DenoiserConfig.skip = "affine": starts as the Gaussian prior)
    skip+ln     + logit-normal t (TrainConfig.t_sampling)
    skip+ema    + an EMA of the weights (decay 0.999)
    skip+bf16   + bf16 (DeepSpeed bf16 on the CPU; this CPU has avx512_bf16)
    skip+w2     + width_mult 2 (the paper's D = 2d)
    skip+d4     + 4 blocks
    skip+lr5e-3 + lr 5e-3
    skip+b1024  + batch 1024
    skip+100k   + only the first 100k rows, repeated (epochs over a small store vs more activations)

    python benchmarks/prior_recipe.py [--minutes 1.2] [--recipes base skip ...] [--heldout 8192] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glp.config import DenoiserConfig, TrainConfig
from glp.prior.denoiser import GLPDenoiser
from glp.prior.evaluate import AffineVelocity, gaussian_baseline_loss, heldout_loss, heldout_ts
from glp.prior.flow import flow_matching_loss
from glp.data.stats import NormStats
from glp.data.store import ActivationStore, StoreWriter
from glp.prior.train import draw_t, resolve_precision, train_prior

BASE_D = {"width_mult": 1.0, "n_blocks": 2}
BASE_T = {"lr": 2e-3, "batch_size": 512, "warmup_frac": 0.01, "min_lr_ratio": 0.1}
RECIPES: dict[str, tuple[dict[str, Any], dict[str, Any], int | None]] = {  # denoiser, train overrides, rows cap
    "base": ({}, {}, None),
    "skip": ({"skip": "affine"}, {}, None),
    "skip+ln": ({"skip": "affine"}, {"t_sampling": "logit_normal"}, None),
    "skip+ema": ({"skip": "affine"}, {"ema_decay": 0.999}, None),
    "skip+bf16": ({"skip": "affine"}, {"precision": "bf16"}, None),
    "skip+w2": ({"skip": "affine", "width_mult": 2.0}, {}, None),
    "skip+d4": ({"skip": "affine", "n_blocks": 4}, {}, None),
    "skip+lr5e-3": ({"skip": "affine"}, {"lr": 5e-3}, None),
    "skip+b1024": ({"skip": "affine"}, {"batch_size": 1024}, None),
    "skip+100k": ({"skip": "affine"}, {}, 100_000),
}


def step_seconds(d: int, dcfg: DenoiserConfig, tcfg: TrainConfig, steps: int = 6) -> float:
    """Wall seconds per optimizer step of this model, batch and precision (forward, backward, AdamW), warmed up."""
    torch.manual_seed(0)
    dtype = torch.bfloat16 if resolve_precision(tcfg.precision) == "bf16" else torch.float32
    model = GLPDenoiser(d, dcfg).to(dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tcfg.batch_size, d, generator=g).to(dtype)

    def one() -> None:
        loss = flow_matching_loss(model, x, t=draw_t(len(x), tcfg, g).to(dtype))
        loss.backward()
        opt.step()
        opt.zero_grad()

    for _ in range(2):
        one()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - t0) / steps


def speed_vs_fp32(d: int, dcfg: DenoiserConfig, tcfg: TrainConfig, rounds: int = 3) -> float:
    """How many times faster a step runs in tcfg's precision than in fp32 (same model and batch): the median of
    `rounds` interleaved measurements (fp32, this, fp32, this, ...), so a change in machine load hits both."""
    if resolve_precision(tcfg.precision) == "fp32":
        return 1.0
    fp32 = tcfg.model_copy(update={"precision": "fp32"})
    return float(np.median([step_seconds(d, dcfg, fp32) / step_seconds(d, dcfg, tcfg) for _ in range(rounds)]))


def capped_store(store: ActivationStore, rows: int, folder: Path) -> ActivationStore:
    """A store of the first `rows` rows of `store` (same chunking)."""
    writer = StoreWriter(folder / "capped.zarr", store.d_model, store.chunk_rows, {"model": "capped", "split": "train"})
    for start in range(0, rows, store.chunk_rows):
        acts = store.rows(start, min(rows, start + store.chunk_rows))
        idx = np.arange(start, start + len(acts))
        writer.append(acts, idx, np.zeros(len(acts), np.int32), np.zeros(len(acts), np.int32))
    writer.commit(rows)
    return ActivationStore(writer.close())


def run_recipe(name: str, store: ActivationStore, stats: NormStats, x_heldout: torch.Tensor, base: np.ndarray,
               budget_flops: float, n_t: int, work: Path) -> dict[str, Any]:
    d_over, t_over, rows = RECIPES[name]
    dcfg = DenoiserConfig(**{**BASE_D, **d_over})
    tcfg = TrainConfig(**{**BASE_T, **t_over, "snapshots": 3, "checkpoint_every": 10**9})
    data = capped_store(store, rows, work / name) if rows else store
    n_params = sum(p.numel() for p in GLPDenoiser(store.d_model, dcfg).parameters())
    speed = speed_vs_fp32(store.d_model, dcfg, tcfg)  # bf16: more steps in the same time
    steps = max(4, int(budget_flops * speed / (6 * n_params * tcfg.batch_size)))
    tcfg = tcfg.model_copy(update={"steps": steps})
    c0 = time.process_time()
    model, res = train_prior(data, stats.normalizer(), dcfg, tcfg, work / name / "ckpt", torch.device("cpu"))
    cpu_s = time.process_time() - c0
    curve = []
    for tag, state in sorted(res.snapshots.items(), key=lambda kv: int(kv[0][4:])) + [("end", None)]:
        m = model
        if state is not None:
            m = GLPDenoiser(store.d_model, dcfg)
            m.load_state_dict(state)
            m.eval()
        step = steps if tag == "end" else int(tag[4:])
        loss = heldout_loss(m, x_heldout, n_t, seed=0)["mean"]
        curve.append({"step": step, "fp32_tflop": res.flops / speed * step / steps / 1e12, "loss": loss,
                      "ratio": loss / base})
    return {"recipe": name, "steps": steps, "speed_vs_fp32": speed, "cpu_minutes": cpu_s / 60,
            "wall_minutes": res.seconds / 60,
            "n_params": res.n_params, "flops": res.flops, "rows_seen": steps * tcfg.batch_size,
            "loss": curve[-1]["loss"], "ratio": curve[-1]["ratio"], "curve": curve}


def plot(results: list[dict[str, Any]], out: Path, tflop_per_min: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for r in results:
        ax.plot([c["fp32_tflop"] / tflop_per_min for c in r["curve"]], [c["ratio"] for c in r["curve"]], "o-", label=r["recipe"], ms=3)
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label="full-covariance Gaussian")
    ax.axhline(0.8, color="g", lw=0.8, ls=":", label="goal (20 % below)")
    ax.set_xlabel(f"training budget, minutes of the base recipe's fp32 throughput ({tflop_per_min:.1f} TFLOP/min)")
    ax.set_ylabel("held-out loss ÷ Gaussian prior's")
    ax.set_title("Prior recipes: held-out flow-matching loss vs training minutes")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(out)


def results_markdown(run: dict[str, Any]) -> str:
    """The table of a --json run: each recipe's held-out loss ÷ the Gaussian prior's at equal budget, best first."""
    rows = sorted(run["results"], key=lambda r: r["ratio"])
    lines = [f"Budget per recipe: {run['budget_fp32_flops'] / 1e12:.1f} fp32 TFLOP (the base recipe's "
             f"{run['minutes']:g} min on 2 idle cores); Gaussian-prior loss {run['gaussian_loss']:.4f} on the same "
             "held-out rows.", "",
             "| recipe | loss ÷ Gaussian | held-out loss | steps | at 1/4 · 1/2 · 3/4 of the budget | bf16 speed-up |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        mid = " · ".join(f"{c['ratio']:.3f}" for c in r["curve"][:-1])
        lines.append(f"| {r['recipe']} | **{r['ratio']:.3f}** | {r['loss']:.4f} | {r['steps']:,} | {mid} | "
                     f"×{r['speed_vs_fp32']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path("assets/store/smollm2-135m/L15"),
                    help="source folder holding activations/{train,heldout}.zarr and norm_stats.safetensors")
    ap.add_argument("--minutes", type=float, default=1.0,
                    help="budget per recipe: the fp32 FLOPs (6·N·rows) the base recipe trains in this many minutes "
                         "on an idle 2-core CPU (--base-step-s); bf16 recipes get their measured speed-up on top")
    ap.add_argument("--base-step-s", type=float, default=0.23,
                    help="seconds per step of the base recipe on an idle 2-core CPU (make run: 1,560 steps in 6 min)")
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--heldout", type=int, default=8192, help="held-out rows scored")
    ap.add_argument("--n-t", type=int, default=16, help="noise levels of the held-out loss")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--plot", type=Path, help="write the loss-vs-minutes plot (PNG) here")
    ap.add_argument("--markdown", type=Path, metavar="JSON",
                    help="print the results table of an earlier --json run as markdown (no training) and exit")
    args = ap.parse_args()
    if args.markdown:
        print(results_markdown(json.loads(args.markdown.read_text())))
        return
    logging.getLogger("deepspeed").setLevel(logging.WARNING)
    for sub in ("train.zarr", "heldout.zarr"):
        if not (args.root / "activations" / sub).exists():
            raise SystemExit(f"no {args.root / 'activations' / sub}: run `make run` first (or pass --root)")
    store = ActivationStore(args.root / "activations" / "train.zarr")
    stats = NormStats.load(args.root / "norm_stats.safetensors")
    held = ActivationStore(args.root / "activations" / "heldout.zarr")
    x = stats.normalizer().normalize(torch.from_numpy(held.rows(0, args.heldout)))
    n_base = sum(p.numel() for p in GLPDenoiser(store.d_model, DenoiserConfig(**BASE_D)).parameters())
    budget = 6 * n_base * BASE_T["batch_size"] * args.minutes * 60 / args.base_step_s
    base = heldout_loss(AffineVelocity(stats.cov_normalized), x, args.n_t, seed=0)["mean"]  # same rows, t, noise
    exact = gaussian_baseline_loss(stats.cov_normalized, heldout_ts(args.n_t)).mean()
    print(f"store {store.n_rows:,} rows × d={store.d_model}; held-out {len(x):,} rows; Gaussian-prior loss {base:.4f} "
          f"on them ({exact:.4f} expected); budget {budget / 1e12:.1f} fp32 TFLOP per recipe ({args.minutes:g} min "
          f"of the base recipe at {args.base_step_s} s/step), torch threads {torch.get_num_threads()}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.recipes:
            r = run_recipe(name, store, stats, x, base, budget, args.n_t, Path(tmp))
            results.append(r)
            print(f"{name:12s} loss / Gaussian = {r['ratio']:.3f}   (loss {r['loss']:.4f}, {r['steps']:,} steps, "
                  f"{r['wall_minutes']:.2f} wall min here, ×{r['speed_vs_fp32']:.2f} speed vs fp32, {r['n_params'] / 1e6:.1f} M params, {r['flops'] / 1e12:.1f} TFLOP)",
                  flush=True)
            if args.json:  # after every recipe: a long sweep that is stopped keeps what it measured
                args.json.write_text(json.dumps({"minutes": args.minutes, "gaussian_loss": base,
                                                 "budget_fp32_flops": budget, "results": results}, indent=1))
    best = min(results, key=lambda r: r["ratio"])
    print(f"best at {args.minutes:g} min: {best['recipe']} ({(1 - best['ratio']) * 100:.1f} % below the Gaussian prior)")
    if args.plot:
        plot(results, args.plot, 6 * n_base * BASE_T["batch_size"] * 60 / args.base_step_s / 1e12)


if __name__ == "__main__":
    main()
