"""The edge's Loki push endpoint parsers (sans-IO): JSON and protobuf, metadata, errors, fuzz."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_node.config import IngestConfig
from edge_node.errors import BadRequest, UnsupportedMedia
from edge_node.protocols import loki_push
from tests.strategies import encode_push_request, refused_cleanly

CFG = IngestConfig()
NOW = 1_795_839_600_000
NS = NOW * 1_000_000 + 123_456


def _rows(batch):  # type: ignore[no-untyped-def]
    return [(dict(k), t, ln.decode()) for k, t, ln in zip(batch.log_keys, batch.log_ts,
                                                          batch.log_lines, strict=True)]


def test_json_push_as_documented() -> None:
    body = ('{"streams": [{"stream": {"app": "pump", "host": "gw-3"}, "values": ['
            f'["{NS}", "started"], ["{NS + 1_000_000}", "stopped", {{"trace_id": "abc"}}]]}}]}}')
    rows = _rows(loki_push.parse(body.encode(), "application/json", CFG, NOW))
    assert rows == [({"app": "pump", "host": "gw-3", "device": "gw-3"}, NOW, "started"),
                    ({"app": "pump", "host": "gw-3", "device": "gw-3", "trace_id": "abc"},
                     NOW + 1, "stopped")]


def test_protobuf_push() -> None:
    raw = encode_push_request([('{app="pump", level="warn"}', [(NS, "hot", {}),
                                                              (NS + 2_000_000, "hotter",
                                                               {"unit": "7"})])])
    rows = _rows(loki_push.parse(raw, "application/x-protobuf", CFG, NOW))
    assert rows == [({"app": "pump", "level": "warn"}, NOW, "hot"),
                    ({"app": "pump", "level": "warn", "unit": "7"}, NOW + 2, "hotter")]


@pytest.mark.parametrize(("body", "field"), [
    (b'{"streams": [{"stream": {"a": 1}, "values": []}]}', "streams[0].stream"),
    (b'{"streams": [{"stream": {"a": "b"}, "values": [[1, "x"]]}]}', "streams[0].values[0]"),
    (b'{"streams": [{"stream": {"a": "b"}, "values": [["1"]]}]}', "streams[0].values[0]"),
    (b'{"streams": [{"stream": {"a-b": "c"}, "values": [["1", "x"]]}]}',
     "streams[0].values[0]"),
    (b'{"nope": []}', "body"),
])
def test_bad_json_names_the_field(body: bytes, field: str) -> None:
    with pytest.raises(BadRequest) as exc:
        loki_push.parse(body, "application/json", CFG, NOW)
    assert exc.value.field == field


def test_other_media_types_are_415() -> None:
    with pytest.raises(UnsupportedMedia):
        loki_push.parse(b"x", "text/plain", CFG, NOW)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["application/json", "application/x-protobuf"]))
def test_fuzz_only_4xx_escapes(body: bytes, ctype: str) -> None:
    refused_cleanly(lambda: loki_push.parse(body, ctype, CFG, NOW))
