"""The node registry in PostgreSQL: organisations, nodes, their hashed keys (``node_keys``, see
:mod:`central.keys`) and the append-only ``audit_log``.

Each function takes ``run``, the store's way to run a coroutine function on a connection (the
pool while central serves, a one-off connection for a CLI command), so the registry works in
both without knowing which. Every change is one transaction with its audit row.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import asyncpg

from ...audit import AuditEntry
from ...errors import RegistryError
from ...keys import KeyRow
from ...model import NodeInfo
from ..base import hash_key, new_api_key

T = TypeVar("T")


class OnConnection(Protocol):
    """Runs ``fn(conn)`` on some connection and returns its result."""

    async def __call__(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...


INSERT_AUDIT = ("INSERT INTO audit_log (at_ms, action, actor, org, node_id, source, detail) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)")


def _audit_args(e: AuditEntry) -> tuple[object, ...]:
    return (e.at_ms, e.action, e.actor, e.org, e.node_id, e.source,
            json.dumps(e.detail, sort_keys=True))


async def _audit(conn: asyncpg.Connection, entries: Sequence[AuditEntry]) -> None:
    await conn.executemany(INSERT_AUDIT, [_audit_args(e) for e in entries])


async def insert_node(run: OnConnection, node_id: str, org: str, site: str, now_ms: int,
                      expires_ms: int | None, entry: AuditEntry) -> str:
    """Register ``node_id`` (and its organisation) and return its new API key."""
    key = new_api_key()

    async def add(conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("INSERT INTO organisations(org) VALUES ($1) "
                               "ON CONFLICT DO NOTHING", org)
            await conn.execute("INSERT INTO nodes(node_id, org, site, created_ms) "
                               "VALUES ($1, $2, $3, $4)", node_id, org, site, now_ms)
            await conn.execute("INSERT INTO node_keys (key_hash, node_id, state, created_ms, "
                               "expires_ms) VALUES ($1, $2, 'current', $3, $4)",
                               hash_key(key), node_id, now_ms, expires_ms)
            await _audit(conn, [entry])

    try:
        await run(add)
    except asyncpg.UniqueViolationError:
        raise RegistryError(f"node {node_id!r} already exists (give it a new key with "
                            "'nodes rotate', or revoke it)") from None
    return key


async def rotate_key(run: OnConnection, node_id: str, now_ms: int, grace_until_ms: int | None,
                     expires_ms: int | None, entry: AuditEntry) -> str:
    """A new current key; the old one stays until ``grace_until_ms`` (``None``: dropped)."""
    key = new_api_key()

    async def rotate(conn: asyncpg.Connection) -> bool:
        async with conn.transaction():
            org = await conn.fetchval("UPDATE nodes SET revoked_ms = NULL WHERE node_id = $1 "
                                      "RETURNING org", node_id)
            if org is None:
                return False
            await conn.execute("DELETE FROM node_keys WHERE node_id = $1 AND (state = 'next' "
                               "OR (state = 'previous' AND until_ms <= $2))", node_id, now_ms)
            if grace_until_ms is None:
                await conn.execute("DELETE FROM node_keys WHERE node_id = $1", node_id)
            else:
                await conn.execute("UPDATE node_keys SET state = 'previous', until_ms = $1 "
                                   "WHERE node_id = $2 AND state = 'current'",
                                   grace_until_ms, node_id)
            await conn.execute("INSERT INTO node_keys (key_hash, node_id, state, created_ms, "
                               "expires_ms) VALUES ($1, $2, 'current', $3, $4)",
                               hash_key(key), node_id, now_ms, expires_ms)
            await _audit(conn, [dataclasses.replace(entry, org=org)])
            return True

    if not await run(rotate):
        raise RegistryError(f"node {node_id!r} is not registered")
    return key


async def mark_revoked(run: OnConnection, node_id: str, now_ms: int, entry: AuditEntry) -> None:
    async def revoke(conn: asyncpg.Connection) -> bool:
        async with conn.transaction():
            org = await conn.fetchval("UPDATE nodes SET revoked_ms = $1 WHERE node_id = $2 "
                                      "AND revoked_ms IS NULL RETURNING org", now_ms, node_id)
            if org is None:
                return False
            await _audit(conn, [dataclasses.replace(entry, org=org)])
            return True

    if not await run(revoke):
        raise RegistryError(f"node {node_id!r} is not registered or already revoked")


async def select_nodes(run: OnConnection) -> list[dict[str, object]]:
    rows = await run(lambda c: c.fetch(
        "SELECT n.node_id, n.org, n.site, n.created_ms, n.revoked_ms, n.last_seen_ms, "
        "c.created_ms AS key_created_ms, c.expires_ms AS key_expires_ms, "
        "(SELECT x.created_ms FROM node_keys x WHERE x.node_id = n.node_id AND "
        "x.state = 'next') AS next_key_offered_ms, "
        "(SELECT max(p.until_ms) FROM node_keys p WHERE p.node_id = n.node_id AND "
        "p.state = 'previous') AS previous_key_until_ms "
        "FROM nodes n LEFT JOIN node_keys c ON c.node_id = n.node_id AND c.state = 'current' "
        "ORDER BY n.node_id"))
    return [dict(r) for r in rows]


async def select_key(run: OnConnection, key_hash: str) -> KeyRow | None:
    row = await run(lambda c: c.fetchrow(
        "SELECT n.node_id, n.org, n.created_ms AS node_created_ms, n.revoked_ms, n.site, "
        "k.state, k.created_ms, k.expires_ms, k.until_ms, x.created_ms AS next_offered_ms, "
        "x.key_hash AS next_hash FROM node_keys k JOIN nodes n ON n.node_id = k.node_id "
        "LEFT JOIN node_keys x ON x.node_id = k.node_id AND x.state = 'next' "
        "WHERE k.key_hash = $1",
        key_hash))
    if row is None:
        return None
    node = NodeInfo(node_id=row["node_id"], org=row["org"], created_ms=row["node_created_ms"],
                    revoked_ms=row["revoked_ms"], site=row["site"])
    return KeyRow(node=node, state=row["state"], created_ms=row["created_ms"],
                  expires_ms=row["expires_ms"], until_ms=row["until_ms"],
                  next_offered_ms=row["next_offered_ms"], next_hash=row["next_hash"])


async def promote(run: OnConnection, node_id: str, key_hash: str, now_ms: int,
                  grace_until_ms: int, expires_ms: int | None, entry: AuditEntry) -> bool:
    """Make the next key ``key_hash`` current; False when another request (or instance) did
    it first (its row lock serialises the two)."""
    async def swap(conn: asyncpg.Connection) -> bool:
        async with conn.transaction():
            state = await conn.fetchval("SELECT state FROM node_keys WHERE key_hash = $1 AND "
                                        "node_id = $2 FOR UPDATE", key_hash, node_id)
            if state != "next":
                return False
            await conn.execute("DELETE FROM node_keys WHERE node_id = $1 AND "
                               "state = 'previous' AND until_ms <= $2", node_id, now_ms)
            await conn.execute("UPDATE node_keys SET state = 'previous', until_ms = $1 "
                               "WHERE node_id = $2 AND state = 'current'",
                               grace_until_ms, node_id)
            await conn.execute("UPDATE node_keys SET state = 'current', created_ms = $1, "
                               "expires_ms = $2 WHERE key_hash = $3",
                               now_ms, expires_ms, key_hash)
            await _audit(conn, [entry])
            return True

    return await run(swap)


async def offer(run: OnConnection, node_id: str, key_hash: str, now_ms: int,
                expires_ms: int | None, entry: AuditEntry) -> None:
    async def put(conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("DELETE FROM node_keys WHERE node_id = $1 AND state = 'next'",
                               node_id)
            await conn.execute("INSERT INTO node_keys (key_hash, node_id, state, created_ms, "
                               "expires_ms) VALUES ($1, $2, 'next', $3, $4)",
                               key_hash, node_id, now_ms, expires_ms)
            await _audit(conn, [entry])

    await run(put)


async def write_audit(run: OnConnection, entries: Sequence[AuditEntry]) -> None:
    async def put(conn: asyncpg.Connection) -> None:
        await _audit(conn, entries)

    await run(put)


async def read_audit(run: OnConnection, since_ms: int, node_id: str, limit: int
                     ) -> list[AuditEntry]:
    rows = await run(lambda c: c.fetch(
        "SELECT at_ms, action, actor, org, node_id, source, detail::text AS detail "
        "FROM audit_log WHERE at_ms >= $1 AND ($2 = '' OR node_id = $2) "
        "ORDER BY id DESC LIMIT $3", since_ms, node_id, limit))
    return [AuditEntry(at_ms=r["at_ms"], action=r["action"], actor=r["actor"], org=r["org"],
                       node_id=r["node_id"], source=r["source"],
                       detail=json.loads(r["detail"])) for r in reversed(rows)]


async def delete_device(run: OnConnection, org: str, device: str) -> dict[str, int]:
    """Every row of ``device`` of ``org``: registry, status history, samples and log lines kept
    here, alert events and its series definitions, in one transaction; counts per table."""
    def n(status: str) -> int:
        return int(status.rsplit(" ", 1)[-1])

    async def delete(conn: asyncpg.Connection) -> dict[str, int]:
        out: dict[str, int] = {}
        async with conn.transaction():
            for table in ("samples", "logs"):
                out[table] = n(await conn.execute(
                    f"DELETE FROM {table} t USING series r WHERE r.org = $1 AND "
                    "r.labels ->> 'device' = $2 AND t.node_id = r.node_id AND "
                    "t.epoch = r.epoch AND t.sid = r.sid", org, device))
            out["series"] = n(await conn.execute(
                "DELETE FROM series WHERE org = $1 AND labels ->> 'device' = $2", org, device))
            for table in ("device_status", "alert_events", "devices"):
                out[table] = n(await conn.execute(
                    f"DELETE FROM {table} WHERE org = $1 AND device = $2", org, device))
        return out

    return await run(delete)
