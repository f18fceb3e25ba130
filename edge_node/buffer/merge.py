"""The merge: runs of small backlogged segments become one dense segment (blocking).

While central is unreachable, every roll adds a small segment per kind. Merged, a backlog
compresses better and drains in fewer batches. Only segments never attempted are merged, in a
transaction that checks this again, so a segment is either merged before the forwarder claims
it (and the merged one is sent instead) or claimed first and never merged: its rows can never
reach central twice. Summarised raw metrics (see :mod:`.budget`) are merged only among
themselves, so compaction can still drop them alone.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ..wire import Columns, concat_columns, decode_segment, encode_segment

if TYPE_CHECKING:
    from .store import Store


def candidates(conn: sqlite3.Connection, kind: str, *, older_than_ms: int, max_rows: int,
               max_bytes: int, exclude: Iterable[int] = ()) -> list[tuple[int, int]]:
    """Never-attempted adjacent segments of ``kind`` worth merging: [(seq, n)].

    The run starts at the oldest candidate and stays within ``max_rows`` rows and
    ``max_bytes`` of compressed segments, so the merged segment still fits one batch.
    """
    skip = set(exclude)
    out: list[tuple[int, int]] = []
    rows = size = 0
    flag = None
    for seq, n, sz, summ in conn.execute(
            "SELECT seq, n, size, summarised FROM segments WHERE kind=? AND attempts=0 "
            "AND created_ms<=? ORDER BY seq", (kind, older_than_ms)):
        if seq in skip:
            break
        if flag is not None and summ != flag:  # summarised rows stay apart (compaction)
            if len(out) >= 2:
                break
            out, rows, size = [], 0, 0
        flag = summ
        if rows + n > max_rows or size + sz > max_bytes:
            if len(out) >= 2:
                break
            # the run so far cannot grow: start a new run from here
            out, rows, size = [], 0, 0
            if n >= max_rows or sz >= max_bytes:
                continue
        out.append((seq, n))
        rows += n
        size += sz
    return out if len(out) >= 2 else []


def replace(store: Store, seqs: Sequence[int], kind: str, cols: Columns, seg: bytes) -> int:
    """Atomically swap never-attempted segments ``seqs`` for one merged segment.

    Returns the new seq, or 0 when any of them was attempted or removed meanwhile.
    """
    conn = store.conn
    with store.tx():
        marks = ",".join("?" * len(seqs))
        (still,) = conn.execute(
            f"SELECT count(*) FROM segments WHERE attempts=0 AND seq IN ({marks})",
            list(seqs)).fetchone()
        if still != len(seqs):
            return 0
        (created, summ) = conn.execute(
            f"SELECT min(created_ms), min(summarised) FROM segments WHERE seq IN ({marks})",
            list(seqs)).fetchone()
        conn.execute(f"DELETE FROM segments WHERE seq IN ({marks})", list(seqs))
        new = store.insert_segment(kind, cols, seg, created_ms=created, summarised=bool(summ))
        store.bump("segments_merged", len(seqs))
    return new


def merge(store: Store, kind: str, seqs: list[int]) -> int:
    """Decode segments ``seqs``, encode them as one and swap it in; the new seq, or 0 when
    one of them was claimed or removed meanwhile."""
    parts = [decode_segment(b) for b in store.read_segments(seqs)]
    if len(parts) != len(seqs):
        return 0
    cols = concat_columns(kind, parts)
    # Backlog segments are written once and may wait long: spend CPU for density.
    seg = encode_segment(cols, level=9)
    return replace(store, seqs, kind, cols, seg)
