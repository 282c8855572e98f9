"""The code location: `dagster dev` (workspace.yaml) and `dagster asset materialize -m glp_dagster.definitions`.

Settings are read once here (env `GLP_*`, `glp.toml`) through `load_settings`: an invalid value, an unknown `GLP_*`
variable, malformed JSON or TOML, a missing `GLP_CONFIG_FILE` or a layer beyond the source model's blocks stops the
load with a `ConfigError` naming the field, variable or file, before any asset runs. The partitions are the
configured sources, so adding a layer adds a partition.
"""

from __future__ import annotations

import logging
import os
import warnings

import dagster as dg

from glp.config import Settings, load_settings
from glp_dagster.console import console_logger
from glp_dagster.defs import data, ood, prior, probing, scaling, steering
from glp_dagster.executors import glp_executor
from glp_dagster.resources import settings_resource

# Two framework notices about features we chose knowingly, printed once per check or selection on every run:
# partitioned asset checks (preview in 1.13) and the `--select` parser's include_sources (beta). Only these two.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning)
warnings.filterwarnings("ignore", message="Parameter `include_sources` of function `AssetSelection.all`",
                        category=dg.BetaWarning)
# The console shows our own progress lines (glp.progress); transformers' tqdm bars (loading weights, writing shards:
# under a second each) would break into them. Read when transformers is imported, so set before any step runs.
# (Its GGUF loader's bar, ~2 s once per fresh store, uses tqdm directly, which the dagster CLI imported before this
# module: it stays.)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class _NoCpuFallbackNotice(logging.Filter):
    """DeepSpeed warns on import that it found no GPU and uses the CPU; glp picks the device itself
    (settings.device), so on a CPU machine the notice says nothing new."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Setting accelerator to CPU")


logging.getLogger("DeepSpeed").addFilter(_NoCpuFallbackNotice())


def source_partitions(settings: Settings) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition([s.key for s in settings.sources])


def build_definitions(settings: Settings) -> dg.Definitions:
    partitions = source_partitions(settings)
    assets = [*data.build_data_assets(settings, partitions), *prior.build_prior_assets(settings, partitions),
              *probing.build_probing_assets(settings, partitions), *steering.build_steering_assets(settings, partitions),
              *scaling.build_scaling_assets(settings, partitions),  # a separate selection: not in make run
              *ood.build_ood_assets(settings, partitions)]
    checks = [*data.build_data_checks(partitions), *prior.build_prior_checks(partitions),
              *probing.build_probing_checks(partitions), *steering.build_steering_checks(partitions),
              *scaling.build_scaling_checks(partitions), *ood.build_ood_checks(partitions)]
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        resources={"glp": settings_resource(settings)},
        # a quiet console (glp_dagster.console): step start/end lines and progress; every event stays in the event log
        loggers={"console": console_logger(a.node_def.name for a in assets if a.is_executable)},
        # one process by default: steps share the loaded torch/transformers imports (STACK.md: 4.6 s vs 14 s); run
        # config picks multiprocess or a Dask cluster instead (glp_dagster.executors, README "Scaling out")
        executor=glp_executor,
    )


defs = build_definitions(load_settings())
