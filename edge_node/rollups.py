"""Stream aggregation inside the buffer's roll: the glue between :mod:`edge_node.aggregate`
(pure) and :class:`edge_node.buffer.Store` (SQL).

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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np
import zstandard

from .aggregate import Aggregator, Rule
from .buffer import StageOutput, now_ms
from .model import SeriesKey
from .wire import Columns, decode_segment, encode_segment

if TYPE_CHECKING:
    from .buffer import Store

log = logging.getLogger("fleet_edge.aggregate")

InternDurable = Callable[[list[SeriesKey]], tuple[list[int], list[tuple[int, SeriesKey]]]]


class RollupStage:
    """Runs the rules on the store's thread; :meth:`summary` may be read from any thread."""

    def __init__(self, rules: Sequence[Rule], intern: InternDurable,
                 labels_of: Callable[[int], SeriesKey | None], *,
                 checkpoint_interval_s: float = 300.0, clock: Callable[[], int] | None = None
                 ) -> None:
        self.rules = list(rules)
        self.intern = intern
        self.labels_of = labels_of
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

    def load(self, store: Store) -> None:
        saved, entries = store.agg_saved()
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
        now = self._now()
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
        summarised = _take(cols, keep & covered)
        parts: list[tuple[Columns, bool, bytes | None]] = [(_take(cols, keep & ~covered), False,
                                                           None)]
        if (covered & ~keep).any():
            logged = encode_segment(_take(cols, covered), level=1)
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
                sids, new = self.intern(out.keys)
                res.rollups = Columns("rollups", np.asarray(sids, np.int64),
                                      np.asarray(out.ts, np.int64),
                                      np.asarray(out.values, np.float64))
                res.new_series = new
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

    def _now(self) -> int:
        return self._clock() if self._clock is not None else now_ms()


def _take(cols: Columns, mask: np.ndarray) -> Columns:
    return Columns(cols.kind, cols.series[mask], cols.ts[mask],
                   None if cols.values is None else cols.values[mask])
