"""The SQL store: the buffer file's schema and every statement on it (blocking).

A :class:`Store` is one SQLite connection, used by one thread at a time; the package docstring
(:mod:`edge_node.buffer`) draws the tables. Its methods are plain blocking calls, each one
transaction: :class:`edge_node.buffer.BufferService` runs them on the store's owner thread.
The roll (:mod:`.roll`), the merge (:mod:`.merge`) and the disk-budget policy (:mod:`.budget`)
live in their own modules; their entry points are methods here, so the store has one API.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ..errors import BufferFailure
from ..runtime import Clock, clock_ms
from ..wire import KINDS, Columns, decode_segment
from . import merge, roll
from .budget import COMPACTED, DROP_ORDER, Candidate, plan_drops
from .journal import Tagged, pack_journal_rows, unpack_journal
from .series import Definition, SeriesDictionary, decode_block, encode_block
from .stage import RollStage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS series_blocks (
    first_id INTEGER PRIMARY KEY, last_id INTEGER NOT NULL, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS series_unacked (id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, n INTEGER NOT NULL,
    created_ms INTEGER NOT NULL, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS segments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, n INTEGER NOT NULL,
    min_ts INTEGER NOT NULL, max_ts INTEGER NOT NULL, created_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, size INTEGER NOT NULL, blob BLOB NOT NULL,
    summarised INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS segments_kind ON segments(kind, seq);
CREATE INDEX IF NOT EXISTS segments_fresh ON segments(kind, max_ts);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, n INTEGER NOT NULL, reason TEXT NOT NULL,
    failed_ms INTEGER NOT NULL, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS agg_state (
    fingerprint TEXT PRIMARY KEY, name TEXT NOT NULL, saved_ms INTEGER NOT NULL,
    log_id INTEGER NOT NULL, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS agg_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT, now_ms INTEGER NOT NULL, n INTEGER NOT NULL,
    blob BLOB NOT NULL);
"""


@dataclass(frozen=True)
class PendingSegment:
    """A segment chosen for forwarding."""

    seq: int
    kind: str
    n: int
    blob: bytes
    created_ms: int
    max_ts: int = 0  # its newest row's timestamp


_SYNC_NAMES = {0: "off", 1: "normal", 2: "full", 3: "extra"}


@dataclass(frozen=True)
class BufferStats:
    journal_rows: int
    segments: dict[str, int]
    pending: dict[str, int]  # rows (samples, log lines, heartbeats) waiting per kind
    oldest_ms: int | None
    used_bytes: int
    dead_letters: int
    counters: dict[str, int]
    pending_bytes: int = 0  # compressed bytes of the segments waiting (what goes on the wire)


