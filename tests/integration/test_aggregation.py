"""Stream aggregation on a running node: rollups reach central, keep_raw = false keeps matched
raw samples at the site, the aggregates endpoint and CLI, and the node's metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import trio

from edge_node.node import open_edge_node
from tests.conftest import Central, edge_config, wait_for

RULES = """
- name: cpu-site
  match: 'cpu_usage{site="s1"}'
  interval: 2s
  grace: 500ms
  by: [site]
  outputs: [count_samples, avg, max, count_series, "quantiles(0.5, 0.99)"]
  keep_raw: false
- name: temp-device
  match: temp
  interval: 2s
  grace: 500ms
  without: [sensor]
  outputs: [last, min]
"""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_rollups_reach_central_and_raw_stays_home(tmp_path: Path, central: Central) -> None:
    rules = tmp_path / "aggr.yaml"
    rules.write_text(RULES)
    cfg = edge_config(tmp_path, central, aggregate={"rules_file": str(rules)})
    async with open_edge_node(cfg) as node, httpx.AsyncClient() as c:
        # wait for the start of a fresh 2 s window, so all samples land in one
        while _now_ms() % 2000 > 200:
            await trio.sleep(0.02)
        t = _now_ms()
        metrics = [{"name": "cpu_usage", "value": float(v), "ts": t + i}
                   for i, v in enumerate([10, 20, 30, 40])]
        temps = [{"name": "temp", "value": 21.5 + i, "ts": t + i, "labels": {"sensor": str(i)}}
                 for i in range(3)]
        for dev in ("d1", "d2"):
            r = await c.post(node.url + "/api/v1/ingest", json={
                "device_id": dev, "labels": {"site": "s1"},
                "metrics": metrics + temps + [{"name": "mem", "value": 1.0, "ts": t}]})
            assert r.status_code == 204

        def rollups() -> dict[str, float]:
            rows = central.store.open_sync().execute(
                "SELECT labels, value FROM rollups_v").fetchall()
            out = {}
            for labels, value in rows:
                d = json.loads(labels)
                name = d.pop("__name__")
                extra = {k: v for k, v in d.items() if k in ("device", "quantile")}
                out[name + json.dumps(extra, sort_keys=True)] = value
            return out

        await wait_for(lambda: len(rollups()) >= 9, timeout=15)
        got = rollups()
        assert got['cpu_usage:2s_by_site_count_samples{}'] == 8
        assert got['cpu_usage:2s_by_site_avg{}'] == 25
        assert got['cpu_usage:2s_by_site_max{}'] == 40
        assert got['cpu_usage:2s_by_site_count_series{}'] == 2
        assert abs(got['cpu_usage:2s_by_site_quantiles{"quantile": "0.5"}'] - 20) <= 0.2
        assert got['temp:2s_without_sensor_last{"device": "d1"}'] == 23.5
        assert got['temp:2s_without_sensor_min{"device": "d2"}'] == 21.5
        # the raw cpu samples stayed at the site (keep_raw: false); temp and mem went raw
        await wait_for(lambda: central.counts()["metrics"] == 2 * (3 + 1))
        names = {n for (n,) in central.store.open_sync().execute("SELECT name FROM samples_v")}
        assert names == {"temp", "mem"}
        # by: [site] keeps only the site (and the name)
        (labels,) = central.store.open_sync().execute(
            "SELECT labels FROM rollups_v WHERE name='cpu_usage:2s_by_site_max'").fetchone()
        assert json.loads(labels) == {"__name__": "cpu_usage:2s_by_site_max", "site": "s1"}

        doc = (await c.get(node.url + "/api/v1/aggregates")).json()
        by_name = {r["name"]: r for r in doc["rules"]}
        assert by_name["cpu-site"]["samples"] == 8 and by_name["cpu-site"]["series"] == 2
        assert by_name["temp-device"]["groups"] == 2
        assert by_name["cpu-site"]["last_output"]["series"] >= 5
        text = (await c.get(node.url + "/metrics")).text
        assert 'fleet_edge_aggregate_samples{rule="cpu-site"} 8' in text
        assert 'fleet_edge_acked_total{kind="rollups"}' in text

        # the CLI (a subprocess: it blocks on HTTP)
        out = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "edge_node.cli", "aggregates", "--url", node.url],
            capture_output=True, text=True, timeout=30))
        assert out.returncode == 0, out.stderr
        assert "cpu-site" in out.stdout and "temp-device" in out.stdout
        assert 'cpu_usage:2s_by_site_' in out.stdout
        js = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "edge_node.cli", "aggregates", "--url", node.url, "--json"],
            capture_output=True, text=True, timeout=30))
        assert {r["name"] for r in json.loads(js.stdout)} == {"cpu-site", "temp-device"}


def test_bad_rules_file_is_a_config_error(tmp_path: Path) -> None:
    rules = tmp_path / "aggr.yaml"
    rules.write_text("- match: cpu\n  interval: 1m\n  outputs: [median]\n")
    cfg_file = tmp_path / "edge.toml"
    cfg_file.write_text(f'node_id = "n"\ndata_dir = "{tmp_path}"\n[central]\nurl = '
                        f'"http://x:1"\napi_key = "k"\n[aggregate]\nrules_file = "{rules}"\n')
    out = subprocess.run([sys.executable, "-m", "edge_node.cli", "check-config", str(cfg_file)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "aggregate.rules_file" in out.stderr and "rules[0].outputs" in out.stderr
    assert "median" in out.stderr
