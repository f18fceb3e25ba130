"""The :class:`PostgresStore`: the state store's lifecycle and its one way onto asyncpg.

asyncpg runs on trio-asyncio's asyncio loop; each operation is one asyncio coroutine (one
loop crossing), and asyncpg/OS errors that mean "the database is not there now" become
``SinkUnavailable`` (503 + Retry-After to the edge). The SQL lives in the sibling modules; this
class owns the pool, the caches (series dictionaries, known partitions) and the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
import trio
import trio_asyncio

from edge_node.runtime import Clock, clock_ms
from edge_node.wire import Batch

from ...audit import AuditEntry, cli_actor
from ...errors import SchemaOutdated, SinkUnavailable
from ...keys import KeyPolicy, KeyRow, decide
from ...lease import LeaseTimes, claim_polling, holder_token
from ...model import DAY_MS, Job, NodeInfo, Pending, pending_from
from ..base import hash_key
from . import leases, registry
from .batches import insert_mark, lookup, prepare, write_commit
from .partitions import drop_expired, ensure_partitions
from .schema import LATEST, apply_migrations, partitioning, schema_version

T = TypeVar("T")

log = logging.getLogger("fleet_central.postgres")

_DOWN = (OSError, asyncio.TimeoutError, asyncpg.exceptions.PostgresConnectionError,
         asyncpg.exceptions.InterfaceError, asyncpg.exceptions.OperatorInterventionError,
         asyncpg.exceptions.InsufficientResourcesError, asyncpg.exceptions.CannotConnectNowError)


class PostgresStore:
    """Central's PostgreSQL state store (the :class:`~central.sinks.base.StateStore` protocol).

    Args:
        url: the ``DATABASE_URL``.
        pool_size: connections in the pool at most.
        chunk_seconds: width of a native partition (or TimescaleDB chunk).
        retention_days: time-series rows older than this are not kept; 0 keeps everything.
        timeout_s: to acquire a connection, and per command.
        retry_after_s: what a 503 tells the edge while the database is down.
        clock: wall-clock seconds (node registration and revocation stamps).
    """

    name = "postgresql"
    uses_asyncio = True

    def __init__(self, url: str, *, pool_size: int = 10, chunk_seconds: int = 86400,
                 retention_days: int = 0, timeout_s: float = 15.0, retry_after_s: int = 5,
                 clock: Clock = time.time) -> None:
        self.url = url
        self.pool_size = pool_size
        self.chunk_s = chunk_seconds
        self.retention_days = retention_days
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.clock = clock
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

    async def _once(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``fn`` on the pool, or on a one-off connection (CLI commands)."""
        if self.pool is not None:
            return await self._with_conn(fn)
        conn = await self._connect()
        try:
            return await self._aio(fn, conn)
        finally:
            await self._aio(conn.close)

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        conn = await self._connect()
        try:
            version = await self._aio(schema_version, conn)
            if version < LATEST:
                raise SchemaOutdated(
                    f"the PostgreSQL schema is at version {version}, this build needs {LATEST}: "
                    "run 'fleet-central migrate' (with the same DATABASE_URL)")
            self.timescale = await self._aio(partitioning, conn) == "timescaledb"
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

    async def migrate(self) -> list[str]:
        """Apply every missing migration, each in its own transaction; returns their names."""
        conn = await self._connect()
        try:
            done: list[str] = await self._aio(apply_migrations, conn, self.chunk_s,
                                              self.retention_days)
            if done:
                entry = AuditEntry(clock_ms(self.clock), "migrate", cli_actor(),
                                   detail={"applied": done, "backend": "postgresql"})
                await self._aio(registry._audit, conn, [entry])
            return done
        finally:
            await self._aio(conn.close)

    # -- node registry -------------------------------------------------------------------------

    async def add_node(self, node_id: str, org: str, site: str = "", *,
                       expires_ms: int | None = None, actor: str = "") -> str:
        now = clock_ms(self.clock)
        return await registry.insert_node(
            self._once, node_id, org, site, now, expires_ms,
            AuditEntry(now, "node.add", actor or cli_actor(), org, node_id,
                       detail={"site": site, "expires_ms": expires_ms}))

    async def rotate_key(self, node_id: str, *, grace_ms: int | None = 0,
                         expires_ms: int | None = None, actor: str = "") -> str:
        now = clock_ms(self.clock)
        until = None if grace_ms is None else now + grace_ms
        return await registry.rotate_key(
            self._once, node_id, now, until, expires_ms,
            AuditEntry(now, "node.rotate", actor or cli_actor(), node_id=node_id,
                       detail={"old_key_until_ms": until, "expires_ms": expires_ms}))

    async def revoke_node(self, node_id: str, *, actor: str = "") -> None:
        now = clock_ms(self.clock)
        await registry.mark_revoked(self._once, node_id, now,
                                    AuditEntry(now, "node.revoke", actor or cli_actor(),
                                               node_id=node_id))

    async def list_nodes(self) -> list[dict[str, object]]:
        return await registry.select_nodes(self._once)

    async def lookup_key(self, key_hash: str) -> KeyRow | None:
        return await registry.select_key(self._with_conn, key_hash)

    async def authenticate(self, key: str) -> NodeInfo | None:
        """The node of ``key`` if it is accepted now (the policy-free check of tests and
        tools; the batch endpoint goes through :class:`~central.keys.KeyService`)."""
        return decide(await self.lookup_key(hash_key(key)), clock_ms(self.clock),
                      KeyPolicy()).node

    async def promote_key(self, node_id: str, key_hash: str, now_ms: int, grace_until_ms: int,
                          expires_ms: int | None, entry: AuditEntry) -> bool:
        return await registry.promote(self._with_conn, node_id, key_hash, now_ms,
                                      grace_until_ms, expires_ms, entry)

    async def offer_key(self, node_id: str, key_hash: str, now_ms: int,
                        expires_ms: int | None, entry: AuditEntry) -> None:
        await registry.offer(self._with_conn, node_id, key_hash, now_ms, expires_ms, entry)

    async def write_audit(self, entries: Sequence[AuditEntry]) -> None:
        await registry.write_audit(self._once, entries)

    async def delete_device(self, org: str, device: str) -> dict[str, int]:
        """The right to deletion (:mod:`central.deletion`): the device's rows, counted."""
        self._dict_cache.clear()  # its definitions go too
        return await registry.delete_device(self._once, org, device)

    async def read_audit(self, since_ms: int, node_id: str, limit: int) -> list[AuditEntry]:
        return await registry.read_audit(self._once, since_ms, node_id, limit)

    # -- applying batches (the StateStore protocol) --------------------------------------------

    async def begin(self, node: NodeInfo, batch: Batch, sids: list[int]) -> Pending | None:
        nid, epoch, seq = node.node_id, batch.epoch, batch.seq
        cached = self._dict_cache.get((nid, epoch))
        done, known, marks = await self._with_conn(
            lambda c: lookup(c, nid, epoch, seq, cached is None))
        if done:
            return None
        if known is not None:
            self._dict_cache[(nid, epoch)] = cached = known
        assert cached is not None
        return pending_from(cached, batch, sids, marks)

    async def mark_sink(self, node: NodeInfo, batch: Batch, sink: str) -> None:
        await self._with_conn(lambda c: insert_mark(
            c, node.node_id, batch.epoch, batch.seq, sink))

    async def commit(self, job: Job, pending: Pending, keep_kind: bool, low_watermark: int
                     ) -> bool:
        cutoff = job.now_ms - self.retention_days * DAY_MS if self.retention_days else 0
        todo, expired = prepare(job, pending, keep_kind, low_watermark, cutoff)
        if expired:
            job.expired[self.name] = expired

        async def run(conn: asyncpg.Connection) -> bool:
            if todo.records and not self.timescale:
                await ensure_partitions(conn, todo.table, todo.stamps, self.chunk_s,
                                        self._partitions)
            return await write_commit(conn, todo)

        applied = await self._with_conn(run)
        if applied:
            cache = self._dict_cache.setdefault((job.node.node_id, job.epoch), {})
            for sid, lbl in pending.new_defs:
                cache[sid] = lbl
        return applied

    @asynccontextmanager
    async def lease(self, node: NodeInfo, batch: Batch, times: LeaseTimes
                    ) -> AsyncIterator[bool]:
        """Hold (node, epoch, seq)'s row in ``batch_leases`` for the body, renewed every
        ``times.renew_every_s`` (another instance applying the same batch waits); see
        :mod:`central.lease`.

        Raises:
            SinkUnavailable: another attempt holds the lease past ``times.wait_s``, or this
                one lost it (not renewed within ``times.ttl_s``: the body was cancelled).
        """
        nid, epoch, seq = node.node_id, batch.epoch, batch.seq
        holder = holder_token()
        sent = 0.0  # when the claim (later: the last renewal that went through) was sent

        async def claim() -> bool:
            nonlocal sent
            sent = trio.current_time()
            return await self._with_conn(lambda c: leases.claim(c, nid, epoch, seq, holder,
                                                                times.ttl_s))

        waited = await claim_polling(claim, (nid, epoch, seq), times.wait_s,
                                     self.retry_after_s)
        lost: str | None = None
        failed: BaseException | None = None
        # the lease runs out ttl after the database ran the last renewal, which was after we
        # sent it: stopping one renewal period before sent + ttl, the holder has always given
        # up before anyone can take its lease over
        margin = times.renew_every_s

        async def keep(scope: trio.CancelScope) -> None:
            nonlocal lost, sent
            while True:
                await trio.sleep(times.renew_every_s)
                t = trio.current_time()
                ok: bool | None = None
                # a renewal that cannot come in time is given up (and so is the lease); a
                # database error may pass before the deadline, else the next round says
                with trio.move_on_after(max(0.0, sent + times.ttl_s - margin - t)), \
                        contextlib.suppress(SinkUnavailable):
                    ok = await self._with_conn(lambda c: leases.renew(
                        c, nid, epoch, seq, holder, times.ttl_s))
                if ok:
                    sent = t
                    continue
                if ok is False:
                    lost = "taken over by another attempt"
                elif trio.current_time() >= sent + times.ttl_s - margin:
                    lost = f"not renewed within {times.ttl_s:g} s"
                else:
                    continue
                scope.cancel()
                return

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep, nursery.cancel_scope)
                try:
                    yield waited
                except BaseException as exc:
                    # the apply's own error (SinkUnavailable, MissingSeries, ...) reaches the
                    # caller as itself, not wrapped in this nursery's ExceptionGroup
                    nursery.cancel_scope.cancel()
                    failed = exc
                else:
                    nursery.cancel_scope.cancel()
        finally:
            # released even when the apply was cancelled; a release that fails leaves a lease
            # that expires by itself
            with trio.CancelScope(shield=True), trio.move_on_after(times.ttl_s):
                try:
                    await self._with_conn(lambda c: leases.release(c, nid, epoch, seq, holder))
                except SinkUnavailable as exc:
                    log.warning("lease of batch %s/%s of %s not released (it expires by "
                                "itself): %s", epoch, seq, nid, exc)
        if lost is not None:  # the body was cancelled for it: that Cancelled is ours
            raise SinkUnavailable(self.name, f"lost the lease of batch {epoch}/{seq} ({lost}); "
                                  "stopped, not acknowledged", self.retry_after_s) from None
        if failed is not None:
            raise failed

    # -- retention -----------------------------------------------------------------------------

    async def expire(self, now_s: float) -> list[str]:
        """Drop native partitions entirely older than the retention; returns their names."""
        if not self.retention_days or self.timescale:
            return []
        cutoff = now_s - self.retention_days * 86400
        return await self._with_conn(
            lambda c: drop_expired(c, self.chunk_s, cutoff, self._partitions))

    async def forget_stale_leases(self) -> int:
        """Drop leases whose holders died (a live lease is never older than its expiry)."""
        return await self._with_conn(leases.drop_expired)
