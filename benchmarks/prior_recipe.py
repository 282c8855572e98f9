"""Which prior recipe buys the lowest held-out loss for its training compute? Each lever, one at a time, at equal FLOPs.

    loss / Gaussian = X.XXXX  held-out flow-matching loss of the trained prior ÷ that of the optimal affine
                              predictor (the full-covariance Gaussian prior, `AffineVelocity`), both on the same
                              held-out rows, noise levels and noise draws. Below 1 the prior has learned something
                              a Gaussian cannot; the goal of the issue "a prior worth its compute" is ≤ 0.80.

Every recipe gets the same budget: the FLOPs (6·N·rows) that the default recipe trains in `--minutes` on an idle
2-core CPU (its step time there, `--default-step-s`, measured by `make run`). A budget in FLOPs is fair when the
machine is shared (wall time is not), and the losses do not depend on how many runs share the machine, so two runs
on one thread each measure what one would alone. Where a recipe costs more wall time per FLOP than the default
(Muon's Newton-Schulz iterations), `--speed` measures it on a quiet machine (interleaved step times), and the table
shows it beside the loss. Each run keeps `--snapshots` mid-run weights: with its start (the Gaussian prior for the
skip path) and its end they are its loss-vs-FLOPs curve, from which the table reads the FLOPs a recipe needs to reach
the official recipe's final loss (a snapshot is the weights mid-way through a run sized for the whole budget: an
upper bound on what a run sized for that budget would reach).

Recipes (RECIPES): the current default (Gaussian skip path, logit-normal t, width_mult 1, 2 blocks, AdamW lr 2e-3,
batch 512, fp32 on a CPU), `official` (the paper's network and init without the skip path, D = 2d, 3 blocks, AdamW
lr 5e-5, weight decay 0.01, batch 4,096, uniform t), `official-net` (that network with this project's lr and batch),
and one lever each: `muon` (train.optimizer), `xpred` (denoiser.prediction "x"), `minsnr` and `learned-w`
(train.loss_weighting), `uniform-t`, `ema`, shape at fixed FLOPs (`w2`, `d4`, `b256`, `b1024`), the learning rate at
two widths with µP-style transfer (`lr1e-3`, `lr4e-3`, `w2+mup`, `w2+mup+lr1e-3`, `w2+mup+lr4e-3`; the transfer
holds when the best lr is the same at both widths), and data vs epochs (`100k`: the first 100k rows repeated;
`more-data`: 1.2M distinct rows from `--big-root`, one pass at the 9-minute budget).

Data: the default source's stores (`make run` first: `assets/store/smollm2-135m/L15`), or `--root`; every recipe
is scored in the normalized space of that store's norm stats.

    python benchmarks/prior_recipe.py --minutes 1.5 [--recipes default muon ...] [--seed 0] --json run.json
    python benchmarks/prior_recipe.py --speed --json speed.json          # wall time per FLOP, quiet machine
    python benchmarks/prior_recipe.py --table run*.json speed.json [--plot curves.png]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glp.config import DenoiserConfig, TrainConfig
from glp.prior.denoiser import GLPDenoiser
from glp.prior.evaluate import AffineVelocity, gaussian_baseline_loss, heldout_loss, heldout_ts
from glp.data.stats import NormStats
from glp.data.store import ActivationStore, StoreWriter
from glp.prior.recipe import FlowObjective, build_optimizer
from glp.prior.train import draw_t, initial_denoiser, train_prior

# Every recipe is the current default (DenoiserConfig(), TrainConfig(): the Gaussian skip path, logit-normal t,
# width_mult 1, 2 blocks, AdamW lr 2e-3, batch 512, fp32 on a CPU) with the overrides below, one lever at a time.
# name: (denoiser overrides, train overrides, data: None = the default store, an int = its first N rows repeated,
#        "big" = the --big-root store of more distinct rows)
OFFICIAL_D = {"preset": "official", "init": "torch", "skip": "none", "width_mult": 2.0, "n_blocks": 3}
OFFICIAL_T = {"lr": 5e-5, "weight_decay": 0.01, "batch_size": 4096, "t_sampling": "uniform"}
RECIPES: dict[str, tuple[dict[str, Any], dict[str, Any], int | str | None]] = {
    "default": ({}, {}, None),
    "official": (OFFICIAL_D, OFFICIAL_T, None),  # the paper's network, init and optimizer settings (1B shape)
    "official-net": (OFFICIAL_D, {"t_sampling": "uniform"}, None),  # ... with this project's lr 2e-3 and batch 512
    "muon": ({}, {"optimizer": "muon"}, None),
    "xpred": ({"prediction": "x"}, {}, None),
    "xpred+lr5e-4": ({"prediction": "x"}, {"lr": 5e-4}, None),  # x0 errors reach the velocity ×1/t: a lower lr
    "minsnr": ({}, {"loss_weighting": "min_snr"}, None),
    "learned-w": ({}, {"loss_weighting": "learned"}, None),
    "uniform-t": ({}, {"t_sampling": "uniform"}, None),
    "ema": ({}, {"ema_decay": 0.999}, None),
    "w2": ({"width_mult": 2.0}, {}, None),
    "w2+mup": ({"width_mult": 2.0}, {"lr_base_width_mult": 1.0}, None),
    "d4": ({"n_blocks": 4}, {}, None),
    "b256": ({}, {"batch_size": 256}, None),
    "b1024": ({}, {"batch_size": 1024}, None),
    "lr1e-3": ({}, {"lr": 1e-3}, None),
    "lr4e-3": ({}, {"lr": 4e-3}, None),
    "w2+mup+lr1e-3": ({"width_mult": 2.0}, {"lr_base_width_mult": 1.0, "lr": 1e-3}, None),
    "w2+mup+lr4e-3": ({"width_mult": 2.0}, {"lr_base_width_mult": 1.0, "lr": 4e-3}, None),
    "muon+lr1e-3": ({}, {"optimizer": "muon", "lr": 1e-3}, None),
    "muon+lr4e-3": ({}, {"optimizer": "muon", "lr": 4e-3}, None),
    "muon+minsnr": ({}, {"optimizer": "muon", "loss_weighting": "min_snr"}, None),  # the two winners together
    "100k": ({}, {}, 100_000),
    "more-data": ({}, {}, "big"),
}


def configs(name: str) -> tuple[DenoiserConfig, TrainConfig]:
    d_over, t_over, _ = RECIPES[name]
    return DenoiserConfig(**d_over), TrainConfig(**t_over)


def n_params_of(d: int, dcfg: DenoiserConfig) -> int:
    return sum(p.numel() for p in GLPDenoiser(d, dcfg).parameters())


def step_seconds(d: int, dcfg: DenoiserConfig, tcfg: TrainConfig, steps: int = 5) -> float:
    """Wall seconds per optimizer step of this recipe (its objective, optimizer, batch; no engine), warmed up."""
    torch.manual_seed(0)
    model = GLPDenoiser(d, dcfg)
    objective = FlowObjective(model, tcfg)
    opt = build_optimizer(objective, dcfg, tcfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tcfg.batch_size, d, generator=g)

    def one() -> None:
        loss, _ = objective(x, draw_t(len(x), tcfg, g), torch.randn(x.shape, generator=g))
        loss.backward()
        opt.step()
        opt.zero_grad()

    for _ in range(2):
        one()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - t0) / steps


def wall_per_flop(d: int, name: str, rounds: int = 3) -> float:
    """(step time of `name` ÷ the default's) ÷ (its 6·N·batch ÷ the default's): above 1, the recipe costs more wall
    time per FLOP than the default (Muon's Newton-Schulz iterations). Median of `rounds` interleaved pairs (default,
    recipe, default, ...), so a change in machine load hits both. Needs a quiet machine."""
    dcfg, tcfg = configs(name)
    d0, t0 = configs("default")
    flops = (n_params_of(d, dcfg) * tcfg.batch_size) / (n_params_of(d, d0) * t0.batch_size)
    return float(np.median([step_seconds(d, dcfg, tcfg) / step_seconds(d, d0, t0) for _ in range(rounds)]) / flops)


def capped_store(store: ActivationStore, rows: int, folder: Path) -> ActivationStore:
    """A store of the first `rows` rows of `store` (same chunking)."""
    writer = StoreWriter(folder / "capped.zarr", store.d_model, store.chunk_rows, {"model": "capped", "split": "train"})
    for start in range(0, rows, store.chunk_rows):
        acts = store.rows(start, min(rows, start + store.chunk_rows))
        idx = np.arange(start, start + len(acts))
        writer.append(acts, idx, np.zeros(len(acts), np.int32), np.zeros(len(acts), np.int32))
    writer.commit(rows)
    return ActivationStore(writer.close())


def run_recipe(name: str, stores: dict[str, ActivationStore], stats: NormStats, x_heldout: torch.Tensor,
               base: float, budget_flops: float, n_t: int, seed: int, snapshots: int, work: Path) -> dict[str, Any]:
    dcfg, tcfg = configs(name)
    data = RECIPES[name][2]
    store = stores["big"] if data == "big" else stores["default"]
    if isinstance(data, int):
        store = capped_store(store, data, work / name)
    n_params = n_params_of(store.d_model, dcfg)
    steps = max(4, int(budget_flops / (6 * n_params * tcfg.batch_size)))
    tcfg = tcfg.model_copy(update={"steps": steps, "seed": seed, "snapshots": snapshots, "checkpoint_every": 10**9})
    points = [(0, initial_denoiser(store, stats.normalizer(), dcfg, seed).eval())]  # the curve's point at 0 FLOPs
    model, res = train_prior(store, stats.normalizer(), dcfg, tcfg, work / name / "ckpt", torch.device("cpu"))
    for tag, state in sorted(res.snapshots.items(), key=lambda kv: int(kv[0][4:])):
        m = GLPDenoiser(store.d_model, dcfg)
        m.load_state_dict(state)
        points.append((int(tag[4:]), m.eval()))
    points.append((steps, model))
    curve = []
    for step, m in points:
        loss = heldout_loss(m, x_heldout, n_t, seed=0)["mean"]
        curve.append({"step": step, "tflop": 6 * n_params * tcfg.batch_size * step / 1e12, "loss": loss,
                      "ratio": loss / base})
    return {"recipe": name, "steps": steps, "batch_size": tcfg.batch_size, "n_params": n_params,
            "rows_distinct": store.n_rows, "epochs": steps * tcfg.batch_size / store.n_rows,
            "wall_minutes": res.seconds / 60, "tflop": res.flops / 1e12,
            "loss": curve[-1]["loss"], "ratio": curve[-1]["ratio"], "curve": curve}


# ---------------------------------------------------------------- the tables and the plot of earlier runs


def load_runs(paths: list[Path]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Training runs ({minutes, seed, results}) and the wall-per-FLOP figures of a --speed run, from JSON files."""
    runs, speed = [], {}
    for p in paths:
        d = json.loads(Path(p).read_text())
        if "wall_per_flop" in d:
            speed.update(d["wall_per_flop"])
        elif "seed" in d:
            runs.append(d)
        else:  # the first round's JSON (2026-11-27): other recipes, no seed
            print(f"skipped {p}: not a run of this recipe list (no seed)", file=sys.stderr)
    return runs, speed


