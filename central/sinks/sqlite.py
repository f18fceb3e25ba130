"""The embedded SQLite store: everything in one file, the default when no backend is set.

Tables: ``nodes`` (registry, hashed keys), ``series`` (each node's series dictionary, per buffer
epoch), ``applied`` (dedup: which (node, epoch, seq) were applied), ``samples``, ``rollups``
(edge stream-aggregation outputs), ``logs``, ``heartbeats``, ``devices``; views ``samples_v`` /
``rollups_v`` / ``logs_v`` resolve series labels.

A batch is committed in one transaction that also records (node, epoch, seq) in ``applied``: a
retried batch finds its mark and changes nothing, and a crash mid-commit leaves nothing behind.
``sink_marks`` remembers which external sinks took a batch not yet committed (partial success).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import msgspec

from edge_node.runtime import Clock, Runner, ThreadRunner, clock_ms
from edge_node.wire import VALUE_KINDS, Batch

from ..alert_rows import alert_events
from ..audit import AuditEntry, cli_actor
from ..errors import SinkUnavailable
from ..keys import KeyPolicy, KeyRow, decide
from ..lease import LeaseTimes
from ..model import Job, NodeInfo, Pending, pending_from
from . import sqlite_registry as registry
from .base import hash_key

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    node_id TEXT NOT NULL, epoch TEXT NOT NULL, sid INTEGER NOT NULL, labels TEXT NOT NULL,
    PRIMARY KEY (node_id, epoch, sid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS applied (
    node_id TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
    rows INTEGER NOT NULL, applied_ms INTEGER NOT NULL,
    PRIMARY KEY (node_id, epoch, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sink_marks (
    node_id TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL, sink TEXT NOT NULL,
    PRIMARY KEY (node_id, epoch, seq, sink)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS samples (
    node_id TEXT NOT NULL, epoch TEXT NOT NULL, sid INTEGER NOT NULL, ts INTEGER NOT NULL,
    value REAL);
CREATE TABLE IF NOT EXISTS rollups (
    node_id TEXT NOT NULL, epoch TEXT NOT NULL, sid INTEGER NOT NULL, ts INTEGER NOT NULL,
    value REAL);
CREATE TABLE IF NOT EXISTS logs (
    node_id TEXT NOT NULL, epoch TEXT NOT NULL, sid INTEGER NOT NULL, ts INTEGER NOT NULL,
    line TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS heartbeats (
    node_id TEXT NOT NULL, device TEXT NOT NULL, ts INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    node_id TEXT NOT NULL, device TEXT NOT NULL, org TEXT NOT NULL, site TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (node_id, device)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS totals (kind TEXT PRIMARY KEY, rows INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS alert_events (
    node_id TEXT NOT NULL, fingerprint TEXT NOT NULL, status TEXT NOT NULL,
    starts_ms INTEGER NOT NULL, ends_ms INTEGER NOT NULL, alertname TEXT NOT NULL,
    severity TEXT NOT NULL, device TEXT NOT NULL, site TEXT NOT NULL, labels TEXT NOT NULL,
    annotations TEXT NOT NULL, received_ms INTEGER NOT NULL,
    PRIMARY KEY (node_id, fingerprint, status, starts_ms)) WITHOUT ROWID;
CREATE VIEW IF NOT EXISTS samples_v AS
    SELECT s.node_id, json_extract(r.labels, '$.__name__') AS name, r.labels, s.ts, s.value
    FROM samples s JOIN series r USING (node_id, epoch, sid);
CREATE VIEW IF NOT EXISTS rollups_v AS
    SELECT s.node_id, json_extract(r.labels, '$.__name__') AS name, r.labels, s.ts, s.value
    FROM rollups s JOIN series r USING (node_id, epoch, sid);
CREATE VIEW IF NOT EXISTS logs_v AS
    SELECT l.node_id, r.labels, l.ts, l.line
    FROM logs l JOIN series r USING (node_id, epoch, sid);
"""


_json_sorted = msgspec.json.Encoder(order="sorted").encode


