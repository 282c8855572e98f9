"""Renderings of the steering report: the Pareto plot, the inline chart, the markdown table and the statements on
the gated post-processing and the fluency trend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from glp.report import inline_line_chart, markdown_table, pyplot, to_png


def fluency_trend_png(trend: dict[str, Any]) -> bytes:
    """Fluency cost of SDEdit vs the prior's held-out loss, one point per prior, with the fitted line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=100)
    pts = trend["points"]
    x = np.array([p["heldout_loss"] for p in pts])
    y = np.array([p["cost"] for p in pts])
    err = np.array([[p["cost"] - p["cost_ci"][0], p["cost_ci"][1] - p["cost"]] for p in pts]).T
    ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, color="#1b9e77", label="priors (95% CI, clustered by prompt)")
    for p in pts:
        ax.annotate(p["label"], (p["heldout_loss"], p["cost"]), xytext=(6, 4), textcoords="offset points", fontsize=8)
    f = trend["fit"]
    lo = min(x.min(), f["zero_cost_loss"] or x.min())
    grid = np.linspace(lo - 0.02, x.max() + 0.02, 50)
    ax.plot(grid, f["intercept"] + f["slope"] * grid, "--", color="#7570b3",
            label=f"fit: slope {f['slope']:.2f} [{f['slope_ci'][0]:.2f}, {f['slope_ci'][1]:.2f}] nats per nat")
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="prior's held-out flow-matching loss (nats per dim)",
           ylabel=f"SDEdit NLL − raw NLL (nats/token), mean over r, t_start {trend['t_start']:g}",
           title="Fluency cost of SDEdit post-processing vs prior quality")
    ax.legend(fontsize=8)
    return to_png(fig)


def glp_mode(t_start: float) -> str:
    """Row label of GLP post-processing from an extra t_start (the main one is plain `glp`)."""
    return f"glp@{t_start:g}"


def concept_rises(report: dict[str, Any]) -> bool:
    """Raw steering moves the judge's concept with r: Spearman rho(r, concept) > 0 with its CI above 0."""
    t = report["concept_trend"]
    return t["spearman_r_vs_concept_raw"] > 0 and t["spearman_ci"][0] > 0


def mode_label(mode: str, t_start: float | None) -> str:
    """Legend name of a report mode: what was done to the steered activation, and at which noise level."""
    if mode == "raw":
        return "raw steering"
    if mode == "glp" or mode.startswith("glp@"):
        return f"SDEdit with GLP, t_start {t_start:g}"
    if mode == "gated":
        return f"gated SDEdit (off-manifold only), t_start {t_start:g}"
    return mode if t_start is None else f"{mode}, t_start {t_start:g}"


def pareto_figure(report: dict[str, Any]):
    """The Pareto plot as a matplotlib figure: one colour per mode, its r ≥ 0 branch a solid line from the unsteered
    r = 0 point and its r < 0 branch a dashed line of its own (the two steer towards opposite concepts, so one line
    through r = 0 would read as one frontier)."""
    from matplotlib.lines import Line2D

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 6), dpi=100)
    modes = list(dict.fromkeys(r["mode"] for r in report["rows"]))
    colors = dict(zip(modes, ("#d95f02", "#1b9e77", "#7570b3", "#e7298a", "#66a61e")))
    # each mode writes its r labels on its own side of the points, so labels of nearby points do not overlap
    offsets = [(7, -13), (7, 7), (-40, 7), (-40, -13), (7, 17)]
    for k, (mode, color) in enumerate(colors.items()):
        rows = sorted((r for r in report["rows"] if r["mode"] == mode), key=lambda r: r["r"])
        label = mode_label(mode, rows[0]["t_start"])
        for branch, style in (([r for r in rows if r["r"] >= 0], "-"), ([r for r in rows if r["r"] < 0], "--")):
            if not branch:
                continue
            x = [r["nll"] for r in branch]
            y = [r["concept"] for r in branch]
            xerr = np.array([[r["nll"] - r["nll_ci"][0], r["nll_ci"][1] - r["nll"]] for r in branch]).T
            yerr = np.array([[r["concept"] - r["concept_ci"][0], r["concept_ci"][1] - r["concept"]] for r in branch]).T
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, color=color, marker="o", capsize=2, lw=1.4, ls=style,
                        label=label)
            label = "_nolegend_"  # one legend entry per mode
        for r in rows:
            ax.annotate(f"r={r['r']:g}", (r["nll"], r["concept"]), fontsize=8, color=color,
                        xytext=offsets[k % len(offsets)], textcoords="offset points",
                        bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7})
    ax.set(xlabel="continuation NLL under unsteered LM (nats, lower = more fluent)",
           ylabel="P(positive), judge trained on reviews + tweets",
           title="steering: concept vs fluency (95% CI, clustered by prompt)")
    handles, _ = ax.get_legend_handles_labels()
    if any(r["r"] < 0 for r in report["rows"]):
        handles.append(Line2D([], [], color="gray", ls="--", label="dashed: r < 0 (steered towards negative)"))
    ax.legend(handles=handles)
    return fig


