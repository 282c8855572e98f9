"""On-manifold steering (SDEdit with the GLP prior) and its concept–fluency Pareto report.

    a' = a + alpha * w,   alpha = r * (mean activation norm at the layer),   w unit (DiffMean)
    GLP: z = normalize(a'); noise z to t_start; integrate the schedule's levels below t_start to 0; denormalize.

Direction: DiffMean of last-token activations, human-rated movie snippets rated >= +1 minus <= -1 (the
`direction` half of `movie_snippets.jsonl`); its ROC-AUC is measured on the other (`probe`) half. The concept
judge (glp.uses.judges) never sees movie snippets, so the direction and the judge come from different sources.

Position 0 (BOS) is never steered, scored or used: prompts are `[BOS] + tokens` with at least one token after
BOS, they are prefilled up to their last token unsteered, and during generation only the newest position is
edited at each forward pass (the prompt's last token on the first pass, then each new token); with the KV
cache, earlier edits persist through the cached keys/values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from glp.ci import bootstrap_ci, spearman_ci
from glp.config import SteerConfig
from glp.data.lm import SourceLM
from glp.prior import Prior
from glp.prior.manifold import Gate, solver_passes
from glp.progress import Progress
from glp.uses.generate import Prefix, encode, generate, prefill, steer_edit
from glp.uses.judges import SentimentJudge, continuation_nll_sets, distinct_n, vader_compound
from glp.uses.steer_report import glp_mode

# ---------------------------------------------------------------- prompts


# ---------------------------------------------------------------- DiffMean direction


# ---------------------------------------------------------------- GLP post-processing


# ---------------------------------------------------------------- generation


# ---------------------------------------------------------------- the Pareto report


def _ci(x: np.ndarray, groups: np.ndarray, cfg: SteerConfig) -> tuple[float, float]:
    return bootstrap_ci(x, cfg.n_bootstrap, cfg.seed, groups=groups)


def degeneration_point(rows: Sequence[dict], distinct2_ratio: float, nll_rise: float) -> dict[str, float | None]:
    """Per sign, the smallest |r| at which raw steering degenerates: distinct-2 below `distinct2_ratio` x its r=0
    value, or NLL more than `nll_rise` nats above r=0 (None if it never does in the sweep)."""
    raw = {r["r"]: r for r in rows if r["mode"] == "raw"}
    base = raw[0.0]
    out: dict[str, float | None] = {}
    for sign, name in ((1, "positive"), (-1, "negative")):
        hits = [abs(r) for r, x in raw.items() if r * sign > 0 and (
            x["distinct2"] < distinct2_ratio * base["distinct2"] or x["nll"] > base["nll"] + nll_rise)]
        out[name] = min(hits) if hits else None
    return out


def frontier(paired: Sequence[dict], point: dict[str, float | None]) -> dict[str, Any]:
    """For each sign with a degeneration point, whether GLP's NLL is below raw's (paired CI of GLP − raw below 0)
    at every r at or beyond it; and one plain sentence saying so."""
    out: dict[str, Any] = {}
    lines = []
    for sign, name, op in ((1, "positive", "≥"), (-1, "negative", "≤")):
        at = point[name]
        if at is None:
            out[name] = None
            continue
        rows = [{"r": p["r"], "d_nll": p["d_nll"], "d_nll_ci": p["d_nll_ci"], "glp_lower": p["d_nll_ci"][1] < 0}
                for p in paired if p["r"] * sign >= at]
        n_yes = sum(x["glp_lower"] for x in rows)
        verdict = "yes" if n_yes == len(rows) else "no" if n_yes == 0 else "partly"
        out[name] = {"from_r": sign * at, "rows": rows, "glp_lowers_nll": verdict}
        evidence = "; ".join(f"r={x['r']:g}: ΔNLL {x['d_nll']:+.3f} [{x['d_nll_ci'][0]:+.3f}, {x['d_nll_ci'][1]:+.3f}]"
                             for x in rows)
        lines.append(f"GLP post-processing lowers NLL at r {op} {sign * at:g} (where raw steering degenerates): "
                     f"**{verdict}** (GLP − raw, 95% CI clustered by prompt: {evidence}).")
    if not lines:
        lines.append("Raw steering did not degenerate at any r of the sweep: no frontier to compare GLP on.")
    out["statement"] = " ".join(lines)
    return out


def gated_goal(paired_gated: Sequence[dict], point: dict[str, float | None]) -> dict[str, Any]:
    """Issue 13's bar for gated post-processing, from its paired differences with raw steering (CIs by prompt):
    NLL not above raw's at any r (the CI of gated − raw reaches 0 or below), P(positive) not below raw's at any r
    (the CI reaches 0 or above), and NLL below raw's (CI entirely below 0) where raw steering degenerates."""
    nll_ok = [p["r"] for p in paired_gated if p["d_nll_ci"][0] <= 0]
    concept_ok = [p["r"] for p in paired_gated if p["d_concept_ci"][1] >= 0]
    f = frontier(paired_gated, point)
    verdicts = [f[k]["glp_lowers_nll"] for k in ("positive", "negative") if f.get(k)]
    return {
        "nll_not_above_raw_every_r": len(nll_ok) == len(paired_gated),
        "concept_not_below_raw_every_r": len(concept_ok) == len(paired_gated),
        "nll_below_raw_where_raw_degenerates": (all(v == "yes" for v in verdicts) if verdicts else None),
        "frontier": f,
    }


