"""One-minute rollups of a batch's samples, per series (sans-IO).

Each batch yields partial aggregates (count, sum, min, max, last) per series and minute. Partials
are mergeable (sum the counts and sums, min the mins, max the maxes, last by timestamp), so a
minute whose samples arrive in several batches is exact once its partials are merged, which is
what the ClickHouse reporting view does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .model import Job

WINDOW_MS = 60_000


@dataclass
class Rollups:
    """Parallel arrays, one entry per (series, minute) present in the batch."""

    sids: npt.NDArray[np.int64]
    window_ms: npt.NDArray[np.int64]
    count: npt.NDArray[np.int64]
    sum: npt.NDArray[np.float64]
    min: npt.NDArray[np.float64]
    max: npt.NDArray[np.float64]
    last: npt.NDArray[np.float64]
    last_ts: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.sids.shape[0])


def minute_rollups(job: Job, cutoff_ms: int = 0) -> Rollups:
    """Roll ``job`` (metrics, grouped by series and sorted by time) up per series and minute.

    Non-finite values and samples older than ``cutoff_ms`` are left out.
    """
    assert job.values is not None
    sid_col = job.sid_column()
    keep = np.isfinite(job.values) & (job.ts >= cutoff_ms)
    sid_col, ts, vals = sid_col[keep], job.ts[keep], job.values[keep]
    if ts.shape[0] == 0:
        z = np.zeros(0, np.int64)
        f = np.zeros(0, np.float64)
        return Rollups(z, z, z, f, f, f, f, z)
    win = ts - np.mod(ts, WINDOW_MS)
    change = np.flatnonzero((sid_col[1:] != sid_col[:-1]) | (win[1:] != win[:-1])) + 1
    starts = np.concatenate(([0], change))
    ends = np.append(change, ts.shape[0])
    return Rollups(
        sids=sid_col[starts], window_ms=win[starts], count=ends - starts,
        sum=np.add.reduceat(vals, starts), min=np.minimum.reduceat(vals, starts),
        max=np.maximum.reduceat(vals, starts), last=vals[ends - 1], last_ts=ts[ends - 1])