def flops_to_reach(curve: list[dict[str, Any]], loss: float) -> float | None:
    """TFLOP at which a curve first reaches `loss` (linear between its points), or None if it never does."""
    for a, b in zip(curve, curve[1:]):
        if b["loss"] <= loss:
            if a["loss"] <= loss:
                return a["tflop"]
            return a["tflop"] + (b["tflop"] - a["tflop"]) * (a["loss"] - loss) / (a["loss"] - b["loss"])
    return None


def summary_rows(runs: list[dict[str, Any]], speed: dict[str, float]) -> tuple[list[float], list[dict[str, Any]]]:
    """Per recipe: its ratio to the Gaussian at each budget and seed, the mean difference to the default at the
    largest budget (paired by seed), the FLOPs it needs to reach the official recipe's final loss ÷ the official
    run's FLOPs (per seed at the largest budget), whether it beats the default on every seed there."""
    budgets = sorted({r["minutes"] for r in runs})
    top = budgets[-1]
    by: dict[tuple[str, float, int], dict[str, Any]] = {}
    for run in runs:
        for res in run["results"]:
            by[(res["recipe"], run["minutes"], run["seed"])] = res
    names = [n for n in RECIPES if any(k[0] == n for k in by)]
    rows = []
    for n in names:
        row: dict[str, Any] = {"recipe": n, "wall_per_flop": speed.get(n)}
        for b in budgets:
            row[b] = {s: by[(n, b, s)]["ratio"] for (m, bb, s) in by if m == n and bb == b}
        seeds = sorted(s for s in row[top] if ("default", top, s) in by)
        row["delta"] = [row[top][s] - by[("default", top, s)]["ratio"] for s in seeds]
        row["wins_all"] = bool(row["delta"]) and len(seeds) >= 2 and all(x < 0 for x in row["delta"])
        for anchor in ("official", "default"):  # FLOPs to reach the anchor's final loss ÷ the anchor run's FLOPs
            reach = []
            for s in sorted(row[top]):
                ref = by.get((anchor, top, s))
                if ref is None and anchor == "official":  # the anchor run at its largest budget (seed s, else any)
                    refs = sorted((k for k in by if k[0] == anchor), key=lambda k: (k[1], k[2] == s))
                    ref = by[refs[-1]] if refs else None
                if ref is not None:
                    f = flops_to_reach(by[(n, top, s)]["curve"], ref["loss"])
                    reach.append(None if f is None else f / ref["tflop"])
            row[f"reach_{anchor}"] = reach
        rows.append(row)
    return budgets, rows


