"""The contract between the roll and a stage that works on metric rows as they roll (sans-IO).

Stream aggregation (:mod:`edge_node.aggregate.roll_stage`) is such a stage. The roll hands it
each journal chunk's metric rows (:meth:`RollStage.split`) and, once the journal is rolled, asks
what to write (:meth:`RollStage.finish`). The stage never calls back into the buffer: what it
wants written, including the series its outputs need, comes back in a :class:`StageOutput`,
and the roll stores it in one transaction, giving the output series their ids itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..model import SeriesKey
from ..wire import Columns

#: the replay log as :meth:`RollStage.load` gets it: [(entry id, roll clock in ms, segment)]
ReplayLog = Sequence[tuple[int, int, bytes]]


@dataclass
class StageOutput:
    """What a :class:`RollStage` wants written when a roll ends (all in one transaction)."""

    rollup_keys: Sequence[SeriesKey] = ()   # output rows of closed windows: their series,
    rollup_ts: Sequence[int] = ()           # timestamps
    rollup_values: Sequence[float] = ()     # and values
    states: dict[str, tuple[str, bytes]] | None = None  # checkpoint: fingerprint -> state
    rules: frozenset[str] = frozenset()     # fingerprints of every current rule
    compact_before_ms: int = 0              # summarised raw rows older than this are covered


class RollStage(Protocol):
    """A stage the roll runs metric rows through, on the store's thread."""

    def split(self, cols: Columns, now_ms: int
              ) -> tuple[list[tuple[Columns, bool, bytes | None]], bytes | None]:
        """Raw metric rows to keep as segments (with their summarised flag and, if already
        made, their encoded segment), and the replay-log entry (a segment) or None."""
        ...

    def finish(self, now_ms: int, force: bool) -> StageOutput | None:
        """What to write now (None: nothing); ``force``: checkpoint every rule."""
        ...

    def load(self, saved: dict[str, tuple[bytes, int]], log: ReplayLog) -> None:
        """(Re)build the state from each rule's checkpoint (state, replay-log id it includes)
        by fingerprint, plus the replay log."""
        ...

    def summary(self) -> list[dict[str, Any]]:
        """Per-rule figures for the status API (any thread)."""
        ...


def take(cols: Columns, mask: np.ndarray) -> Columns:
    """The metric rows of ``cols`` where ``mask`` is true."""
    return Columns(cols.kind, cols.series[mask], cols.ts[mask],
                   None if cols.values is None else cols.values[mask])
