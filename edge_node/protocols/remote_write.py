"""Prometheus remote write (``POST /api/v1/write``, protobuf + snappy), as Prometheus, vmagent
and Grafana Alloy send it (sans-IO).

The body is a ``prometheus.WriteRequest``; only the fields that carry samples are read::

    WriteRequest { repeated TimeSeries timeseries = 1; repeated MetricMetadata metadata = 3; }
    TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2;
                   repeated Exemplar exemplars = 3; repeated Histogram histograms = 4; }
    Label        { string name = 1; string value = 2; }
    Sample       { double value = 1; int64 timestamp = 2; }   // timestamp in milliseconds

Metadata and exemplars are skipped; native histograms are skipped and counted (no sample
model for them yet). A hand-written decoder: a protobuf library would need generated code for
four small messages, and this one refuses malformed input with a 400 naming the time series.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from ..config import IngestConfig
from ..errors import BadRequest
from ..model import NAME_LABEL, IngestBatch
from .common import SeriesBuilder

_DOUBLE = struct.Struct("<d")


class _Malformed(Exception):
    pass


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value): an int for varints, else (start, end)."""
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        num, wt = tag >> 3, tag & 7
        if wt == 0:
            val, pos = _varint(buf, pos, end)
            yield num, wt, val
        elif wt == 1:
            if pos + 8 > end:
                raise _Malformed("truncated 64-bit field")
            yield num, wt, (pos, pos + 8)
            pos += 8
        elif wt == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _Malformed("length-delimited field runs past its message")
            yield num, wt, (pos, pos + n)
            pos += n
        elif wt == 5:
            if pos + 4 > end:
                raise _Malformed("truncated 32-bit field")
            yield num, wt, (pos, pos + 4)
            pos += 4
        else:
            raise _Malformed(f"unsupported wire type {wt}")


def _string(buf: bytes, span: tuple[int, int]) -> str:
    try:
        return buf[span[0]:span[1]].decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed("label is not UTF-8") from None


def parse(body: bytes, cfg: IngestConfig, now_ms: int) -> tuple[IngestBatch, int]:
    """Parse a (decompressed) WriteRequest; returns the batch and native histograms skipped."""
    builder = SeriesBuilder(cfg)
    out = IngestBatch()
    histograms = 0
    index = -1
    try:
        for num, wt, val in _fields(body, 0, len(body)):
            if num != 1:
                continue  # metadata and anything newer
            if wt != 2:
                raise _Malformed("timeseries must be a message")
            index += 1
            start, end = val
            name = ""
            labels: list[tuple[str, str]] = []
            samples: list[tuple[float, int]] = []
            for fnum, fwt, fval in _fields(body, start, end):
                if fnum == 1 and fwt == 2:
                    lname = lvalue = ""
                    for lnum, lwt, lval in _fields(body, fval[0], fval[1]):
                        if lnum == 1 and lwt == 2:
                            lname = _string(body, lval)
                        elif lnum == 2 and lwt == 2:
                            lvalue = _string(body, lval)
                    if lname == NAME_LABEL:
                        name = lvalue
                    elif lvalue:  # an empty value means "no such label" in Prometheus
                        labels.append((lname, lvalue))
                elif fnum == 2 and fwt == 2:
                    value, ts = 0.0, 0
                    for snum, swt, sval in _fields(body, fval[0], fval[1]):
                        if snum == 1 and swt == 1:
                            value = _DOUBLE.unpack_from(body, sval[0])[0]
                        elif snum == 2 and swt == 0:
                            ts = sval - (1 << 64) if sval >= 1 << 63 else sval
                    samples.append((value, ts))
                elif fnum == 4:
                    histograms += 1
            if not samples:
                continue
            where = f"timeseries[{index}]"
            if not name:
                raise BadRequest("series has no __name__ label", field=where)
            key = builder.key(name, tuple(sorted(labels)), where)
            for value, ts in samples:
                if ts < 0:
                    raise BadRequest(f"timestamp {ts} is negative", field=where)
                builder.add(out, key, ts or now_ms, value)
    except _Malformed as exc:
        where = f"timeseries[{index}]" if index >= 0 else "body"
        raise BadRequest(f"malformed WriteRequest protobuf: {exc}", field=where) from None
    return out, histograms
