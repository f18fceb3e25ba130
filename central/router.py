"""Which data goes where, and the labels it carries there (sans-IO).

A decoded batch becomes a :class:`~central.model.Job`: its rows grouped by series (sorted by time
within each series), and for each series the labels central will write. Those labels are
*trusted*: ``org`` and ``node`` always come from the authenticated node key, never from the
payload; a payload label with one of those names is kept as ``exported_org`` / ``exported_node``
(Prometheus' ``honor_labels: false`` convention), so no device can write into another
organisation. ``site`` is the device's own ``site`` label when it has one, else the site the node
was registered with; ``device`` is the device's label.

The router decides the sinks: metrics go to VictoriaMetrics (and 1-minute rollups to ClickHouse),
logs to Loki, everything updates Valkey's online state; whatever kind has no external sink is kept
by the state store (embedded SQLite or PostgreSQL). Heartbeats and the device registry always live
in the state store.
"""

from __future__ import annotations

import numpy as np

from edge_node.wire import Batch, Columns

from .model import Grouping, Job, NodeInfo, SeriesTable

TRUSTED = ("org", "node")


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


class LabelCache:
    """:class:`SeriesTable` per (node, epoch), computed once: definitions never change.

    Bounded: past ``max_series`` entries it starts afresh (entries are cheap to recompute).
    """

    def __init__(self, max_series: int = 4_000_000) -> None:
        self.max_series = max_series
        self.size = 0
        self._by_key: dict[tuple[str, str, str, str], SeriesTable] = {}

    def resolve(self, node: NodeInfo, epoch: str, sids: list[int],
                raw: dict[int, dict[str, str]]) -> SeriesTable:
        key = (node.node_id, node.org, node.site, epoch)
        table = self._by_key.get(key)
        if table is None:
            if self.size >= self.max_series:
                self._by_key.clear()
                self.size = 0
            table = self._by_key[key] = SeriesTable()
        if all(map(table.labels.__contains__, sids)):
            return table
        missing = set(sids).difference(table.labels)
        for sid in sorted(missing):
            table.add(sid, trusted_labels(node, raw[sid]))
        self.size += len(missing)
        return table


def group(cols: Columns) -> Grouping:
    ser, ts = cols.series, cols.ts
    same = ser[1:] == ser[:-1]
    if bool(np.all((ser[1:] > ser[:-1]) | (same & (ts[1:] >= ts[:-1])))):
        order = None  # segments usually arrive grouped by series and in time order
        s_sorted = ser
    else:
        order = np.lexsort((ts, ser))
        s_sorted = ser[order]
    change = np.flatnonzero(s_sorted[1:] != s_sorted[:-1]) + 1
    starts = np.concatenate(([0], change)).astype(np.int64) if s_sorted.shape[0] else change
    return Grouping(order, s_sorted[starts], starts, np.append(starts[1:], s_sorted.shape[0]))


def make_job(node: NodeInfo, batch: Batch, cols: Columns,
             labels: dict[int, dict[str, str]], now_ms: int,
             cache: LabelCache | None = None, grouping: Grouping | None = None) -> Job:
    """Group ``cols`` by series and time; ``labels`` maps every sid in ``cols`` (raw labels)."""
    g = grouping or group(cols)
    sids = g.sids.tolist()
    table = (cache or LabelCache()).resolve(node, batch.epoch, sids, labels)
    order = g.order
    job = Job(node=node, epoch=batch.epoch, seq=batch.seq, kind=batch.kind, sids=sids,
              starts=g.starts.tolist(), ends=g.ends.tolist(),
              ts=cols.ts if order is None else cols.ts[order], table=table, grouping=g,
              now_ms=now_ms)
    if cols.values is not None:
        job.values = cols.values if order is None else cols.values[order]
    if cols.lines is not None:
        lines = cols.lines
        job.lines = lines if order is None else [lines[i] for i in order.tolist()]
    return job
