"""Stream aggregation (sans-IO): rules, event-time windows, outputs, persistent state.

A **rule** selects series (``match``), cuts time into windows of ``interval`` aligned to the
wall clock (a 5m rule has windows [10:00, 10:05), [10:05, 10:10), ... in UTC), groups the
selected series by the labels it keeps (``by`` or ``without``; the metric name is always kept)
and computes ``outputs`` per group and window. A window closes once the clock passes its end
plus ``grace``; its outputs are then emitted with the window's end as timestamp, named like
vmagent's::

    <metric>:<interval>[_by_<l1>_<l2>|_without_<l1>_<l2>]_<output>

(``quantiles`` emits one series per phi, with a ``quantile`` label). A sample whose window has
already closed is *late*: counted per rule, left out of the outputs, and forwarded raw even by
a ``keep_raw = false`` rule, so it is never lost.

Unlike vmagent, windows follow the samples' own timestamps (a device that batches its
samples still lands them in the right window), and the whole state (open windows, sketches,
the last value of every counter) serialises to bytes: the buffer saves it and replays what
came after, so a restart changes no output.

Outputs (per group and window; "series" are the input series of the group):

=====================  ========================================================================
count_samples          samples received
sum_samples            sum of the samples
min, max, avg, last    of the samples (``last``: the one with the latest timestamp)
stddev, stdvar         population standard deviation / variance of the samples
count_series           distinct series that sent samples
increase               sum over series of the counter increase in the window (resets handled:
                       a drop counts the new value as the increase); a new series' first
                       sample counts from 0, except for series first seen within
                       ``staleness`` of the rule's creation (their history is unknown)
increase_prometheus    the same, but a new series' first sample only sets its base
total                  running sum of ``increase`` across windows (emitted while the group is
                       fresh); ``total_prometheus`` likewise from ``increase_prometheus``
rate_sum, rate_avg     per series: increase in the window / seconds between its last sample
                       before the window and its last sample in it; summed / averaged
quantiles(phi, ...)    DDSketch estimates within ``quantile_error`` relative error
=====================  ========================================================================

Counter state of a series is forgotten after ``staleness`` without samples (it then counts as
new); NaN samples (Prometheus staleness markers) are ignored by every output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import RuleError, SelectorError
from .model import NAME_LABEL, SeriesKey
from .selector import Selector, parse_selector
from .sketch import DEFAULT_RELATIVE_ERROR, MIN_NORMAL, DDSketch, bucket_keys

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

BASIC_OUTPUTS = ("count_samples", "sum_samples", "min", "max", "avg", "last", "stddev",
                 "stdvar", "count_series")
COUNTER_OUTPUTS = ("increase", "increase_prometheus", "total", "total_prometheus",
                   "rate_sum", "rate_avg")
OUTPUTS = (*BASIC_OUTPUTS, *COUNTER_OUTPUTS, "quantiles")
#: output suffixes, longest first, so a name can be split back into metric / interval / output
OUTPUT_SUFFIXES = tuple(sorted(OUTPUTS, key=len, reverse=True))
DEFAULT_GRACE_MS = 10_000
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_RULE_KEYS = {"name", "match", "interval", "staleness", "staleness_interval", "grace", "by",
              "without", "outputs", "keep_raw", "quantile_error"}
_VMAGENT_ONLY = {"dedup_interval", "output_relabel_configs", "input_relabel_configs",
                 "flush_on_shutdown", "ignore_old_samples", "ignore_first_intervals",
                 "keep_metric_names", "drop_input_labels", "no_align_flush_to_interval",
                 "enable_windows", "ignore_first_sample_interval"}
STATE_VERSION = 1
# sketch bucket codes: (group << 1 | negative) << _KEY_BITS | (bucket index + _KEY_OFFSET);
# a relative error >= 0.0001 keeps every float's bucket index within +-3.6M < _KEY_OFFSET
_KEY_BITS = 24
_KEY_OFFSET = 1 << 23
_KEY_MASK = (1 << _KEY_BITS) - 1


def parse_duration(text: str) -> int:
    """``"1m30s"`` -> 90000 (milliseconds). Units: ms, s, m, h, d, w."""
    s = str(text).strip()
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f"{text!r} is not a duration (e.g. 30s, 5m, 1h, 1h30m)")
    return int(total)


# -- rules ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """One validated aggregation rule."""

    match: tuple[Selector, ...]
    interval: str
    interval_ms: int
    staleness_ms: int
    grace_ms: int
    by: tuple[str, ...] = ()
    without: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    quantiles: tuple[float, ...] = ()
    keep_raw: bool = True
    quantile_error: float = DEFAULT_RELATIVE_ERROR
    name: str = ""

    @property
    def suffix(self) -> str:
        """The part of output names between ``<metric>:`` and ``_<output>``."""
        s = self.interval
        if self.by:
            s += "_by_" + "_".join(self.by)
        if self.without:
            s += "_without_" + "_".join(self.without)
        return s

    @property
    def fingerprint(self) -> str:
        """Identity of everything that shapes this rule's state (not ``keep_raw``/``name``)."""
        doc = {"match": [str(s) for s in self.match], "interval": self.interval_ms,
               "staleness": self.staleness_ms, "grace": self.grace_ms, "by": self.by,
               "without": self.without, "outputs": self.outputs, "q": self.quantiles,
               "qe": self.quantile_error, "v": STATE_VERSION}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return any(s.matches(labels) for s in self.match)

    def group_key(self, key: SeriesKey) -> SeriesKey:
        """The labels the outputs keep from input series ``key`` (always with the name)."""
        if self.by:
            keep = set(self.by) | {NAME_LABEL}
            return tuple(kv for kv in key if kv[0] in keep)
        drop = set(self.without)
        return tuple(kv for kv in key if kv[0] not in drop)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "match": [str(s) for s in self.match],
                               "interval": self.interval, "outputs": list(self.outputs_text()),
                               "keep_raw": self.keep_raw, "grace_s": self.grace_ms / 1000,
                               "staleness_s": self.staleness_ms / 1000}
        if self.by:
            out["by"] = list(self.by)
        if self.without:
            out["without"] = list(self.without)
        return out

    def outputs_text(self) -> Iterable[str]:
        for o in self.outputs:
            if o == "quantiles":
                yield "quantiles(" + ", ".join(f"{q:g}" for q in self.quantiles) + ")"
            else:
                yield o


