"""Prometheus text and Influx line protocol over real HTTP into an edge node, through to central:
names, labels, values and timestamps intact; bad input gets a 400 naming the line and stores
nothing."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import httpx

from edge_node.node import open_edge_node
from tests.conftest import Central, edge_config, wait_for

NOW = 1_795_839_600_000


def _stored(central: Central) -> list[tuple[str, dict[str, str], int, float]]:
    rows = central.store.open_sync().execute(
        "SELECT name, labels, ts, value FROM samples_v ORDER BY name, ts").fetchall()
    return [(r[0], json.loads(r[1]), r[2], r[3]) for r in rows]


async def test_prometheus_text_and_influx_reach_central(tmp_path: Path, central: Central) -> None:
    async with open_edge_node(edge_config(tmp_path, central)) as node, httpx.AsyncClient() as c:
        text = (b'# TYPE node_temp_celsius gauge\n'
                b'node_temp_celsius{instance="pi-1:9100",zone="cpu"} 48.5 ' + str(NOW).encode()
                + b'\nnode_boot_total{instance="pi-1:9100"} 3 ' + str(NOW).encode() + b"\n")
        r1 = await c.post(node.url + "/api/v1/import/prometheus", content=gzip.compress(text),
                          headers={"Content-Encoding": "gzip"})
        r2 = await c.post(node.url + "/write", params={"db": "telegraf", "precision": "s"},
                          content=f"mem,host=cam-2 used_percent=61.25,free=1024i "
                                  f"{NOW // 1000}".encode())
        r3 = await c.post(node.url + "/api/v2/write",
                          params={"org": "o", "bucket": "b", "precision": "ms"},
                          content=f'disk,host=cam-2,path=/ used=0.5,label="x" {NOW + 1}'.encode(),
                          headers={"Authorization": "Token whatever"})
        assert [r.status_code for r in (r1, r2, r3)] == [204, 204, 204], r1.text
        bad = await c.post(node.url + "/write", content=b"mem used=1\nmem used=x")
        assert bad.status_code == 400
        assert bad.json() == {"error": "field 'used': 'x' is not a number, boolean or string",
                              "field": "line 2"}
        await wait_for(lambda: central.counts()["metrics"] == 5)
        metrics = (await c.get(node.url + "/metrics")).text
    assert _stored(central) == [
        ("disk_used", {"__name__": "disk_used", "host": "cam-2", "path": "/",
                       "device": "cam-2"}, NOW + 1, 0.5),
        ("mem_free", {"__name__": "mem_free", "host": "cam-2", "device": "cam-2"}, NOW, 1024.0),
        ("mem_used_percent", {"__name__": "mem_used_percent", "host": "cam-2",
                              "device": "cam-2"}, NOW, 61.25),
        ("node_boot_total", {"__name__": "node_boot_total", "instance": "pi-1:9100",
                             "device": "pi-1:9100"}, NOW, 3.0),
        ("node_temp_celsius", {"__name__": "node_temp_celsius", "instance": "pi-1:9100",
                               "zone": "cpu", "device": "pi-1:9100"}, NOW, 48.5)]
    assert 'fleet_edge_protocol_rows_total{protocol="influx_v1"} 2' in metrics
    assert 'fleet_edge_protocol_rows_total{protocol="prometheus_text"} 2' in metrics
    assert "fleet_edge_influx_string_fields_total 1" in metrics


async def test_loki_pushes_reach_central(tmp_path: Path, central: Central) -> None:
    import cramjam

    from tests.strategies import encode_push_request

    ns = NOW * 1_000_000
    async with open_edge_node(edge_config(tmp_path, central)) as node, httpx.AsyncClient() as c:
        url = node.url + "/loki/api/v1/push"
        r1 = await c.post(url, json={"streams": [{"stream": {"app": "pump", "device": "p-1"},
                                                  "values": [[str(ns), "json line"]]}]})
        proto = encode_push_request([('{app="pump",device="p-2"}', [(ns + 1_000_000,
                                                                     "proto line", {})])])
        r2 = await c.post(url, content=bytes(cramjam.snappy.compress_raw(proto)),
                          headers={"Content-Type": "application/x-protobuf"})
        assert (r1.status_code, r2.status_code) == (204, 204), r2.text
        await wait_for(lambda: central.counts()["logs"] == 2)
    rows = central.store.open_sync().execute(
        "SELECT labels, ts, line FROM logs_v ORDER BY ts").fetchall()
    assert [(json.loads(r[0]), r[1], r[2]) for r in rows] == [
        ({"app": "pump", "device": "p-1"}, NOW, "json line"),
        ({"app": "pump", "device": "p-2"}, NOW + 1, "proto line")]


async def test_a_device_past_its_series_limit_gets_422(tmp_path: Path, central: Central) -> None:
    cfg = edge_config(tmp_path, central, ingest={"max_series_per_device": 3})
    async with open_edge_node(cfg) as node, httpx.AsyncClient() as c:
        url = node.url + "/api/v1/import/prometheus"
        ok = await c.post(url, content=b'm{device="d1",k="1"} 1\nm{device="d1",k="2"} 1\n')
        bad = await c.post(url, content=b'm{device="d1",k="3"} 1\nm{device="d1",k="4"} 1\n')
        assert (ok.status_code, bad.status_code) == (204, 422)
        assert bad.json()["field"] == "series" and "'d1'" in bad.json()["error"]
        await wait_for(lambda: central.counts()["metrics"] == 2)
