"""Prometheus text and Influx line protocol parsers (sans-IO): documented examples, escapes,
errors that name the line, device identity, limits, and hypothesis fuzzing."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_node.config import IngestConfig
from edge_node.errors import BadRequest, PayloadTooLarge
from edge_node.model import IngestBatch
from edge_node.protocols import influx, prometheus_text
from tests.strategies import influx_lines, prometheus_text_samples, refused_cleanly

CFG = IngestConfig()
NOW = 1_795_839_600_000
SHARED_TEXT = prometheus_text.TextParser(CFG)
SHARED_INFLUX = influx.InfluxParser(CFG)


def _rows(batch: IngestBatch) -> list[tuple[dict[str, str], int, float]]:
    return [(dict(k), t, v) for k, t, v in zip(batch.metric_keys, batch.metric_ts,
                                               batch.metric_values, strict=True)]


# -- Prometheus text ---------------------------------------------------------------------------

# from the Prometheus exposition format documentation ("Text format example")
EXPOSITION_EXAMPLE = b'''# HELP http_requests_total The total number of HTTP requests.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="post",code="400"}    3 1395066363000

# Escaping in label values:
msdos_file_access_time_seconds{path="C:\\\\DIR\\\\FILE.TXT",error="Cannot find file:\\n\\"FILE.TXT\\""} 1.458255915e9

# Minimalistic line:
metric_without_timestamp_and_labels 12.47

# A weird metric from before the epoch:
something_weird{problem="division by zero"} +Inf -3982045
'''


def test_the_documented_example_parses() -> None:
    before_epoch = EXPOSITION_EXAMPLE.index(b"# A weird metric")
    rows = _rows(prometheus_text.parse(EXPOSITION_EXAMPLE[:before_epoch], CFG, NOW))
    assert rows[0] == ({"__name__": "http_requests_total", "method": "post", "code": "200"},
                       1395066363000, 1027.0)
    assert rows[1][2] == 3.0
    assert rows[2][0]["path"] == "C:\\DIR\\FILE.TXT"
    assert rows[2][0]["error"] == 'Cannot find file:\n"FILE.TXT"'
    assert rows[2][1] == NOW  # no timestamp: the receive time
    assert rows[3] == ({"__name__": "metric_without_timestamp_and_labels"}, NOW, 12.47)


def test_negative_timestamps_are_refused_naming_the_line() -> None:
    with pytest.raises(BadRequest) as exc:
        prometheus_text.parse(EXPOSITION_EXAMPLE, CFG, NOW)  # the weird pre-epoch line
    # (the example's last line is the one the format allows but we cannot store)
    assert exc.value.field == "line 13"


@pytest.mark.parametrize(("body", "line", "why"), [
    (b"ok 1\nbad{x=1} 2", "line 2", "label"),
    (b'm{a="1"', "line 1", "'}'"),
    (b'm{a="1} 2', "line 1", "unterminated"),
    (b"m 1 2 3", "line 1", "value"),
    (b"m one", "line 1", "not a number"),
    (b'm{a="x\\q"} 1', "line 1", "escape"),
    (b"m 1 1.5", "line 1", "timestamp"),
    (b'm{a="1",a="2"} 1', "line 1", "twice"),
    (b"9bad 1", "line 1", "metric name"),
])
def test_malformed_text_names_the_line(body: bytes, line: str, why: str) -> None:
    with pytest.raises(BadRequest) as exc:
        prometheus_text.parse(body, CFG, NOW)
    assert exc.value.field == line and why in exc.value.message


def test_device_identity_comes_from_the_configured_labels() -> None:
    rows = _rows(prometheus_text.parse(
        b'up{instance="cam-7:9100",job="node"} 1\nup{host="pi-3",instance="x"} 1\nup 1',
        CFG, NOW))
    assert [r[0].get("device") for r in rows] == ["cam-7:9100", "pi-3", None]
    only_job = IngestConfig(device_labels="job")
    (row,) = _rows(prometheus_text.parse(b'up{job="node"} 1', only_job, NOW))
    assert row[0]["device"] == "node"


def test_limits() -> None:
    with pytest.raises(PayloadTooLarge):
        prometheus_text.parse(b"m 1\n" * 11, IngestConfig(max_samples_per_request=10), NOW)
    with pytest.raises(BadRequest, match="labels"):
        prometheus_text.parse(b'm{a="1",b="2",c="3"} 1', IngestConfig(max_labels_per_series=2),
                              NOW)
    with pytest.raises(BadRequest, match="longer"):
        prometheus_text.parse(b'm{a="' + b"x" * 20 + b'"} 1',
                              IngestConfig(max_label_value_length=16), NOW)
    with pytest.raises(BadRequest, match="label name 'aaaa"):
        prometheus_text.parse(b"m{" + b"a" * 20 + b'="x"} 1',
                              IngestConfig(max_label_name_length=16), NOW)
    with pytest.raises(BadRequest, match="metric name longer"):
        prometheus_text.parse(b"m" * 20 + b" 1", IngestConfig(max_label_name_length=16), NOW)


@settings(max_examples=150, deadline=None)
@given(prometheus_text_samples())
def test_valid_text_round_trips(case: tuple[bytes, list[tuple[str, dict[str, str], float, int]]]
                                ) -> None:
    body, want = case
    rows = _rows(prometheus_text.parse(body, CFG, NOW))
    assert _rows(SHARED_TEXT.parse(body, NOW)) == rows
    assert len(rows) == len(want)
    for (labels, ts, value), (name, wl, wv, wts) in zip(rows, want, strict=True):
        assert labels["__name__"] == name and ts == wts
        assert {k: v for k, v in labels.items() if k not in ("__name__", "device")} == wl
        assert (math.isnan(value) and math.isnan(wv)) or value == wv


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_text_fuzz_only_4xx_escapes(body: bytes) -> None:
    refused_cleanly(lambda: prometheus_text.parse(body, CFG, NOW))


# -- Influx line protocol ----------------------------------------------------------------------

# from the InfluxDB line protocol reference
def test_documented_lines_parse() -> None:
    batch, strings = influx.parse(
        b'weather,location=us-midwest temperature=82 1465839830100400200\n'
        b'weather,location=us-midwest,season=summer temperature=82,humid=true,note="a, b=c" '
        b'1465839830100400200\n'
        b'my\\ measurement,tag\\ key=tag\\,value field\\=key=1i\n'
        b'cpu,host=server01 usage_idle=99.5,count=7u 1465839830', CFG, NOW, precision="ns")
    rows = _rows(batch)
    assert rows[0] == ({"__name__": "weather_temperature", "location": "us-midwest"},
                       1465839830100, 82.0)
    assert rows[2][0]["__name__"] == "weather_humid" and rows[2][2] == 1.0
    assert strings == 1  # note="a, b=c" is a string field: skipped, counted
    assert rows[3] == ({"__name__": "my_measurement_field_key", "tag_key": "tag,value"}, NOW,
                       1.0)
    assert rows[4][0] == {"__name__": "cpu_usage_idle", "host": "server01",
                          "device": "server01"}
    assert rows[5][2] == 7.0


@pytest.mark.parametrize(("precision", "version", "ts", "want"), [
    ("ns", 1, 1795839600123456789, 1795839600123), ("u", 1, 1795839600123456, 1795839600123),
    ("ms", 1, 1795839600123, 1795839600123), ("s", 1, 1795839600, 1795839600000),
    ("m", 1, 29930660, 1795839600000), ("h", 1, 498844, 1795838400000),
    ("us", 2, 1795839600123456, 1795839600123), ("s", 2, 1795839600, 1795839600000)])
def test_precision(precision: str, version: int, ts: int, want: int) -> None:
    batch, _ = influx.parse(f"m v=1 {ts}".encode(), CFG, NOW, precision, version)
    assert batch.metric_ts == [want]


@pytest.mark.parametrize(("body", "why"), [
    (b"m", "measurement"), (b"m v=", "key=value"), (b"m v=abc", "not a number"),
    (b"m,t v=1", "key=value"), (b'm v="open', "unterminated"), (b"m v=1 12x", "timestamp"),
    (b"m v=-1u", "negative"), (b"m v=1 1 extra", "measurement")])
def test_malformed_lines_name_the_line(body: bytes, why: str) -> None:
    with pytest.raises(BadRequest) as exc:
        influx.parse(b"ok v=1\n" + body, CFG, NOW)
    assert exc.value.field == "line 2" and why in exc.value.message


def test_bad_precision_is_named() -> None:
    with pytest.raises(BadRequest) as exc:
        influx.parse(b"m v=1", CFG, NOW, "m", 2)  # minutes exist only in v1
    assert exc.value.field == "precision"


@settings(max_examples=150, deadline=None)
@given(influx_lines())
def test_valid_lines_round_trip(case: tuple[bytes, list[tuple[str, dict[str, str], float, int]]]
                                ) -> None:
    body, want = case
    batch, strings = influx.parse(body, CFG, NOW)
    assert strings == 0
    warm, _ = SHARED_INFLUX.parse(body, NOW)  # a long-lived parser's cache answers the same
    assert warm.metric_keys == batch.metric_keys and warm.metric_ts == batch.metric_ts
    rows = _rows(batch)
    assert len(rows) == len(want)
    for (labels, ts, value), (name, tags, wv, wts) in zip(rows, want, strict=True):
        assert labels["__name__"] == name and ts == wts and value == wv
        assert {k: v for k, v in labels.items() if k not in ("__name__", "device")} == tags


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_influx_fuzz_only_4xx_escapes(body: bytes) -> None:
    refused_cleanly(lambda: influx.parse(body, CFG, NOW))
