"""An edge node and central in-process over real HTTP: ingest contract, errors, group commit."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import httpx
import msgpack
import trio
import zstandard

from edge_node.node import open_edge_node
from tests.conftest import Central, edge_config, wait_for

NOW = 1_795_839_600_000


def _payload(device: str = "dev-1", n: int = 3, t0: int = NOW) -> dict[str, object]:
    return {"device_id": device, "labels": {"site": "s1"},
            "metrics": [{"name": "cpu_usage_percent", "value": 10.5 + i, "ts": t0 + i * 1000,
                         "labels": {"core": str(i)}} for i in range(n)],
            "logs": [{"ts": t0, "line": "boot ok", "level": "info", "labels": {"app": "x"}}],
            "heartbeat": True}


async def test_ingest_reaches_central_in_every_encoding(tmp_path: Path, central: Central) -> None:
    async with open_edge_node(edge_config(tmp_path, central)) as node, httpx.AsyncClient() as c:
        url = node.url + "/api/v1/ingest"
        raw = json.dumps(_payload("a")).encode()
        r1 = await c.post(url, content=raw, headers={"Content-Type": "application/json"})
        r2 = await c.post(url, content=zstandard.compress(msgpack.packb(_payload("b"))),
                          headers={"Content-Type": "application/msgpack",
                                   "Content-Encoding": "zstd"})
        r3 = await c.post(url, content=gzip.compress(raw),
                          headers={"Content-Type": "application/json",
                                   "Content-Encoding": "gzip"})
        r4 = await c.post(url, json=[_payload("c", 1), _payload("d", 1)])
        assert [r.status_code for r in (r1, r2, r3, r4)] == [204] * 4
        await wait_for(lambda: central.counts() == {"metrics": 11, "logs": 5, "heartbeats": 5})
    rows = central.store.open_sync().execute(
        "SELECT name, labels, ts, value FROM samples_v WHERE json_extract(labels, '$.device')='b'"
        " ORDER BY ts").fetchall()
    assert [(r[0], r[2], r[3]) for r in rows] == [
        ("cpu_usage_percent", NOW, 10.5), ("cpu_usage_percent", NOW + 1000, 11.5),
        ("cpu_usage_percent", NOW + 2000, 12.5)]
    assert json.loads(rows[0][1]) == {"__name__": "cpu_usage_percent", "device": "b",
                                      "site": "s1", "core": "0"}
    (line,) = central.store.open_sync().execute(
        "SELECT line FROM logs_v WHERE json_extract(labels, '$.device')='a'").fetchone()
    assert line == "boot ok"
    devices = central.store.open_sync().execute(
        "SELECT device, org FROM devices ORDER BY device").fetchall()
    assert devices == [("a", "org-a"), ("b", "org-a"), ("c", "org-a"), ("d", "org-a")]


async def test_bad_requests_store_nothing(tmp_path: Path, central: Central) -> None:
    cfg = edge_config(tmp_path, central, ingest={"max_body_bytes": 4096,
                                                 "max_decompressed_bytes": 8192})
    async with open_edge_node(cfg) as node, httpx.AsyncClient() as c:
        url = node.url + "/api/v1/ingest"
        good = _payload()
        bad = [_payload(), {"device_id": "x", "metrics": [{"name": "ok", "value": "NaN?"}]}]
        r = await c.post(url, json=bad)
        assert r.status_code == 400
        assert r.json()["field"] == "[1].metrics[0].value"
        r = await c.post(url, content=b"{}", headers={"Content-Type": "text/plain"})
        assert r.status_code == 415 and r.json()["field"] == "Content-Type"
        r = await c.post(url, content=b"x" * 5000, headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        bomb = zstandard.compress(b" " * 100_000)
        r = await c.post(url, content=bomb, headers={"Content-Type": "application/json",
                                                     "Content-Encoding": "zstd"})
        assert r.status_code == 413 and r.json()["field"] == "body"
        r = await c.post(url, content=b"{", headers={"Content-Type": "application/json"})
        assert r.status_code == 400
        r = await c.get(url)
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        assert node.buffer.m_commits.get() == 0
        assert sum((await node.buffer.refresh_stats()).pending.values()) == 0
        r = await c.post(url, json=good)
        assert r.status_code == 204
        await wait_for(lambda: central.counts() == {"metrics": 3, "logs": 1, "heartbeats": 1})
        metrics = (await c.get(node.url + "/metrics")).text
    assert 'fleet_edge_rejected_total{reason="BadRequest"} 2' in metrics
    assert central.counts() == {"metrics": 3, "logs": 1, "heartbeats": 1}


async def test_concurrent_requests_share_commits(tmp_path: Path, central: Central) -> None:
    cfg = edge_config(tmp_path, central, buffer={"commit_window_ms": 5.0})
    async with open_edge_node(cfg) as node, httpx.AsyncClient(
            limits=httpx.Limits(max_connections=100)) as c:
        url = node.url + "/api/v1/ingest"
        statuses: list[int] = []

        async def post(i: int) -> None:
            r = await c.post(url, json=_payload(f"d{i}", 2))
            statuses.append(r.status_code)

        async with trio.open_nursery() as n:
            for i in range(60):
                n.start_soon(post, i)
        assert statuses == [204] * 60
        commits = node.buffer.m_commits.get()
        assert node.buffer.m_commit_requests.get() == 60
        assert commits < 60, f"{commits} commits for 60 concurrent requests: no group commit"
        await wait_for(lambda: central.counts()["metrics"] == 120)


async def test_metrics_and_health_endpoints(tmp_path: Path, central: Central) -> None:
    async with open_edge_node(edge_config(tmp_path, central)) as node, httpx.AsyncClient() as c:
        await c.post(node.url + "/api/v1/ingest", json=_payload())
        await wait_for(lambda: node.forwarder.m_acked.get("metrics") == 3)
        health = (await c.get(node.url + "/healthz")).json()
        text = (await c.get(node.url + "/metrics")).text
        ctext = (await c.get(central.url + "/metrics")).text
        ready = await c.get(central.url + "/readyz")
    assert health["status"] == "ok" and health["node_id"] == "edge-1"
    assert health["central_connected"] is True and health["dead_letters"] == 0
    for name in ("fleet_edge_ingested_total", "fleet_edge_committed_total",
                 "fleet_edge_forwarded_total", "fleet_edge_acked_total",
                 "fleet_edge_dropped_total", "fleet_edge_buffer_bytes",
                 "fleet_edge_backlog_age_seconds", "fleet_edge_forward_errors_total",
                 "fleet_edge_dead_letters", "fleet_edge_process_resident_memory_bytes",
                 "fleet_edge_data_disk_free_bytes"):
        assert f"# TYPE {name} " in text, name
    assert 'fleet_edge_acked_total{kind="metrics"} 3' in text
    assert 'fleet_central_batches_total{outcome="applied"}' in ctext
    assert ready.status_code == 200
