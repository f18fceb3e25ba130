"""Bad input proven end to end: fuzzed bodies against the real processes.

Every ingest endpoint of a running ``fleet-edge`` gets random bytes, mutations of a valid body
(truncated, bytes flipped, bytes inserted) and wrong encodings: the answer is a 2xx (the body
happened to be valid) or a 4xx whose JSON names what is wrong, never a 5xx; a 4xx changes
nothing in the buffer (rows committed, counted from ``/metrics``, stay the same).

Central's batch endpoint gets malformed envelopes, lying lengths and zstd bombs from an
authenticated node: 4xx, never 5xx, and the process's memory stays bounded.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections.abc import Iterator

import httpx
import msgpack
import numpy as np
import psutil
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_node.wire import BATCH_CONTENT_TYPE, Batch, Columns, encode_batch, encode_segment
from tests.e2e.procs import NOW, Proc, edge_proc, register, start_central, write_edge_config
from tests.strategies import encode_push_request, encode_write_request

pytestmark = pytest.mark.e2e


def _snappy(raw: bytes) -> bytes:
    import cramjam

    return bytes(cramjam.snappy.compress_raw(raw))


# a valid body per endpoint: (path, content type, content encoding, body)
VALID: list[tuple[str, str | None, str | None, bytes]] = [
    ("/api/v1/ingest", "application/json", None, json.dumps({
        "device_id": "pump-1", "labels": {"site": "a"}, "heartbeat": True,
        "metrics": [{"name": "temp_c", "value": 61.5, "ts": NOW, "labels": {"unit": "c"}}],
        "logs": [{"line": "pump started", "ts": NOW, "level": "info"}]}).encode()),
    ("/api/v1/ingest", "application/msgpack", None, msgpack.packb({
        "device_id": "pump-1", "metrics": [{"name": "temp_c", "value": 61.5, "ts": NOW}]})),
    ("/api/v1/import/prometheus", "text/plain", None,
     b'# TYPE temp_c gauge\ntemp_c{device="pump-1",site="a"} 61.5 1795839600000\n'
     b'up{device="pump-1"} 1\n'),
    ("/api/v1/write", "application/x-protobuf", "snappy", _snappy(encode_write_request(
        [({"__name__": "temp_c", "device": "pump-1"}, [(61.5, NOW), (62.0, NOW + 1000)])]))),
    ("/write", "text/plain", None,
     b"temp,device=pump-1,site=a c=61.5,ok=true 1795839600000000000\n"),
    ("/api/v2/write", "text/plain", None, b"temp,device=pump-1 c=61.5 1795839600000000000\n"),
    ("/loki/api/v1/push", "application/json", None, json.dumps({"streams": [{
        "stream": {"app": "pumpd", "device": "pump-1"},
        "values": [[str(NOW * 1_000_000), "pump started"]]}]}).encode()),
    ("/loki/api/v1/push", "application/x-protobuf", None, _snappy(encode_push_request(
        [('{app="pumpd", device="pump-1"}', [(NOW * 1_000_000, "pump started", {})])]))),
]

# a 4xx must say where: a field, a line, a position, or the layer that failed to decode
WHERE = re.compile(r"line \d+|field|position|offset|byte|at \d+|column|json|msgpack|protobuf|"
                   r"snappy|gzip|zstd|deflate|encoding|content.type|utf-8|body|empty|"
                   r"timestamp|value|label|name|stream|metric|device|precision|header",
                   re.IGNORECASE)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("fuzz-edge")
    cfg, url = write_edge_config(tmp, "http://127.0.0.1:9", "unused")  # central unreachable
    proc = edge_proc(tmp, cfg, url).start()
    try:
        yield url
    finally:
        proc.stop()


def committed(client: httpx.Client, url: str) -> float:
    """Device rows committed (not the node's own alert events: with central unreachable its
    ForwardFailures alert fires on its own schedule)."""
    text = client.get(url + "/metrics").text
    return sum(float(m.group(1)) for m in re.finditer(
        r'^fleet_edge_committed_total\{kind="(?:metrics|logs|heartbeats)"\} (\S+)$', text,
        re.M))


@st.composite
def mangled(draw: st.DrawFn) -> tuple[str, str | None, str | None, bytes]:
    path, ctype, cenc, body = draw(st.sampled_from(VALID))
    how = draw(st.sampled_from(["random", "truncate", "flip", "insert", "encoding", "ctype"]))
    if how == "random":
        body = draw(st.binary(max_size=600))
    elif how == "truncate" and body:
        body = body[:draw(st.integers(0, len(body) - 1))]
    elif how == "flip" and body:
        b = bytearray(body)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(b) - 1))
            b[i] = draw(st.integers(0, 255))
        body = bytes(b)
    elif how == "insert":
        i = draw(st.integers(0, len(body)))
        body = body[:i] + draw(st.binary(min_size=1, max_size=40)) + body[i:]
    elif how == "encoding":  # says compressed and is not, or is and says something else
        cenc = draw(st.sampled_from(["gzip", "snappy", "deflate", "zstd", "br", "x-nope"]))
        if draw(st.booleans()):
            body = gzip.compress(body)
    else:
        ctype = draw(st.sampled_from(["application/json", "application/msgpack",
                                      "application/x-protobuf", "text/plain", "image/png",
                                      "", "multipart/form-data; boundary=x"]))
    return path, ctype, cenc, body


@settings(max_examples=600, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(req=mangled())
def test_every_ingest_endpoint_answers_bad_input_with_a_4xx_that_says_where(
        edge: str, req: tuple[str, str | None, str | None, bytes]) -> None:
    path, ctype, cenc, body = req
    headers = {k: v for k, v in (("Content-Type", ctype), ("Content-Encoding", cenc)) if v}
    with httpx.Client(timeout=30) as c:
        before = committed(c, edge)
        r = c.post(edge + path, content=body, headers=headers)
        after = committed(c, edge)
    assert r.status_code < 500, (path, headers, body[:200], r.status_code, r.text)
    if r.status_code >= 400:
        doc = r.json()
        assert doc["error"], r.text
        # the field it names, or a message that says where (a line, a position, a layer)
        assert doc.get("field") or WHERE.search(doc["error"]), \
            f"{path}: {r.status_code} {r.text} names nothing"
        assert after == before, f"{path}: a {r.status_code} committed {after - before} rows"


def test_the_valid_bodies_are_valid(edge: str) -> None:
    """The mutations start from bodies each endpoint takes (else the fuzzing tests little)."""
    with httpx.Client(timeout=30) as c:
        for path, ctype, cenc, body in VALID:
            headers = {k: v for k, v in (("Content-Type", ctype), ("Content-Encoding", cenc))
                       if v}
            r = c.post(edge + path, content=body, headers=headers)
            assert r.status_code in (200, 204), (path, r.status_code, r.text)


# -- central -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, str]]:
    tmp = tmp_path_factory.mktemp("fuzz-central")
    key = register(tmp, "edge-fuzz")
    proc = start_central(tmp).start()
    try:
        yield proc, key
    finally:
        proc.stop()


def valid_batch(seq: int) -> bytes:
    cols = Columns("metrics", np.array([1, 1, 2], dtype=np.int64),
                   np.array([NOW, NOW + 1, NOW], dtype=np.int64), np.array([1.0, 2.0, 3.0]))
    return encode_batch(Batch("edge-fuzz", seq, "metrics", encode_segment(cols), 3,
                              epoch="e1", series_defs=[(1, {"__name__": "a"}),
                                                       (2, {"__name__": "b"})]))


@st.composite
def bad_batches(draw: st.DrawFn) -> bytes:
    body = valid_batch(draw(st.integers(1, 1000)))
    doc = msgpack.unpackb(body, raw=False)
    how = draw(st.sampled_from(["random", "truncate", "flip", "field", "lie", "segment"]))
    if how == "random":
        return draw(st.binary(max_size=400))
    if how == "truncate":
        return body[:draw(st.integers(0, len(body) - 1))]
    if how == "flip":
        b = bytearray(body)
        for _ in range(draw(st.integers(1, 6))):
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
        return bytes(b)
    if how == "field":  # a field of the wrong type, or missing
        key = draw(st.sampled_from(sorted(doc)))
        if draw(st.booleans()):
            del doc[key]
        else:
            doc[key] = draw(st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                                      st.text(max_size=10), st.binary(max_size=10),
                                      st.lists(st.integers(), max_size=3)))
    elif how == "lie":  # lengths and counts that do not match the segment
        doc["rows"] = draw(st.integers(0, 2**40))
    else:  # a segment that is valid zstd around a malformed inside
        inner = draw(st.one_of(st.binary(max_size=200), st.builds(
            msgpack.packb, st.dictionaries(st.sampled_from(["v", "k", "n", "ns", "cnt", "sid",
                                                            "ts", "val", "x"]),
                                           st.one_of(st.integers(-5, 2**40), st.binary(
                                               max_size=40), st.text(max_size=5)),
                                           max_size=8))))
        doc["seg"] = zstandard.ZstdCompressor().compress(inner)
    return bytes(msgpack.packb(doc))


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=bad_batches())
def test_central_answers_malformed_batches_with_a_4xx(central: tuple[Proc, str],
                                                      body: bytes) -> None:
    proc, key = central
    with httpx.Client(timeout=30) as c:
        r = c.post(proc.url + "/api/v1/batches", content=body, headers={
            "Authorization": f"Bearer {key}", "Content-Type": BATCH_CONTENT_TYPE})
    assert r.status_code < 500 or r.status_code == 503, (r.status_code, r.text)
    assert r.status_code in (200, 400, 403, 409, 413, 422), (r.status_code, r.text)


def zstd_bomb(size: int) -> bytes:
    """One zstd frame of ``size`` zero bytes that declares its size: a few hundred KB."""
    c = zstandard.ZstdCompressor(level=1).compressobj(size=size)
    chunk = b"\0" * (64 << 20)
    return b"".join([*(c.compress(chunk) for _ in range(size // len(chunk))), c.flush()])


def test_zstd_bombs_are_refused_with_bounded_memory(central: tuple[Proc, str]) -> None:
    proc, key = central
    assert proc.proc is not None
    ps = psutil.Process(proc.proc.pid)
    bomb = zstd_bomb(4 << 30)  # 4 GiB of zeros
    assert len(bomb) < 1 << 20 and zstandard.frame_content_size(bomb) == 4 << 30
    undeclared = zstandard.ZstdCompressor().compressobj()
    quiet = undeclared.compress(b"\0" * (8 << 20)) + undeclared.flush()  # declares no size
    rng = random.Random(7)
    doc = msgpack.unpackb(valid_batch(1), raw=False)
    with httpx.Client(timeout=60) as c:
        for field, blob, says in [("seg", bomb, "too large"), ("defs", bomb, "too large"),
                                  ("seg", quiet, "does not declare"),
                                  ("defs", quiet, "does not declare")] * 2:
            d = dict(doc, seq=rng.randrange(1, 1 << 30), **{field: blob})
            r = c.post(proc.url + "/api/v1/batches", content=msgpack.packb(d), headers={
                "Authorization": f"Bearer {key}", "Content-Type": BATCH_CONTENT_TYPE})
            assert r.status_code == 400 and says in r.json()["error"], r.text
    assert ps.memory_info().rss < 400 << 20, f"central grew to {ps.memory_info().rss >> 20} MiB"
