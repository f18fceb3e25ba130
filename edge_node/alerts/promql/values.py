"""What evaluation reads and yields: series labels, samples, the store it queries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ...model import NAME_LABEL
from ...selector import Matcher

Labels = tuple[tuple[str, str], ...]


class Queryable(Protocol):
    """Where the evaluator reads samples from (the edge's in-memory recent store)."""

    def select(self, matchers: Sequence[Matcher], start_ms: int, end_ms: int
               ) -> Iterable[tuple[Labels, Sequence[int], Sequence[float]]]:
        """Series matching ``matchers`` with their samples in [start_ms, end_ms], in time
        order, the series in label order (as Prometheus iterates them: sums add up in the
        same order); series without samples there may be left out."""
        ...


@dataclass
class Sample:
    labels: Labels
    value: float


def drop_name(labels: Labels) -> Labels:
    """``labels`` without the metric name (functions and operators drop it)."""
    if labels and labels[0][0] == NAME_LABEL:  # the usual case: sorted, lower-case names
        return labels[1:]
    return tuple(kv for kv in labels if kv[0] != NAME_LABEL)

