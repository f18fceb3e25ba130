"""The edge->central wire format and the columnar segment codec (sans-IO, shared with central).

A **segment** is what the buffer stores and what the forwarder ships unchanged: the data of one
kind (``metrics``, ``rollups``, ``logs``, ``heartbeats`` or ``alerts``) as columns, sorted by
(series id, timestamp)::

    zstd( msgpack {
        "v": 3, "k": kind, "n": rows,
        "sid": ids of the series present (delta-coded), "cnt": rows per series,
        "t0": first timestamp per series (delta-coded across series),
        "tdd": remaining timestamps as delta-of-delta within each series,
        "exp": per-series decimal exponent e, or 255 when the values are raw float64,
        "v0", "vi", "vu", "mono": values of integer-exact series as round(v * 10**e): the
               first of each series, then the deltas within each series (series that never
               decrease, flagged in "mono", have theirs in "vu"),
        "vf":  raw float64 values of the other series,
        "len", "txt": log lines as lengths + concatenated UTF-8,
    })

Integer columns are zigzag-encoded, stored in the narrowest width that fits (1, 2, 4 or 8 bytes)
and byte-shuffled (all low bytes, then all next bytes...) so zstd sees long runs of zeros.
A value is stored scaled only when ``round(v * 10**e) / 10**e`` reproduces its exact bits,
so decoding is lossless (NaN, infinities, -0.0 and 1/3 go to the raw column).

A **batch** is one segment plus its envelope (``encode_batch``): version, node id, the buffer's
epoch (a random id made with the buffer file, so a rebuilt buffer never reuses a sequence number
central has seen), per-node sequence number, the lowest unacknowledged sequence number on the
edge (so central may forget older dedup entries) and the definitions of series that central
has not confirmed yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt
import zstandard

from .errors import WireError

WIRE_VERSION = 1
SEGMENT_VERSION = 3
# forward priority order, highest first: rollups (the edge's stream-aggregation outputs) are
# small and summarise the raw metrics, so they go before them
KINDS = ("alerts", "heartbeats", "rollups", "metrics", "logs")
VALUE_KINDS = frozenset({"metrics", "rollups"})  # kinds whose rows are (series, ts, value)
LINE_KINDS = frozenset({"logs", "alerts"})       # kinds whose rows are (series, ts, text)
BATCH_CONTENT_TYPE = "application/vnd.fleetd.batch+msgpack"
FLOAT_MODE = 255
_MAX_EXP = 9
_TWO53 = float(2**53)
# Refuse to inflate a segment beyond this: a hostile or corrupt batch must not eat the host.
MAX_SEGMENT_RAW_BYTES = 1 << 30

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


@dataclass
class Columns:
    """Rows of one kind, as parallel columns (the decoded form of a segment)."""

    kind: str
    series: I64
    ts: I64
    values: F64 | None = None
    lines: list[bytes] | None = None

    def __len__(self) -> int:
        return int(self.series.shape[0])


def concat_columns(kind: str, parts: list[Columns]) -> Columns:
    """Rows of several decoded segments of ``kind`` as one set of columns."""
    cols = Columns(kind=kind,
                   series=np.concatenate([p.series for p in parts]) if parts
                   else np.zeros(0, np.int64),
                   ts=np.concatenate([p.ts for p in parts]) if parts
                   else np.zeros(0, np.int64))
    if kind in VALUE_KINDS:
        cols.values = np.concatenate([p.values for p in parts if p.values is not None]) \
            if parts else np.zeros(0, np.float64)
    if kind in LINE_KINDS:
        cols.lines = [ln for p in parts for ln in (p.lines or [])]
    return cols


# -- integer column packing --------------------------------------------------------------------

def _zigzag(a: I64) -> npt.NDArray[np.uint64]:
    a = a.astype(np.int64, copy=False)
    return ((a << 1) ^ (a >> 63)).view(np.uint64)


def _unzigzag(u: npt.NDArray[np.uint64]) -> I64:
    return ((u >> np.uint64(1)).view(np.int64)) ^ -((u & np.uint64(1)).view(np.int64))


_UNSIGNED = 0x80  # flag in the width byte: the column had no negatives, stored without zigzag


def pack_ints(a: npt.ArrayLike) -> bytes:
    """Pack an int64 column: zigzag (unless nothing is negative), narrowest width, shuffled."""
    arr = np.asarray(a, dtype=np.int64)
    if arr.size == 0:
        return b"\x00"
    unsigned = int(arr.min()) >= 0
    z = arr.view(np.uint64) if unsigned else _zigzag(arr)
    top = int(z.max())
    width = 1 if top < 1 << 8 else 2 if top < 1 << 16 else 4 if top < 1 << 32 else 8
    narrow = z.astype(f"<u{width}")
    shuffled = narrow.view(np.uint8).reshape(-1, width).T
    return bytes([width | (_UNSIGNED if unsigned else 0)]) + shuffled.tobytes()


def unpack_ints(b: bytes, n: int) -> I64:
    """Inverse of :func:`pack_ints` for a column of ``n`` values."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if not b:
        raise WireError("empty integer column")
    width, unsigned = b[0] & ~_UNSIGNED, b[0] & _UNSIGNED
    if width not in (1, 2, 4, 8) or len(b) != 1 + width * n:
        raise WireError(f"integer column has {len(b) - 1} bytes, expected {width}x{n}")
    planes = np.frombuffer(b, dtype=np.uint8, offset=1).reshape(width, n).T
    narrow = np.ascontiguousarray(planes).view(f"<u{width}").reshape(n).astype(np.uint64)
    return narrow.view(np.int64) if unsigned else _unzigzag(narrow)


