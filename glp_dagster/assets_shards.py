"""Shard assets: with `store.shards = N > 1`, the train extraction of each source runs as N assets
`activations_shard_<k>` (glp.data.shards), upstream of `activations`, which merges them. Each is its own step, so any
multi-process executor (multiprocess, dask: glp_dagster.executors) runs them in parallel, and a failed shard is
re-executed alone. With N = 1 (the default) there are none and `activations` extracts the whole split itself.
"""

from collections.abc import Sequence

import dagster as dg

from glp import fmt, pipeline
from glp.config import Settings, config_hash
from glp_dagster.assets import CODE_VERSION, GROUP, require_upstream, user_errors, writing
from glp_dagster.resources import GLPSettings


def shard_asset_name(k: int) -> str:
    return f"activations_shard_{k}"


def _shard_asset(k: int, n: int, settings: Settings, partitions: dg.PartitionsDefinition,
                 upstream: Sequence[dg.AssetsDefinition]) -> dg.AssetsDefinition:
    @dg.asset(name=shard_asset_name(k), deps=list(upstream), partitions_def=partitions, group_name=GROUP,
              kinds={"zarr"}, code_version=f"{CODE_VERSION}-{config_hash(settings.store)}",
              description=f"Shard {k} of {n} of the source's train activations: a contiguous run of corpus windows, "
                          "extracted as one worker would (glp.data.shards); `activations` merges the shards.")
    def shard(context: dg.AssetExecutionContext, glp: GLPSettings) -> dg.MaterializeResult:
        from glp.data.source_model import is_packaged

        s, src = glp.settings, glp.source(context)
        if src.model == "builtin":
            require_upstream(pipeline.builtin_lm_dir(s), "source_lm", shard_asset_name(k), context.partition_key)
        paths = pipeline.source_paths(s, src)
        with user_errors():
            if is_packaged(src.model):
                require_upstream(pipeline.model_dir(s, src), "source_model", shard_asset_name(k), context.partition_key)
            with writing(context, paths.activations / "shards" / f"train-{k}-of-{n}"):
                out = pipeline.build_activation_shard(s, src, k, log=context.log.info)
        lo, hi = out["doc_range"]
        return dg.MaterializeResult(
            metadata={"dagster/row_count": out["rows"], "documents": f"{fmt.count(lo)}..{fmt.count(hi - 1)}",
                      "tokens_per_s": fmt.count(out["tokens_per_s"]), "path": out["path"]},
            data_version=dg.DataVersion(f"{pipeline.activations_version(s, src)}-{k}of{n}"),
        )

    return shard


def build_shard_assets(settings: Settings, partitions: dg.PartitionsDefinition,
                       upstream: Sequence[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    """The `store.shards` shard assets (none when it is 1)."""
    n = settings.store.shards
    return [] if n == 1 else [_shard_asset(k, n, settings, partitions, upstream) for k in range(n)]
