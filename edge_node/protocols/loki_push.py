"""Grafana Loki's push API at the edge (``POST /loki/api/v1/push``), as Promtail, Fluent Bit's
loki output and Grafana Alloy send it (sans-IO).

JSON (``application/json``)::

    {"streams": [{"stream": {"app": "pump", "level": "error"},
                  "values": [["1795839600000000000", "line", {"trace_id": "abc"}]]}]}

Protobuf (``application/x-protobuf``, snappy-compressed; logproto ``PushRequest``)::

    PushRequest   { repeated StreamAdapter streams = 1; }
    StreamAdapter { string labels = 1; repeated EntryAdapter entries = 2; }   // '{a="b"}'
    EntryAdapter  { Timestamp timestamp = 1; string line = 2;
                    repeated LabelPairAdapter structuredMetadata = 3; }
    Timestamp     { int64 seconds = 1; int32 nanos = 2; }

Each stream's labels (plus an entry's structured metadata, which central turns back into Loki
structured metadata) become the log series' labels; the device comes from the configured
identity labels. Timestamps are kept to the millisecond.
"""

from __future__ import annotations

import json
from typing import Any

from ..config import IngestConfig
from ..errors import BadRequest, UnsupportedMedia
from ..model import IngestBatch
from .common import SeriesBuilder
from .prometheus_text import parse_label_set
from .protobuf import Malformed, fields, int64, string, string_pair

JSON_TYPES = ("application/json",)
PROTO_TYPES = ("application/x-protobuf", "application/protobuf")


def _entry_labels(stream: tuple[tuple[str, str], ...], meta: dict[str, str] | None
                  ) -> tuple[tuple[str, str], ...]:
    if not meta:
        return stream
    merged = dict(stream)
    merged.update(meta)
    return tuple(sorted(merged.items()))


def _ns_to_ms(ns: int, where: str) -> int:
    if ns < 0:
        raise BadRequest(f"timestamp {ns} is negative", field=where)
    return ns // 1_000_000


def parse_json(body: bytes, cfg: IngestConfig, now_ms: int) -> IngestBatch:
    try:
        doc: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", field="body") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("streams"), list):
        raise BadRequest("must be an object with a 'streams' list", field="body")
    builder = SeriesBuilder(cfg)
    out = IngestBatch()
    for i, st in enumerate(doc["streams"]):
        where = f"streams[{i}]"
        labels = st.get("stream") if isinstance(st, dict) else None
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise BadRequest("must be an object of string label values", field=where + ".stream")
        values = st.get("values")
        if not isinstance(values, list):
            raise BadRequest("must be a list of [timestamp, line] entries",
                             field=where + ".values")
        stream = tuple(sorted(labels.items()))
        for j, val in enumerate(values):
            w = f"{where}.values[{j}]"
            if not isinstance(val, list) or len(val) not in (2, 3):
                raise BadRequest("must be [timestamp, line] or [timestamp, line, metadata]",
                                 field=w)
            ts, line = val[0], val[1]
            if not isinstance(ts, str) or not ts.isdigit():
                raise BadRequest("timestamp must be a string of Unix nanoseconds", field=w)
            if not isinstance(line, str):
                raise BadRequest("line must be a string", field=w)
            meta = val[2] if len(val) == 3 else None
            if meta is not None and (not isinstance(meta, dict) or not all(
                    isinstance(v, str) for v in meta.values())):
                raise BadRequest("structured metadata must be an object of strings", field=w)
            key = builder.stream_key(_entry_labels(stream, meta), w)
            builder.add_log(out, key, _ns_to_ms(int(ts), w),
                            line.encode("utf-8", "surrogatepass"), w)
    return builder.finish(out)


def parse_proto(body: bytes, cfg: IngestConfig, now_ms: int) -> IngestBatch:
    builder = SeriesBuilder(cfg)
    out = IngestBatch()
    where = "body"
    try:
        for i, (num, wt, span) in enumerate(fields(body, 0, len(body))):
            if num != 1 or wt != 2:
                continue
            where = f"streams[{i}]"
            stream: tuple[tuple[str, str], ...] = ()
            entries: list[tuple[int, int]] = []
            for fnum, fwt, fval in fields(body, span[0], span[1]):
                if fnum == 1 and fwt == 2:
                    text = string(body, fval).strip()
                    if text:
                        if not text.startswith("{"):
                            raise BadRequest(f"labels {text!r} must look like {{a=\"b\"}}",
                                             field=where)
                        parsed, end = parse_label_set(text, 0, where)
                        if text[end:].strip():
                            raise BadRequest(f"labels {text!r}: text after '}}'", field=where)
                        stream = tuple(sorted(parsed))
                elif fnum == 2 and fwt == 2:
                    entries.append(fval)
            for j, (start, end) in enumerate(entries):
                w = f"{where}.entries[{j}]"
                seconds = nanos = 0
                line = ""
                meta: dict[str, str] = {}
                for enum, ewt, ev in fields(body, start, end):
                    if enum == 1 and ewt == 2:
                        for tnum, twt, tv in fields(body, ev[0], ev[1]):
                            if tnum == 1 and twt == 0:
                                seconds = int64(tv)
                            elif tnum == 2 and twt == 0:
                                nanos = tv
                    elif enum == 2 and ewt == 2:
                        line = string(body, ev)
                    elif enum == 3 and ewt == 2:
                        name, value = string_pair(body, ev)
                        meta[name] = value
                key = builder.stream_key(_entry_labels(stream, meta), w)
                ts_ms = _ns_to_ms(seconds * 1_000_000_000 + nanos, w) if seconds or nanos \
                    else now_ms
                builder.add_log(out, key, ts_ms, line.encode("utf-8", "surrogatepass"), w)
    except Malformed as exc:
        raise BadRequest(f"malformed PushRequest protobuf: {exc}", field=where) from None
    return builder.finish(out)


def parse(body: bytes, content_type: str | None, cfg: IngestConfig, now_ms: int
          ) -> IngestBatch:
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if ctype in JSON_TYPES:
        return parse_json(body, cfg, now_ms)
    if ctype in PROTO_TYPES:
        return parse_proto(body, cfg, now_ms)
    raise UnsupportedMedia(f"Content-Type {content_type!r} is not supported (use "
                           "application/json or application/x-protobuf)", field="Content-Type")
