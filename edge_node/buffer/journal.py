"""The journal row codec (sans-IO): what one group commit writes, and how a roll reads it back.

A journal row holds the rows of one kind from a whole group of requests, as raw columns: series
ids and timestamps (int64), values (float64) or log lines, in one msgpack map::

    {"s": int64 bytes, "t": int64 bytes, "v": float64 bytes (metrics), "l": [line, ...] (logs)}

Raw columns are cheap to write, which keeps the commit (and so every device's acknowledgement)
short; the roll turns them into compressed columnar segments (:mod:`edge_node.wire`) later.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgpack
import numpy as np

from ..model import IngestBatch
from ..wire import LINE_KINDS, VALUE_KINDS, Columns

#: a batch with its series ids per kind: metrics, logs, heartbeats and (optionally) alerts
Tagged = tuple[IngestBatch, tuple[list[int], ...]]


def _pack(sids: Sequence[int], ts: Sequence[int], values: Sequence[float] | None,
          lines: Sequence[bytes] | None) -> bytes:
    doc: dict[str, object] = {
        "s": np.asarray(sids, dtype=np.int64).tobytes(),
        "t": np.asarray(ts, dtype=np.int64).tobytes(),
    }
    if values is not None:
        doc["v"] = np.asarray(values, dtype=np.float64).tobytes()
    if lines is not None:
        doc["l"] = list(lines)
    return msgpack.packb(doc, use_bin_type=True)  # type: ignore[no-any-return]


def pack_journal_rows(batches: Sequence[Tagged]) -> list[tuple[str, int, bytes]]:
    """One journal row per kind for a whole group of requests: [(kind, rows, blob)]."""
    m_ids: list[int] = []
    m_ts: list[int] = []
    m_v: list[float] = []
    l_ids: list[int] = []
    l_ts: list[int] = []
    l_lines: list[bytes] = []
    h_ids: list[int] = []
    h_ts: list[int] = []
    a_ids: list[int] = []
    a_ts: list[int] = []
    a_lines: list[bytes] = []
    for b, sids in batches:
        mi, li, hi = sids[0], sids[1], sids[2]
        if b.metric_values:
            m_ids += mi
            m_ts += b.metric_ts
            m_v += b.metric_values
        if b.log_lines:
            l_ids += li
            l_ts += b.log_ts
            l_lines += b.log_lines
        if b.hb_ts:
            h_ids += hi
            h_ts += b.hb_ts
        if b.alert_lines:
            a_ids += sids[3]
            a_ts += b.alert_ts
            a_lines += b.alert_lines
    rows = []
    if m_v:
        rows.append(("metrics", len(m_v), _pack(m_ids, m_ts, m_v, None)))
    if l_lines:
        rows.append(("logs", len(l_lines), _pack(l_ids, l_ts, None, l_lines)))
    if h_ts:
        rows.append(("heartbeats", len(h_ts), _pack(h_ids, h_ts, None, None)))
    if a_lines:
        rows.append(("alerts", len(a_lines), _pack(a_ids, a_ts, None, a_lines)))
    return rows


def unpack_journal(kind: str, blobs: Iterable[bytes]) -> Columns:
    """The rows of journal rows ``blobs`` (all of ``kind``) as one set of columns."""
    s, t, v, lines = [], [], [], []
    for blob in blobs:
        doc = msgpack.unpackb(blob, raw=False)
        s.append(np.frombuffer(doc["s"], dtype=np.int64))
        t.append(np.frombuffer(doc["t"], dtype=np.int64))
        if "v" in doc:
            v.append(np.frombuffer(doc["v"], dtype=np.float64))
        if "l" in doc:
            lines.extend(doc["l"])
    cols = Columns(kind=kind, series=np.concatenate(s) if s else np.zeros(0, np.int64),
                   ts=np.concatenate(t) if t else np.zeros(0, np.int64))
    if kind in VALUE_KINDS:
        cols.values = np.concatenate(v) if v else np.zeros(0, np.float64)
    if kind in LINE_KINDS:
        cols.lines = lines
    return cols
