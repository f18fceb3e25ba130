"""What central's stores and sinks provide (two small ``Protocol``s) and the shared types.

A **state store** (embedded SQLite, or PostgreSQL) holds the node registry, each node's series
dictionary, the dedup marks, the device registry and heartbeat history, and keeps the data of any
kind that has no external sink. A **sink** (VictoriaMetrics, Loki, ClickHouse, Valkey) receives
one kind of routed data; every sink write is idempotent on its own, so a batch written again after
a crash changes nothing there.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from edge_node.wire import Batch

from ..errors import MissingSeries

if TYPE_CHECKING:
    from ..router import Job


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    org: str
    created_ms: int
    revoked_ms: int | None = None
    site: str = ""


def new_api_key() -> str:
    """A fresh node key: 256 random bits, URL-safe."""
    return "fle_" + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """Keys are random 256-bit secrets, so a plain SHA-256 is a safe one-way store."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class Pending:
    """A batch not applied yet: its full series dictionary and the sinks that already took it."""

    labels: dict[int, dict[str, str]]
    new_defs: list[tuple[int, dict[str, str]]]
    done_sinks: set[str] = field(default_factory=set)


def pending_from(known: dict[int, dict[str, str]], batch: Batch, sids: list[int],
                 done_sinks: set[str]) -> Pending:
    """Resolve ``sids`` against the stored dictionary ``known`` plus the batch's definitions.

    Raises:
        MissingSeries: some sid is defined nowhere (the edge resends definitions on 409).
    """
    new_defs = [(sid, lbl) for sid, lbl in batch.series_defs if sid not in known]
    if all(map(known.__contains__, sids)):  # the common case: every series defined before
        return Pending(known, new_defs, done_sinks)
    unknown = set(sids).difference(known)
    defs = dict(new_defs)
    missing = sorted(unknown.difference(defs))
    if missing:
        raise MissingSeries(missing)
    return Pending({**known, **defs}, new_defs, done_sinks)


class StateStore(Protocol):
    """Registry, series dictionary, dedup marks, devices, heartbeats, and unrouted data."""

    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ready(self) -> bool: ...

    async def authenticate(self, key: str) -> NodeInfo | None: ...

    async def begin(self, node: NodeInfo, batch: Batch, sids: list[int]) -> Pending | None:
        """``None`` when (node, epoch, seq) was applied before; else what applying needs.

        Raises:
            MissingSeries: ``sids`` holds ids with no known definition (none in the batch either).
            SinkUnavailable: the store cannot be reached.
        """
        ...

    async def mark_sink(self, node: NodeInfo, batch: Batch, sink: str) -> None:
        """Remember that ``sink`` took this batch, so a retry skips it."""
        ...

    async def commit(self, job: Job, pending: Pending, keep_kind: bool, low_watermark: int
                     ) -> bool:
        """Store definitions, devices, heartbeats (and the rows when ``keep_kind``) and the
        applied mark in one transaction; ``False`` if another instance applied it first."""
        ...


class Sink(Protocol):
    """An external backend for some kinds of data."""

    name: str
    kinds: frozenset[str]
    #: True when the sink is where the rows of its kinds live (VictoriaMetrics, Loki); False for
    #: derived data (ClickHouse rollups, Valkey online state)
    stores_rows: bool

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ready(self) -> bool: ...

    async def write(self, job: Job) -> None:
        """Write ``job`` idempotently.

        Raises:
            SinkUnavailable: down, slow, or overloaded (retry later).
            SinkRejected: the backend refused the data for good.
        """
        ...
