"""The alert service's SQLite file, ``alerts.sqlite3``: every SQL statement of local alerting.

Tables:

- ``state``: one row, the rule engine's alert states and the notification groups' timers
  (JSON), saved with every evaluation;
- ``recent``: one row, the snapshot of the rules' recent samples (:func:`pack_recent`), so
  rules over ranges work right after a restart;
- ``devices``: every known device's site and last-seen time (what ``DeviceOffline`` reads);
- ``outbox``: the notifications queued per hook, unique by dedup key, kept
  ``DELIVERED_RETENTION_MS`` after delivery (the durable queue the delivery loops send from).

:class:`AlertDB` is blocking: the service calls it through its runner, one call at a time.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgpack
import zstandard

from .store import RecentStore

log = logging.getLogger("fleet_edge.alerts")

DELIVERED_RETENTION_MS = 7 * 86_400_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY CHECK (id = 1), saved_ms INTEGER NOT NULL,
    doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS recent (id INTEGER PRIMARY KEY CHECK (id = 1),
    saved_ms INTEGER NOT NULL, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS devices (device TEXT PRIMARY KEY, site TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, hook TEXT NOT NULL, dedup TEXT NOT NULL UNIQUE,
    group_key TEXT NOT NULL, status TEXT NOT NULL, payload TEXT NOT NULL,
    created_ms INTEGER NOT NULL, next_ms INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    delivered_ms INTEGER, last_error TEXT, last_result TEXT);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(hook, delivered_ms, next_ms);
"""


class AlertDB:
    """Blocking access to ``alerts.sqlite3`` (one call at a time, from a worker thread)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                    timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(_SCHEMA)
        self.snapshot_ms = 0  # when the recent samples were last snapshotted (set by load)

    def close(self) -> None:
        self.conn.close()

    def load(self) -> tuple[dict[str, Any], bytes | None, dict[str, tuple[str, int]]]:
        row = self.conn.execute("SELECT doc FROM state WHERE id=1").fetchone()
        state = json.loads(row[0]) if row else {}
        snap = self.conn.execute("SELECT blob, saved_ms FROM recent WHERE id=1").fetchone()
        devices = {d: (s, int(t)) for d, s, t in
                   self.conn.execute("SELECT device, site, last_seen_ms FROM devices")}
        self.snapshot_ms = int(snap[1]) if snap else 0
        return state, snap[0] if snap else None, devices

    def commit(self, now_ms: int, state: dict[str, Any],
               notifications: Iterable[tuple[str, str, str, str, str]],
               devices: dict[str, tuple[str, int]] | None = None) -> int:
        """Save the alert state, the devices seen since the last commit, and queue
        notifications (hook, dedup, group, status, payload), in one transaction; returns how
        many notifications were new."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("INSERT OR REPLACE INTO state(id, saved_ms, doc) VALUES (1, ?, ?)",
                      (now_ms, json.dumps(state)))
            if devices:
                _upsert_devices(c, devices)
            before = c.total_changes
            c.executemany(
                "INSERT OR IGNORE INTO outbox(hook, dedup, group_key, status, payload, "
                "created_ms, next_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(*n, now_ms, now_ms) for n in notifications])
            queued = c.total_changes - before
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:  # SQLite may have rolled back itself (e.g. disk full)
                c.execute("ROLLBACK")
            raise
        return queued

    def save_recent(self, now_ms: int, blob: bytes,
                    devices: dict[str, tuple[str, int]]) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("INSERT OR REPLACE INTO recent(id, saved_ms, blob) VALUES (1, ?, ?)",
                      (now_ms, blob))
            _upsert_devices(c, devices)
            c.execute("DELETE FROM outbox WHERE delivered_ms IS NOT NULL AND delivered_ms < ?",
                      (now_ms - DELIVERED_RETENTION_MS,))
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:  # SQLite may have rolled back itself (e.g. disk full)
                c.execute("ROLLBACK")
            raise

    def due(self, hook: str, now_ms: int, limit: int = 20) -> list[tuple[int, str, int]]:
        """The hook's oldest undelivered notifications that are due, in order: a notification
        waiting for a retry holds back the ones queued after it (a receiver never sees a
        resolution before the alert)."""
        out = []
        for i, p, a, nxt in self.conn.execute(
                "SELECT id, payload, attempts, next_ms FROM outbox WHERE hook=? AND "
                "delivered_ms IS NULL ORDER BY id LIMIT ?", (hook, limit)):
            if nxt > now_ms:
                break
            out.append((int(i), p, int(a)))
        return out

    def next_due_ms(self, hook: str) -> int | None:
        row = self.conn.execute("SELECT next_ms FROM outbox WHERE hook=? AND delivered_ms IS "
                                "NULL ORDER BY id LIMIT 1", (hook,)).fetchone()
        return None if row is None else int(row[0])

    def delivered(self, row_id: int, now_ms: int, result: str) -> None:
        self.conn.execute("UPDATE outbox SET delivered_ms=?, attempts=attempts+1, last_result=? "
                          "WHERE id=?", (now_ms, result[:2000], row_id))

    def failed(self, row_id: int, next_ms: int, error: str) -> None:
        self.conn.execute("UPDATE outbox SET attempts=attempts+1, next_ms=?, last_error=? "
                          "WHERE id=?", (next_ms, error[:2000], row_id))

    def forget_device(self, device: str) -> None:
        self.conn.execute("DELETE FROM devices WHERE device = ?", (device,))

    def outbox(self, limit: int = 100) -> list[dict[str, Any]]:
        cols = ("id", "hook", "status", "group_key", "created_ms", "attempts", "delivered_ms",
                "last_error", "last_result")
        return [dict(zip(cols, r, strict=True)) for r in self.conn.execute(
            f"SELECT {', '.join(cols)} FROM outbox ORDER BY id DESC LIMIT ?", (limit,))]


def _upsert_devices(c: sqlite3.Connection, devices: dict[str, tuple[str, int]]) -> None:
    c.executemany("INSERT INTO devices(device, site, last_seen_ms) VALUES (?, ?, ?) "
                  "ON CONFLICT(device) DO UPDATE SET site=excluded.site, "
                  "last_seen_ms=max(last_seen_ms, excluded.last_seen_ms)",
                  [(d, s, t) for d, (s, t) in devices.items()])



def pack_recent(store: RecentStore) -> bytes:
    """The recent samples of ``store`` as one snapshot blob (msgpack, zstd level 3)."""
    doc = [[[x for kv in s.labels for x in kv], s.ts, s.vals]
           for s in store.series.values()]
    return zstandard.compress(msgpack.packb(doc), 3)


def load_recent(store: RecentStore, blob: bytes) -> None:
    """Add the samples of a :func:`pack_recent` snapshot to ``store``; an unreadable snapshot
    is logged and leaves the store as it was."""
    try:
        doc = msgpack.unpackb(zstandard.decompress(blob), raw=False)
    except (ValueError, zstandard.ZstdError) as exc:
        log.error("the recent-samples snapshot is unreadable (%s); starting empty", exc)
        return
    for flat, ts, vals in doc:
        key = tuple(zip(flat[0::2], flat[1::2], strict=True))
        for t, v in zip(ts, vals, strict=True):
            store.add(key, t, v)
