"""Stream aggregation inside the buffer's roll: :mod:`edge_node.aggregate` (pure) as the
buffer's :class:`~edge_node.buffer.RollStage` (sans-IO: the roll stores what it returns).

Every roll hands the journal's metric rows to :meth:`RollupStage.split`, which feeds the
aggregator and says which rows stay raw (and which of those the rollups summarise). The rows
the aggregator took are appended to a replay log in the same transaction that turns the
journal into segments. :meth:`RollupStage.finish` closes due windows into ``rollups`` rows and
saves the state of each rule that closed a window (every rule every ``checkpoint_interval_s``
and on shutdown) in one transaction, noting the last log entry each saved state includes; log
entries every rule has saved are deleted. On start (and after a failed transaction)
:meth:`RollupStage.load` restores each rule's checkpoint and replays the log entries after it
with each entry's original clock, so the state is exactly what it was, whatever instant the
process died. Rules checkpoint at their own pace: a big per-device 5m rule is saved every 5
minutes, not at every 1m rule's window close.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import zstandard

from ..buffer.stage import ReplayLog, StageOutput, take
from ..metrics import Registry
from ..model import SeriesKey
from ..runtime import Clock, clock_ms
from ..wire import Columns, decode_segment, encode_segment
from .aggregator import Aggregator
from .rule import Rule

log = logging.getLogger("fleet_edge.aggregate")


class RollupStage:
    """Runs the rules on the store's thread; :meth:`summary` may be read from any thread."""

    def __init__(self, rules: Sequence[Rule], labels_of: Callable[[int], SeriesKey | None], *,
                 checkpoint_interval_s: float = 300.0, clock: Clock = time.time) -> None:
        self.rules = list(rules)
        self.labels_of = labels_of
        self.checkpoint_interval_s = checkpoint_interval_s
        self.checkpoint_ms = int(checkpoint_interval_s * 1000)
        self.agg = Aggregator(self.rules, labels_of, 0)
        self.last_checkpoint_ms = 0
        self.replayed = 0
        self.checkpoints = 0
        self.outputs = 0
        self._lock = threading.Lock()  # summary() vs. a roll in progress
        self._cctx = zstandard.ZstdCompressor(level=1)
        self._dctx = zstandard.ZstdDecompressor()
        self._clock = clock

    # -- RollStage ---------------------------------------------------------------------------

    def load(self, saved: dict[str, tuple[bytes, int]], entries: ReplayLog) -> None:
        states: dict[str, Any] = {}
        since: dict[str, int] = {}
        for fp, (blob, log_id) in saved.items():
            try:
                states[fp] = msgpack.unpackb(self._dctx.decompress(blob), raw=False,
                                             strict_map_key=False)
                since[fp] = log_id
            except (ValueError, zstandard.ZstdError, msgpack.ExtraData) as exc:
                log.error("aggregation state of rule %s is unreadable (%s): starting it afresh",
                          fp, exc)
        now = clock_ms(self._clock)
        with self._lock:
            self.agg = Aggregator(self.rules, self.labels_of, now, states)
            n = 0
            for entry_id, t, blob in entries:
                # each rule takes the entries its own checkpoint does not include
                todo = [i for i, r in enumerate(self.rules)
                        if entry_id > since.get(r.fingerprint, 0)]
                if not todo:
                    continue
                cols = decode_segment(blob)
                assert cols.values is not None
                self.agg.ingest(cols.series, cols.ts, cols.values, t, only=todo)
                n += len(cols)
            self.replayed = n
        resumed = [r.name for r in self.rules if r.fingerprint in states]
        if self.rules:
            log.info("stream aggregation: %d rules (%d resumed from the buffer), %d samples "
                     "replayed", len(self.rules), len(resumed), n)
        self.last_checkpoint_ms = now

    def split(self, cols: Columns, now_ms: int
              ) -> tuple[list[tuple[Columns, bool, bytes | None]], bytes | None]:
        assert cols.values is not None
        with self._lock:
            covered, keep = self.agg.ingest(cols.series, cols.ts, cols.values, now_ms)
        if not covered.any():
            return [(cols, False, None)], None
        # the replay log holds the rows the rules took, in the segment codec; when they are
        # all kept raw too, the summarised segment's bytes serve as the log entry as well
        summarised = take(cols, keep & covered)
        parts: list[tuple[Columns, bool, bytes | None]] = [(take(cols, keep & ~covered), False,
                                                           None)]
        if (covered & ~keep).any():
            logged = encode_segment(take(cols, covered), level=1)
            parts.append((summarised, True, None))
        else:
            logged = encode_segment(summarised)
            parts.append((summarised, True, logged))
        return parts, logged

    def finish(self, now_ms: int, force: bool) -> StageOutput | None:
        """Close due windows; checkpoint the rules that closed one (their outputs and state
        commit together), and every rule when forced or ``checkpoint_interval_s`` is up."""
        with self._lock:
            out, _ = self.agg.flush(now_ms)
            periodic = force or now_ms - self.last_checkpoint_ms >= self.checkpoint_ms
            save = [st for st in self.agg.rules if periodic or st.closed_now]
            if not len(out) and not save:
                return None
            res = StageOutput(compact_before_ms=min(
                (st.closed_until for st in self.agg.rules), default=0),
                rules=frozenset(r.fingerprint for r in self.rules))
            if len(out):
                res.rollup_keys, res.rollup_ts, res.rollup_values = out.keys, out.ts, out.values
                self.outputs += len(out)
            if save:
                res.states = {
                    st.rule.fingerprint: (st.rule.name, self._cctx.compress(
                        msgpack.packb(st.to_state(), use_bin_type=True)))
                    for st in save}
                self.checkpoints += 1
            if periodic:
                self.last_checkpoint_ms = now_ms
        return res

    # -- reading -----------------------------------------------------------------------------

    def summary(self) -> list[dict[str, Any]]:
        with self._lock:
            return self.agg.summary()



def register_metrics(registry: Registry, current: Callable[[], RollupStage | None]) -> None:
    """The per-rule gauges, read from the ``current()`` stage (a reload may replace it); the
    five share one summary per scrape."""
    cached: list[Any] = [0.0, None, []]  # (when, stage, summary)

    def summary() -> list[dict[str, Any]]:
        now = time.monotonic()
        stage = current()
        if cached[1] is not stage or now - cached[0] > 1.0:
            cached[:] = [now, stage, stage.summary() if stage else []]
        out: list[dict[str, Any]] = cached[2]
        return out

    def per_rule(field: str) -> Callable[[], dict[tuple[str, ...], float]]:
        return lambda: {(s["name"],): float(s[field]) for s in summary()}

    r = registry
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
