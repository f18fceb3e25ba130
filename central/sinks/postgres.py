"""The PostgreSQL state store: organisations, nodes, devices, status history, dedup marks.

asyncpg runs on trio-asyncio's asyncio loop; each operation is one asyncio coroutine (one
loop crossing), and asyncpg/OS errors that mean "the database is not there now" become
``SinkUnavailable`` (503 + Retry-After to the edge).

Time-series tables (``device_status``, and ``samples`` / ``logs`` when no VictoriaMetrics / Loki
is configured) are TimescaleDB hypertables when the extension can be created, else natively
range-partitioned by ``TIMESCALE_CHUNK_INTERVAL``; central creates the partitions it needs and
drops those older than ``TIMESCALE_RETENTION_DAYS``. Schema changes are versioned migrations
(``central/migrations/postgres``) applied by ``fleet-central migrate``; ``run`` refuses an
outdated schema.

A batch commits in one transaction whose first statement inserts its (node, epoch, seq) mark:
a concurrent instance applying the same batch waits on that row and then finds it taken, so each
batch is applied once however many central instances run.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import trio_asyncio

from edge_node.wire import VALUE_KINDS, Batch

from ..alert_rows import alert_events
from ..errors import RegistryError, SchemaOutdated, SinkUnavailable
from ..migrations import load
from ..router import DAY_MS, Job
from .base import NodeInfo, Pending, hash_key, new_api_key, pending_from

log = logging.getLogger("fleet_central.postgres")
T = TypeVar("T")

TIMESERIES = ("device_status", "samples", "logs")
MIGRATION_LOCK = 0x666C656574  # pg_advisory_lock key: one migrator at a time
_DOWN = (OSError, asyncio.TimeoutError, asyncpg.exceptions.PostgresConnectionError,
         asyncpg.exceptions.InterfaceError, asyncpg.exceptions.OperatorInterventionError,
         asyncpg.exceptions.InsufficientResourcesError, asyncpg.exceptions.CannotConnectNowError)


def migrations() -> list[tuple[int, str, str]]:
    return load("postgres")


LATEST = migrations()[-1][0]


def render(template: str, *, timescale: bool, server_version: int) -> str:
    invoker = server_version >= 150000
    return (template
            .replace("{ts_partition}", "" if timescale else "PARTITION BY RANGE (ts)")
            .replace("{view_options}", "WITH (security_barrier, security_invoker)"
                     if invoker else "WITH (security_barrier)")
            .replace("{reader_views}", ", samples_v, logs_v" if invoker else ""))


def partition_name(table: str, start_s: int) -> str:
    return f"{table}_p{time.strftime('%Y%m%d%H%M', time.gmtime(start_s))}"


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class PostgresStore:
    name = "postgresql"
    uses_asyncio = True

    def __init__(self, url: str, *, pool_size: int = 10, chunk_seconds: int = 86400,
                 retention_days: int = 0, timeout_s: float = 15.0, retry_after_s: int = 5
                 ) -> None:
        self.url = url
        self.pool_size = pool_size
        self.chunk_s = chunk_seconds
        self.retention_days = retention_days
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.pool: asyncpg.Pool | None = None
        self.timescale = False
        self._dict_cache: dict[tuple[str, str], dict[int, dict[str, str]]] = {}
        self._partitions: set[tuple[str, int]] = set()

    # -- plumbing ------------------------------------------------------------------------------

    async def _aio(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run asyncio coroutine function ``fn`` on the trio-asyncio loop, mapping errors."""
        try:
            result: T = await trio_asyncio.aio_as_trio(fn)(*args)
        except _DOWN as exc:
            raise SinkUnavailable(self.name, f"{type(exc).__name__}: {exc}",
                                  self.retry_after_s) from exc
        return result

    async def _with_conn(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async def run() -> T:
            assert self.pool is not None
            async with self.pool.acquire(timeout=self.timeout_s) as conn:
                return await fn(conn)

        return await self._aio(run)

    async def _connect(self) -> asyncpg.Connection:
        return await self._aio(asyncpg.connect, self.url)

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        conn = await self._connect()
        try:
            version = await self._aio(self._schema_version, conn)
            if version < LATEST:
                raise SchemaOutdated(
                    f"the PostgreSQL schema is at version {version}, this build needs {LATEST}: "
                    "run 'fleet-central migrate' (with the same DATABASE_URL)")
            mode = await self._aio(conn.fetchval,
                                   "SELECT value FROM fleetd_meta WHERE key = 'partitioning'")
            self.timescale = mode == "timescaledb"
        finally:
            await self._aio(conn.close)
        async def make_pool() -> asyncpg.Pool:
            return await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size,
                                             command_timeout=self.timeout_s)

        self.pool = await self._aio(make_pool)

    async def close(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            try:
                await self._aio(pool.close)
            except SinkUnavailable:
                pool.terminate()

    async def ready(self) -> bool:
        try:
            return await self._with_conn(lambda c: c.fetchval("SELECT true")) is True
        except SinkUnavailable:
            return False

    @staticmethod
    async def _schema_version(conn: asyncpg.Connection) -> int:
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        if not exists:
            return 0
        return int(await conn.fetchval("SELECT coalesce(max(version), 0) "
                                       "FROM schema_migrations"))

    async def migrate(self) -> list[str]:
        """Apply every missing migration, each in its own transaction; returns their names."""
        conn = await self._connect()

        async def run() -> list[str]:
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
            try:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                    "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());"
                    "CREATE TABLE IF NOT EXISTS fleetd_meta (key text PRIMARY KEY, "
                    "value text NOT NULL)")
                timescale = await self._setup_timescale(conn)
                server = int(await conn.fetchval("SHOW server_version_num"))
                current = await self._schema_version(conn)
                done = []
                for num, name, template in migrations():
                    if num <= current:
                        continue
                    async with conn.transaction():
                        await conn.execute(render(template, timescale=timescale,
                                                  server_version=server))
                        if timescale:
                            await self._hypertables(conn)
                        await conn.execute("INSERT INTO schema_migrations(version, name) "
                                           "VALUES ($1, $2)", num, name)
                    done.append(name)
                return done
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)

        try:
            return await self._aio(run)
        finally:
            await self._aio(conn.close)

    async def _setup_timescale(self, conn: asyncpg.Connection) -> bool:
        mode = await conn.fetchval("SELECT value FROM fleetd_meta WHERE key = 'partitioning'")
        if mode is None:
            mode = "native"
            if await conn.fetchval("SELECT count(*) FROM pg_available_extensions "
                                   "WHERE name = 'timescaledb'"):
                try:
                    await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                    mode = "timescaledb"
                except asyncpg.PostgresError as exc:  # e.g. not in shared_preload_libraries
                    log.warning("TimescaleDB is installed but cannot be enabled (%s); using "
                                "native partitioning", exc)
            await conn.execute("INSERT INTO fleetd_meta(key, value) VALUES ('partitioning', $1)",
                               mode)
        return bool(mode == "timescaledb")

    async def _hypertables(self, conn: asyncpg.Connection) -> None:
        for table in TIMESERIES:
            await conn.execute(
                f"SELECT create_hypertable('{table}', 'ts', if_not_exists => true, "
                f"chunk_time_interval => make_interval(secs => {self.chunk_s}))")
            if self.retention_days:
                await conn.execute(
                    f"SELECT add_retention_policy('{table}', make_interval(days => "
                    f"{self.retention_days}), if_not_exists => true)")

    # -- node registry -------------------------------------------------------------------------

    async def add_node(self, node_id: str, org: str, site: str = "") -> str:
        key = new_api_key()

        async def add(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await conn.execute("INSERT INTO organisations(org) VALUES ($1) "
                                   "ON CONFLICT DO NOTHING", org)
                await conn.execute("INSERT INTO nodes(node_id, org, site, key_hash, created_ms) "
                                   "VALUES ($1, $2, $3, $4, $5)", node_id, org, site,
                                   hash_key(key), time.time_ns() // 1_000_000)

        try:
            await self._once(add)
        except asyncpg.UniqueViolationError:
            raise RegistryError(f"node {node_id!r} already exists (revoke it first, or use "
                                "'nodes rotate')") from None
        return key

    async def rotate_key(self, node_id: str) -> str:
        key = new_api_key()
        status = await self._once(lambda c: c.execute(
            "UPDATE nodes SET key_hash = $1, revoked_ms = NULL WHERE node_id = $2",
            hash_key(key), node_id))
        if status.endswith(" 0"):
            raise RegistryError(f"node {node_id!r} is not registered")
        return key

    async def revoke_node(self, node_id: str) -> None:
        status = await self._once(lambda c: c.execute(
            "UPDATE nodes SET revoked_ms = $1 WHERE node_id = $2 AND revoked_ms IS NULL",
            time.time_ns() // 1_000_000, node_id))
        if status.endswith(" 0"):
            raise RegistryError(f"node {node_id!r} is not registered or already revoked")

    async def list_nodes(self) -> list[dict[str, object]]:
        rows = await self._once(lambda c: c.fetch(
            "SELECT node_id, org, site, created_ms, revoked_ms, last_seen_ms FROM nodes "
            "ORDER BY node_id"))
        return [dict(r) for r in rows]

    async def _once(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``fn`` on the pool, or on a one-off connection (CLI commands)."""
        if self.pool is not None:
            return await self._with_conn(fn)
        conn = await self._connect()
        try:
            return await self._aio(fn, conn)
        finally:
            await self._aio(conn.close)

    async def authenticate(self, key: str) -> NodeInfo | None:
        row = await self._with_conn(lambda c: c.fetchrow(
            "SELECT node_id, org, site, created_ms, revoked_ms FROM nodes WHERE key_hash = $1",
            hash_key(key)))
        if row is None or row["revoked_ms"] is not None:
            return None
        return NodeInfo(node_id=row["node_id"], org=row["org"], created_ms=row["created_ms"],
                        site=row["site"])

    # -- applying batches (the StateStore protocol) --------------------------------------------

    async def begin(self, node: NodeInfo, batch: Batch, sids: list[int]) -> Pending | None:
        nid, epoch, seq = node.node_id, batch.epoch, batch.seq
        cached = self._dict_cache.get((nid, epoch))

        async def run(conn: asyncpg.Connection
                      ) -> tuple[bool, dict[int, dict[str, str]] | None, set[str]]:
            if await conn.fetchval("SELECT 1 FROM applied WHERE node_id = $1 AND epoch = $2 "
                                   "AND seq = $3", nid, epoch, seq):
                return True, None, set()
            known = None
            if cached is None:
                known = {r[0]: json.loads(r[1]) for r in await conn.fetch(
                    "SELECT sid, labels::text FROM series WHERE node_id = $1 AND epoch = $2",
                    nid, epoch)}
            marks = {r[0] for r in await conn.fetch(
                "SELECT sink FROM sink_marks WHERE node_id = $1 AND epoch = $2 AND seq = $3",
                nid, epoch, seq)}
            return False, known, marks

        done, known, marks = await self._with_conn(run)
        if done:
            return None
        if known is not None:
            self._dict_cache[(nid, epoch)] = cached = known
        assert cached is not None
        return pending_from(cached, batch, sids, marks)

    async def mark_sink(self, node: NodeInfo, batch: Batch, sink: str) -> None:
        await self._with_conn(lambda c: c.execute(
            "INSERT INTO sink_marks(node_id, epoch, seq, sink) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT DO NOTHING", node.node_id, batch.epoch, batch.seq, sink))

    def _rows(self, job: Job, keep_kind: bool, cutoff_ms: int
              ) -> tuple[str, list[str], list[tuple[Any, ...]], int]:
        """(table, columns, records, expired) for this batch's time-series rows."""
        if job.kind != "heartbeats" and not keep_kind:
            return "", [], [], 0
        sids = job.sid_column().tolist()
        tss = job.ts.tolist()
        org, nid = job.node.org, job.node.node_id
        keep = [t >= cutoff_ms for t in tss]
        expired = keep.count(False)
        if job.kind == "heartbeats":
            return ("device_status", ["org", "device", "node_id", "ts", "status"],
                    [(org, job.labels[s].get("device", ""), nid, _dt(t), "heartbeat")
                     for s, t, k in zip(sids, tss, keep, strict=True) if k], expired)
        if job.kind in VALUE_KINDS and job.values is not None:  # rollups are series too
            return ("samples", ["org", "node_id", "epoch", "sid", "ts", "value"],
                    [(org, nid, job.epoch, s, _dt(t), v) for s, t, v, k in
                     zip(sids, tss, job.values.tolist(), keep, strict=True) if k], expired)
        if job.kind == "logs" and job.lines is not None:
            return ("logs", ["org", "node_id", "epoch", "sid", "ts", "line"],
                    [(org, nid, job.epoch, s, _dt(t), ln.decode("utf-8", "replace"))
                     for s, t, ln, k in zip(sids, tss, job.lines, keep, strict=True) if k],
                    expired)
        return "", [], [], 0

    async def _ensure_partitions(self, conn: asyncpg.Connection, table: str,
                                 stamps_ms: list[int]) -> None:
        width_ms = self.chunk_s * 1000
        starts = {t // width_ms * self.chunk_s for t in stamps_ms}
        for start in sorted(starts):
            if (table, start) in self._partitions:
                continue
            part = partition_name(table, start)
            # another central instance may have created it a moment ago
            with contextlib.suppress(asyncpg.DuplicateTableError, asyncpg.UniqueViolationError):
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {part} PARTITION OF {table} FOR VALUES FROM "
                    f"('{_dt(start * 1000).isoformat()}') TO "
                    f"('{_dt((start + self.chunk_s) * 1000).isoformat()}');"
                    f"ALTER TABLE {part} ENABLE ROW LEVEL SECURITY")
            self._partitions.add((table, start))

    async def commit(self, job: Job, pending: Pending, keep_kind: bool, low_watermark: int
                     ) -> bool:
        cutoff = job.now_ms - self.retention_days * DAY_MS if self.retention_days else 0
        table, columns, records, expired = self._rows(job, keep_kind, cutoff)
        stamps = job.ts[job.ts >= cutoff].tolist() if records else []
        if expired:
            job.expired[self.name] = expired
        nid, epoch, org = job.node.node_id, job.epoch, job.node.org
        alerts = alert_events(job)[0] if job.kind == "alerts" and keep_kind else []
        # alert labels name the device they are about, not one that reported
        devices = job.device_rows() if job.kind != "alerts" else []
        hb_labels = {}
        if job.kind == "heartbeats":
            for sid in job.sids:
                lbl = job.labels[sid]
                if "device" in lbl:
                    hb_labels[lbl["device"]] = {
                        k: v for k, v in lbl.items()
                        if k not in ("__name__", "org", "node", "site", "device")}

        async def run(conn: asyncpg.Connection) -> bool:
            if records and not self.timescale:
                await self._ensure_partitions(conn, table, stamps)
            async with conn.transaction():
                won = await conn.fetchval(
                    "INSERT INTO applied(node_id, epoch, seq, kind, rows) VALUES "
                    "($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true",
                    nid, epoch, job.seq, job.kind, job.rows)
                if not won:
                    return False
                if pending.new_defs:
                    await conn.execute(
                        "INSERT INTO series(node_id, epoch, sid, org, labels) SELECT $1, $2, "
                        "u.sid, $3, u.labels::jsonb FROM unnest($4::bigint[], $5::text[]) "
                        "AS u(sid, labels) ON CONFLICT DO NOTHING", nid, epoch, org,
                        [sid for sid, _ in pending.new_defs],
                        [json.dumps(lbl, sort_keys=True) for _, lbl in pending.new_defs])
                if records:
                    await conn.copy_records_to_table(table, records=records, columns=columns)
                if alerts:
                    await conn.execute(
                        "INSERT INTO alert_events (org, node_id, fingerprint, status, starts_at, "
                        "ends_at, alertname, severity, device, site, labels, annotations) "
                        "SELECT $1, $2, u.fp, u.st, u.s, u.e, u.an, u.sev, u.dev, u.site, "
                        "u.lb::jsonb, u.ann::jsonb FROM unnest($3::text[], $4::text[], "
                        "$5::timestamptz[], $6::timestamptz[], $7::text[], $8::text[], "
                        "$9::text[], $10::text[], $11::text[], $12::text[]) AS "
                        "u(fp, st, s, e, an, sev, dev, site, lb, ann) ON CONFLICT DO NOTHING",
                        org, nid, [a.fingerprint for a in alerts], [a.status for a in alerts],
                        [_dt(a.starts_ms) for a in alerts],
                        [_dt(a.ends_ms) if a.ends_ms else None for a in alerts],
                        [a.alertname for a in alerts], [a.severity for a in alerts],
                        [a.device for a in alerts], [a.site for a in alerts],
                        [json.dumps(a.labels, sort_keys=True) for a in alerts],
                        [json.dumps(a.annotations, sort_keys=True) for a in alerts])
                if devices:
                    names = [d[0] for d in devices]
                    await conn.execute(
                        "INSERT INTO devices AS d (org, device, name, node_id, site, labels, "
                        "first_seen, last_seen) SELECT $1, u.device, u.device, $2, u.site, "
                        "u.labels::jsonb, u.first_seen, u.last_seen FROM unnest($3::text[], "
                        "$4::text[], $5::text[], $6::timestamptz[], $7::timestamptz[]) AS "
                        "u(device, site, labels, first_seen, last_seen) "
                        "ON CONFLICT (org, device) DO UPDATE SET "
                        "first_seen = least(d.first_seen, excluded.first_seen), "
                        "last_seen = greatest(d.last_seen, excluded.last_seen), "
                        "node_id = excluded.node_id, site = excluded.site, "
                        "labels = d.labels || excluded.labels",
                        org, nid, names, [d[1] for d in devices],
                        [json.dumps(hb_labels.get(d, {})) for d in names],
                        [_dt(d[2]) for d in devices], [_dt(d[3]) for d in devices])
                await conn.execute(
                    "DELETE FROM applied WHERE node_id = $1 AND epoch = $2 AND seq < $3",
                    nid, epoch, low_watermark)
                await conn.execute(
                    "DELETE FROM sink_marks WHERE node_id = $1 AND epoch = $2 AND "
                    "(seq = $3 OR seq < $4)", nid, epoch, job.seq, low_watermark)
                await conn.execute("UPDATE nodes SET last_seen_ms = $1 WHERE node_id = $2",
                                   job.now_ms, nid)
            return True

        applied = await self._with_conn(run)
        if applied:
            cache = self._dict_cache.setdefault((nid, epoch), {})
            for sid, lbl in pending.new_defs:
                cache[sid] = lbl
        return applied

    # -- retention -----------------------------------------------------------------------------

    async def expire(self, now_s: float) -> list[str]:
        """Drop native partitions entirely older than the retention; returns their names."""
        if not self.retention_days or self.timescale:
            return []
        cutoff = now_s - self.retention_days * 86400

        async def run(conn: asyncpg.Connection) -> list[str]:
            dropped = []
            for table in TIMESERIES:
                parts = await conn.fetch(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = $1", table)
                for (name,) in parts:
                    start = calendar.timegm(time.strptime(name.rsplit("_p", 1)[-1],
                                                          "%Y%m%d%H%M"))
                    if start + self.chunk_s <= cutoff:
                        await conn.execute(f"DROP TABLE {name}")
                        self._partitions.discard((table, int(start)))
                        dropped.append(name)
            return dropped

        return await self._with_conn(run)
