"""Seed replicates of the prior: does each headline claim hold over several training seeds?

`glp seeds --seeds 1 2` trains one more prior per seed on the *same* activations and norm stats as the main run
(seed `train.seed`, normally 0), then reruns every prior-dependent step for it (held-out evaluation, steering,
ΔLM, probing). Each replicate lives in its own store root, `<store.root>/seeds/s<seed>/`, whose shared inputs
(the source model, the activation stores, the norm stats, the SAE) are symlinks to the main run's, so nothing is
re-extracted and the main artifacts are never touched. `seeds.json` / `seeds.md` then report, per claim, the
value of every seed, their mean and spread (min–max, and the standard deviation), and how many seeds support it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from glp.progress import Log
from glp.artifacts import write_atomic
from glp.report import read_json
from glp.config import Settings, SourceConfig

SHARED = ("activations", "norm_stats.safetensors", "sae")  # inputs a replicate reuses (do not depend on the prior)


def replicate_settings(settings: Settings, seed: int) -> Settings:
    """The main settings with `train.seed = seed` and the store root moved to the replicate's own folder."""
    root = settings.store.root / "seeds" / f"s{seed}"
    return settings.model_copy(update={"store": settings.store.model_copy(update={"root": root}),
                                       "train": settings.train.model_copy(update={"seed": seed})})


def link_shared(settings: Settings, rep: Settings, source: SourceConfig) -> None:
    """Symlink the main run's prior-independent artifacts into the replicate's store root."""
    from glp import pipeline

    main, mine = pipeline.source_paths(settings, source).root, pipeline.source_paths(rep, source).root
    mine.mkdir(parents=True, exist_ok=True)
    # stores at store.activations_url are shared by URL already (the replicate's settings keep it)
    links = [(main / name, mine / name) for name in SHARED
             if not (name == "activations" and settings.store.activations_url)]
    model = pipeline.model_dir(settings, source)
    if model.is_relative_to(settings.store.root):  # a converted packaged model or the builtin LM lives in the store
        links.append((model, rep.store.root / model.relative_to(settings.store.root)))
    for target, link in links:
        if not target.exists():
            raise FileNotFoundError(f"{target} is missing: run the main pipeline first (make run), then `glp seeds`")
        if link.is_symlink() or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target.resolve(), link)


def run_replicate(settings: Settings, source: SourceConfig, seed: int, log: Log = print) -> Path:
    """Train and evaluate the prior of one seed (every prior-dependent step); return the replicate's source root."""
    from glp import pipeline
    from glp.pipeline.steering import build_delta_lm
    from glp.pipeline.probing import build_probes
    from glp.pipeline.steering import build_steering

    rep = replicate_settings(settings, seed)
    link_shared(settings, rep, source)
    steps: list[tuple[str, Callable[[], Any], Path]] = [
        ("glp_prior", lambda: pipeline.build_prior(rep, source, log=log), pipeline.source_paths(rep, source).prior),
        ("prior_eval", lambda: pipeline.build_prior_eval(rep, source), pipeline.source_paths(rep, source).prior_eval),
        ("steering", lambda: build_steering(rep, source, log=log), pipeline.source_paths(rep, source).root / "steering.json"),
        ("delta_lm", lambda: build_delta_lm(rep, source), pipeline.source_paths(rep, source).root / "delta_lm.json"),
        ("probes", lambda: build_probes(rep, source, log=log), pipeline.source_paths(rep, source).root / "probes"),
    ]
    for name, step, out in steps:
        if out.exists():  # resumable: a finished step of this replicate is not redone
            log(f"seed {seed}: {name} already at {out}")
            continue
        t0 = time.perf_counter()
        step()
        log(f"seed {seed}: {name} in {time.perf_counter() - t0:.0f} s")
    return pipeline.source_paths(rep, source).root


