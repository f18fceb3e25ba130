"""The PostgreSQL schema: versioned migrations, TimescaleDB or native partitioning, the version.

Migrations are ``central/migrations/postgres/NNNN_name.sql`` templates rendered for the server
(``{ts_partition}``, ``{view_options}``, ``{reader_views}``) and applied by
``fleet-central migrate``, each in its own transaction, one migrator at a time (an advisory
lock). The partitioning mode is chosen once, at the first migration, and recorded in
``fleetd_meta``: ``timescaledb`` when the extension can be created, else ``native``.
"""

from __future__ import annotations

import logging

import asyncpg

from ...migrations import load

log = logging.getLogger("fleet_central.postgres")

TIMESERIES = ("device_status", "samples", "logs")
MIGRATION_LOCK = 0x666C656574  # pg_advisory_lock key: one migrator at a time


def migrations() -> list[tuple[int, str, str]]:
    return load("postgres")


LATEST = migrations()[-1][0]


def render(template: str, *, timescale: bool, server_version: int) -> str:
    invoker = server_version >= 150000
    return (template
            .replace("{ts_partition}", "" if timescale else "PARTITION BY RANGE (ts)")
            .replace("{view_options}", "WITH (security_barrier, security_invoker)"
                     if invoker else "WITH (security_barrier)")
            .replace("{reader_views}", ", samples_v, logs_v" if invoker else ""))


async def schema_version(conn: asyncpg.Connection) -> int:
    """The newest migration applied to this database; 0 before the first."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) "
                                   "FROM schema_migrations"))


async def partitioning(conn: asyncpg.Connection) -> str | None:
    """``timescaledb`` or ``native``, as the first migration chose; ``None`` before it."""
    mode: str | None = await conn.fetchval(
        "SELECT value FROM fleetd_meta WHERE key = 'partitioning'")
    return mode


async def apply_migrations(conn: asyncpg.Connection, chunk_s: int, retention_days: int
                           ) -> list[str]:
    """Apply every missing migration, each in its own transaction; returns their names."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());"
            "CREATE TABLE IF NOT EXISTS fleetd_meta (key text PRIMARY KEY, "
            "value text NOT NULL)")
        timescale = await _setup_timescale(conn)
        server = int(await conn.fetchval("SHOW server_version_num"))
        current = await schema_version(conn)
        done = []
        for num, name, template in migrations():
            if num <= current:
                continue
            async with conn.transaction():
                await conn.execute(render(template, timescale=timescale,
                                          server_version=server))
                if timescale:
                    await _hypertables(conn, chunk_s, retention_days)
                await conn.execute("INSERT INTO schema_migrations(version, name) "
                                   "VALUES ($1, $2)", num, name)
            done.append(name)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)


async def _setup_timescale(conn: asyncpg.Connection) -> bool:
    mode = await partitioning(conn)
    if mode is None:
        mode = "native"
        if await conn.fetchval("SELECT count(*) FROM pg_available_extensions "
                               "WHERE name = 'timescaledb'"):
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                mode = "timescaledb"
            except asyncpg.PostgresError as exc:  # e.g. not in shared_preload_libraries
                log.warning("TimescaleDB is installed but cannot be enabled (%s); using "
                            "native partitioning", exc)
        await conn.execute("INSERT INTO fleetd_meta(key, value) VALUES ('partitioning', $1)",
                           mode)
    return bool(mode == "timescaledb")


async def _hypertables(conn: asyncpg.Connection, chunk_s: int, retention_days: int) -> None:
    for table in TIMESERIES:
        await conn.execute(
            f"SELECT create_hypertable('{table}', 'ts', if_not_exists => true, "
            f"chunk_time_interval => make_interval(secs => {chunk_s}))")
        if retention_days:
            await conn.execute(
                f"SELECT add_retention_policy('{table}', make_interval(days => "
                f"{retention_days}), if_not_exists => true)")
