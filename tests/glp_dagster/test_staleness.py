"""Changing what an asset means recomputes only what is downstream of it (checked against a real instance)."""

import dagster as dg
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from glp_dagster.definitions import build_definitions
from tests.glp_dagster.conftest import tiny_settings

NAMES = ["corpus", "source_lm", "activations", "norm_stats", "sae", "glp_prior", "prior_eval"]


def _status(defs: dg.Definitions, instance: dg.DagsterInstance, partition: str) -> dict[str, StaleStatus]:
    resolver = CachingStaleStatusResolver(instance, defs.resolve_asset_graph(), LoadingContextForTest(instance))
    return {n: resolver.get_status(dg.AssetKey(n), None if n in ("corpus", "source_lm") else partition) for n in NAMES}


def _materialize_all(defs, instance, partition):
    """Every asset of NAMES (prior_eval and its upstream): the statuses read are theirs; steering, probes, OOD and
    the scaling sweep below them would only add minutes."""
    chain = dg.AssetSelection.assets("prior_eval").upstream()
    assert dg.materialize(list(defs.assets), selection=chain, instance=instance, partition_key=partition,
                          resources=defs.resources).success


def test_adding_a_layer_adds_a_partition_and_leaves_the_first_fresh(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    one = build_definitions(tiny_settings(tmp_path))
    _materialize_all(one, instance, "builtin/L1")
    two_sources = [{"model": "builtin", "layer": 1}, {"model": "builtin", "layer": 0}]
    two = build_definitions(tiny_settings(tmp_path, sources=two_sources))
    before = _status(two, instance, "builtin/L1")
    assert set(before.values()) == {StaleStatus.FRESH}, before
    new = _status(two, instance, "builtin/L0")
    assert new["corpus"] == new["source_lm"] == StaleStatus.FRESH
    assert all(new[n] == StaleStatus.MISSING for n in NAMES[2:]), new
    # computing the new partition runs only its own chain
    res = dg.materialize([a for a in two.assets], selection=NAMES[2:], instance=instance, partition_key="builtin/L0",
                         resources=two.resources)
    assert {m.asset_key.to_user_string() for m in res.get_asset_materialization_events()} == set(NAMES[2:])
    assert set(_status(two, instance, "builtin/L0").values()) == {StaleStatus.FRESH}
    assert set(_status(two, instance, "builtin/L1").values()) == {StaleStatus.FRESH}


def test_changing_the_denoiser_marks_only_the_prior_and_downstream_stale(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    s = tiny_settings(tmp_path)
    _materialize_all(build_definitions(s), instance, "builtin/L1")
    bigger = tiny_settings(tmp_path, denoiser={"n_blocks": 3, "time_dim": 16})
    defs = build_definitions(bigger)
    fresh, stale = StaleStatus.FRESH, StaleStatus.STALE
    # Dagster flags the asset whose code version changed; its downstream goes stale once it has new data.
    assert _status(defs, instance, "builtin/L1") == dict.fromkeys(NAMES, fresh) | {"glp_prior": stale}
    res = dg.materialize([a for a in defs.assets], selection=["glp_prior"], instance=instance,
                         partition_key="builtin/L1", resources=defs.resources)
    assert res.success
    assert _status(defs, instance, "builtin/L1") == dict.fromkeys(NAMES, fresh) | {"prior_eval": stale}
