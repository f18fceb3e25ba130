"""The audit log and node keys on both state stores: the embedded SQLite store and a private
PostgreSQL. Admin actions are recorded with who did them; the log refuses updates, deletes and
truncation; rotations on PostgreSQL are applied once when two requests race; stores made
before keys rotated keep their keys working after the upgrade; authentication failures are
coalesced."""

from __future__ import annotations

import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest
import trio
import trio_asyncio

from central.audit import Audit
from central.keys import KeyPolicy, KeyService
from central.sinks.base import hash_key
from central.sinks.postgres import PostgresStore
from central.sinks.postgres.schema import migrations, render
from central.sinks.sqlite import SQLiteStore
from tests import servers
from tests.readers import psql


def test_sqlite_audit_log_is_append_only_and_names_the_actor(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path)
    store.add_node("gw-1", "acme", "plant-7", actor="cli:ops@bastion")
    store.rotate_key("gw-1", grace_ms=60_000, actor="cli:ops@bastion")
    store.revoke_node("gw-1", actor="cli:ops@bastion")
    rows = trio.run(store.read_audit, 0, "gw-1", 100)
    assert [(e.action, e.actor, e.org, e.node_id) for e in rows] == [
        ("node.add", "cli:ops@bastion", "acme", "gw-1"),
        ("node.rotate", "cli:ops@bastion", "acme", "gw-1"),
        ("node.revoke", "cli:ops@bastion", "acme", "gw-1")]
    assert rows[0].detail["site"] == "plant-7"
    conn = sqlite3.connect(store.path)
    for sql in ("UPDATE audit_log SET actor = 'nobody'", "DELETE FROM audit_log"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)
    assert conn.execute("SELECT count(*) FROM audit_log").fetchone() == (3,)


def test_an_sqlite_store_from_before_rotation_keeps_its_keys(tmp_path: Path) -> None:
    """A central.sqlite3 of the previous release (nodes.key_hash) opens, and its keys work."""
    path = tmp_path / "central.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE nodes (node_id TEXT PRIMARY KEY, org TEXT NOT NULL, "
                 "key_hash TEXT NOT NULL UNIQUE, created_ms INTEGER NOT NULL, revoked_ms "
                 "INTEGER, last_seen_ms INTEGER, site TEXT NOT NULL DEFAULT '')")
    conn.execute("INSERT INTO nodes VALUES ('old-gw', 'acme', ?, 5, NULL, 77, 'site-a')",
                 (hash_key("fle_old_key"),))
    conn.commit()
    conn.close()
    store = SQLiteStore(tmp_path)
    node = trio.run(store.authenticate, "fle_old_key")
    assert node is not None and (node.node_id, node.org, node.site) == ("old-gw", "acme",
                                                                        "site-a")
    listed = store.list_nodes()
    assert listed[0]["last_seen_ms"] == 77 and listed[0]["key_expires_ms"] is None
    assert trio.run(store.authenticate, "fle_other") is None


def test_authentication_failures_are_coalesced_and_bounded() -> None:
    audit = Audit(None, clock=lambda: 1000.0, max_pending=3)
    for _ in range(500):
        audit.auth_failed("203.0.113.9:4000", "gw-1", "unknown", claimed=True)
    for i in range(10):
        audit.auth_failed("203.0.113.9:4000", f"probe-{i}", "unknown", claimed=True)
    rows = audit.pending()
    counts = {(e.node_id, e.action): e.detail["count"] for e in rows}
    assert counts[("gw-1", "auth.failed")] == 500
    assert counts[("", "auth.failed.overflow")] == 8  # only 3 combinations are kept apart
    assert len(rows) == 4 and audit.failures_total == 510
    assert audit.pending() == []


# -- PostgreSQL --------------------------------------------------------------------------------


@pytest.fixture
def pg_url(pg_server: servers.Server) -> str:
    return servers.create_database(pg_server, f"audit_{uuid.uuid4().hex[:10]}")


