"""Outputs: what a closed window emits, as rows of series keys, window-end timestamps, values.

:func:`emit_window` turns one :class:`~edge_node.aggregate.window.Window` and its rule's state
into :class:`Emitted` rows, one per group and output (``quantiles``: per phi too), named
``<metric>:<suffix>_<output>`` with the group's labels. The running ``total`` outputs carry
across windows: emitting a window adds its increases to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..model import NAME_LABEL, SeriesKey

if TYPE_CHECKING:
    from .state import RuleState
    from .window import Window


@dataclass
class Emitted:
    """Output rows of closed windows: series keys, timestamps (window ends), values."""

    keys: list[SeriesKey] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def add(self, key: SeriesKey, ts: int, value: float) -> None:
        self.keys.append(key)
        self.ts.append(ts)
        self.values.append(value)

    def extend(self, keys: list[SeriesKey], ts: int, values: list[float]) -> None:
        self.keys += keys
        self.ts += [ts] * len(keys)
        self.values += values

    def __len__(self) -> int:
        return len(self.values)


def output_keys(st: RuleState, gids: list[int], output: str, q: float = -1.0
                ) -> list[SeriesKey]:
    """Output series keys of ``gids`` for ``output`` (made once per group and output)."""
    lst = st.out_keys.setdefault((output, q), [])
    if len(lst) < len(st.groups):
        suffix = f"{st.rule.suffix}_{output}"
        for gid in range(len(lst), len(st.groups)):
            labels = dict(st.groups[gid])
            labels[NAME_LABEL] = f"{labels.get(NAME_LABEL, '')}:{suffix}"
            if q >= 0:
                labels["quantile"] = f"{q:g}"
            lst.append(tuple(sorted(labels.items())))
    return [lst[g] for g in gids]


def emit_window(st: RuleState, win: Window, end: int, out: Emitted) -> None:
    """Append the outputs of window ``win`` (ending at ``end``) to ``out``."""
    r = st.rule
    G, S = len(st.groups), len(st.idx_sid)
    win.ensure(G, S)
    cnt = win.cnt[:G]
    has_a = np.flatnonzero(cnt > 0)
    has = has_a.tolist()
    c = cnt[has_a].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        var = np.maximum(win.m2[has_a] / c, 0.0)
    for o in r.outputs:
        if o == "count_samples":
            vals = c
        elif o == "sum_samples":
            vals = win.sum[has_a]
        elif o == "min":
            vals = win.min[has_a]
        elif o == "max":
            vals = win.max[has_a]
        elif o == "avg":
            vals = win.sum[has_a] / c
        elif o == "last":
            vals = win.last_v[has_a]
        elif o == "stddev":
            vals = np.sqrt(var)
        elif o == "stdvar":
            vals = var
        elif o == "count_series":
            per_group = np.bincount(st.idx_gid[:S][win.present[:S]], minlength=G)
            vals = per_group[has_a].astype(np.float64)
        elif o == "quantiles":
            sks = [(g, win.sketch(g)) for g in has if win.sk_n[g] > 0]
            for q in r.quantiles:
                out.extend(output_keys(st, [g for g, _ in sks], o, q), end,
                           [sk.quantile(q) for _, sk in sks if sk is not None])
            continue
        else:
            continue  # counter outputs: below
        out.extend(output_keys(st, has, o), end, vals.tolist())
    if st.counters:
        emit_counters(st, win, end, out)


def emit_counters(st: RuleState, win: Window, end: int, out: Emitted) -> None:
    """The counter outputs of ``win``; adds its increases to the running totals first."""
    r = st.rule
    G, S = len(st.groups), len(st.idx_sid)
    outs = r.outputs
    alive_a = np.flatnonzero(st.g_seen[:G] >= end - r.staleness_ms)
    alive = alive_a.tolist()
    st.g_total[:G] += win.inc[:G]
    st.g_total_prom[:G] += win.inc_prom[:G]
    # keep totals exact: restart them before float64 loses integer precision
    for tot in (st.g_total, st.g_total_prom):
        tot[:G][np.abs(tot[:G]) >= 2.0 ** 53] = 0.0
    arrays = {"increase": win.inc, "increase_prometheus": win.inc_prom,
              "total": st.g_total, "total_prometheus": st.g_total_prom}
    for o in outs:
        if o in arrays:
            out.extend(output_keys(st, alive, o), end, arrays[o][alive_a].tolist())
    if st.rates:
        span = (win.r_last[:S] - win.r_prev[:S]) / 1000.0
        ok = (win.r_prev[:S] >= 0) & (span > 0)
        rate = np.where(ok, win.r_inc[:S] / np.where(ok, span, 1.0), 0.0)
        gids = st.idx_gid[:S]
        rsum = np.bincount(gids[ok], weights=rate[ok], minlength=G)
        rcnt = np.bincount(gids[ok], minlength=G)
        got_a = np.flatnonzero(rcnt > 0)
        got = got_a.tolist()
        if "rate_sum" in outs:
            out.extend(output_keys(st, got, "rate_sum"), end, rsum[got_a].tolist())
        if "rate_avg" in outs:
            out.extend(output_keys(st, got, "rate_avg"), end,
                       (rsum[got_a] / rcnt[got_a]).tolist())
