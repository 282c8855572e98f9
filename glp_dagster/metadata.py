"""Asset metadata a person can read on the asset page (glp.fmt does the numbers).

What Dagster 1.13's UI shows without a click: on the asset page (Overview → Metadata) and in the graph's sidebar, a
markdown value shorter than 1,000 characters is rendered in place; a longer one is a "[Show Markdown]" link to a
dialog. So every asset with a plot puts first an `inline_*` chart (glp.report's SVG charts, < 1,000 characters) and,
where a sentence says what the numbers mean, a short `result`; the full PNG and the long reports follow as links.
`dagster/row_count` and `dagster/size_bytes` are shown formatted at the top of the page (Row count, Storage).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from glp import fmt


def readable(metadata: Mapping[str, Any], digits: int = 4) -> dict[str, Any]:
    """`metadata` with every float rounded to `digits` significant digits, also inside JSON values."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, float):
            value = fmt.sig(value, digits)
        elif isinstance(value, dg.JsonMetadataValue):
            value = dg.MetadataValue.json(fmt.tidy(value.data, digits))
        out[key] = value
    return out


def inline(markdown: str) -> dg.MetadataValue:
    """A short markdown value (a result sentence, an inline chart) that the asset page shows in place."""
    return dg.MetadataValue.md(markdown)


def png(png_bytes: bytes, alt: str) -> dg.MetadataValue:
    """A full-size PNG (behind the page's "[Show Markdown]" link: too long to show in place)."""
    from glp.report import png_markdown

    return dg.MetadataValue.md(png_markdown(png_bytes, alt))
