"""The native ingest parser: what it accepts, and that every refusal names the field."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable
from functools import partial

import msgpack
import pytest
import zstandard
from hypothesis import given, settings

from edge_node.config import IngestConfig
from edge_node.errors import BadRequest, IngestError, PayloadTooLarge, UnsupportedMedia
from edge_node.model import IngestBatch
from edge_node.protocols.decode import decompress
from edge_node.protocols.native import NativeParser, decode_body
from tests.strategies import native_payloads

NOW = 1_795_839_600_000


@pytest.fixture
def parser() -> NativeParser:
    return NativeParser(IngestConfig())


def test_full_payload(parser: NativeParser) -> None:
    doc = {"device_id": "dev-1", "labels": {"site": "s1"},
           "metrics": [{"name": "cpu_usage_percent", "value": 12.5, "ts": NOW,
                        "labels": {"core": "0"}},
                       {"name": "up", "value": 1}],
           "logs": [{"ts": NOW, "line": "hello", "level": "info", "labels": {"app": "x"}}],
           "heartbeat": True}
    b = parser.parse(doc, NOW + 5)
    assert b.n_samples == 2 and b.n_logs == 1 and b.n_heartbeats == 1
    assert dict(b.metric_keys[0]) == {"__name__": "cpu_usage_percent", "device": "dev-1",
                                      "site": "s1", "core": "0"}
    assert b.metric_ts == [NOW, NOW + 5]  # missing ts -> receive time
    assert b.metric_values == [12.5, 1.0]
    assert dict(b.log_keys[0]) == {"device": "dev-1", "site": "s1", "app": "x", "level": "info"}
    assert b.log_lines == [b"hello"]


def test_columnar_series(parser: NativeParser) -> None:
    doc = {"device_id": "gw", "labels": {"site": "s1"},
           "series": [{"name": "temp_c", "labels": {"probe": "a"}, "ts": [NOW, NOW + 1000],
                       "values": [21.5, 21.75]},
                      {"name": "up", "ts": [NOW], "values": [1]}],
           "metrics": [{"name": "up", "value": 0, "ts": NOW + 1}]}
    for body, ctype in ((json.dumps(doc).encode(), "application/json"),
                        (msgpack.packb(doc), "application/msgpack")):
        b = parser.parse_body(body, ctype, NOW)
        assert b.metric_ts == [NOW + 1, NOW, NOW + 1000, NOW]
        assert b.metric_values == [0.0, 21.5, 21.75, 1.0]
        assert dict(b.metric_keys[1]) == {"__name__": "temp_c", "device": "gw", "site": "s1",
                                          "probe": "a"}
        assert b.metric_keys[0] is b.metric_keys[3]  # same series, same key


@pytest.mark.parametrize(("series", "field"), [
    ({"name": "x", "ts": [NOW, NOW], "values": [1]}, "series[0].ts"),
    ({"name": "x", "ts": [], "values": []}, "series[0].ts"),
    ({"name": "x", "ts": [NOW], "values": ["1"]}, "series[0].values[0]"),
    ({"name": "x", "ts": [NOW, 5], "values": [1, 2]}, "series[0].ts[1]"),
    ({"name": "x", "values": [1]}, "series[0].ts"),
    ({"name": "9x", "ts": [NOW], "values": [1]}, "series[0].name"),
    ({"name": "x", "ts": [NOW], "values": [1], "unit": "s"}, "series[0].unit"),
])
def test_columnar_errors_name_the_field(parser: NativeParser, series: object,
                                        field: str) -> None:
    body = json.dumps({"device_id": "d", "series": [series]}).encode()
    with pytest.raises(IngestError) as info:
        parser.parse_body(body, "application/json", NOW)
    assert info.value.field == field


def test_list_of_objects(parser: NativeParser) -> None:
    docs = [{"device_id": f"d{i}", "metrics": [{"name": "x", "value": i}]} for i in range(3)]
    assert parser.parse(docs, NOW).n_samples == 3


@pytest.mark.parametrize(("doc", "field"), [
    ({"metrics": []}, "device_id"),
    ({"device_id": "d", "metrics": [{"name": "1bad", "value": 1}]}, "metrics[0].name"),
    ({"device_id": "d", "metrics": [{"name": "x", "value": "1"}]}, "metrics[0].value"),
    ({"device_id": "d", "metrics": [{"name": "x", "value": True}]}, "metrics[0].value"),
    ({"device_id": "d", "metrics": [{"name": "x"}]}, "metrics[0].value"),
    ({"device_id": "d", "metrics": [{"name": "x", "value": 1, "ts": 1795839600}]},
     "metrics[0].ts"),
    ({"device_id": "d", "metrics": [{"name": "x", "value": 1, "tz": 1}]}, "metrics[0].tz"),
    ({"device_id": "d", "metrics": [{"name": "x", "value": 1, "labels": {"device": "e"}}]},
     "metrics[0].labels.device"),
    ({"device_id": "d", "metrics": [{"name": "x", "value": 1, "labels": {"a": 1}}]},
     "metrics[0].labels.a"),
    ({"device_id": "d", "logs": [{"line": 5}]}, "logs[0].line"),
    ({"device_id": "d", "logs": [{"line": "x", "level": "loud"}]}, "logs[0].level"),
    ({"device_id": "d", "heartbeat": "yes"}, "heartbeat"),
    ({"device_id": "d", "colour": 1}, "colour"),
    ({"device_id": "d"}, "body"),
    ([{"device_id": "d", "heartbeat": True}, {"device_id": 5}], "[1].device_id"),
])
def test_errors_name_the_field(parser: NativeParser, doc: object, field: str) -> None:
    with pytest.raises(IngestError) as info:
        parser.parse(doc, NOW)
    assert info.value.field == field
    assert 400 <= info.value.status < 500


def test_sample_limit_is_413(parser: NativeParser) -> None:
    p = NativeParser(IngestConfig(max_samples_per_request=2))
    with pytest.raises(PayloadTooLarge):
        p.parse({"device_id": "d", "metrics": [{"name": "x", "value": 1}] * 3}, NOW)


def test_label_limits() -> None:
    p = NativeParser(IngestConfig(max_labels_per_series=3, max_label_value_length=16))
    with pytest.raises(BadRequest, match="labels"):
        p.parse({"device_id": "d", "labels": {"a": "1", "b": "2"},
                 "metrics": [{"name": "x", "value": 1}]}, NOW)
    with pytest.raises(BadRequest, match="longer"):
        p.parse({"device_id": "d", "labels": {"a": "x" * 17}, "heartbeat": True}, NOW)


@settings(max_examples=400)
@given(native_payloads())
def test_fuzz_only_ingest_errors_escape(doc: object) -> None:
    parser = NativeParser(IngestConfig())
    for body, ctype in ((json.dumps(doc).encode(), "application/json"),
                        (msgpack.packb(doc), "application/msgpack")):
        try:
            parser.parse_body(body, ctype, NOW)
        except IngestError as exc:
            assert exc.status in (400, 413)


def test_content_types() -> None:
    assert decode_body(b'{"a": 1}', "application/json; charset=utf-8") == {"a": 1}
    assert decode_body(msgpack.packb([1]), "application/msgpack") == [1]
    with pytest.raises(UnsupportedMedia):
        decode_body(b"x", "text/plain")
    with pytest.raises(BadRequest, match="JSON"):
        decode_body(b"{", "application/json")


@pytest.mark.parametrize("enc", ["zstd", "gzip"])
def test_compressed_bodies(enc: str) -> None:
    raw = b'{"device_id": "d", "heartbeat": true}' * 10
    body = zstandard.compress(raw) if enc == "zstd" else gzip.compress(raw)
    assert decompress(body, enc, 1 << 20) == raw


@pytest.mark.parametrize("enc", ["zstd", "gzip"])
def test_bombs_are_refused_without_inflating(enc: str) -> None:
    raw = b"\0" * (256 << 20)  # 256 MiB of zeros compresses to a few hundred KiB
    body = zstandard.compress(raw) if enc == "zstd" else gzip.compress(raw, 1)
    assert len(body) < 2 << 20
    with pytest.raises(PayloadTooLarge):
        decompress(body, enc, 1 << 20)


def test_bad_encodings() -> None:
    with pytest.raises(UnsupportedMedia):
        decompress(b"x", "br", 100)
    with pytest.raises(BadRequest):
        decompress(b"not zstd", "zstd", 100)
    with pytest.raises(BadRequest):
        decompress(zlib.compress(b"x")[:-3], "deflate", 100)


def _outcome(run: Callable[[], IngestBatch]) -> tuple[object, ...]:
    try:
        b = run()
    except IngestError as exc:
        return ("error", exc.status, exc.field)
    return ("ok", b.metric_keys, b.metric_ts, [float(v) for v in b.metric_values],
            b.log_keys, b.log_ts, b.log_lines, b.hb_keys, b.hb_ts)


@settings(max_examples=400)
@given(native_payloads())
def test_all_parse_paths_agree(doc: object) -> None:
    """The typed (msgspec) path accepts exactly what the generic path accepts, with the same
    rows, and refuses the rest with the generic path's error."""
    slow = NativeParser(IngestConfig())
    fast = NativeParser(IngestConfig())
    for body, ctype in ((json.dumps(doc).encode(), "application/json"),
                        (msgpack.packb(doc), "application/msgpack")):
        want = _outcome(partial(_generic, slow, body, ctype))
        for _ in range(2):  # twice: the second time the name/key caches are warm
            assert _outcome(partial(fast.parse_body, body, ctype, NOW)) == want
            assert _outcome(partial(_generic, fast, body, ctype)) == want