def pareto_png(report: dict[str, Any]) -> bytes:
    """Concept (judge P(positive), up) vs fluency (NLL under the unsteered LM, left = better), one curve per mode."""
    return to_png(pareto_figure(report))


def pareto_inline(report: dict[str, Any]) -> str:
    """The headline of the Pareto plot as an inline chart (glp.report.inline_line_chart): concept vs NLL for r ≥ 0,
    raw and with GLP at the main t_start, the largest r labelled."""
    series, labels = [], []
    for mode, name in (("raw", "raw"), ("glp", f"GLP t {report['config']['t_start']:g}")):
        rows = sorted((r for r in report["rows"] if r["mode"] == mode and r["r"] >= 0), key=lambda r: r["r"])
        series.append((name, [r["nll"] for r in rows], [r["concept"] for r in rows]))
        labels += [(rows[-1]["nll"], rows[-1]["concept"], f"r={rows[-1]['r']:g}"),
                   (rows[0]["nll"], rows[0]["concept"], f"r={rows[0]['r']:g}")]
    return inline_line_chart(series, "P(positive) vs NLL, r ≥ 0", "NLL, nats/token (left = more fluent)",
                             labels=labels, dots=True)


def steering_markdown(report: dict[str, Any]) -> str:
    """Sources, the frontier statement, the Pareto table, paired GLP − raw differences, 3 examples per setting."""
    def ci(c: Sequence[float]) -> str:
        return f"[{c[0]:.3f}, {c[1]:.3f}]"

    head = [f"{report['n_continuations']} continuations of {report['n_prompts']} prompts per setting, "
            f"{report['passes_per_token']} denoiser passes per token with GLP; 95% CIs resample prompts."]
    d = report.get("direction")
    if d:
        head.append(f"Direction: DiffMean of human-rated movie snippets ({d['n_direction'][0]} positive, "
                    f"{d['n_direction'][1]} negative); ROC-AUC on {sum(d['n_probe'])} held-out snippets "
                    f"{d['auc']:.3f} {ci(d['auc_ci'])}.")
    j = report["judge"]
    head.append(f"Concept judge: P(positive) of {j['kind']}, trained on {j['trained_on']}; held-out accuracy "
                f"{j['accuracy']:.3f} {ci(j['accuracy_ci'])}, AUC {j['auc']:.3f} {ci(j['auc_ci'])} "
                f"(n = {j['n_test']}). VADER compound is a second opinion.")
    t = report["concept_trend"]
    lo, hi = t["concept_at_min_r"], t["concept_at_max_r"]
    head.append(f"Concept vs r, raw steering: Spearman rho {t['spearman_r_vs_concept_raw']:+.3f} "
                f"{ci(t['spearman_ci'])}; P(positive) {lo['concept']:.3f} {ci(lo['concept_ci'])} at r={lo['r']:g} → "
                f"{hi['concept']:.3f} {ci(hi['concept_ci'])} at r={hi['r']:g}. Paired change from r=0: "
                + ", ".join(f"r={x['r']:g} {x['d_concept']:+.3f} {ci(x['d_concept_ci'])}" for x in t["raw_minus_r0"])
                + ".")
    p = report["degeneration_point"]
    head.append(f"Degeneration point of raw steering (distinct-2 < {report['config']['degeneration_distinct2_ratio']}"
                f"× or NLL > +{report['config']['degeneration_nll_rise']} nat vs r=0): positive side "
                f"{p['positive']}, negative side {p['negative']}.")
    head.append(f"With the main SDEdit level (t_start {report['config']['t_start']}): " + report["frontier"]["statement"])
    for mode, f in report.get("frontier_t_start", {}).items():
        head.append(f"With t_start {mode.removeprefix('glp@')}: " + f["statement"])
    table = markdown_table(
        ["mode", "r", "alpha", "P(positive)", "95% CI", "VADER", "NLL", "95% CI", "distinct-1", "distinct-2"],
        [[r["mode"], r["r"], round(r["alpha"], 2), round(r["concept"], 3), ci(r["concept_ci"]), round(r["vader"], 3),
          round(r["nll"], 3), ci(r["nll_ci"]), round(r["distinct1"], 3), round(r["distinct2"], 3)]
         for r in report["rows"]],
    )
    paired = markdown_table(
        ["r", "ΔNLL (GLP − raw)", "95% CI", "ΔP(positive) (GLP − raw)", "95% CI"],
        [[p["r"], round(p["d_nll"], 3), ci(p["d_nll_ci"]), round(p["d_concept"], 3), ci(p["d_concept_ci"])]
         for p in report["paired"]],
    )
    ex = []
    for r in report["rows"]:  # a blank line around each heading: markdown would run it into the last bullet
        ex += ["", f"**{r['mode']} r={r['r']:g}**", ""]
        ex += [f"- *{e['prompt']}* → {e['continuation']!r}" for e in r["examples"]]
    head += [gated_statement(report), trend_statement(report)]
    if report.get("paired_gated"):
        paired += "\n\nGated − raw (same prompts and seeds):\n\n" + markdown_table(
            ["r", "ΔNLL (gated − raw)", "95% CI", "ΔP(positive) (gated − raw)", "95% CI"],
            [[p["r"], round(p["d_nll"], 3), ci(p["d_nll_ci"]), round(p["d_concept"], 3), ci(p["d_concept_ci"])]
             for p in report["paired_gated"]])
    return ("\n\n".join(head) + "\n\n" + table + "\n\nPaired differences (same prompts and seeds):\n\n" + paired
            + "\n\nExamples:\n" + "\n".join(ex))


