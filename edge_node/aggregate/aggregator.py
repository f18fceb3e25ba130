"""The aggregator: every rule of a node over one stream of (series id, timestamp, value) rows.

:class:`Aggregator` feeds each row batch to every rule's
:class:`~edge_node.aggregate.state.RuleState`, decides which rows still go out raw, closes the
windows due and gathers their outputs, and saves and restores all rules' state by fingerprint.
The buffer's roll stage (:mod:`edge_node.aggregate.roll_stage`) drives it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..model import SeriesKey
from .arrays import F64, I64, B
from .outputs import Emitted
from .rule import Rule
from .state import LabelsOf, RuleState


class Aggregator:
    """All rules of a node over one stream of (sid, ts, value) rows."""

    def __init__(self, rules: Sequence[Rule], labels_of: LabelsOf, now_ms: int,
                 states: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """``states``: saved :meth:`RuleState.to_state` documents by rule fingerprint; rules
        whose fingerprint has one resume from it, the others start empty at ``now_ms``."""
        self.labels_of = labels_of
        self.rules: list[RuleState] = []
        for r in rules:
            saved = (states or {}).get(r.fingerprint)
            self.rules.append(RuleState.from_state(r, saved, labels_of) if saved is not None
                              else RuleState(r, now_ms))

    def __bool__(self) -> bool:
        return bool(self.rules)

    @property
    def drops_raw(self) -> bool:
        return any(not r.rule.keep_raw for r in self.rules)

    def ingest(self, sids: I64, ts: I64, values: F64, now_ms: int,
               only: Sequence[int] | None = None) -> tuple[B, B]:
        """Feed rows; returns (covered, keep): rows some rule aggregated, rows to forward raw.

        ``only``: indexes of the rules to feed (replaying a log some rules saved already).

        A row is dropped from the raw stream only when a ``keep_raw = false`` rule aggregated
        it and no rule that matched it wants it raw or found it late.
        """
        n = sids.shape[0]
        covered = np.zeros(n, np.bool_)
        want_raw = np.zeros(n, np.bool_)
        dropped = np.zeros(n, np.bool_)
        real = ~np.isnan(values)
        rs, rt, rv = sids[real], ts[real], values[real]
        memo: dict[int, tuple[SeriesKey, dict[str, str]] | None] = {}
        for st in (self.rules if only is None else [self.rules[i] for i in only]):
            # infinities and huge values give inf/NaN outputs, as float arithmetic says
            with np.errstate(all="ignore"):
                agg, late = st.ingest(rs, rt, rv, now_ms, self.labels_of, memo)
            a = np.zeros(n, np.bool_)
            a[real] = agg
            lt = np.zeros(n, np.bool_)
            lt[real] = late
            covered |= a
            if st.rule.keep_raw:
                want_raw |= a | lt
            else:
                dropped |= a
                want_raw |= lt
        return covered, ~dropped | want_raw

    def flush(self, now_ms: int) -> tuple[Emitted, int]:
        """Close every window due by ``now_ms``: (output rows, windows closed)."""
        out = Emitted()
        with np.errstate(all="ignore"):
            closed = sum(st.flush(now_ms, out) for st in self.rules)
        return out, closed

    def states(self) -> dict[str, dict[str, Any]]:
        return {st.rule.fingerprint: st.to_state() for st in self.rules}

    def summary(self) -> list[dict[str, Any]]:
        return [st.summary() for st in self.rules]