def fit_cost_trend(losses: np.ndarray, costs: np.ndarray, groups: np.ndarray, n_boot: int, seed: int,
                   level: float = 0.95) -> dict[str, Any]:
    """Least-squares line cost = a + b · loss over priors, where cost[p] is prior p's per-continuation fluency cost
    (n,) and its mean is the point; the CIs resample prompts (whole groups of continuations) and refit. The loss
    at which the line crosses zero cost is -a / b (reported only from resamples with b > 0)."""
    losses = np.asarray(losses, np.float64)
    codes = np.unique(groups, return_inverse=True)[1]
    members = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)]

    def fit(idx: np.ndarray) -> tuple[float, float]:
        b, a = np.polyfit(losses, costs[:, idx].mean(1), 1)
        return float(a), float(b)

    a, b = fit(np.arange(costs.shape[1]))
    rng = np.random.default_rng(seed)
    boots = np.array([fit(np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))]))
                      for _ in range(n_boot)])
    q = [(1 - level) / 2, (1 + level) / 2]
    rising = boots[:, 1] > 0
    cross = -boots[rising, 0] / boots[rising, 1]
    return {
        "intercept": a, "slope": b, "slope_ci": np.quantile(boots[:, 1], q).tolist(),
        "share_of_resamples_with_positive_slope": float(rising.mean()),
        "zero_cost_loss": -a / b if b > 0 else None,
        "zero_cost_loss_ci": np.quantile(cross, q).tolist() if rising.mean() >= 0.5 else None,
    }


