"""Applying one batch: external sinks first, then the state store's commit with the dedup mark.

The order is what makes a retry safe::

    fast dedup (Valkey; a hit is trusted, a miss proves nothing)
    -> the batch's lease (central.lease): another attempt of the same batch, here or on another
       instance, is waited for; the whole apply below is bounded by the lease's hold time
    -> state store: applied before?  -> yes: duplicate, nothing written
    -> every sink this batch routes to that has not taken it yet, concurrently;
       each success is remembered (per-sink mark), so a retry after a partial failure
       writes only to the sinks that failed
    -> state store commit: definitions, devices, heartbeats, unrouted rows, applied mark
       (one transaction; if another instance won the race it rolls back: duplicate)
    -> Valkey fast-path mark (best effort)

Any sink failing means the batch is not acknowledged (503, or 422 when a backend refused the data
for good), and nothing is marked applied. Each sink's write is idempotent on its own too
(VictoriaMetrics dedup, ClickHouse ReplacingMergeTree on the batch identity, identical Loki
entries collapse, max-merges in Valkey), which covers what the lease cannot: a crash between a
sink's write and its mark, and a timed-out write the backend still carries out.

The HTTP handler shields :meth:`Pipeline.apply` from the client going away: an apply, once
started, runs to its end (or its bound), so an edge that drops the connection and retries finds
the first attempt's outcome instead of racing a half-cancelled one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import trio

from edge_node.metrics import Registry
from edge_node.runtime import Clock, clock_ms
from edge_node.wire import Batch, Columns

from .errors import SinkRejected, SinkUnavailable
from .lease import LeaseTimes, LocalLeases
from .model import NodeInfo
from .router import LabelCache, group, make_job
from .sinks.base import Sink, StateStore

READY_TIMEOUT_S = 2.0  # /readyz answers within this, whatever a backend does

log = logging.getLogger("fleet_central.pipeline")


class FastDedup(Protocol):
    """What the Valkey sink offers besides writing: a cache of applied batch identities."""

    async def is_applied(self, node: NodeInfo, batch: Batch) -> bool: ...

    async def mark_applied(self, node: NodeInfo, batch: Batch) -> None: ...


class Pipeline:
    """Routes batches to ``sinks`` and commits them to ``state``.

    Args:
        state: the state store (registry, dedup marks, unrouted rows).
        sinks: the external backends, each taking the kinds it names.
        registry: where the pipeline's metrics go (a new ``fleet_central`` one by default).
        fast: the Valkey fast-dedup cache, when Valkey is configured.
        clock: wall-clock seconds; stamps each job (``Job.now_ms``: retention cutoffs,
            PostgreSQL's last-seen) and is the time retention maintenance runs at.
        sink_timeout_s: one sink's write at most (then 503).
        lease_times: the batch lease's bounds (:class:`~central.lease.LeaseTimes`); by default
            an apply holds a batch for at most twice ``sink_timeout_s``.
    """

    def __init__(self, state: StateStore, sinks: Sequence[Sink] = (), *,
                 registry: Registry | None = None, fast: FastDedup | None = None,
                 clock: Clock = time.time, sink_timeout_s: float = 15.0,
                 lease_times: LeaseTimes | None = None) -> None:
        self.state = state
        self.sink_timeout_s = sink_timeout_s
        self.lease_times = lease_times or LeaseTimes.for_sink_timeout(sink_timeout_s)
        self.leases = LocalLeases()
        self.clock = clock
        self.sinks = list(sinks)
        self.fast = fast
        self.registry = registry = registry or Registry("fleet_central")
        self.labels = LabelCache()
        # asyncpg and redis-py run on an asyncio loop inside Trio (trio-asyncio)
        self.needs_asyncio = any(getattr(c, "uses_asyncio", False)
                                 for c in (state, *self.sinks))
        # kinds whose rows an external sink stores; the state store keeps the others
        self.external_kinds = frozenset(k for s in self.sinks if s.stores_rows for k in s.kinds)
        self.m_latency = registry.histogram(
            "sink_write_seconds", "Time to write one batch to a backend.", ("sink",))
        self.m_failures = registry.counter(
            "sink_failures_total", "Failed backend writes, by sink and reason.",
            ("sink", "reason"))
        self.m_rows = registry.counter(
            "sink_rows_total", "Rows written to each backend.", ("sink", "kind"))
        self.m_expired = registry.counter(
            "expired_rows_total", "Rows older than a backend's retention, not sent to it.",
            ("sink",))
        self.m_unrepresentable = registry.counter(
            "unrepresentable_rows_total", "Rows a backend cannot represent (NaN/±Inf for "
            "VictoriaMetrics' import), not sent to it.", ("sink",))
        self.m_refused = registry.counter(
            "refused_rows_total", "Rows a backend does not take, not stored there (the batch "
            "is applied): Loki's too_old (past FLEET_CENTRAL_LOKI_MAX_AGE_S), too_new (past "
            "FLEET_CENTRAL_LOKI_MAX_AHEAD_S: a device clock running fast) and invalid (refused "
            "by Loki itself).", ("sink", "reason"))
        self.m_skipped = registry.counter(
            "sink_skipped_total", "Sink writes skipped on a retry because the sink already "
            "took the batch.", ("sink",))
        self.m_fast = registry.counter(
            "fast_dedup_hits_total", "Retried batches recognised by the Valkey fast path.")
        self.m_commit = registry.histogram(
            "state_commit_seconds", "Time to commit a batch to the state store.")
        self.m_lease_waits = registry.counter(
            "batch_lease_waits_total", "Attempts of a batch that waited for another attempt of "
            "the same batch (an edge retry racing the first), by where that attempt ran.",
            ("holder",))
        self.m_over_time = registry.counter(
            "batch_apply_timeouts_total", "Applies stopped at the lease's hold time "
            "(answered 503; the edge retries).")
        self.m_check = registry.histogram(
            "backend_check_seconds", "Time for a backend to answer the readiness query "
            "(a timeout counts as READY_TIMEOUT_S).", ("backend",))

    async def open(self) -> None:
        await self.state.open()
        try:
            for s in self.sinks:
                await s.open()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            for s in reversed(self.sinks):
                try:
                    await s.close()
                except Exception:
                    log.exception("closing sink %s", s.name)
            await self.state.close()

    async def maintain(self, now_s: float) -> None:
        """Retention work of every backend that does its own (partition drops)."""
        components: list[StateStore | Sink] = [self.state, *self.sinks]
        forget = getattr(self.state, "forget_stale_leases", None)
        if forget is not None:
            try:
                await forget()
            except SinkUnavailable as exc:
                log.warning("stale batch leases not dropped: %s", exc)
        for c in components:
            expire = getattr(c, "expire", None)
            if expire is None:
                continue
            try:
                dropped = await expire(now_s)
            except (SinkUnavailable, SinkRejected) as exc:
                log.warning("retention on %s skipped: %s", c.name, exc)
                continue
            if dropped:
                log.info("%s: dropped %d expired partitions: %s", c.name, len(dropped),
                         ", ".join(dropped))

    async def ready(self) -> dict[str, bool]:
        """Every backend's readiness, checked at once; a check that has not answered within
        ``READY_TIMEOUT_S`` counts as not ready (a dead server must not hang the probe for its
        full connect/socket timeout)."""
        checks: list[Any] = [self.state, *self.sinks]
        out = dict.fromkeys((c.name for c in checks), False)

        async def check(c: Any) -> None:
            t0 = time.perf_counter()
            with trio.move_on_after(READY_TIMEOUT_S):
                out[c.name] = bool(await c.ready())
            self.m_check.observe(time.perf_counter() - t0, c.name)

        async with trio.open_nursery() as nursery:
            for c in checks:
                nursery.start_soon(check, c)
        return out

    async def apply(self, node: NodeInfo, batch: Batch, cols: Columns) -> bool:
        """Apply ``batch``; ``False`` when it was applied before (a retry).

        Raises:
            MissingSeries: 409, the edge resends the definitions.
            SinkUnavailable: 503 with Retry-After.
            SinkRejected: 422, the edge dead-letters the batch.
        """
        if self.fast is not None:
            try:
                if await self.fast.is_applied(node, batch):
                    self.m_fast.inc()
                    return False
            except SinkUnavailable:
                pass  # the authoritative check below still runs; the write will report it
        times = self.lease_times
        applied: bool | None = None
        async with self.leases.hold((node.node_id, batch.epoch, batch.seq), times.wait_s) as w:
            if w:
                self.m_lease_waits.inc(1, "this instance")
            async with self.state.lease(node, batch, times) as w:
                if w:
                    self.m_lease_waits.inc(1, "another instance")
                with trio.move_on_after(times.hold_s):
                    applied = await self._apply(node, batch, cols)
        if applied is None:
            self.m_over_time.inc()
            raise SinkUnavailable("central", f"applying batch {batch.epoch}/{batch.seq} took "
                                  f"longer than {times.hold_s:g} s; not acknowledged, retry")
        return applied

    async def _apply(self, node: NodeInfo, batch: Batch, cols: Columns) -> bool:
        """The apply proper, under the batch's lease."""
        grouping = group(cols)
        pending = await self.state.begin(node, batch, grouping.sids.tolist())
        if pending is None:
            return False
        job = make_job(node, batch, cols, pending.labels, clock_ms(self.clock),
                       self.labels, grouping)
        todo = [s for s in self.sinks if batch.kind in s.kinds]
        errors: list[SinkUnavailable | SinkRejected] = []

        async def run(sink: Sink) -> None:
            if sink.name in pending.done_sinks:
                self.m_skipped.inc(1, sink.name)
                return
            t0 = time.perf_counter()
            try:
                with trio.move_on_after(self.sink_timeout_s) as bound:
                    await sink.write(job)
                if bound.cancelled_caught:
                    raise SinkUnavailable(sink.name, f"no answer within {self.sink_timeout_s:g} "
                                          "s (FLEET_CENTRAL_SINK_TIMEOUT_S)")
                await self.state.mark_sink(node, batch, sink.name)
            except (SinkUnavailable, SinkRejected) as exc:
                self.m_failures.inc(1, sink.name, type(exc).__name__)
                errors.append(exc)
                return
            self.m_latency.observe(time.perf_counter() - t0, sink.name)
            self.m_rows.inc(job.rows, sink.name, batch.kind)

        async with trio.open_nursery() as nursery:
            for sink in todo:
                nursery.start_soon(run, sink)
        if errors:
            rejected = [e for e in errors if isinstance(e, SinkRejected)]
            raise rejected[0] if rejected else errors[0]
        t0 = time.perf_counter()
        applied = await self.state.commit(job, pending, batch.kind not in self.external_kinds,
                                          batch.low_watermark)
        self.m_commit.observe(time.perf_counter() - t0)
        if applied:  # counted once, for the attempt that went through
            for name, n in job.expired.items():
                self.m_expired.inc(n, name)
            for name, n in job.unrepresentable.items():
                self.m_unrepresentable.inc(n, name)
            for (name, reason), n in job.refused.items():
                self.m_refused.inc(n, name, reason)
        if applied and self.fast is not None:
            try:
                await self.fast.mark_applied(node, batch)
            except SinkUnavailable as exc:
                log.warning("could not record batch %s/%s in the fast dedup cache: %s",
                            node.node_id, batch.seq, exc)
        return applied