async def test_postgres_audit_log_refuses_updates_deletes_and_truncation(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    async with trio_asyncio.open_loop():
        await store.migrate()
        await store.add_node("gw-1", "acme", actor="cli:ops@bastion")
        await store.rotate_key("gw-1", grace_ms=None, actor="cli:ops@bastion")
        rows = await store.read_audit(0, "", 100)
    assert [(e.action, e.org, e.node_id) for e in rows] == [
        ("migrate", "", ""), ("node.add", "acme", "gw-1"), ("node.rotate", "acme", "gw-1")]
    assert "0004_keys_audit.sql" in rows[0].detail["applied"]
    for sql in ("UPDATE audit_log SET actor = 'nobody'", "DELETE FROM audit_log",
                "TRUNCATE audit_log"):
        with pytest.raises(subprocess.CalledProcessError) as err:
            psql(pg_url, sql)
        assert "append-only" in err.value.stderr
    assert psql(pg_url, "SELECT count(*) FROM audit_log") == [["3"]]


async def test_postgres_promotion_racing_itself_rotates_once(pg_url: str) -> None:
    now = [1_000_000.0]
    store = PostgresStore(pg_url, clock=lambda: now[0])
    policy = KeyPolicy(lifetime_ms=100_000, renew_before_ms=60_000, grace_ms=30_000)
    async with trio_asyncio.open_loop():
        await store.migrate()
        await store.open()
        try:
            first = await store.add_node("gw-1", "acme", expires_ms=int(now[0] * 1000)
                                         + 100_000)
            svc = KeyService(store, policy, Audit(store), lambda: now[0])
            now[0] += 70
            d = await svc.authenticate(first, "10.0.0.1:1", "gw-1")
            offered = await svc.offer(d, "10.0.0.1:1")
            assert offered is not None
            # both lanes of the edge send with the new key at once
            async with trio.open_nursery() as n:
                for _ in range(2):
                    n.start_soon(svc.authenticate, offered, "10.0.0.1:1", "gw-1")
            rows = await store.read_audit(0, "gw-1", 100)
            listed = await store.list_nodes()
        finally:
            await store.close()
    assert [e.action for e in rows].count("key.rotated") == 1
    assert psql(pg_url, "SELECT state, count(*) FROM node_keys GROUP BY state ORDER BY "
                        "state") == [["current", "1"], ["previous", "1"]]
    assert listed[0]["key_created_ms"] == int(now[0] * 1000)


async def test_a_postgres_schema_from_before_rotation_keeps_its_keys(pg_url: str) -> None:
    """Version 3 with a registered node, then ``migrate``: the node's key still works."""
    server = int(psql(pg_url, "SHOW server_version_num")[0][0])
    psql(pg_url, "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT "
                 "NULL, applied_at timestamptz NOT NULL DEFAULT now()); CREATE TABLE "
                 "fleetd_meta (key text PRIMARY KEY, value text NOT NULL); INSERT INTO "
                 "fleetd_meta VALUES ('partitioning', 'native')")
    for num, name, template in migrations():
        if num <= 3:
            psql(pg_url, render(template, timescale=False, server_version=server))
            psql(pg_url, f"INSERT INTO schema_migrations (version, name) VALUES ({num}, "
                         f"'{name}')")
    psql(pg_url, "INSERT INTO organisations (org) VALUES ('acme'); INSERT INTO nodes (node_id, "
                 f"org, site, key_hash, created_ms) VALUES ('old-gw', 'acme', 's1', "
                 f"'{hash_key('fle_old_key')}', 5)")
    store = PostgresStore(pg_url)
    async with trio_asyncio.open_loop():
        applied = await store.migrate()
        await store.open()
        try:
            node = await store.authenticate("fle_old_key")
        finally:
            await store.close()
    assert applied == ["0004_keys_audit.sql"]
    assert node is not None and (node.node_id, node.site) == ("old-gw", "s1")