_QUANTILES = re.compile(r"quantiles\((.*)\)")


def parse_rule(raw: Any, where: str) -> Rule:
    """Validate one rule (a mapping from YAML or TOML); errors name ``where`` and the field."""
    if not isinstance(raw, Mapping):
        raise RuleError(where, "must be a mapping with match, interval and outputs")
    for k in raw:
        if k in _VMAGENT_ONLY:
            raise RuleError(f"{where}.{k}", "is a vmagent option fleet-edge does not support")
        if k not in _RULE_KEYS:
            raise RuleError(f"{where}.{k}", f"unknown key (known: {', '.join(sorted(_RULE_KEYS))})")
    for req in ("match", "interval", "outputs"):
        if req not in raw:
            raise RuleError(f"{where}.{req}", "is required")
    match_raw = raw["match"]
    texts = [match_raw] if isinstance(match_raw, str) else match_raw
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise RuleError(f"{where}.match", "must be a series selector or a list of them")
    try:
        match = tuple(parse_selector(t) for t in texts)
    except SelectorError as exc:
        raise RuleError(f"{where}.match", str(exc)) from None

    def dur(key: str, default: int | None) -> int:
        if key not in raw:
            assert default is not None
            return default
        try:
            return parse_duration(raw[key])
        except ValueError as exc:
            raise RuleError(f"{where}.{key}", str(exc)) from None

    interval_ms = dur("interval", None)
    if interval_ms < 1000:
        raise RuleError(f"{where}.interval", "must be at least 1s")
    interval = str(raw["interval"]).strip()
    if "staleness" in raw and "staleness_interval" in raw:
        raise RuleError(f"{where}.staleness", "give staleness or staleness_interval, not both")
    staleness_ms = dur("staleness_interval" if "staleness_interval" in raw else "staleness",
                       2 * interval_ms)
    if staleness_ms < interval_ms:
        raise RuleError(f"{where}.staleness", "must be at least the interval")
    grace_ms = dur("grace", min(DEFAULT_GRACE_MS, interval_ms))

    def labels(key: str) -> tuple[str, ...]:
        v = raw.get(key, [])
        if isinstance(v, str):
            v = [x.strip() for x in v.split(",") if x.strip()]
        if not isinstance(v, list) or not all(
                isinstance(x, str) and re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", x) for x in v):
            raise RuleError(f"{where}.{key}", "must be a list of label names")
        return tuple(sorted(set(v) - {NAME_LABEL}))

    by, without = labels("by"), labels("without")
    if by and without:
        raise RuleError(f"{where}.by", "give by or without, not both")
    outs_raw = raw["outputs"]
    if isinstance(outs_raw, str) or not isinstance(outs_raw, list) or not outs_raw:
        raise RuleError(f"{where}.outputs", "must be a non-empty list, e.g. [avg, max]")
    outputs: list[str] = []
    quantiles: list[float] = []
    for o in outs_raw:
        text = str(o).strip().replace(" ", "")
        qm = _QUANTILES.fullmatch(text)
        if qm:
            try:
                qs = [float(x) for x in qm.group(1).split(",") if x]
            except ValueError:
                qs = []
            if not qs or not all(0 <= q <= 1 for q in qs):
                raise RuleError(f"{where}.outputs", f"{o!r}: give phis between 0 and 1, e.g. "
                                                    "quantiles(0.5, 0.9, 0.99)")
            quantiles += qs
            text = "quantiles"
        elif text not in OUTPUTS:
            raise RuleError(f"{where}.outputs", f"unknown output {o!r} (known: "
                                                f"{', '.join(OUTPUTS)}(phi, ...))")
        if text not in outputs:
            outputs.append(text)
    keep_raw = raw.get("keep_raw", True)
    if not isinstance(keep_raw, bool):
        raise RuleError(f"{where}.keep_raw", "must be true or false")
    qe = raw.get("quantile_error", DEFAULT_RELATIVE_ERROR)
    if isinstance(qe, bool) or not isinstance(qe, int | float) or not 0.0001 <= qe <= 0.1:
        raise RuleError(f"{where}.quantile_error", "must be a number between 0.0001 and 0.1")
    name = raw.get("name", "")
    if not isinstance(name, str):
        raise RuleError(f"{where}.name", "must be a string")
    return Rule(match=match, interval=interval, interval_ms=interval_ms,
                staleness_ms=staleness_ms, grace_ms=grace_ms, by=by, without=without,
                outputs=tuple(outputs), quantiles=tuple(sorted(set(quantiles))),
                keep_raw=keep_raw, quantile_error=float(qe), name=name)


def parse_rules(raw: Any, where: str = "rules") -> list[Rule]:
    """A list of rules (vmagent's stream aggregation file is such a list)."""
    if isinstance(raw, Mapping) and set(raw) == {"rules"}:
        raw = raw["rules"]
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise RuleError(where, "must be a list of rules")
    rules = [parse_rule(r, f"{where}[{i}]") for i, r in enumerate(raw)]
    seen: set[str] = set()
    for i, r in enumerate(rules):
        name = r.name
        if not name:  # default: the selectors and the output suffix, numbered if repeated
            base = f"{'|'.join(str(s) for s in r.match)}:{r.suffix}"
            name, n = base, 1
            while name in seen:
                n += 1
                name = f"{base}#{n}"
            rules[i] = dataclasses.replace(r, name=name)
        elif name in seen:
            raise RuleError(f"{where}[{i}].name", f"duplicate rule name {name!r}: give each "
                                                  "rule a distinct name")
        seen.add(name)
    return rules


def load_rules_file(path: str) -> list[Rule]:
    """Rules from a YAML (vmagent's format: a list of rules) or TOML (``[[rules]]``) file."""
    from pathlib import Path

    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(path, f"cannot read the rules file: {exc}") from None
    if p.suffix.lower() == ".toml":
        import tomllib

        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RuleError(path, f"not valid TOML: {exc}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RuleError(path, f"not valid YAML: {exc}") from None
    return parse_rules(data)


def split_output_name(name: str) -> tuple[str, str, str] | None:
    """``"cpu:5m_by_site_avg"`` -> ``("cpu", "5m_by_site", "avg")``; None if not an output."""
    metric, sep, rest = name.rpartition(":")
    if not sep or not metric:
        return None
    for out in OUTPUT_SUFFIXES:
        if rest.endswith("_" + out) and len(rest) > len(out) + 1:
            return metric, rest[:-len(out) - 1], out
    return None


# -- state ---------------------------------------------------------------------------------------

def _grow(a: npt.NDArray[Any], n: int, fill: Any) -> npt.NDArray[Any]:
    if a.shape[0] >= n:
        return a
    out = np.full(max(n, 2 * a.shape[0], 16), fill, dtype=a.dtype)
    out[:a.shape[0]] = a
    return out


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
        self.cnt = _grow(self.cnt, groups, 0)
        self.sum = _grow(self.sum, groups, 0.0)
        self.min = _grow(self.min, groups, math.inf)
        self.max = _grow(self.max, groups, -math.inf)
        self.mean = _grow(self.mean, groups, 0.0)
        self.m2 = _grow(self.m2, groups, 0.0)
        self.last_ts = _grow(self.last_ts, groups, np.iinfo(np.int64).min)
        self.last_v = _grow(self.last_v, groups, math.nan)
        self.inc = _grow(self.inc, groups, 0.0)
        self.inc_prom = _grow(self.inc_prom, groups, 0.0)
        self.present = _grow(self.present, series, False)
        self.r_inc = _grow(self.r_inc, series, 0.0)
        self.r_prev = _grow(self.r_prev, series, -1)
        self.r_last = _grow(self.r_last, series, -1)
        self.sk_n = _grow(self.sk_n, groups, 0)
        self.sk_zero = _grow(self.sk_zero, groups, 0)
        self.sk_skip = _grow(self.sk_skip, groups, 0)
        self.sk_lo = _grow(self.sk_lo, groups, math.inf)
        self.sk_hi = _grow(self.sk_hi, groups, -math.inf)

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
        self._out_keys: dict[tuple[str, float], list[SeriesKey]] = {}
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
            self.sid2idx = _grow(self.sid2idx, top, _UNKNOWN)
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
            self.g_seen = _grow(self.g_seen, gid + 1, -1)
            self.g_total = _grow(self.g_total, gid + 1, 0.0)
            self.g_total_prom = _grow(self.g_total_prom, gid + 1, 0.0)
        i = len(self.idx_sid)
        self.idx_sid.append(sid)
        self.idx_gid = _grow(self.idx_gid, i + 1, -1)
        self.idx_gid[i] = gid
        self.s_last_v = _grow(self.s_last_v, i + 1, math.nan)
        self.s_last_ts = _grow(self.s_last_ts, i + 1, -1)
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
            self._add_basic(window, g[sel], i[sel], t[sel], v[sel])
            if self.counters:
                cs = sel & has_row
                np.add.at(window.inc, g[cs], inc[cs])
                np.add.at(window.inc_prom, g[cs], inc_prom[cs])
                if self.rates:
                    self._add_rates(window, i[cs], t[cs], inc_prom[cs], prev_ts[cs])
        return aggregated, late

    def _add_basic(self, win: Window, g: I64, i: I64, t: I64, v: F64) -> None:
        """Update the window's per-group figures; only those some output needs."""
        G = len(self.groups)
        outs = self._outs
        n_b = np.bincount(g, minlength=G)
        s_b = np.bincount(g, weights=v, minlength=G)
        win.cnt[:G] += n_b
        win.sum[:G] += s_b
        if "min" in outs:
            np.minimum.at(win.min, g, v)
        if "max" in outs:
            np.maximum.at(win.max, g, v)
        if "last" in outs:
            # the newest row of each group; on a tie the larger value wins, so the result
            # never depends on the order rows came in
            newest = np.full(G, np.iinfo(np.int64).min, np.int64)
            np.maximum.at(newest, g, t)
            cand = t == newest[g]
            top = np.full(G, -math.inf)
            np.maximum.at(top, g[cand], v[cand])
            lg = np.flatnonzero(n_b)
            lt, lv, old_t, old_v = newest[lg], top[lg], win.last_ts[lg], win.last_v[lg]
            newer = (lt > old_t) | ((lt == old_t) & ~(lv < old_v))
            win.last_ts[lg[newer]] = lt[newer]
            win.last_v[lg[newer]] = lv[newer]
        if "stddev" in outs or "stdvar" in outs:
            # Chan et al.'s parallel merge of (count, mean, M2)
            touched = n_b > 0
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                mean_b = np.where(touched, s_b / np.maximum(n_b, 1), 0.0)
                m2_b = np.bincount(g, weights=(v - mean_b[g]) ** 2, minlength=G)
                n_a = win.cnt[:G] - n_b
                n = win.cnt[:G].astype(np.float64)
                delta = mean_b - win.mean[:G]
                frac = np.where(touched, n_b / np.maximum(n, 1), 0.0)
                win.mean[:G] = np.where(touched, win.mean[:G] + delta * frac, win.mean[:G])
                win.m2[:G] = np.where(touched, win.m2[:G] + m2_b + delta ** 2 * n_a * frac,
                                      win.m2[:G])
        if "count_series" in outs:
            win.present[i] = True
        if "quantiles" in outs:
            self._add_sketches(win, g, v)

    def _add_sketches(self, win: Window, g: I64, v: F64) -> None:
        """Add to every group's sketch at once (bucket codes counted with ``np.unique``)."""
        qe = self.rule.quantile_error
        keys, neg, ok = bucket_keys(v, math.log((1 + qe) / (1 - qe)))
        zero = ok & (np.abs(v) < MIN_NORMAL)
        buck = ok & ~zero
        codes = ((g[buck] << 1 | neg[buck]) << _KEY_BITS) | (keys[buck] + _KEY_OFFSET)
        uc, counts = np.unique(codes, return_counts=True)
        win.add_codes(uc, counts.astype(np.int64))
        G = len(self.groups)
        n_ok = np.bincount(g[ok], minlength=G)
        win.sk_n[:G] += n_ok
        win.sk_zero[:G] += np.bincount(g[zero], minlength=G)
        win.sk_skip[:G] += np.bincount(g, minlength=G) - n_ok
        np.minimum.at(win.sk_lo, g[ok], v[ok])
        np.maximum.at(win.sk_hi, g[ok], v[ok])

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

    @staticmethod
    def _add_rates(win: Window, i: I64, t: I64, inc: F64, prev: I64) -> None:
        if not i.size:
            return
        np.add.at(win.r_inc, i, inc)
        np.maximum.at(win.r_last, i, t)
        # the previous sample of the series' first row in this window
        order = np.lexsort((t, i))
        si = i[order]
        head = np.ones(si.shape[0], np.bool_)
        head[1:] = si[1:] != si[:-1]
        hs, hp = si[head], prev[order][head]
        unset = win.r_prev[hs] < 0
        win.r_prev[hs[unset]] = hp[unset]

    # -- flushing -------------------------------------------------------------------------------

    def closable(self, now_ms: int) -> list[int]:
        r = self.rule
        return sorted(s for s in self.windows if s + r.interval_ms + r.grace_ms <= now_ms)

    def flush(self, now_ms: int, out: Emitted) -> int:
        """Emit and drop every window whose close time has passed; returns windows closed."""
        done = self.closable(now_ms)
        self.closed_now = bool(done)
        for start in done:
            self._emit(self.windows.pop(start), out)
        r = self.rule
        # windows that never opened are closed too: their samples would be late now
        horizon = (now_ms - r.grace_ms) // r.interval_ms * r.interval_ms
        self.closed_until = max(self.closed_until, horizon)
        return len(done)

    def _keys(self, gids: list[int], output: str, q: float = -1.0) -> list[SeriesKey]:
        """Output series keys of ``gids`` for ``output`` (made once per group and output)."""
        lst = self._out_keys.setdefault((output, q), [])
        if len(lst) < len(self.groups):
            suffix = f"{self.rule.suffix}_{output}"
            for gid in range(len(lst), len(self.groups)):
                labels = dict(self.groups[gid])
                labels[NAME_LABEL] = f"{labels.get(NAME_LABEL, '')}:{suffix}"
                if q >= 0:
                    labels["quantile"] = f"{q:g}"
                lst.append(tuple(sorted(labels.items())))
        return [lst[g] for g in gids]

    def _emit(self, win: Window, out: Emitted) -> None:
        r = self.rule
        G, S = len(self.groups), len(self.idx_sid)
        win.ensure(G, S)
        end = win.start + r.interval_ms
        n0 = len(out)
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
                per_group = np.bincount(self.idx_gid[:S][win.present[:S]], minlength=G)
                vals = per_group[has_a].astype(np.float64)
            elif o == "quantiles":
                sks = [(g, win.sketch(g)) for g in has if win.sk_n[g] > 0]
                for q in r.quantiles:
                    out.extend(self._keys([g for g, _ in sks], o, q), end,
                               [sk.quantile(q) for _, sk in sks if sk is not None])
                continue
            else:
                continue  # counter outputs: below
            out.extend(self._keys(has, o), end, vals.tolist())
        if self.counters:
            self._emit_counters(win, end, out)
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

    def _emit_counters(self, win: Window, end: int, out: Emitted) -> None:
        r = self.rule
        G, S = len(self.groups), len(self.idx_sid)
        outs = r.outputs
        alive_a = np.flatnonzero(self.g_seen[:G] >= end - r.staleness_ms)
        alive = alive_a.tolist()
        self.g_total[:G] += win.inc[:G]
        self.g_total_prom[:G] += win.inc_prom[:G]
        # keep totals exact: restart them before float64 loses integer precision
        for tot in (self.g_total, self.g_total_prom):
            tot[:G][np.abs(tot[:G]) >= 2.0 ** 53] = 0.0
        arrays = {"increase": win.inc, "increase_prometheus": win.inc_prom,
                  "total": self.g_total, "total_prometheus": self.g_total_prom}
        for o in outs:
            if o in arrays:
                out.extend(self._keys(alive, o), end, arrays[o][alive_a].tolist())
        if self.rates:
            span = (win.r_last[:S] - win.r_prev[:S]) / 1000.0
            ok = (win.r_prev[:S] >= 0) & (span > 0)
            rate = np.where(ok, win.r_inc[:S] / np.where(ok, span, 1.0), 0.0)
            gids = self.idx_gid[:S]
            rsum = np.bincount(gids[ok], weights=rate[ok], minlength=G)
            rcnt = np.bincount(gids[ok], minlength=G)
            got_a = np.flatnonzero(rcnt > 0)
            got = got_a.tolist()
            if "rate_sum" in outs:
                out.extend(self._keys(got, "rate_sum"), end, rsum[got_a].tolist())
            if "rate_avg" in outs:
                out.extend(self._keys(got, "rate_avg"), end,
                           (rsum[got_a] / rcnt[got_a]).tolist())

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


class Aggregator:
    """All rules of a node over one stream of (sid, ts, value) rows."""

    def __init__(self, rules: Sequence[Rule], labels_of: LabelsOf, now_ms: int,
                 states: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """``states``: saved :meth:`RuleState.to_state` documents by rule fingerprint; rules
        whose fingerprint has one resume from it, the others start empty at ``now_ms``."""
        self.labels_of = labels_of
        self.rules: list[RuleState] = []
        for r in rules:
            saved = (states or {}).get(r.fingerprint)
            self.rules.append(RuleState.from_state(r, saved, labels_of) if saved is not None
                              else RuleState(r, now_ms))

    def __bool__(self) -> bool:
        return bool(self.rules)

    @property
    def drops_raw(self) -> bool:
        return any(not r.rule.keep_raw for r in self.rules)

    def ingest(self, sids: I64, ts: I64, values: F64, now_ms: int,
               only: Sequence[int] | None = None) -> tuple[B, B]:
        """Feed rows; returns (covered, keep): rows some rule aggregated, rows to forward raw.

        ``only``: indexes of the rules to feed (replaying a log some rules saved already).

        A row is dropped from the raw stream only when a ``keep_raw = false`` rule aggregated
        it and no rule that matched it wants it raw or found it late.
        """
        n = sids.shape[0]
        covered = np.zeros(n, np.bool_)
        want_raw = np.zeros(n, np.bool_)
        dropped = np.zeros(n, np.bool_)
        real = ~np.isnan(values)
        rs, rt, rv = sids[real], ts[real], values[real]
        memo: dict[int, tuple[SeriesKey, dict[str, str]] | None] = {}
        for st in (self.rules if only is None else [self.rules[i] for i in only]):
            # infinities and huge values give inf/NaN outputs, as float arithmetic says
            with np.errstate(all="ignore"):
                agg, late = st.ingest(rs, rt, rv, now_ms, self.labels_of, memo)
            a = np.zeros(n, np.bool_)
            a[real] = agg
            lt = np.zeros(n, np.bool_)
            lt[real] = late
            covered |= a
            if st.rule.keep_raw:
                want_raw |= a | lt
            else:
                dropped |= a
                want_raw |= lt
        return covered, ~dropped | want_raw

    def flush(self, now_ms: int) -> tuple[Emitted, int]:
        """Close every window due by ``now_ms``: (output rows, windows closed)."""
        out = Emitted()
        with np.errstate(all="ignore"):
            closed = sum(st.flush(now_ms, out) for st in self.rules)
        return out, closed

    def states(self) -> dict[str, dict[str, Any]]:
        return {st.rule.fingerprint: st.to_state() for st in self.rules}

    def summary(self) -> list[dict[str, Any]]:
        return [st.summary() for st in self.rules]
