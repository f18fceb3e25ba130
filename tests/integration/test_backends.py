"""Central writing to the real backends: PostgreSQL, VictoriaMetrics, ClickHouse, Redis (private
instances started by the fixtures), and the Loki push-API contract receiver.

Central runs in-process; batches are posted over real HTTP; what landed is read back with each
backend's own client (psql, VictoriaMetrics' export API, ClickHouse's HTTP interface, redis-cli).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import pytest
import trio

from central.backends import build_pipeline
from central.config import Settings
from central.pipeline import Pipeline
from central.server import run_central
from edge_node.wire import BATCH_CONTENT_TYPE, Batch, Columns, encode_batch, encode_segment
from tests import servers
from tests.conftest import Backends
from tests.push_contract import PushReceiver, start_receiver
from tests.readers import ch_query, psql, redis_cli, vm_export, vm_values

NOW = int(time.time() * 1000) // 60_000 * 60_000 - 600_000  # a minute boundary, in the past


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "central.cli", *args],
                          env={**os.environ, **env}, capture_output=True, text=True, check=False)


@dataclass
class Running:
    url: str
    key: str
    node: str
    org: str
    env: dict[str, str]
    pipeline: Pipeline
    loki: PushReceiver

    async def post(self, body: bytes, key: str | None = None) -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as c:
            return await c.post(self.url + "/api/v1/batches", content=body, headers={
                "Authorization": f"Bearer {key or self.key}",
                "Content-Type": BATCH_CONTENT_TYPE})


@asynccontextmanager
async def central_on(backends: Backends, tmp_path: Path, **env: str) -> AsyncIterator[Running]:
    """Migrate, register a node (CLI, real processes), then run central in-process."""
    loki = PushReceiver()
    async with trio.open_nursery() as nursery:
        loki_url = await start_receiver(nursery, loki)
        full = backends.with_env(LOKI_URL=loki_url, **env)
        done = await trio.to_thread.run_sync(cli, full, "migrate")
        assert done.returncode == 0, done.stderr
        org, node = f"org-{backends.tag}", f"node-{backends.tag}"
        added = await trio.to_thread.run_sync(cli, full, "nodes", "add", node, "--org", org,
                                              "--site", "plant-7")
        assert added.returncode == 0, added.stderr
        key = added.stdout.strip().splitlines()[-1]
        pipeline = build_pipeline(Settings.from_env(full), tmp_path / "unused")
        handle = await nursery.start(partial(run_central, pipeline, "127.0.0.1:0",
                                             graceful_s=1))
        yield Running(handle.url, key, node, org, full, pipeline, loki)
        handle.stop()
        nursery.cancel_scope.cancel()


DEFS = [(1, {"__name__": "temp_c", "device": "d1"}),
        (2, {"__name__": "temp_c", "device": "d2", "org": "someone-else", "node": "spoof"}),
        (3, {"__name__": "app_log", "device": "d1", "level": "error", "app": "pump",
             "unit": "7"}),
        (4, {"__name__": "fleet_heartbeat", "device": "d1", "hw": "pi4"})]


def metrics_batch(node: str, seq: int, *, base: int = NOW, defs: bool = True) -> bytes:
    ts = np.array([base, base + 1000, base + 61_000, base, base + 1000], dtype=np.int64)
    cols = Columns("metrics", np.array([1, 1, 1, 2, 2], dtype=np.int64), ts,
                   np.array([20.5, 21.0, 22.0, 30.0, 31.5]))
    return encode_batch(Batch(node, seq, "metrics", encode_segment(cols), 5, epoch="e1",
                              series_defs=DEFS if defs else []))


def logs_batch(node: str, seq: int) -> bytes:
    cols = Columns("logs", np.array([3, 3], dtype=np.int64),
                   np.array([NOW, NOW + 5], dtype=np.int64),
                   lines=[b"pressure high", b"pump stopped"])
    return encode_batch(Batch(node, seq, "logs", encode_segment(cols), 2, epoch="e1",
                              series_defs=DEFS))


def heartbeats_batch(node: str, seq: int) -> bytes:
    cols = Columns("heartbeats", np.array([4, 4], dtype=np.int64),
                   np.array([NOW - 30_000, NOW], dtype=np.int64))
    return encode_batch(Batch(node, seq, "heartbeats", encode_segment(cols), 2, epoch="e1",
                              series_defs=DEFS))


def _vm(run: Running) -> list[dict[str, object]]:
    return vm_export(run.env["VICTORIA_METRICS_URL"], f'{{node="{run.node}"}}')


def _ch_raw(run: Running) -> int:
    db = run.env["CLICKHOUSE_DATABASE"]
    return int(ch_query(run.env["CLICKHOUSE_URL"],
                        f"SELECT count() AS n FROM {db}.metric_rollups_1m")[0]["n"])


def _state(run: Running) -> tuple[object, ...]:
    """Everything the backends hold for this test's node, for before/after comparisons."""
    db = run.env["DATABASE_URL"]
    return (sorted(json.dumps(s, sort_keys=True) for s in _vm(run)), _ch_raw(run),
            psql(db, "SELECT count(*) FROM device_status"),
            psql(db, "SELECT device, last_seen FROM devices ORDER BY device"),
            len(run.loki.entries))


