"""The node registry, node keys and audit log of the embedded SQLite store (blocking functions
on its connection; :class:`~central.sinks.sqlite.SQLiteStore` runs them on its thread).

Keys live in ``node_keys`` (one row per key hash: current, next or previous; see
:mod:`central.keys`); a store made before keys rotated (``nodes.key_hash``) is converted on
open. ``audit_log`` refuses updates and deletes (triggers).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Sequence

from ..audit import AuditEntry
from ..errors import RegistryError
from ..keys import KeyRow
from ..model import NodeInfo
from .base import hash_key, new_api_key

SCHEMA = """
CREATE TABLE IF NOT EXISTS node_keys (
    key_hash TEXT PRIMARY KEY, node_id TEXT NOT NULL, state TEXT NOT NULL
        CHECK (state IN ('current', 'next', 'previous')),
    created_ms INTEGER NOT NULL, expires_ms INTEGER, until_ms INTEGER) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS node_keys_one_current ON node_keys (node_id)
    WHERE state = 'current';
CREATE UNIQUE INDEX IF NOT EXISTS node_keys_one_next ON node_keys (node_id)
    WHERE state = 'next';
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, action TEXT NOT NULL,
    actor TEXT NOT NULL, org TEXT NOT NULL DEFAULT '', node_id TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '', detail TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at_ms);
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
"""

NODES = """CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY, org TEXT NOT NULL, created_ms INTEGER NOT NULL,
    revoked_ms INTEGER, last_seen_ms INTEGER, site TEXT NOT NULL DEFAULT '')"""


def migrate(conn: sqlite3.Connection) -> None:
    """Create the registry tables; move the keys of an older store into ``node_keys``."""
    conn.executescript(SCHEMA)
    cols = {r[1] for r in conn.execute("PRAGMA table_info(nodes)")}
    if not cols:
        conn.execute(NODES)
        return
    if "site" not in cols:
        conn.execute("ALTER TABLE nodes ADD COLUMN site TEXT NOT NULL DEFAULT ''")
    if "key_hash" in cols:  # one transaction: the copy, the new table and the rename
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT OR IGNORE INTO node_keys (key_hash, node_id, state, created_ms)"
                         " SELECT key_hash, node_id, 'current', created_ms FROM nodes")
            conn.execute(NODES.replace("EXISTS nodes", "EXISTS nodes_v2"))
            conn.execute("INSERT INTO nodes_v2 (node_id, org, created_ms, revoked_ms, "
                         "last_seen_ms, site) SELECT node_id, org, created_ms, revoked_ms, "
                         "last_seen_ms, site FROM nodes")
            conn.execute("DROP TABLE nodes")
            conn.execute("ALTER TABLE nodes_v2 RENAME TO nodes")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _audit(conn: sqlite3.Connection, entries: Sequence[AuditEntry]) -> None:
    conn.executemany(
        "INSERT INTO audit_log (at_ms, action, actor, org, node_id, source, detail) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(e.at_ms, e.action, e.actor, e.org, e.node_id, e.source,
          json.dumps(e.detail, sort_keys=True)) for e in entries])


class _Tx:
    """``with _Tx(conn):`` one write transaction (the connection is in autocommit mode)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind: object, *_: object) -> None:
        self.conn.execute("ROLLBACK" if kind is not None else "COMMIT")


def add_node(conn: sqlite3.Connection, node_id: str, org: str, site: str, now_ms: int,
             expires_ms: int | None, entry: AuditEntry) -> str:
    key = new_api_key()
    try:
        with _Tx(conn):
            conn.execute("INSERT INTO nodes (node_id, org, created_ms, site) "
                         "VALUES (?, ?, ?, ?)", (node_id, org, now_ms, site))
            conn.execute("INSERT INTO node_keys (key_hash, node_id, state, created_ms, "
                         "expires_ms) VALUES (?, ?, 'current', ?, ?)",
                         (hash_key(key), node_id, now_ms, expires_ms))
            _audit(conn, [entry])
    except sqlite3.IntegrityError:
        raise RegistryError(f"node {node_id!r} already exists (give it a new key with "
                            "'nodes rotate', or revoke it)") from None
    return key