def fluency_trend(lm: SourceLM, layer: int, priors: Sequence[dict[str, Any]], w: Tensor, mean_norm: float,
                  cfg: SteerConfig, prompt_ids: Sequence[list[int]], pre: Prefix, gen_kw: dict[str, Any],
                  raw_nll: dict[float, np.ndarray], groups: np.ndarray,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """How the fluency cost of paper-style SDEdit (NLL − raw NLL, paired per continuation, mean over the r grid)
    falls as the prior's held-out loss falls: each prior of `priors` ({label, prior, loss}) steers the same
    prompts with the same seeds at every r, and a line is fitted through (loss, cost) with prompt-resampled CIs.
    A prior whose SDEdit rows were already generated brings their NLLs as `nll` ({r: (n,)}) and is not rerun."""
    points, costs = [], []
    n_new = sum("nll" not in p for p in priors)
    progress = Progress("fluency trend", n_new * len(cfg.r_values), "setting", log)
    scored = Progress("fluency trend", len(priors), "prior", log, every_s=0)  # every prior: the event log keeps all
    for p in priors:
        t1 = time.perf_counter()
        if "nll" in p:
            nlls = [p["nll"][r] for r in cfg.r_values]
        else:
            conts = []
            for r in cfg.r_values:
                g = torch.Generator(device=lm.device).manual_seed(cfg.seed + 1)
                edit = steer_edit(w, r * mean_norm, p["prior"], cfg.t_start, cfg.steps, cfg.solver, g)
                conts.append(generate(lm, prompt_ids, layer=layer, edit=edit, prefix=pre, **gen_kw))
                progress.update(1, f"{p['label']} r={r}")
            nlls = continuation_nll_sets(lm, prompt_ids, conts)
        cost = np.mean([np.asarray(n) - raw_nll[r] for r, n in zip(cfg.r_values, nlls)], axis=0)  # (n,)
        costs.append(cost)
        points.append({"label": p["label"], "heldout_loss": p["loss"], "cost": float(cost.mean()),
                       "cost_ci": _ci(cost, groups, cfg), "seconds": time.perf_counter() - t1})
        scored.update(1, f"{p['label']}: held-out loss {p['loss']:.4f}, SDEdit NLL − raw {cost.mean():+.3f} nats "
                         f"({points[-1]['seconds']:.0f} s)")
    fit = fit_cost_trend(np.array([p["heldout_loss"] for p in points]), np.stack(costs), groups, cfg.n_bootstrap,
                         cfg.seed)
    return {"t_start": cfg.t_start, "r_values": list(cfg.r_values), "points": points, "fit": fit}


def steering_report(lm: SourceLM, layer: int, prior: Prior, w: Tensor, mean_norm: float, cfg: SteerConfig,
                    prompts: Sequence[str], judge: SentimentJudge,
                    log: Callable[[str], None] | None = None, gate: Gate | None = None,
                    trend_priors: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Generate for every (r, raw/GLP) with identical prompts and seeds; judge concept (P(positive) of `judge`,
    VADER as second opinion) and fluency (NLL under the unsteered LM, distinct-n); CIs clustered by prompt."""
    reps = 1 if cfg.decoding == "greedy" else cfg.samples_per_prompt
    texts = [p for p in prompts for _ in range(reps)]
    groups = np.repeat(np.arange(len(prompts)), reps)
    prompt_ids = [encode(lm, p) for p in texts]
    gen_kw = dict(max_new_tokens=cfg.max_new_tokens, decoding=cfg.decoding, temperature=cfg.temperature, seed=cfg.seed)
    t0 = time.perf_counter()
    pre = prefill(lm, prompt_ids)
    unsteered = generate(lm, prompt_ids, prefix=pre, **gen_kw)
    settings = []
    # `glp` = SDEdit from cfg.t_start (the paper's 0.5); `glp@t` = the same from each extra t_start (sensitivity);
    # `gated` = SDEdit from cfg.t_start in proportion to the gate's off-manifold weight of each steered activation
    t_of = {"raw": cfg.t_start}
    if "sdedit" in cfg.post:
        t_of.update({"glp": cfg.t_start, **{glp_mode(t): t for t in cfg.extra_t_starts}})
    if "gated" in cfg.post:
        if gate is None:
            raise ValueError("steer.post has 'gated' but no calibrated gate was given (glp.uses.ood.calibrate)")
        t_of["gated"] = cfg.t_start
    progress = Progress("steer generate", len(t_of) * len(cfg.r_values), "setting", log)
    for mode in t_of:
        for r in cfg.r_values:
            t1 = time.perf_counter()
            g = torch.Generator(device=next(prior.denoiser.parameters()).device).manual_seed(cfg.seed + 1)
            weights: list[Tensor] = []
            edit = steer_edit(w, r * mean_norm, None if mode == "raw" else prior, t_of[mode], cfg.steps, cfg.solver, g,
                              gate=gate if mode == "gated" else None, weights=weights)
            cont = generate(lm, prompt_ids, layer=layer, edit=edit, prefix=pre, **gen_kw)
            settings.append({"mode": mode, "r": r, "tokens": cont, "seconds": time.perf_counter() - t1})
            if weights:
                wt = torch.cat(weights)
                settings[-1].update(edited_share=float((wt > 0).float().mean()), mean_weight=float(wt.mean()))
            progress.update(1, f"{mode} r={r} took {settings[-1]['seconds']:.1f} s")
    t1 = time.perf_counter()
    nlls = continuation_nll_sets(lm, prompt_ids, [s["tokens"] for s in settings])
    seconds_nll = time.perf_counter() - t1
    t1 = time.perf_counter()
    decoded = [[lm.tokenizer.decode(c, skip_special_tokens=True) for c in s["tokens"]] for s in settings]
    flat = [d for ds in decoded for d in ds]
    concept_all, vader_all = judge.p_positive(flat), vader_compound(flat)
    seconds_judge = time.perf_counter() - t1
    rows = []
    judged = Progress("steer scores", len(settings), "setting", log, every_s=0)
    for k, (s, dec, nll) in enumerate(zip(settings, decoded, nlls)):
        sl = slice(k * len(texts), (k + 1) * len(texts))
        concept, vader = concept_all[sl], vader_all[sl]
        d1 = np.array([distinct_n(c, 1) for c in s["tokens"]])
        d2 = np.array([distinct_n(c, 2) for c in s["tokens"]])
        s.update(continuations=dec, concept=concept.tolist(), vader=vader.tolist(), nll=nll.tolist(),
                 distinct1=d1.tolist(), distinct2=d2.tolist())
        rows.append({
            "mode": s["mode"], "r": s["r"], "alpha": s["r"] * mean_norm,
            "t_start": None if s["mode"] == "raw" else t_of[s["mode"]],
            "concept": float(concept.mean()), "concept_ci": _ci(concept, groups, cfg),
            "vader": float(vader.mean()), "vader_ci": _ci(vader, groups, cfg),
            "nll": float(nll.mean()), "nll_ci": _ci(nll, groups, cfg),
            "distinct1": float(d1.mean()), "distinct2": float(d2.mean()), "distinct2_ci": _ci(d2, groups, cfg),
            "seconds": s["seconds"],
            "edited_share": s.get("edited_share"), "mean_weight": s.get("mean_weight"),
            "examples": [{"prompt": p, "continuation": d} for p, d in list(zip(texts, dec))[::reps][:3]],
        })
        judged.update(1, f"{s['mode']} r={s['r']}: concept {concept.mean():.3f} nll {nll.mean():.3f} "
                         f"distinct-2 {d2.mean():.3f}")  # every setting: the event log keeps them all
    # paired GLP − raw differences per r (same prompts, same sampling seed), CIs clustered by prompt
    by = {(s["mode"], s["r"]): s for s in settings}

    def paired_with(mode: str) -> list[dict[str, Any]]:
        out = []
        for r in cfg.r_values:
            a, b = by[("raw", r)], by[(mode, r)]
            dn = np.subtract(b["nll"], a["nll"])
            dc = np.subtract(b["concept"], a["concept"])
            out.append({"r": r, "d_nll": float(dn.mean()), "d_nll_ci": _ci(dn, groups, cfg),
                        "d_concept": float(dc.mean()), "d_concept_ci": _ci(dc, groups, cfg)})
        return out

    paired = paired_with("glp") if "glp" in t_of else []
    paired_t_start = {mode: paired_with(mode) for mode in t_of if mode.startswith("glp@")}
    paired_gated = paired_with("gated") if "gated" in t_of else []
    # does raw steering move the concept? Spearman of r vs concept over all raw rows, resampling prompts
    raw = [s for s in settings if s["mode"] == "raw"]
    rho, rho_ci = spearman_ci(np.repeat([s["r"] for s in raw], len(texts)), np.concatenate([s["concept"] for s in raw]),
                              np.tile(groups, len(raw)), cfg.n_bootstrap, cfg.seed)
    ends = {k: next(x for x in rows if x["mode"] == "raw" and x["r"] == r)
            for k, r in (("min", min(cfg.r_values)), ("max", max(cfg.r_values)))}
    vs_r0 = []  # paired per continuation: does each r move the concept away from the unsteered r=0 row?
    for s in raw:
        if s["r"] != 0.0:
            d = np.subtract(s["concept"], by[("raw", 0.0)]["concept"])
            vs_r0.append({"r": s["r"], "d_concept": float(d.mean()), "d_concept_ci": _ci(d, groups, cfg)})
    point = degeneration_point(rows, cfg.degeneration_distinct2_ratio, cfg.degeneration_nll_rise)
    return {
        "layer": layer, "mean_norm": mean_norm, "config": cfg.model_dump(mode="json"),
        "prompts": texts, "groups": groups.tolist(), "n_prompts": len(prompts), "n_continuations": len(texts),
        "passes_per_token": solver_passes(cfg.t_start, cfg.steps, cfg.solver),
        "judge": judge.report,
        "unsteered_tokens": unsteered,
        "settings": settings,
        "rows": rows, "paired": paired, "paired_t_start": paired_t_start,
        "concept_trend": {"spearman_r_vs_concept_raw": rho, "spearman_ci": rho_ci, "raw_minus_r0": vs_r0,
                          **{f"concept_at_{k}_r": {"r": x["r"], "concept": x["concept"], "concept_ci": x["concept_ci"]}
                             for k, x in ends.items()}},
        "degeneration_point": point, "frontier": frontier(paired, point),
        "frontier_t_start": {mode: frontier(p, point) for mode, p in paired_t_start.items()},
        "paired_gated": paired_gated, "gate": gate.as_dict() if gate is not None else None,
        "gated_goal": gated_goal(paired_gated, point) if paired_gated else None,
        "fluency_trend": (fluency_trend(lm, layer, [  # the prior itself: its `glp` rows are these SDEdit rows
            {**p, "nll": {r: np.asarray(by[("glp", r)]["nll"]) for r in cfg.r_values}}
            if "glp" in t_of and p["prior"].denoiser is prior.denoiser else p for p in trend_priors],
                                        w, mean_norm, cfg, prompt_ids, pre, gen_kw,
                                        {r: np.asarray(by[("raw", r)]["nll"]) for r in cfg.r_values}, groups, log)
                          if trend_priors else None),
        "seconds": {"generation": sum(s["seconds"] for s in settings), "nll": seconds_nll, "judge": seconds_judge,
                    "report": time.perf_counter() - t0},
    }


