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
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgpack
import msgspec

from ..config import IngestConfig
from ..errors import BadRequest, IngestError, PayloadTooLarge, UnsupportedMedia
from ..model import DEVICE_LABEL, HEARTBEAT_SERIES, NAME_LABEL, IngestBatch, SeriesKey

_METRIC_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_DEVICE_RE = re.compile(r"[^\x00-\x1f]{1,256}\Z")
# 2001-09-09 .. 2286-11-20 in ms: catches seconds or microseconds sent by mistake.
TS_MIN_MS = 1_000_000_000_000
TS_MAX_MS = 9_999_999_999_999
RESERVED = frozenset({NAME_LABEL, DEVICE_LABEL})
LEVELS = frozenset({"trace", "debug", "info", "notice", "warning", "warn", "error", "critical",
                    "fatal", "unknown"})

JSON_TYPES = ("application/json",)



# The same shapes as typed structs: msgspec decodes and type-checks a well-formed request in C,
# several times faster than generic decoding plus checks in Python. Anything it refuses is
# parsed again by the generic path, which names the exact field of the problem.
class _Metric(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    value: float
    ts: int | None = None
    labels: dict[str, str] | None = None


class _Series(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    ts: list[int]
    values: list[float]
    labels: dict[str, str] | None = None


class _Log(msgspec.Struct, forbid_unknown_fields=True):
    line: str
    ts: int | None = None
    level: str = "info"
    labels: dict[str, str] | None = None


class _Object(msgspec.Struct, forbid_unknown_fields=True):
    device_id: str
    labels: dict[str, str] | None = None
    metrics: list[_Metric] | None = None
    series: list[_Series] | None = None
    logs: list[_Log] | None = None
    heartbeat: bool = False
    ts: int | None = None


_TYPED = list[_Object] | _Object
_JSON_DECODER = msgspec.json.Decoder(_TYPED)
_MSGPACK_DECODER = msgspec.msgpack.Decoder(_TYPED)
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")


def decode_body(body: bytes, content_type: str | None) -> Any:
    """Parse a (decompressed) body according to its media type."""
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if ctype in JSON_TYPES:
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"body is not valid JSON: {exc}", field="body") from None
    if ctype in MSGPACK_TYPES:
        try:
            return msgpack.unpackb(body, raw=False, strict_map_key=False)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise BadRequest(f"body is not valid msgpack: {exc}", field="body") from None
    raise UnsupportedMedia(
        f"Content-Type {content_type!r} is not supported "
        "(use application/json or application/msgpack)", field="Content-Type")


class NativeParser:
    """Validates decoded native payloads. Keeps small caches of names already checked."""

    def __init__(self, limits: IngestConfig) -> None:
        self.limits = limits
        self._ok_names: set[str] = set()
        self._ok_labels: set[str] = set()
        # base label set -> metric name -> series key, for samples without labels of their own
        # (the common case): saves building and sorting a label tuple per sample.
        self._keys: dict[SeriesKey, dict[str, SeriesKey]] = {}
        self._n_keys = 0

    def parse_body(self, raw: bytes, content_type: str | None, now_ms: int) -> IngestBatch:
        """Parse a (decompressed) request body: the typed fast path, else the generic one."""
        ctype = (content_type or "").split(";", 1)[0].strip().lower()
        decoder = (_JSON_DECODER if ctype in JSON_TYPES else
                   _MSGPACK_DECODER if ctype in MSGPACK_TYPES else None)
        if decoder is not None:
            try:
                typed = decoder.decode(raw)
            except (msgspec.ValidationError, msgspec.DecodeError):
                pass
            else:
                try:
                    return self._parse_typed(typed, now_ms)
                except IngestError:
                    pass  # the generic path below reports it, with the same field names
        return self.parse(decode_body(raw, content_type), now_ms)

    def _parse_typed(self, typed: list[_Object] | _Object, now_ms: int) -> IngestBatch:
        out = IngestBatch()
        objs = typed if isinstance(typed, list) else [typed]
        if not objs:
            raise BadRequest("list of objects is empty", field="body")
        for obj in objs:
            self._typed_object(obj, now_ms, out)
        if not out:
            raise BadRequest("request carries no metrics, logs or heartbeat", field="body")
        return out

    def _typed_object(self, obj: _Object, now_ms: int, out: IngestBatch) -> None:
        dev = obj.device_id
        if not _DEVICE_RE.match(dev):
            raise BadRequest("bad device_id", field="device_id")
        base = self._labels(obj.labels, "labels", {})
        base[DEVICE_LABEL] = dev
        lim = self.limits
        if obj.metrics is not None:
            if len(obj.metrics) + out.n_samples > lim.max_samples_per_request:
                raise PayloadTooLarge("too many samples", field="metrics")
            self._typed_metrics(obj.metrics, base, now_ms, out)
        if obj.series is not None:
            by_name = self._by_name(base)
            for sr in obj.series:
                n = len(sr.values)
                if not n or len(sr.ts) != n or out.n_samples + n > lim.max_samples_per_request:
                    raise BadRequest("bad series", field="series")
                if min(sr.ts) < TS_MIN_MS or max(sr.ts) > TS_MAX_MS:
                    raise BadRequest("timestamp out of range", field="series")
                if sr.labels:
                    d = self._labels(sr.labels, "series", base)
                    d[NAME_LABEL] = self._name(sr.name, "series")
                    key = tuple(sorted(d.items()))
                else:
                    key = self._key_for(by_name, base, sr.name)
                out.metric_keys.extend([key] * n)
                out.metric_ts.extend(sr.ts)
                out.metric_values.extend(sr.values)
        if obj.logs is not None:
            if len(obj.logs) + out.n_logs > lim.max_logs_per_request:
                raise PayloadTooLarge("too many log lines", field="logs")
            for rec in obj.logs:
                raw = rec.line.encode("utf-8", "surrogatepass")
                level = rec.level.lower()
                if len(raw) > lim.max_log_line_bytes or level not in LEVELS:
                    raise BadRequest("bad log record", field="logs")
                d = dict(self._labels(rec.labels, "logs", base))
                d["level"] = level
                out.log_keys.append(tuple(sorted(d.items())))
                out.log_ts.append(self._ts(rec.ts, "logs", now_ms))
                out.log_lines.append(raw)
        if obj.heartbeat:
            out.hb_keys.append(((NAME_LABEL, HEARTBEAT_SERIES), (DEVICE_LABEL, dev)))
            out.hb_ts.append(self._ts(obj.ts, "ts", now_ms))

    def _typed_metrics(self, metrics: list[_Metric], base: dict[str, str], now_ms: int,
                       out: IngestBatch) -> None:
        by_name = self._by_name(base)
        tss = [now_ms if m.ts is None else m.ts for m in metrics]
        if tss and (min(tss) < TS_MIN_MS or max(tss) > TS_MAX_MS):
            raise BadRequest("timestamp out of range", field="metrics")
        keys: list[SeriesKey | None]
        if any([m.labels for m in metrics]):
            keys = []
            for m in metrics:
                if m.labels:
                    d = self._labels(m.labels, "metrics", base)
                    d[NAME_LABEL] = self._name(m.name, "metrics")
                    keys.append(tuple(sorted(d.items())))
                else:
                    keys.append(self._key_for(by_name, base, m.name))
        else:
            keys = [by_name.get(m.name) for m in metrics]
            if None in keys:
                keys = [self._key_for(by_name, base, m.name) for m in metrics]
        out.metric_keys.extend(keys)  # type: ignore[arg-type]
        out.metric_ts.extend(tss)
        out.metric_values.extend([m.value for m in metrics])

    def _by_name(self, base: dict[str, str]) -> dict[str, SeriesKey]:
        base_t = tuple(sorted(base.items()))
        by_name = self._keys.get(base_t)
        if by_name is None:
            if self._n_keys > 1_000_000:  # bound the cache; it refills from live traffic
                self._keys.clear()
                self._n_keys = 0
            by_name = self._keys[base_t] = {}
        return by_name

    def _key_for(self, by_name: dict[str, SeriesKey], base: dict[str, str], name: str,
                 where: str = "metrics") -> SeriesKey:
        key = by_name.get(name)
        if key is None:
            name = self._name(name, where)
            d = dict(base)
            d[NAME_LABEL] = name
            key = tuple(sorted(d.items()))
            by_name[name] = key
            self._n_keys += 1
        return key

    def parse(self, doc: Any, now_ms: int) -> IngestBatch:
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

    # -- pieces -----------------------------------------------------------------------------

    def _name(self, v: Any, where: str) -> str:
        if v.__class__ is str and v in self._ok_names:
            return v  # type: ignore[no-any-return]
        if not isinstance(v, str) or not _METRIC_RE.match(v):
            raise BadRequest(f"must be a metric name matching [a-zA-Z_:][a-zA-Z0-9_:]*, "
                             f"got {v!r:.80}", field=where)
        if len(self._ok_names) < 100_000:
            self._ok_names.add(v)
        return v

    def _labels(self, v: Any, where: str, base: dict[str, str]) -> dict[str, str]:
        if v is None:
            return base
        if not isinstance(v, dict):
            raise BadRequest("must be an object of string labels", field=where)
        out = dict(base)
        lim = self.limits
        for k, x in v.items():
            if k not in self._ok_labels:
                if not isinstance(k, str) or not _LABEL_RE.match(k):
                    raise BadRequest(f"label name {k!r:.80} must match [a-zA-Z_][a-zA-Z0-9_]*",
                                     field=where)
                if k in RESERVED:
                    raise BadRequest(f"label {k!r} is reserved (the device is set by "
                                     "device_id, the name by name)", field=f"{where}.{k}")
                if len(self._ok_labels) < 10_000:
                    self._ok_labels.add(k)
            if not isinstance(x, str):
                raise BadRequest("label values must be strings", field=f"{where}.{k}")
            if len(x) > lim.max_label_value_length:
                raise BadRequest(f"label value longer than {lim.max_label_value_length}",
                                 field=f"{where}.{k}")
            out[k] = x
        if len(out) + 2 > lim.max_labels_per_series:
            raise BadRequest(f"more than {lim.max_labels_per_series} labels on one series",
                             field=where)
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
            raise BadRequest(f"must be an integer Unix time in milliseconds, got {v!r:.40}",
                             field=where)
        if not TS_MIN_MS <= ts <= TS_MAX_MS:
            raise BadRequest(f"{ts} is not a Unix time in milliseconds (seconds or "
                             "microseconds sent by mistake?)", field=where)
        return ts  # type: ignore[no-any-return]

    def _object(self, obj: Any, now_ms: int, out: IngestBatch, p: str) -> None:
        if not isinstance(obj, dict):
            raise BadRequest("must be an object", field=p.rstrip(".") or "body")
        unknown = set(obj) - {"device_id", "labels", "metrics", "series", "logs", "heartbeat",
                              "ts"}
        if unknown:
            raise BadRequest("unknown field", field=p + sorted(map(str, unknown))[0])
        dev = obj.get("device_id")
        if not isinstance(dev, str) or not _DEVICE_RE.match(dev):
            raise BadRequest("is required: a non-empty string of at most 256 characters",
                             field=p + "device_id")
        base = self._labels(obj.get("labels"), p + "labels", {})
        base[DEVICE_LABEL] = dev
        lim = self.limits
        metrics = obj.get("metrics")
        if metrics is not None:
            if not isinstance(metrics, list):
                raise BadRequest("must be a list", field=p + "metrics")
            if len(metrics) + out.n_samples > lim.max_samples_per_request:
                raise PayloadTooLarge(f"more than {lim.max_samples_per_request} samples in "
                                      "one request", field=p + "metrics")
            self._metrics(metrics, base, now_ms, out, p + "metrics")
        series = obj.get("series")
        if series is not None:
            if not isinstance(series, list):
                raise BadRequest("must be a list", field=p + "series")
            self._series(series, base, now_ms, out, p + "series")
        logs = obj.get("logs")
        if logs is not None:
            if not isinstance(logs, list):
                raise BadRequest("must be a list", field=p + "logs")
            if len(logs) + out.n_logs > lim.max_logs_per_request:
                raise PayloadTooLarge(f"more than {lim.max_logs_per_request} log lines in "
                                      "one request", field=p + "logs")
            self._logs(logs, base, now_ms, out, p + "logs")
        hb = obj.get("heartbeat", False)
        if hb is True:
            out.hb_keys.append(((NAME_LABEL, HEARTBEAT_SERIES), (DEVICE_LABEL, dev)))
            out.hb_ts.append(self._ts(obj.get("ts"), p + "ts", now_ms))
        elif hb is not False and hb is not None:
            raise BadRequest("must be true or false", field=p + "heartbeat")

    def _metrics(self, metrics: list[Any], base: dict[str, str], now_ms: int, out: IngestBatch,
                 p: str) -> None:
        by_name = self._by_name(base)
        keys, tss, vals = out.metric_keys, out.metric_ts, out.metric_values
        for j, m in enumerate(metrics):
            if m.__class__ is not dict:
                raise BadRequest("must be an object", field=f"{p}[{j}]")
            try:
                name = m["name"]
                value = m["value"]
            except KeyError as exc:
                raise BadRequest("is required", field=f"{p}[{j}].{exc.args[0]}") from None
            if len(m) > 2 and not m.keys() <= {"name", "value", "ts", "labels"}:
                extra = sorted(set(m) - {"name", "value", "ts", "labels"})[0]
                raise BadRequest("unknown field", field=f"{p}[{j}].{extra}")
            vc = value.__class__
            if vc is not float and vc is not int and (
                    vc is bool or not isinstance(value, int | float)):
                raise BadRequest(f"must be a number, got {value!r:.40}", field=f"{p}[{j}].value")
            lbl = m.get("labels")
            if lbl:
                name = self._name(name, f"{p}[{j}].name")
                d = self._labels(lbl, f"{p}[{j}].labels", base)
                d[NAME_LABEL] = name
                key = tuple(sorted(d.items()))
            else:
                key = self._key_for(by_name, base, name, f"{p}[{j}].name")
            ts = m.get("ts")
            if ts.__class__ is int and TS_MIN_MS <= ts <= TS_MAX_MS:
                tss.append(ts)
            else:
                tss.append(self._ts(ts, f"{p}[{j}].ts", now_ms))
            keys.append(key)
            if vc is int:
                try:
                    value = float(value)
                except OverflowError:
                    raise BadRequest("integer out of range for a float",
                                     field=f"{p}[{j}].value") from None
            vals.append(value)

    def _series(self, series: list[Any], base: dict[str, str], now_ms: int, out: IngestBatch,
                p: str) -> None:
        """The columnar form: one series, then its timestamps and values as parallel lists."""
        by_name = self._by_name(base)
        lim = self.limits.max_samples_per_request
        for j, sr in enumerate(series):
            where = f"{p}[{j}]"
            if not isinstance(sr, dict):
                raise BadRequest("must be an object", field=where)
            extra = set(sr) - {"name", "labels", "ts", "values"}
            if extra:
                raise BadRequest("unknown field", field=f"{where}.{sorted(map(str, extra))[0]}")
            for part in ("name", "ts", "values"):
                if part not in sr:
                    raise BadRequest("is required", field=f"{where}.{part}")
            tss, values = sr["ts"], sr["values"]
            for part, col in (("ts", tss), ("values", values)):
                if not isinstance(col, list) or not col:
                    raise BadRequest("must be a non-empty list", field=f"{where}.{part}")
            if len(tss) != len(values):
                raise BadRequest(f"has {len(tss)} timestamps for {len(values)} values",
                                 field=f"{where}.ts")
            if out.n_samples + len(values) > lim:
                raise PayloadTooLarge(f"more than {lim} samples in one request", field=where)
            lbl = sr.get("labels")
            if lbl:
                d = self._labels(lbl, f"{where}.labels", base)
                d[NAME_LABEL] = self._name(sr["name"], f"{where}.name")
                key = tuple(sorted(d.items()))
            else:
                if lbl is not None and not isinstance(lbl, dict):
                    raise BadRequest("must be an object of string labels",
                                     field=f"{where}.labels")
                key = self._key_for(by_name, base, sr["name"], f"{where}.name")
            ts_out = []
            for k, t in enumerate(tss):
                if t is None:
                    raise BadRequest("must be an integer Unix time in milliseconds",
                                     field=f"{where}.ts[{k}]")
                ts_out.append(self._ts(t, f"{where}.ts[{k}]", now_ms))
            v_out = []
            for k, v in enumerate(values):
                if v.__class__ is bool or not isinstance(v, int | float):
                    raise BadRequest(f"must be a number, got {v!r:.40}",
                                     field=f"{where}.values[{k}]")
                try:
                    v_out.append(float(v))
                except OverflowError:
                    raise BadRequest("integer out of range for a float",
                                     field=f"{where}.values[{k}]") from None
            out.metric_keys.extend([key] * len(values))
            out.metric_ts.extend(ts_out)
            out.metric_values.extend(v_out)

    def _logs(self, logs: list[Any], base: dict[str, str], now_ms: int, out: IngestBatch,
              p: str) -> None:
        lim = self.limits
        for j, rec in enumerate(logs):
            if not isinstance(rec, dict):
                raise BadRequest("must be an object", field=f"{p}[{j}]")
            extra = set(rec) - {"ts", "line", "level", "labels"}
            if extra:
                raise BadRequest("unknown field", field=f"{p}[{j}].{sorted(map(str, extra))[0]}")
            line = rec.get("line")
            if not isinstance(line, str):
                raise BadRequest("is required: a string", field=f"{p}[{j}].line")
            raw = line.encode("utf-8", "surrogatepass")
            if len(raw) > lim.max_log_line_bytes:
                raise PayloadTooLarge(f"log line longer than {lim.max_log_line_bytes} bytes",
                                      field=f"{p}[{j}].line")
            level = rec.get("level", "info")
            if not isinstance(level, str) or level.lower() not in LEVELS:
                raise BadRequest(f"must be one of {', '.join(sorted(LEVELS))}",
                                 field=f"{p}[{j}].level")
            d = self._labels(rec.get("labels"), f"{p}[{j}].labels", base)
            d = dict(d)
            d["level"] = level.lower()
            out.log_keys.append(tuple(sorted(d.items())))
            out.log_ts.append(self._ts(rec.get("ts"), f"{p}[{j}].ts", now_ms))
            out.log_lines.append(raw)
