"""The edge's recent samples in memory, for rule evaluation (bounded; sans-IO).

Every committed sample of a series some rule may read is appended here; samples older than
``retention_ms`` (the longest range any rule reads plus the lookback) are trimmed, and at most
``max_series`` series are kept (new ones beyond that are counted and ignored, so a cardinality
burst cannot exhaust the gateway's memory).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..model import NAME_LABEL, SeriesKey
from ..selector import Matcher

Labels = tuple[tuple[str, str], ...]


@dataclass
class _Series:
    labels: Labels
    labels_map: dict[str, str]
    ts: list[int] = field(default_factory=list)
    vals: list[float] = field(default_factory=list)


class RecentStore:
    """Samples of the last ``retention_ms`` per series, indexed by metric name."""

    def __init__(self, retention_ms: int, max_series: int = 200_000) -> None:
        self.retention_ms = retention_ms
        self.max_series = max_series
        self.series: dict[SeriesKey, _Series] = {}
        self.by_name: dict[str, list[_Series]] = {}
        self.refused_series = 0
        self.newest_ms = 0

    def __len__(self) -> int:
        return len(self.series)

    def add(self, key: SeriesKey, ts: int, value: float) -> None:
        s = self.series.get(key)
        if s is None:
            if len(self.series) >= self.max_series:
                self.refused_series += 1
                return
            labels = tuple(key)
            s = self.series[key] = _Series(labels, dict(labels))
            # kept in label order, so selections come out in the order Prometheus has them
            bisect.insort(self.by_name.setdefault(s.labels_map.get(NAME_LABEL, ""), []), s,
                          key=lambda x: x.labels)
        if s.ts and ts <= s.ts[-1]:  # out of order (rare) or a duplicate
            i = bisect.bisect_left(s.ts, ts)
            if i < len(s.ts) and s.ts[i] == ts:
                return  # one sample per timestamp, as Prometheus' TSDB keeps the first
            s.ts.insert(i, ts)
            s.vals.insert(i, value)
        else:
            s.ts.append(ts)
            s.vals.append(value)
        if ts > self.newest_ms:
            self.newest_ms = ts

    def add_many(self, keys: Sequence[SeriesKey], ts: Sequence[int],
                 values: Sequence[float]) -> None:
        for k, t, v in zip(keys, ts, values, strict=True):
            self.add(k, t, v)

    def trim(self, now_ms: int) -> int:
        """Forget samples older than the retention, and series left empty; returns samples
        dropped."""
        cutoff = now_ms - self.retention_ms
        dropped = 0
        empty = []
        for key, s in self.series.items():
            if s.ts and s.ts[0] < cutoff:
                i = bisect.bisect_left(s.ts, cutoff)
                dropped += i
                del s.ts[:i]
                del s.vals[:i]
            if not s.ts:
                empty.append(key)
        self._remove(empty)
        return dropped

    def drop(self, name: str, **labels: str) -> int:
        """Forget the series named ``name`` whose labels include ``labels``; returns how many."""
        gone = [s.labels for s in self.by_name.get(name, [])
                if all(s.labels_map.get(k) == v for k, v in labels.items())]
        self._remove(gone)
        return len(gone)

    def _remove(self, keys: Sequence[SeriesKey]) -> None:
        for key in keys:
            s = self.series.pop(key)
            lst = self.by_name.get(s.labels_map.get(NAME_LABEL, ""), [])
            lst.remove(s)

    def select(self, matchers: Sequence[Matcher], start_ms: int, end_ms: int
               ) -> Iterable[tuple[Labels, Sequence[int], Sequence[float]]]:
        name = next((m.value for m in matchers if m.label == NAME_LABEL and m.op == "="), None)
        candidates: Iterable[_Series] = (
            self.by_name.get(name, []) if name is not None
            else sorted(self.series.values(), key=lambda x: x.labels))
        others = [m for m in matchers if not (m.label == NAME_LABEL and m.op == "=")]
        for s in candidates:
            lm = s.labels_map
            if not all(m.matches(lm.get(m.label, "")) for m in others):
                continue
            a = bisect.bisect_left(s.ts, start_ms)
            b = bisect.bisect_right(s.ts, end_ms)
            if a < b:
                yield s.labels, s.ts[a:b], s.vals[a:b]
