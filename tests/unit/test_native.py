"""The native ingest parser: what it accepts, and that every refusal names the field."""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import msgpack
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_node.config import IngestConfig
from edge_node.errors import BadRequest, IngestError, PayloadTooLarge, UnsupportedMedia
from edge_node.model import HEARTBEAT_SERIES, IngestBatch
from edge_node.protocols import native, prometheus_text
from edge_node.protocols.decode import decompress
from edge_node.protocols.native import NativeParser, decode_body
from tests.strategies import NativeRows, native_payloads, native_requests

NOW = 1_795_839_600_000


def _bodies(doc: object) -> Iterator[tuple[bytes, str]]:
    """``doc`` as each media type the native API reads."""
    yield json.dumps(doc).encode(), "application/json"
    yield msgpack.packb(doc), "application/msgpack"


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
    ({"name": "x", "ts": [NOW, NOW // 1000], "values": [1, 2]}, "series[0].ts[1]"),  # seconds
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
    one = decode_body(b'{"device_id": "a"}', "application/json; charset=utf-8")
    assert not isinstance(one, list) and one.device_id == "a"
    many = decode_body(msgpack.packb([{"device_id": "b"}]), "application/msgpack")
    assert isinstance(many, list) and many[0].device_id == "b"
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
    return ("ok", b.metric_keys, b.metric_ts, [repr(float(v)) for v in b.metric_values],
            b.log_keys, b.log_ts, b.log_lines, b.hb_keys, b.hb_ts)


@settings(max_examples=400)
@given(native_payloads())
def test_every_reader_and_warm_caches_agree(doc: object) -> None:
    """JSON, msgpack and an already decoded document meet one schema and one semantic pass: the
    same rows, or the same refusal, from each; and again once the parser's caches are warm."""
    want = _outcome(partial(NativeParser(IngestConfig()).parse, doc, NOW))
    warm = NativeParser(IngestConfig())
    for body, ctype in _bodies(doc):
        for _ in range(2):  # twice: the second time the series-key caches are warm
            assert _outcome(partial(warm.parse_body, body, ctype, NOW)) == want


@settings(max_examples=300)
@given(native_requests(NOW))
def test_valid_requests_give_the_rows_they_carry(request: tuple[object, NativeRows]) -> None:
    doc, (metrics, logs, beats) = request
    parser = NativeParser(IngestConfig())
    for body, ctype in _bodies(doc):
        for _ in range(2):
            b = parser.parse_body(body, ctype, NOW)
            assert [(dict(k), t, repr(v)) for k, t, v in zip(
                b.metric_keys, b.metric_ts, b.metric_values, strict=True)] == [
                (k, t, repr(v)) for k, t, v in metrics]
            assert list(zip(map(dict, b.log_keys), b.log_ts, b.log_lines, strict=True)) == logs
            assert [dict(k) for k in b.hb_keys] == [
                {"__name__": HEARTBEAT_SERIES, "device": d} for d, _ in beats]
            assert b.hb_ts == [t for _, t in beats]


# What breaks a field of each kind (a deleted required field too), each alone enough to refuse.
_BAD: dict[str, list[object]] = {
    "device_id": [5, None, "", "x" * 257, "a\x01b", [], True],
    "name": [5, None, "9bad", "a-b", "", [], "m" * 129],
    "number": ["1", None, True, [], {}],
    "ts": ["x", True, 1_795_839_600, NOW + 0.5, 10**13, [], {}],
    "line": [5, None, [], "x" * 65_537],
    "level": ["loud", 5, None],
    "heartbeat": ["yes", 1, [], {}],
    "list": [5, "x", {}, True],
    "object": [5, "x", [], None],
    "columns": [[], 5, {}],
}
_REQUIRED = {"device_id", "name", "line"}
_KNOWN = {"object": {"device_id", "labels", "metrics", "series", "logs", "heartbeat", "ts"},
          "metric": {"name", "value", "ts", "labels"}, "series": {"name", "ts", "values", "labels"},
          "log": {"line", "level", "ts", "labels"}}
# (labels to add, the field at fault relative to the labels' field; None: the labels' own)
_BAD_LABELS: list[tuple[dict[str, Any], str | None]] = [
    ({"a-b": "x"}, None), ({"device": "x"}, "device"), ({"__name__": "x"}, "__name__"),
    ({"a": 5}, "a"), ({"a": None}, "a"), ({"a" * 129: "x"}, None), ({"a": "x" * 1025}, "a"),
    ({"": "x"}, None)]


def _field(path: list[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else part
    return out


def _sites(doc: Any) -> Iterator[tuple[list[str | int], str]]:
    """Every place of a valid request that a mutation can break, with its kind."""
    objs = doc if isinstance(doc, list) else [doc]
    for i, obj in enumerate(objs):
        pre: list[str | int] = [i] if isinstance(doc, list) else []
        yield pre, "object"
        yield [*pre, "device_id"], "device_id"
        yield [*pre, "labels"], "labels"
        yield [*pre, "heartbeat"], "heartbeat"
        if obj.get("heartbeat"):
            yield [*pre, "ts"], "ts"
        for part, kind in (("metrics", "metric"), ("series", "series"), ("logs", "log")):
            if part in obj:
                yield [*pre, part], "list"
                for j, item in enumerate(obj[part]):
                    at = [*pre, part, j]
                    yield at, kind
                    yield [*at, "labels"], "labels"
                    if kind == "log":
                        yield [*at, "line"], "line"
                        yield [*at, "level"], "level"
                        yield [*at, "ts"], "ts"
                        continue
                    yield [*at, "name"], "name"
                    if kind == "metric":
                        yield [*at, "value"], "number"
                        yield [*at, "ts"], "ts"
                        continue
                    yield [*at, "ts"], "columns"
                    yield [*at, "values"], "columns"
                    for k in range(len(item["ts"])):
                        yield [*at, "ts", k], "ts"
                        yield [*at, "values", k], "number"


def _mutate(draw: Callable[[st.SearchStrategy[Any]], Any], doc: Any) -> tuple[Any, str]:
    """``doc`` with one thing broken, and the field the refusal must name."""
    path, kind = draw(st.sampled_from(list(_sites(doc))))
    holder: Any = doc
    for part in path[:-1]:
        holder = holder[part]
    if kind in _KNOWN and draw(st.booleans()):  # an unknown field
        key = draw(st.text(max_size=8).filter(lambda k: k not in _KNOWN[kind]))
        (holder[path[-1]] if path else doc)[key] = 1
        at = _field(path)
        if re.fullmatch(r"[\w-]+", key):
            return doc, f"{at}.{key}" if at else key
        return doc, f"{at}[{json.dumps(key, ensure_ascii=False)}]"
    if not path:  # the one top-level object itself
        return draw(st.sampled_from(_BAD["object"])), "body"
    last = path[-1]
    if kind == "labels":
        extra, at = draw(st.sampled_from(_BAD_LABELS))
        holder[last] = {**holder.get(last, {}), **extra}
        return doc, _field([*path, at] if at else path)
    if kind in _KNOWN:
        kind = "object"
    if kind in _REQUIRED and draw(st.booleans()):
        del holder[last]
        return doc, _field(path)
    if kind == "columns" and path[-1] == "ts" and draw(st.booleans()):
        holder["ts"] = [*holder["ts"], NOW]  # one timestamp more than values
        return doc, _field(path)
    holder[last] = draw(st.sampled_from(_BAD[kind]))
    return doc, _field(path)


@settings(max_examples=500)
@given(st.data())
def test_any_one_broken_field_is_refused_by_name(data: st.DataObject) -> None:
    """Break one field of a valid request (a wrong type or value, a missing or unknown field, a
    bad label): the request is refused with a 4xx naming exactly that field, however encoded."""
    doc, _ = data.draw(native_requests(NOW))
    broken, field = _mutate(data.draw, doc)
    parser = NativeParser(IngestConfig())
    for body, ctype in _bodies(broken):
        with pytest.raises(IngestError) as info:
            parser.parse_body(body, ctype, NOW)
        assert (info.value.field, info.value.to_json().get("field")) == (field, field)
        assert 400 <= info.value.status < 500


def test_well_formed_requests_are_decoded_once(parser: NativeParser,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """msgspec alone reads a well-formed body: Python's json (for NaN and the like) is not
    asked."""
    def refuse(*_: object) -> object:
        raise AssertionError("the body was read twice")

    monkeypatch.setattr(native, "_lenient_json", refuse)
    doc = {"device_id": "d", "labels": {"site": "s"}, "heartbeat": True,
           "metrics": [{"name": "a", "value": 1}, {"name": "b", "value": 2.5, "ts": NOW,
                                                    "labels": {"core": "1"}}],
           "logs": [{"line": "x", "level": "WARN"}]}
    for body, ctype in ((json.dumps(doc).encode(), "application/json"),
                        (msgpack.packb([doc, doc]), "application/msgpack")):
        b = parser.parse_body(body, ctype, NOW)
        assert b.n_samples in (2, 4) and b.log_keys[0][1] == ("level", "warn")
    nan = b'{"device_id": "d", "metrics": [{"name": "a", "value": NaN}]}'
    with pytest.raises(AssertionError, match="twice"):
        parser.parse_body(nan, "application/json", NOW)


def test_python_json_extensions_are_read(parser: NativeParser) -> None:
    """What Python's json.dumps writes for NaN, infinities and huge floats is accepted."""
    body = (b'{"device_id": "d", "metrics": [{"name": "a", "value": NaN}, '
            b'{"name": "a", "value": -Infinity}, {"name": "a", "value": 1e400}]}')
    values = parser.parse_body(body, "application/json", NOW).metric_values
    assert [repr(v) for v in values] == ["nan", "-inf", "inf"]


def test_label_name_length_is_checked_as_for_every_protocol() -> None:
    """A label name past ``max_label_name_length`` in a well-formed request is refused with
    the error the other protocols give (so is a metric name past it)."""
    cfg = IngestConfig(max_label_name_length=16)
    with pytest.raises(BadRequest) as label_error:
        prometheus_text.parse(b"m{" + b"a" * 20 + b'="x"} 1', cfg, NOW)
    with pytest.raises(BadRequest) as name_error:
        prometheus_text.parse(b"m" * 20 + b" 1", cfg, NOW)
    long = {"a" * 20: "x"}
    cases = [
        ({"device_id": "d", "labels": long, "heartbeat": True}, "labels", label_error),
        ({"device_id": "d", "metrics": [{"name": "m", "value": 1, "labels": long}]},
         "metrics[0].labels", label_error),
        ({"device_id": "d", "series": [{"name": "m", "ts": [NOW], "values": [1],
                                        "labels": long}]}, "series[0].labels", label_error),
        ({"device_id": "d", "logs": [{"line": "x", "labels": long}]}, "logs[0].labels",
         label_error),
        ({"device_id": "d", "metrics": [{"name": "m" * 20, "value": 1}]}, "metrics[0].name",
         name_error),
    ]
    for doc, field, want in cases:
        for body, ctype in _bodies(doc):
            with pytest.raises(BadRequest) as got:
                NativeParser(cfg).parse_body(body, ctype, NOW)
            assert (got.value.field, got.value.message) == (field, want.value.message)


@pytest.mark.parametrize(("doc", "field"), [
    ({"": 1, "device_id": "d"}, '[""]'),
    ({"device_id": "d", "metrics": [{"name": "x", "value": 1, "": 2}]}, 'metrics[0][""]'),
    ([{"device_id": "d", "heartbeat": True, "a.b": 1}], '[0]["a.b"]'),
    ({"device_id": "d", "heartbeat": True, "über": 1}, "über"),
])
def test_unknown_fields_are_named_even_when_not_a_word(parser: NativeParser, doc: object,
                                                       field: str) -> None:
    for body, ctype in _bodies(doc):
        with pytest.raises(BadRequest) as info:
            parser.parse_body(body, ctype, NOW)
        assert info.value.to_json() == {"error": "unknown field", "field": field}


def test_deeply_nested_bodies_are_refused_not_crashing(parser: NativeParser) -> None:
    with pytest.raises(BadRequest, match="JSON"):
        parser.parse_body(b"[" * 100_000, "application/json", NOW)
    with pytest.raises(BadRequest):
        parser.parse_body(b"\x91" * 100_000, "application/msgpack", NOW)


def test_huge_integers_are_refused_not_crashing(parser: NativeParser) -> None:
    with pytest.raises(BadRequest, match="out of range"):
        parser.parse({"device_id": "d", "metrics": [{"name": "x", "value": 10**400}]}, NOW)
    parser.parse({"device_id": "d", "metrics": [{"name": "x", "value": 1}]}, NOW)
    with pytest.raises(BadRequest, match="out of range"):  # the warm fast path too
        parser.parse({"device_id": "d", "metrics": [{"name": "x", "value": -(10**400)}]}, NOW)


def test_a_clock_reset_to_its_epoch_is_not_refused(parser: NativeParser) -> None:
    """1970 or 2000 in milliseconds: a device's RTC restarted, not a unit mistake; the clock
    policy corrects it. Seconds of about now are still refused as a mistake."""
    b = parser.parse({"device_id": "pump-9", "metrics": [
        {"name": "t", "value": 1, "ts": 5000}, {"name": "t", "value": 2, "ts": 946_684_800_000}]},
        NOW)
    assert b.metric_ts == [5000, 946_684_800_000]
    with pytest.raises(IngestError, match="seconds or microseconds sent by mistake"):
        parser.parse({"device_id": "p", "metrics": [{"name": "t", "value": 1,
                                                      "ts": NOW // 1000}]}, NOW)
