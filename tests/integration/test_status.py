"""The status document, /readyz, the gateway's own metrics and a reload of local alerting, on
an in-process node with a real central over HTTP."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import httpx
import pytest
import trio

from edge_node import status as status_mod
from edge_node.config import EdgeConfig
from edge_node.node import PIDFILE, open_edge_node
from tests.conftest import Central, edge_config, jsonl, wait_for


def _ingest(device: str, value: float, protocol: str = "native") -> tuple[str, dict]:
    return "/api/v1/ingest", {"device_id": device, "labels": {"site": "s1"},
                              "metrics": [{"name": "temp", "value": value}]}


async def test_status_document_host_metrics_and_readiness(
        tmp_path: Path, central: Central, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = edge_config(tmp_path, central, host={"enabled": True, "interval_s": 1.0},
                      status={"step_s": 1.0})
    async with open_edge_node(cfg) as node, httpx.AsyncClient() as c:
        assert (tmp_path / "edge" / PIDFILE).read_text().strip().isdigit()
        for dev in ("cam-1", "cam-2"):
            path, body = _ingest(dev, 21.0)
            assert (await c.post(node.url + path, json=body)).status_code == 204
        r = await c.post(node.url + "/api/v1/import/prometheus",
                         content=b'temp{device="pump-1"} 3\n')
        assert r.status_code == 204
        # the gateway's own series reach central like a device's, labelled as the gateway
        def gateway_series() -> list[tuple[str, str]]:
            rows = central.store.open_sync().execute(
                "SELECT name, labels FROM samples_v WHERE json_extract(labels, '$.role') = "
                "'gateway'").fetchall()
            return [(n, json.loads(lab)["device"]) for n, lab in rows]

        await wait_for(lambda: ("node_memory_MemAvailable_bytes", "edge-1") in gateway_series())
        names = {n for n, _ in gateway_series()}
        assert {"node_cpu_seconds_total", "node_load1", "node_filesystem_avail_bytes",
                "node_network_receive_bytes_total", "fleet_edge_process_cpu_seconds_total"
                } <= names
        await node.status.sample()
        await trio.sleep(1.1)
        await node.status.sample()
        doc = (await c.get(node.url + "/api/v1/status")).json()
        assert doc["node_id"] == "edge-1" and doc["not_ready"] == []
        assert (doc["alerts_firing"], doc["alerts_pending"], doc["alerts"]) == (0, 0, [])
        synced = doc["clock_synchronized"]  # this VM's kernel decides; Linux always knows
        assert isinstance(synced, bool)  # not None: adjtimex answered
        assert f"fleet_edge_clock_synchronized {int(synced)}\n" in (
            await c.get(node.url + "/metrics")).text
        assert doc["central"]["connected"] is True
        devices = {d["device"]: d["online"] for d in doc["devices"]}
        assert devices["cam-1"] and devices["cam-2"] and devices["pump-1"]
        assert devices["edge-1"]  # the gateway reports as a device too
        assert doc["devices_total"] == 4 and doc["devices_online"] == 4
        # forgetting a device: from the gateway itself only; an unknown one is a 404
        r = await c.post(node.url + "/api/v1/devices/forget", json={"device": "pump-1"})
        assert r.status_code == 200 and r.json()["device"] == "pump-1"
        r = await c.post(node.url + "/api/v1/devices/forget", json={"device": "pump-1"})
        assert r.status_code == 404 and "not known" in r.json()["error"]
        r = await c.post(node.url + "/api/v1/devices/forget", json={"name": "x"})
        assert r.status_code == 400 and r.json()["field"] == "device"
        seen = (await c.get(node.url + "/api/v1/devices")).json()["devices"]
        assert {d["device"] for d in seen} == {"cam-1", "cam-2", "edge-1"}
        node.alerts.devices["pump-1"] = ("", int(time.time() * 1000))  # back, for below
        # a big site lists offline devices first and only so many (the counts cover all)
        node.alerts.devices["old-1"] = ("s1", 0)
        monkeypatch.setattr(status_mod, "DEVICES_LISTED", 2)
        small = await node.status.document()
        assert [d["device"] for d in small["devices"]] == ["old-1", "cam-1"]
        assert (small["devices_total"], small["devices_online"]) == (5, 4)
        protocols = {p["protocol"]: p["rows_total"] for p in doc["protocols"]}
        assert protocols == {"native": 2, "prometheus_text": 1}
        assert doc["host"]["device"] == "edge-1" and 0 <= doc["host"]["cpu_percent"] <= 100
        assert len(doc["history"]["t"]) >= 2
        assert set(doc["history"]["figures"]) == set(doc["figures"])
        assert doc["history"]["figures"]["memory_used_percent"][-1] > 0
        assert doc["history"]["figures"]["ingest_rows_per_s"][-1] is not None
        assert (await c.get(node.url + "/readyz")).json() == {"status": "ready", "reasons": []}
        text = (await c.get(node.url + "/metrics")).text
        assert 'fleet_edge_devices{state="online"} 4' in text
        assert 'fleet_edge_devices{state="offline"} 1' in text  # old-1, added above
        for hist in ("fleet_edge_buffer_commit_seconds", "fleet_edge_forward_seconds"):
            count = re.search(rf"^{hist}_count (\d+)$", text, re.M)
            assert count and int(count.group(1)) > 0, hist
        assert (await c.get(central.url + "/readyz")).status_code == 200
        ctext = (await c.get(central.url + "/metrics")).text
        assert re.search(r"^fleet_central_store_bytes [1-9]", ctext, re.M)
        assert 'fleet_central_backend_check_seconds_count{backend="sqlite"} 1' in ctext
        page = await c.get(node.url + "/")
        assert page.status_code == 200 and "/api/v1/status" in page.text
        # nothing loaded from elsewhere (the headless-Chromium test blocks the network too)
        assert not re.search(r'(src|href)\s*=|@import|url\(|fetch\("http', page.text)

        # central gone and the buffer past its budget: not ready, with the reason
        central.handle.stop()
        await wait_for(lambda: not node.forwarder.connected)
        path, body = _ingest("cam-1", 22.0)
        assert (await c.post(node.url + path, json=body)).status_code == 204
        await node.buffer.roll_now()
        node.buffer.max_bytes = 1024
        await wait_for(lambda: node.buffer.stats.pending and True)
        r = await c.get(node.url + "/readyz")
        assert r.status_code == 503
        assert "central is unreachable" in r.json()["reasons"][0]
    assert not (tmp_path / "edge" / PIDFILE).exists()  # removed on a clean stop
    # the chart history is kept for the next start
    saved = json.loads((tmp_path / "edge" / "status-history.json").read_text())
    assert len(saved["points"]) >= 2


def write_toml(cfg: EdgeConfig, path: Path) -> None:
    """``cfg`` as a TOML file (what a reload re-reads)."""
    top, sections = [], []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            sections.append(f"[{f.name}]")
            sections += [f"{k} = {json.dumps(x)}" for k, x in dataclasses.asdict(v).items()]
        else:
            top.append(f"{f.name} = {json.dumps(v)}")
    path.write_text("\n".join(top + sections) + "\n")


async def test_reload_starts_and_stops_scraping(tmp_path: Path, central: Central) -> None:
    cfg = edge_config(tmp_path, central)
    toml = tmp_path / "edge.toml"
    write_toml(cfg, toml)
    async with open_edge_node(cfg, config_path=str(toml)) as node:
        scrapes = node.registry.metrics["fleet_edge_scrapes_total"]
        assert node._scrape_scope is None
        # scrape the node's own /metrics every 0.5 s
        target = node.url.removeprefix("http://")
        write_toml(dataclasses.replace(cfg, scrape=dataclasses.replace(
            cfg.scrape, static_targets=target, interval_s=0.5, timeout_s=0.5)), toml)
        r = await node.reload()
        assert r["applied"] == ["scrape"]
        await wait_for(lambda: scrapes.get("ok") >= 2)
        write_toml(cfg, toml)
        assert (await node.reload())["applied"] == ["scrape"]
        assert node._scrape_scope is None
        done = scrapes.get("ok")
        await trio.sleep(1.5)
        assert scrapes.get("ok") == done  # stopped at once (its scope is cancelled)
    await wait_for(lambda: ("up", target) in [
        (n, json.loads(lab).get("instance")) for n, lab in central.store.open_sync().execute(
            "SELECT name, labels FROM samples_v WHERE name = 'up'").fetchall()])


RULES = """
groups:
- name: site
  interval: 1s
  rules:
  - alert: TooHot
    expr: temp > 50
    labels: {severity: page}
