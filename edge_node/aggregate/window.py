"""One window of one rule: the partial aggregates of its groups, and how rows add to them.

A :class:`Window` holds numpy arrays indexed by group (count, sum, min, max, mean and M2 for the
variance, the newest sample, counter increases, quantile sketches) or by the rule's dense series
index (presence for ``count_series``, the spans of rates). Rows are added in bulk, one numpy pass
per figure, and only the figures some output of the rule needs are kept up to date.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .arrays import F64, I64, grow
from .sketch import MIN_NORMAL, DDSketch, bucket_keys

if TYPE_CHECKING:
    from .rule import Rule

# sketch bucket codes: (group << 1 | negative) << _KEY_BITS | (bucket index + _KEY_OFFSET);
# a relative error >= 0.0001 keeps every float's bucket index within +-3.6M < _KEY_OFFSET
_KEY_BITS = 24
_KEY_OFFSET = 1 << 23
_KEY_MASK = (1 << _KEY_BITS) - 1


class Window:
    """Partial aggregates of one rule for one window: arrays indexed by group (or series)."""

    def __init__(self, start: int, rule: Rule) -> None:
        self.start = start
        self.rule = rule
        z = np.zeros(0, np.float64)
        self.cnt = np.zeros(0, np.int64)
        self.sum = z.copy()
        self.min = z.copy()
        self.max = z.copy()
        self.mean = z.copy()
        self.m2 = z.copy()
        self.last_ts = np.zeros(0, np.int64)
        self.last_v = z.copy()
        self.inc = z.copy()        # increase, first samples counted
        self.inc_prom = z.copy()   # increase_prometheus
        # per series (dense series index of the rule)
        self.present = np.zeros(0, np.bool_)
        self.r_inc = z.copy()
        self.r_prev = np.zeros(0, np.int64)
        self.r_last = np.zeros(0, np.int64)
        # quantile sketches of all groups, as sorted unique bucket codes and their counts (see
        # _KEY_BITS; the group is in the high bits), plus per-group totals; new codes gather in
        # _parts and are merged in bulk, so adding rows costs numpy work, not dict updates
        self.sk_n = np.zeros(0, np.int64)
        self.sk_zero = np.zeros(0, np.int64)
        self.sk_skip = np.zeros(0, np.int64)
        self.sk_lo = z.copy()
        self.sk_hi = z.copy()
        self.sk_codes = np.zeros(0, np.int64)
        self.sk_counts = np.zeros(0, np.int64)
        self._parts: list[tuple[I64, I64]] = []

    def ensure(self, groups: int, series: int) -> None:
        self.cnt = grow(self.cnt, groups, 0)
        self.sum = grow(self.sum, groups, 0.0)
        self.min = grow(self.min, groups, math.inf)
        self.max = grow(self.max, groups, -math.inf)
        self.mean = grow(self.mean, groups, 0.0)
        self.m2 = grow(self.m2, groups, 0.0)
        self.last_ts = grow(self.last_ts, groups, np.iinfo(np.int64).min)
        self.last_v = grow(self.last_v, groups, math.nan)
        self.inc = grow(self.inc, groups, 0.0)
        self.inc_prom = grow(self.inc_prom, groups, 0.0)
        self.present = grow(self.present, series, False)
        self.r_inc = grow(self.r_inc, series, 0.0)
        self.r_prev = grow(self.r_prev, series, -1)
        self.r_last = grow(self.r_last, series, -1)
        self.sk_n = grow(self.sk_n, groups, 0)
        self.sk_zero = grow(self.sk_zero, groups, 0)
        self.sk_skip = grow(self.sk_skip, groups, 0)
        self.sk_lo = grow(self.sk_lo, groups, math.inf)
        self.sk_hi = grow(self.sk_hi, groups, -math.inf)

    _ARRAYS = ("cnt", "sum", "min", "max", "mean", "m2", "last_ts", "last_v", "inc", "inc_prom",
               "present", "r_inc", "r_prev", "r_last", "sk_n", "sk_zero", "sk_skip", "sk_lo",
               "sk_hi", "sk_codes", "sk_counts")

    def add_codes(self, codes: I64, counts: I64) -> None:
        self._parts.append((codes, counts))
        if len(self._parts) >= 16:
            self.consolidate()

    def consolidate(self) -> None:
        if not self._parts:
            return
        codes = np.concatenate([self.sk_codes, *(c for c, _ in self._parts)])
        counts = np.concatenate([self.sk_counts, *(n for _, n in self._parts)])
        self._parts = []
        uniq, inv = np.unique(codes, return_inverse=True)
        self.sk_codes = uniq
        self.sk_counts = np.bincount(inv, weights=counts, minlength=uniq.shape[0]).astype(
            np.int64)

    def sketch(self, gid: int) -> DDSketch | None:
        """The quantile sketch of group ``gid`` (None when it has no values)."""
        self.consolidate()
        if gid >= self.sk_n.shape[0] or not (self.sk_n[gid] or self.sk_skip[gid]):
            return None
        sk = DDSketch(self.rule.quantile_error)
        a, b = np.searchsorted(self.sk_codes, [gid << (_KEY_BITS + 1),
                                               (gid + 1) << (_KEY_BITS + 1)])
        codes, counts = self.sk_codes[a:b], self.sk_counts[a:b]
        neg = ((codes >> _KEY_BITS) & 1).astype(np.bool_)
        keys = (codes & _KEY_MASK) - _KEY_OFFSET
        sk.pos = dict(zip(keys[~neg].tolist(), counts[~neg].tolist(), strict=True))
        sk.neg = dict(zip(keys[neg].tolist(), counts[neg].tolist(), strict=True))
        sk.count, sk.zero = int(self.sk_n[gid]), int(self.sk_zero[gid])
        sk.skipped = int(self.sk_skip[gid])
        sk.min, sk.max = float(self.sk_lo[gid]), float(self.sk_hi[gid])
        return sk

    # -- adding rows ------------------------------------------------------------------------------

    def add_basic(self, g: I64, i: I64, t: I64, v: F64, groups: int, outs: set[str]) -> None:
        """Update the window's per-group figures; only those some output needs.

        Args:
            g, i, t, v: per row, its group, series index, timestamp and value.
            groups: the rule's group count (:meth:`ensure` made room for it already).
            outs: the rule's outputs.
        """
        G = groups
        n_b = np.bincount(g, minlength=G)
        s_b = np.bincount(g, weights=v, minlength=G)
        self.cnt[:G] += n_b
        self.sum[:G] += s_b
        if "min" in outs:
            np.minimum.at(self.min, g, v)
        if "max" in outs:
            np.maximum.at(self.max, g, v)
        if "last" in outs:
            # the newest row of each group; on a tie the larger value wins, so the result
            # never depends on the order rows came in
            newest = np.full(G, np.iinfo(np.int64).min, np.int64)
            np.maximum.at(newest, g, t)
            cand = t == newest[g]
            top = np.full(G, -math.inf)
            np.maximum.at(top, g[cand], v[cand])
            lg = np.flatnonzero(n_b)
            lt, lv, old_t, old_v = newest[lg], top[lg], self.last_ts[lg], self.last_v[lg]
            newer = (lt > old_t) | ((lt == old_t) & ~(lv < old_v))
            self.last_ts[lg[newer]] = lt[newer]
            self.last_v[lg[newer]] = lv[newer]
        if "stddev" in outs or "stdvar" in outs:
            # Chan et al.'s parallel merge of (count, mean, M2)
            touched = n_b > 0
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                mean_b = np.where(touched, s_b / np.maximum(n_b, 1), 0.0)
                m2_b = np.bincount(g, weights=(v - mean_b[g]) ** 2, minlength=G)
                n_a = self.cnt[:G] - n_b
                n = self.cnt[:G].astype(np.float64)
                delta = mean_b - self.mean[:G]
                frac = np.where(touched, n_b / np.maximum(n, 1), 0.0)
                self.mean[:G] = np.where(touched, self.mean[:G] + delta * frac, self.mean[:G])
                self.m2[:G] = np.where(touched, self.m2[:G] + m2_b + delta ** 2 * n_a * frac,
                                       self.m2[:G])
        if "count_series" in outs:
            self.present[i] = True
        if "quantiles" in outs:
            self.add_sketches(g, v, G)

    def add_sketches(self, g: I64, v: F64, groups: int) -> None:
        """Add to every group's sketch at once (bucket codes counted with ``np.unique``)."""
        qe = self.rule.quantile_error
        keys, neg, ok = bucket_keys(v, math.log((1 + qe) / (1 - qe)))
        zero = ok & (np.abs(v) < MIN_NORMAL)
        buck = ok & ~zero
        codes = ((g[buck] << 1 | neg[buck]) << _KEY_BITS) | (keys[buck] + _KEY_OFFSET)
        uc, counts = np.unique(codes, return_counts=True)
        self.add_codes(uc, counts.astype(np.int64))
        G = groups
        n_ok = np.bincount(g[ok], minlength=G)
        self.sk_n[:G] += n_ok
        self.sk_zero[:G] += np.bincount(g[zero], minlength=G)
        self.sk_skip[:G] += np.bincount(g, minlength=G) - n_ok
        np.minimum.at(self.sk_lo, g[ok], v[ok])
        np.maximum.at(self.sk_hi, g[ok], v[ok])

    def add_rates(self, i: I64, t: I64, inc: F64, prev: I64) -> None:
        """Add counter rows to the per-series rate spans: ``inc`` their increases, ``prev`` the
        timestamp of each series' previous sample."""
        if not i.size:
            return
        np.add.at(self.r_inc, i, inc)
        np.maximum.at(self.r_last, i, t)
        # the previous sample of the series' first row in this window
        order = np.lexsort((t, i))
        si = i[order]
        head = np.ones(si.shape[0], np.bool_)
        head[1:] = si[1:] != si[:-1]
        hs, hp = si[head], prev[order][head]
        unset = self.r_prev[hs] < 0
        self.r_prev[hs[unset]] = hp[unset]

    # -- persistence ------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        self.consolidate()
        d: dict[str, Any] = {"start": self.start}
        for a in self._ARRAYS:
            arr = getattr(self, a)
            d[a] = [str(arr.dtype), arr.tobytes()]
        return d

    @classmethod
    def from_state(cls, d: Mapping[str, Any], rule: Rule) -> Window:
        w = cls(int(d["start"]), rule)
        for a in cls._ARRAYS:
            dtype, raw = d[a]
            setattr(w, a, np.frombuffer(raw, dtype=np.dtype(dtype)).copy())
        return w
