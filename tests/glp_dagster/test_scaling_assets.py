import json

import dagster as dg

from glp import pipeline
from glp.pipeline.layout import scaling_dir
from glp_dagster.definitions import build_definitions
from tests.glp.test_scaling import TINY_SCALING
from tests.glp_dagster.conftest import tiny_settings

KEY = "builtin/L1"
CHECKS = {"scaling_fit_converged", "scaling_residuals_reported", "scaling_loss_falls_with_compute"}


def test_scaling_materializes_at_tiny_size_with_passing_checks_that_can_fail(tmp_path):
    settings = tiny_settings(tmp_path, scaling=TINY_SCALING)
    defs = build_definitions(settings)
    chain = dg.AssetSelection.assets("scaling").upstream()  # activations, norm_stats, probe_tasks, ... no prior
    res = dg.materialize(list(defs.assets) + list(defs.asset_checks), selection=chain,
                         instance=dg.DagsterInstance.ephemeral(), partition_key=KEY, resources=defs.resources)
    assert res.success
    assert not res.asset_materializations_for_node("glp_prior")  # the sweep trains its own priors
    evals = {e.asset_check_key.name: e for e in res.get_asset_check_evaluations()}
    assert CHECKS <= set(evals) and all(evals[c].passed for c in CHECKS), evals
    assert "residuals" in evals["scaling_residuals_reported"].metadata

    meta = res.asset_materializations_for_node("scaling")[0].metadata
    assert meta["n_points"].value == 8 and meta["n_priors"].value == 4 and meta["alpha"].value >= 0
    assert meta["loss_vs_compute"].value.startswith("![chart](<data:image/svg+xml,")
    assert len(meta["loss_vs_compute"].value) < 1000 and meta["result"].value.startswith("**L(C) = ")
    assert "data:image/png;base64" in meta["scaling_full"].value and "rho_loss_vs_delta_lm" in meta
    assert meta["priors_trained_this_run"].value == 4

    # the checks can fail: a report whose loss rises with C and whose fit did not converge
    root = scaling_dir(pipeline.source_paths(settings, settings.sources[0]).root)
    rep = json.loads((root / "scaling.json").read_text())
    rep["spearman_loss_vs_c"] = 0.4
    rep["fit"]["converged"] = False
    rep["fit"]["residuals_log"][0] = float("nan")
    (root / "scaling.json").write_text(json.dumps(rep))
    again = dg.materialize(list(defs.assets) + list(defs.asset_checks), selection=dg.AssetSelection.checks_for_assets(
        "scaling"), instance=dg.DagsterInstance.ephemeral(), tags={"dagster/partition": KEY}, resources=defs.resources,
        raise_on_error=False)
    assert {e.asset_check_key.name for e in again.get_asset_check_evaluations() if not e.passed} == CHECKS


def test_scaling_is_left_out_of_the_make_run_selection(tmp_path):
    defs = build_definitions(tiny_settings(tmp_path))
    graph = defs.resolve_asset_graph()
    run = dg.AssetSelection.from_string("* and not key:scaling").resolve(graph)
    assert dg.AssetKey("scaling") not in run and dg.AssetKey("glp_prior") in run
    assert dg.AssetSelection.from_string("scaling").resolve(graph) == {dg.AssetKey("scaling")}