# -- value scaling ------------------------------------------------------------------------------

def _exact_at(v: F64, e: int) -> tuple[npt.NDArray[np.bool_], F64]:
    p = float(10**e)
    with np.errstate(invalid="ignore", over="ignore"):
        s = np.round(v * p)
        fits = np.abs(s) < _TWO53  # also False for NaN and infinities
        # compare through the integer we would store: that is what decoding sees (-0.0 -> 0)
        back = np.where(fits, s, 0.0).astype(np.int64).astype(np.float64) / p
        ok = (back.view(np.int64) == v.view(np.int64)) & fits
    return ok, s


def _series_exponents(values: F64, starts: I64, counts: I64) -> npt.NDArray[np.uint8]:
    """The smallest decimal exponent that makes every value of each series an exact integer."""
    n = values.shape[0]
    need = np.full(n, FLOAT_MODE, dtype=np.int64)
    todo = np.arange(n)
    for e in range(_MAX_EXP + 1):
        if not todo.size:
            break
        ok, _ = _exact_at(values[todo], e)  # only the values not resolved yet
        need[todo[ok]] = e
        todo = todo[~ok]
    per_series = np.maximum.reduceat(need, starts) if n else np.zeros(0, dtype=np.int64)
    exps = per_series.astype(np.uint8)
    # A value exact at e may (rarely) not be exact at a larger e: recheck at the chosen exponent.
    rep = np.repeat(exps, counts)
    for e in np.unique(exps):
        if e == FLOAT_MODE:
            continue
        sel = rep == e
        ok, _ = _exact_at(values[sel], int(e))
        if not ok.all():
            bad_rows = np.flatnonzero(sel)[~ok]
            bad_series = np.unique(np.searchsorted(starts, bad_rows, side="right") - 1)
            exps[bad_series] = FLOAT_MODE
            rep = np.repeat(exps, counts)
    return exps


def _within_series_delta(a: I64, first: npt.NDArray[np.bool_]) -> I64:
    d = np.empty_like(a)
    if a.size:
        d[0] = a[0]
        d[1:] = a[1:] - a[:-1]
        d[first] = a[first]
    return d


def _within_series_undelta(d: I64, starts: I64) -> I64:
    """Cumulative sum of ``d`` restarted at each index in ``starts`` (which must include 0)."""
    if d.size == 0:
        return d
    c = np.cumsum(d)
    base = np.repeat(c[starts] - d[starts], np.diff(np.append(starts, d.size)))
    return c - base  # type: ignore[no-any-return]