def verdict(row: dict[str, Any], budgets: list[float]) -> str:
    """Adopted or not, and why, by the issue's rule: a lever is adopted only if it beats the default at the largest
    budget on every seed (at least 2), and costs no more wall time per FLOP than it gains."""
    top, name = budgets[-1], row["recipe"]
    if name == "default":
        return "the default"
    if name.startswith("official"):
        return "anchor"
    if not row[top]:
        small = [row[b] for b in budgets[:-1] if row[b]]
        return f"no: behind the default at {budgets[0]:g} min, not run at {top:g}" if small else "–"
    if len(row["delta"]) < 2:
        return f"not decided: one seed at {top:g} min"
    if not row["wins_all"]:
        losing = sum(x >= 0 for x in row["delta"])
        return f"no: not below the default on {losing} of {len(row['delta'])} seeds at {top:g} min"
    if row["wall_per_flop"] and row["wall_per_flop"] > 1.05:  # below: within the measurement's noise
        return f"yes at equal FLOPs; costs {row['wall_per_flop']:.2f}× the wall time per FLOP"
    return "yes: below the default on every seed"


def results_markdown(runs: list[dict[str, Any]], speed: dict[str, float]) -> str:
    """The recipe table: each lever's held-out loss ÷ the Gaussian prior's at each budget (per seed), its
    difference to the default, the FLOPs it needs to reach the official recipe's final loss, adopted or not."""
    budgets, rows = summary_rows(runs, speed)
    top = budgets[-1]
    tflop = {r["minutes"]: r["budget_fp32_flops"] / 1e12 for r in runs}
    head = ["recipe"] + [f"÷ Gaussian, {b:g} min ({tflop[b]:.1f} TFLOP)" for b in budgets] + [
        f"− default at {top:g} min", "FLOPs to reach default's loss", "FLOPs to reach official's loss", "wall ÷ FLOP",
        f"adopt? (below the default on every seed at {top:g} min)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(d: dict[int, float]) -> str:
        if not d:
            return "–"
        vals = [d[s] for s in sorted(d)]
        seeds = " · ".join(f"{v:.3f}" for v in vals)
        return f"**{np.mean(vals):.3f}**" + (f" ({seeds})" if len(vals) > 1 else "")

    for r in sorted(rows, key=lambda r: np.mean(list(r[top].values())) if r[top] else 9.0):
        delta = (" · ".join(f"{x:+.3f}" for x in r["delta"]) if r["delta"] and r["recipe"] != "default" else "–")
        reach, reach_default = (" · ".join("not reached" if x is None else "0 (its start)" if x == 0 else f"{x:.2f}×"
                                           for x in r[f"reach_{a}"]) or "–" for a in ("official", "default"))
        wpf = f"{r['wall_per_flop']:.2f}" if r["wall_per_flop"] else "–"
        wins = verdict(r, budgets)
        lines.append("| " + " | ".join([r["recipe"]] + [cell(r[b]) for b in budgets]
                                       + [delta, reach_default, reach, wpf, wins]) + " |")
    gauss = {r["minutes"]: r["gaussian_loss"] for r in runs}
    lines += ["", "Ratios: held-out flow-matching loss ÷ the full-covariance Gaussian prior's on the same rows, t and "
              "noise (" + ", ".join(f"{g:.4f}" for g in sorted(set(gauss.values()))) + "); several values: one per "
              "seed, bold their mean. FLOPs to reach official's loss: the FLOPs at which the recipe's curve first "
              "reaches the official recipe's final loss at the largest budget, ÷ the official run's FLOPs (per "
              "seed); the same for the default's final loss at that budget and seed. wall ÷ FLOP: step time per 6·N·batch "
              "relative to the default's, on a quiet machine."]
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({r["minutes"] for r in runs})
    fig, axes = plt.subplots(1, len(budgets), figsize=(8.5 * len(budgets), 5), dpi=110, squeeze=False)
    for ax, b in zip(axes[0], budgets):
        seed = min(r["seed"] for r in runs if r["minutes"] == b)  # one seed's curves (files of one sweep merged)
        results = [res for r in runs if r["minutes"] == b and r["seed"] == seed for res in r["results"]]
        colors = plt.get_cmap("tab20")
        for i, res in enumerate(sorted(results, key=lambda res: list(RECIPES).index(res["recipe"]))):
            c = res["curve"]
            ax.plot([p["tflop"] for p in c], [p["ratio"] for p in c], "o-", ms=3, label=res["recipe"],
                    color="k" if res["recipe"] == "default" else colors(i % 20),
                    lw=2.2 if res["recipe"] == "default" else 1.0)
        ax.axhline(1.0, color="k", lw=0.8, ls="--", label="full-covariance Gaussian")
        ax.axhline(0.8, color="g", lw=0.8, ls=":", label="goal 0.80")
        ax.set_ylim(min(0.75, ax.get_ylim()[0]), 1.1)
        ax.set_xlabel("training FLOPs (TFLOP, 6·N·rows)")
        ax.set_ylabel("held-out loss ÷ Gaussian prior's")
        ax.set_title(f"budget {b:g} min of the default (seed {seed}); points: snapshots", fontsize=10)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)  # curves above 1.1 are cut off
    fig.tight_layout()
    fig.savefig(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path("assets/store/smollm2-135m/L15"),
                    help="source folder holding activations/{train,heldout}.zarr and norm_stats.safetensors")
    ap.add_argument("--big-root", type=Path, default=Path("assets/store-1m2/smollm2-135m/L15"),
                    help="the same source extracted with more train rows (GLP_STORE__MAX_TOKENS=1200000 "
                         "GLP_STORE__ROOT=assets/store-1m2): the `more-data` recipe")
    ap.add_argument("--minutes", type=float, default=1.5,
                    help="budget per recipe: the FLOPs (6·N·rows) the default recipe trains in this many minutes "
                         "on an idle 2-core CPU (--default-step-s)")
    ap.add_argument("--default-step-s", type=float, default=0.23,
                    help="seconds per step of the default recipe on an idle 2-core CPU (make run: 2,343 steps in 9 min)")
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--seed", type=int, default=0, help="train.seed: init, data order, t and noise")
    ap.add_argument("--snapshots", type=int, default=4, help="mid-run points of each curve")
    ap.add_argument("--heldout", type=int, default=8192, help="held-out rows scored")
    ap.add_argument("--n-t", type=int, default=8, help="noise levels of the held-out loss")
    ap.add_argument("--json", type=Path, help="write the results here (after every recipe)")
    ap.add_argument("--speed", action="store_true",
                    help="measure each recipe's wall time per FLOP against the default's (a quiet machine; no training)")
    ap.add_argument("--table", type=Path, nargs="+", metavar="JSON",
                    help="print the recipe table of earlier --json runs (budgets x seeds, and a --speed run) and exit")
    ap.add_argument("--plot", type=Path, help="with --table: write the loss-vs-FLOPs curves (PNG) here")
    args = ap.parse_args()
    if args.table:
        runs, speed = load_runs(args.table)
        print(results_markdown(runs, speed))
        if args.plot:
            plot(runs, args.plot)
        return
    logging.getLogger("deepspeed").setLevel(logging.WARNING)
    for sub in ("train.zarr", "heldout.zarr"):
        if not (args.root / "activations" / sub).exists():
            raise SystemExit(f"no {args.root / 'activations' / sub}: run `make run` first (or pass --root)")
    store = ActivationStore(args.root / "activations" / "train.zarr")
    if args.speed:
        speed = {}
        for name in args.recipes:
            speed[name] = wall_per_flop(store.d_model, name)
            print(f"{name:16s} wall time per FLOP ÷ the default's = {speed[name]:.3f}", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"wall_per_flop": speed, "threads": torch.get_num_threads()}, indent=1))
        return
    stores = {"default": store}
    if "more-data" in args.recipes:
        big = args.big_root / "activations" / "train.zarr"
        if not big.exists():
            raise SystemExit(f"no {big} for the more-data recipe: extract it (see --big-root) or leave the recipe out")
        stores["big"] = ActivationStore(big)
    stats = NormStats.load(args.root / "norm_stats.safetensors")  # one normalized space for every recipe
    held = ActivationStore(args.root / "activations" / "heldout.zarr")
    x = stats.normalizer().normalize(torch.from_numpy(held.rows(0, args.heldout)))
    d0, t0 = configs("default")
    budget = 6 * n_params_of(store.d_model, d0) * t0.batch_size * args.minutes * 60 / args.default_step_s
    base = heldout_loss(AffineVelocity(stats.cov_normalized), x, args.n_t, seed=0)["mean"]  # same rows, t, noise
    exact = gaussian_baseline_loss(stats.cov_normalized, heldout_ts(args.n_t)).mean()
    print(f"store {store.n_rows:,} rows × d={store.d_model}; held-out {len(x):,} rows; Gaussian-prior loss {base:.4f} "
          f"on them ({exact:.4f} expected); budget {budget / 1e12:.1f} TFLOP per recipe ({args.minutes:g} min of the "
          f"default at {args.default_step_s} s/step), seed {args.seed}, torch threads {torch.get_num_threads()}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.recipes:
            r = run_recipe(name, stores, stats, x, base, budget, args.n_t, args.seed, args.snapshots, Path(tmp))
            results.append(r)
            print(f"{name:16s} loss / Gaussian = {r['ratio']:.4f}   (loss {r['loss']:.4f}, {r['steps']:,} steps of "
                  f"{r['batch_size']}, {r['epochs']:.1f} epochs of {r['rows_distinct']:,} rows, {r['n_params'] / 1e6:.1f} M "
                  f"params, {r['wall_minutes']:.1f} wall min here)", flush=True)
            if args.json:  # after every recipe: a long sweep that is stopped keeps what it measured
                args.json.write_text(json.dumps({
                    "minutes": args.minutes, "seed": args.seed, "gaussian_loss": base, "budget_fp32_flops": budget,
                    "heldout": len(x), "n_t": args.n_t, "threads": torch.get_num_threads(), "results": results},
                    indent=1))
    best = min(results, key=lambda r: r["ratio"])
    print(f"best at {args.minutes:g} min: {best['recipe']} ({(1 - best['ratio']) * 100:.1f} % below the Gaussian prior)")


if __name__ == "__main__":
    main()
