"""The PostgreSQL layer of the per-batch lease (:mod:`central.lease`): a claimed row in
``batch_leases``, its expiry taken from the database's clock."""

from __future__ import annotations

import asyncpg


async def claim(conn: asyncpg.Connection, nid: str, epoch: str, seq: int, holder: str,
                expiry_s: float) -> bool:
    """Claim (node, epoch, seq) for ``holder``; a lease past its expiry is taken over.
    ``False`` while another holder's lease is live."""
    won = await conn.fetchval(
        "INSERT INTO batch_leases AS l (node_id, epoch, seq, holder, expires_at) "
        "VALUES ($1, $2, $3, $4, clock_timestamp() + make_interval(secs => $5)) "
        "ON CONFLICT (node_id, epoch, seq) DO UPDATE "
        "SET holder = excluded.holder, expires_at = excluded.expires_at "
        "WHERE l.expires_at < clock_timestamp() RETURNING true",
        nid, epoch, seq, holder, expiry_s)
    return bool(won)


async def renew(conn: asyncpg.Connection, nid: str, epoch: str, seq: int, holder: str,
                expiry_s: float) -> bool:
    """Push ``holder``'s lease out to ``expiry_s`` from now; ``False`` if it is no longer
    ``holder``'s (it expired and another attempt took it over)."""
    status: str = await conn.execute(
        "UPDATE batch_leases SET expires_at = clock_timestamp() + make_interval(secs => $5) "
        "WHERE node_id = $1 AND epoch = $2 AND seq = $3 AND holder = $4",
        nid, epoch, seq, holder, expiry_s)
    return status.split()[-1] != "0"


async def release(conn: asyncpg.Connection, nid: str, epoch: str, seq: int, holder: str
                  ) -> None:
    """Give the lease back (only ``holder``'s own: one taken over is not touched)."""
    await conn.execute("DELETE FROM batch_leases WHERE node_id = $1 AND epoch = $2 AND "
                       "seq = $3 AND holder = $4", nid, epoch, seq, holder)


async def drop_expired(conn: asyncpg.Connection) -> int:
    """Forget leases whose holders died without releasing them (retention maintenance)."""
    status: str = await conn.execute(
        "DELETE FROM batch_leases WHERE expires_at < clock_timestamp() - interval '1 minute'")
    return int(status.split()[-1])