def claims_of(root: Path) -> dict[str, float]:
    """The headline numbers of one run (main or replicate) read from its artifacts."""
    out: dict[str, float] = {}
    if ev := read_json(root / "prior_eval.json"):
        out["heldout_loss"] = ev["heldout_loss_mean"]
        out["gaussian_baseline_loss"] = ev["gaussian_baseline_loss_mean"]
        out["loss_minus_gaussian"] = ev["heldout_loss_mean"] - ev["gaussian_baseline_loss_mean"]
        if "c2st" in ev:  # evaluations since the two-sample test
            out["c2st_auc_glp"], out["c2st_auc_full_gaussian"] = ev["c2st_auc_glp"], ev["c2st_auc_full_gaussian"]
            out["c2st_auc_glp_minus_gaussian"] = ev["c2st_auc_glp"] - ev["c2st_auc_full_gaussian"]
            out["fd_glp"], out["fd_full_gaussian"], out["fd_floor"] = (ev["fd_glp"], ev["fd_full_gaussian"],
                                                                       ev["fd_heldout_floor"])
            out["beats_gaussian"] = float(ev["beats_gaussian"])
    if st := read_json(root / "steering.json"):
        for mode, paired in {"glp": st.get("paired", []), **st.get("paired_t_start", {})}.items():
            for p in paired:
                out[f"steer_d_nll_{mode}_minus_raw_r{p['r']:g}"] = p["d_nll"]
        for row in st.get("rows", []):
            if row["mode"] == "glp":
                out[f"steer_glp_concept_r{row['r']:g}"] = row["concept"]
        # 1.0 where GLP lowers NLL (CI below 0) at every r past raw steering's degeneration point, on every side
        for mode, f in {"glp": st.get("frontier"), **st.get("frontier_t_start", {})}.items():
            if f:
                sides = [f[side]["glp_lowers_nll"] for side in ("positive", "negative") if f.get(side)]
                out[f"steer_frontier_{mode}_lowers_nll"] = float(bool(sides) and all(x == "yes" for x in sides))
    if dl := read_json(root / "delta_lm.json"):
        for name, m in dl["methods"].items():
            out[f"delta_lm_{name}"] = m["delta_ce"]
    if pr := read_json(root / "probes" / "results.json"):
        for fam, v in pr["summary"]["one_d"].items():
            out[f"probe_auc_{fam}"] = v["mean"]
    return out


def summarize(per_seed: dict[int, dict[str, float]]) -> dict[str, Any]:
    """Per claim: every seed's value, mean, sample std, min and max (only claims every seed reports)."""
    keys = sorted(set.intersection(*(set(v) for v in per_seed.values()))) if per_seed else []
    rows = {}
    for k in keys:
        x = np.array([per_seed[s][k] for s in sorted(per_seed)], dtype=float)
        rows[k] = {"values": x.tolist(), "mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
                   "min": float(x.min()), "max": float(x.max())}
    checks = {}
    if "loss_minus_gaussian" in rows:
        checks["glp_beats_gaussian_loss"] = sum(v < 0 for v in rows["loss_minus_gaussian"]["values"])
    if "beats_gaussian" in rows:  # loss and C2ST (CIs apart), as the prior_eval check
        checks["glp_beats_gaussian_loss_and_c2st"] = int(sum(rows["beats_gaussian"]["values"]))
    if "fd_glp" in rows:
        checks["glp_fd_below_full_gaussian"] = sum(
            g < b for g, b in zip(rows["fd_glp"]["values"], rows["fd_full_gaussian"]["values"]))
    for fam in ("layer", "mlp", "sae"):
        if f"probe_auc_glp" in rows and f"probe_auc_{fam}" in rows:
            checks[f"glp_probe_auc_above_{fam}"] = sum(
                g > b for g, b in zip(rows["probe_auc_glp"]["values"], rows[f"probe_auc_{fam}"]["values"]))
    for k in (k for k in rows if k.startswith("steer_frontier_")):
        checks[k.removeprefix("steer_")] = int(sum(rows[k]["values"]))
    for base in ("pca", "sae"):
        if "delta_lm_glp" in rows and f"delta_lm_{base}" in rows:
            checks[f"glp_delta_lm_below_{base}"] = sum(
                g < p for g, p in zip(rows["delta_lm_glp"]["values"], rows[f"delta_lm_{base}"]["values"]))
    return {"seeds": sorted(per_seed), "claims": rows, "seeds_supporting": checks}


def seeds_markdown(summary: dict[str, Any]) -> str:
    from glp.report import markdown_table

    seeds = summary["seeds"]
    table = markdown_table(
        ["claim", *[f"seed {s}" for s in seeds], "mean", "std", "min–max"],
        [[k, *[f"{v:.4f}" for v in r["values"]], f"{r['mean']:.4f}", f"{r['std']:.4f}", f"{r['min']:.4f} – {r['max']:.4f}"]
         for k, r in summary["claims"].items()],
    )
    checks = "\n".join(f"- {k}: {n} of {len(seeds)} seeds" for k, n in summary["seeds_supporting"].items())
    return table + "\n\nSeeds supporting each claim:\n\n" + checks + "\n"


def run_seeds(settings: Settings, source: SourceConfig, seeds: list[int], log: Log = print) -> dict[str, Any]:
    """Replicates for `seeds` (the main run counts as seed `train.seed`); write `<root>/seeds/seeds.{json,md}`."""
    from glp import pipeline

    main_root = pipeline.source_paths(settings, source).root
    per_seed = {settings.train.seed: claims_of(main_root)}
    for seed in seeds:
        if seed == settings.train.seed:
            continue
        per_seed[seed] = claims_of(run_replicate(settings, source, seed, log))
    summary = summarize(per_seed)
    out = main_root / "seeds"
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "seeds.json", json.dumps({"source": source.key, **summary, "per_seed": per_seed}, indent=1))
    write_atomic(out / "seeds.md", seeds_markdown(summary))
    return summary
