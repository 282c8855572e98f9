"""Where artifacts live and how each is built: `layout` (the artifact layout, fingerprints, `SourceArtifacts`), then
one module per asset group, each step a function of (settings, source) that reads its inputs from the layout,
writes its artifact atomically and returns a JSON-able summary. Orchestrators (the Dagster assets, the `glp` CLI,
a notebook) call these. Nothing below this package imports it.

`from glp import pipeline; pipeline.build_prior(...)` resolves each name lazily from its module, so importing the
package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = ("layout", "data", "prior", "probing", "steering", "ood", "scaling")


def __getattr__(name: str) -> Any:
    for mod in _MODULES:
        m = importlib.import_module(f"glp.pipeline.{mod}")
        if hasattr(m, name):
            return getattr(m, name)
    raise AttributeError(f"module 'glp.pipeline' has no attribute {name!r}")
