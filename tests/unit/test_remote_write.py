"""Prometheus remote write decoding (sans-IO): round trips, snappy bombs, malformed protobuf."""

from __future__ import annotations

import math

import cramjam
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_node.config import IngestConfig
from edge_node.errors import BadRequest, PayloadTooLarge
from edge_node.protocols import remote_write
from edge_node.protocols.decode import decompress
from tests.strategies import encode_write_request, refused_cleanly, write_requests

CFG = IngestConfig()
NOW = 1_795_839_600_000
SHARED = remote_write.RemoteWriteParser(CFG)


@settings(max_examples=150, deadline=None)
@given(write_requests())
def test_write_requests_round_trip(series: list[tuple[dict[str, str], list[tuple[float, int]]]]
                                   ) -> None:
    body = bytes(cramjam.snappy.compress_raw(encode_write_request(series)))
    raw = decompress(body, "snappy", 1 << 24)
    batch, histograms = remote_write.parse(raw, CFG, NOW)
    assert histograms == 0
    # a long-lived parser (its label cache warm from earlier examples) answers the same
    again, _ = SHARED.parse(raw, NOW)
    again2, _ = SHARED.parse(raw, NOW)
    assert again.metric_keys == again2.metric_keys == batch.metric_keys
    assert again2.metric_ts == batch.metric_ts
    want = [(labels, ts, v) for labels, samples in series for v, ts in samples]
    assert len(batch.metric_values) == len(want)
    for key, ts, value, (labels, wts, wv) in zip(batch.metric_keys, batch.metric_ts,
                                                 batch.metric_values, want, strict=True):
        got = {k: v for k, v in key if k != "device"}
        assert got == labels and ts == wts
        assert (math.isnan(value) and math.isnan(wv)) or value == wv


def test_device_and_missing_timestamp() -> None:
    raw = encode_write_request([({"__name__": "up", "instance": "cam:9100", "job": "n"},
                                 [(1.0, 0)])])
    batch, _ = remote_write.parse(raw, CFG, NOW)
    assert dict(batch.metric_keys[0])["device"] == "cam:9100"
    assert batch.metric_ts == [NOW]


def test_a_series_without_a_name_is_named_in_the_error() -> None:
    raw = encode_write_request([({"__name__": "ok"}, [(1.0, NOW)]), ({"job": "x"}, [(1.0, NOW)])])
    with pytest.raises(BadRequest) as exc:
        remote_write.parse(raw, CFG, NOW)
    assert exc.value.field == "timeseries[1]" and "__name__" in exc.value.message


def test_a_snappy_bomb_is_refused_before_inflating() -> None:
    bomb = bytes(cramjam.snappy.compress_raw(b"\0" * (8 << 20)))
    assert len(bomb) < 500_000
    with pytest.raises(PayloadTooLarge):
        decompress(bomb, "snappy", 1 << 20)


def test_truncated_protobuf_is_a_400() -> None:
    raw = encode_write_request([({"__name__": "m"}, [(1.0, NOW)])])
    with pytest.raises(BadRequest, match="malformed"):
        remote_write.parse(raw[:-3], CFG, NOW)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_only_4xx_escapes(body: bytes) -> None:
    for raw in (body, bytes(cramjam.snappy.compress_raw(body))):
        refused_cleanly(lambda raw=raw: remote_write.parse(decompress(raw, "snappy", 1 << 20),
                                                           CFG, NOW))
