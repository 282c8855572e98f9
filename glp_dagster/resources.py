"""The settings resource: Dagster config wraps the one pydantic-settings tree of `glp.config`."""

from __future__ import annotations

import json
from functools import cached_property

import dagster as dg

from glp.config import Settings, SourceConfig, load_settings
from glp.pipeline.layout import SourcePaths, source_paths


class GLPSettings(dg.ConfigurableResource):
    """Project settings as JSON (`Settings.model_dump_json()`); empty = load from env / glp.toml."""

    settings_json: str = ""

    @cached_property
    def settings(self) -> Settings:
        return load_settings(**json.loads(self.settings_json)) if self.settings_json else load_settings()

    def source(self, context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> SourceConfig:
        """The source of the partition being computed."""
        key = context.partition_key if isinstance(context, dg.AssetExecutionContext) else _check_partition(context)
        return self.settings.source(key)

    def paths(self, context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> SourcePaths:
        """Where the artifacts of the partition's source live (glp.pipeline.layout)."""
        return source_paths(self.settings, self.source(context))


def _check_partition(context: dg.AssetCheckExecutionContext) -> str:
    return context.op_execution_context.partition_key


def settings_resource(settings: Settings) -> GLPSettings:
    return GLPSettings(settings_json=settings.model_dump_json())
