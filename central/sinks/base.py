"""What central's stores and sinks provide (two small ``Protocol``s), and the node keys.

A **state store** (embedded SQLite, or PostgreSQL) holds the node registry, each node's series
dictionary, the dedup marks, the device registry and heartbeat history, and keeps the data of any
kind that has no external sink. A **sink** (VictoriaMetrics, Loki, ClickHouse, Valkey) receives
one kind of routed data; every sink write is idempotent on its own, so a batch written again after
a crash changes nothing there. The types both read (:class:`~central.model.Job`,
:class:`~central.model.NodeInfo`, :class:`~central.model.Pending`) live in :mod:`central.model`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol

from edge_node.wire import Batch

from ..lease import LeaseTimes

if TYPE_CHECKING:
    from ..audit import AuditEntry
    from ..keys import KeyRow
from ..model import Job, NodeInfo, Pending


def new_api_key() -> str:
    """A fresh node key: 256 random bits, URL-safe."""
    return "fle_" + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """Keys are random 256-bit secrets, so a plain SHA-256 is a safe one-way store."""
    return hashlib.sha256(key.encode()).hexdigest()


class StateStore(Protocol):
    """Registry, series dictionary, dedup marks, devices, heartbeats, and unrouted data."""

    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ready(self) -> bool: ...

    async def authenticate(self, key: str) -> NodeInfo | None: ...

    # node keys (central.keys) and the audit log (central.audit)
    async def lookup_key(self, key_hash: str) -> KeyRow | None: ...

    async def promote_key(self, node_id: str, key_hash: str, now_ms: int, grace_until_ms: int,
                          expires_ms: int | None, entry: AuditEntry) -> bool: ...

    async def offer_key(self, node_id: str, key_hash: str, now_ms: int,
                        expires_ms: int | None, entry: AuditEntry) -> None: ...

    async def write_audit(self, entries: Sequence[AuditEntry]) -> None: ...

    async def read_audit(self, since_ms: int, node_id: str, limit: int
                         ) -> list[AuditEntry]: ...

    async def begin(self, node: NodeInfo, batch: Batch, sids: list[int]) -> Pending | None:
        """``None`` when (node, epoch, seq) was applied before; else what applying needs.

        Raises:
            MissingSeries: ``sids`` holds ids with no known definition (none in the batch either).
            SinkUnavailable: the store cannot be reached.
        """
        ...

    def lease(self, node: NodeInfo, batch: Batch, times: LeaseTimes
              ) -> AbstractAsyncContextManager[bool]:
        """Hold (node, epoch, seq) against other central instances for the body (the pipeline
        holds the in-process lease already); yields whether it waited for another instance.
        See :mod:`central.lease`.

        Raises:
            SinkUnavailable: another instance still holds it after ``times.wait_s``.
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