def _generic(parser: NativeParser, body: bytes, ctype: str) -> IngestBatch:
    return parser.parse(decode_body(body, ctype), NOW)


def test_well_formed_requests_take_the_typed_path(parser: NativeParser) -> None:
    def refuse(*_: object) -> IngestBatch:
        raise AssertionError("the generic path was used")

    parser.parse = refuse  # type: ignore[method-assign]
    doc = {"device_id": "d", "labels": {"site": "s"}, "heartbeat": True,
           "metrics": [{"name": "a", "value": 1}, {"name": "b", "value": 2.5, "ts": NOW,
                                                    "labels": {"core": "1"}}],
           "logs": [{"line": "x", "level": "WARN"}]}
    for body, ctype in ((json.dumps(doc).encode(), "application/json"),
                        (msgpack.packb([doc, doc]), "application/msgpack")):
        b = parser.parse_body(body, ctype, NOW)
        assert b.n_samples in (2, 4) and b.log_keys[0][1] == ("level", "warn")


def test_huge_integers_are_refused_not_crashing(parser: NativeParser) -> None:
    with pytest.raises(BadRequest, match="out of range"):
        parser.parse({"device_id": "d", "metrics": [{"name": "x", "value": 10**400}]}, NOW)
    parser.parse({"device_id": "d", "metrics": [{"name": "x", "value": 1}]}, NOW)
    with pytest.raises(BadRequest, match="out of range"):  # the warm fast path too
        parser.parse({"device_id": "d", "metrics": [{"name": "x", "value": -(10**400)}]}, NOW)