async def test_each_kind_lands_in_its_backend_and_a_retry_changes_nothing(
        backends: Backends, tmp_path: Path) -> None:
    # the data is 10 minutes old: a one-hour online TTL keeps its devices online
    async with central_on(backends, tmp_path, FLEET_CENTRAL_ONLINE_TTL_S="3600") as run:
        for body in (metrics_batch(run.node, 1), logs_batch(run.node, 2),
                     heartbeats_batch(run.node, 3)):
            r = await run.post(body)
            assert (r.status_code, r.json()["status"]) == (200, "applied"), r.text
        before = await trio.to_thread.run_sync(_state, run)

        # VictoriaMetrics: org/node/site from the node's registration, device from the device;
        # the payload's own org/node labels are kept as exported_* and cannot spoof a tenant
        series = {s["metric"]["device"]: s for s in _vm(run)}
        assert series["d1"]["metric"] == {"__name__": "temp_c", "device": "d1", "org": run.org,
                                          "node": run.node, "site": "plant-7"}
        assert series["d1"]["values"] == [20.5, 21.0, 22.0]
        assert series["d1"]["timestamps"] == [NOW, NOW + 1000, NOW + 61_000]
        assert series["d2"]["metric"]["org"] == run.org
        assert series["d2"]["metric"]["exported_org"] == "someone-else"
        assert series["d2"]["metric"]["exported_node"] == "spoof"
        assert vm_export(run.env["VICTORIA_METRICS_URL"], '{org="someone-else"}') == []

        # PostgreSQL: device registry and heartbeat history
        db = run.env["DATABASE_URL"]
        devices = psql(db, "SELECT device, node_id, site, labels->>'hw', org FROM devices "
                           "ORDER BY device")
        assert devices == [["d1", run.node, "plant-7", "pi4", run.org],
                           ["d2", run.node, "plant-7", "", run.org]]
        assert psql(db, "SELECT count(*), min(status) FROM device_status "
                        "WHERE device = 'd1'") == [["2", "heartbeat"]]

        # ClickHouse: exact per-minute rollups
        rows = ch_query(run.env["CLICKHOUSE_URL"],
                        f"SELECT device, samples, sum, min, max, last FROM "
                        f"{run.env['CLICKHOUSE_DATABASE']}.metric_rollups_1m_v "
                        f"ORDER BY device, window_start")
        assert [(r["device"], int(r["samples"]), r["sum"], r["min"], r["max"], r["last"])
                for r in rows] == [("d1", 2, 41.5, 20.5, 21.0, 21.0), ("d1", 1, 22.0, 22.0, 22.0,
                                                                       22.0),
                                   ("d2", 2, 61.5, 30.0, 31.5, 31.5)]

        # Redis: online state and latest value per series
        assert redis_cli(run.env["VALKEY_ADDR"], "EXISTS", f"fleetd:{run.org}:online:d1") == "1"
        ttl_ms = int(redis_cli(run.env["VALKEY_ADDR"], "PTTL", f"fleetd:{run.org}:online:d1"))
        assert 0 < ttl_ms <= 3600_000 - (time.time() * 1000 - (NOW + 61_000)) + 1000
        latest = redis_cli(run.env["VALKEY_ADDR"], "HGETALL", f"fleetd:{run.org}:latest:"
                                                              f"{run.node}").splitlines()
        assert f"{NOW + 61_000} 22.0" in latest

        # Loki contract: tenant = organisation, low-cardinality stream labels, the rest metadata
        tenant, stream, ts, line, meta = run.loki.entries[0]
        assert tenant == run.org
        assert dict(stream) == {"org": run.org, "node": run.node, "site": "plant-7",
                                "device": "d1", "level": "error", "app": "pump"}
        assert (ts, line, dict(meta)) == (NOW * 1_000_000, "pressure high", {"unit": "7"})

        # every batch again: all duplicates, no backend changes
        for seq, body in ((1, metrics_batch(run.node, 1)), (2, logs_batch(run.node, 2)),
                          (3, heartbeats_batch(run.node, 3))):
            r = await run.post(body)
            assert r.status_code == 200
            assert (r.json()["status"], r.json()["seq"]) == ("duplicate", seq)
        assert await trio.to_thread.run_sync(_state, run) == before
        assert run.loki.pushes == 1
        # answered from the Valkey marks, without a PostgreSQL lookup
        assert "fleet_central_fast_dedup_hits_total 3" in run.pipeline.registry.render()