# -- segments -----------------------------------------------------------------------------------

def encode_segment(cols: Columns, *, level: int = 3) -> bytes:
    """Sort ``cols`` by (series, ts) and encode them as a compressed segment."""
    if cols.kind not in KINDS:
        raise WireError(f"unknown kind {cols.kind!r}")
    n = len(cols)
    order = np.lexsort((cols.ts, cols.series))
    sid = cols.series[order]
    ts = cols.ts[order]
    first = np.ones(n, dtype=bool)
    if n:
        first[1:] = sid[1:] != sid[:-1]
    starts = np.flatnonzero(first).astype(np.int64)
    uniq = sid[starts]
    counts = np.diff(np.append(starts, n)).astype(np.int64)
    t0 = ts[starts]
    td = _within_series_delta(ts, first)
    # delta-of-delta inside each series (the first delta of a series stays a delta)
    second = np.zeros(n, dtype=bool)
    if n:
        second[1:] = first[:-1] & ~first[1:]
    tdd = _within_series_delta(td, first | second)
    rest = ~first
    doc: dict[str, Any] = {
        "v": SEGMENT_VERSION, "k": cols.kind, "n": n, "ns": int(uniq.shape[0]),
        "sid": pack_ints(np.diff(uniq, prepend=0)),
        "cnt": pack_ints(counts),
        "t0": pack_ints(np.diff(t0, prepend=0)),
        "tdd": pack_ints(tdd[rest]),
    }
    if cols.values is not None:
        values = np.asarray(cols.values, dtype=np.float64)[order]
        exps = _series_exponents(values, starts, counts)
        rep = np.repeat(exps, counts)
        is_int = rep != FLOAT_MODE
        scaled = np.zeros(n, dtype=np.int64)
        for e in np.unique(exps):
            if e == FLOAT_MODE:
                continue
            sel = rep == e
            _, s = _exact_at(values[sel], int(e))
            scaled[sel] = s.astype(np.int64)
        vd = _within_series_delta(scaled, first)
        doc["exp"] = exps.tobytes()
        # first values (large, e.g. a counter's total) apart from the deltas (small), so the
        # delta column stays narrow
        doc["v0"] = pack_ints(vd[first & is_int])
        # deltas of series that never decrease (counters) in a column of their own: it has no
        # negatives, so it is stored without zigzag, a bit per value less to compress
        rest = is_int & ~first
        row_series = np.repeat(np.arange(starts.shape[0]), counts)
        falls = np.zeros(starts.shape[0], dtype=bool)
        falls[row_series[rest & (vd < 0)]] = True
        mono_row = ~falls[row_series]
        doc["mono"] = (~falls).astype(np.uint8).tobytes()
        doc["vi"] = pack_ints(vd[rest & ~mono_row])
        doc["vu"] = pack_ints(vd[rest & mono_row])
        doc["vf"] = values[~is_int].astype("<f8").tobytes()
    if cols.lines is not None:
        lines = [cols.lines[i] for i in order.tolist()]
        doc["len"] = pack_ints(np.fromiter((len(x) for x in lines), dtype=np.int64, count=n))
        doc["txt"] = b"".join(lines)
    raw = msgpack.packb(doc, use_bin_type=True)
    return zstandard.ZstdCompressor(level=level).compress(raw)