def rotate_key(conn: sqlite3.Connection, node_id: str, now_ms: int,
               grace_until_ms: int | None, expires_ms: int | None, entry: AuditEntry) -> str:
    """A new current key; the old one stays until ``grace_until_ms`` (``None``: dropped)."""
    key = new_api_key()
    with _Tx(conn):
        org = conn.execute("UPDATE nodes SET revoked_ms = NULL WHERE node_id = ? RETURNING org",
                           (node_id,)).fetchone()
        if org is None:
            raise RegistryError(f"node {node_id!r} is not registered")
        conn.execute("DELETE FROM node_keys WHERE node_id = ? AND (state = 'next' OR "
                     "(state = 'previous' AND until_ms <= ?))", (node_id, now_ms))
        if grace_until_ms is None:
            conn.execute("DELETE FROM node_keys WHERE node_id = ?", (node_id,))
        else:
            conn.execute("UPDATE node_keys SET state = 'previous', until_ms = ? "
                         "WHERE node_id = ? AND state = 'current'", (grace_until_ms, node_id))
        conn.execute("INSERT INTO node_keys (key_hash, node_id, state, created_ms, expires_ms)"
                     " VALUES (?, ?, 'current', ?, ?)",
                     (hash_key(key), node_id, now_ms, expires_ms))
        _audit(conn, [dataclasses.replace(entry, org=org[0])])
    return key


def revoke_node(conn: sqlite3.Connection, node_id: str, now_ms: int, entry: AuditEntry) -> None:
    with _Tx(conn):
        org = conn.execute("UPDATE nodes SET revoked_ms = ? WHERE node_id = ? AND "
                           "revoked_ms IS NULL RETURNING org", (now_ms, node_id)).fetchone()
        if org is None:
            raise RegistryError(f"node {node_id!r} is not registered or already revoked")
        _audit(conn, [dataclasses.replace(entry, org=org[0])])


LIST = """SELECT n.node_id, n.org, n.site, n.created_ms, n.revoked_ms, n.last_seen_ms,
    c.created_ms, c.expires_ms,
    (SELECT x.created_ms FROM node_keys x WHERE x.node_id = n.node_id AND x.state = 'next'),
    (SELECT max(p.until_ms) FROM node_keys p WHERE p.node_id = n.node_id
        AND p.state = 'previous')
    FROM nodes n LEFT JOIN node_keys c ON c.node_id = n.node_id AND c.state = 'current'
    ORDER BY n.node_id"""
LIST_COLUMNS = ("node_id", "org", "site", "created_ms", "revoked_ms", "last_seen_ms",
                "key_created_ms", "key_expires_ms", "next_key_offered_ms",
                "previous_key_until_ms")


def list_nodes(conn: sqlite3.Connection) -> list[dict[str, object]]:
    return [dict(zip(LIST_COLUMNS, r, strict=True)) for r in conn.execute(LIST)]


def lookup_key(conn: sqlite3.Connection, key_hash: str) -> KeyRow | None:
    row = conn.execute(
        "SELECT n.node_id, n.org, n.created_ms, n.revoked_ms, n.site, k.state, k.created_ms, "
        "k.expires_ms, k.until_ms, x.created_ms, x.key_hash FROM node_keys k JOIN nodes n "
        "ON n.node_id = k.node_id LEFT JOIN node_keys x ON x.node_id = k.node_id AND "
        "x.state = 'next' WHERE k.key_hash = ?", (key_hash,)).fetchone()
    if row is None:
        return None
    node = NodeInfo(node_id=row[0], org=row[1], created_ms=row[2], revoked_ms=row[3],
                    site=row[4])
    return KeyRow(node=node, state=row[5], created_ms=row[6], expires_ms=row[7],
                  until_ms=row[8], next_offered_ms=row[9], next_hash=row[10])


