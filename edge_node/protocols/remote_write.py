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

from ..config import IngestConfig
from ..errors import BadRequest
from ..model import NAME_LABEL, IngestBatch
from .common import SeriesBuilder
from .protobuf import Malformed, fields, int64, string_pair

_DOUBLE = struct.Struct("<d")


def parse(body: bytes, cfg: IngestConfig, now_ms: int) -> tuple[IngestBatch, int]:
    """Parse a (decompressed) WriteRequest; returns the batch and native histograms skipped."""
    builder = SeriesBuilder(cfg)
    out = IngestBatch()
    histograms = 0
    index = -1
    try:
        for num, wt, val in fields(body, 0, len(body)):
            if num != 1:
                continue  # metadata and anything newer
            if wt != 2:
                raise Malformed("timeseries must be a message")
            index += 1
            start, end = val
            name = ""
            labels: list[tuple[str, str]] = []
            samples: list[tuple[float, int]] = []
            for fnum, fwt, fval in fields(body, start, end):
                if fnum == 1 and fwt == 2:
                    lname, lvalue = string_pair(body, fval)
                    if lname == NAME_LABEL:
                        name = lvalue
                    elif lvalue:  # an empty value means "no such label" in Prometheus
                        labels.append((lname, lvalue))
                elif fnum == 2 and fwt == 2:
                    value, ts = 0.0, 0
                    for snum, swt, sval in fields(body, fval[0], fval[1]):
                        if snum == 1 and swt == 1:
                            value = _DOUBLE.unpack_from(body, sval[0])[0]
                        elif snum == 2 and swt == 0:
                            ts = int64(sval)
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
    except Malformed as exc:
        where = f"timeseries[{index}]" if index >= 0 else "body"
        raise BadRequest(f"malformed WriteRequest protobuf: {exc}", field=where) from None
    return out, histograms
