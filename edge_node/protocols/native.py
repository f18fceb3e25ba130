"""The native ingest API (``POST /api/v1/ingest``): JSON or msgpack in, :class:`IngestBatch` out.

One object (or a list of them)::

    {"device_id": "dev-1", "labels": {"site": "s1"},
     "metrics": [{"name": "cpu_usage_percent", "value": 12.5, "ts": 1795839600000,
                  "labels": {"core": "0"}}],
     "logs": [{"ts": 1795839600000, "line": "...", "level": "info", "labels": {"app": "x"}}],
     "heartbeat": true}

``ts`` is Unix milliseconds and optional (the receive time is used). The same object may carry
the columnar form, ``"series": [{"name", "labels"?, "ts": [...], "values": [...]}]``: one
series with parallel lists of timestamps (required) and values. Every problem raises an
:class:`~edge_node.errors.IngestError` naming the field, as ``objects[i].metrics[j].value``;
the whole request is then refused, so nothing of it is stored.

A body is checked once, in two steps:

1. :func:`decode_body`: msgspec decodes it into the typed structs below, in C, checking shape
   and types (unknown fields included); :func:`~.decode.schema_error` turns its error paths
   (``$[1].metrics[0].value``) into field names (``[1].metrics[0].value``). JSON that
   msgspec's strict reader refuses is read by Python's ``json`` (which also takes the ``NaN``,
   ``Infinity`` and huge numbers ``json.dumps`` writes) and converted to the same structs.
2. :meth:`NativeParser.parse_body`: one semantic pass, checking what types cannot say (device
   id, timestamp range, reserved labels, limits) and, through :class:`~.common.LabelRules`,
   every protocol's metric-name and label rules, then building the series keys, which it
   caches per device and label set so a well-known series costs a dictionary lookup.
"""

from __future__ import annotations

import json
import re
from typing import Any, NoReturn, TypeVar

import msgspec

from ..config import IngestConfig
from ..errors import BadRequest, PayloadTooLarge, UnsupportedMedia
from ..model import DEVICE_LABEL, HEARTBEAT_SERIES, NAME_LABEL, IngestBatch, SeriesKey
from .common import LabelRules
from .decode import child_field, schema_error

_DEVICE_RE = re.compile(r"[^\x00-\x1f]{1,256}\Z")
# 2001-09-09 .. 2286-11-20 in ms: catches seconds or microseconds sent by mistake.
TS_MIN_MS = 1_000_000_000_000
TS_MAX_MS = 9_999_999_999_999
_YEAR_MS = 365 * 86_400_000
RESERVED = frozenset({NAME_LABEL, DEVICE_LABEL})
LEVELS = frozenset({"trace", "debug", "info", "notice", "warning", "warn", "error", "critical",
                    "fatal", "unknown"})

JSON_TYPES = ("application/json",)
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")


