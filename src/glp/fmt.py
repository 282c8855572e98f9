"""Numbers a person can read: significant digits, thousands separators, bytes and durations.

One place for how results are written for people (Dagster metadata, markdown reports, the CLI); the JSON artifacts
keep full precision for machines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def sig(x: float, digits: int = 4) -> float:
    """`x` rounded to `digits` significant digits (0.07874687500000001 -> 0.07875); nan and inf pass through."""
    x = float(x)
    if not math.isfinite(x) or x == 0:
        return x
    return float(f"{x:.{digits}g}")


def count(n: int | float) -> str:
    """A count with thousands separators: 125321 -> '125,321'."""
    return f"{int(round(n)):,}"


def nbytes(n: int | float) -> str:
    """Bytes in binary units: 1536 -> '1.5 KiB', 734003200 -> '700 MiB'."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    """Seconds as '0.42 s', '47 s', '2 min 23 s' or '1 h 05 min'."""
    s = float(seconds)
    if s < 10:
        return f"{s:.2g} s"
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        m, r = divmod(round(s), 60)
        return f"{m} min {r} s"
    h, r = divmod(round(s), 3600)
    return f"{h} h {r // 60:02d} min"


def ci(lo: float, hi: float, digits: int = 3) -> str:
    """A confidence interval as '[0.712, 0.781]'."""
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def tidy(value: Any, digits: int = 4) -> Any:
    """`value` with every float (also inside dicts, lists and tuples) rounded to `digits` significant digits."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return sig(value, digits)
    if isinstance(value, Mapping):
        return {k: tidy(v, digits) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [tidy(v, digits) for v in value]
    try:  # numpy scalars
        return sig(float(value), digits)
    except (TypeError, ValueError):
        return value
