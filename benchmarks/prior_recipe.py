"""Which prior recipe buys the lowest held-out loss for its training compute? Each lever, one at a time, at equal FLOPs.

    loss / Gaussian = X.XXXX  held-out flow-matching loss of the trained prior ÷ that of the optimal affine
                              predictor (the full-covariance Gaussian prior, `AffineVelocity`), both on the same
                              held-out rows, noise levels and noise draws. Below 1 the prior has learned something
                              a Gaussian cannot; the goal of the issue "a prior worth its compute" is ≤ 0.80.

Every recipe gets the same budget: the FLOPs (6·N·rows) that the baseline recipe (`adamw`: the default before this
benchmark) trains in `--minutes` on an idle 2-core CPU (its step time there, `--default-step-s`, measured by `make
run`). A budget in FLOPs is fair when the machine is shared (wall time is not), and the losses do not depend on how
many runs share the machine, so two runs on one thread each measure what one would alone. Where a recipe costs more
wall time per FLOP than the baseline (Muon's Newton-Schulz iterations), `--speed` measures it on a quiet machine
(interleaved step times), and `--equal-wall SPEED.json` gives each recipe the FLOPs it trains in the baseline's wall
time instead (budget ÷ its wall time per FLOP): the comparison `make run`, which has minutes to spend, cares about. Each run keeps `--snapshots` mid-run weights: with its start (the Gaussian prior for the
skip path) and its end they are its loss-vs-FLOPs curve, from which the table reads the FLOPs a recipe needs to reach
the official recipe's final loss (a snapshot is the weights mid-way through a run sized for the whole budget: an
upper bound on what a run sized for that budget would reach).

Recipes (RECIPES): `adamw`, the baseline (the default before this benchmark: Gaussian skip path, logit-normal t,
width_mult 1, 2 blocks, AdamW lr 2e-3, batch 512, fp32 on a CPU), `official` (the paper's network and init without the skip path, D = 2d, 3 blocks, AdamW
lr 5e-5, weight decay 0.01, batch 4,096, uniform t), `official-net` (that network with this project's lr and batch),
and one lever each: `muon` (train.optimizer; `muon+b1024`, `muon+b2048`: Muon
with larger batches, which pay its Newton-Schulz cost over more rows), `xpred` (denoiser.prediction "x"), `minsnr` and `learned-w`
(train.loss_weighting), `uniform-t`, `ema`, shape at fixed FLOPs (`w2`, `d4`, `b256`, `b1024`), the learning rate at
two widths with µP-style transfer (`lr1e-3`, `lr4e-3`, `w2+mup`, `w2+mup+lr1e-3`, `w2+mup+lr4e-3`; the transfer
holds when the best lr is the same at both widths), and data vs epochs (`100k`: the first 100k rows repeated;
`more-data`: 1.2M distinct rows from `--big-root`, one pass at the 9-minute budget).

Data: the default source's stores (`make run` first: `assets/store/smollm2-135m/L15`), or `--root`; every recipe
is scored in the normalized space of that store's norm stats.

    python benchmarks/prior_recipe.py --minutes 1.5 [--recipes adamw muon ...] [--seed 0] --json run.json
    python benchmarks/prior_recipe.py --speed --json speed.json          # wall time per FLOP, quiet machine
    python benchmarks/prior_recipe.py --minutes 9 --equal-wall speed.json --recipes muon+b1024 --json wall.json
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

# Every recipe is the baseline (BASE_TRAIN over DenoiserConfig(), TrainConfig(): the default before this benchmark,
# the Gaussian skip path, logit-normal t, width_mult 1, 2 blocks, AdamW lr 2e-3, batch 512, fp32 on a CPU) with the
# overrides below, one lever at a time. The project's default since is `minsnr` (train.loss_weighting "min_snr").
# name: (denoiser overrides, train overrides, data: None = the default store, an int = its first N rows repeated,
#        "big" = the --big-root store of more distinct rows)
OFFICIAL_D = {"preset": "official", "init": "torch", "skip": "none", "width_mult": 2.0, "n_blocks": 3}
OFFICIAL_T = {"lr": 5e-5, "weight_decay": 0.01, "batch_size": 4096, "t_sampling": "uniform"}
BASELINE = "adamw"
ADOPTED = "minsnr"  # the project's default since this benchmark (train.loss_weighting "min_snr")
BASE_TRAIN = {"optimizer": "adamw", "batch_size": 512, "loss_weighting": "none"}  # the default before this benchmark
RECIPES: dict[str, tuple[dict[str, Any], dict[str, Any], int | str | None]] = {
    "adamw": ({}, {}, None),  # the baseline
    "official": (OFFICIAL_D, OFFICIAL_T, None),  # the paper's network, init and optimizer settings (1B shape)
    "official-net": (OFFICIAL_D, {"t_sampling": "uniform"}, None),  # ... with this project's lr 2e-3 and batch 512
    "muon": ({}, {"optimizer": "muon"}, None),
    "xpred": ({"prediction": "x"}, {}, None),
    "xpred+lr5e-4": ({"prediction": "x"}, {"lr": 5e-4}, None),  # x0 errors reach the velocity ×1/t: a lower lr
    "minsnr": ({}, {"loss_weighting": "min_snr"}, None),  # the default since (the best at equal wall time)
    "learned-w": ({}, {"loss_weighting": "learned"}, None),
    "uniform-t": ({}, {"t_sampling": "uniform"}, None),
    "ema": ({}, {"ema_decay": 0.999}, None),
    "w2": ({"width_mult": 2.0}, {}, None),
    "w2+mup": ({"width_mult": 2.0}, {"lr_base_width_mult": 1.0}, None),
    "d4": ({"n_blocks": 4}, {}, None),
    "b256": ({}, {"batch_size": 256}, None),
    "b1024": ({}, {"batch_size": 1024}, None),
    "minsnr+b1024": ({}, {"loss_weighting": "min_snr", "batch_size": 1024}, None),  # the two that cost no wall time
    "lr1e-3": ({}, {"lr": 1e-3}, None),
    "lr4e-3": ({}, {"lr": 4e-3}, None),
    "w2+mup+lr1e-3": ({"width_mult": 2.0}, {"lr_base_width_mult": 1.0, "lr": 1e-3}, None),
    "w2+mup+lr4e-3": ({"width_mult": 2.0}, {"lr_base_width_mult": 1.0, "lr": 4e-3}, None),
    "muon+lr1e-3": ({}, {"optimizer": "muon", "lr": 1e-3}, None),
    "muon+lr4e-3": ({}, {"optimizer": "muon", "lr": 4e-3}, None),
    "muon+minsnr": ({}, {"optimizer": "muon", "loss_weighting": "min_snr"}, None),  # the two winners together
    "muon+b1024": ({}, {"optimizer": "muon", "batch_size": 1024}, None),  # Newton-Schulz paid once per 1,024 rows
    "muon+b2048": ({}, {"optimizer": "muon", "batch_size": 2048}, None),
    "muon+b1024+minsnr": ({}, {"optimizer": "muon", "batch_size": 1024, "loss_weighting": "min_snr"}, None),
    "100k": ({}, {}, 100_000),
    "more-data": ({}, {}, "big"),
}


def configs(name: str) -> tuple[DenoiserConfig, TrainConfig]:
    d_over, t_over, _ = RECIPES[name]
    return DenoiserConfig(**d_over), TrainConfig(**{**BASE_TRAIN, **t_over})


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
    """(step time of `name` ÷ the baseline's) ÷ (its 6·N·batch ÷ the baseline's): above 1, the recipe costs more wall
    time per FLOP than the baseline (Muon's Newton-Schulz iterations). Median of `rounds` interleaved pairs (baseline,
    recipe, baseline, ...), so a change in machine load hits both. Needs a quiet machine."""
    dcfg, tcfg = configs(name)
    d0, t0 = configs(BASELINE)
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
        if "seed" in d and "results" in d:  # a training run (an equal-wall one carries the speeds it used, too)
            runs.append(d)
        elif "wall_per_flop" in d:
            speed.update(d["wall_per_flop"])
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


Budget = tuple[float, bool]  # (minutes of the baseline, equal wall time: each recipe's FLOPs ÷ its wall per FLOP)


def budget_of(run: dict[str, Any]) -> Budget:
    return (run["minutes"], bool(run.get("equal_wall")))


def summary_rows(runs: list[dict[str, Any]], speed: dict[str, float]) -> tuple[list[Budget], list[dict[str, Any]]]:
    """Per recipe: its ratio to the Gaussian at each budget and seed, the difference to the baseline at the largest
    FLOP budget (paired by seed) and at the same wall time where it ran at equal wall time, the FLOPs it needs to
    reach the official recipe's and the baseline's final loss ÷ that run's FLOPs (per seed at the largest budget),
    whether it beats the baseline on every seed there."""
    budgets = sorted({budget_of(r) for r in runs})
    top = max(b for b in budgets if not b[1])
    by: dict[tuple[str, Budget, int], dict[str, Any]] = {}
    for run in runs:
        for res in run["results"]:
            by[(res["recipe"], budget_of(run), run["seed"])] = res
    for (n, b, s_), res in list(by.items()):  # the baseline's wall time is its own: its FLOP run is its wall run
        if n == BASELINE and (b[0], True) in budgets:
            by.setdefault((n, (b[0], True), s_), res)
    names = [n for n in RECIPES if any(k[0] == n for k in by)]
    rows = []
    for n in names:
        row: dict[str, Any] = {"recipe": n, "wall_per_flop": speed.get(n)}
        for b in budgets:
            row[b] = {s: by[(n, b, s)]["ratio"] for (m, bb, s) in by if m == n and bb == b}
        for key, b in (("delta", top), ("delta_wall", (top[0], True))):
            seeds = sorted(s for s in row.get(b, {}) if (BASELINE, (b[0], False), s) in by)
            row[key] = [row[b][s] - by[(BASELINE, (b[0], False), s)]["ratio"] for s in seeds]
        row["wins_all"] = len(row["delta"]) >= 2 and all(x < 0 for x in row["delta"])
        row["wins_wall"] = len(row["delta_wall"]) >= 2 and all(x < 0 for x in row["delta_wall"])
        for anchor in ("official", BASELINE):  # FLOPs to reach the anchor's final loss ÷ the anchor run's FLOPs
            reach = []
            for s in sorted(row[top]):
                ref = by.get((anchor, top, s))
                if ref is None and anchor == "official":  # the anchor run at its largest budget (seed s, else any)
                    refs = sorted((k for k in by if k[0] == anchor and not k[1][1]), key=lambda k: (k[1], k[2] == s))
                    ref = by[refs[-1]] if refs else None
                if ref is not None:
                    f = flops_to_reach(by[(n, top, s)]["curve"], ref["loss"])
                    reach.append(None if f is None else f / ref["tflop"])
            row[f"reach_{anchor}"] = reach
        rows.append(row)
    return budgets, rows


def verdict(row: dict[str, Any], budgets: list[Budget], base: dict[Budget, dict[int, float]] | None = None) -> str:
    """Adopted or not, and why, by the issue's rule: a lever is adopted only if it beats the baseline at the largest
    budget on every seed (at least 2), and, where it costs more wall time per FLOP, at equal wall time too."""
    top = max(b for b in budgets if not b[1])
    name, m, base = row["recipe"], f"{top[0]:g} min", base or {}
    if name == BASELINE:
        return "the baseline (the default before)"
    if name.startswith("official"):
        return "anchor"
    if row["wins_wall"]:
        return f"yes: below the baseline on every seed at equal wall time ({m})"
    if row["delta_wall"]:
        losing = sum(x >= 0 for x in row["delta_wall"])
        if len(row["delta_wall"]) < 2:  # behind on the one seed run: no second seed can make it win on every seed
            return (f"no: behind the baseline at equal wall time ({m}, one seed: {row['delta_wall'][0]:+.3f})"
                    if losing else f"not decided: one seed at equal wall time ({m})")
        return f"no: not below the baseline on {losing} of {len(row['delta_wall'])} seeds at equal wall time"
    if not row[top]:
        small = next((b for b in budgets if b != top and not b[1] and row[b]), None)
        if small is None:
            return "–"
        if not row[small].keys() & base.get(small, {}).keys():
            return f"not decided: no baseline run at {small[0]:g} min"
        ahead = all(row[small][s] < base[small][s] for s in row[small].keys() & base[small].keys())
        return (f"not decided: below the baseline at {small[0]:g} min, not run at {m}" if ahead else
                f"no: behind the baseline at {small[0]:g} min, not run at {m}")
    if len(row["delta"]) < 2:
        return (f"no: behind the baseline at {m} (one seed: {row['delta'][0]:+.3f})" if row["delta"][0] >= 0 else
                f"not decided: one seed at {m}")
    if not row["wins_all"]:
        losing = sum(x >= 0 for x in row["delta"])
        return f"no: not below the baseline on {losing} of {len(row['delta'])} seeds at {m}"
    if row["wall_per_flop"] and row["wall_per_flop"] > 1.05:  # below: within the measurement's noise
        return f"at equal FLOPs only: costs {row['wall_per_flop']:.2f}× the wall time per FLOP"
    return "yes: below the baseline on every seed"


def at_equal_wall(row: dict[str, Any], top: Budget) -> float | None:
    """A recipe's mean ratio at the baseline's wall time: its equal-wall runs, or its FLOP runs when it costs no
    more wall time per FLOP than the baseline (within 5 %)."""
    wall = row.get((top[0], True))
    if wall:
        return float(np.mean(list(wall.values())))
    if row[top] and (row["wall_per_flop"] or 1.0) <= 1.05:
        return float(np.mean(list(row[top].values())))
    return None


def adoption(row: dict[str, Any], rows: list[dict[str, Any]], budgets: list[Budget],
             base: dict[Budget, dict[int, float]]) -> str:
    """The verdict, and for the levers that qualify, whether it is the adopted one (ADOPTED) or behind it at equal
    wall time: of the levers that qualify, the default is the best at the wall time `make run` spends."""
    said = verdict(row, budgets, base)
    top = max(b for b in budgets if not b[1])
    if row["recipe"] == ADOPTED:
        return "**adopted: the default** (" + said.removeprefix("yes: ") + ")"
    chosen = next((r for r in rows if r["recipe"] == ADOPTED), None)
    mine, best = at_equal_wall(row, top), chosen and at_equal_wall(chosen, top)
    if said.startswith(("yes", "at equal FLOPs only")) and mine is not None and best is not None and mine > best:
        return f"{said}; behind {ADOPTED} at equal wall time ({mine:.3f} vs {best:.3f})"
    return said


def results_markdown(runs: list[dict[str, Any]], speed: dict[str, float], decided_only: bool = False,
                     compact: bool = False) -> str:
    """The recipe table: each lever's held-out loss ÷ the Gaussian prior's at each budget (per seed), its
    difference to the baseline, the FLOPs it needs to reach the official recipe's final loss, adopted or not.
    `compact` (the README's): without the deltas to the baseline and the FLOPs to reach its loss, a short legend."""
    budgets, rows = summary_rows(runs, speed)
    top = max(b for b in budgets if not b[1])
    tflop = {budget_of(r): r["budget_fp32_flops"] / 1e12 for r in runs if not r.get("equal_wall")}
    threads = {r.get("wall_threads") for r in runs if r.get("equal_wall")}

    def label(b: Budget) -> str:
        return (f"÷ Gaussian, {b[0]:g} min of wall time" if b[1] else
                f"÷ Gaussian, {b[0]:g} min ({tflop[b]:.1f} TFLOP)")

    head = ["recipe"] + [label(b) for b in budgets] + [
        f"− {BASELINE} at {top[0]:g} min (equal FLOPs · equal wall)", f"FLOPs to reach {BASELINE}'s loss",
        "FLOPs to reach official's loss", "wall ÷ FLOP", f"adopt? (below {BASELINE} on every seed at {top[0]:g} min)"]
    keep = [i for i, h in enumerate(head) if not compact or not h.startswith((f"− {BASELINE}", f"FLOPs to reach {BASELINE}"))]
    lines = ["| " + " | ".join(head[i] for i in keep) + " |", "|" + "---|" * len(keep)]

    def cell(d: dict[int, float]) -> str:
        if not d:
            return "–"
        vals = [d[s] for s in sorted(d)]
        seeds = " · ".join(f"{v:.3f}" for v in vals)
        return f"**{np.mean(vals):.3f}**" + (f" ({seeds})" if len(vals) > 1 else "")

    def deltas(xs: list[float]) -> str:
        return " · ".join(f"{x:+.3f}" for x in xs) or "–"

    wall_top = (top[0], True)
    base = next((r for r in rows if r["recipe"] == BASELINE), {})
    shown = [r for r in rows if not decided_only or r[top] or r.get(wall_top)]  # decided: run at the largest budget
    for r in sorted(shown, key=lambda r: min([np.mean(list(r[b].values())) for b in (top, wall_top)
                                            if r.get(b)] or [9.0])):
        delta = "–" if r["recipe"] == BASELINE else f"{deltas(r['delta'])} · {deltas(r['delta_wall'])}" \
            if r["delta_wall"] else deltas(r["delta"])
        reach, reach_base = (" · ".join("not reached" if x is None else "0 (its start)" if x == 0 else f"{x:.2f}×"
                                        for x in r[f"reach_{a}"]) or "–" for a in ("official", BASELINE))
        wpf = f"{r['wall_per_flop']:.2f}" if r["wall_per_flop"] else "–"
        row = [r["recipe"]] + [cell(r[b]) for b in budgets] + [delta, reach_base, reach, wpf,
                                                                adoption(r, rows, budgets, base)]
        lines.append("| " + " | ".join(row[i] for i in keep) + " |")
    if len(shown) < len(rows):
        lines.append(f"| {len(rows) - len(shown)} more levers, run at {budgets[0][0]:g} min only | "
                     + " | ".join("" for _ in range(len(keep) - 1)) + " |")
    mixed = {m for m in {r["minutes"] for r in runs} if len({(r["heldout"], r["n_t"]) for r in runs if r["minutes"] == m}) > 1}
    if mixed:  # a ratio is paired with the baseline only on the same held-out rows and noise levels
        lines += ["", "**Not comparable:** the runs at " + ", ".join(f"{m:g} min" for m in sorted(mixed)) + " were "
                  "scored on different held-out rows or noise levels (--heldout, --n-t): rerun them alike."]
    gauss = {budget_of(r): r["gaussian_loss"] for r in runs}
    if compact:
        return "\n".join(lines + ["", "Held-out loss ÷ the full-covariance Gaussian prior's on the same rows, t and noise; "
                                  "bold: the mean over seeds (each seed in brackets). wall ÷ FLOP: relative to "
                                  f"{BASELINE}'s, on a quiet machine (–: not measured)."])
    lines += ["", "Ratios: held-out flow-matching loss ÷ the full-covariance Gaussian prior's on the same rows, t and "
              "noise (" + ", ".join(f"{g:.4f}" for g in sorted(set(gauss.values()))) + "); several values: one per "
              f"seed, bold their mean. {BASELINE}: the baseline every lever is measured against (the default before "
              "this benchmark). FLOPs to reach official's loss: the FLOPs at which the recipe's curve first "
              "reaches the official recipe's final loss at the largest budget, ÷ the official run's FLOPs (per "
              f"seed); the same for {BASELINE}'s final loss at that budget and seed. wall ÷ FLOP: step time per "
              f"6·N·batch relative to {BASELINE}'s, on a quiet machine."
              + (" Wall-time columns: each recipe trained the FLOPs it runs in that many minutes of the baseline's "
                 "wall time (the budget ÷ its wall ÷ FLOP measured with "
                 + "/".join(f"{t} thread(s)" for t in sorted(threads, key=str)) + "; the baseline's is its FLOP run)."
                 if threads else "")]
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({r["minutes"] for r in runs})  # the wall-time runs join the curves of their minutes
    fig, axes = plt.subplots(1, len(budgets), figsize=(8.5 * len(budgets), 5), dpi=110, squeeze=False)
    for ax, b in zip(axes[0], budgets):
        seed = min(r["seed"] for r in runs if r["minutes"] == b)  # one seed's curves (files of one sweep merged)
        results = [{**res, "recipe": res["recipe"] + (" (equal wall)" if r.get("equal_wall") else "")}
                   for r in runs if r["minutes"] == b and r["seed"] == seed for res in r["results"]]
        colors = plt.get_cmap("tab20")
        for i, res in enumerate(sorted(results, key=lambda res: (list(RECIPES).index(res["recipe"].split(" ")[0]),
                                                                  res["recipe"]))):
            c = res["curve"]
            ax.plot([p["tflop"] for p in c], [p["ratio"] for p in c], "o-", ms=3, label=res["recipe"],
                    color="k" if res["recipe"] == BASELINE else colors(i % 20),
                    lw=2.2 if res["recipe"] == BASELINE else 1.0, ls="--" if "equal wall" in res["recipe"] else "-")
        ax.axhline(1.0, color="k", lw=0.8, ls="--", label="full-covariance Gaussian")
        ax.axhline(0.8, color="g", lw=0.8, ls=":", label="goal 0.80")
        ax.set_ylim(min(0.75, ax.get_ylim()[0]), 1.1)
        ax.set_xlabel("training FLOPs (TFLOP, 6·N·rows)")
        ax.set_ylabel("held-out loss ÷ Gaussian prior's")
        ax.set_title(f"budget {b:g} min of {BASELINE} (seed {seed}); points: snapshots; dashed: equal wall time",
                     fontsize=10)
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
                    help="budget per recipe: the FLOPs (6·N·rows) the baseline recipe trains in this many minutes "
                         "on an idle 2-core CPU (--default-step-s)")
    ap.add_argument("--default-step-s", type=float, default=0.23,
                    help="seconds per step of the baseline recipe on an idle 2-core CPU (make run: 2,343 steps in 9 min)")
    ap.add_argument("--equal-wall", type=Path, metavar="SPEED_JSON",
                    help="a --speed run's JSON: each recipe trains the budget ÷ its wall time per FLOP there, i.e. "
                         "as many FLOPs as it runs in the baseline's --minutes (recipes it lacks: the full budget)")
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--seed", type=int, default=0, help="train.seed: init, data order, t and noise")
    ap.add_argument("--snapshots", type=int, default=4, help="mid-run points of each curve")
    ap.add_argument("--heldout", type=int, default=8192, help="held-out rows scored")
    ap.add_argument("--n-t", type=int, default=8, help="noise levels of the held-out loss")
    ap.add_argument("--json", type=Path, help="write the results here (after every recipe)")
    ap.add_argument("--speed", action="store_true",
                    help="measure each recipe's wall time per FLOP against the baseline's (a quiet machine; no training)")
    ap.add_argument("--table", type=Path, nargs="+", metavar="JSON",
                    help="print the recipe table of earlier --json runs (budgets x seeds, and a --speed run) and exit")
    ap.add_argument("--plot", type=Path, help="with --table: write the loss-vs-FLOPs curves (PNG) here")
    ap.add_argument("--decided", action="store_true",
                    help="with --table: only the recipes run at the largest budget (the README's table)")
    ap.add_argument("--compact", action="store_true",
                    help="with --table: the README's columns (no deltas to the baseline, a short legend)")
    args = ap.parse_args()
    if args.table:
        runs, speed = load_runs(args.table)
        print(results_markdown(runs, speed, decided_only=args.decided, compact=args.compact))
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
            print(f"{name:16s} wall time per FLOP ÷ the baseline's = {speed[name]:.3f}", flush=True)
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
    d0, t0 = configs(BASELINE)
    budget = 6 * n_params_of(store.d_model, d0) * t0.batch_size * args.minutes * 60 / args.default_step_s
    base = heldout_loss(AffineVelocity(stats.cov_normalized), x, args.n_t, seed=0)["mean"]  # same rows, t, noise
    exact = gaussian_baseline_loss(stats.cov_normalized, heldout_ts(args.n_t)).mean()
    print(f"store {store.n_rows:,} rows × d={store.d_model}; held-out {len(x):,} rows; Gaussian-prior loss {base:.4f} "
          f"on them ({exact:.4f} expected); budget {budget / 1e12:.1f} TFLOP per recipe ({args.minutes:g} min of the "
          f"baseline at {args.default_step_s} s/step), seed {args.seed}, torch threads {torch.get_num_threads()}")
    wall: dict[str, Any] = {}
    if args.equal_wall:
        measured = json.loads(args.equal_wall.read_text())
        wall = {"equal_wall": True, "wall_per_flop": measured["wall_per_flop"], "wall_threads": measured["threads"]}
        print(f"equal wall time: each recipe's budget ÷ its wall time per FLOP in {args.equal_wall} "
              f"({measured['threads']} thread(s))")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.recipes:
            own = budget / wall.get("wall_per_flop", {}).get(name, 1.0)
            r = run_recipe(name, stores, stats, x, base, own, args.n_t, args.seed, args.snapshots, Path(tmp))
            results.append(r)
            print(f"{name:16s} loss / Gaussian = {r['ratio']:.4f}   (loss {r['loss']:.4f}, {r['steps']:,} steps of "
                  f"{r['batch_size']}, {r['epochs']:.1f} epochs of {r['rows_distinct']:,} rows, {r['n_params'] / 1e6:.1f} M "
                  f"params, {r['wall_minutes']:.1f} wall min here)", flush=True)
            if args.json:  # after every recipe: a long sweep that is stopped keeps what it measured
                args.json.write_text(json.dumps({
                    "minutes": args.minutes, "seed": args.seed, "gaussian_loss": base, "budget_fp32_flops": budget,
                    "heldout": len(x), "n_t": args.n_t, "threads": torch.get_num_threads(), **wall,
                    "results": results},
                    indent=1))
    best = min(results, key=lambda r: r["ratio"])
    print(f"best at {args.minutes:g} min: {best['recipe']} ({(1 - best['ratio']) * 100:.1f} % below the Gaussian prior)")


if __name__ == "__main__":
    main()
