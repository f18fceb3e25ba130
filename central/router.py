"""Which data goes where, and the labels it carries there (sans-IO).

A decoded batch becomes a :class:`Job`: its rows grouped by series (sorted by time within each
series), and for each series the labels central will write. Those labels are *trusted*: ``org``
and ``node`` always come from the authenticated node key, never from the payload; a payload label
with one of those names is kept as ``exported_org`` / ``exported_node`` (Prometheus'
``honor_labels: false`` convention), so no device can write into another organisation.
``site`` is the device's own ``site`` label when it has one, else the site the node was
registered with; ``device`` is the device's label.

The router decides the sinks: metrics go to VictoriaMetrics (and 1-minute rollups to ClickHouse),
logs to Loki, everything updates Valkey's online state; whatever kind has no external sink is kept
by the state store (embedded SQLite or PostgreSQL). Heartbeats and the device registry always live
in the state store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edge_node.wire import Batch, Columns

from .sinks.base import NodeInfo

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

TRUSTED = ("org", "node")
DAY_MS = 86_400_000


def trusted_labels(node: NodeInfo, raw: dict[str, str]) -> dict[str, str]:
    """The labels central writes for a series the node defined as ``raw``."""
    out: dict[str, str] = {}
    for k, v in raw.items():
        if k in TRUSTED:
            out["exported_" + k] = v
        else:
            out[k] = v
    out["org"] = node.org
    out["node"] = node.node_id
    if "site" not in out and node.site:
        out["site"] = node.site
    return out


@dataclass
class Job:
    """One batch, ready for the sinks: rows grouped by series, each group sorted by time.

    ``order`` permutes the batch's rows into that grouping; series ``sids[i]`` owns rows
    ``starts[i]:ends[i]`` of the permuted columns ``ts`` / ``values`` / ``lines``.
    """

    node: NodeInfo
    epoch: str
    seq: int
    kind: str
    sids: list[int]
    starts: list[int]
    ends: list[int]
    ts: I64
    labels: dict[int, dict[str, str]]
    values: F64 | None = None
    lines: list[bytes] | None = None
    now_ms: int = 0
    #: rows each sink skipped because they are older than its retention, by sink name
    expired: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.ts.shape[0])

    @property
    def token(self) -> str:
        """Identity of this batch for sinks' own insert deduplication."""
        return f"{self.node.node_id}:{self.epoch}:{self.seq}"

    def series(self) -> list[tuple[int, int, int]]:
        return list(zip(self.sids, self.starts, self.ends, strict=True))

    def cutoff(self, retention_days: int) -> int:
        """Oldest timestamp (ms) a sink with ``retention_days`` keeps; 0 keeps everything."""
        return self.now_ms - retention_days * DAY_MS if retention_days > 0 else 0

    def devices(self) -> dict[str, tuple[int, int]]:
        """device -> (first ts, last ts) over the rows of series that carry a device label."""
        out: dict[str, tuple[int, int]] = {}
        for sid, b, e in self.series():
            dev = self.labels[sid].get("device")
            if dev is None or b == e:
                continue
            lo, hi = int(self.ts[b]), int(self.ts[e - 1])
            seen = out.get(dev)
            out[dev] = (lo, hi) if seen is None else (min(seen[0], lo), max(seen[1], hi))
        return out


def make_job(node: NodeInfo, batch: Batch, cols: Columns,
             labels: dict[int, dict[str, str]], now_ms: int) -> Job:
    """Group ``cols`` by series and time; ``labels`` maps every sid in ``cols`` (raw labels)."""
    order = np.lexsort((cols.ts, cols.series))
    s_sorted = cols.series[order]
    uniq, starts = np.unique(s_sorted, return_index=True)
    ends = np.append(starts[1:], s_sorted.shape[0])
    sids = uniq.tolist()
    job = Job(node=node, epoch=batch.epoch, seq=batch.seq, kind=batch.kind, sids=sids,
              starts=starts.tolist(), ends=ends.tolist(), ts=cols.ts[order],
              labels={sid: trusted_labels(node, labels[sid]) for sid in sids}, now_ms=now_ms)
    if cols.values is not None:
        job.values = cols.values[order]
    if cols.lines is not None:
        lines = cols.lines
        job.lines = [lines[i] for i in order.tolist()]
    return job
