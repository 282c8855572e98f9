"""The probing assets on a real Dagster instance: probe_tasks -> sae -> probes with their checks; missing upstream."""

import json

import dagster as dg

from glp_dagster.definitions import build_definitions
from tests.glp_dagster.conftest import tiny_settings

KEY = "builtin/L1"


def _settings(tmp_path):
    return tiny_settings(tmp_path)  # tiny probe tasks (is_animal, is_thing), SAE and probe sizes


def test_probes_materialize_with_their_upstream_and_every_check_passes(tmp_path):
    s = _settings(tmp_path)
    defs = build_definitions(s)
    res = dg.materialize(list(defs.assets) + list(defs.asset_checks), selection="+key:probes",
                         instance=dg.DagsterInstance.ephemeral(), partition_key=KEY, resources=defs.resources)
    assert res.success
    checks = {e.asset_check_key.name: e.passed for e in res.get_asset_check_evaluations()}
    ours = {"probe_tasks_both_classes_in_each_split", "probe_tasks_balanced_and_large_enough", "sae_reconstructs",
            "probes_auc_in_unit_interval", "probes_every_task_reported"}
    assert ours <= set(checks) and all(checks[c] for c in ours), checks
    meta = res.asset_materializations_for_node("probes")[0].metadata
    assert meta["n_tasks"].value == 2
    assert "raw MLP neuron" in meta["table4"].value and "meta-neuron" in meta["dashboards"].value
    rep = json.loads((tmp_path / "store/builtin/L1/probes/results.json").read_text())
    assert [r["task"] for r in rep["tasks"]] == ["is_animal", "is_thing"]
    assert rep["n_units"] == {"sae": 64, "layer": 32, "mlp": 128, "glp": 2 * 128}


def test_probes_alone_on_a_fresh_instance_fails_naming_the_plus_selection(tmp_path):
    s = _settings(tmp_path)
    defs = build_definitions(s)
    res = dg.materialize(list(defs.assets), selection="probes", instance=dg.DagsterInstance.ephemeral(),
                         partition_key=KEY, resources=defs.resources, raise_on_error=False)
    assert not res.success
    failure = next(e for e in res.all_events if e.event_type_value == "STEP_FAILURE")
    msg = failure.step_failure_data.error.message
    assert "--select '+key:probes' --partition 'builtin/L1'" in msg and "'+probes'" in msg