class Store:
    """Blocking access to the buffer file. Not thread-safe: serialise calls."""

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "full",
                 clock: Clock = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                        timeout=30.0)
            c = self.conn
            # auto_vacuum must be chosen before the first table exists.
            c.execute("PRAGMA auto_vacuum=INCREMENTAL")
            c.execute("PRAGMA journal_mode=WAL")
            c.execute(f"PRAGMA synchronous={synchronous.upper()}")
            #: what the connection really runs with, read back (the status page shows it)
            self.synchronous = _SYNC_NAMES[c.execute("PRAGMA synchronous").fetchone()[0]]
            # After each checkpoint, cut the WAL back to 4 MiB (about the autocheckpoint size):
            # it counts against the disk budget, so it must not stay large after a burst.
            c.execute("PRAGMA journal_size_limit=4194304")
            c.executescript(_SCHEMA)
            cols = {r[1] for r in c.execute("PRAGMA table_info(segments)")}
            agg_cols = {r[1] for r in c.execute("PRAGMA table_info(agg_state)")}
            if "log_id" not in agg_cols:
                c.execute("ALTER TABLE agg_state ADD COLUMN log_id INTEGER NOT NULL DEFAULT 0")
            if "summarised" not in cols:  # a buffer made before stream aggregation
                c.execute("ALTER TABLE segments ADD COLUMN summarised INTEGER NOT NULL DEFAULT 0")
        except sqlite3.DatabaseError as exc:
            raise BufferFailure(f"cannot open buffer {self.path}: {exc}") from exc
        self.compact_before_ms = 0
        row = c.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
        if row is None:
            self.epoch = uuid.uuid4().hex
            c.execute("INSERT INTO meta(key, value) VALUES ('epoch', ?)", (self.epoch,))
        else:
            self.epoch = row[0]

    def close(self) -> None:
        self.conn.close()

    # -- series dictionary ---------------------------------------------------------------------

    @cached_property
    def series(self) -> SeriesDictionary:
        """The series dictionary, read from ``series_blocks`` on first use."""
        return SeriesDictionary(d for (blob,) in self.conn.execute(
            "SELECT blob FROM series_blocks ORDER BY first_id") for d in decode_block(blob))

    def now_ms(self) -> int:
        return clock_ms(self.clock)

    def unacked_series_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM series_unacked").fetchone()[0])

    def unacked_series(self, ids: Iterable[int]) -> list[tuple[int, dict[str, str]]]:
        """Definitions of those of ``ids`` that central has not confirmed yet."""
        ids = list(ids)
        found: list[int] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            q = f"SELECT id FROM series_unacked WHERE id IN ({','.join('?' * len(chunk))})"
            found.extend(sid for (sid,) in self.conn.execute(q, chunk))
        return self.series.labels(sorted(found))

    def mark_series(self, ids: Iterable[int], acked: bool) -> None:
        arg = (json.dumps(list(ids)),)
        with self.tx():
            if acked:
                self.conn.execute("DELETE FROM series_unacked WHERE id IN "
                                  "(SELECT value FROM json_each(?))", arg)
            else:
                self.conn.execute("INSERT OR IGNORE INTO series_unacked(id) "
                                  "SELECT value FROM json_each(?)", arg)

    # -- ingest --------------------------------------------------------------------------------

    def append(self, new_series: Sequence[Definition], batches: Sequence[Tagged]) -> None:
        """Commit new series and the rows of ``batches`` (with their series ids) at once."""
        self.append_rows(new_series, pack_journal_rows(batches))

    def append_rows(self, new_series: Sequence[Definition],
                    rows: Sequence[tuple[str, int, bytes]]) -> None:
        """Commit new series and packed journal rows in one transaction (one fsync).

        Few statements on purpose: the SQLite module hands the GIL back and forth around each
        one, and under load every hand-back can wait for the busy event-loop thread.
        """
        created = self.now_ms()
        with self.tx():
            self.define_series(new_series)
            self.conn.executemany(
                "INSERT INTO journal(kind, n, created_ms, blob) VALUES (?, ?, ?, ?)",
                [(kind, n, created, blob) for kind, n, blob in rows])

    def define_series(self, new_series: Sequence[Definition]) -> None:
        """Store definitions of new series as one block, not yet confirmed by central."""
        if not new_series:
            return
        # A block is keyed by its lowest id, but two blocks can start at the same id: the roll
        # stores a definition still waiting for its group commit (a rollup output series that
        # a device sends too), and that commit's block starts there as well. The later block
        # then takes a key past every other; a series defined twice reads back the same.
        first, last, blob = encode_block(new_series)
        self.conn.execute(
            "INSERT INTO series_blocks(first_id, last_id, blob) VALUES ("
            "CASE WHEN EXISTS (SELECT 1 FROM series_blocks WHERE first_id=?1) "
            "THEN (SELECT max(first_id) + 1 FROM series_blocks) ELSE ?1 END, ?2, ?3)",
            (first, last, blob))
        self.conn.execute("INSERT OR IGNORE INTO series_unacked(id) "
                          "SELECT value FROM json_each(?)",
                          (json.dumps([sid for sid, _ in new_series]),))

    # -- segments ------------------------------------------------------------------------------

    def roll(self, *, max_rows: int = 2_000_000, max_bytes: int = 8 << 20,
             stage: RollStage | None = None, now: int | None = None,
             force_checkpoint: bool = False) -> list[int]:
        """Turn the journal into segments (see :func:`.roll.roll`); the new segment seqs."""
        return roll.roll(self, max_rows=max_rows, max_bytes=max_bytes, stage=stage,
                         now=self.now_ms() if now is None else now,
                         force_checkpoint=force_checkpoint)

    def agg_saved(self) -> tuple[dict[str, tuple[bytes, int]], list[tuple[int, int, bytes]]]:
        """Each rule's last checkpoint (state, replay-log id it includes) by fingerprint, and
        the replay log: [(id, now_ms, blob)]."""
        return roll.saved_state(self.conn)

    def recent_metrics(self, since_ms: int) -> Iterable[Columns]:
        """Metric rows still in the buffer (segments and journal) that may be newer than
        ``since_ms`` (local alerting seeds its recent data from them on start)."""
        for (blob,) in self.conn.execute(
                "SELECT blob FROM segments WHERE kind='metrics' AND max_ts>? ORDER BY seq",
                (since_ms,)).fetchall():
            yield decode_segment(blob)
        blobs = [b for (b,) in self.conn.execute(
            "SELECT blob FROM journal WHERE kind='metrics' ORDER BY id").fetchall()]
        if blobs:
            yield unpack_journal("metrics", blobs)

    def merge_candidates(self, kind: str, *, older_than_ms: int, max_rows: int,
                         max_bytes: int = 8 << 20, exclude: Iterable[int] = ()
                         ) -> list[tuple[int, int]]:
        """Never-attempted adjacent segments worth merging (see :func:`.merge.candidates`)."""
        return merge.candidates(self.conn, kind, older_than_ms=older_than_ms,
                                max_rows=max_rows, max_bytes=max_bytes, exclude=exclude)

    def merge(self, kind: str, seqs: list[int]) -> int:
        """Merge segments ``seqs`` into one (see :func:`.merge.merge`); the new seq or 0."""
        return merge.merge(self, kind, seqs)

    def read_segments(self, seqs: Sequence[int]) -> list[bytes]:
        q = f"SELECT seq, blob FROM segments WHERE seq IN ({','.join('?' * len(seqs))})"
        found = dict(self.conn.execute(q, list(seqs)).fetchall())
        return [found[s] for s in seqs if s in found]

    def replace_segments(self, seqs: Sequence[int], kind: str, cols: Columns, seg: bytes) -> int:
        """Swap never-attempted ``seqs`` for one merged segment (see :func:`.merge.replace`)."""
        return merge.replace(self, seqs, kind, cols, seg)

    def insert_segment(self, kind: str, cols: Columns, seg: bytes,
                        created_ms: int | None = None, summarised: bool = False) -> int:
        cur = self.conn.execute(
            "INSERT INTO segments(kind, n, min_ts, max_ts, created_ms, size, blob, summarised) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (kind, len(cols), int(cols.ts.min()) if len(cols) else 0,
             int(cols.ts.max()) if len(cols) else 0, created_ms or self.now_ms(), len(seg), seg,
             int(summarised)))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def next_segment(self, exclude: Iterable[int] = (), *, fresh_since_ms: int | None = None
                     ) -> PendingSegment | None:
        """The segment to forward next: highest-priority kind first, oldest first; or, with
        ``fresh_since_ms`` (the live lane), the newest whose data reaches past then."""
        skip = set(exclude)
        order, since = ("ORDER BY seq", None) if fresh_since_ms is None else (
            "ORDER BY seq DESC", fresh_since_ms)
        for kind in KINDS:
            for seq, n, blob, created, max_ts in self.conn.execute(
                    "SELECT seq, n, blob, created_ms, max_ts FROM segments WHERE kind=? AND "
                    f"(? IS NULL OR max_ts>=?) {order} LIMIT ?",
                    (kind, since, since, len(skip) + 1)):
                if seq not in skip:
                    return PendingSegment(seq=seq, kind=kind, n=n, blob=blob, created_ms=created,
                                          max_ts=max_ts)
        return None

    def claim_next_segment(self, exclude: Iterable[int] = (), fresh_since_ms: int | None = None
                           ) -> PendingSegment | None:
        """Choose the next segment to forward and count an attempt, in one transaction.

        A segment with attempts > 0 is never merged, and the merger swaps segments in a
        transaction too: so a segment is either merged before it is claimed (and the merged
        one is sent instead) or claimed before it could be merged, never both; otherwise its
        rows could reach central twice.
        """
        with self.tx():
            seg = self.next_segment(exclude, fresh_since_ms=fresh_since_ms)
            if seg is not None:
                self.mark_attempt(seg.seq)
        return seg

    def mark_attempt(self, seq: int) -> None:
        self.conn.execute("UPDATE segments SET attempts=attempts+1 WHERE seq=?", (seq,))

    def low_watermark(self) -> int:
        (low,) = self.conn.execute("SELECT min(seq) FROM segments").fetchone()
        if low is None:
            (low,) = self.conn.execute(
                "SELECT seq FROM sqlite_sequence WHERE name='segments'").fetchone() or (0,)
            low = (low or 0) + 1
        return int(low)

    def ack(self, seq: int, kind: str, n: int, series_ids: Iterable[int] = ()) -> None:
        """Central applied segment ``seq``: forget it, remember the series it defined."""
        ids = list(series_ids)
        with self.tx():
            self.conn.execute("DELETE FROM segments WHERE seq=?", (seq,))
            if ids:
                self.conn.execute("DELETE FROM series_unacked WHERE id IN "
                                  "(SELECT value FROM json_each(?))", (json.dumps(ids),))
            self.bump(f"acked_{kind}", n)
            self.bump("acked_batches", 1)

    def expire_segment(self, seq: int, kind: str, n: int) -> None:
        """Forget segment ``seq`` unsent: too old for its backend (counted)."""
        with self.tx():
            self.conn.execute("DELETE FROM segments WHERE seq=?", (seq,))
            self.bump(f"expired_{kind}", n)

    def dead_letter(self, seq: int, reason: str) -> None:
        """Move segment ``seq`` aside: central refused it as malformed."""
        with self.tx():
            row = self.conn.execute(
                "SELECT kind, n, blob FROM segments WHERE seq=?", (seq,)).fetchone()
            if row is None:
                return
            kind, n, blob = row
            self.conn.execute(
                "INSERT OR REPLACE INTO dead_letters(seq, kind, n, reason, failed_ms, blob) "
                "VALUES (?, ?, ?, ?, ?, ?)", (seq, kind, n, reason[:2000], self.now_ms(), blob))
            self.conn.execute("DELETE FROM segments WHERE seq=?", (seq,))
            self.bump(f"dead_lettered_{kind}", n)

    def dead_letters(self) -> list[dict[str, Any]]:
        return [dict(zip(("seq", "kind", "n", "reason", "failed_ms"), r, strict=True))
                for r in self.conn.execute(
                    "SELECT seq, kind, n, reason, failed_ms FROM dead_letters ORDER BY seq")]

    def requeue_dead_letters(self, seqs: Iterable[int] | None = None) -> list[tuple[int, int]]:
        """Put dead-lettered segments back in the queue (after central was fixed).

        Each gets a new sequence number: central never applied it, so nothing is duplicated.
        Returns [(old seq, new seq)].
        """
        moved: list[tuple[int, int]] = []
        with self.tx():
            rows = self.conn.execute(
                "SELECT seq, kind, n, blob, failed_ms FROM dead_letters ORDER BY seq").fetchall()
            wanted = None if seqs is None else set(seqs)
            for seq, kind, n, blob, failed in rows:
                if wanted is not None and seq not in wanted:
                    continue
                cols = decode_segment(blob)
                new = self.insert_segment(kind, cols, blob, created_ms=failed)
                self.conn.execute("DELETE FROM dead_letters WHERE seq=?", (seq,))
                self.bump("requeued_dead_letters", n)
                moved.append((seq, new))
        return moved

    def drop_dead_letters(self, seqs: Iterable[int]) -> list[tuple[int, str, int, str]]:
        """Delete dead letters ``seqs`` for good, each counted (``dropped_dead_letters_<kind>``):
        [(seq, kind, rows, reason)] of those dropped."""
        wanted = set(seqs)
        with self.tx():
            rows = [r for r in self.conn.execute(
                "SELECT seq, kind, n, reason FROM dead_letters ORDER BY seq") if r[0] in wanted]
            for seq, kind, n, _ in rows:
                self.conn.execute("DELETE FROM dead_letters WHERE seq=?", (seq,))
                self.bump(f"dropped_dead_letters_{kind}", n)
        return [(int(a), str(b), int(c), str(d)) for a, b, c, d in rows]

    # -- disk budget ---------------------------------------------------------------------------

    def used_bytes(self) -> int:
        """Disk the buffer occupies: live pages of the database file plus the WAL file."""
        c = self.conn
        page = c.execute("PRAGMA page_size").fetchone()[0]
        count = c.execute("PRAGMA page_count").fetchone()[0]
        free = c.execute("PRAGMA freelist_count").fetchone()[0]
        try:
            wal = os.path.getsize(f"{self.path}-wal")
        except OSError:
            wal = 0
        return int((count - free) * page) + wal

    def reusable_bytes(self) -> int:
        """Free pages inside the database file: room new rows take without the file growing."""
        c = self.conn
        return int(c.execute("PRAGMA freelist_count").fetchone()[0]
                   * c.execute("PRAGMA page_size").fetchone()[0])

    def give_back_pages(self, n_bytes: int) -> None:
        """Hand about ``n_bytes`` of the file's free pages back to the filesystem (the file
        shrinks at the checkpoint); the WAL keeps its size."""
        page = self.conn.execute("PRAGMA page_size").fetchone()[0]
        self.conn.execute(f"PRAGMA incremental_vacuum({max(1, n_bytes // page)})").fetchall()
        self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def give_back_space(self) -> None:
        """Return every free page to the filesystem and cut the WAL to zero (when no reader is
        in the way): after the disk budget dropped data."""
        self.conn.execute("PRAGMA incremental_vacuum").fetchall()
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def enforce_budget(self, max_bytes: int, exclude: Iterable[int] = ()) -> dict[str, int]:
        """Drop segments until the buffer fits ``max_bytes``, in the order of
        :func:`.budget.plan_drops`; returns rows removed per kind (``compacted``: summarised
        raw metrics). Every drop is counted (``compacted_metrics``, ``dropped_<kind>``)."""
        used = self.used_bytes()
        if used <= max_bytes:
            return {}

        def cands(sql: str, *args: object) -> list[Candidate]:
            return [Candidate(*r) for r in self.conn.execute(sql, args).fetchall()]

        with self.tx():
            plan = plan_drops(
                used, max_bytes,
                cands("SELECT seq, n, size FROM segments WHERE kind='metrics' AND summarised=1 "
                      "AND max_ts<? ORDER BY seq", self.compact_before_ms),
                {kind: cands("SELECT seq, n, size FROM segments WHERE kind=? ORDER BY seq", kind)
                 for kind in DROP_ORDER}, exclude)
            self.conn.execute("DELETE FROM segments WHERE seq IN (SELECT value FROM json_each(?))",
                              (json.dumps(plan.seqs),))
            for key, n in plan.rows.items():
                self.bump("compacted_metrics" if key == COMPACTED else f"dropped_{key}", n)
        if plan.rows:
            # give the freed pages back to the filesystem, then fold the WAL (which holds
            # those very writes) into the file and cut it to zero, if no reader is in the way
            self.give_back_space()
        return plan.rows

    # -- observability -------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.conn.execute("SELECT name, value FROM counters")}

    def stats(self) -> BufferStats:
        c = self.conn
        segs: dict[str, int] = {}
        pending: dict[str, int] = dict.fromkeys(KINDS, 0)
        pending_bytes = 0
        for kind, cnt, n, size in c.execute(
                "SELECT kind, count(*), sum(n), sum(size) FROM segments GROUP BY kind"):
            segs[kind] = cnt
            pending[kind] += int(n or 0)
            pending_bytes += int(size or 0)
        for kind, n in c.execute("SELECT kind, sum(n) FROM journal GROUP BY kind"):
            pending[kind] += int(n or 0)
        (jrows,) = c.execute("SELECT count(*) FROM journal").fetchone()
        oldest = c.execute(
            "SELECT min(m) FROM (SELECT min(created_ms) AS m FROM segments "
            "UNION ALL SELECT min(created_ms) FROM journal)").fetchone()[0]
        (dl,) = c.execute("SELECT count(*) FROM dead_letters").fetchone()
        return BufferStats(journal_rows=int(jrows), segments=segs, pending=pending,
                           oldest_ms=oldest, used_bytes=self.used_bytes(), dead_letters=int(dl),
                           counters=self.counters(), pending_bytes=pending_bytes)

    def integrity_check(self) -> list[str]:
        problems = [r[0] for r in self.conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
        for seq, blob in self.conn.execute("SELECT seq, blob FROM segments"):
            try:
                decode_segment(blob)
            except Exception as exc:
                problems.append(f"segment {seq}: {exc}")
        return problems

    # -- helpers -------------------------------------------------------------------------------

    def bump(self, name: str, by: int) -> None:
        self.conn.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value=value+excluded.value", (name, by))

    def tx(self) -> _Tx:
        return _Tx(self.conn)


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error (nestable: inner levels are no-ops)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.outer = False

    def __enter__(self) -> None:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
            self.outer = True

    def __exit__(self, et: object, ev: object, tb: object) -> None:
        if not self.outer:
            return
        if et is None:
            try:
                self.conn.execute("COMMIT")
            except BaseException:  # e.g. SQLITE_FULL: the transaction may still be open
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        elif self.conn.in_transaction:  # SQLite rolls back by itself after some errors
            self.conn.execute("ROLLBACK")
