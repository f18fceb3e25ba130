"""Hypothesis strategies shared by the tests (kept in the repo so fuzzing is repeatable), and
the check every parser fuzz test makes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import strategies as st

from edge_node.errors import IngestError
from edge_node.wire import Columns

TS_MIN, TS_MAX = 1_000_000_000_000, 9_999_999_999_999

label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,15}", fullmatch=True).filter(
    lambda s: s not in ("device", "__name__"))
label_values = st.text(max_size=20)
metric_names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,30}", fullmatch=True)

values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**53), 2**53).map(float),
    st.decimals(min_value=-10**6, max_value=10**6, places=3, allow_nan=False,
                allow_infinity=False).map(float),
)


@st.composite
def metric_columns(draw: st.DrawFn, max_rows: int = 200) -> Columns:
    n = draw(st.integers(0, max_rows))
    series = draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n))
    ts = draw(st.lists(st.integers(TS_MIN, TS_MAX), min_size=n, max_size=n))
    vals = draw(st.lists(values, min_size=n, max_size=n))
    return Columns("metrics", np.array(series, dtype=np.int64), np.array(ts, dtype=np.int64),
                   np.array(vals, dtype=np.float64))


@st.composite
def log_columns(draw: st.DrawFn, max_rows: int = 50) -> Columns:
    n = draw(st.integers(0, max_rows))
    series = draw(st.lists(st.integers(0, 1000), min_size=n, max_size=n))
    ts = draw(st.lists(st.integers(TS_MIN, TS_MAX), min_size=n, max_size=n))
    lines = draw(st.lists(st.binary(max_size=100), min_size=n, max_size=n))
    return Columns("logs", np.array(series, dtype=np.int64), np.array(ts, dtype=np.int64),
                   lines=lines)


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                         st.floats(allow_nan=False), st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=20)


@st.composite
def native_payloads(draw: st.DrawFn) -> object:
    """Mostly-valid native payloads with random corruption mixed in."""
    metric = st.fixed_dictionaries(
        {"name": st.one_of(metric_names, json_scalars), "value": st.one_of(values, json_scalars)},
        optional={"ts": st.one_of(st.integers(TS_MIN, TS_MAX), json_scalars),
                  "labels": st.one_of(st.dictionaries(label_names, label_values, max_size=3),
                                      json_values)})
    log = st.fixed_dictionaries(
        {"line": st.one_of(st.text(max_size=40), json_scalars)},
        optional={"level": st.sampled_from(["info", "error", "bogus"]),
                  "ts": st.integers(TS_MIN, TS_MAX)})
    n = st.integers(1, 4)
    series = n.flatmap(lambda k: st.fixed_dictionaries(
        {"name": st.one_of(metric_names, json_scalars),
         "ts": st.one_of(st.lists(st.integers(TS_MIN, TS_MAX), min_size=k, max_size=k),
                         st.lists(st.integers(TS_MIN, TS_MAX), max_size=5), json_values),
         "values": st.one_of(st.lists(values, min_size=k, max_size=k), json_values)},
        optional={"labels": st.one_of(st.dictionaries(label_names, label_values, max_size=3),
                                      json_values)}))
    obj = st.fixed_dictionaries(
        {"device_id": st.one_of(st.text(min_size=1, max_size=10), json_scalars)},
        optional={"labels": st.one_of(st.dictionaries(label_names, label_values, max_size=3),
                                      json_values),
                  "metrics": st.one_of(st.lists(metric, max_size=5), json_values),
                  "series": st.one_of(st.lists(series, max_size=3), json_values),
                  "logs": st.one_of(st.lists(log, max_size=3), json_values),
                  "heartbeat": st.one_of(st.booleans(), json_scalars),
                  "junk": json_values})
    return draw(st.one_of(obj, st.lists(obj, max_size=3), json_values))


NativeRows = tuple[list[tuple[dict[str, str], int, float]], list[tuple[dict[str, str], int, bytes]],
                   list[tuple[str, int]]]


@st.composite
def native_requests(draw: st.DrawFn, now_ms: int) -> tuple[object, NativeRows]:
    """A valid native request (one object or a list) and, worked out here independently of the
    parser, the rows it carries: metrics (labels with ``__name__`` and ``device``, ts, value),
    logs (labels with ``device`` and ``level``, ts, line) and heartbeats (device, ts)."""
    devices = st.text(st.characters(min_codepoint=0x20, codec="utf-8"), min_size=1, max_size=12)
    labels = st.dictionaries(label_names, label_values, max_size=3)
    timestamps = st.integers(TS_MIN, TS_MAX)
    metrics: list[tuple[dict[str, str], int, float]] = []
    logs: list[tuple[dict[str, str], int, bytes]] = []
    beats: list[tuple[str, int]] = []
    objs: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 3))):
        dev = draw(devices)
        obj: dict[str, Any] = {"device_id": dev}
        base = draw(labels) if draw(st.booleans()) else None
        if base is not None:
            obj["labels"] = base
        base = {**(base or {}), "device": dev}
        obj["metrics"] = []
        for _ in range(draw(st.integers(0, 4))):
            m: dict[str, Any] = {"name": draw(metric_names), "value": draw(values)}
            if draw(st.booleans()):
                m["ts"] = draw(timestamps)
            if draw(st.booleans()):
                m["labels"] = draw(labels)
            obj["metrics"].append(m)
            metrics.append(({**base, **m.get("labels", {}), "__name__": m["name"]},
                            m.get("ts", now_ms), m["value"]))
        if draw(st.booleans()):
            obj["series"] = []
            for _ in range(draw(st.integers(1, 2))):
                tss = draw(st.lists(timestamps, min_size=1, max_size=4))
                sr: dict[str, Any] = {"name": draw(metric_names), "ts": tss,
                                      "values": draw(st.lists(values, min_size=len(tss),
                                                              max_size=len(tss)))}
                if draw(st.booleans()):
                    sr["labels"] = draw(labels)
                obj["series"].append(sr)
                key = {**base, **sr.get("labels", {}), "__name__": sr["name"]}
                metrics.extend((key, t, v) for t, v in zip(tss, sr["values"], strict=True))
        if draw(st.booleans()):
            obj["logs"] = []
            for _ in range(draw(st.integers(1, 3))):
                rec: dict[str, Any] = {"line": draw(st.text(max_size=40))}
                if draw(st.booleans()):
                    rec["level"] = draw(st.sampled_from(["info", "ERROR", "Warn", "debug"]))
                if draw(st.booleans()):
                    rec["ts"] = draw(timestamps)
                if draw(st.booleans()):
                    rec["labels"] = draw(labels)
                obj["logs"].append(rec)
                logs.append(({**base, **rec.get("labels", {}),
                              "level": rec.get("level", "info").lower()},
                             rec.get("ts", now_ms), rec["line"].encode()))
        if draw(st.booleans()) or not (metrics or logs or beats):
            obj["heartbeat"] = True
            if draw(st.booleans()):
                obj["ts"] = draw(timestamps)
            beats.append((dev, obj.get("ts", now_ms)))
        objs.append(obj)
    doc = objs if len(objs) > 1 or draw(st.booleans()) else objs[0]
    return doc, (metrics, logs, beats)


def _prom_escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@st.composite
def prometheus_text_samples(draw: st.DrawFn, max_lines: int = 30
                            ) -> tuple[bytes, list[tuple[str, dict[str, str], float, int]]]:
    """A valid Prometheus text body and the samples it holds (name, labels, value, ts)."""
    n = draw(st.integers(1, max_lines))
    lines: list[str] = []
    want = []
    for _ in range(n):
        name = draw(metric_names)
        labels = draw(st.dictionaries(label_names, label_values, max_size=4))
        value = draw(values)
        ts = draw(st.integers(TS_MIN, TS_MAX))
        inner = ",".join(f'{k}="{_prom_escape(v)}"' for k, v in labels.items())
        lines.append(f"{name}{{{inner}}} {value!r} {ts}" if labels or draw(st.booleans())
                     else f"{name} {value!r} {ts}")
        want.append((name, labels, value, ts))
    if draw(st.booleans()):
        lines.insert(0, "# HELP x some help\n# TYPE x gauge")
    return "\n".join(lines).encode(), want


@st.composite
def influx_lines(draw: st.DrawFn, max_lines: int = 20
                 ) -> tuple[bytes, list[tuple[str, dict[str, str], float, int]]]:
    """Valid line protocol (ns timestamps) and the samples it maps to."""
    n = draw(st.integers(1, max_lines))
    lines: list[str] = []
    want = []
    words = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
    for _ in range(n):
        meas = draw(words)
        tags = draw(st.dictionaries(words, st.from_regex(r"[A-Za-z0-9 ,=._-]{1,10}",
                                                         fullmatch=True), max_size=3))
        fields = draw(st.dictionaries(words, st.one_of(
            st.integers(-(2**53), 2**53).map(lambda i: (f"{i}i", float(i))),
            st.floats(-1e12, 1e12, allow_nan=False).map(lambda f: (repr(f), f)),
            st.sampled_from([("t", 1.0), ("FALSE", 0.0), ("true", 1.0)])), min_size=1,
            max_size=3))
        ts_ms = draw(st.integers(TS_MIN, TS_MAX))

        def esc(s: str) -> str:
            return s.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")

        head = ",".join([meas, *(f"{esc(k)}={esc(v)}" for k, v in tags.items())])
        body = ",".join(f"{k}={text}" for k, (text, _) in fields.items())
        lines.append(f"{head} {body} {ts_ms * 1_000_000}")
        for k, (_, v) in fields.items():
            want.append((f"{meas}_{k}", tags, v, ts_ms))
    return "\n".join(lines).encode(), want


def _pb_varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _pb_len(field: int, payload: bytes) -> bytes:
    return _pb_varint(field << 3 | 2) + _pb_varint(len(payload)) + payload


def encode_write_request(series: list[tuple[dict[str, str], list[tuple[float, int]]]]) -> bytes:
    """A Prometheus remote-write ``WriteRequest`` (protobuf, uncompressed), written by hand
    from the proto definition, independent of the decoder under test."""
    import struct

    out = b""
    for labels, samples in series:
        ts_msg = b"".join(_pb_len(1, _pb_len(1, k.encode()) + _pb_len(2, v.encode()))
                          for k, v in labels.items())
        for value, ts in samples:
            sample = b"\x09" + struct.pack("<d", value) + b"\x10" + _pb_varint(ts)
            ts_msg += _pb_len(2, sample)
        out += _pb_len(1, ts_msg)
    return out


@st.composite
def write_requests(draw: st.DrawFn, max_series: int = 10
                   ) -> list[tuple[dict[str, str], list[tuple[float, int]]]]:
    out = []
    for _ in range(draw(st.integers(1, max_series))):
        labels = {"__name__": draw(metric_names),
                  **draw(st.dictionaries(label_names, label_values.filter(bool), max_size=4))}
        samples = draw(st.lists(st.tuples(values, st.integers(TS_MIN, TS_MAX)), min_size=1,
                                max_size=5))
        out.append((labels, samples))
    return out


def encode_push_request(streams: list[tuple[str, list[tuple[int, str, dict[str, str]]]]]
                        ) -> bytes:
    """A Loki ``PushRequest`` (protobuf, uncompressed) written by hand from logproto: each
    stream is (labels text like '{a="b"}', [(ts ns, line, structured metadata)])."""
    out = b""
    for labels, entries in streams:
        msg = _pb_len(1, labels.encode())
        for ts_ns, line, meta in entries:
            stamp = (b"\x08" + _pb_varint(ts_ns // 1_000_000_000) + b"\x10"
                     + _pb_varint(ts_ns % 1_000_000_000))
            entry = _pb_len(1, stamp) + _pb_len(2, line.encode())
            for k, v in meta.items():
                entry += _pb_len(3, _pb_len(1, k.encode()) + _pb_len(2, v.encode()))
            msg += _pb_len(2, entry)
        out += _pb_len(1, msg)
    return out


def refused_cleanly(parse: Callable[[], Any]) -> None:
    """Run ``parse``: it may succeed, or refuse with a 4xx that says why; nothing else escapes."""
    try:
        parse()
    except IngestError as exc:
        assert 400 <= exc.status < 500 and exc.message
