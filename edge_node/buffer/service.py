"""The Trio service that owns the buffer: group commit, rolling, merging, disk budget, and the
narrow API the rest of the node uses (nothing outside this package touches the store).

One task owns the write path. Ingest handlers put a ticket on a bounded channel and wait; the
writer takes every ticket that is waiting (plus those arriving within ``commit_window_ms``),
commits them in one transaction (one fsync) on the store's thread, then wakes them all. A full
channel makes handlers wait, which is how back-pressure reaches the devices.

The forwarder's side: :meth:`BufferService.claim` the next segment (highest-priority kind,
oldest first; an attempt is counted in the same transaction), :meth:`~BufferService.ack`,
:meth:`~BufferService.retry` or :meth:`~BufferService.dead_letter` it, and
:meth:`~BufferService.release` it when done. :meth:`~BufferService.definitions_for` gives the
series definitions central has not confirmed that a segment uses.

A full disk is a state (:mod:`.disk`): while the :class:`~.disk.DiskGuard` refuses, writes raise
:class:`~edge_node.errors.DiskFull` (503) at once; the roll, the budget and the forwarder's
bookkeeping go on (a store call that hits SQLITE_FULL frees the disk reserve and is tried once
more), merges wait, and the guard accepts again once forwarding has freed space.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio

from ..config import BufferConfig
from ..errors import BufferFailure, DiskFull, is_disk_full
from ..metrics import Registry
from ..model import IngestBatch, SeriesKey
from ..runtime import Clock, Runner, ThreadRunner, clock_ms
from ..wire import KINDS, Columns, decode_segment
from .budget import COMPACTED
from .disk import DiskGuard, MiB
from .journal import pack_journal_rows
from .stage import RollStage
from .store import BufferStats, PendingSegment, Store

log = logging.getLogger("fleet_edge.buffer")
T = TypeVar("T")

# Largest number of requests committed in one transaction; bounds commit latency.
_MAX_GROUP = 512


class Writer(Protocol):
    """What a source of data needs: ``await write(batch)`` returns once it is durable."""

    async def write(self, batch: IngestBatch) -> None: ...


@dataclass
class _Ticket:
    batch: IngestBatch
    sids: tuple[list[int], ...]  # metric, log, heartbeat, alert series ids
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None


class BufferService:
    """Owns the :class:`Store` and every task that writes to it.

    Args:
        store: the open buffer file (the service closes it in :meth:`aclose`).
        max_segment_bytes: upper bound for one segment, so it fits one batch to central.
        stage: stream aggregation, applied as the journal is rolled (:meth:`set_stage`).
        clock: wall-clock seconds (:mod:`edge_node.runtime`).
        runner: runs the store's blocking calls, one at a time (a ``ThreadRunner(1)``).
        merge_runner: the same for the merger's own connection (a second ``ThreadRunner(1)``).
        disk: the data disk's guard (free space, reserve, refusing); none: never refuses.
    """

    def __init__(self, store: Store, cfg: BufferConfig, registry: Registry, *,
                 max_segment_bytes: int = 8 << 20, stage: RollStage | None = None,
                 clock: Clock = time.time, runner: Runner | None = None,
                 merge_runner: Runner | None = None, disk: DiskGuard | None = None) -> None:
        self._store = store
        self.disk = disk
        self.cfg = cfg
        self.clock = clock
        self.max_segment_bytes = max_segment_bytes
        self._run: Runner = runner or ThreadRunner(1)
        self._merge_run: Runner = merge_runner or ThreadRunner(1)
        self._series = store.series
        # called with every committed batch (local alerting reads what was just committed)
        self._observers: list[Callable[[IngestBatch], None]] = []
        self._stage = stage
        if stage is not None:
            stage.load(*store.agg_saved())
        self._inflight: set[int] = set()
        # claims (two forwarder lanes) and the budget's drops see in-flight segments at once
        self._claim_lock = trio.Lock()
        self.segment_ready = trio.Event()
        self._send, self._recv = trio.open_memory_channel[_Ticket](cfg.queue_size)
        self._closed = False
        self.max_bytes = int(cfg.max_disk_mb * 1024 * 1024)
        r = registry
        self.m_committed = r.counter("committed_total",
                                     "Rows durably committed to the buffer.", ("kind",))
        self.m_commits = r.counter("buffer_commits_total",
                                   "Group-commit transactions (one fsync each).")
        self.m_commit_requests = r.counter("buffer_commit_requests_total",
                                           "Requests committed (requests / commits = group size).")
        self.m_dropped = r.counter("dropped_total",
                                   "Rows dropped to stay within the disk budget.", ("kind",))
        self.m_rolls = r.counter("segments_rolled_total", "Segments made from the journal.")
        self.m_commit_s = r.histogram("buffer_commit_seconds", "Time to commit a group of "
                                      "requests durably (write latency of the buffer, fsync "
                                      "included).")
        self.m_merged = r.counter("segments_merged_total",
                                  "Backlogged segments merged into denser ones.")
        self.m_compacted = r.counter(
            "compacted_total", "Raw metric rows removed under disk pressure because "
            "stream-aggregation rollups already summarise them.")
        self.stats = store.stats()
        self.m_compacted.inc(self.stats.counters.get("compacted_metrics", 0))
        for kind in KINDS:
            self.m_dropped.inc(self.stats.counters.get(f"dropped_{kind}", 0), kind)
        r.gauge("buffer_bytes", "Bytes the buffer uses on disk (live pages).",
                callback=lambda: float(self.stats.used_bytes))
        r.gauge("buffer_pending", "Rows waiting to be acknowledged by central.", ("kind",),
                callback=lambda: {(k,): float(v) for k, v in self.stats.pending.items()})
        r.gauge("backlog_age_seconds", "Age of the oldest unacknowledged data.",
                callback=self.backlog_age)
        r.gauge("dead_letters", "Segments central refused as malformed (kept in the buffer).",
                callback=lambda: float(self.stats.dead_letters))
        r.gauge("buffer_disk_budget_bytes", "The configured disk budget.",
                callback=lambda: float(self.max_bytes))
        r.gauge("dead_letters_dropped", "Dead-letter rows dropped by fleet-edge dead-letters "
                "--drop.", ("kind",), callback=lambda: {(k,): float(
                    self.stats.counters.get(f"dropped_dead_letters_{k}", 0)) for k in KINDS})
        r.gauge("buffer_disk_full", "1 while the data disk is full and new data is refused "
                "(503) until forwarding frees space.",
                callback=lambda: float(self.refusal is not None))
        r.gauge("buffer_disk_free_bytes", "Free space on the buffer's filesystem (as last "
                "measured, each roll).",
                callback=lambda: float(disk.free_bytes) if disk else float("nan"))
        self.m_disk_full = r.counter(
            "buffer_disk_full_errors_total", "Buffer operations SQLite failed with 'database "
            "or disk is full' (each freed the disk reserve and refused new data).")

    # -- reading -------------------------------------------------------------------------------

    @property
    def epoch(self) -> str:
        """The buffer's random id, part of every batch (a rebuilt buffer never reuses seqs)."""
        return self._store.epoch

    @property
    def synchronous(self) -> str:  # the connection's PRAGMA synchronous, read back
        return self._store.synchronous

    @property
    def refusal(self) -> str | None:
        """Why new data is refused now (the disk is full), or None."""
        return self.disk.reason if self.disk is not None else None

    @property
    def accepting(self) -> bool:
        """False once :meth:`close` began: writes are refused."""
        return not self._closed

    def labels_of(self, sid: int) -> SeriesKey | None:
        """The labels of series ``sid`` (any thread)."""
        return self._series.key(sid)

    def backlog_age(self) -> float:
        oldest = self.stats.oldest_ms
        return 0.0 if oldest is None else max(0.0, (clock_ms(self.clock) - oldest) / 1000)

    async def _store_call(self, fn: Callable[..., T], *args: Any, retry: bool = True,
                          runner: Runner | None = None) -> T:
        """``fn(*args)`` on the store's thread (or ``runner``'s). SQLite's "database or disk is
        full" becomes :class:`DiskFull` (and the refusing state); when that freed the disk
        reserve and ``retry``, the call is tried once more, in the room the reserve left."""
        run = runner or self._run
        try:
            return await run(fn, *args)
        except Exception as exc:
            if self.disk is None or not is_disk_full(exc):
                raise
            self.m_disk_full.inc()
            exc.__traceback__ = None  # it holds this frame and ``args``: no cycle (see _commit)
            freed = await self._run(self.disk.hit, exc)
            if retry and freed:
                try:
                    return await run(fn, *args)
                except Exception as again:
                    if not is_disk_full(again):
                        raise
                    self.m_disk_full.inc()
            raise DiskFull(self.disk.reason or str(exc)) from exc

    async def refresh_stats(self) -> BufferStats:
        self.stats = await self._run(self._store.stats)
        return self.stats

    async def dead_letters(self) -> list[dict[str, Any]]:
        """Segments central refused as malformed, oldest first (without their data)."""
        return await self._run(self._store.dead_letters)

    async def with_recent_metrics(self, fn: Callable[[Callable[[int], Iterable[Columns]]], T]
                                  ) -> T:
        """``fn(reader)`` on the store's thread, ``reader(since_ms)`` yielding the metric rows
        still in the buffer that may be newer (local alerting seeds its recent data)."""
        return await self._run(fn, self._store.recent_metrics)

    def observe(self, fn: Callable[[IngestBatch], None]) -> None:
        """Call ``fn(batch)`` with every batch once it is committed (on the Trio thread)."""
        self._observers.append(fn)

    def unobserve(self, fn: Callable[[IngestBatch], None]) -> None:
        if fn in self._observers:
            self._observers.remove(fn)

    # -- the ingest side ------------------------------------------------------------------------

    async def write(self, batch: IngestBatch) -> None:
        """Return once ``batch`` is durably committed.

        Raises:
            BufferFailure: the commit failed; nothing of the batch is stored.
        """
        if self._closed:
            raise BufferFailure("the buffer is shutting down")
        if self.disk is not None and self.disk.refusing and (  # alert events alone still go
                batch.n_samples or batch.n_logs or batch.n_heartbeats):  # in: a few rows
            raise DiskFull(self.disk.reason)
        ids = self._series.ids
        ticket = _Ticket(batch, (ids(batch.metric_keys), ids(batch.log_keys),
                                 ids(batch.hb_keys), ids(batch.alert_keys)))
        await self._send.send(ticket)
        await ticket.done.wait()
        if ticket.error is not None:
            if isinstance(ticket.error, DiskFull):
                raise DiskFull(str(ticket.error)) from ticket.error
            raise BufferFailure(f"commit failed: {ticket.error}") from ticket.error

    async def _writer(self) -> None:
        window = self.cfg.commit_window_ms / 1000
        # The receive side is not closed when this task ends: close() commits what is left.
        while True:
            group = [await self._recv.receive()]
            if window > 0:
                await trio.sleep(window)
            while len(group) < _MAX_GROUP:
                try:
                    group.append(self._recv.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            await self._commit(group)

    async def _commit(self, group: list[_Ticket]) -> None:
        new = self._series.unsaved()
        try:
            with trio.CancelScope(shield=True):  # a commit in progress must finish and report
                # packing is CPU work that needs the GIL anyway: do it here, and hand the
                # store thread only the few statements of the transaction
                t0 = time.perf_counter()
                rows = pack_journal_rows([(t.batch, t.sids) for t in group])
                # no retry on a full disk: the reserve is for what frees space, not new data
                await self._store_call(self._store.append_rows, new, rows, retry=False)
                self.m_commit_s.observe(time.perf_counter() - t0)
        except Exception as exc:
            if not isinstance(exc, DiskFull):
                log.error("buffer commit of %d requests failed: %s", len(group), exc)
            # the tickets keep the error, not its traceback: that holds this frame and every
            # request of the group, a cycle the rarely-run collector keeps (gigabytes, once)
            exc.__traceback__ = None
            for t in group:
                t.error = exc
                t.done.set()
            return
        self._series.saved(len(new))
        self.m_commits.inc()
        self.m_commit_requests.inc(len(group))
        for obs in self._observers:
            for t in group:
                try:
                    obs(t.batch)
                except Exception:  # an observer must never break the write path
                    log.exception("a commit observer failed")
        for t in group:
            b = t.batch
            self.m_committed.inc(b.n_samples, "metrics")
            self.m_committed.inc(b.n_logs, "logs")
            self.m_committed.inc(b.n_heartbeats, "heartbeats")
            if b.alert_lines:
                self.m_committed.inc(b.n_alerts, "alerts")
            t.done.set()

    # -- background upkeep ----------------------------------------------------------------------

    async def set_stage(self, stage: RollStage | None) -> None:
        """Switch stream aggregation to ``stage`` (a reload). The current stage rolls and
        saves every rule's state first and the new one loads it back, so rules whose
        definition did not change carry on exactly; new rules start empty (taking what is
        still in the replay log, as on a restart)."""
        if self._stage is not None:
            await self.roll_now(force_checkpoint=True)

        def swap() -> None:
            if stage is not None:
                stage.load(*self._store.agg_saved())
            self._stage = stage

        await self._run(swap)

    async def _roller(self) -> None:
        while True:
            await trio.sleep(self.cfg.roll_interval_s)
            # on a full disk the guard logged it; the journal is intact, the next roll tries again
            with contextlib.suppress(DiskFull):
                await self.roll_now()

    async def roll_now(self, *, force_checkpoint: bool = False) -> None:
        """Roll the journal into segments now, then enforce the disk budget."""
        # the stage is read on the store's thread: a reload may swap it while this waits
        if self.disk is not None:
            disk, store = self.disk, self._store

            def check() -> None:
                reusable = store.reusable_bytes()
                pages = disk.wants_pages(reusable)
                if pages:  # room for the reserve, from what acknowledged segments left
                    try:
                        store.give_back_pages(pages)
                    except Exception as exc:  # no room even for that step: a smaller one
                        if not is_disk_full(exc):  # next roll (the state machine goes on)
                            raise
                        exc.__traceback__ = None
                        disk.step_failed()
                    reusable = store.reusable_bytes()
                disk.check(reusable)

            await self._store_call(check, retry=False)
        made = await self._store_call(lambda: self._store.roll(
            max_rows=self.cfg.segment_max_samples, max_bytes=self.max_segment_bytes,
            stage=self._stage, force_checkpoint=force_checkpoint))
        if made:
            self.m_rolls.inc(len(made))
            self.segment_ready.set()
            self.segment_ready = trio.Event()
        async with self._claim_lock:
            dropped = await self._store_call(self._store.enforce_budget, self.max_bytes,
                                             set(self._inflight))
        for kind, n in dropped.items():
            if kind == COMPACTED:
                self.m_compacted.inc(n)
                log.warning("disk budget reached: removed %d raw metric rows that rollups "
                            "already summarise", n)
                continue
            self.m_dropped.inc(n, kind)
            log.warning("disk budget reached: dropped the %d oldest %s rows", n, kind)
        self.stats = await self._run(self._store.stats)

    async def _merger(self, merge_store: Store) -> None:
        """Merge backlogged small segments into dense ones on a second connection/thread."""
        while True:
            await trio.sleep(max(self.cfg.roll_interval_s, 1.0))
            if self.disk is not None and self.disk.refusing:
                continue  # a merge writes its output before it frees its inputs: not now
            with contextlib.suppress(DiskFull):  # refusing now; merges resume once space is back
                await self._merge_round(merge_store)

    async def _merge_round(self, merge_store: Store) -> None:
        for kind in ("metrics", "logs"):
            older = clock_ms(self.clock) - int(self.cfg.merge_after_s * 1000)
            cands = await self._merge_run(partial(
                merge_store.merge_candidates, kind, older_than_ms=older,
                max_rows=self.cfg.segment_max_samples, max_bytes=self.max_segment_bytes,
                exclude=set(self._inflight)))
            if not cands:
                continue
            seqs = [s for s, _ in cands]
            # a merge needs room before it frees any: no retry in the reserve
            new = await self._store_call(merge_store.merge, kind, seqs, retry=False,
                                         runner=self._merge_run)
            if new:
                self.m_merged.inc(len(seqs))
                log.debug("merged %d %s segments into %d", len(seqs), kind, new)

    # -- the forwarder side ---------------------------------------------------------------------

    async def claim(self, fresh_since_ms: int | None = None) -> PendingSegment | None:
        """The next segment to forward (oldest first; with ``fresh_since_ms``, the newest made
        since then), its attempt counted; it stays claimed (never merged, never dropped for
        the budget) until :meth:`release`."""
        async with self._claim_lock:
            seg = await self._store_call(self._store.claim_next_segment, set(self._inflight),
                                         fresh_since_ms)
            if seg is not None:
                self._inflight.add(seg.seq)
        return seg

    def release(self, seg: PendingSegment) -> None:
        self._inflight.discard(seg.seq)

    async def low_watermark(self) -> int:
        """The lowest seq not yet acknowledged (central may forget older dedup entries)."""
        return await self._run(self._store.low_watermark)

    async def definitions_for(self, seg: PendingSegment) -> list[tuple[int, dict[str, str]]]:
        """Definitions of the series in ``seg`` that central has not confirmed yet."""
        if await self._run(self._store.unacked_series_count) == 0:
            return []
        # decoding is CPU work off the store's thread: the merger's thread does it
        ids = await self._merge_run(
            lambda: sorted({int(x) for x in decode_segment(seg.blob).series.tolist()}))
        return await self._run(self._store.unacked_series, ids)

    async def forget_definitions(self, ids: Iterable[int]) -> None:
        """Central lacks the definitions of ``ids``: send them again with the next batch."""
        await self._store_call(self._store.mark_series, list(ids), False)

    async def ack(self, seg: PendingSegment, series_ids: Iterable[int]) -> None:
        """Central applied ``seg``: forget it, and remember the series it defined (shielded:
        an ack must be recorded even while being cancelled)."""
        with trio.CancelScope(shield=True):
            await self._store_call(self._store.ack, seg.seq, seg.kind, seg.n,
                                   list(series_ids))

    async def retry(self, seg: PendingSegment) -> None:
        """Count another attempt of ``seg`` (on a full disk, the claim's count stands)."""
        with contextlib.suppress(DiskFull):
            await self._store_call(self._store.mark_attempt, seg.seq, retry=False)

    async def expire(self, seg: PendingSegment) -> None:
        """Drop ``seg``, all older than its backend accepts (``expired_<kind>``; shielded)."""
        with trio.CancelScope(shield=True):
            await self._store_call(self._store.expire_segment, seg.seq, seg.kind, seg.n)

    async def dead_letter(self, seg: PendingSegment, reason: str) -> None:
        """Move ``seg`` to the dead-letter table: central refused it as malformed (shielded)."""
        with trio.CancelScope(shield=True):
            await self._store_call(self._store.dead_letter, seg.seq, reason)

    # -- lifecycle ------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Run the writer, roller and merger until cancelled; then commit what is queued."""
        merge_store = Store(self._store.path, clock=self.clock)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                nursery.start_soon(self._roller)
                nursery.start_soon(self._merger, merge_store)
                task_status.started()
        finally:
            merge_store.close()

    async def close(self) -> None:
        """Refuse new writes and commit every request already queued (shielded)."""
        self._closed = True
        with trio.CancelScope(shield=True):
            group: list[_Ticket] = []
            while True:
                try:
                    group.append(self._recv.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
            if group:
                await self._commit(group)
            if self._stage is not None:
                # roll what is committed and save the aggregation state: a clean restart then
                # has nothing to replay
                try:
                    await self.roll_now(force_checkpoint=True)
                except Exception as exc:  # the journal and replay log still have everything
                    log.error("final aggregation checkpoint failed: %s", exc)

    async def aclose(self) -> None:
        """Close the buffer file (after :meth:`serve` ended)."""
        await self._run(self._store.close)


async def open_buffer(path: str | Path, cfg: BufferConfig, registry: Registry,
                      **options: Any) -> BufferService:
    """Open (or create) the buffer file at ``path`` on a worker thread and wrap it in a
    :class:`BufferService` (``options`` go to its constructor)."""
    if "disk" not in options:  # the guard frees the reserve first: the open may need the room
        disk = options["disk"] = await trio.to_thread.run_sync(
            lambda: DiskGuard(Path(path).parent, int(cfg.disk_reserve_mb * MiB)))
        budget = cfg.max_disk_mb * MiB
        if disk.total_bytes and budget > disk.total_bytes:
            log.warning("buffer.max_disk_mb = %g exceeds the data disk (%.0f MiB): the disk "
                        "would fill before the budget drops the oldest data, and the node "
                        "then refuses new data (503) instead; set max_disk_mb below it",
                        cfg.max_disk_mb, disk.total_bytes / MiB)
    store = await trio.to_thread.run_sync(
        lambda: Store(path, synchronous=cfg.synchronous, clock=options.get("clock", time.time)))
    return BufferService(store, cfg, registry, **options)
