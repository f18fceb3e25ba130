"""The segment codec and batch envelope: lossless, compact, and strict about bad input."""

from __future__ import annotations

import contextlib

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_node.errors import WireError
from edge_node.wire import (
    Batch,
    Columns,
    decode_batch,
    decode_segment,
    encode_batch,
    encode_segment,
    pack_ints,
    unpack_ints,
)
from tests.strategies import log_columns, metric_columns


def _sorted(c: Columns) -> list[tuple[int, int, object]]:
    extra = (c.values.view(np.int64).tolist() if c.values is not None
             else c.lines if c.lines is not None else [None] * len(c))
    return sorted(zip(c.series.tolist(), c.ts.tolist(), extra, strict=True),
                  key=lambda r: (r[0], r[1]))


@given(st.lists(st.integers(-(2**62), 2**62)))
def test_pack_ints_roundtrip(xs: list[int]) -> None:
    assert unpack_ints(pack_ints(xs), len(xs)).tolist() == xs


@settings(max_examples=300)
@given(metric_columns())
def test_metric_segment_roundtrip_is_bit_exact(cols: Columns) -> None:
    out = decode_segment(encode_segment(cols))
    assert out.kind == "metrics"
    # rows come back sorted by (series, ts); the multiset of rows, value bits included, is equal
    assert sorted(_sorted(out)) == sorted(_sorted(cols))


@given(log_columns())
def test_log_segment_roundtrip(cols: Columns) -> None:
    out = decode_segment(encode_segment(cols))
    assert sorted(_sorted(out)) == sorted(_sorted(cols))


def test_special_values_survive() -> None:
    vals = np.array([np.nan, np.inf, -np.inf, -0.0, 0.1, 1 / 3, 1e300, 5e-324], dtype=np.float64)
    cols = Columns("metrics", np.arange(8, dtype=np.int64),
                   np.full(8, 1_795_839_600_000, dtype=np.int64), vals)
    out = decode_segment(encode_segment(cols))
    assert out.values is not None
    assert out.values.view(np.int64).tolist() == vals.view(np.int64).tolist()


def test_regular_series_compress_below_one_byte_per_sample() -> None:
    rng = np.random.default_rng(7)
    n_series, steps = 2000, 20
    series = np.repeat(np.arange(n_series), steps)
    ts = np.tile(1_795_839_600_000 + 30_000 * np.arange(steps), n_series)
    walk = np.cumsum(rng.integers(-10, 11, size=n_series * steps)) / 10
    blob = encode_segment(Columns("metrics", series, ts, np.round(walk, 1)))
    assert len(blob) / (n_series * steps) < 1.0


@pytest.mark.parametrize("blob", [b"", b"garbage", zstandard.compress(b"\x93\x01\x02\x03"),
                                  zstandard.compress(msgpack.packb({"v": 99}))])
def test_bad_segments_raise_wire_error(blob: bytes) -> None:
    with pytest.raises(WireError):
        decode_segment(blob)


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_other_errors(blob: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_segment(zstandard.compress(blob))


def test_inconsistent_segment_counts_are_refused() -> None:
    cols = Columns("metrics", np.array([1, 2], dtype=np.int64),
                   np.array([1_795_839_600_000] * 2, dtype=np.int64), np.array([1.0, 2.0]))
    doc = msgpack.unpackb(zstandard.decompress(encode_segment(cols)))
    doc["n"] = 3
    with pytest.raises(WireError, match="counts"):
        decode_segment(zstandard.compress(msgpack.packb(doc)))


def test_batch_roundtrip() -> None:
    b = Batch(node_id="n1", seq=7, kind="metrics", segment=b"seg", rows=3, low_watermark=5,
              epoch="e" * 32, series_defs=[(1, {"__name__": "x", "device": "d"}), (2, {})])
    out = decode_batch(encode_batch(b))
    assert out == b


@pytest.mark.parametrize(("mutate", "msg"), [
    (lambda d: d.update(v=2), "version"),
    (lambda d: d.pop("seq"), "seq"),
    (lambda d: d.update(seq=-1), "seq"),
    (lambda d: d.update(kind="nope"), "kind"),
    (lambda d: d.update(node=""), "node"),
    (lambda d: d.update(defs=b"xx"), "defs"),
])
def test_bad_batches_name_the_field(mutate, msg) -> None:  # type: ignore[no-untyped-def]
    doc = msgpack.unpackb(encode_batch(Batch("n1", 1, "metrics", b"s", 1, epoch="e")))
    mutate(doc)
    with pytest.raises(WireError, match=msg):
        decode_batch(msgpack.packb(doc))
