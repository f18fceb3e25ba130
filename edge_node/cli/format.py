"""How the commands print: UTC times, durations, rates, and tables (or their rows as JSON)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any


def fmt_utc(ms: object) -> str:
    """Epoch milliseconds as ``YYYY-MM-DD HH:MM:SS`` in UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(str(ms)) / 1000))


def print_table(rows: list[dict[str, Any]], as_json: bool, header: str,
                line: Callable[[dict[str, Any]], str], what: str) -> int:
    """Print ``rows`` as JSON or as a table with a count."""
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print(header)
    for r in rows:
        print(line(r))
    print(f"{len(rows)} {what}")
    return 0


def fmt_duration(s: float | None) -> str:
    """Seconds in the largest unit that fits: ``45s``, ``12m``, ``3.5h``, ``2.0d`` (``-``: none)."""
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s / 60:.0f}m"
    if s < 86400:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def fmt_rate(v: float | None) -> str:
    """A per-second rate with one decimal; ``-`` if unknown."""
    return "-" if v is None else f"{v:,.1f}"
