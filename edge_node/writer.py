"""The Trio shell around the SQLite buffer: group commit, rolling, merging, disk budget.

One task owns the write path. Ingest handlers put a ticket on a bounded channel and wait; the
writer takes every ticket that is waiting (plus those arriving within ``commit_window_ms``),
commits them in one transaction (one fsync) on the store's thread, then wakes them all. A full
channel makes handlers wait, which is how back-pressure reaches the devices.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar, TypeVarTuple

import trio

from .aggregate import Rule
from .buffer import PendingSegment, Store, now_ms, pack_journal_rows
from .config import BufferConfig
from .errors import BufferFailure
from .metrics import Registry
from .model import IngestBatch, SeriesKey
from .rollups import RollupStage
from .wire import KINDS, concat_columns, decode_segment, encode_segment

log = logging.getLogger("fleet_edge.buffer")
T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# Largest number of requests committed in one transaction; bounds commit latency.
_MAX_GROUP = 512


@dataclass
class _Ticket:
    batch: IngestBatch
    sids: tuple[list[int], ...]  # metric, log, heartbeat, alert series ids
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None


class BufferService:
    """Owns the :class:`Store` and every task that writes to it."""

    def __init__(self, store: Store, cfg: BufferConfig, registry: Registry, *,
                 max_segment_bytes: int = 8 << 20, inline: bool = False,
                 rules: Sequence[Rule] = (), checkpoint_interval_s: float = 300.0) -> None:
        """Args:
            max_segment_bytes: upper bound for one segment, so it fits one batch to central.
            inline: run store calls on the Trio thread instead of a worker thread. Only for
                tests on a virtual clock (``autojump_clock`` would jump while a thread works).
            rules: stream-aggregation rules, applied as the journal is rolled.
            checkpoint_interval_s: how often (at most) the aggregation state is saved besides
                window closes and shutdown (the samples since are replayed on start).
        """
        self.store = store
        self.cfg = cfg
        self.inline = inline
        self.max_segment_bytes = max_segment_bytes
        self.limiter = trio.CapacityLimiter(1)
        self.merge_limiter = trio.CapacityLimiter(1)
        self.series, self.next_sid = store.load_series()
        self.unsaved: list[tuple[int, SeriesKey]] = []
        self._intern_lock = threading.Lock()  # the roll interns rollup series on its thread
        # called with every committed batch (local alerting reads what was just committed)
        self.observers: list[Callable[[IngestBatch], None]] = []
        self.stage: RollupStage | None = None
        self.checkpoint_interval_s = checkpoint_interval_s
        if rules:
            self.stage = self._load_stage(rules)
        self.inflight: set[int] = set()
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
        self.registry = r
        if self.stage is not None:
            self._register_aggregation_metrics()
        self.stats_cache = store.stats()
        self.m_compacted.inc(self.stats_cache.counters.get("compacted_metrics", 0))
        for kind in KINDS:
            self.m_dropped.inc(self.stats_cache.counters.get(f"dropped_{kind}", 0), kind)
        r.gauge("buffer_bytes", "Bytes the buffer uses on disk (live pages).",
                callback=lambda: float(self.stats_cache.used_bytes))
        r.gauge("buffer_pending", "Rows waiting to be acknowledged by central.", ("kind",),
                callback=lambda: {(k,): float(v) for k, v in self.stats_cache.pending.items()})
        r.gauge("backlog_age_seconds", "Age of the oldest unacknowledged data.",
                callback=self.backlog_age)
        r.gauge("dead_letters", "Segments central refused as malformed (kept in the buffer).",
                callback=lambda: float(self.stats_cache.dead_letters))
        r.gauge("buffer_disk_budget_bytes", "The configured disk budget.",
                callback=lambda: float(self.max_bytes))

    def backlog_age(self) -> float:
        oldest = self.stats_cache.oldest_ms
        return 0.0 if oldest is None else max(0.0, (now_ms() - oldest) / 1000)

    # -- the ingest side ------------------------------------------------------------------------

    def intern(self, keys: list[SeriesKey]) -> list[int]:
        """Series ids for ``keys``, allocating (not yet durable) ids for new ones."""
        series = self.series
        get = series.get
        out = [get(k, -1) for k in keys]
        if -1 in out:
            with self._intern_lock:
                for i, sid in enumerate(out):
                    if sid == -1:
                        k = keys[i]
                        sid = series.get(k, -1)
                        if sid == -1:
                            sid = self.next_sid
                            self.next_sid += 1
                            series[k] = sid
                            self.unsaved.append((sid, k))
                        out[i] = sid
        return out

    def intern_durable(self, keys: list[SeriesKey]
                       ) -> tuple[list[int], list[tuple[int, SeriesKey]]]:
        """Series ids for ``keys`` from the store's thread, with the definitions the caller
        must store in its own transaction (new ones, and any still waiting in ``unsaved``)."""
        series = self.series
        out: list[int] = []
        defs: list[tuple[int, SeriesKey]] = []
        with self._intern_lock:
            pending = {sid for sid, _ in self.unsaved}
            for k in keys:
                sid = series.get(k, -1)
                if sid == -1:
                    sid = self.next_sid
                    self.next_sid += 1
                    series[k] = sid
                    defs.append((sid, k))
                elif sid in pending:
                    defs.append((sid, k))
                    pending.discard(sid)
                out.append(sid)
        return out, defs

    def _load_stage(self, rules: Sequence[Rule]) -> RollupStage:
        stage = RollupStage(rules, self.intern_durable, self.store.labels_of,
                            checkpoint_interval_s=self.checkpoint_interval_s)
        stage.load(self.store)
        return stage

    async def set_rules(self, rules: Sequence[Rule], checkpoint_interval_s: float) -> None:
        """Switch to a new rule set (a reload). Every rule's state is saved first and the new
        stage loads it back, so rules whose definition did not change carry on exactly; new
        rules start empty (taking what is still in the replay log, as on a restart)."""
        if self.stage is not None:
            await self.roll_now(force_checkpoint=True)
        self.checkpoint_interval_s = checkpoint_interval_s

        def swap() -> None:
            self.stage = self._load_stage(rules) if rules else None

        await self.run(swap)
        if self.stage is not None:
            self._register_aggregation_metrics()

    def _register_aggregation_metrics(self) -> None:
        r = self.registry
        cached: list[Any] = [0.0, None, []]  # (when, stage, summary): one per scrape

        def summary() -> list[dict[str, Any]]:
            now = time.monotonic()
            if cached[1] is not self.stage or now - cached[0] > 1.0:
                cached[:] = [now, self.stage, self.stage.summary() if self.stage else []]
            out: list[dict[str, Any]] = cached[2]
            return out

        def per_rule(field: str) -> Callable[[], dict[tuple[str, ...], float]]:
            return lambda: {(s["name"],): float(s[field]) for s in summary()}

        r.gauge("aggregate_samples", "Samples stream aggregation took into windows (since the "
                "rule was created).", ("rule",), callback=per_rule("samples"))
        r.gauge("aggregate_late_samples", "Samples that arrived after their window closed "
                "(forwarded raw, not aggregated).", ("rule",), callback=per_rule("late_samples"))
        r.gauge("aggregate_outputs", "Output rows emitted by closed windows.", ("rule",),
                callback=per_rule("emitted"))
        r.gauge("aggregate_series", "Input series each rule matches.", ("rule",),
                callback=per_rule("series"))
        r.gauge("aggregate_groups", "Output groups of each rule.", ("rule",),
                callback=per_rule("groups"))

    async def write(self, batch: IngestBatch) -> None:
        """Return once ``batch`` is durably committed.

        Raises:
            BufferFailure: the commit failed; nothing of the batch is stored.
        """
        if self._closed:
            raise BufferFailure("the buffer is shutting down")
        ticket = _Ticket(batch, (self.intern(batch.metric_keys), self.intern(batch.log_keys),
                                 self.intern(batch.hb_keys), self.intern(batch.alert_keys)))
        await self._send.send(ticket)
        await ticket.done.wait()
        if ticket.error is not None:
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
        new = list(self.unsaved)
        try:
            with trio.CancelScope(shield=True):  # a commit in progress must finish and report
                # packing is CPU work that needs the GIL anyway: do it here, and hand the
                # store thread only the few statements of the transaction
                t0 = time.perf_counter()
                rows = pack_journal_rows([(t.batch, t.sids) for t in group])
                await self.run(self.store.append_rows, new, rows)
                self.m_commit_s.observe(time.perf_counter() - t0)
        except Exception as exc:
            log.error("buffer commit of %d requests failed: %s", len(group), exc)
            for t in group:
                t.error = exc
                t.done.set()
            return
        del self.unsaved[:len(new)]
        self.m_commits.inc()
        self.m_commit_requests.inc(len(group))
        for obs in self.observers:
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

    async def run(self, fn: Callable[[*Ts], T], *args: *Ts,
                  limiter: trio.CapacityLimiter | None = None) -> T:
        """Run a blocking store call on the store's thread (one call at a time)."""
        if self.inline:
            await trio.lowlevel.checkpoint()
            return fn(*args)
        return await trio.to_thread.run_sync(fn, *args, limiter=limiter or self.limiter)

    # -- background upkeep ----------------------------------------------------------------------

    async def _roller(self) -> None:
        while True:
            await trio.sleep(self.cfg.roll_interval_s)
            await self.roll_now()

    async def roll_now(self, *, force_checkpoint: bool = False) -> None:
        # the stage is read on the store's thread: a reload may swap it while this waits
        made = await self.run(lambda: self.store.roll(
            max_rows=self.cfg.segment_max_samples, max_bytes=self.max_segment_bytes,
            stage=self.stage, force_checkpoint=force_checkpoint))
        if made:
            self.m_rolls.inc(len(made))
            self.segment_ready.set()
            self.segment_ready = trio.Event()
        dropped = await self.run(self.store.enforce_budget, self.max_bytes, set(self.inflight))
        for kind, n in dropped.items():
            if kind == "compacted":
                self.m_compacted.inc(n)
                log.warning("disk budget reached: removed %d raw metric rows that rollups "
                            "already summarise", n)
                continue
            self.m_dropped.inc(n, kind)
            log.warning("disk budget reached: dropped the %d oldest %s rows", n, kind)
        self.stats_cache = await self.run(self.store.stats)

    async def _merger(self, merge_store: Store) -> None:
        """Merge backlogged small segments into dense ones on a second connection/thread."""
        lim = self.merge_limiter
        while True:
            await trio.sleep(max(self.cfg.roll_interval_s, 1.0))
            for kind in ("metrics", "logs"):
                cands = await self.run(
                    partial(merge_store.merge_candidates, kind,
                            older_than_ms=now_ms() - int(self.cfg.merge_after_s * 1000),
                            max_rows=self.cfg.segment_max_samples,
                            max_bytes=self.max_segment_bytes, exclude=set(self.inflight)),
                    limiter=lim)
                if not cands:
                    continue
                seqs = [s for s, _ in cands]
                new = await self.run(self._merge_blocking, merge_store, kind, seqs, limiter=lim)
                if new:
                    self.m_merged.inc(len(seqs))
                    log.debug("merged %d %s segments into %d", len(seqs), kind, new)

    @staticmethod
    def _merge_blocking(store: Store, kind: str, seqs: list[int]) -> int:
        parts = [decode_segment(b) for b in store.read_segments(seqs)]
        if len(parts) != len(seqs):
            return 0
        cols = concat_columns(kind, parts)
        # Backlog segments are written once and may wait long: spend CPU for density.
        seg = encode_segment(cols, level=9)
        return store.replace_segments(seqs, kind, cols, seg)

    # -- the forwarder side ---------------------------------------------------------------------

    async def next_segment(self) -> PendingSegment | None:
        return await self.run(self.store.claim_next_segment, set(self.inflight))

    async def refresh_stats(self) -> None:
        self.stats_cache = await self.run(self.store.stats)

    # -- lifecycle ------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Run the writer, roller and merger until cancelled; then commit what is queued."""
        merge_store = Store(self.store.path)
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
            if self.stage is not None:
                # roll what is committed and save the aggregation state: a clean restart then
                # has nothing to replay
                try:
                    await self.roll_now(force_checkpoint=True)
                except Exception as exc:  # the journal and replay log still have everything
                    log.error("final aggregation checkpoint failed: %s", exc)
