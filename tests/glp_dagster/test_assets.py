import json

import dagster as dg
import pytest

from glp import pipeline
from glp.prior import load_prior
from glp_dagster.definitions import build_definitions
from tests.glp_dagster.conftest import tiny_settings

KEY = "builtin/L1"


def test_whole_chain_materializes_with_passing_checks(settings):
    defs = build_definitions(settings)
    instance = dg.DagsterInstance.ephemeral()
    # what `make run` selects: everything but the scaling sweep (a separate selection, `make scaling`)
    res = dg.materialize(list(defs.assets) + list(defs.asset_checks), instance=instance, partition_key=KEY,
                         resources=defs.resources, selection=dg.AssetSelection.all() - dg.AssetSelection.assets("scaling"))
    assert res.success
    checks = {e.asset_check_key.name: e.passed for e in res.get_asset_check_evaluations()}
    blocking = {spec.key.name for c in defs.asset_checks for spec in c.check_specs
                if spec.blocking and spec.asset_key.to_user_string() != "scaling"}
    assert len(blocking) >= 14 and all(checks[c] for c in blocking), checks
    mats = {m.asset_key.to_user_string() for m in res.get_asset_materialization_events()}
    assert mats == {"corpus", "labelled", "source_lm", "source_model", "activations", "norm_stats", "glp_prior", "prior_eval",
                    "steering", "delta_lm", "probe_tasks", "sae", "probes", "ood"}
    meta = res.asset_materializations_for_node("activations")[0].metadata
    assert meta["dagster/row_count"].value >= 1500 and "train documents" in meta["token_cap"].value
    src = settings.sources[0]
    report = json.loads(pipeline.source_paths(settings, src).prior_eval.read_text())
    assert report["n_heldout"] > 0 and report["heldout_loss_mean"] > 0
    assert load_prior(pipeline.source_paths(settings, src).prior).d_model == 32


def test_downstream_alone_on_a_fresh_instance_names_the_plus_selection(settings):
    defs = build_definitions(settings)
    res = dg.materialize([a for a in defs.assets], selection="prior_eval", instance=dg.DagsterInstance.ephemeral(),
                         partition_key=KEY, resources=defs.resources, raise_on_error=False)
    assert not res.success
    failure = next(e for e in res.all_events if e.event_type_value == "STEP_FAILURE")
    assert "--select '+key:prior_eval' --partition 'builtin/L1'" in failure.step_failure_data.error.message


def test_wrong_layer_fails_with_the_valid_range(tmp_path):
    import pytest

    from glp.config import ConfigError, Settings

    # caught at load, before any asset runs, when the model's config is cheap to read
    with pytest.raises(ConfigError, match=r"sources\[0\]\.layer 5 is out of range for builtin .*0\.\.1"):
        tiny_settings(tmp_path, sources=[{"model": "builtin", "layer": 5}])
    # and the extraction step still refuses it when settings skip the load-time check (a model whose config is
    # not readable up front): the same range, from the loaded model
    good = tiny_settings(tmp_path)
    s = Settings(**{**good.model_dump(), "sources": [{"model": "builtin", "layer": 5}]})
    pipeline.build_source_lm(s)
    with pytest.raises(Exception, match=r"layer 5 out of range.*choose 0\.\.1"):
        pipeline.build_activations(s, s.sources[0])


@pytest.mark.slow
def test_whole_chain_materializes_under_the_gpu_profile_on_the_cpu(tmp_path):
    """GLP_PROFILE=gpu's code paths at tiny sizes on the CPU (what `benchmarks/gpu_chain.sh --smoke` runs on a GPU):
    bf16 extraction stored as bf16 raw chunks, bf16 training from rows held on the device, every reader after."""
    from glp.data.store import ActivationStore

    settings = tiny_settings(tmp_path, profile="gpu", device="cpu")  # the explicit CPU override of a gpu profile
    assert (settings.store.row_dtype, settings.store.codec, settings.train.precision) == ("compute", "raw", "bf16")
    defs = build_definitions(settings)
    res = dg.materialize(list(defs.assets) + list(defs.asset_checks), instance=dg.DagsterInstance.ephemeral(),
                         partition_key=KEY, resources=defs.resources,
                         selection=dg.AssetSelection.all() - dg.AssetSelection.assets("scaling"))
    assert res.success
    failed = [e.asset_check_key.name for e in res.get_asset_check_evaluations() if not e.passed
              and e.severity == dg.AssetCheckSeverity.ERROR]
    assert not failed, failed
    store = ActivationStore(pipeline.source_paths(settings, settings.sources[0]).store("train"))
    assert (store.row_dtype, store.codec) == ("bfloat16", "raw") and store.verify() == []
