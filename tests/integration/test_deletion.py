"""The right to deletion against the real backends: one device's data goes from PostgreSQL,
VictoriaMetrics, Loki (3.4.6, its delete API), ClickHouse and Valkey, another device's stays;
each backend reports what it deleted; a second run deletes nothing and still succeeds; the
deletion is in the audit log. Read back with each backend's own API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import trio

from central.backends import build_pipeline
from central.config import Settings
from central.server import run_central
from central.sinks.sqlite import SQLiteStore
from edge_node.wire import Batch, Columns, encode_batch, encode_segment
from tests import servers
from tests.conftest import Backends
from tests.integration.test_backends import (
    heartbeats_batch,
    logs_batch,
    metrics_batch,
)
from tests.readers import ch_query, psql, redis_cli, vm_export


def cli(env: dict[str, str], *args: str, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "central.cli", *args], input=stdin,
                          env={**os.environ, **env}, capture_output=True, text=True,
                          check=False)


def alerts_batch(node: str, seq: int, device: str) -> bytes:
    firing = {"status": "firing", "fingerprint": f"f-{device}", "value": 1.0,
              "labels": {"alertname": "PumpHot", "device": device},
              "annotations": {}, "startsAt": "2026-11-28T10:00:00.250Z",
              "endsAt": "0001-01-01T00:00:00Z"}
    cols = Columns("alerts", np.array([21], dtype=np.int64),
                   np.array([int(time.time() * 1000)], dtype=np.int64),
                   lines=[json.dumps(firing).encode()])
    defs = [(21, {"__name__": "ALERTS", "alertname": "PumpHot", "device": device})]
    return encode_batch(Batch(node, seq, "alerts", encode_segment(cols), 1, epoch="e1",
                              series_defs=defs))


def loki_lines(url: str, org: str, device: str) -> int:
    r = httpx.get(url + "/loki/api/v1/query_range", headers={"X-Scope-OrgID": org},
                  params={"query": f'{{device="{device}"}}',
                          "start": str(time.time_ns() - 86_400 * 10**9),
                          "end": str(time.time_ns()), "limit": "1000"}, timeout=30)
    r.raise_for_status()
    return sum(len(s["values"]) for s in r.json()["data"]["result"])


async def test_a_device_is_deleted_from_every_backend_and_only_it(
        backends: Backends, loki_server: servers.Server, tmp_path: Path) -> None:
    env = backends.with_env(LOKI_URL=loki_server.url, FLEET_CENTRAL_ONLINE_TTL_S="3600",
                            FLEET_CENTRAL_LOKI_MAX_AGE_S="0")
    assert (await trio.to_thread.run_sync(cli, env, "migrate")).returncode == 0
    org, node = f"org-{backends.tag}", f"node-{backends.tag}"
    added = await trio.to_thread.run_sync(cli, env, "nodes", "add", node, "--org", org)
    key = added.stdout.strip().splitlines()[-1]
    db, vm, ch = env["DATABASE_URL"], env["VICTORIA_METRICS_URL"], env["CLICKHOUSE_URL"]
    chdb = env["CLICKHOUSE_DATABASE"]
    async with trio.open_nursery() as nursery:
        pipeline = build_pipeline(Settings.from_env(env), tmp_path / "unused")
        handle = await nursery.start(partial(run_central, pipeline, "127.0.0.1:0",
                                             graceful_s=1))
        async with httpx.AsyncClient(timeout=30) as c:
            for seq, body in enumerate((metrics_batch(node, 1), logs_batch(node, 2),
                                        heartbeats_batch(node, 3), alerts_batch(node, 4, "d1"),
                                        alerts_batch(node, 5, "d2")), start=1):
                r = await c.post(handle.url + "/api/v1/batches", content=body,
                                 headers={"Authorization": f"Bearer {key}"})
                assert r.status_code == 200, (seq, r.text)
        handle.stop()
        nursery.cancel_scope.cancel()

    def state(device: str) -> dict[str, int]:
        return {
            "vm": len(vm_export(vm, f'{{org="{org}",device="{device}"}}')),
            "pg_devices": int(psql(db, f"SELECT count(*) FROM devices WHERE device = "
                                       f"'{device}'")[0][0]),
            "pg_series": int(psql(db, f"SELECT count(*) FROM series WHERE labels ->> "
                                      f"'device' = '{device}'")[0][0]),
            "pg_alerts": int(psql(db, f"SELECT count(*) FROM alert_events WHERE device = "
                                      f"'{device}'")[0][0]),
            "ch_rollups": int(ch_query(ch, f"SELECT count() AS n FROM {chdb}.metric_rollups_1m"
                                           f" WHERE device = '{device}'")[0]["n"]),
            "ch_alerts": int(ch_query(ch, f"SELECT count() AS n FROM {chdb}.alert_history "
                                          f"WHERE device = '{device}'")[0]["n"]),
            "valkey": int(bool(redis_cli(env["VALKEY_ADDR"], "HGET", f"fleetd:{org}:last_seen",
                                         device).strip())),
        }

    before_d1 = await trio.to_thread.run_sync(state, "d1")
    before_d2 = await trio.to_thread.run_sync(state, "d2")
    assert all(before_d1.values()), before_d1  # d1 is everywhere
    assert await trio.to_thread.run_sync(loki_lines, loki_server.url, org, "d1") == 2
    assert before_d2["vm"] and before_d2["pg_alerts"] and before_d2["ch_rollups"], before_d2

    refused = await trio.to_thread.run_sync(partial(cli, env, "devices", "delete", "d1",
                                                    "--org", org, stdin=""))
    assert refused.returncode == 1 and "--yes" in refused.stderr
    done = await trio.to_thread.run_sync(cli, env, "devices", "delete", "d1", "--org", org,
                                         "--yes", "--json")
    assert done.returncode == 0, done.stderr + done.stdout
    report = {b["backend"]: b for b in json.loads(done.stdout)["backends"]}
    assert set(report) == {"postgresql", "victoria-metrics", "loki", "clickhouse", "valkey"}
    assert report["postgresql"]["deleted"]["devices"] == 1
    assert report["postgresql"]["deleted"]["alert_events"] == 1
    assert report["victoria-metrics"]["deleted"]["series"] == 1
    assert report["clickhouse"]["deleted"]["alert_history"] == 1
    assert report["valkey"]["deleted"]["keys and fields"] >= 2
    assert not any(b["error"] for b in report.values()), report

    deadline = time.monotonic() + 90  # ClickHouse mutations and Loki's deletes run behind
    after = await trio.to_thread.run_sync(state, "d1")
    while any(after.values()) and time.monotonic() < deadline:
        await trio.sleep(1)
        after = await trio.to_thread.run_sync(state, "d1")
    assert not any(after.values()), {k: v for k, v in after.items() if v}
    assert await trio.to_thread.run_sync(state, "d2") == before_d2  # the other device stays
    # Loki holds the delete request, in the organisation's tenant, for exactly this device;
    # its compactor applies it on its own schedule (the lines go then, not here)
    listed = httpx.get(loki_server.url + "/loki/api/v1/delete", timeout=10,
                       headers={"X-Scope-OrgID": org}).json()
    assert [r["query"] for r in listed] == [f'{{org="{org}",device="d1"}}']
    assert httpx.get(loki_server.url + "/loki/api/v1/delete", timeout=10,
                     headers={"X-Scope-OrgID": "someone-else"}).json() in ([], None)

    again = await trio.to_thread.run_sync(cli, env, "devices", "delete", "d1", "--org", org,
                                          "--yes", "--json")
    assert again.returncode == 0, again.stderr
    report = {b["backend"]: b for b in json.loads(again.stdout)["backends"]}
    assert not any(report["postgresql"]["deleted"].values()), report
    assert report["victoria-metrics"]["deleted"]["series"] == 0
    assert not any(report["clickhouse"]["deleted"].values())
    assert report["valkey"]["deleted"]["keys and fields"] == 0
    audit = await trio.to_thread.run_sync(cli, env, "audit", "--json")
    deletions = [json.loads(x) for x in audit.stdout.splitlines()
                 if json.loads(x)["action"] == "device.delete"]
    assert len(deletions) == 2 and deletions[0]["org"] == org
    assert deletions[0]["detail"]["device"] == "d1"


def test_the_embedded_store_deletes_a_device_too(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "c")
    key = store.add_node("gw", "acme")

    async def run() -> None:
        pipeline = build_pipeline(Settings.from_env({}), tmp_path / "c")
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(partial(run_central, pipeline, "127.0.0.1:0",
                                                 graceful_s=1))
            async with httpx.AsyncClient(timeout=30) as c:
                for body in (metrics_batch("gw", 1), logs_batch("gw", 2),
                             heartbeats_batch("gw", 3), alerts_batch("gw", 4, "d1")):
                    r = await c.post(handle.url + "/api/v1/batches", content=body,
                                     headers={"Authorization": f"Bearer {key}"})
                    assert r.status_code == 200, r.text
            handle.stop()

    trio.run(run)
    env = {"FLEET_CENTRAL_DATA_DIR": str(tmp_path / "c")}
    first = cli(env, "devices", "delete", "d1", "--org", "acme", "--yes", "--json")
    assert first.returncode == 0, first.stderr
    got = json.loads(first.stdout)["backends"][0]
    assert got["backend"] == "sqlite"
    assert {k: v for k, v in got["deleted"].items() if v} == {
        "samples": 3, "logs": 2, "series": 4, "heartbeats": 2, "alert_events": 1,
        "devices": 1}
    conn = store.open_sync()
    assert conn.execute("SELECT count(*) FROM samples_v WHERE json_extract(labels, "
                        "'$.device') = 'd2'").fetchone() == (2,)  # the other device stays
    second = cli(env, "devices", "delete", "d1", "--org", "acme", "--yes", "--json")
    assert not any(json.loads(second.stdout)["backends"][0]["deleted"].values())
    # another organisation's device of the same name is not touched
    other = cli(env, "devices", "delete", "d2", "--org", "someone-else", "--yes", "--json")
    assert not any(json.loads(other.stdout)["backends"][0]["deleted"].values())