async def test_partial_success_is_not_duplicated_on_retry(
        backends: Backends, vm_dedup_server: servers.Server, tmp_path: Path) -> None:
    """VictoriaMetrics takes the batch, Loki (logs) / ClickHouse (metrics) do not: 503; the
    retry writes only to the sink that failed, and even a lost per-sink mark (a crash between
    write and mark) duplicates nothing, because each sink's write is idempotent itself
    (VictoriaMetrics with its dedup on, as the README asks: the window of a lost mark)."""
    async with central_on(backends, tmp_path, VICTORIA_METRICS_URL=vm_dedup_server.url) as run:
        run.loki.fail_next = 1
        r = await run.post(logs_batch(run.node, 1))
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        r = await run.post(logs_batch(run.node, 1))
        assert r.json()["status"] == "applied"
        assert [e[3] for e in run.loki.entries] == ["pressure high", "pump stopped"]
        # Valkey took the first attempt; the retry skipped it
        assert 'fleet_central_sink_skipped_total{sink="valkey"} 1' in \
            run.pipeline.registry.render()

        # metrics: break the ClickHouse database so only ClickHouse fails
        db, ch = run.env["CLICKHOUSE_DATABASE"], run.env["CLICKHOUSE_URL"]
        httpx.post(ch, content=f"RENAME TABLE {db}.metric_rollups_1m TO {db}.moved".encode())
        r = await run.post(metrics_batch(run.node, 2))
        assert r.status_code == 503 and "clickhouse" in r.json()["error"]
        assert len(await trio.to_thread.run_sync(vm_values, run.env["VICTORIA_METRICS_URL"],
                                                 f'{{node="{run.node}"}}')) == 5
        httpx.post(ch, content=f"RENAME TABLE {db}.moved TO {db}.metric_rollups_1m".encode())
        # forget that VictoriaMetrics took it, as if central had crashed right after the write
        await trio.to_thread.run_sync(psql, run.env["DATABASE_URL"], "DELETE FROM sink_marks")
        r = await run.post(metrics_batch(run.node, 2))
        assert r.json()["status"] == "applied"
        values = await trio.to_thread.run_sync(vm_values, run.env["VICTORIA_METRICS_URL"],
                                               f'{{node="{run.node}"}}')
        assert values == [20.5, 21.0, 22.0, 30.0, 31.5]
        # and a ClickHouse re-insert (same batch identity) collapses in the reporting view
        rows = ch_query(ch, f"SELECT sum(samples) AS n FROM {db}.metric_rollups_1m_v")
        assert int(rows[0]["n"]) == 5