def _unpack_map(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise WireError(f"{what} is not valid msgpack: {exc}") from exc
    if not isinstance(doc, dict):
        raise WireError(f"{what} is not a msgpack map")
    return doc


def bounded_unzstd(blob: bytes, limit: int, what: str) -> bytes:
    """Decompress one zstd frame of at most ``limit`` bytes, without ever holding more: the
    frame's declared size is checked before anything is allocated, so a zstd bomb from a
    compromised node costs nothing. A frame that declares no size is refused (the encoders
    here always write it); one whose data runs past its declared size fails in zstd.

    Raises:
        WireError: not zstd, no declared size, or larger than ``limit`` (named ``what``).
    """
    try:
        size = zstandard.frame_content_size(blob)
        if size < 0:
            raise WireError(f"{what}: the zstd frame does not declare its size")
        if size > limit:
            raise WireError(f"{what} decompresses to {size} bytes: too large (the limit is "
                            f"{limit})")
        return zstandard.ZstdDecompressor().decompress(blob, max_output_size=limit)
    except zstandard.ZstdError as exc:
        raise WireError(f"{what} is not valid zstd: {exc}") from exc


def decode_segment(blob: bytes) -> Columns:
    """Decode a segment made by :func:`encode_segment`.

    Raises:
        WireError: the blob is not a segment of a version we read, or is inconsistent.
    """
    raw = bounded_unzstd(blob, MAX_SEGMENT_RAW_BYTES, "segment")
    doc = _unpack_map(raw, "segment")
    try:
        return _decode_doc(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"segment is inconsistent: {exc!r}") from exc


def _decode_doc(doc: dict[str, Any]) -> Columns:
    if doc.get("v") != SEGMENT_VERSION:
        raise WireError(f"segment version {doc.get('v')!r} is not supported")
    kind = doc["k"]
    if kind not in KINDS:
        raise WireError(f"unknown kind {kind!r}")
    n = int(doc["n"])
    if n < 0:
        raise WireError("negative row count")
    k = int(doc["ns"])
    if not 0 <= k <= n:
        raise WireError("series count out of range")
    counts = unpack_ints(doc["cnt"], k)
    if counts.size and (counts <= 0).any():
        raise WireError("series counts must be positive")
    if int(counts.sum()) != n:
        raise WireError(f"series counts add up to {int(counts.sum())}, header says {n}")
    uniq = np.cumsum(unpack_ints(doc["sid"], k))
    t0 = np.cumsum(unpack_ints(doc["t0"], k))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64) if k else \
        np.zeros(0, np.int64)
    first = np.zeros(n, dtype=bool)
    first[starts] = True
    rest = ~first
    tdd_full = np.zeros(n, dtype=np.int64)
    tdd_full[rest] = unpack_ints(doc["tdd"], int(rest.sum()))
    second = np.zeros(n, dtype=bool)
    if n:
        second[1:] = first[:-1] & ~first[1:]
    # undo delta-of-delta: deltas restart at each series' second row
    td = tdd_full.copy()
    td[first] = 0
    dstarts = np.flatnonzero(first | second).astype(np.int64)
    td = _within_series_undelta(td, dstarts)
    td[first] = t0
    ts = _within_series_undelta(td, starts)
    series = np.repeat(uniq, counts)
    out = Columns(kind=kind, series=series, ts=ts)
    if "exp" in doc:
        exps = np.frombuffer(doc["exp"], dtype=np.uint8)
        if exps.shape[0] != k:
            raise WireError("exponent column length mismatch")
        rep = np.repeat(exps, counts)
        is_int = rep != FLOAT_MODE
        n_int = int(is_int.sum())
        vd = np.zeros(n, dtype=np.int64)
        heads = first & is_int
        n_heads = int(heads.sum())
        vd[heads] = unpack_ints(doc["v0"], n_heads)
        mono = np.frombuffer(doc["mono"], dtype=np.uint8)
        if mono.shape[0] != k:
            raise WireError("monotonic-series column length mismatch")
        mono_row = np.repeat(mono.astype(bool), counts)
        rest = is_int & ~first
        n_up = int((rest & mono_row).sum())
        vd[rest & ~mono_row] = unpack_ints(doc["vi"], int(rest.sum()) - n_up)
        vd[rest & mono_row] = unpack_ints(doc["vu"], n_up)
        # deltas of integer series restart at each series start; float rows hold 0
        scaled = _within_series_undelta(vd, starts)
        values = np.empty(n, dtype=np.float64)
        for e in np.unique(exps):
            if e == FLOAT_MODE:
                continue
            sel = rep == e
            values[sel] = scaled[sel].astype(np.float64) / float(10 ** int(e))
        vf = np.frombuffer(doc["vf"], dtype="<f8")
        if vf.shape[0] != n - n_int:
            raise WireError("float column length mismatch")
        values[~is_int] = vf
        out.values = values
    if "len" in doc:
        lens = unpack_ints(doc["len"], n)
        txt: bytes = doc["txt"]
        if (lens < 0).any() or int(lens.sum()) != len(txt):
            raise WireError("log line lengths do not match the text column")
        ends = np.cumsum(lens).tolist()
        begins = [0, *ends[:-1]] if ends else []
        out.lines = [txt[b:e] for b, e in zip(begins, ends, strict=True)]
    return out


