"""The durable SQLite buffer (blocking; owned by one thread at a time).

Layout (one SQLite file in WAL mode)::

    series_blocks(first_id, last_id, blob)
                                         the node's series dictionary: the series first seen in
                                         one commit, as one zstd-compressed msgpack block (labels
                                         repeat a lot: ~10x smaller than a row per series)
    series_unacked(id)                   series whose definition central has not confirmed
    journal(id, kind, n, created_ms, blob)
                                         what ingest committed, one row per request and kind,
                                         raw columns: durable at once, cheap to write
    segments(seq, kind, n, min_ts, max_ts, created_ms, attempts, size, summarised, blob)
                                         journal rows rolled into compressed columnar segments
                                         (:mod:`edge_node.wire`), shipped to central unchanged;
                                         ``summarised``: raw metrics that stream-aggregation
                                         rollups cover (compacted first under disk pressure)
    agg_state(fingerprint, name, saved_ms, log_id, blob)
                                         each aggregation rule's state at its last checkpoint,
                                         which included the replay log up to ``log_id``
    agg_log(id, now_ms, n, blob)         the samples aggregated since, as segments (replayed
                                         on start)
    dead_letters(seq, kind, n, reason, failed_ms, blob)
                                         segments central refused as malformed: kept, counted
    counters(name, value)                persistent counts (drops, dead letters, acks)
    meta(key, value)                     the buffer's epoch (a random id, part of every batch)

The :class:`Store` methods are plain blocking calls; :mod:`edge_node.writer` runs them on a
worker thread behind a ``CapacityLimiter(1)`` so exactly one call uses the connection at a time.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgpack
import numpy as np
import zstandard

from .errors import BufferFailure
from .model import IngestBatch, SeriesKey
from .wire import KINDS, LINE_KINDS, VALUE_KINDS, Columns, decode_segment, encode_segment

# Drop order under disk pressure: lowest priority first. Heartbeats are never dropped.
DROP_ORDER = ("logs", "metrics", "rollups")

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


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class PendingSegment:
    """A segment chosen for forwarding."""

    seq: int
    kind: str
    n: int
    blob: bytes
    created_ms: int


@dataclass(frozen=True)
class BufferStats:
    journal_rows: int
    segments: dict[str, int]
    pending: dict[str, int]  # rows (samples, log lines, heartbeats) waiting per kind
    oldest_ms: int | None
    used_bytes: int
    dead_letters: int
    counters: dict[str, int]


def _pack_journal(kind: str, sids: Sequence[int], ts: Sequence[int],
                  values: Sequence[float] | None, lines: Sequence[bytes] | None) -> bytes:
    doc: dict[str, object] = {
        "s": np.asarray(sids, dtype=np.int64).tobytes(),
        "t": np.asarray(ts, dtype=np.int64).tobytes(),
    }
    if values is not None:
        doc["v"] = np.asarray(values, dtype=np.float64).tobytes()
    if lines is not None:
        doc["l"] = list(lines)
    return msgpack.packb(doc, use_bin_type=True)  # type: ignore[no-any-return]


def pack_journal_rows(
        batches: Sequence[tuple[IngestBatch, tuple[list[int], ...]]]
) -> list[tuple[str, int, bytes]]:
    """One journal row per kind for a whole group of requests: [(kind, rows, blob)].

    Each batch comes with its series ids: metrics, logs, heartbeats and (optionally) alerts.
    """
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
        rows.append(("metrics", len(m_v), _pack_journal("metrics", m_ids, m_ts, m_v, None)))
    if l_lines:
        rows.append(("logs", len(l_lines), _pack_journal("logs", l_ids, l_ts, None, l_lines)))
    if h_ts:
        rows.append(("heartbeats", len(h_ts), _pack_journal("heartbeats", h_ids, h_ts, None,
                                                            None)))
    if a_lines:
        rows.append(("alerts", len(a_lines), _pack_journal("alerts", a_ids, a_ts, None,
                                                          a_lines)))
    return rows


def _unpack_journal(kind: str, blobs: Iterable[bytes]) -> Columns:
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


@dataclass
class StageOutput:
    """What a :class:`RollStage` wants written when a roll ends (all in one transaction)."""

    rollups: Columns | None = None          # output rows of closed windows
    new_series: list[tuple[int, SeriesKey]] | None = None  # definitions they need
    states: dict[str, tuple[str, bytes]] | None = None     # checkpoint: fingerprint -> state
    rules: frozenset[str] = frozenset()     # fingerprints of every current rule
    compact_before_ms: int = 0              # summarised raw rows older than this are covered


class RollStage(Protocol):
    """Stream aggregation as the journal is rolled (see :mod:`edge_node.rollups`)."""

    def split(self, cols: Columns, now_ms: int
              ) -> tuple[list[tuple[Columns, bool, bytes | None]], bytes | None]:
        """Raw metric rows to keep as segments (with their summarised flag and, if already
        made, their encoded segment), and the replay-log entry (a segment) or None."""
        ...

    def finish(self, now_ms: int, force: bool) -> StageOutput | None:
        ...

    def load(self, store: Store) -> None:
        """(Re)build the state from the last checkpoint plus the replay log."""
        ...


class Store:
    """Blocking access to the buffer file. Not thread-safe: serialise calls."""

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "full") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                        timeout=30.0)
            c = self.conn
            # auto_vacuum must be chosen before the first table exists.
            c.execute("PRAGMA auto_vacuum=INCREMENTAL")
            c.execute("PRAGMA journal_mode=WAL")
            c.execute(f"PRAGMA synchronous={synchronous.upper()}")
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
        self._labels: dict[int, SeriesKey] = {}
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

    def load_series(self) -> tuple[dict[SeriesKey, int], int]:
        """All known series and the next free id."""
        out: dict[SeriesKey, int] = {}
        top = 0
        dctx = zstandard.ZstdDecompressor()
        for (blob,) in self.conn.execute("SELECT blob FROM series_blocks ORDER BY first_id"):
            for sid, *flat in msgpack.unpackb(dctx.decompress(blob), raw=False):
                key = tuple(zip(flat[0::2], flat[1::2], strict=True))
                out[key] = sid
                self._labels[sid] = key
                top = max(top, sid)
        return out, top + 1

    def labels_of(self, sid: int) -> SeriesKey | None:
        return self._labels.get(sid)

    def series_labels(self, ids: Iterable[int]) -> list[tuple[int, dict[str, str]]]:
        return [(sid, dict(self._labels[sid])) for sid in ids if sid in self._labels]

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
        return self.series_labels(sorted(found))

    def mark_series(self, ids: Iterable[int], acked: bool) -> None:
        arg = (json.dumps(list(ids)),)
        with self._tx():
            if acked:
                self.conn.execute("DELETE FROM series_unacked WHERE id IN "
                                  "(SELECT value FROM json_each(?))", arg)
            else:
                self.conn.execute("INSERT OR IGNORE INTO series_unacked(id) "
                                  "SELECT value FROM json_each(?)", arg)

    # -- ingest --------------------------------------------------------------------------------

    def append(self, new_series: Sequence[tuple[int, SeriesKey]],
               batches: Sequence[tuple[IngestBatch, tuple[list[int], ...]]]) -> None:
        """Commit new series and the rows of ``batches`` (with their series ids) at once."""
        self.append_rows(new_series, pack_journal_rows(batches))

    def append_rows(self, new_series: Sequence[tuple[int, SeriesKey]],
                    rows: Sequence[tuple[str, int, bytes]]) -> None:
        """Commit new series and packed journal rows in one transaction (one fsync).

        Few statements on purpose: the SQLite module hands the GIL back and forth around each
        one, and under load every hand-back can wait for the busy event-loop thread.
        """
        created = now_ms()
        with self._tx():
            self._define_series(new_series)
            self.conn.executemany(
                "INSERT INTO journal(kind, n, created_ms, blob) VALUES (?, ?, ?, ?)",
                [(kind, n, created, blob) for kind, n, blob in rows])
        for sid, key in new_series:
            self._labels[sid] = key

    def _define_series(self, new_series: Sequence[tuple[int, SeriesKey]]) -> None:
        """Store definitions of new series as one block, not yet confirmed by central."""
        if not new_series:
            return
        flat = [[sid, *(x for kv in key for x in kv)] for sid, key in new_series]
        ids = [sid for sid, _ in new_series]
        self.conn.execute(
            "INSERT OR IGNORE INTO series_blocks(first_id, last_id, blob) VALUES (?,?,?)",
            (min(ids), max(ids), zstandard.ZstdCompressor(level=3).compress(msgpack.packb(flat))))
        self.conn.execute("INSERT OR IGNORE INTO series_unacked(id) "
                          "SELECT value FROM json_each(?)", (json.dumps(ids),))

    # -- segments ------------------------------------------------------------------------------

    def roll(self, *, max_rows: int = 2_000_000, max_bytes: int = 8 << 20,
             stage: RollStage | None = None, now: int | None = None,
             force_checkpoint: bool = False) -> list[int]:
        """Turn journal rows into segments, per kind, until the journal is empty.

        A segment holds at most ``max_rows`` rows and is made from at most ``max_bytes`` of
        journal (raw columns, so the compressed segment is smaller): every segment fits in
        one batch central accepts. Returns the new segment seqs.

        With a ``stage`` (stream aggregation), metric rows pass through it first: each journal
        chunk's segments, its replay-log entry and the journal deletion commit together, then
        the outputs of closed windows and (when due) a state checkpoint commit together, so a
        crash at any point neither loses nor double-counts a sample. Should a transaction
        fail, the stage reloads its state from the database before the error propagates.
        """
        at = now_ms() if now is None else now  # one clock reading for the whole roll
        try:
            made = self._roll(max_rows, max_bytes, stage, at)
            if stage is not None:
                made += self._finish_stage(stage, at, force_checkpoint, max_rows)
        except BaseException:
            if stage is not None:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                stage.load(self)
            raise
        return made

    def _finish_stage(self, stage: RollStage, now: int, force: bool, max_rows: int
                      ) -> list[int]:
        res = stage.finish(now, force)
        if res is None:
            return []
        made: list[int] = []
        with self._tx():
            if res.new_series:
                self._define_series(res.new_series)
            if res.rollups is not None and len(res.rollups):
                cols = res.rollups
                for a in range(0, len(cols), max_rows):
                    part = Columns("rollups", cols.series[a:a + max_rows], cols.ts[a:a + max_rows],
                                   None if cols.values is None else cols.values[a:a + max_rows])
                    made.append(self._insert_segment("rollups", part, encode_segment(part)))
                self._bump("rollups_made", len(cols))
            if res.states:
                (log_id,) = self.conn.execute(
                    "SELECT coalesce(max(id), 0) FROM agg_log").fetchone()
                self.conn.executemany(
                    "INSERT OR REPLACE INTO agg_state(fingerprint, name, saved_ms, log_id, blob) "
                    "VALUES (?,?,?,?,?)",
                    [(fp, name, now, log_id, blob) for fp, (name, blob) in res.states.items()])
                self._bump("aggregation_checkpoint_bytes",
                           sum(len(blob) for _, blob in res.states.values()))
                # forget removed rules, and the log every current rule's checkpoint includes
                marks = ",".join("?" * len(res.rules))
                self.conn.execute(f"DELETE FROM agg_state WHERE fingerprint NOT IN ({marks})",
                                  sorted(res.rules))
                (saved, low) = self.conn.execute(
                    "SELECT count(*), coalesce(min(log_id), 0) FROM agg_state").fetchone()
                if saved == len(res.rules):
                    self.conn.execute("DELETE FROM agg_log WHERE id<=?", (low,))
        for sid, key in res.new_series or ():
            self._labels[sid] = key
        self.compact_before_ms = res.compact_before_ms
        return made

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
            yield _unpack_journal("metrics", blobs)

    def agg_saved(self) -> tuple[dict[str, tuple[bytes, int]], list[tuple[int, int, bytes]]]:
        """Each rule's last checkpoint (state, replay-log id it includes) by fingerprint, and
        the replay log: [(id, now_ms, blob)]."""
        states = {fp: (blob, int(log_id)) for fp, blob, log_id in self.conn.execute(
            "SELECT fingerprint, blob, log_id FROM agg_state")}
        log = [(int(i), int(t), b) for i, t, b in
               self.conn.execute("SELECT id, now_ms, blob FROM agg_log ORDER BY id")]
        return states, log

    def _roll(self, max_rows: int, max_bytes: int, stage: RollStage | None, now: int
              ) -> list[int]:
        made = []
        for kind in KINDS:
            after = 0
            while True:
                ids: list[int] = []
                blobs: list[bytes] = []
                rows = size = 0
                for jid, n, blob in self.conn.execute(
                        "SELECT id, n, blob FROM journal WHERE kind=? AND id>? ORDER BY id",
                        (kind, after)):
                    if ids and (rows + n > max_rows or size + len(blob) > max_bytes):
                        break
                    ids.append(jid)
                    blobs.append(blob)
                    rows += n
                    size += len(blob)
                if not ids:
                    break
                cols = _unpack_journal(kind, blobs)
                parts: list[tuple[Columns, bool, bytes | None]] = [(cols, False, None)]
                logged = None
                if stage is not None and kind == "metrics":
                    parts, logged = stage.split(cols, now)
                segs = [(part, flag, blob or encode_segment(part))
                        for part, flag, blob in parts if len(part)]
                with self._tx():
                    for part, flag, seg in segs:
                        made.append(self._insert_segment(kind, part, seg, summarised=flag))
                    if logged is not None:
                        self.conn.execute("INSERT INTO agg_log(now_ms, n, blob) VALUES (?,?,?)",
                                          (now, len(cols), logged))
                        self._bump("aggregation_log_bytes", len(logged))
                    self.conn.execute("DELETE FROM journal WHERE kind=? AND id<=?",
                                      (kind, ids[-1]))
                after = ids[-1]
        return made

    def _insert_segment(self, kind: str, cols: Columns, seg: bytes,
                        created_ms: int | None = None, summarised: bool = False) -> int:
        cur = self.conn.execute(
            "INSERT INTO segments(kind, n, min_ts, max_ts, created_ms, size, blob, summarised) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (kind, len(cols), int(cols.ts.min()) if len(cols) else 0,
             int(cols.ts.max()) if len(cols) else 0, created_ms or now_ms(), len(seg), seg,
             int(summarised)))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def merge_candidates(self, kind: str, *, older_than_ms: int, max_rows: int,
                         max_bytes: int = 8 << 20, exclude: Iterable[int] = ()
                         ) -> list[tuple[int, int]]:
        """Never-attempted adjacent segments of ``kind`` worth merging: [(seq, n)].

        The run starts at the oldest candidate and stays within ``max_rows`` rows and
        ``max_bytes`` of compressed segments, so the merged segment still fits one batch.
        """
        skip = set(exclude)
        out: list[tuple[int, int]] = []
        rows = size = 0
        flag = None
        for seq, n, sz, summ in self.conn.execute(
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

    def read_segments(self, seqs: Sequence[int]) -> list[bytes]:
        q = f"SELECT seq, blob FROM segments WHERE seq IN ({','.join('?' * len(seqs))})"
        found = dict(self.conn.execute(q, list(seqs)).fetchall())
        return [found[s] for s in seqs if s in found]

    def replace_segments(self, seqs: Sequence[int], kind: str, cols: Columns, seg: bytes) -> int:
        """Atomically swap never-attempted segments ``seqs`` for one merged segment.

        Returns the new seq, or 0 when any of them was attempted or removed meanwhile.
        """
        with self._tx():
            marks = ",".join("?" * len(seqs))
            (still,) = self.conn.execute(
                f"SELECT count(*) FROM segments WHERE attempts=0 AND seq IN ({marks})",
                list(seqs)).fetchone()
            if still != len(seqs):
                return 0
            (created, summ) = self.conn.execute(
                f"SELECT min(created_ms), min(summarised) FROM segments WHERE seq IN ({marks})",
                list(seqs)).fetchone()
            self.conn.execute(f"DELETE FROM segments WHERE seq IN ({marks})", list(seqs))
            new = self._insert_segment(kind, cols, seg, created_ms=created, summarised=bool(summ))
            self._bump("segments_merged", len(seqs))
        return new

    def next_segment(self, exclude: Iterable[int] = ()) -> PendingSegment | None:
        """The segment to forward next: highest-priority kind first, oldest first."""
        skip = set(exclude)
        for kind in KINDS:
            for seq, n, blob, created in self.conn.execute(
                    "SELECT seq, n, blob, created_ms FROM segments WHERE kind=? ORDER BY seq "
                    "LIMIT ?", (kind, len(skip) + 1)):
                if seq not in skip:
                    return PendingSegment(seq=seq, kind=kind, n=n, blob=blob, created_ms=created)
        return None

    def claim_next_segment(self, exclude: Iterable[int] = ()) -> PendingSegment | None:
        """Choose the next segment to forward and count an attempt, in one transaction.

        A segment with attempts > 0 is never merged, and the merger swaps segments in a
        transaction too: so a segment is either merged before it is claimed (and the merged
        one is sent instead) or claimed before it could be merged, never both; otherwise its
        rows could reach central twice.
        """
        with self._tx():
            seg = self.next_segment(exclude)
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
        with self._tx():
            self.conn.execute("DELETE FROM segments WHERE seq=?", (seq,))
            if ids:
                self.conn.execute("DELETE FROM series_unacked WHERE id IN "
                                  "(SELECT value FROM json_each(?))", (json.dumps(ids),))
            self._bump(f"acked_{kind}", n)
            self._bump("acked_batches", 1)

    def dead_letter(self, seq: int, reason: str) -> None:
        """Move segment ``seq`` aside: central refused it as malformed."""
        with self._tx():
            row = self.conn.execute(
                "SELECT kind, n, blob FROM segments WHERE seq=?", (seq,)).fetchone()
            if row is None:
                return
            kind, n, blob = row
            self.conn.execute(
                "INSERT OR REPLACE INTO dead_letters(seq, kind, n, reason, failed_ms, blob) "
                "VALUES (?, ?, ?, ?, ?, ?)", (seq, kind, n, reason[:2000], now_ms(), blob))
            self.conn.execute("DELETE FROM segments WHERE seq=?", (seq,))
            self._bump(f"dead_lettered_{kind}", n)

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
        with self._tx():
            rows = self.conn.execute(
                "SELECT seq, kind, n, blob, failed_ms FROM dead_letters ORDER BY seq").fetchall()
            wanted = None if seqs is None else set(seqs)
            for seq, kind, n, blob, failed in rows:
                if wanted is not None and seq not in wanted:
                    continue
                cols = decode_segment(blob)
                new = self._insert_segment(kind, cols, blob, created_ms=failed)
                self.conn.execute("DELETE FROM dead_letters WHERE seq=?", (seq,))
                self._bump("requeued_dead_letters", n)
                moved.append((seq, new))
        return moved

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

    def enforce_budget(self, max_bytes: int, exclude: Iterable[int] = ()) -> dict[str, int]:
        """Drop the oldest lowest-priority segments until the buffer fits ``max_bytes``.

        Raw metrics that stream-aggregation rollups already summarise (every row covered by a
        rule whose windows over them have closed) go first, counted as ``compacted_metrics``
        (key ``compacted`` in the result): the site keeps their rollups. Then the oldest
        logs, metrics, rollups. Heartbeats are never dropped. Returns rows removed per kind.
        """
        dropped: dict[str, int] = {}
        skip = set(exclude)
        used = self.used_bytes()
        if used <= max_bytes:
            return dropped
        with self._tx():
            for seq, n, size in self.conn.execute(
                    "SELECT seq, n, size FROM segments WHERE kind='metrics' AND summarised=1 "
                    "AND max_ts<? ORDER BY seq", (self.compact_before_ms,)).fetchall():
                if used <= max_bytes:
                    break
                if seq in skip:
                    continue
                self.conn.execute("DELETE FROM segments WHERE seq=?", (seq,))
                dropped["compacted"] = dropped.get("compacted", 0) + n
                used -= size
                self._bump("compacted_metrics", n)
            for kind in DROP_ORDER:
                rows = self.conn.execute(
                    "SELECT seq, n, size FROM segments WHERE kind=? ORDER BY seq",
                    (kind,)).fetchall()
                for seq, n, size in rows:
                    if used <= max_bytes:
                        break
                    if seq in skip:
                        continue
                    self.conn.execute("DELETE FROM segments WHERE seq=?", (seq,))
                    dropped[kind] = dropped.get(kind, 0) + n
                    used -= size
                    self._bump(f"dropped_{kind}", n)
        if dropped:
            # give the freed pages back to the filesystem, then fold the WAL (which holds
            # those very writes) into the file and cut it to zero, if no reader is in the way
            self.conn.execute("PRAGMA incremental_vacuum")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return dropped

    # -- observability -------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.conn.execute("SELECT name, value FROM counters")}

    def stats(self) -> BufferStats:
        c = self.conn
        segs: dict[str, int] = {}
        pending: dict[str, int] = dict.fromkeys(KINDS, 0)
        for kind, cnt, n in c.execute("SELECT kind, count(*), sum(n) FROM segments GROUP BY kind"):
            segs[kind] = cnt
            pending[kind] += int(n or 0)
        for kind, n in c.execute("SELECT kind, sum(n) FROM journal GROUP BY kind"):
            pending[kind] += int(n or 0)
        (jrows,) = c.execute("SELECT count(*) FROM journal").fetchone()
        oldest = c.execute(
            "SELECT min(m) FROM (SELECT min(created_ms) AS m FROM segments "
            "UNION ALL SELECT min(created_ms) FROM journal)").fetchone()[0]
        (dl,) = c.execute("SELECT count(*) FROM dead_letters").fetchone()
        return BufferStats(journal_rows=int(jrows), segments=segs, pending=pending,
                           oldest_ms=oldest, used_bytes=self.used_bytes(), dead_letters=int(dl),
                           counters=self.counters())

    def integrity_check(self) -> list[str]:
        problems = [r[0] for r in self.conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
        for seq, blob in self.conn.execute("SELECT seq, blob FROM segments"):
            try:
                decode_segment(blob)
            except Exception as exc:
                problems.append(f"segment {seq}: {exc}")
        return problems

    # -- helpers -------------------------------------------------------------------------------

    def _bump(self, name: str, by: int) -> None:
        self.conn.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value=value+excluded.value", (name, by))

    def _tx(self) -> _Tx:
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
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
