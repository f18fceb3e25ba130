"""Row-level security on every PostgreSQL table with organisation data, the samples, log lines
and alert events kept there included: a reader role (granted fleetd_reader) with
``fleetd.org`` set sees its organisation's rows only, and nothing without it."""

from __future__ import annotations

import uuid
from functools import partial
from pathlib import Path

import httpx
import trio

from central.backends import build_pipeline
from central.config import Settings
from central.server import run_central
from tests import servers
from tests.integration.test_backends import heartbeats_batch, logs_batch, metrics_batch
from tests.integration.test_deletion import alerts_batch, cli
from tests.readers import psql

TABLES = ("nodes", "series", "devices", "device_status", "samples", "logs", "alert_events",
          "audit_log")


async def test_every_table_with_organisation_data_is_isolated(pg_server: servers.Server,
                                                              tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    db = servers.create_database(pg_server, f"rls_{tag}")
    env = {"DATABASE_URL": db}  # no VictoriaMetrics or Loki: samples and logs stay here
    assert (await trio.to_thread.run_sync(cli, env, "migrate")).returncode == 0
    keys = {}
    for org in ("org-a", "org-b"):
        out = await trio.to_thread.run_sync(cli, env, "nodes", "add", f"gw-{org}", "--org", org)
        keys[org] = out.stdout.strip().splitlines()[-1]
    async with trio.open_nursery() as nursery:
        pipeline = build_pipeline(Settings.from_env(env), tmp_path / "unused")
        handle = await nursery.start(partial(run_central, pipeline, "127.0.0.1:0",
                                             graceful_s=1))
        async with httpx.AsyncClient(timeout=30) as c:
            for org, key in keys.items():
                node = f"gw-{org}"
                for body in (metrics_batch(node, 1), logs_batch(node, 2),
                             heartbeats_batch(node, 3), alerts_batch(node, 4, "d1")):
                    r = await c.post(handle.url + "/api/v1/batches", content=body,
                                     headers={"Authorization": f"Bearer {key}"})
                    assert r.status_code == 200, r.text
        handle.stop()
        nursery.cancel_scope.cancel()
    role = f"reader_{tag}"
    psql(db, f"CREATE ROLE {role} LOGIN; GRANT fleetd_reader TO {role}")
    for table in TABLES:
        everyone = psql(db, f"SELECT DISTINCT org FROM {table} WHERE org <> '' ORDER BY org")
        assert everyone == [["org-a"], ["org-b"]], table  # there is data of both
        for org in ("org-a", "org-b"):
            seen = psql(db, f"SELECT DISTINCT org FROM {table}", user=role, org=org)
            assert seen == [[org]], (table, org, seen)
        assert psql(db, f"SELECT count(*) FROM {table}", user=role) == [["0"]], table
    # the views resolve labels with the reader's rights too
    for view in ("samples_v", "logs_v"):
        assert psql(db, f"SELECT DISTINCT org FROM {view}", user=role, org="org-b") == [
            ["org-b"]], view