def gated_statement(report: dict[str, Any]) -> str:
    """One paragraph: what the gate flags, how much it edited, and the three goals of gated post-processing."""
    g, goal, cal = report.get("gate"), report.get("gated_goal"), report.get("gate_calibration")
    if not g or not goal:
        return "No gated rows (steer.post lacks 'gated')."
    rows = [r for r in report["rows"] if r["mode"] == "gated"]
    edited = ", ".join(f"r={r['r']:g} {100 * r['edited_share']:.0f} %" for r in rows)
    fpr = (f" (measured on {cal['n_check']:,} other held-out activations: {100 * cal['fpr_check']:.1f} % "
           f"[{100 * cal['fpr_check_ci'][0]:.1f}, {100 * cal['fpr_check_ci'][1]:.1f}])" if cal else "")
    worst = max(report["paired_gated"], key=lambda p: p["d_nll"])
    yes = {True: "yes", False: "no", None: "n/a (raw never degenerates in the sweep)"}
    return (f"Gated SDEdit edits a steered activation only when its off-manifold score (diffusion loss at t ∈ "
            f"{{{', '.join(f'{t:g}' for t in g['ts'])}}}) exceeds the level {100 * g['fpr']:g} % of real held-out "
            f"activations exceed{fpr}, fully beyond the {100 * g['full_fpr']:g} % level. Tokens edited: {edited}. "
            f"NLL not above raw at every r: **{yes[goal['nll_not_above_raw_every_r']]}** (largest gated − raw "
            f"{worst['d_nll']:+.3f} [{worst['d_nll_ci'][0]:+.3f}, {worst['d_nll_ci'][1]:+.3f}] at r={worst['r']:g}); "
            f"concept not below raw at every r: **{yes[goal['concept_not_below_raw_every_r']]}**; NLL below raw "
            f"where raw degenerates: **{yes[goal['nll_below_raw_where_raw_degenerates']]}**.")


def trend_statement(report: dict[str, Any]) -> str:
    """One paragraph: the fluency cost of SDEdit against the prior's held-out loss, and where it would reach 0."""
    t = report.get("fluency_trend")
    if not t:
        return "No fluency trend (needs train.snapshots > 0 and 'sdedit' in steer.post)."
    f = t["fit"]
    pts = "; ".join(f"{p['label']}: loss {p['heldout_loss']:.3f}, cost {p['cost']:+.2f}" for p in t["points"])
    if f["zero_cost_loss"] is None:
        cross = "the fitted cost does not fall as the loss falls, so it never reaches zero"
    elif f["zero_cost_loss"] <= 0:
        cross = (f"the line would reach zero cost only at held-out loss {f['zero_cost_loss']:.3f}, which no prior can "
                 "reach (the loss is a mean squared error): extrapolated, SDEdit never stops costing fluency")
    else:
        ci = f["zero_cost_loss_ci"]
        cross = (f"the line reaches zero cost at held-out loss {f['zero_cost_loss']:.3f}"
                 + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else " (CI undefined: the slope's sign is uncertain)"))
    return (f"Fluency cost of SDEdit at t_start {t['t_start']:g} (NLL − raw, mean over r) vs the prior's held-out "
            f"loss, {len(t['points'])} priors ({pts}): slope {f['slope']:+.2f} [{f['slope_ci'][0]:+.2f}, "
            f"{f['slope_ci'][1]:+.2f}] nats of NLL per unit of loss; {cross}.")


def r0_matches_unsteered(report: dict[str, Any]) -> bool:
    """The raw r=0 setting generated exactly the unsteered tokens."""
    raw0 = next(s for s in report["settings"] if s["mode"] == "raw" and s["r"] == 0.0)
    return raw0["tokens"] == report["unsteered_tokens"]
