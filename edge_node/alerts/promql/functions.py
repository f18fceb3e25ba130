"""The numeric kernels of the functions and aggregations, as Prometheus computes them
(in-order and compensated sums, the incremental mean, extrapolated rates, quantiles)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence


def sum_in_order(vals: Iterable[float]) -> float:
    """A plain sum, left to right (the sum aggregation: the same float result as Prometheus)."""
    total = 0.0
    for v in vals:  # in order, as Prometheus adds
        total += v
    return total


def kahan_inc(inc: float, total: float, c: float) -> tuple[float, float]:
    """One step of a compensated sum: ``(total, c)`` after adding ``inc``."""
    t = total + inc
    if abs(total) >= abs(inc):  # Neumaier's variant
        c += (total - t) + inc
    else:
        c += (inc - t) + total
    return t, c


def kahan_sum(vals: Sequence[float]) -> float:
    """Compensated sum, as Prometheus' sum_over_time."""
    total = c = 0.0
    for v in vals:
        total, c = kahan_inc(v, total, c)
    return total if math.isinf(total) else total + c


def incremental_mean(vals: Sequence[float], *, compensated: bool) -> float:
    """Prometheus' incremental mean (no overflow for large values), infinities kept;
    ``compensated`` as avg_over_time (Kahan-Neumaier), plain as the avg aggregation."""
    mean = count = c = 0.0
    for v in vals:
        count += 1
        if math.isinf(mean):
            if math.isinf(v) and (mean > 0) == (v > 0):
                continue
            if not math.isinf(v) and not math.isnan(v):
                continue
        if compensated:
            mean, c = kahan_inc(v / count - mean / count, mean, c)
        else:
            mean += v / count - mean / count
    return mean if math.isinf(mean) else mean + c


def extrapolated(ts: Sequence[int], vals: Sequence[float], end_ms: int, range_ms: int, *,
                 counter: bool, per_second: bool) -> float | None:
    """Prometheus' extrapolatedRate: rate / increase / delta over the samples in the range."""
    if len(ts) < 2:
        return None
    result = vals[-1] - vals[0]
    if counter:
        for a, b in itertools.pairwise(vals):
            if b < a:
                result += a
    start_ms = end_ms - range_ms
    to_start = (ts[0] - start_ms) / 1000
    to_end = (end_ms - ts[-1]) / 1000
    sampled = (ts[-1] - ts[0]) / 1000
    if sampled <= 0:
        return None
    avg_step = sampled / (len(ts) - 1)
    if counter and result > 0 and vals[0] >= 0:
        to_zero = sampled * (vals[0] / result)
        to_start = min(to_start, to_zero)
    threshold = avg_step * 1.1
    interval = sampled
    interval += to_start if to_start < threshold else avg_step / 2
    interval += to_end if to_end < threshold else avg_step / 2
    factor = interval / sampled  # the order of operations of Prometheus 2.4x, bit for bit
    if per_second:
        factor /= range_ms / 1000
    return result * factor


def quantile(phi: float, vals: list[float]) -> float:
    """Prometheus' quantile: linear interpolation between the closest ranks."""
    if not vals:
        return math.nan
    if phi < 0:
        return -math.inf
    if phi > 1:
        return math.inf
    s = sorted(vals)
    rank = phi * (len(s) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(s) - 1)
    w = rank - lo
    return s[lo] * (1 - w) + s[hi] * w