def promote_key(conn: sqlite3.Connection, node_id: str, key_hash: str, now_ms: int,
                grace_until_ms: int, expires_ms: int | None, entry: AuditEntry) -> bool:
    """Make the next key ``key_hash`` current (False: it is not the next key any more)."""
    with _Tx(conn):
        state = conn.execute("SELECT state FROM node_keys WHERE key_hash = ? AND node_id = ?",
                             (key_hash, node_id)).fetchone()
        if state is None or state[0] != "next":
            return False
        conn.execute("DELETE FROM node_keys WHERE node_id = ? AND state = 'previous' AND "
                     "until_ms <= ?", (node_id, now_ms))
        conn.execute("UPDATE node_keys SET state = 'previous', until_ms = ? "
                     "WHERE node_id = ? AND state = 'current'", (grace_until_ms, node_id))
        conn.execute("UPDATE node_keys SET state = 'current', created_ms = ?, expires_ms = ? "
                     "WHERE key_hash = ?", (now_ms, expires_ms, key_hash))
        _audit(conn, [entry])
    return True


def offer_key(conn: sqlite3.Connection, node_id: str, key_hash: str, now_ms: int,
              expires_ms: int | None, entry: AuditEntry) -> None:
    with _Tx(conn):
        conn.execute("DELETE FROM node_keys WHERE node_id = ? AND state = 'next'", (node_id,))
        conn.execute("INSERT INTO node_keys (key_hash, node_id, state, created_ms, expires_ms)"
                     " VALUES (?, ?, 'next', ?, ?)", (key_hash, node_id, now_ms, expires_ms))
        _audit(conn, [entry])


def write_audit(conn: sqlite3.Connection, entries: Sequence[AuditEntry]) -> None:
    with _Tx(conn):
        _audit(conn, entries)


def read_audit(conn: sqlite3.Connection, since_ms: int, node_id: str, limit: int
               ) -> list[AuditEntry]:
    rows = conn.execute(
        "SELECT at_ms, action, actor, org, node_id, source, detail FROM audit_log "
        "WHERE at_ms >= ? AND (? = '' OR node_id = ?) ORDER BY id DESC LIMIT ?",
        (since_ms, node_id, node_id, limit)).fetchall()
    return [AuditEntry(at_ms=r[0], action=r[1], actor=r[2], org=r[3], node_id=r[4],
                       source=r[5], detail=json.loads(r[6])) for r in reversed(rows)]


def delete_device(conn: sqlite3.Connection, org: str, device: str) -> dict[str, int]:
    """Every row of ``device`` of ``org``: registry, heartbeats, samples, rollups, log lines,
    alert events and its series definitions, in one transaction; counts per table."""
    counts: dict[str, int] = {}
    with _Tx(conn):
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS doomed (node_id TEXT, epoch TEXT, "
                     "sid INTEGER, PRIMARY KEY (node_id, epoch, sid)) WITHOUT ROWID")
        conn.execute("DELETE FROM doomed")
        conn.execute("INSERT INTO doomed SELECT s.node_id, s.epoch, s.sid FROM series s JOIN "
                     "nodes n ON n.node_id = s.node_id WHERE n.org = ? AND "
                     "json_extract(s.labels, '$.device') = ?", (org, device))
        for table in ("samples", "rollups", "logs", "series"):
            counts[table] = conn.execute(
                f"DELETE FROM {table} WHERE (node_id, epoch, sid) IN "
                "(SELECT node_id, epoch, sid FROM doomed)").rowcount
        nodes = "(SELECT node_id FROM nodes WHERE org = ?)"
        counts["heartbeats"] = conn.execute(
            f"DELETE FROM heartbeats WHERE device = ? AND node_id IN {nodes}",
            (device, org)).rowcount
        counts["alert_events"] = conn.execute(
            f"DELETE FROM alert_events WHERE device = ? AND node_id IN {nodes}",
            (device, org)).rowcount
        counts["devices"] = conn.execute("DELETE FROM devices WHERE org = ? AND device = ?",
                                         (org, device)).rowcount
        conn.execute("DELETE FROM doomed")
    return counts