@pytest.mark.parametrize("backend", sorted(servers.BACKENDS))
async def test_a_backend_down_means_503_then_exactly_once(backend: str, backends: Backends,
                                                          tmp_path: Path) -> None:
    private, url = servers.start_backend(backend)
    try:
        async with central_on(backends, tmp_path, **{servers.BACKENDS[backend][1]: url}) as run:
            assert (await run.post(metrics_batch(run.node, 1))).status_code == 200
            if backend == "victoria-metrics":
                # VictoriaMetrics acknowledges samples it holds in memory for ~1 s before they
                # reach disk; a kill -9 of the server itself loses them (its own trade-off)
                private.terminate()
            else:
                private.kill()
            r = await run.post(metrics_batch(run.node, 2, base=NOW + 120_000))
            assert r.status_code == 503, r.text
            assert r.headers["Retry-After"] == "1"
            assert backend in r.json()["error"]
            async with httpx.AsyncClient() as c:
                ready = await c.get(run.url + "/readyz")
            assert ready.status_code == 503 and ready.json()["backends"][backend] is False
            await trio.to_thread.run_sync(private.start)
            for _ in range(50):  # pools reconnect on their own schedule
                r = await run.post(metrics_batch(run.node, 2, base=NOW + 120_000))
                if r.status_code == 200:
                    break
                await trio.sleep(0.2)
            assert r.json()["status"] == "applied", r.text
            r = await run.post(metrics_batch(run.node, 2, base=NOW + 120_000))
            assert r.json()["status"] == "duplicate"
            values = await trio.to_thread.run_sync(
                vm_values, run.env["VICTORIA_METRICS_URL"], f'{{node="{run.node}"}}')
            assert len(values) == 10
            db = run.env["CLICKHOUSE_DATABASE"]
            rows = ch_query(run.env["CLICKHOUSE_URL"],
                            f"SELECT sum(samples) AS n FROM {db}.metric_rollups_1m_v")
            assert int(rows[0]["n"]) == 10
    finally:
        private.stop()


async def test_tenant_isolation_by_row_level_security(backends: Backends,
                                                      tmp_path: Path) -> None:
    async with central_on(backends, tmp_path) as run:
        other = cli(run.env, "nodes", "add", "other-node", "--org", "other-org")
        other_key = other.stdout.strip().splitlines()[-1]
        assert (await run.post(heartbeats_batch(run.node, 1))).status_code == 200
        r = await run.post(heartbeats_batch("other-node", 1), key=other_key)
        assert r.status_code == 200
        db = run.env["DATABASE_URL"]
        role = f"reader_{backends.tag}"
        psql(db, f"CREATE ROLE {role} LOGIN; GRANT fleetd_reader TO {role}")
        assert psql(db, "SELECT DISTINCT org FROM devices ORDER BY org") == [
            [run.org], ["other-org"]]  # central (the owner) sees all
        for table in ("devices", "device_status", "series", "nodes", "audit_log"):
            mine = psql(db, f"SELECT DISTINCT org FROM {table}", user=role, org=run.org)
            assert mine == [[run.org]], table
            assert psql(db, f"SELECT count(*) FROM {table}", user=role) == [["0"]], table
        with pytest.raises(subprocess.CalledProcessError):  # key hashes are not readable
            psql(db, "SELECT key_hash FROM node_keys", user=role, org=run.org)
        part = psql(db, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON "
                        "c.oid = i.inhrelid LIMIT 1")[0][0]
        with pytest.raises(subprocess.CalledProcessError):  # nor are partitions directly
            psql(db, f"SELECT * FROM {part}", user=role, org="other-org")


