"""Scraping devices' /metrics: static targets and a targets file re-read when it changes, job and
instance labels, ``up``, staleness markers for vanished series and targets."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_node.errors import ConfigError
from edge_node.node import open_edge_node
from edge_node.scrape import STALE_NAN, parse_targets
from tests.conftest import Central, edge_config, wait_for
from tests.servers import free_port


def test_targets_from_settings_and_file() -> None:
    got = parse_targets("10.0.0.5:9100, https://cam.local:8443/stats", json.dumps(
        [{"targets": ["pi-1:9100"], "labels": {"site": "plant-7", "job": "pis"}}]), "scrape")
    assert [(t.url, dict(t.labels)) for t in got] == [
        ("http://10.0.0.5:9100/metrics", {"job": "scrape", "instance": "10.0.0.5:9100"}),
        ("https://cam.local:8443/stats", {"job": "scrape", "instance": "cam.local:8443"}),
        ("http://pi-1:9100/metrics", {"job": "pis", "instance": "pi-1:9100",
                                      "site": "plant-7"})]
    with pytest.raises(ConfigError, match=r"t.json\[0\]"):
        parse_targets("", '[{"targets": "pi-1:9100"}]', "scrape", "t.json")
    with pytest.raises(ConfigError, match=r"scrape\.static_targets"):
        parse_targets("ftp://x", None, "scrape")


def test_the_staleness_marker_is_prometheus_bit_pattern() -> None:
    assert math.isnan(STALE_NAN)
    assert struct.pack("<d", STALE_NAN) == struct.pack("<Q", 0x7FF0000000000002)


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "exporter"
    root.mkdir()
    (root / "metrics").write_text('pump_rpm{instance="inner",rotor="a"} 1200\n'
                                  'pump_rpm{rotor="b"} 900\n')
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1", "--directory", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield f"127.0.0.1:{port}", root / "metrics"
    proc.kill()
    proc.wait()


async def test_scraping_with_a_targets_file(tmp_path: Path, central: Central,
                                            exporter: tuple[str, Path]) -> None:
    addr, metrics_file = exporter
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps([{"targets": [addr], "labels": {"site": "plant-7"}}]))
    dead = f"127.0.0.1:{free_port()}"
    cfg = edge_config(tmp_path, central, scrape={"targets_file": str(targets),
                                                 "interval_s": 0.2, "timeout_s": 0.2})

    def stale(v: float | None) -> bool:
        return v is None or math.isnan(v)  # the embedded store keeps NaN as NULL

    def rows(name: str) -> list[tuple[dict[str, str], float]]:
        got = central.store.open_sync().execute(
            "SELECT labels, value FROM samples_v WHERE name = ? ORDER BY ts", (name,))
        return [(json.loads(lb), v) for lb, v in got]

    async with open_edge_node(cfg):
        await wait_for(lambda: len(rows("pump_rpm")) >= 2 and rows("up"))
        labels = {lb["rotor"]: lb for lb, _ in rows("pump_rpm")}
        assert labels["a"] == {"__name__": "pump_rpm", "rotor": "a", "job": "scrape",
                               "instance": addr, "exported_instance": "inner",
                               "site": "plant-7", "device": addr}
        assert rows("up")[0] == ({"__name__": "up", "job": "scrape", "instance": addr,
                                  "site": "plant-7", "device": addr}, 1.0)
        # a series vanishes from the exporter: it gets a staleness marker
        metrics_file.write_text('pump_rpm{instance="inner",rotor="a"} 1300\n')
        await wait_for(lambda: any(lb["rotor"] == "b" and stale(v)
                                   for lb, v in rows("pump_rpm")))
        # the file changes: the old target's series go stale, the new (dead) one is down
        targets.write_text(json.dumps([{"targets": [dead]}]))
        os.utime(targets, (1, 2_000_000_000))  # mtime differs even within one second
        await wait_for(lambda: any(lb["instance"] == dead and v == 0.0
                                   for lb, v in rows("up")))
        await wait_for(lambda: any(lb["rotor"] == "a" and stale(v)
                                   for lb, v in rows("pump_rpm")))
