"""The types central's stages share: who sent a batch, what applying it needs, the routed job.

:class:`NodeInfo` is an authenticated node, as the state store's registry knows it.
:class:`Pending` is a batch the state store has not applied yet: its full series dictionary and
the sinks that already took it (:func:`pending_from` resolves it). :class:`Job` is one batch
ready for the sinks: its rows grouped by series (:class:`Grouping`) and each series' trusted
labels (:class:`SeriesTable`). The router builds jobs, the sinks and stores read them; this
module imports neither, so the dependency runs one way: router -> model <- sinks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edge_node.wire import Batch

from .errors import MissingSeries

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

DAY_MS = 86_400_000


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    org: str
    created_ms: int
    revoked_ms: int | None = None
    site: str = ""


@dataclass
class Pending:
    """A batch not applied yet: its full series dictionary and the sinks that already took it."""

    labels: dict[int, dict[str, str]]
    new_defs: list[tuple[int, dict[str, str]]]
    done_sinks: set[str] = field(default_factory=set)


def pending_from(known: dict[int, dict[str, str]], batch: Batch, sids: list[int],
                 done_sinks: set[str]) -> Pending:
    """Resolve ``sids`` against the stored dictionary ``known`` plus the batch's definitions.

    Raises:
        MissingSeries: some sid is defined nowhere (the edge resends definitions on 409).
    """
    new_defs = [(sid, lbl) for sid, lbl in batch.series_defs if sid not in known]
    if all(map(known.__contains__, sids)):  # the common case: every series defined before
        return Pending(known, new_defs, done_sinks)
    unknown = set(sids).difference(known)
    defs = dict(new_defs)
    missing = sorted(unknown.difference(defs))
    if missing:
        raise MissingSeries(missing)
    return Pending({**known, **defs}, new_defs, done_sinks)


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


@dataclass
class Grouping:
    """A batch's rows grouped by series in time order: series ``sids[i]`` owns rows
    ``starts[i]:ends[i]`` after permuting by ``order`` (``None``: already in that order)."""

    order: I64 | None
    sids: I64
    starts: I64
    ends: I64


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
    #: rows a backend does not take, by (sink, reason) (Loki: too old, too far ahead, refused)
    refused: dict[tuple[str, str], int] = field(default_factory=dict)

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
        """(device, site, first ts, last ts) of every device with rows in this batch; never
        later than ``now_ms`` (a device clock running ahead must not push its last-seen time,
        nor its online state, into the future)."""
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
        if self.now_ms:
            np.minimum(first, self.now_ms, out=first)
            np.minimum(last, self.now_ms, out=last)
        devs, sites = self.table.devices, self.table.sites
        return [(devs[c], sites[c], f, la) for c, f, la in
                zip(uniq.tolist(), first.tolist(), last.tolist(), strict=True)]