async def test_run_refuses_an_outdated_schema(backends: Backends) -> None:
    env = backends.with_env()
    env.pop("CLICKHOUSE_URL")
    r = await trio.to_thread.run_sync(cli, env, "run", "--listen", "127.0.0.1:0")
    assert r.returncode == 1
    assert "schema is at version 0" in r.stderr and "fleet-central migrate" in r.stderr
    m = await trio.to_thread.run_sync(cli, env, "migrate")
    assert m.returncode == 0 and "0001_initial.sql" in m.stdout
    again = await trio.to_thread.run_sync(cli, env, "migrate")
    assert "schema is up to date" in again.stdout
    # node management against PostgreSQL
    added = await trio.to_thread.run_sync(cli, env, "nodes", "add", "gw-9", "--org", "o9",
                                          "--site", "s9")
    assert added.returncode == 0 and added.stdout.strip().splitlines()[-1].startswith("fle_")
    dup = await trio.to_thread.run_sync(cli, env, "nodes", "add", "gw-9")
    assert dup.returncode == 1 and "already exists" in dup.stderr
    assert (await trio.to_thread.run_sync(cli, env, "nodes", "revoke", "gw-9")).returncode == 0
    listed = json.loads((await trio.to_thread.run_sync(cli, env, "nodes", "list", "--json")
                         ).stdout)
    assert [(n["node_id"], n["org"], n["site"], n["revoked_ms"] is not None)
            for n in listed] == [("gw-9", "o9", "s9", True)]


async def test_two_central_instances_share_the_work_and_apply_each_batch_once(
        backends: Backends, tmp_path: Path) -> None:
    """Central is stateless between requests: behind a load balancer, a batch retried against
    another instance (or sent to both at once) is applied exactly once."""
    async with central_on(backends, tmp_path) as a, trio.open_nursery() as nursery:
        other = build_pipeline(Settings.from_env(a.env), tmp_path / "unused-b")
        handle = await nursery.start(partial(run_central, other, "127.0.0.1:0", graceful_s=1))
        b = Running(handle.url, a.key, a.node, a.org, a.env, other, a.loki)
        answers: list[str] = []

        async def send(run: Running, body: bytes) -> None:
            r = await run.post(body)
            assert r.status_code == 200, r.text
            answers.append(r.json()["status"])

        for seq in range(1, 6):
            body = metrics_batch(a.node, seq, base=NOW - seq * 120_000)
            async with trio.open_nursery() as race:
                race.start_soon(send, a, body)
                race.start_soon(send, b, body)
        assert sorted(answers) == ["applied"] * 5 + ["duplicate"] * 5
        values = await trio.to_thread.run_sync(vm_values, a.env["VICTORIA_METRICS_URL"],
                                               f'{{node="{a.node}"}}')
        assert len(values) == 25
        assert psql(a.env["DATABASE_URL"], "SELECT count(*) FROM applied") == [["5"]]
        handle.stop()


async def test_live_batches_travel_as_text_and_arrive_intact(
        backends: Backends, vm_dedup_server: servers.Server, tmp_path: Path) -> None:
    """One sample per series (a live batch) goes to VictoriaMetrics' text import: names, escaped
    label values, values and timestamps arrive exactly; a retry after a lost mark stays single
    (VictoriaMetrics with its dedup on: the window only backend dedup covers)."""
    defs = [(1, {"__name__": "temp_c", "device": 'quote"back\\slash'}),
            (2, {"__name__": "temp_c", "device": "line\nbreak", "unit": "°C"}),
            (3, {"__name__": "fan_rpm", "device": "d3"}),
            (4, {"__name__": "fan_rpm", "device": "d4"})]
    cols = Columns("metrics", np.array([1, 2, 3, 4], dtype=np.int64),
                   np.array([NOW, NOW + 1, NOW + 2, NOW + 3], dtype=np.int64),
                   np.array([-1.25, 1e-7, 1234567.125, float("nan")]))
    async with central_on(backends, tmp_path, VICTORIA_METRICS_URL=vm_dedup_server.url) as run:
        body = encode_batch(Batch(run.node, 1, "metrics", encode_segment(cols), 4, epoch="e1",
                                  series_defs=defs))
        assert (await run.post(body)).json()["status"] == "applied"
        assert ('fleet_central_unrepresentable_rows_total{sink="victoria-metrics"} 1'
                in run.pipeline.registry.render())  # the NaN: counted, not sent
        got = {(s["metric"]["__name__"], s["metric"]["device"], s["metric"].get("unit")):
               (s["values"], s["timestamps"]) for s in _vm(run)}
        assert got == {("temp_c", 'quote"back\\slash', None): ([-1.25], [NOW]),
                       ("temp_c", "line\nbreak", "°C"): ([1e-7], [NOW + 1]),
                       ("fan_rpm", "d3", None): ([1234567.125], [NOW + 2])}
        await trio.to_thread.run_sync(psql, run.env["DATABASE_URL"], "DELETE FROM applied")
        redis_cli(run.env["VALKEY_ADDR"], "DEL", f"fleetd:applied:{run.node}:e1")
        assert (await run.post(body)).json()["status"] == "applied"  # written again...
        assert sum(len(s["values"]) for s in _vm(run)) == 3  # ...and still once


