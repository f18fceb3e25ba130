"""Durations and timestamps as people and peers write them (sans-IO; shared with central).

``parse_duration`` reads the durations of rule files and config (``"1m30s"`` -> 90000 ms);
``parse_rfc3339_ms`` / ``format_rfc3339_ms`` the timestamps of Alertmanager's payloads, which
are also the alert events the edge sends to central.
"""

from __future__ import annotations

import calendar
import re
import time

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_duration(text: str) -> int:
    """``"1m30s"`` -> 90000 (milliseconds). Units: ms, s, m, h, d, w.

    Raises:
        ValueError: ``text`` is not a sequence of ``<number><unit>`` terms.
    """
    s = str(text).strip()
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f"{text!r} is not a duration (e.g. 30s, 5m, 1h, 1h30m)")
    return int(total)


def parse_rfc3339_ms(text: str) -> int:
    """``2026-11-28T10:00:00.123Z`` to Unix milliseconds; 0 for Go's zero time (or empty)."""
    if not text or text.startswith("0001-01-01"):
        return 0
    base, _, frac = text.rstrip("Z").partition(".")
    secs = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    return secs * 1000 + int((frac or "0")[:3].ljust(3, "0"))


def format_rfc3339_ms(ms: int) -> str:
    """Unix milliseconds as Alertmanager writes times; Go's zero time for 0."""
    if ms <= 0:
        return "0001-01-01T00:00:00Z"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"
