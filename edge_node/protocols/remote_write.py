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
from ..model import NAME_LABEL, IngestBatch, SeriesKey
from .common import SeriesBuilder, bounded
from .protobuf import Malformed, fields, int64, string_pair, varint

_DOUBLE = struct.Struct("<d")


class RemoteWriteParser:
    """Decodes WriteRequests, remembering the series key of each distinct run of label bytes:
    a sender repeats the same label encoding for a series in every request, so after the first
    one a series costs a dictionary lookup plus its samples."""

    def __init__(self, cfg: IngestConfig, max_cached: int = 1_000_000) -> None:
        self.cfg = cfg
        self.max_cached = max_cached
        self._keys: dict[bytes, SeriesKey] = {}

    def parse(self, body: bytes, now_ms: int) -> tuple[IngestBatch, int]:
        """Parse a (decompressed) WriteRequest; returns the batch and histograms skipped."""
        bounded(self._keys, self.max_cached)
        builder = SeriesBuilder(self.cfg)
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
                histograms += self._series(body, val[0], val[1], builder, out, now_ms,
                                           f"timeseries[{index}]")
        except Malformed as exc:
            where = f"timeseries[{index}]" if index >= 0 else "body"
            raise BadRequest(f"malformed WriteRequest protobuf: {exc}", field=where) from None
        return out, histograms

    def _series(self, body: bytes, start: int, end: int, builder: SeriesBuilder,
                out: IngestBatch, now_ms: int, where: str) -> int:
        # the labels (field 1, tag byte 0x0a) come first in every known encoder: their bytes
        # identify the series
        pos = start
        while pos < end and body[pos] == 0x0A:
            n, p2 = varint(body, pos + 1, end)
            pos = p2 + n
        if pos > end:
            raise Malformed("label runs past its time series")
        label_bytes = body[start:pos]
        key = self._keys.get(label_bytes)
        histograms = 0
        samples: list[tuple[float, int]] = []
        late_labels = False
        for fnum, fwt, fval in fields(body, pos, end):
            if fnum == 2 and fwt == 2:
                s0, s1 = fval
                # the usual sample: 0x09 <8-byte double> 0x10 <varint ms>
                if s1 - s0 >= 10 and body[s0] == 0x09 and body[s0 + 9] == 0x10:
                    ts, p2 = varint(body, s0 + 10, s1)
                    if p2 == s1:
                        samples.append((_DOUBLE.unpack_from(body, s0 + 1)[0], int64(ts)))
                        continue
                value, ts = 0.0, 0
                for snum, swt, sval in fields(body, s0, s1):
                    if snum == 1 and swt == 1:
                        value = _DOUBLE.unpack_from(body, sval[0])[0]
                    elif snum == 2 and swt == 0:
                        ts = int64(sval)
                samples.append((value, ts))
            elif fnum == 1:
                late_labels = True
            elif fnum == 4:
                histograms += 1
        if not samples:
            return histograms
        if key is None or late_labels:
            key = self._decode_key(body, start, end, builder, where)
            if not late_labels:
                self._keys[label_bytes] = key
        for value, ts in samples:
            if ts < 0:
                raise BadRequest(f"timestamp {ts} is negative", field=where)
            builder.add(out, key, ts or now_ms, value)
        return histograms

    @staticmethod
    def _decode_key(body: bytes, start: int, end: int, builder: SeriesBuilder, where: str
                    ) -> SeriesKey:
        name = ""
        labels: list[tuple[str, str]] = []
        for fnum, fwt, fval in fields(body, start, end):
            if fnum == 1 and fwt == 2:
                lname, lvalue = string_pair(body, fval)
                if lname == NAME_LABEL:
                    name = lvalue
                elif lvalue:  # an empty value means "no such label" in Prometheus
                    labels.append((lname, lvalue))
        if not name:
            raise BadRequest("series has no __name__ label", field=where)
        return builder.key(name, tuple(sorted(labels)), where)


def parse(body: bytes, cfg: IngestConfig, now_ms: int) -> tuple[IngestBatch, int]:
    """Parse one WriteRequest with a fresh :class:`RemoteWriteParser` (no cache)."""
    return RemoteWriteParser(cfg).parse(body, now_ms)