"""
MORE_RULES = RULES + """
  - alert: TooCold
    expr: temp < -20
"""


async def test_reload_rebuilds_alerting_and_keeps_its_state(tmp_path: Path,
                                                           central: Central) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    hooks = tmp_path / "hooks.yml"
    hooks.write_text(f"hooks:\n- name: journal\n  type: log\n  path: {tmp_path / 'n.jsonl'}\n")
    # the built-in rules stay off: only this file's alerts may notify
    cfg = edge_config(tmp_path, central, alerts={"rule_files": str(rules),
                                                 "hooks_file": str(hooks),
                                                 "builtin_rules": False})
    toml = tmp_path / "edge.toml"
    write_toml(cfg, toml)

    def notes() -> list[dict]:
        return jsonl(tmp_path / "n.jsonl")

    async with open_edge_node(cfg, config_path=str(toml)) as node, httpx.AsyncClient() as c:
        path, body = _ingest("boiler", 80.0)
        assert (await c.post(node.url + path, json=body)).status_code == 204
        await wait_for(lambda: len(notes()) >= 1)
        assert len(notes()) == 1, notes()
        old = node.alerts
        assert old is not None
        (hot,) = old.summary()
        firing_since = hot["activeAt"]

        # nothing changed: the service is left alone
        r = await node.reload()
        assert r["ok"] and r["applied"] == [] and node.alerts is old

        rules.write_text(MORE_RULES)
        r = await node.reload()
        assert r["ok"] and r["applied"] == ["alerts"] and r["needs_restart"] == []
        assert node.alerts is not None and node.alerts is not old
        names = {rule.name for g in node.alerts.groups for rule in g.rules}
        assert {"TooHot", "TooCold"} <= names
        # still firing since the same instant; evaluations go on without notifying again
        (hot,) = [a for a in node.alerts.summary() if a["labels"]["alertname"] == "TooHot"]
        assert hot["state"] == "firing" and hot["activeAt"] == firing_since
        evals = node.alerts.evaluations
        await wait_for(lambda: node.alerts is not None and node.alerts.evaluations >= evals + 3)
        assert len(notes()) == 1, notes()
        # the new rule works, on data that arrives after the reload
        path, body = _ingest("freezer", -30.0)
        assert (await c.post(node.url + path, json=body)).status_code == 204
        await wait_for(lambda: any(n["commonLabels"].get("alertname") == "TooCold"
                                   for n in notes()))
        # a broken rule file is refused: the running rules stay
        rules.write_text(MORE_RULES + "  - alert: Broken\n    expr: topk(3, temp)\n")
        running = node.alerts
        r = await node.reload()
        assert not r["ok"] and "topk" in r["error"] and node.alerts is running
        assert node.last_reload == r


async def test_a_reload_that_fails_part_way_keeps_the_node_running(
        tmp_path: Path, central: Central, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = tmp_path / "aggr.yaml"
    rules.write_text("- match: temp\n  interval: 1m\n  outputs: [max]\n")
    cfg = edge_config(tmp_path, central)
    toml = tmp_path / "edge.toml"
    write_toml(cfg, toml)
    async with open_edge_node(cfg, config_path=str(toml)) as node, httpx.AsyncClient() as c:
        write_toml(dataclasses.replace(cfg, aggregate=dataclasses.replace(
            cfg.aggregate, rules_file=str(rules))), toml)

        async def broken(*_: object) -> None:
            raise OSError("disk I/O error")

        monkeypatch.setattr(node.buffer, "set_stage", broken)
        r = await node.reload()
        assert not r["ok"] and "disk I/O error" in r["error"]
        path, body = _ingest("cam-1", 20.0)
        assert (await c.post(node.url + path, json=body)).status_code == 204  # still serving
        monkeypatch.undo()
        r = await node.reload()
        assert r["ok"] and "aggregate" in r["applied"]
        assert node.aggregation is not None and len(node.aggregation.rules) == 1


async def test_reload_starts_retunes_and_stops_the_host_collector(tmp_path: Path,
                                                                  central: Central) -> None:
    cfg = edge_config(tmp_path, central)  # [host] off
    toml = tmp_path / "edge.toml"
    write_toml(cfg, toml)

    def host(**over: object) -> EdgeConfig:
        return dataclasses.replace(cfg, host=dataclasses.replace(cfg.host, **over))

    async with open_edge_node(cfg, config_path=str(toml)) as node:
        assert node.host is None
        write_toml(host(enabled=True, interval_s=1.0), toml)
        assert (await node.reload())["applied"] == ["host"]
        collector = node.host
        assert collector is not None
        await wait_for(lambda: collector.last is not None)
        write_toml(host(enabled=True, interval_s=2.0, device="gw-renamed"), toml)
        assert (await node.reload())["applied"] == ["host"]
        assert node.host is collector  # the same collector, retuned: its CPU baseline stays
        assert (collector.interval_s, collector.base["device"]) == (2.0, "gw-renamed")
        write_toml(cfg, toml)
        assert (await node.reload())["applied"] == ["host"]
        assert node.host is None and node._host_scope is None
