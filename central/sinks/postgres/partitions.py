"""Native range partitions of the time-series tables: created as rows need them, dropped past
the retention (TimescaleDB, when enabled, does both itself).

A partition covers ``chunk_s`` seconds and is named after its start in UTC
(``device_status_p202611280000``); the name is how :func:`drop_expired` finds its range again.
``known`` is the caller's set of (table, start) partitions it created or saw, so a batch costs
no DDL once its partitions exist.
"""

from __future__ import annotations

import calendar
import contextlib
import time
from datetime import UTC, datetime

import asyncpg

from .schema import TIMESERIES


def partition_name(table: str, start_s: int) -> str:
    return f"{table}_p{time.strftime('%Y%m%d%H%M', time.gmtime(start_s))}"


def to_datetime(ms: int) -> datetime:
    """Unix milliseconds as the ``timestamptz`` asyncpg writes."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


async def ensure_partitions(conn: asyncpg.Connection, table: str, stamps_ms: list[int],
                            chunk_s: int, known: set[tuple[str, int]]) -> None:
    """Create the partitions of ``table`` that rows stamped ``stamps_ms`` fall into."""
    width_ms = chunk_s * 1000
    starts = {t // width_ms * chunk_s for t in stamps_ms}
    for start in sorted(starts):
        if (table, start) in known:
            continue
        part = partition_name(table, start)
        # another central instance may have created it a moment ago
        with contextlib.suppress(asyncpg.DuplicateTableError, asyncpg.UniqueViolationError):
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {part} PARTITION OF {table} FOR VALUES FROM "
                f"('{to_datetime(start * 1000).isoformat()}') TO "
                f"('{to_datetime((start + chunk_s) * 1000).isoformat()}');"
                f"ALTER TABLE {part} ENABLE ROW LEVEL SECURITY")
        known.add((table, start))


async def drop_expired(conn: asyncpg.Connection, chunk_s: int, cutoff_s: float,
                       known: set[tuple[str, int]]) -> list[str]:
    """Drop the partitions that end at or before ``cutoff_s``; returns their names."""
    dropped = []
    for table in TIMESERIES:
        parts = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = $1", table)
        for (name,) in parts:
            start = calendar.timegm(time.strptime(name.rsplit("_p", 1)[-1], "%Y%m%d%H%M"))
            if start + chunk_s <= cutoff_s:
                await conn.execute(f"DROP TABLE {name}")
                known.discard((table, int(start)))
                dropped.append(name)
    return dropped
