"""The node registry in PostgreSQL: organisations, nodes and their hashed keys.

Each function takes ``run``, the store's way to run a coroutine function on a connection (the
pool while central serves, a one-off connection for a CLI command), so the registry works in
both without knowing which.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import asyncpg

from ...errors import RegistryError
from ...model import NodeInfo
from ..base import hash_key, new_api_key

T = TypeVar("T")


class OnConnection(Protocol):
    """Runs ``fn(conn)`` on some connection and returns its result."""

    async def __call__(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...


async def insert_node(run: OnConnection, node_id: str, org: str, site: str, now_ms: int) -> str:
    """Register ``node_id`` (and its organisation) and return its new API key."""
    key = new_api_key()

    async def add(conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("INSERT INTO organisations(org) VALUES ($1) "
                               "ON CONFLICT DO NOTHING", org)
            await conn.execute("INSERT INTO nodes(node_id, org, site, key_hash, created_ms) "
                               "VALUES ($1, $2, $3, $4, $5)", node_id, org, site,
                               hash_key(key), now_ms)

    try:
        await run(add)
    except asyncpg.UniqueViolationError:
        raise RegistryError(f"node {node_id!r} already exists (revoke it first, or use "
                            "'nodes rotate')") from None
    return key


async def update_key(run: OnConnection, node_id: str) -> str:
    key = new_api_key()
    status = await run(lambda c: c.execute(
        "UPDATE nodes SET key_hash = $1, revoked_ms = NULL WHERE node_id = $2",
        hash_key(key), node_id))
    if status.endswith(" 0"):
        raise RegistryError(f"node {node_id!r} is not registered")
    return key


async def mark_revoked(run: OnConnection, node_id: str, now_ms: int) -> None:
    status = await run(lambda c: c.execute(
        "UPDATE nodes SET revoked_ms = $1 WHERE node_id = $2 AND revoked_ms IS NULL",
        now_ms, node_id))
    if status.endswith(" 0"):
        raise RegistryError(f"node {node_id!r} is not registered or already revoked")


async def select_nodes(run: OnConnection) -> list[dict[str, object]]:
    rows = await run(lambda c: c.fetch(
        "SELECT node_id, org, site, created_ms, revoked_ms, last_seen_ms FROM nodes "
        "ORDER BY node_id"))
    return [dict(r) for r in rows]


async def select_by_key(run: OnConnection, key: str) -> NodeInfo | None:
    """The node ``key`` belongs to; ``None`` for an unknown or revoked key."""
    row = await run(lambda c: c.fetchrow(
        "SELECT node_id, org, site, created_ms, revoked_ms FROM nodes WHERE key_hash = $1",
        hash_key(key)))
    if row is None or row["revoked_ms"] is not None:
        return None
    return NodeInfo(node_id=row["node_id"], org=row["org"], created_ms=row["created_ms"],
                    site=row["site"])