ROLLUP_DEFS = [(11, {"__name__": "cpu:5m_by_site_avg", "site": "plant-7"}),
               (12, {"__name__": "cpu:5m_by_site_quantiles", "site": "plant-7",
                     "quantile": "0.99"}),
               (13, {"__name__": "req_total:1m_without_core_increase", "device": "d1"})]


def rollups_batch(node: str, seq: int) -> bytes:
    end = NOW - NOW % 300_000
    cols = Columns("rollups", np.array([11, 12, 13, 13], dtype=np.int64),
                   np.array([end, end, end, end + 60_000], dtype=np.int64),
                   np.array([41.25, 97.5, 600.0, 580.0]))
    return encode_batch(Batch(node, seq, "rollups", encode_segment(cols), 4, epoch="e1",
                              series_defs=ROLLUP_DEFS))


async def test_edge_rollups_land_in_victoriametrics_and_clickhouse(backends: Backends,
                                                                   tmp_path: Path) -> None:
    async with central_on(backends, tmp_path) as run:
        r = await run.post(rollups_batch(run.node, 1))
        assert (r.status_code, r.json()["status"]) == (200, "applied"), r.text
        end = NOW - NOW % 300_000
        # VictoriaMetrics: plain series with the node's trusted labels
        vm = {s["metric"]["__name__"]: s for s in _vm(run)}
        assert vm["cpu:5m_by_site_avg"]["metric"] == {
            "__name__": "cpu:5m_by_site_avg", "site": "plant-7", "org": run.org,
            "node": run.node}
        assert vm["cpu:5m_by_site_quantiles"]["metric"]["quantile"] == "0.99"
        assert vm["req_total:1m_without_core_increase"]["values"] == [600.0, 580.0]
        # ClickHouse: one row per output series and window, named parts split out
        db = run.env["CLICKHOUSE_DATABASE"]
        rows = ch_query(run.env["CLICKHOUSE_URL"],
                        f"SELECT metric, rule, interval_s, output, quantile, site, device, "
                        f"toUnixTimestamp(window_start) AS ws, value FROM {db}.edge_rollups_v "
                        f"ORDER BY metric, output, ws")
        assert [(x["metric"], x["rule"], int(x["interval_s"]), x["output"], x["quantile"],
                 x["site"], x["device"], int(x["ws"]), x["value"]) for x in rows] == [
            ("cpu", "5m_by_site", 300, "avg", 0, "plant-7", "", (end - 300_000) // 1000,
             41.25),
            ("cpu", "5m_by_site", 300, "quantiles", 0.99, "plant-7", "",
             (end - 300_000) // 1000, 97.5),
            ("req_total", "1m_without_core", 60, "increase", 0, "plant-7", "d1",
             (end - 60_000) // 1000, 600),
            ("req_total", "1m_without_core", 60, "increase", 0, "plant-7", "d1", end // 1000,
             580)]
        # the same rows inserted again (a crash between the insert and its mark) collapse
        sink = next(s for s in run.pipeline.sinks if s.name == "clickhouse")
        from central.model import NodeInfo
        from central.router import make_job
        from edge_node.wire import decode_batch, decode_segment

        b = decode_batch(rollups_batch(run.node, 1))
        job = make_job(NodeInfo(run.node, run.org, 0, site="plant-7"), b,
                       decode_segment(b.segment), dict(ROLLUP_DEFS), NOW)
        await sink.write(job)  # type: ignore[attr-defined]
        again = ch_query(run.env["CLICKHOUSE_URL"],
                         f"SELECT count() AS n FROM {db}.edge_rollups_v")
        assert again == [{"n": "4"}]
        r = await run.post(rollups_batch(run.node, 1))
        assert (r.json()["status"], r.json()["seq"]) == ("duplicate", 1)


def alerts_batch(node: str, seq: int) -> bytes:
    firing = {"status": "firing", "fingerprint": "f1", "value": 1.0,
              "labels": {"alertname": "DeviceOffline", "device": "pump-1", "severity": "page"},
              "annotations": {"summary": "pump-1 silent for 5m 10s"},
              "startsAt": "2026-11-28T10:00:00.250Z", "endsAt": "0001-01-01T00:00:00Z"}
    resolved = {**firing, "status": "resolved", "endsAt": "2026-11-28T10:20:00Z"}
    lines = [json.dumps(firing).encode(), json.dumps(resolved).encode()]
    cols = Columns("alerts", np.array([21, 21], dtype=np.int64),
                   np.array([NOW, NOW + 1], dtype=np.int64), lines=lines)
    defs = [(21, {"__name__": "ALERTS", "alertname": "DeviceOffline", "device": "pump-1",
                  "severity": "page"})]
    return encode_batch(Batch(node, seq, "alerts", encode_segment(cols), 2, epoch="e1",
                              series_defs=defs))


async def test_alert_events_land_in_postgresql_and_clickhouse(backends: Backends,
                                                              tmp_path: Path) -> None:
    async with central_on(backends, tmp_path) as run:
        r = await run.post(alerts_batch(run.node, 1))
        assert (r.status_code, r.json()["status"]) == (200, "applied"), r.text
        db = run.env["DATABASE_URL"]
        rows = psql(db, "SELECT alertname, status, device, site, severity, "
                        "(extract(epoch from starts_at) * 1000)::bigint, labels->>'device', "
                        "node_id, org FROM alert_events ORDER BY status")
        assert rows == [
            ["DeviceOffline", "firing", "pump-1", "plant-7", "page", "1795860000250",
             "pump-1", run.node, run.org],
            ["DeviceOffline", "resolved", "pump-1", "plant-7", "page", "1795860000250",
             "pump-1", run.node, run.org]]
        ch = ch_query(run.env["CLICKHOUSE_URL"],
                      f"SELECT alertname, status, site, toUnixTimestamp(starts_at) AS s, "
                      f"toUnixTimestamp(ends_at) AS e FROM "
                      f"{run.env['CLICKHOUSE_DATABASE']}.alert_history_v ORDER BY status")
        assert [(x["alertname"], x["status"], x["site"], int(x["s"]), int(x["e"]))
                for x in ch] == [("DeviceOffline", "firing", "plant-7", 1795860000, 0),
                                 ("DeviceOffline", "resolved", "plant-7", 1795860000,
                                  1795861200)]
        # the same events again in a new batch (a re-sent notification): nothing changes
        r = await run.post(alerts_batch(run.node, 2))
        assert r.json()["status"] == "applied"
        assert psql(db, "SELECT count(*) FROM alert_events") == [["2"]]
        again = ch_query(run.env["CLICKHOUSE_URL"], f"SELECT count() AS n FROM "
                         f"{run.env['CLICKHOUSE_DATABASE']}.alert_history_v")
        assert again == [{"n": "2"}]