# The shape of a request. ``labels`` (and an object's ``ts``, read only with a heartbeat) are
# ``Any``: the semantic pass checks them, naming the label at fault. gc=False: decoded structs
# hold no reference cycles, and untracked objects spare the collector 10,000 visits a request.
class _Metric(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    name: str
    value: float
    ts: int | float | None = None
    labels: Any = None


class _Series(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    name: str
    ts: list[int | float]
    values: list[float]
    labels: Any = None


class _Log(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    line: str
    ts: int | float | None = None
    level: str = "info"
    labels: Any = None


class _Object(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    device_id: str
    labels: Any = None
    metrics: list[_Metric] | None = None
    series: list[_Series] | None = None
    logs: list[_Log] | None = None
    heartbeat: bool | None = False
    ts: Any = None


_Document = list[_Object] | _Object
_V = TypeVar("_V")
_JSON_DECODER = msgspec.json.Decoder(_Document)
_MSGPACK_DECODER = msgspec.msgpack.Decoder(_Document)

_DEVICE_ERROR = "is required: a non-empty string of at most 256 characters"
_TS_ERROR = "must be an integer Unix time in milliseconds"
_NAME_ERROR = "must be a metric name matching [a-zA-Z_:][a-zA-Z0-9_:]*"
# A decoder type error by the shape of its field (see decode.schema_error): the message, and
# whether it goes on with what was there instead ("..., got str").
_TYPE_ERRORS: dict[str, tuple[str, bool]] = {
    "": ("must be an object", False),
    "device_id": (_DEVICE_ERROR, False),
    "heartbeat": ("must be true or false", False),
    **{part: ("must be a list", False) for part in ("metrics", "series", "logs")},
    **{f"{part}[]": ("must be an object", False) for part in ("metrics", "series", "logs")},
    "metrics[].name": (_NAME_ERROR, True),
    "metrics[].value": ("must be a number", True),
    "metrics[].ts": (_TS_ERROR, True),
    "series[].name": (_NAME_ERROR, True),
    "series[].ts": ("must be a non-empty list", False),
    "series[].ts[]": (_TS_ERROR, True),
    "series[].values": ("must be a non-empty list", False),
    "series[].values[]": ("must be a number", True),
    "logs[].line": ("is required: a string", False),
    "logs[].level": (f"must be one of {', '.join(sorted(LEVELS))}", False),
    "logs[].ts": (_TS_ERROR, True),
}


def decode_body(body: bytes, content_type: str | None) -> _Document:
    """Decode a (decompressed) body of the given media type into the typed structs.

    Raises:
        UnsupportedMedia: neither JSON nor msgpack.
        BadRequest: the body does not parse, or does not have the native shape (the error
            names the field).
    """
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if ctype in JSON_TYPES:
        try:
            return _JSON_DECODER.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            return convert(_lenient_json(body))
    if ctype in MSGPACK_TYPES:
        try:
            return _MSGPACK_DECODER.decode(body)
        except msgspec.ValidationError as exc:
            raise schema_error(exc, _TYPE_ERRORS, lambda: msgspec.msgpack.decode(body)) from None
        except (msgspec.DecodeError, RecursionError) as exc:
            raise BadRequest(f"body is not valid msgpack: {exc}", field="body") from None
    raise UnsupportedMedia(
        f"Content-Type {content_type!r} is not supported "
        "(use application/json or application/msgpack)", field="Content-Type")


def _lenient_json(body: bytes) -> Any:
    """What Python's json module reads (NaN, Infinity, 1e400, lone surrogates included)."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", field="body") from None


def convert(doc: Any) -> _Document:
    """An already decoded document (dicts and lists) as the typed structs, checked the same."""
    try:
        typed: _Document = msgspec.convert(doc, _Document)
    except msgspec.ValidationError as exc:
        raise schema_error(exc, _TYPE_ERRORS, lambda: doc) from None
    return typed


class _Base:
    """One device and object label set: its labels (``device`` included) and the keys of
    its series, by metric name or (name, own labels as items); log streams by (level, labels)."""

    __slots__ = ("keys", "labels", "streams")

    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels
        self.keys: dict[object, SeriesKey] = {}
        self.streams: dict[object, SeriesKey] = {}


class NativeParser:
    """The semantic pass over decoded native requests. Keeps the series keys it has built
    (bounded), so the checks run once per new series, not once per sample."""

    def __init__(self, limits: IngestConfig) -> None:
        self.limits = limits
        self.rules = LabelRules(limits)
        self._ok_names: set[str] = set()  # metric names that passed the rules
        # (device_id, object labels as items) -> _Base; the labels order is the sender's.
        # Past a million entries (bases and keys) they empty, which bounds the memory a
        # stream of new series can take.
        self._bases: dict[object, _Base] = {}
        self._n_keys = 0

    def parse_body(self, raw: bytes, content_type: str | None, now_ms: int) -> IngestBatch:
        """Parse a (decompressed) request body: decode, then the semantic pass."""
        return self._batch(decode_body(raw, content_type), now_ms)

    def parse(self, doc: Any, now_ms: int) -> IngestBatch:
        """Parse an already decoded document (what ``json.loads`` returns)."""
        return self._batch(convert(doc), now_ms)

    def _batch(self, doc: _Document, now_ms: int) -> IngestBatch:
        out = IngestBatch()
        if isinstance(doc, list):
            if not doc:
                raise BadRequest("list of objects is empty", field="body")
            for i, obj in enumerate(doc):
                self._object(obj, now_ms, out, f"[{i}].")
        else:
            self._object(doc, now_ms, out, "")
        if not out:
            raise BadRequest("request carries no metrics, logs or heartbeat", field="body")
        return out

    def _object(self, obj: _Object, now_ms: int, out: IngestBatch, p: str) -> None:
        dev = obj.device_id
        if not _DEVICE_RE.match(dev):
            raise BadRequest(_DEVICE_ERROR, field=p + "device_id")
        base = self._base(dev, obj.labels, p + "labels")
        lim = self.limits
        if obj.metrics is not None:
            if len(obj.metrics) + out.n_samples > lim.max_samples_per_request:
                raise PayloadTooLarge(f"more than {lim.max_samples_per_request} samples in "
                                      "one request", field=p + "metrics")
            self._metrics(obj.metrics, base, now_ms, out, p + "metrics")
        if obj.series is not None:
            self._series(obj.series, base, now_ms, out, p + "series")
        if obj.logs is not None:
            if len(obj.logs) + out.n_logs > lim.max_logs_per_request:
                raise PayloadTooLarge(f"more than {lim.max_logs_per_request} log lines in "
                                      "one request", field=p + "logs")
            self._logs(obj.logs, base, now_ms, out, p + "logs")
        if obj.heartbeat:
            out.hb_keys.append(((NAME_LABEL, HEARTBEAT_SERIES), (DEVICE_LABEL, dev)))
            out.hb_ts.append(self._ts(obj.ts, p + "ts", now_ms))

    def _metrics(self, metrics: list[_Metric], base: _Base, now_ms: int, out: IngestBatch,
                 p: str) -> None:
        tss = [now_ms if m.ts is None else m.ts for m in metrics]
        # all ints in range? (sum() of ints is an int: one pass tells there is no float)
        if tss and not (min(tss) >= TS_MIN_MS and max(tss) <= TS_MAX_MS
                        and sum(tss).__class__ is int):
            tss = [self._ts(m.ts, f"{p}[{j}].ts", now_ms) for j, m in enumerate(metrics)]
        known = base.keys
        keys: list[SeriesKey | None]
        if any([m.labels for m in metrics]):
            # a falsy non-object (``"labels": []``) counts as no labels, as it always has
            keys = [_find(known, m.name, m.labels or None)
                    or self._new_key(base, m.name, m.labels or None, p, j, name_first=True)
                    for j, m in enumerate(metrics)]
        else:
            keys = [known.get(m.name) for m in metrics]
            if None in keys:
                keys = [known.get(m.name) or self._new_key(base, m.name, None, p, j)
                        for j, m in enumerate(metrics)]
        out.metric_keys.extend(keys)  # type: ignore[arg-type]
        out.metric_ts.extend(tss)  # type: ignore[arg-type]  # ints, checked
        out.metric_values.extend([m.value for m in metrics])

    def _series(self, series: list[_Series], base: _Base, now_ms: int, out: IngestBatch,
                p: str) -> None:
        """The columnar form: one series, then its timestamps and values as parallel lists."""
        lim = self.limits.max_samples_per_request
        known, all_values = base.keys, out.metric_values
        for j, sr in enumerate(series):
            tss, values, lbl = sr.ts, sr.values, sr.labels
            n = len(values)
            if (not n or len(tss) != n or len(all_values) + n > lim
                    or (lbl is not None and not isinstance(lbl, dict))):
                self._refuse_series(sr, f"{p}[{j}]", out)
            key = ((known.get(sr.name) if not lbl else _find(known, sr.name, lbl))
                   or self._new_key(base, sr.name, lbl or None, p, j, name_first=False))
            if not (min(tss) >= TS_MIN_MS and max(tss) <= TS_MAX_MS
                    and sum(tss).__class__ is int):
                tss = [self._ts(t, f"{p}[{j}].ts[{k}]", now_ms) for k, t in enumerate(tss)]
            out.metric_keys.extend([key] * n)
            out.metric_ts.extend(tss)  # type: ignore[arg-type]  # ints, checked
            all_values.extend(values)

    def _refuse_series(self, sr: _Series, where: str, out: IngestBatch) -> NoReturn:
        """Raise the first problem of a series the quick checks of _series refused."""
        for part, col in (("ts", sr.ts), ("values", sr.values)):
            if not col:
                raise BadRequest("must be a non-empty list", field=f"{where}.{part}")
        if len(sr.ts) != len(sr.values):
            raise BadRequest(f"has {len(sr.ts)} timestamps for {len(sr.values)} values",
                             field=f"{where}.ts")
        lim = self.limits.max_samples_per_request
        if out.n_samples + len(sr.values) > lim:
            raise PayloadTooLarge(f"more than {lim} samples in one request", field=where)
        raise BadRequest("must be an object of string labels", field=f"{where}.labels")

    def _logs(self, logs: list[_Log], base: _Base, now_ms: int, out: IngestBatch,
              p: str) -> None:
        max_bytes = self.limits.max_log_line_bytes
        streams = base.streams
        for j, rec in enumerate(logs):
            raw = rec.line.encode("utf-8", "surrogatepass")
            if len(raw) > max_bytes:
                raise PayloadTooLarge(f"log line longer than {max_bytes} bytes",
                                      field=f"{p}[{j}].line")
            level = rec.level.lower()
            if level not in LEVELS:
                raise BadRequest(_TYPE_ERRORS["logs[].level"][0], field=f"{p}[{j}].level")
            key = _find(streams, level, rec.labels)
            if key is None:
                d = dict(self._labels(rec.labels, f"{p}[{j}].labels", base.labels))
                d["level"] = level
                key = streams[_ident(level, rec.labels)] = tuple(sorted(d.items()))
                self._n_keys += 1
            ts = rec.ts
            if ts.__class__ is not int or not TS_MIN_MS <= ts <= TS_MAX_MS:  # type: ignore[operator]
                ts = self._ts(ts, f"{p}[{j}].ts", now_ms)
            out.log_keys.append(key)
            out.log_ts.append(ts)  # type: ignore[arg-type]  # an int, by the check above
            out.log_lines.append(raw)

    # -- series keys ------------------------------------------------------------------------

    def _base(self, dev: str, labels: Any, where: str) -> _Base:
        if self._n_keys > 1_000_000:  # bound the caches; live traffic refills them
            self._bases.clear()
            self._n_keys = 0
        got = _find(self._bases, dev, labels)
        if got is None:
            d = self._labels(labels, where, {})
            d[DEVICE_LABEL] = dev
            got = self._bases[_ident(dev, labels)] = _Base(d)
            self._n_keys += 1
        return got

    def _new_key(self, base: _Base, name: str, labels: Any, p: str, j: int, *,
                 name_first: bool = True) -> SeriesKey:
        """Check and remember the key of sample ``{p}[{j}]``: metric ``name`` with its own
        ``labels`` (or None) on ``base``. Metrics check the name first, series last."""
        self._n_keys += 1
        if labels is None:  # the common case, kept short
            if name not in self._ok_names:
                self._check_name(name, p, j)
            d = dict(base.labels)
            d[NAME_LABEL] = name
            key = base.keys[name] = tuple(sorted(d.items()))
            return key
        if name_first and name not in self._ok_names:
            self._check_name(name, p, j)
        d = self._labels(labels, f"{p}[{j}].labels", base.labels)
        if not name_first and name not in self._ok_names:
            self._check_name(name, p, j)
        d[NAME_LABEL] = name
        key = base.keys[_ident(name, labels)] = tuple(sorted(d.items()))
        return key

    def _check_name(self, name: str, p: str, j: int) -> None:
        """The rules' check of the metric name of sample ``{p}[{j}]``, once per name."""
        if problem := self.rules.name_problem(name):
            raise BadRequest(problem, field=f"{p}[{j}].name")
        if len(self._ok_names) < 100_000:
            self._ok_names.add(name)

    def _labels(self, v: Any, where: str, base: dict[str, str]) -> dict[str, str]:
        """``base`` with the labels ``v`` of an object, sample or stream, all checked."""
        if v is None:
            return base
        if not isinstance(v, dict):
            raise BadRequest("must be an object of string labels", field=where)
        for k, x in v.items():
            if k.__class__ is not str or x.__class__ is not str or k in RESERVED:
                _native_label_rules(k, x, where)
        if problem := self.rules.labels_problem(v.items()):
            k, message, in_value = problem
            raise BadRequest(message, field=child_field(where, k) if in_value else where)
        out = dict(base)
        out.update(v)
        lim = self.limits.max_labels_per_series
        if len(out) + 2 > lim:
            raise BadRequest(f"more than {lim} labels on one series", field=where)
        return out

    @staticmethod
    def _ts(v: Any, where: str, now_ms: int) -> int:
        if v is None:
            return now_ms
        if v.__class__ is int:
            ts = v
        elif isinstance(v, float) and v.is_integer():
            ts = int(v)
        else:
            raise BadRequest(f"{_TS_ERROR}, got {v!r:.40}", field=where)
        if not TS_MIN_MS <= ts <= TS_MAX_MS and (
                ts < 0 or ts > TS_MAX_MS or abs(ts * 1000 - now_ms) < _YEAR_MS):
            raise BadRequest(f"{ts} is not a Unix time in milliseconds (seconds or "
                             "microseconds sent by mistake?)", field=where)
        # before 2001 but not seconds of about now: a device clock reset to its epoch (1970,
        # 2000); the clock policy (edge_node/clock_skew.py) decides what becomes of it
        return ts  # type: ignore[no-any-return]


def _native_label_rules(k: object, x: object, where: str) -> None:
    """Raise if label ``k`` with value ``x`` breaks a rule of the native API's own."""
    if not isinstance(k, str):
        raise BadRequest(f"label name {k!r:.80} must match [a-zA-Z_][a-zA-Z0-9_]*", field=where)
    if k in RESERVED:
        raise BadRequest(f"label {k!r} is reserved (the device is set by device_id, the name "
                         "by name)", field=f"{where}.{k}")
    if not isinstance(x, str):
        raise BadRequest("label values must be strings", field=child_field(where, k))


def _ident(first: str, labels: Any) -> object:
    """The cache key of ``first`` (a device, metric name or level) with checked ``labels``
    (a dict, in the sender's order, or None)."""
    return first if labels is None else (first, *labels.items())


def _find(cache: dict[object, _V], first: str, labels: Any) -> _V | None:
    """What ``cache`` holds for ``first`` with ``labels``; None when it holds nothing, and
    for labels that cannot be valid (not a dict, or an unhashable value)."""
    if labels is None:
        return cache.get(first)
    if labels.__class__ is not dict:
        return None
    try:
        return cache.get((first, *labels.items()))
    except TypeError:
        return None
