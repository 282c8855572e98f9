"""glp.uses.scaling: the power-law fitter recovers known parameters; the sweep trains each point once (cache)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from glp.uses.scaling import ScalingError, fit_power_law, power_law, spearman


@pytest.mark.parametrize("seed", [0, 1])
def test_fit_recovers_known_law_within_its_cis(seed: int) -> None:
    E, A, alpha = 0.52, 435.1, 0.169  # the paper's law, over the paper's range of C
    C = np.logspace(15, np.log10(2e19), 16)
    L = power_law(C, E, A, alpha) * np.exp(np.random.default_rng(seed).normal(0, 0.005, len(C)))
    fit = fit_power_law(C, L, n_boot=300, seed=seed)
    assert fit["converged"]
    for name, true in (("E", E), ("A", A), ("alpha", alpha)):
        lo, hi = fit[f"{name}_ci"]
        assert lo <= true <= hi, f"{name}: {true} outside [{lo}, {hi}] (estimate {fit[name]})"
    assert abs(fit["alpha"] - alpha) < 0.05
    assert fit["rms_residual_log"] < 0.01
    assert len(fit["residuals_log"]) == len(C)
    band = fit["curve"]
    assert all(lo <= mid <= hi for lo, mid, hi in zip(band["lo"], band["L"], band["hi"]))


def test_fit_of_a_flat_loss_finds_no_decay() -> None:
    C = np.logspace(10, 13, 10)
    L = 1.0 + np.random.default_rng(0).normal(0, 1e-3, len(C))
    fit = fit_power_law(C, L, n_boot=50)
    assert fit["converged"]
    curve = power_law(C, fit["E"], fit["A"], fit["alpha"])
    assert curve.max() - curve.min() < 0.01  # the fitted law is flat over the points' range


def test_fit_refuses_too_few_points_or_bad_values() -> None:
    with pytest.raises(ScalingError, match="at least 4 points"):
        fit_power_law([1e10, 1e11, 1e12], [1.0, 0.9, 0.8])
    with pytest.raises(ScalingError, match="at least 4 points"):
        fit_power_law([1e10, 1e10, 1e11, 1e11], [1.0, 0.9, 0.8, 0.7])
    with pytest.raises(ScalingError, match="finite and positive"):
        fit_power_law([1e10, 1e11, 1e12, 1e13], [1.0, 0.9, -0.8, 0.7])


def test_spearman_is_nan_for_a_constant_side() -> None:
    assert np.isnan(spearman(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 1.0])))
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)


TINY_SCALING = {
    "points": [{"n_blocks": 1, "width_mult": 0.5, "steps": 12, "snapshots": 1},
               {"n_blocks": 1, "width_mult": 1.0, "steps": 12, "snapshots": 1},
               {"n_blocks": 2, "width_mult": 1.0, "steps": 16, "snapshots": 1},
               {"n_blocks": 2, "width_mult": 2.0, "steps": 20, "snapshots": 1}],
    "batch_size": 32, "heldout_rows": 256, "n_t": 4, "n_bootstrap": 50, "n_probe_tasks": 2, "n_prompts": 2,
    "max_new_tokens": 4, "delta_lm_tokens": 64, "downstream": "final",
}


def test_adding_a_point_trains_and_scores_only_that_point(tmp_path: Path) -> None:
    from glp import pipeline
    from glp.pipeline.scaling import build_scaling
    from glp.pipeline.layout import scaling_dir
    from tests.glp_dagster.conftest import tiny_settings

    s = tiny_settings(tmp_path, scaling=TINY_SCALING)
    src = s.sources[0]
    pipeline.build_source_lm(s)
    pipeline.build_activations(s, src)
    pipeline.build_norm_stats(s, src)
    first = build_scaling(s, src)
    assert len(first["trained_now"]) == 4 and len(first["points"]) == 8  # each prior's final weights + 1 snapshot
    root = scaling_dir(pipeline.source_paths(s, src).root)
    files = {p: p.stat().st_mtime_ns for sub in ("points", "evals", "downstream") for p in (root / sub).rglob("*")
             if p.is_file()}
    assert len(list((root / "downstream").iterdir())) == 4  # the final weights of each prior

    extra = {"n_blocks": 3, "width_mult": 1.0, "steps": 8, "snapshots": 1}
    more = tiny_settings(tmp_path, scaling={**TINY_SCALING, "points": [*TINY_SCALING["points"], extra]})
    second = build_scaling(more, src)
    new = [pr["key"] for pr in second["priors"] if pr["n_blocks"] == 3]
    assert second["trained_now"] == new  # only the added point was trained
    assert {p: p.stat().st_mtime_ns for p in files} == files  # nothing of the other points was rewritten
    assert len(list((root / "downstream").iterdir())) == 5
    assert len(second["points"]) == 10 and len(second["downstream"]["points"]) == 5
    old = {(p["key"], p["step"]): p["loss"] for p in first["points"]}
    assert all(p["loss"] == old[(p["key"], p["step"])] for p in second["points"] if p["key"] not in new)

    # the report: C = 6 N D, loss falls with C on these points, every downstream metric has its correlation
    p = second["points"][0]
    assert p["C"] == 6.0 * p["n_params"] * p["rows_seen"]
    assert second["fit"]["converged"] and second["spearman_loss_vs_c"] < 0
    assert set(second["downstream"]["correlations"]) == {"probe_auc", "steer_concept", "steer_nll_cost", "delta_lm"}
    assert second["gaussian"]["loss"] > 0 and json.loads((root / "scaling.json").read_text())["fit"]["E"] >= 0
    assert (root / "scaling.png").read_bytes()[:4] == b"\x89PNG" == (root / "downstream.png").read_bytes()[:4]


def test_downstream_correlations_read_the_sign_of_better() -> None:
    from glp.uses.scaling import downstream_correlations

    losses = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5])
    units = {"probe_auc": np.arange(3), "steer_concept": np.arange(3), "steer_nll_cost": np.arange(3),
             "delta_lm": np.array([0, 0, 1, 1])}
    better = np.linspace(0.6, 0.9, 6)[:, None]  # rises as loss falls
    per_unit = {"probe_auc": better + np.zeros(3), "steer_concept": better + np.zeros(3),
                "steer_nll_cost": -better + np.zeros(3), "delta_lm": -better + np.zeros(4)}
    corr = downstream_correlations(losses, per_unit, units, n_boot=200, seed=0)
    for m, c in corr.items():
        assert c["agreement"] == pytest.approx(1.0), m  # lower loss, better metric, whichever way "better" points
        assert c["verdict"] in ("holds", "inconclusive")
    assert corr["probe_auc"]["spearman"] == pytest.approx(-1.0) and corr["delta_lm"]["spearman"] == pytest.approx(1.0)
    flat = {m: np.zeros_like(v) + np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0])[:, None] for m, v in per_unit.items()}
    assert all(c["verdict"] == "inconclusive" for c in downstream_correlations(  # alternating: no trend either way
        losses, flat, units, n_boot=200, seed=0).values())
    worse = {m: -v for m, v in per_unit.items()}
    assert all(c["agreement"] == pytest.approx(-1.0) for c in downstream_correlations(
        losses, worse, units, n_boot=200, seed=0).values())
    assert {c["verdict"] for c in downstream_correlations(losses, worse, units, n_boot=200, seed=0).values()} == {
        "contradicted"}
