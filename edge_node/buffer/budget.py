"""The disk-budget policy (sans-IO): which segments go when the buffer outgrows its budget.

Order, until the buffer fits: first raw metrics that stream-aggregation rollups already
summarise (every row covered by a rule whose windows over them have closed), counted as
``compacted``: the site keeps their rollups. Then the oldest logs, then metrics, then rollups.
Heartbeats and alerts are never dropped. Segments being sent right now are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

#: drop order under disk pressure, lowest priority first; heartbeats and alerts never go
DROP_ORDER = ("logs", "metrics", "rollups")
#: the key of :attr:`Drops.rows` for summarised raw metrics removed first
COMPACTED = "compacted"


@dataclass(frozen=True)
class Candidate:
    """A segment the policy may drop, oldest first within its kind."""

    seq: int
    n: int      # rows
    size: int   # bytes


@dataclass
class Drops:
    """The policy's decision: segments to delete and rows removed per kind (or ``compacted``)."""

    seqs: list[int] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)


def plan_drops(used: int, budget: int, compactable: Sequence[Candidate],
               by_kind: Mapping[str, Sequence[Candidate]], exclude: Iterable[int] = ()) -> Drops:
    """Which segments to delete so that ``used`` bytes fit ``budget``.

    Args:
        used: bytes the buffer occupies now.
        budget: bytes it may occupy.
        compactable: summarised raw metric segments the rollups cover, oldest first.
        by_kind: every segment of each kind in :data:`DROP_ORDER`, oldest first.
        exclude: seqs that must stay (in flight to central).
    """
    out = Drops()
    skip = set(exclude)
    groups: list[tuple[str, Sequence[Candidate]]] = [(COMPACTED, compactable)]
    groups += [(kind, by_kind.get(kind, ())) for kind in DROP_ORDER]
    for key, cands in groups:
        for c in cands:
            if used <= budget:
                return out
            if c.seq in skip:
                continue
            out.seqs.append(c.seq)
            skip.add(c.seq)  # a compacted segment is also among its kind's
            out.rows[key] = out.rows.get(key, 0) + c.n
            used -= c.size
    return out
