"""Human-readable renderings of pipeline results: PNG plots and markdown tables (for the UI and files)."""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from glp import fmt


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display here or in Dagster workers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_png(fig) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    return buf.getvalue()


def loss_curve_png(losses: Sequence[float], title: str = "flow-matching training loss",
                   ylabel: str = "loss (MSE per dim)") -> bytes:
    """Per-step loss (light) and its moving average (dark), as PNG bytes."""
    plt = pyplot()
    y = np.asarray(losses, dtype=float)
    k = max(1, len(y) // 50)
    smooth = np.convolve(y, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(np.arange(1, len(y) + 1), y, color="#9ecae1", lw=0.8, label="step")
    ax.plot(np.arange(k, len(y) + 1), smooth, color="#08519c", lw=1.6, label=f"mean of {k}")
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    ax.legend()
    return to_png(fig)


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown that embeds a PNG inline (Dagster's UI renders it)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


# Inline charts. Dagster's UI (1.13, ui-core MetadataEntry.tsx) renders a markdown metadata value in place, on the
# asset page and in the graph's sidebar, only when it is shorter than 1,000 characters; a longer one (any PNG) is a
# "[Show Markdown]" link. These charts are SVG in a data URI, drawn in under 1,000 characters, so the headline plot
# of an asset is visible without a click; the full PNG stays beside it.
INLINE_LIMIT = 999
_W, _H = 400, 180  # the chart in CSS pixels
_L, _R, _T, _B = 46, 390, 26, 148  # plot area: left, right, top, bottom
TOO_LONG = "(too many points to draw inline: see the full plot)"
COLORS = ("steelblue", "darkorange", "seagreen", "crimson", "gray")
# CSS classes: e = right-aligned text, m = centred, b = bold, s = small; d = dots (zero-length segments, round caps)
_CLASSES = {"e": "text-anchor:end", "m": "text-anchor:middle", "b": "font-weight:bold", "s": "font-size:9px",
            "d": "stroke-width:6;stroke-linecap:round"}


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")


def _tick(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def _svg_markdown(body: str) -> str:
    css = "".join(f".{c}{{{rule}}}" for c, rule in _CLASSES.items() if f"class='{c}'" in body)
    svg = (f"<svg xmlns='http://www.w3.org/2000/svg' width='{_W}' height='{_H}'><style>svg{{font:11px sans-serif;"
           f"background:white}}path{{fill:none;stroke-width:1.6}}{css}</style>{body}</svg>")
    # an angle-bracket link destination may hold spaces; '<' and '>' are backslash-escaped in it, '#' and '%' are
    # percent-encoded for the data URI
    svg = svg.replace("%", "%25").replace("#", "%23").replace("<", "\\<").replace(">", "\\>")
    return f"![chart](<data:image/svg+xml,{svg}>)"


def _text(x: float, y: float, text: str, fill: str = "") -> str:
    return f"<text x='{x:.0f}' y='{y:.0f}'{f' fill={chr(39)}{fill}{chr(39)}' if fill else ''}>{_xml(text)}</text>"


def _group(cls: str, *items: str) -> str:
    return f"<g class='{cls}'>{''.join(items)}</g>" if items else ""


def _polyline(pts: Sequence[tuple[float, float]]) -> str:
    return f"M{pts[0][0]:.0f},{pts[0][1]:.0f}L" + ",".join(f"{x:.0f},{y:.0f}" for x, y in pts[1:])


def inline_line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], title: str, xlabel: str,
                      labels: Sequence[tuple[float, float, str]] = (), dots: bool = False,
                      ylim: tuple[float, float] | None = None) -> str:
    """Markdown for an inline SVG line chart (< 1,000 characters): `series` as (name, xs, ys) in COLORS order, a
    legend after the title, `labels` (x, y, text) written next to points. Long series are thinned evenly (ends
    kept) to fit; then dots, then labels are dropped."""
    xs_all = [float(x) for _, xs, _ in series for x in xs]
    ys_all = [float(y) for _, _, ys in series for y in ys if math.isfinite(float(y))]
    x0, x1 = min(xs_all), max(xs_all)
    y0, y1 = ylim or (min(ys_all), max(ys_all))
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 if y1 > y0 else y0 + abs(y0) * 0.1 + 1e-9

    def px(x: float) -> float:
        return _L + (float(x) - x0) / (x1 - x0) * (_R - _L)

    def py(y: float) -> float:
        return _B - (min(max(float(y), y0), y1) - y0) / (y1 - y0) * (_B - _T)

    drawn = [[(px(x), py(y)) for x, y in zip(xs, ys) if math.isfinite(float(y))] for _, xs, ys in series]

    def draw(max_points: int, with_dots: bool, n_labels: int) -> str:
        parts = [f"<path d='M{_L},{_T}V{_B}H{_R}' stroke='gray'/>", _group("b", _text(_L, 14, title))]
        legend_x = _L + 6.6 * len(title) + 12
        for i, ((name, _, _), pts) in enumerate(zip(series, drawn)):
            color = COLORS[i % len(COLORS)]
            if len(pts) > max_points:
                pts = [pts[j] for j in np.unique(np.linspace(0, len(pts) - 1, max_points).round().astype(int))]
            parts.append(f"<path d='{_polyline(pts)}' stroke='{color}'/>")
            if with_dots:
                parts.append(f"<path class='d' d='{''.join(f'M{x:.0f},{y:.0f}h0' for x, y in pts)}' stroke='{color}'/>")
            if len(series) > 1:
                parts.append(_text(legend_x, 14, name, color))
                legend_x += 6.2 * len(name) + 10
        parts += [_group("e", _text(_L - 4, _T + 4, _tick(y1)), _text(_L - 4, _B, _tick(y0)),
                         _text(_R, _B + 13, _tick(x1))),
                  _text(_L, _B + 13, _tick(x0)), _group("m", _text((_L + _R) / 2, _B + 27, xlabel)),
                  _group("s", *[_text(min(px(x) + 5, _W - 5 * len(t)), py(y) - 5, t) for x, y, t in labels[:n_labels]])]
        return "".join(parts)

    # a drawn point takes at least 4 characters ("x,y,"): a series of more points than INLINE_LIMIT / 4 cannot fit,
    # so the search starts there (a 20,000-step loss curve tried every count from 20,000 down: minutes)
    n_points = min(max(len(xs) for _, xs, _ in series), INLINE_LIMIT // 4)
    for n_labels in range(len(labels), -1, -1):
        for with_dots in ((True, False) if dots else (False,)):
            for max_points in sorted({n_points, *range(n_points, 5, -2)}, reverse=True):
                md = _svg_markdown(draw(max_points, with_dots, n_labels))
                if len(md) <= INLINE_LIMIT:
                    return md
    return TOO_LONG


def inline_interval_chart(rows: Sequence[tuple[str, float, float, float]], title: str, xlabel: str,
                          ref: float | None = None, xlim: tuple[float, float] | None = None) -> str:
    """Markdown for an inline SVG forest plot (< 1,000 characters): one row per (label, estimate, CI low, CI high),
    labelled with its estimate, and a dashed reference line at x = `ref` (chance, zero) if given."""
    left, right = 150, 385
    lo = min([r[2] for r in rows] + ([ref] if ref is not None else []))
    hi = max([r[3] for r in rows] + ([ref] if ref is not None else []))
    x0, x1 = xlim or (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    step = (_B - _T) / max(len(rows), 1)

    def px(x: float) -> float:
        return left + (float(x) - x0) / (x1 - x0) * (right - left)

    def y(i: int) -> float:
        return _T + step * (i + 0.5)

    parts = [f"<path d='M{left},{_T}V{_B}H{right}' stroke='gray'/>", _group("b", _text(10, 14, title))]
    if ref is not None:
        parts.append(f"<path d='M{px(ref):.0f},{_T}V{_B}' stroke='gray' stroke-dasharray='3'/>")
    whiskers = "".join(f"M{px(r[2]):.0f},{y(i):.0f}H{px(r[3]):.0f}" for i, r in enumerate(rows))
    points = "".join(f"M{px(r[1]):.0f},{y(i):.0f}h0" for i, r in enumerate(rows))
    parts.append(f"<path d='{whiskers}' stroke='steelblue'/><path class='d' d='{points}' stroke='navy'/>")
    parts += [_group("e", *[_text(left - 6, y(i) + 4, f"{r[0]} {r[1]:.3g}") for i, r in enumerate(rows)],
                     _text(right, _B + 13, _tick(x1))),
              _text(left, _B + 13, _tick(x0)), _group("m", _text((left + right) / 2, _B + 27, xlabel))]
    md = _svg_markdown("".join(parts))
    return md if len(md) <= INLINE_LIMIT else TOO_LONG


def inline_scatter_chart(points: Sequence[tuple[float, float]], title: str, xlabel: str,
                         line: tuple[Sequence[float], Sequence[float]] | None = None,
                         band: tuple[Sequence[float], Sequence[float], Sequence[float]] | None = None,
                         ref: float | None = None, xticks: tuple[str, str] | None = None) -> str:
    """Markdown for an inline SVG scatter (< 1,000 characters): `points` as dots, an optional fitted `line` (xs, ys),
    a shaded `band` (xs, lo, hi) behind it, a dashed horizontal `ref` (e.g. a baseline's value) and the x-axis end
    labels `xticks` (default: the x range). Band and line are thinned to fit; then the band is dropped."""
    ys = [y for _, y in points] + ([ref] if ref is not None else []) + (list(line[1]) if line else [])
    xs = [x for x, _ in points] + (list(line[0]) if line else [])
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-9)
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def p(x: float, y: float) -> tuple[float, float]:
        y = min(max(float(y), y0), y1)
        return _L + (float(x) - x0) / (x1 - x0) * (_R - _L), _B - (y - y0) / (y1 - y0) * (_B - _T)

    def thin(seq: Sequence, n: int) -> list:
        return [seq[j] for j in np.unique(np.linspace(0, len(seq) - 1, n).round().astype(int))] if len(seq) > n else list(seq)

    def draw(n_curve: int, with_band: bool) -> str:
        parts = [f"<path d='M{_L},{_T}V{_B}H{_R}' stroke='gray'/>", _group("b", _text(_L, 14, title))]
        if band is not None and with_band:
            bx = thin(list(zip(*band)), n_curve)
            poly = [p(x, hi) for x, _, hi in bx] + [p(x, lo) for x, lo, _ in reversed(bx)]
            parts.append(f"<path d='{_polyline(poly)}Z' style='fill:lightsteelblue'/>")
        if ref is not None:
            parts.append(f"<path d='M{_L},{p(x0, ref)[1]:.0f}H{_R}' stroke='gray' stroke-dasharray='3'/>")
        if line is not None:
            parts.append(f"<path d='{_polyline([p(x, y) for x, y in thin(list(zip(*line)), n_curve)])}' stroke='navy'/>")
        dots = "".join(f"M{x:.0f},{y:.0f}h0" for x, y in (p(*q) for q in points))
        lo_t, hi_t = xticks or (_tick(x0), _tick(x1))
        parts += [f"<path class='d' d='{dots}' stroke='darkorange'/>",
                  _group("e", _text(_L - 4, _T + 4, _tick(y1)), _text(_L - 4, _B, _tick(y0)), _text(_R, _B + 13, hi_t)),
                  _text(_L, _B + 13, lo_t), _group("m", _text((_L + _R) / 2, _B + 27, xlabel))]
        return "".join(parts)

    for with_band in (True, False):
        for n_curve in (24, 16, 10, 6):
            md = _svg_markdown(draw(n_curve, with_band))
            if len(md) <= INLINE_LIMIT:
                return md
    return TOO_LONG


def loss_curve_inline(losses: Sequence[float], title: str = "training loss, MSE per dim") -> str:
    """The moving average of a training curve (loss_curve_png's dark line) as an inline chart."""
    y = np.asarray(losses, dtype=float)
    k = max(1, len(y) // 50)
    smooth = np.convolve(y, np.ones(k) / k, mode="valid")
    return inline_line_chart([("mean", np.arange(k, len(y) + 1).tolist(), smooth.tolist())],
                             f"{title} (mean of {k} steps)", "step")


def loss_by_t_inline(report: dict) -> str:
    """loss_by_t_png as an inline chart: held-out loss per noise level, GLP against the optimal affine predictor."""
    return inline_line_chart([("GLP", report["t"], report["heldout_loss"]),
                              ("optimal affine (Gaussian)", report["t"], report["gaussian_baseline_loss"])],
                             "held-out loss by t", "noise level t (0 = data, 1 = pure noise)", dots=True)


def delta_lm_inline(report: dict) -> str:
    """ΔLM per reconstruction (GLP, SAE, PCA-k) with 95% CIs as an inline forest plot (mean-ablation, an order of
    magnitude larger, is left to the table)."""
    m = report["methods"]
    rows = [(label, m[k]["delta_ce"], *m[k]["delta_ce_ci"]) for k, label in
            (("glp", "GLP"), ("sae", "SAE"), ("pca", f"PCA-{m.get('pca', {}).get('k', '')}")) if k in m]
    lo, hi = min(r[2] for r in rows), max(r[3] for r in rows)
    return inline_interval_chart(rows, "ΔLM: next-token CE increase, 95% CI", "ΔCE, nats per token (lower = better)",
                                 xlim=(0.0, 1.05 * hi) if lo >= 0 else None, ref=None if lo >= 0 else 0.0)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def eval_headline(report: dict) -> str:
    """prior_eval's result in two sentences (short enough for the asset page to show in place)."""
    rel = 1 - report["heldout_loss_mean"] / report["gaussian_baseline_loss_mean"]
    c2 = report["c2st"]
    verdict = ("**It beats the Gaussian on both.**" if report["beats_gaussian"] else
               "**It does not beat the Gaussian**: " + "; ".join(report["beats_gaussian_reasons"]) + ".")
    return (f"**Held-out loss {report['heldout_loss_mean']:.4f} vs {report['gaussian_baseline_loss_mean']:.4f} for the "
            f"optimal affine (= full-covariance Gaussian) predictor: {100 * abs(rel):.1f}% "
            f"{'below' if rel >= 0 else 'above'}** (MSE per dim). "
            f"Two-sample test AUC (0.5 = indistinguishable from held-out rows): GLP samples {c2['glp']['auc']:.3f} "
            f"{fmt.ci(*c2['glp']['auc_ci'])}, Gaussian samples {c2['gaussian_full']['auc']:.3f} "
            f"{fmt.ci(*c2['gaussian_full']['auc_ci'])}. " + verdict)


def eval_table(report: dict) -> str:
    """The prior_eval report as markdown: the loss summary, the candidates (FD, raw FD, FD by n, C2ST AUC), the
    sampler sweep, then loss per t against the Gaussian baseline."""
    summary = markdown_table(
        ["metric", "GLP", "baseline", "baseline kind"],
        [["held-out flow-matching loss", report["heldout_loss_mean"], report["gaussian_baseline_loss_mean"],
          "optimal affine predictor (= the full-covariance Gaussian)"]],
    )
    sizes = list(next(iter(report["candidates"].values()))["fd_by_n"])
    cands = markdown_table(
        ["candidate vs held-out rows", "FD (normalized)", "FD (raw)", *[f"FD at n={m}" for m in sizes],
         "C2ST AUC [95% CI]", "max row norm (normalized)"],
        [[c["label"], f"{c['fd']:,.1f}", "" if c["fd_raw"] is None else f"{c['fd_raw']:,.0f}",
          *[f"{c['fd_by_n'][m]:,.1f}" for m in sizes],
          f"{c['c2st']['auc']:.3f} [{c['c2st']['auc_ci'][0]:.3f}, {c['c2st']['auc_ci'][1]:.3f}]",
          f"{c['row_norm']['max']:,.0f}"] for c in report["candidates"].values()],
    )
    sweep = markdown_table(["GLP sampler steps", "FD (normalized)", "C2ST AUC"],
                           [[r["steps"], f"{r['fd']:,.1f}", f"{r['c2st_auc']:.3f}"] for r in report["sampler_sweep"]])
    verdict = ("**Beats the full-covariance Gaussian**" if report["beats_gaussian"]
               else "**Does not beat the full-covariance Gaussian**: " + "; ".join(report["beats_gaussian_reasons"]))
    per_t = markdown_table(
        ["t (0 = data, 1 = noise)", "GLP loss (MSE per dim)", "optimal affine loss", "GLP − affine"],
        [[f"{t:.3f}", f"{a:.4f}", f"{b:.4f}", f"{a - b:+.4f}"]
         for t, a, b in zip(report["t"], report["heldout_loss"], report["gaussian_baseline_loss"])],
    )
    per_t_head = ("**Held-out loss per noise level t** (t = 0 is the data, t = 1 pure noise; the GLP − affine column "
                  "is negative where the prior beats the Gaussian):")
    return "\n\n".join([summary, verdict + f" (held-out loss, and C2ST on {report['n_fd']} rows per set; the "
                          f"reference row norm reaches {report['reference_row_norm']['max']:.0f})", cands, sweep,
                          per_t_head, per_t])


def loss_by_t_png(report: dict) -> bytes:
    """Held-out flow-matching loss per noise level t: GLP against the optimal affine (Gaussian) predictor."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(report["t"], report["gaussian_baseline_loss"], "o--", color="#888888", label="optimal affine (Gaussian)")
    ax.plot(report["t"], report["heldout_loss"], "o-", color="#08519c", label="GLP")
    ax.set(xlabel="noise level t (0 = data, 1 = pure noise)", ylabel="loss (MSE per dim)",
           title="held-out flow-matching loss by t")
    ax.legend()
    return to_png(fig)


def read_json(path: Path) -> dict | None:
    """An artifact's JSON, or None when it has not been materialized."""
    return json.loads(path.read_text()) if path.is_file() else None


