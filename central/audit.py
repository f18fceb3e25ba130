"""The audit log: every admin action, automatic key rotation, migration and deletion, and every
authentication failure, in the append-only ``audit_log`` of the state store and in the log
(logger ``fleet_central.audit``, one JSON object per line).

Admin actions and rotations are written in the same transaction as the change they record (the
store's methods take the :class:`AuditEntry`), so neither exists without the other.
Authentication failures are counted in memory per (source address, node id tried, reason) and
written every ``flush_every_s`` as one row each with the count: a client retrying a bad key
every second, or an attacker trying thousands, adds a row per flush and combination, bounded by
``max_pending`` combinations (beyond that one ``auth.failed.overflow`` row counts the rest).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import trio

from edge_node.durations import format_rfc3339_ms
from edge_node.runtime import Clock, clock_ms

log = logging.getLogger("fleet_central.audit")

ACTIONS = ("node.add", "node.revoke", "node.rotate", "key.offered", "key.rotated",
           "migrate", "device.delete", "auth.failed", "auth.failed.overflow")


@dataclass(frozen=True)
class AuditEntry:
    at_ms: int
    action: str
    actor: str
    org: str = ""
    node_id: str = ""
    source: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["at"] = format_rfc3339_ms(self.at_ms)
        return out


def cli_actor() -> str:
    """Who runs a CLI command: ``cli:user@host``."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"cli:{user}@{socket.gethostname()}"


def log_entry(e: AuditEntry) -> None:
    log.info("%s", json.dumps(e.to_json(), sort_keys=True))


class AuditStore(Protocol):
    async def write_audit(self, entries: Sequence[AuditEntry]) -> None: ...

    async def read_audit(self, since_ms: int, node_id: str, limit: int
                         ) -> list[AuditEntry]: ...


class Audit:
    """Authentication failures, coalesced and written in the background (:meth:`run`)."""

    def __init__(self, store: AuditStore | None, clock: Clock = time.time, *,
                 flush_every_s: float = 2.0, max_pending: int = 1000) -> None:
        self.store = store
        self.clock = clock
        self.flush_every_s = flush_every_s
        self.max_pending = max_pending
        self._failures: dict[tuple[str, str, str, bool], list[int]] = {}  # key -> [n, first]
        self._overflow = 0
        self._unwritten: list[AuditEntry] = []  # a failed write's rows, tried again next time
        self.failures_total = 0

    def auth_failed(self, source: str, node_id: str, reason: str, *, claimed: bool) -> None:
        """A refused key: ``node_id`` is the node whose key it was, or (``claimed``) the one
        the request said it came from (the ``X-Fleet-Node`` header; unverified)."""
        self.failures_total += 1
        k = (source, node_id[:128], reason, claimed)
        got = self._failures.get(k)
        if got is not None:
            got[0] += 1
        elif len(self._failures) < self.max_pending:
            self._failures[k] = [1, clock_ms(self.clock)]
        else:
            self._overflow += 1

    def pending(self) -> list[AuditEntry]:
        """The coalesced failures as entries, and forget them."""
        out = [AuditEntry(at_ms=first, action="auth.failed", actor="client", node_id=node,
                          source=source, detail={"reason": reason, "count": n,
                                                 "node_id_claimed": claimed})
               for (source, node, reason, claimed), (n, first) in self._failures.items()]
        if self._overflow:
            out.append(AuditEntry(at_ms=clock_ms(self.clock), action="auth.failed.overflow",
                                  actor="client", detail={"count": self._overflow}))
        self._failures, self._overflow = {}, 0
        return out

    async def flush(self) -> None:
        fresh = self.pending()
        for e in fresh:
            log_entry(e)
        entries, self._unwritten = self._unwritten + fresh, []
        if entries and self.store is not None:
            try:
                await self.store.write_audit(entries)
            except BaseException:
                self._unwritten = entries[-10 * self.max_pending:]
                raise

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        try:
            while True:
                await trio.sleep(self.flush_every_s)
                try:
                    await self.flush()
                except Exception as exc:  # the store is down: the rows wait for the next go
                    log.warning("writing the audit log failed (%s); retrying", exc)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self.flush()
                except Exception as exc:
                    log.warning("writing the audit log at shutdown failed: %s", exc)
