"""`store.shards` in the asset graph: N shard assets upstream of `activations`, none by default."""

import dagster as dg

from glp import pipeline
from glp.data.store import ActivationStore
from glp_dagster.definitions import build_definitions
from tests.glp_dagster.conftest import tiny_settings

KEY = "builtin/L1"


def test_the_default_graph_has_no_shard_assets(settings):
    keys = {k.to_user_string() for a in build_definitions(settings).assets for k in a.keys}
    assert not any(k.startswith("activations_shard_") for k in keys)


def test_two_shard_assets_feed_activations_and_merge_into_one_store(tmp_path):
    base = tiny_settings(tmp_path).store.model_dump(mode="json")
    s = tiny_settings(tmp_path, store={**base, "batch_size": 1, "shards": 2})
    defs = build_definitions(s)
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get(dg.AssetKey("activations")).parent_keys} >= {
        "activations_shard_0", "activations_shard_1"}
    selection = ["corpus", "source_lm", "source_model", "activations_shard_0", "activations_shard_1", "activations"]
    res = dg.materialize([a for a in defs.assets], selection=selection, instance=dg.DagsterInstance.ephemeral(),
                         partition_key=KEY, resources=defs.resources)
    assert res.success
    rows = [res.asset_materializations_for_node(f"activations_shard_{k}")[0].metadata["dagster/row_count"].value
            for k in range(2)]
    store = ActivationStore(pipeline.source_paths(s, s.sources[0]).store("train"))
    assert store.verify() == [] and sum(rows) == store.n_rows >= s.store.max_tokens