class SQLiteStore:
    """Central's embedded store. Blocking work runs on one thread at a time.

    Args:
        data_dir: where ``central.sqlite3`` lives.
        clock: wall-clock seconds (registration, applied, last-seen and received stamps).
        runner: runs the blocking database calls (a ``ThreadRunner(1)``: one connection, one
            thread at a time).
    """

    name = "sqlite"

    def __init__(self, data_dir: str | Path, *, clock: Clock = time.time,
                 runner: Runner | None = None) -> None:
        self.path = Path(data_dir) / "central.sqlite3"
        self.clock = clock
        self.runner: Runner = ThreadRunner(1) if runner is None else runner
        self.conn: sqlite3.Connection | None = None
        # (node, epoch) -> {sid: labels}: definitions never change, so caching is safe
        self._dict_cache: dict[tuple[str, str], dict[int, dict[str, str]]] = {}

    # -- lifecycle (blocking helpers are usable without trio, for the CLI) --------------------

    def open_sync(self) -> sqlite3.Connection:
        if self.conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(SCHEMA)
            registry.migrate(conn)  # nodes, node_keys, audit_log
            names = {r[1] for r in conn.execute("PRAGMA table_info(devices)")}
            if "site" not in names:  # a store made before sites were recorded
                conn.execute("ALTER TABLE devices ADD COLUMN site TEXT NOT NULL DEFAULT ''")
            self.conn = conn
        return self.conn

    async def open(self) -> None:
        await self.runner(self.open_sync)

    async def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            await self.runner(conn.close)

    async def ready(self) -> bool:
        def check() -> bool:
            self.open_sync().execute("SELECT 1").fetchone()
            return True

        try:
            return await self.runner(check)
        except sqlite3.Error:
            return False

    # -- node registry -------------------------------------------------------------------------

    def add_node(self, node_id: str, org: str, site: str = "", *,
                 expires_ms: int | None = None, actor: str = "") -> str:
        """Register ``node_id`` and return its new API key (only the hash is stored)."""
        now = clock_ms(self.clock)
        return registry.add_node(self.open_sync(), node_id, org, site, now, expires_ms,
                                 AuditEntry(now, "node.add", actor or cli_actor(), org,
                                            node_id, detail={"site": site,
                                                             "expires_ms": expires_ms}))

    def rotate_key(self, node_id: str, *, grace_ms: int | None = 0,
                   expires_ms: int | None = None, actor: str = "") -> str:
        """A new key for ``node_id``; the old one works ``grace_ms`` longer (``None``: not
        at all)."""
        now = clock_ms(self.clock)
        until = None if grace_ms is None else now + grace_ms
        return registry.rotate_key(self.open_sync(), node_id, now, until, expires_ms,
                                   AuditEntry(now, "node.rotate", actor or cli_actor(),
                                              node_id=node_id,
                                              detail={"old_key_until_ms": until,
                                                      "expires_ms": expires_ms}))

    def revoke_node(self, node_id: str, *, actor: str = "") -> None:
        now = clock_ms(self.clock)
        registry.revoke_node(self.open_sync(), node_id, now,
                             AuditEntry(now, "node.revoke", actor or cli_actor(),
                                        node_id=node_id))

    def list_nodes(self) -> list[dict[str, object]]:
        return registry.list_nodes(self.open_sync())

    async def lookup_key(self, key_hash: str) -> KeyRow | None:
        return await self.runner(lambda: registry.lookup_key(self.open_sync(), key_hash))

    async def authenticate(self, key: str) -> NodeInfo | None:
        """The node of ``key`` if it is accepted now (the policy-free check of tests and
        tools; the batch endpoint goes through :class:`~central.keys.KeyService`)."""
        return decide(await self.lookup_key(hash_key(key)), clock_ms(self.clock),
                      KeyPolicy()).node

    async def promote_key(self, node_id: str, key_hash: str, now_ms: int, grace_until_ms: int,
                          expires_ms: int | None, entry: AuditEntry) -> bool:
        return await self._run(registry.promote_key, self.open_sync(), node_id, key_hash,
                               now_ms, grace_until_ms, expires_ms, entry)

    async def offer_key(self, node_id: str, key_hash: str, now_ms: int,
                        expires_ms: int | None, entry: AuditEntry) -> None:
        await self._run(registry.offer_key, self.open_sync(), node_id, key_hash, now_ms,
                        expires_ms, entry)

    async def write_audit(self, entries: Sequence[AuditEntry]) -> None:
        await self._run(registry.write_audit, self.open_sync(), entries)

    async def delete_device(self, org: str, device: str) -> dict[str, int]:
        """The right to deletion (:mod:`central.deletion`): the device's rows, counted."""
        self._dict_cache.clear()  # its definitions go too
        return await self._run(registry.delete_device, self.open_sync(), org, device)

    async def read_audit(self, since_ms: int, node_id: str, limit: int) -> list[AuditEntry]:
        return await self.runner(registry.read_audit, self.open_sync(), since_ms, node_id,
                                 limit)

    # -- applying batches (the StateStore protocol) --------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return await self.runner(fn, *args)
        except sqlite3.OperationalError as exc:  # locked, disk full, I/O error
            raise SinkUnavailable("sqlite", str(exc)) from exc

    async def begin(self, node: NodeInfo, batch: Batch, sids: list[int]) -> Pending | None:
        return await self._run(self._begin, node, batch, sids)

    def _begin(self, node: NodeInfo, batch: Batch, sids: list[int]) -> Pending | None:
        conn = self.open_sync()
        key = (node.node_id, batch.epoch, batch.seq)
        if conn.execute("SELECT 1 FROM applied WHERE node_id=? AND epoch=? AND seq=?",
                        key).fetchone():
            return None
        return pending_from(self._dictionary(conn, node.node_id, batch.epoch), batch, sids,
                            {r[0] for r in conn.execute(
                                "SELECT sink FROM sink_marks WHERE node_id=? AND epoch=? "
                                "AND seq=?", key)})

    @asynccontextmanager
    async def lease(self, node: NodeInfo, batch: Batch, times: LeaseTimes
                    ) -> AsyncIterator[bool]:
        """Nothing to add: the embedded store serves one central process, whose pipeline holds
        the in-process lease (:class:`~central.lease.LocalLeases`)."""
        yield False

    async def mark_sink(self, node: NodeInfo, batch: Batch, sink: str) -> None:
        def mark() -> None:
            self.open_sync().execute(
                "INSERT OR IGNORE INTO sink_marks(node_id, epoch, seq, sink) VALUES (?,?,?,?)",
                (node.node_id, batch.epoch, batch.seq, sink))

        await self._run(mark)

    async def commit(self, job: Job, pending: Pending, keep_kind: bool, low_watermark: int
                     ) -> bool:
        return await self._run(self._commit, job, pending, keep_kind, low_watermark)

    def _dictionary(self, conn: sqlite3.Connection, node: str, epoch: str
                    ) -> dict[int, dict[str, str]]:
        key = (node, epoch)
        d = self._dict_cache.get(key)
        if d is None:
            d = {sid: json.loads(lbl) for sid, lbl in conn.execute(
                "SELECT sid, labels FROM series WHERE node_id=? AND epoch=?", key)}
            self._dict_cache[key] = d
        return d

    def _commit(self, job: Job, pending: Pending, keep_kind: bool, low_watermark: int) -> bool:
        conn = self.open_sync()
        nid, epoch = job.node.node_id, job.epoch
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(
                "INSERT OR IGNORE INTO applied(node_id, epoch, seq, kind, rows, applied_ms) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (nid, epoch, job.seq, job.kind, job.rows, clock_ms(self.clock)))
            if cur.rowcount == 0:  # another writer applied it meanwhile
                conn.execute("ROLLBACK")
                return False
            if pending.new_defs:
                conn.executemany(
                    "INSERT OR IGNORE INTO series(node_id, epoch, sid, labels) VALUES (?,?,?,?)",
                    [(nid, epoch, sid, _json_sorted(lbl).decode())
                     for sid, lbl in pending.new_defs])
            self._write_rows(conn, job, keep_kind)
            # the edge never resends a seq below its low watermark: forget those marks
            conn.execute("DELETE FROM applied WHERE node_id=? AND epoch=? AND seq<?",
                         (nid, epoch, low_watermark))
            conn.execute("DELETE FROM sink_marks WHERE node_id=? AND epoch=? AND "
                         "(seq=? OR seq<?)", (nid, epoch, job.seq, low_watermark))
            conn.execute("INSERT INTO totals(kind, rows) VALUES (?, ?) ON CONFLICT(kind) "
                         "DO UPDATE SET rows=rows+excluded.rows", (job.kind, job.rows))
            conn.execute("UPDATE nodes SET last_seen_ms=? WHERE node_id=?",
                         (clock_ms(self.clock), nid))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        cache = self._dict_cache.setdefault((nid, epoch), {})
        for sid, lbl in pending.new_defs:
            cache[sid] = lbl
        return True

    def _write_rows(self, conn: sqlite3.Connection, job: Job, keep_kind: bool) -> None:
        nid = job.node.node_id
        sids = job.sid_column().tolist() if keep_kind or job.kind == "heartbeats" else []
        tss = job.ts.tolist()
        n = len(sids)
        if job.kind in VALUE_KINDS and keep_kind and job.values is not None:
            table = "samples" if job.kind == "metrics" else "rollups"
            conn.executemany(
                f"INSERT INTO {table}(node_id, epoch, sid, ts, value) VALUES (?, ?, ?, ?, ?)",
                zip([nid] * n, [job.epoch] * n, sids, tss, job.values.tolist(), strict=True))
        elif job.kind == "logs" and keep_kind and job.lines is not None:
            conn.executemany(
                "INSERT INTO logs(node_id, epoch, sid, ts, line) VALUES (?, ?, ?, ?, ?)",
                zip([nid] * n, [job.epoch] * n, sids, tss,
                    [ln.decode("utf-8", "replace") for ln in job.lines], strict=True))
        elif job.kind == "alerts" and keep_kind and job.lines is not None:
            events, _ = alert_events(job)
            received = clock_ms(self.clock)
            conn.executemany(
                "INSERT OR IGNORE INTO alert_events(node_id, fingerprint, status, starts_ms, "
                "ends_ms, alertname, severity, device, site, labels, annotations, received_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(nid, e.fingerprint, e.status, e.starts_ms, e.ends_ms, e.alertname,
                  e.severity, e.device, e.site, json.dumps(e.labels, sort_keys=True),
                  json.dumps(e.annotations, sort_keys=True), received) for e in events])
            return  # alert labels name the device they are about, not one that reported
        elif job.kind == "heartbeats":
            conn.executemany(
                "INSERT INTO heartbeats(node_id, device, ts) VALUES (?, ?, ?)",
                [(nid, job.labels[s].get("device", ""), t) for s, t in zip(sids, tss,
                                                                            strict=True)])
        # device registry: first/last seen from any row carrying a device label
        devices = job.device_rows()
        if devices:
            conn.executemany(
                "INSERT INTO devices(node_id, device, org, site, first_seen_ms, last_seen_ms) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(node_id, device) DO UPDATE SET "
                "first_seen_ms=min(first_seen_ms, excluded.first_seen_ms), "
                "last_seen_ms=max(last_seen_ms, excluded.last_seen_ms), site=excluded.site",
                [(nid, d, job.node.org, site, lo, hi) for d, site, lo, hi in devices])

    # -- reading (tests, demo, status) ---------------------------------------------------------

    def counts(self) -> dict[str, int]:
        conn = self.open_sync()
        return {
            "metrics": conn.execute("SELECT count(*) FROM samples").fetchone()[0],
            "logs": conn.execute("SELECT count(*) FROM logs").fetchone()[0],
            "heartbeats": conn.execute("SELECT count(*) FROM heartbeats").fetchone()[0],
        }
