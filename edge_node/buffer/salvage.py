"""Checking a buffer file and salvaging what is readable from a damaged one (blocking).

``check`` runs SQLite's integrity check and decodes every segment, journal row and series
block. ``salvage`` copies, row by row, everything that still reads and decodes into a fresh
buffer file: the buffer's epoch, segment sequence numbers and series ids are kept, so segments
central already applied are still recognised as duplicates when they are sent again, and
nothing is applied twice. What could not be read is reported, per table.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import zstandard

from ..wire import KINDS, decode_segment
from .journal import unpack_journal
from .series import decode_block
from .store import Store

_TABLES = ("meta", "series_blocks", "series_unacked", "journal", "segments", "dead_letters",
           "counters", "agg_state", "agg_log")


@dataclass
class Report:
    ok: dict[str, int] = field(default_factory=dict)      # rows read (or copied) per table
    lost: dict[str, int] = field(default_factory=dict)    # rows that did not read / decode
    rows_ok: dict[str, int] = field(default_factory=dict)  # data rows (samples, lines) per kind
    rows_lost: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def count(self, table: str, good: bool) -> None:
        d = self.ok if good else self.lost
        d[table] = d.get(table, 0) + 1


def _ids(conn: sqlite3.Connection, table: str, key: str, report: Report) -> list[int]:
    try:
        return [int(r[0]) for r in conn.execute(f"SELECT {key} FROM {table} ORDER BY {key}")]
    except sqlite3.DatabaseError as exc:
        report.problems.append(f"{table}: cannot list rows: {exc}")
        return []


def check(path: str | Path, progress: Callable[[str], None] | None = None) -> Report:
    """Read everything; the report says what is sound and what is not."""
    report = Report()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        try:
            bad = [r[0] for r in conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
            report.problems += [f"sqlite: {b}" for b in bad]
        except sqlite3.DatabaseError as exc:
            report.problems.append(f"sqlite: {exc}")
        _walk(conn, report, None, progress)
    finally:
        conn.close()
    return report


def salvage(src: str | Path, dst: str | Path,
            progress: Callable[[str], None] | None = None) -> Report:
    """Copy what reads from ``src`` into a new buffer at ``dst`` (which must not exist)."""
    dst = Path(dst)
    if dst.exists():
        raise FileExistsError(f"{dst} exists: give a new path")
    report = Report()
    conn = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    out = Store(dst)  # creates the schema (and an epoch, replaced below)
    try:
        out.conn.execute("BEGIN IMMEDIATE")
        _walk(conn, report, out.conn, progress)
        out.conn.execute("COMMIT")
    except BaseException:
        if out.conn.in_transaction:
            out.conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
        out.close()
    _mark_unacked(dst)
    return report


def _mark_unacked(dst: Path) -> None:
    """Every series definition is sent again (central ignores the ones it has)."""
    store = Store(dst)
    try:
        store.mark_series(store.series.known_ids(), acked=False)
    finally:
        store.close()


def _walk(conn: sqlite3.Connection, report: Report, out: sqlite3.Connection | None,
          progress: Callable[[str], None] | None) -> None:
    say = progress or (lambda _msg: None)
    # meta (the epoch): salvaged buffers keep it, so central's dedup still applies
    try:
        for key, value in conn.execute("SELECT key, value FROM meta"):
            report.count("meta", True)
            if out is not None:
                out.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                            (key, value))
    except sqlite3.DatabaseError as exc:
        report.problems.append(f"meta: {exc} (the salvaged buffer gets a new epoch)")
    for first in _ids(conn, "series_blocks", "first_id", report):
        try:
            last, blob = conn.execute("SELECT last_id, blob FROM series_blocks WHERE "
                                      "first_id=?", (first,)).fetchone()
            decode_block(blob)
        except (sqlite3.DatabaseError, ValueError, TypeError, zstandard.ZstdError,
                msgpack.ExtraData) as exc:
            report.count("series_blocks", False)
            report.problems.append(f"series block {first}: {exc}")
            continue
        report.count("series_blocks", True)
        if out is not None:
            out.execute("INSERT INTO series_blocks(first_id, last_id, blob) VALUES (?, ?, ?)",
                        (first, last, blob))
    seqs = _ids(conn, "segments", "seq", report)
    for i, seq in enumerate(seqs):
        if i and i % 200 == 0:
            say(f"segments: {i:,} of {len(seqs):,} read")
        try:
            row = conn.execute("SELECT kind, n, min_ts, max_ts, created_ms, attempts, size, "
                               "blob, summarised FROM segments WHERE seq=?", (seq,)).fetchone()
            kind, n = row[0], int(row[1])
            cols = decode_segment(row[7])
            if len(cols) != n or kind not in KINDS:
                raise ValueError(f"holds {len(cols)} {cols.kind} rows, the table says {n} {kind}")
        except Exception as exc:  # anything unreadable is reported, not fatal
            report.count("segments", False)
            report.problems.append(f"segment {seq}: {exc}")
            try:
                k, n_lost = conn.execute("SELECT kind, n FROM segments WHERE seq=?",
                                         (seq,)).fetchone()
                report.rows_lost[k] = report.rows_lost.get(k, 0) + int(n_lost)
            except (sqlite3.DatabaseError, TypeError):
                pass
            continue
        report.count("segments", True)
        report.rows_ok[kind] = report.rows_ok.get(kind, 0) + n
        if out is not None:
            # the same seq: a segment central applied before the damage is a duplicate there
            out.execute("INSERT INTO segments(seq, kind, n, min_ts, max_ts, created_ms, "
                        "attempts, size, blob, summarised) VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (seq, *row))
    for jid in _ids(conn, "journal", "id", report):
        try:
            kind, n, created, blob = conn.execute(
                "SELECT kind, n, created_ms, blob FROM journal WHERE id=?", (jid,)).fetchone()
            cols = unpack_journal(kind, [blob])
            if len(cols) != n:
                raise ValueError(f"holds {len(cols)} rows, the table says {n}")
        except Exception as exc:
            report.count("journal", False)
            report.problems.append(f"journal row {jid}: {exc}")
            continue
        report.count("journal", True)
        report.rows_ok[kind] = report.rows_ok.get(kind, 0) + int(n)
        if out is not None:
            out.execute("INSERT INTO journal(id, kind, n, created_ms, blob) VALUES (?,?,?,?,?)",
                        (jid, kind, n, created, blob))
    for table, cols_sql in (("dead_letters", "seq, kind, n, reason, failed_ms, blob"),
                            ("counters", "name, value"),
                            ("agg_state", "fingerprint, name, saved_ms, log_id, blob"),
                            ("agg_log", "id, now_ms, n, blob")):
        try:
            rows = conn.execute(f"SELECT {cols_sql} FROM {table}").fetchall()
        except sqlite3.DatabaseError as exc:
            report.problems.append(f"{table}: {exc}")
            continue
        report.ok[table] = len(rows)
        if out is not None and rows:
            marks = ",".join("?" * len(rows[0]))
            out.executemany(f"INSERT OR REPLACE INTO {table}({cols_sql}) VALUES ({marks})",
                            rows)
    if out is not None:
        # sequence numbers continue after the highest one the damaged buffer ever used
        for table in ("segments", "journal", "agg_log"):
            try:
                got = conn.execute("SELECT seq FROM sqlite_sequence WHERE name=?",
                                   (table,)).fetchone()
            except sqlite3.DatabaseError:
                got = None
            top = max(int(got[0]) if got else 0, _max_id(out, table))
            if out.execute("UPDATE sqlite_sequence SET seq=? WHERE name=?",
                           (top, table)).rowcount == 0:
                out.execute("INSERT INTO sqlite_sequence(name, seq) VALUES (?, ?)", (table, top))
    say("done")


def _max_id(conn: sqlite3.Connection, table: str) -> int:
    key = "seq" if table == "segments" else "id"
    (top,) = conn.execute(f"SELECT coalesce(max({key}), 0) FROM {table}").fetchone()
    return int(top)


__all__ = ["Report", "check", "salvage"]


def list_dead_letters(path: str | Path) -> list[dict[str, Any]]:
    """The dead letters of the buffer at ``path`` (the node may be running)."""
    store = Store(path)
    try:
        return store.dead_letters()
    finally:
        store.close()


def requeue_dead_letters(path: str | Path, seqs: list[int] | None = None, *,
                         synchronous: str = "full") -> list[tuple[int, int]]:
    """Put dead letters ``seqs`` (all when None) back in the queue: [(old seq, new seq)]."""
    store = Store(path, synchronous=synchronous)
    try:
        return store.requeue_dead_letters(seqs)
    finally:
        store.close()


def drop_dead_letters(path: str | Path, seqs: list[int], *, synchronous: str = "full"
                      ) -> list[tuple[int, str, int, str]]:
    """Delete dead letters ``seqs`` for good: [(seq, kind, rows, reason)] of those dropped."""
    store = Store(path, synchronous=synchronous)
    try:
        return store.drop_dead_letters(seqs)
    finally:
        store.close()
