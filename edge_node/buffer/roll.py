"""The roll: journal rows become compressed columnar segments, through a stage if one is set.

A segment holds at most ``max_rows`` rows and is made from at most ``max_bytes`` of journal
(raw columns, so the compressed segment is smaller): every segment fits in one batch central
accepts.

With a stage (stream aggregation, :mod:`.stage`), metric rows pass through it first: each
journal chunk's segments, its replay-log entry (``agg_log``) and the journal deletion commit
together; then the outputs of closed windows, the definitions of their series and (when due)
the rules' checkpoints (``agg_state``) commit together. So a crash at any point neither loses
nor double-counts a sample. Should a transaction fail, the stage reloads its state from the
database before the error propagates.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import numpy as np

from ..wire import KINDS, Columns, encode_segment
from .journal import unpack_journal
from .stage import RollStage, StageOutput

if TYPE_CHECKING:
    from .store import Store


def roll(store: Store, *, max_rows: int, max_bytes: int, stage: RollStage | None, now: int,
         force_checkpoint: bool) -> list[int]:
    """Roll the whole journal at ``now`` (one clock reading for the whole roll); returns the
    new segment seqs."""
    try:
        made = _roll_journal(store, max_rows, max_bytes, stage, now)
        if stage is not None:
            made += _finish_stage(store, stage, now, force_checkpoint, max_rows)
    except BaseException:
        if stage is not None:
            if store.conn.in_transaction:
                store.conn.execute("ROLLBACK")
            stage.load(*saved_state(store.conn))
        raise
    return made


def saved_state(conn: sqlite3.Connection
                ) -> tuple[dict[str, tuple[bytes, int]], list[tuple[int, int, bytes]]]:
    """Each rule's last checkpoint (state, replay-log id it includes) by fingerprint, and the
    replay log: [(id, now_ms, blob)]."""
    states = {fp: (blob, int(log_id)) for fp, blob, log_id in conn.execute(
        "SELECT fingerprint, blob, log_id FROM agg_state")}
    log = [(int(i), int(t), b) for i, t, b in
           conn.execute("SELECT id, now_ms, blob FROM agg_log ORDER BY id")]
    return states, log


def _roll_journal(store: Store, max_rows: int, max_bytes: int, stage: RollStage | None,
                  now: int) -> list[int]:
    conn = store.conn
    made = []
    for kind in KINDS:
        after = 0
        while True:
            ids: list[int] = []
            blobs: list[bytes] = []
            rows = size = 0
            for jid, n, blob in conn.execute(
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
            cols = unpack_journal(kind, blobs)
            parts: list[tuple[Columns, bool, bytes | None]] = [(cols, False, None)]
            logged = None
            if stage is not None and kind == "metrics":
                parts, logged = stage.split(cols, now)
            segs = [(part, flag, blob or encode_segment(part))
                    for part, flag, blob in parts if len(part)]
            with store.tx():
                for part, flag, seg in segs:
                    made.append(store.insert_segment(kind, part, seg, summarised=flag))
                if logged is not None:
                    conn.execute("INSERT INTO agg_log(now_ms, n, blob) VALUES (?,?,?)",
                                 (now, len(cols), logged))
                    store.bump("aggregation_log_bytes", len(logged))
                conn.execute("DELETE FROM journal WHERE kind=? AND id<=?", (kind, ids[-1]))
            after = ids[-1]
    return made


def _finish_stage(store: Store, stage: RollStage, now: int, force: bool, max_rows: int
                  ) -> list[int]:
    res = stage.finish(now, force)
    if res is None:
        return []
    made: list[int] = []
    with store.tx():
        if res.rollup_keys:
            made += _store_rollups(store, res, max_rows)
        if res.states:
            _checkpoint(store.conn, res, now)
            store.bump("aggregation_checkpoint_bytes",
                       sum(len(blob) for _, blob in res.states.values()))
    store.compact_before_ms = res.compact_before_ms
    return made


def _store_rollups(store: Store, res: StageOutput, max_rows: int) -> list[int]:
    """The closed windows' output rows as ``rollups`` segments; their series get ids here, and
    the definitions of new ones commit in the same transaction."""
    sids, defs = store.series.ids_durable(list(res.rollup_keys))
    store.define_series(defs)
    cols = Columns("rollups", np.asarray(sids, np.int64), np.asarray(res.rollup_ts, np.int64),
                   np.asarray(res.rollup_values, np.float64))
    made = []
    for a in range(0, len(cols), max_rows):
        part = Columns("rollups", cols.series[a:a + max_rows], cols.ts[a:a + max_rows],
                       None if cols.values is None else cols.values[a:a + max_rows])
        made.append(store.insert_segment("rollups", part, encode_segment(part)))
    store.bump("rollups_made", len(cols))
    return made


def _checkpoint(conn: sqlite3.Connection, res: StageOutput, now: int) -> None:
    """Save the rules' states, forget removed rules, and the replay log every current rule's
    checkpoint includes."""
    assert res.states is not None
    (log_id,) = conn.execute("SELECT coalesce(max(id), 0) FROM agg_log").fetchone()
    conn.executemany(
        "INSERT OR REPLACE INTO agg_state(fingerprint, name, saved_ms, log_id, blob) "
        "VALUES (?,?,?,?,?)",
        [(fp, name, now, log_id, blob) for fp, (name, blob) in res.states.items()])
    marks = ",".join("?" * len(res.rules))
    conn.execute(f"DELETE FROM agg_state WHERE fingerprint NOT IN ({marks})", sorted(res.rules))
    (saved, low) = conn.execute(
        "SELECT count(*), coalesce(min(log_id), 0) FROM agg_state").fetchone()
    if saved == len(res.rules):
        conn.execute("DELETE FROM agg_log WHERE id<=?", (low,))
