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


class SeriesTable:
    """One (node, epoch)'s series as central writes them: trusted labels, and each series'
    device as a small integer code (so per-batch device bookkeeping is vectorised)."""

    def __init__(self) -> None:
        self.labels: dict[int, dict[str, str]] = {}
        self.dev_code = np.full(1024, -1, dtype=np.int64)  # indexed by sid; -1: no device
        self.devices: list[str] = []
        self.sites: list[str] = []
        self._dev_index: dict[str, int] = {}

    def add(self, sid: int, labels: dict[str, str]) -> None:
        self.labels[sid] = labels
        dev = labels.get("device")
        if dev is None or sid < 0:
            return
        code = self._dev_index.get(dev)
        if code is None:
            code = self._dev_index[dev] = len(self.devices)
            self.devices.append(dev)
            self.sites.append(labels.get("site", ""))
        if sid >= self.dev_code.shape[0]:
            grown = np.full(max(sid + 1, 2 * self.dev_code.shape[0]), -1, dtype=np.int64)
            grown[:self.dev_code.shape[0]] = self.dev_code
            self.dev_code = grown
        self.dev_code[sid] = code

    def codes(self, sids: I64) -> I64:
        inside = sids < self.dev_code.shape[0]
        out = np.full(sids.shape[0], -1, dtype=np.int64)
        out[inside] = self.dev_code[sids[inside]]
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


@dataclass
class Grouping:
    """A batch's rows grouped by series in time order: series ``sids[i]`` owns rows
    ``starts[i]:ends[i]`` after permuting by ``order`` (``None``: already in that order)."""

    order: I64 | None
    sids: I64
    starts: I64
    ends: I64


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


@dataclass
class Job:
    """One batch, ready for the sinks: rows grouped by series, each group sorted by time.

    Series ``sids[i]`` owns rows ``starts[i]:ends[i]`` of the columns ``ts`` / ``values`` /
    ``lines``; ``labels`` maps (at least) every sid of the batch to its trusted labels.
    """

    node: NodeInfo
    epoch: str
    seq: int
    kind: str
    sids: list[int]
    starts: list[int]
    ends: list[int]
    ts: I64
    table: SeriesTable
    grouping: Grouping
    values: F64 | None = None
    lines: list[bytes] | None = None
    now_ms: int = 0
    #: rows each sink skipped because they are older than its retention, by sink name
    expired: dict[str, int] = field(default_factory=dict)
    #: rows a sink cannot represent (NaN/±Inf for VictoriaMetrics' import), by sink name
    unrepresentable: dict[str, int] = field(default_factory=dict)

    @property
    def labels(self) -> dict[int, dict[str, str]]:
        return self.table.labels

    def sid_column(self) -> I64:
        """The series id of every row (in the job's row order)."""
        g = self.grouping
        return np.repeat(g.sids, g.ends - g.starts)

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
        return {d: (lo, hi) for d, _, lo, hi in self.device_rows()}

    def device_rows(self) -> list[tuple[str, str, int, int]]:
        """(device, site, first ts, last ts) of every device with rows in this batch."""
        if not self.sids:
            return []
        g = self.grouping
        codes = self.table.codes(g.sids)
        has = codes >= 0
        if not bool(has.any()):
            return []
        lo = self.ts[g.starts][has]
        hi = self.ts[g.ends - 1][has]
        codes = codes[has]
        uniq, inv = np.unique(codes, return_inverse=True)
        first = np.full(uniq.shape[0], np.iinfo(np.int64).max, dtype=np.int64)
        last = np.full(uniq.shape[0], np.iinfo(np.int64).min, dtype=np.int64)
        np.minimum.at(first, inv, lo)
        np.maximum.at(last, inv, hi)
        devs, sites = self.table.devices, self.table.sites
        return [(devs[c], sites[c], f, la) for c, f, la in
                zip(uniq.tolist(), first.tolist(), last.tolist(), strict=True)]


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
