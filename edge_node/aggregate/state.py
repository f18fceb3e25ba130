"""One rule's whole state: its series and groups, counter memory, open windows, persistence.

A :class:`RuleState` maps the buffer's series ids to a dense index of the series the rule
matches (resolved once per series, from its labels) and each to its group. Per series it keeps
the last counter sample (for increases and rates, forgotten after ``staleness``), per group the
newest timestamp and the running totals, and the open :class:`~edge_node.aggregate.window.Window`
of every window start. :meth:`RuleState.ingest` routes rows into their windows (or counts them
late); :meth:`RuleState.flush` closes the windows due, through
:func:`~edge_node.aggregate.outputs.emit_window`. The whole state round-trips through
:meth:`RuleState.to_state` / :meth:`RuleState.from_state` (plain values and bytes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..model import NAME_LABEL, SeriesKey
from ..rollup_names import COUNTER_OUTPUTS
from .arrays import F64, I64, B, grow
from .outputs import Emitted, emit_window
from .rule import STATE_VERSION, Rule
from .window import Window

#: the labels of a buffer series id (None for an id the buffer does not know)
LabelsOf = Callable[[int], SeriesKey | None]

_UNKNOWN = -2
_NO_MATCH = -1


class RuleState:
    """One rule's whole state; :meth:`ingest` and :meth:`flush` are the only mutators."""

    def __init__(self, rule: Rule, created_ms: int) -> None:
        self.rule = rule
        self.created_ms = created_ms
        self.closed_until = 0        # windows ending at or before this are emitted
        self.sid2idx = np.zeros(0, np.int64)   # buffer sid -> series index, -1 no match, -2 ?
        self.idx_sid: list[int] = []
        self.idx_gid = np.zeros(0, np.int64)
        self.groups: list[SeriesKey] = []
        self.group_first: list[int] = []  # a member series of each group (restores its key)
        self.group_index: dict[SeriesKey, int] = {}
        # per series: counter state
        self.s_last_v = np.zeros(0, np.float64)
        self.s_last_ts = np.zeros(0, np.int64)   # -1: no state (new or stale)
        # per group
        self.g_seen = np.zeros(0, np.int64)      # newest sample timestamp
        self.g_total = np.zeros(0, np.float64)
        self.g_total_prom = np.zeros(0, np.float64)
        self.windows: dict[int, Window] = {}
        self.samples = 0
        self.late = 0
        self.emitted = 0
        self.last_output: dict[str, Any] = {}
        self.out_keys: dict[tuple[str, float], list[SeriesKey]] = {}
        self._name_ok: dict[str, bool] = {}
        self.closed_now = False  # the last flush closed a window (its state is worth saving)
        rule_outs = set(rule.outputs)
        self._outs = rule_outs
        self.counters = bool(rule_outs & set(COUNTER_OUTPUTS))
        self.rates = bool(rule_outs & {"rate_sum", "rate_avg"})

    # -- series / groups -------------------------------------------------------------------------

    def lookup(self, sids: I64, labels_of: LabelsOf,
               memo: dict[int, tuple[SeriesKey, dict[str, str]] | None] | None = None) -> I64:
        """Series index of each sid (-1 when the rule does not match it).

        ``memo`` shares label lookups between the rules of one ingest call.
        """
        top = int(sids.max()) + 1 if sids.size else 0
        if top > self.sid2idx.shape[0]:
            self.sid2idx = grow(self.sid2idx, top, _UNKNOWN)
        idx = self.sid2idx[sids]
        unknown = idx == _UNKNOWN
        if unknown.any():
            memo = {} if memo is None else memo
            for sid in np.unique(sids[unknown]).tolist():
                self.sid2idx[sid] = self._resolve(sid, labels_of, memo)
            idx = self.sid2idx[sids]
        return idx

    def _resolve(self, sid: int, labels_of: LabelsOf,
                 memo: dict[int, tuple[SeriesKey, dict[str, str]] | None]) -> int:
        if sid in memo:
            found = memo[sid]
        else:
            key = labels_of(sid)
            found = memo[sid] = None if key is None else (key, dict(key))
        if found is None:
            return _NO_MATCH
        key, labels = found
        name = labels.get(NAME_LABEL, "")
        ok = self._name_ok.get(name)
        if ok is None:
            ok = self._name_ok[name] = any(s.matches_name(name) for s in self.rule.match)
        if not ok or not self.rule.matches(labels):
            return _NO_MATCH
        gkey = self.rule.group_key(key)
        gid = self.group_index.get(gkey)
        if gid is None:
            gid = len(self.groups)
            self.groups.append(gkey)
            self.group_first.append(sid)
            self.group_index[gkey] = gid
            self.g_seen = grow(self.g_seen, gid + 1, -1)
            self.g_total = grow(self.g_total, gid + 1, 0.0)
            self.g_total_prom = grow(self.g_total_prom, gid + 1, 0.0)
        i = len(self.idx_sid)
        self.idx_sid.append(sid)
        self.idx_gid = grow(self.idx_gid, i + 1, -1)
        self.idx_gid[i] = gid
        self.s_last_v = grow(self.s_last_v, i + 1, math.nan)
        self.s_last_ts = grow(self.s_last_ts, i + 1, -1)
        return i

    @property
    def series_count(self) -> int:
        return len(self.idx_sid)

    # -- ingest ------------------------------------------------------------------------------------

    def window_of(self, ts: I64) -> I64:
        iv = self.rule.interval_ms
        return ts - np.mod(ts, iv)

    def ingest(self, sids: I64, ts: I64, values: F64, now_ms: int, labels_of: LabelsOf,
               memo: dict[int, tuple[SeriesKey, dict[str, str]] | None] | None = None
               ) -> tuple[B, B]:
        """Add rows (NaN values already removed); returns (aggregated, late) row masks."""
        n = sids.shape[0]
        aggregated = np.zeros(n, np.bool_)
        late = np.zeros(n, np.bool_)
        if n == 0:
            return aggregated, late
        idx = self.lookup(sids, labels_of, memo)
        matched = idx >= 0
        if not matched.any():
            return aggregated, late
        rule = self.rule
        win = self.window_of(ts)
        # late: the window was emitted already, or its close time has passed
        late = matched & ((ts < self.closed_until)
                          | (win + rule.interval_ms + rule.grace_ms <= now_ms))
        ok = matched & ~late
        self.late += int(late.sum())
        if not ok.any():
            return aggregated, late
        aggregated = ok
        i, t, v, w = idx[ok], ts[ok], values[ok], win[ok]
        g = self.idx_gid[i]
        self.samples += int(i.shape[0])
        if self.counters:
            # a group silent for longer than staleness starts its totals again
            G0 = len(self.groups)
            first_t = np.full(G0, np.iinfo(np.int64).max, np.int64)
            np.minimum.at(first_t, g, t)
            seen = self.g_seen[:G0]
            touched = np.zeros(G0, np.bool_)
            touched[g] = True
            gap = touched & (seen >= 0) & (first_t - seen > rule.staleness_ms)
            self.g_total[:G0][gap] = 0.0
            self.g_total_prom[:G0][gap] = 0.0
        np.maximum.at(self.g_seen, g, t)
        G, S = len(self.groups), len(self.idx_sid)
        if self.counters:
            inc, inc_prom, prev_ts, has_row = self._counter_deltas(i, t, v)
        for start in np.unique(w).tolist():
            sel = w == start
            window = self.windows.get(start)
            if window is None:
                window = self.windows[start] = Window(start, rule)
            window.ensure(G, S)
            window.add_basic(g[sel], i[sel], t[sel], v[sel], G, self._outs)
            if self.counters:
                cs = sel & has_row
                np.add.at(window.inc, g[cs], inc[cs])
                np.add.at(window.inc_prom, g[cs], inc_prom[cs])
                if self.rates:
                    window.add_rates(i[cs], t[cs], inc_prom[cs], prev_ts[cs])
        return aggregated, late

    def _counter_deltas(self, i: I64, t: I64, v: F64) -> tuple[F64, F64, I64, B]:
        """Per row: increase (first sample counted), increase (first sample as base), the
        timestamp of the series' previous sample, and whether the row counts at all (rows
        older than the series' last sample are out of order and skipped, like vmagent)."""
        rule = self.rule
        n = i.shape[0]
        order = np.lexsort((t, i))
        si, st = i[order], t[order]
        if n > 1 and bool(((si[1:] == si[:-1]) & (st[1:] == st[:-1])).any()):
            # a series with several samples at one timestamp: ascending values, whatever the
            # order they came in (rare, so the cheaper sort above is the common path)
            order = np.lexsort((v, t, i))
        si, st, sv = i[order], t[order], v[order]
        stored_ts = self.s_last_ts[si]
        valid = st >= stored_ts  # stored_ts is -1 without state
        first = np.ones(n, np.bool_)
        # the previous *valid* row of the same series
        vi = np.flatnonzero(valid)
        prev_v = np.full(n, math.nan)
        prev_ts = np.full(n, -1, np.int64)
        if vi.size:
            same = np.zeros(vi.size, np.bool_)
            same[1:] = si[vi[1:]] == si[vi[:-1]]
            rows = vi[1:][same[1:]]
            prev_rows = vi[:-1][same[1:]]
            prev_v[rows] = sv[prev_rows]
            prev_ts[rows] = st[prev_rows]
            first[rows] = False
        head = valid & first
        prev_v[head] = self.s_last_v[si[head]]
        prev_ts[head] = stored_ts[head]
        has_prev = valid & (prev_ts >= 0) & (st - prev_ts <= rule.staleness_ms)
        with np.errstate(invalid="ignore"):
            step = np.where(sv >= prev_v, sv - prev_v, sv)
        inc_prom = np.where(has_prev, step, 0.0)
        guarded = st < self.created_ms + rule.staleness_ms
        inc = np.where(has_prev, step, np.where(guarded, 0.0, sv))
        rate_prev = np.where(has_prev, prev_ts, st)
        # remember the newest valid sample of every series
        if vi.size:
            last = np.ones(vi.size, np.bool_)
            last[:-1] = si[vi[1:]] != si[vi[:-1]]
            lr = vi[last]
            self.s_last_v[si[lr]] = sv[lr]
            self.s_last_ts[si[lr]] = st[lr]
        inv = np.empty(n, np.int64)
        inv[order] = np.arange(n)
        return inc[inv], inc_prom[inv], rate_prev[inv], valid[inv]

    # -- flushing -------------------------------------------------------------------------------

    def closable(self, now_ms: int) -> list[int]:
        r = self.rule
        return sorted(s for s in self.windows if s + r.interval_ms + r.grace_ms <= now_ms)

    def flush(self, now_ms: int, out: Emitted) -> int:
        """Emit and drop every window whose close time has passed; returns windows closed."""
        done = self.closable(now_ms)
        self.closed_now = bool(done)
        for start in done:
            self._close(self.windows.pop(start), out)
        r = self.rule
        # windows that never opened are closed too: their samples would be late now
        horizon = (now_ms - r.grace_ms) // r.interval_ms * r.interval_ms
        self.closed_until = max(self.closed_until, horizon)
        return len(done)

    def _close(self, win: Window, out: Emitted) -> None:
        """Emit closed window ``win``, then forget what went stale by its end."""
        r = self.rule
        G, S = len(self.groups), len(self.idx_sid)
        end = win.start + r.interval_ms
        n0 = len(out)
        emit_window(self, win, end, out)
        # forget the counter state of series (and groups) silent for longer than staleness
        cutoff = end - r.staleness_ms
        stale = (self.s_last_ts[:S] >= 0) & (self.s_last_ts[:S] < cutoff)
        self.s_last_ts[:S][stale] = -1
        gone = self.g_seen[:G] < cutoff
        self.g_total[:G][gone] = 0.0
        self.g_total_prom[:G][gone] = 0.0
        n = len(out) - n0
        self.emitted += n
        self.last_output = {"window_start_ms": win.start, "window_end_ms": end, "series": n,
                            "sample": [[dict(k), v] for k, v in
                                       zip(out.keys[n0:n0 + 3], out.values[n0:n0 + 3],
                                           strict=True)]}

    # -- persistence ------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        S, G = len(self.idx_sid), len(self.groups)
        return {
            "v": STATE_VERSION, "fp": self.rule.fingerprint, "created": self.created_ms,
            "closed": self.closed_until, "samples": self.samples, "late": self.late,
            "emitted": self.emitted, "last": self.last_output,
            "sids": np.asarray(self.idx_sid, np.int64).tobytes(),
            "gid": self.idx_gid[:S].tobytes(),
            # group label sets are not stored: a member series' labels give them back
            "gfirst": np.asarray(self.group_first, np.int64).tobytes(),
            "lv": self.s_last_v[:S].tobytes(), "lts": self.s_last_ts[:S].tobytes(),
            "gseen": self.g_seen[:G].tobytes(), "gtot": self.g_total[:G].tobytes(),
            "gtotp": self.g_total_prom[:G].tobytes(),
            "win": [w.to_state() for w in self.windows.values()],
        }

    @classmethod
    def from_state(cls, rule: Rule, d: Mapping[str, Any], labels_of: LabelsOf
                   ) -> RuleState:
        st = cls(rule, int(d["created"]))
        st.closed_until = int(d["closed"])
        st.samples, st.late, st.emitted = int(d["samples"]), int(d["late"]), int(d["emitted"])
        st.last_output = dict(d.get("last") or {})
        st.idx_sid = np.frombuffer(d["sids"], np.int64).tolist()
        st.idx_gid = np.frombuffer(d["gid"], np.int64).copy()
        st.group_first = np.frombuffer(d["gfirst"], np.int64).tolist()
        st.groups = [rule.group_key(labels_of(sid) or ()) for sid in st.group_first]
        st.group_index = {g: i for i, g in enumerate(st.groups)}
        st.s_last_v = np.frombuffer(d["lv"], np.float64).copy()
        st.s_last_ts = np.frombuffer(d["lts"], np.int64).copy()
        st.g_seen = np.frombuffer(d["gseen"], np.int64).copy()
        st.g_total = np.frombuffer(d["gtot"], np.float64).copy()
        st.g_total_prom = np.frombuffer(d["gtotp"], np.float64).copy()
        if st.idx_sid:
            st.sid2idx = np.full(max(st.idx_sid) + 1, _UNKNOWN, np.int64)
            st.sid2idx[np.asarray(st.idx_sid)] = np.arange(len(st.idx_sid))
        for wd in d["win"]:
            w = Window.from_state(wd, rule)
            st.windows[w.start] = w
        return st

    def summary(self) -> dict[str, Any]:
        return {**self.rule.describe(), "fingerprint": self.rule.fingerprint,
                "series": self.series_count, "groups": len(self.groups),
                "open_windows": sorted(self.windows), "closed_until_ms": self.closed_until,
                "samples": self.samples, "late_samples": self.late,
                "emitted": self.emitted, "last_output": self.last_output}