# -- batches ------------------------------------------------------------------------------------

@dataclass
class Batch:
    """One unit of delivery from an edge node to central."""

    node_id: str
    seq: int
    kind: str
    segment: bytes
    rows: int
    low_watermark: int = 0
    epoch: str = ""
    series_defs: list[tuple[int, dict[str, str]]] = field(default_factory=list)


def encode_batch(b: Batch) -> bytes:
    """Envelope a segment for the wire: msgpack with the (already zstd) segment inside."""
    defs = b""
    if b.series_defs:
        flat = [[sid, [x for kv in sorted(lbl.items()) for x in kv]] for sid, lbl in b.series_defs]
        defs = zstandard.ZstdCompressor(level=3).compress(msgpack.packb(flat, use_bin_type=True))
    doc = {"v": WIRE_VERSION, "node": b.node_id, "epoch": b.epoch, "seq": b.seq,
           "kind": b.kind, "rows": b.rows,
           "low": b.low_watermark, "defs": defs, "seg": b.segment}
    return msgpack.packb(doc, use_bin_type=True)  # type: ignore[no-any-return]


def decode_batch(body: bytes, *, max_defs_bytes: int = 256 << 20) -> Batch:
    """Parse a batch envelope (the segment itself stays encoded).

    Raises:
        WireError: with a reason suitable for a 400 answer.
    """
    doc = _unpack_map(body, "batch")
    if doc.get("v") != WIRE_VERSION:
        raise WireError(f"batch version {doc.get('v')!r} is not supported (want {WIRE_VERSION})")
    try:
        node, seq, kind, epoch = doc["node"], doc["seq"], doc["kind"], doc["epoch"]
        seg, rows, low, defs_b = doc["seg"], doc["rows"], doc.get("low", 0), doc.get("defs", b"")
    except KeyError as exc:
        raise WireError(f"batch lacks field {exc.args[0]!r}") from None
    if not isinstance(node, str) or not node:
        raise WireError("field 'node' must be a non-empty string")
    if not isinstance(epoch, str) or not 1 <= len(epoch) <= 64:
        raise WireError("field 'epoch' must be a string of 1-64 characters")
    for name, val in (("seq", seq), ("rows", rows), ("low", low)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 0:
            raise WireError(f"field {name!r} must be a non-negative integer")
    if kind not in KINDS:
        raise WireError(f"field 'kind' must be one of {', '.join(KINDS)}")
    if not isinstance(seg, bytes) or not isinstance(defs_b, bytes):
        raise WireError("fields 'seg' and 'defs' must be binary")
    defs: list[tuple[int, dict[str, str]]] = []
    if defs_b:
        raw = bounded_unzstd(defs_b, max_defs_bytes, "field 'defs'")
        try:
            flat = msgpack.unpackb(raw, raw=False)
            for sid, kv in flat:
                if not isinstance(sid, int) or len(kv) % 2:
                    raise ValueError("bad series definition")
                defs.append((sid, dict(zip(kv[0::2], kv[1::2], strict=True))))
        except (ValueError, TypeError, msgpack.ExtraData) as exc:
            raise WireError(f"field 'defs' is malformed: {exc}") from exc
    return Batch(node_id=node, seq=seq, kind=kind, segment=seg, rows=rows, low_watermark=low,
                 epoch=epoch, series_defs=defs)
