"""Readable numbers (glp.fmt) and the inline charts the Dagster UI shows in place (glp.report, glp.uses.probe)."""

import urllib.parse
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from glp import fmt
from glp.uses.probe import mean_auc_inline, probing_headline
from glp.report import INLINE_LIMIT, TOO_LONG, inline_interval_chart, inline_line_chart, loss_curve_inline


def test_numbers_are_rounded_to_significant_digits_and_counts_bytes_and_durations_read_well():
    assert fmt.sig(0.07874687500000001) == 0.07875 and fmt.sig(123456.7) == 123500.0 and fmt.sig(0.0) == 0.0
    assert fmt.count(125321) == "125,321" and fmt.count(999.6) == "1,000"
    assert fmt.nbytes(512) == "512 B" and fmt.nbytes(1536) == "1.5 KiB" and fmt.nbytes(734003200) == "700 MiB"
    assert fmt.duration(0.421) == "0.42 s" and fmt.duration(47.2) == "47 s" and fmt.duration(143) == "2 min 23 s"
    assert fmt.tidy({"a": [0.123456, 2], "b": {"c": 1 / 3, "d": "x"}, "e": True}) == \
        {"a": [0.1235, 2], "b": {"c": 0.3333, "d": "x"}, "e": True}


def _svg(markdown: str) -> ET.Element:
    """The SVG inside an inline chart's markdown, decoded as the browser does (markdown escapes, then the URI)."""
    prefix = "![chart](<data:image/svg+xml,"
    assert markdown.startswith(prefix) and markdown.endswith(">)")
    uri = markdown[len(prefix):-2].replace("\\<", "<").replace("\\>", ">")
    assert "#" not in uri and "\n" not in uri  # a '#' would end the data URI; a line break the markdown link
    return ET.fromstring(urllib.parse.unquote(uri))


def _assert_a_long_loss_curve_fits(n_steps: int) -> None:
    losses = list(1 + np.exp(-np.arange(n_steps) / 500) + np.random.default_rng(0).normal(0, 0.01, n_steps))
    md = loss_curve_inline(losses)
    assert len(md) <= INLINE_LIMIT < 1000
    svg = _svg(md)
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert "step" in texts and f"{n_steps:,}" in texts and any("MSE per dim" in t for t in texts)


def test_inline_line_chart_fits_the_ui_limit_for_a_20000_step_curve():
    _assert_a_long_loss_curve_fits(20_000)


def test_inline_line_chart_fits_the_ui_limit_and_is_well_formed_svg_even_for_a_long_curve():
    _assert_a_long_loss_curve_fits(2_000)  # far more points than fit

    two = inline_line_chart([("GLP", [0.1, 0.5, 0.9], [1.2, 1.1, 1.3]), ("optimal affine", [0.1, 0.5, 0.9], [1.0, 1.4, 1.1])],
                            "held-out loss by t", "noise level t (0 = data, 1 = noise)", dots=True,
                            labels=[(0.9, 1.3, "r=1 & <more>")])
    texts = [t.text for t in _svg(two).iter("{http://www.w3.org/2000/svg}text")]
    assert {"GLP", "optimal affine", "r=1 & <more>", "noise level t (0 = data, 1 = noise)"} <= set(texts)


def test_inline_interval_chart_writes_each_estimate_and_says_so_when_it_cannot_fit():
    rows = [("SAE", 0.696, 0.655, 0.737), ("GLP", 0.759, 0.715, 0.802)]
    texts = [t.text for t in _svg(inline_interval_chart(rows, "mean AUC", "AUC", xlim=(0.5, 1.0)))
             .iter("{http://www.w3.org/2000/svg}text")]
    assert "SAE 0.696" in texts and "GLP 0.759" in texts
    many = [(f"task number {i}", 0.7, 0.6, 0.8) for i in range(40)]
    assert inline_interval_chart(many, "too many", "AUC") == TOO_LONG


def _summary(gaps: dict[str, tuple[float, float, float]]) -> dict:
    one_d = {f: {"mean": 0.7, "ci_low": 0.65, "ci_high": 0.75} for f in ("sae", "layer", "mlp")}
    one_d["glp"] = {"mean": 0.76, "ci_low": 0.715, "ci_high": 0.802}
    return {"one_d": one_d, "dense": {}, "ordering": ["sae", "layer", "mlp", "glp"], "paper_ordering_reproduced": True,
            "glp_minus": {f: {"mean": m, "ci_low": lo, "ci_high": hi} for f, (m, lo, hi) in gaps.items()}}


def test_probing_headline_reads_each_gap_by_its_ci_not_by_the_order_of_the_means():
    fams = ["sae", "layer", "mlp", "glp"]
    s = _summary({"sae": (0.063, 0.032, 0.094), "layer": (0.026, -0.013, 0.067), "mlp": (-0.05, -0.09, -0.01)})
    text = probing_headline(s, fams, 31)
    assert text.startswith("**GLP meta-neurons: mean 1-D AUC 0.760 [0.715, 0.802] over 31 tasks**")
    assert "better than SAE (+0.063 [+0.032, +0.094])" in text
    assert "not distinguishable from raw layer (+0.026 [-0.013, +0.067])" in text
    assert "worse than raw MLP neuron" in text and "only gaps whose CI excludes 0 are findings" in text
    assert len(text) < 1000 and len(mean_auc_inline(s, fams)) <= INLINE_LIMIT


@pytest.mark.parametrize("n", [1, 3])
def test_a_flat_or_short_series_still_draws(n):
    assert _svg(inline_line_chart([("x", list(range(n)), [1.0] * n)], "flat", "step")) is not None
