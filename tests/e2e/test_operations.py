"""Operating a real ``fleet-edge run`` process: SIGHUP / ``fleet-edge reload`` and the drain
progress of ``fleet-edge status --watch``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.e2e.procs import Proc, edge_proc, register, start_central, write_edge_config

RULES_A = """
- name: temp_1m
  match: 'temp{device!=""}'
  interval: 1m
  outputs: [count_samples, max]
"""
RULES_B = RULES_A + """
- name: temp_by_site
  match: temp
  interval: 1m
  by: [site]
  outputs: [avg]
"""


def cli(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_node.cli", *args], capture_output=True,
                          text=True, check=check, timeout=120)


def _post(url: str, i: int) -> None:
    r = httpx.post(url + "/api/v1/ingest", json={
        "device_id": f"dev-{i % 3}", "labels": {"site": "s1"},
        "metrics": [{"name": "temp", "value": float(i)}]})
    assert r.status_code == 204, r.text


def _aggregates(url: str) -> dict[str, dict[str, object]]:
    rules = httpx.get(url + "/api/v1/aggregates").json()["rules"]
    return {r["name"]: r for r in rules}


def test_sighup_reload_keeps_state_and_refuses_a_bad_config(tmp_path: Path,
                                                           procs: list[Proc]) -> None:
    rules = tmp_path / "aggr.yaml"
    rules.write_text(RULES_A)
    cfg, url = write_edge_config(tmp_path, "http://127.0.0.1:9", "k",
                                 extra=f'[aggregate]\nrules_file = "{rules}"\n')
    edge = edge_proc(tmp_path, cfg, url)
    procs.append(edge)
    edge.start()
    for i in range(30):
        _post(url, i)
    deadline = time.monotonic() + 20
    while _aggregates(url)["temp_1m"]["samples"] < 30:  # rolled into the rule's window
        assert time.monotonic() < deadline
        time.sleep(0.1)
    pid = edge.proc.pid if edge.proc else 0
    pending = httpx.get(url + "/api/v1/status").json()["buffer"]["pending_rows"]

    # a new rule file and a new log level: both applied, the old rule keeps its window
    rules.write_text(RULES_B)
    cfg.write_text(cfg.read_text().replace('log_level = "warning"', 'log_level = "info"'))
    out = cli("reload", "--config", str(cfg), check=True).stdout
    assert "applied aggregate, log_level" in out, out
    agg = _aggregates(url)
    assert agg["temp_1m"]["samples"] == 30  # the same state: nothing lost, nothing doubled
    assert agg["temp_by_site"]["samples"] == 0
    for i in range(30, 40):
        _post(url, i)
    deadline = time.monotonic() + 20
    while _aggregates(url)["temp_1m"]["samples"] < 40:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert _aggregates(url)["temp_by_site"]["samples"] == 10

    # a broken config: the command refuses it without signalling; a bare SIGHUP makes the
    # node refuse it with the reason; the node keeps running as it was
    good = cfg.read_text()
    cfg.write_text(good.replace("max_disk_mb = 256", "max_disk_mb = -5"))
    bad = cli("reload", "--config", str(cfg))
    assert bad.returncode == 2
    assert "buffer.max_disk_mb" in bad.stderr and "not signalled" in bad.stderr, bad.stderr
    assert edge.proc is not None
    before = httpx.get(url + "/api/v1/status").json()["last_reload"]["at"]
    edge.proc.send_signal(signal.SIGHUP)
    status = _next_reload(url, before)
    assert status["last_reload"]["ok"] is False
    assert "buffer.max_disk_mb" in status["last_reload"]["error"]
    assert status["buffer"]["pending_rows"] >= pending  # buffered data untouched
    assert set(_aggregates(url)) == {"temp_1m", "temp_by_site"}
    assert "reload refused" in (tmp_path / "edge.log").read_text()

    # a key that needs a restart is named and not applied; a bare SIGHUP works too
    cfg.write_text(good.replace("[buffer]", "[buffer]\nqueue_size = 64"))
    edge.proc.send_signal(signal.SIGHUP)
    r = _next_reload(url, status["last_reload"]["at"])["last_reload"]
    assert r["ok"] is True and r["needs_restart"] == ["buffer.queue_size"]
    assert edge.proc.pid == pid and edge.proc.poll() is None
    assert "takes a restart" in (tmp_path / "edge.log").read_text()
    assert edge.terminate() == 0


def _next_reload(url: str, before: float) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        doc: dict[str, Any] = httpx.get(url + "/api/v1/status").json()
        if doc["last_reload"] and doc["last_reload"]["at"] != before:
            return doc
        assert time.monotonic() < deadline, "no reload reported"
        time.sleep(0.1)


def test_reload_without_a_running_node_says_so(tmp_path: Path) -> None:
    cfg, _ = write_edge_config(tmp_path, "http://127.0.0.1:9", "k")
    r = cli("reload", "--config", str(cfg))
    assert r.returncode == 1 and "no running node" in r.stderr
    # a pid file left by a killed node, its number reused by another process: not signalled
    other = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "edge").mkdir(exist_ok=True)
        (tmp_path / "edge" / "fleet-edge.pid").write_text(f"{other.pid}\n")
        r = cli("reload", "--config", str(cfg))
        assert r.returncode == 1 and "stale" in r.stderr
        assert other.poll() is None  # SIGHUP would have ended it
    finally:
        other.kill()
        other.wait()


async def test_status_watch_shows_the_backlog_drain(tmp_path: Path, procs: list[Proc]) -> None:
    central = start_central(tmp_path)
    procs.append(central)
    key = register(tmp_path)
    cfg, url = write_edge_config(tmp_path, central.url, key)
    edge = edge_proc(tmp_path, cfg, url)
    procs.append(edge)
    edge.start()  # central not running yet: everything waits in the buffer
    async with httpx.AsyncClient() as c:
        for i in range(200):
            r = await c.post(url + "/api/v1/ingest", json={
                "device_id": f"d{i % 10}",
                "metrics": [{"name": "m", "value": float(j)} for j in range(50)]})
            assert r.status_code == 204
    doc = json.loads(cli("status", "--config", str(cfg), "--json", check=True).stdout)
    assert doc["buffer"]["pending_rows"] >= 10_000
    assert doc["central"]["connected"] is False
    text = cli("status", "--config", str(cfg), check=True).stdout
    assert "central   " in text and "unreachable" in text
    assert f"backlog   {doc['buffer']['pending_rows']:,} rows waiting" in text
    central.start()
    with trio.fail_after(90):
        watch = await trio.run_process(
            [sys.executable, "-m", "edge_node.cli", "status", "--config", str(cfg),
             "--watch", "0.2"], capture_stdout=True, check=False)
    out = watch.stdout.decode()
    assert watch.returncode == 0, out
    lines = out.strip().splitlines()
    assert lines[0].startswith("backlog of ") and lines[-1] == "backlog drained"
    progress = [ln for ln in lines if ln.startswith("forwarded")]
    assert progress and "waiting            0" in progress[-1], out


def test_devices_seen_and_forget(tmp_path: Path, procs: list[Proc]) -> None:
    cfg, url = write_edge_config(tmp_path, "http://127.0.0.1:9", "k")
    edge = edge_proc(tmp_path, cfg, url)
    procs.append(edge)
    edge.start()
    for i in range(3):
        _post(url, i)  # dev-0, dev-1, dev-2
    out = cli("devices", "seen", "--config", str(cfg), check=True).stdout
    assert all(f"dev-{i}" in out for i in range(3)) and "3 devices seen" in out
    out = cli("devices", "forget", "dev-1", "--config", str(cfg), check=True).stdout
    assert out.startswith("forgot dev-1 (last seen ")
    r = cli("devices", "forget", "dev-1", "nobody", "--config", str(cfg))
    assert r.returncode == 1 and "'dev-1' is not known" in r.stderr
    assert "2 devices seen" in cli("devices", "seen", "--config", str(cfg), check=True).stdout
    assert cli("devices", "frobnicate", "--config", str(cfg)).returncode == 2
