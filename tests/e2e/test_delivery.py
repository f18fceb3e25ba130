"""Delivery guarantees with real processes: kill -9, central outages, SIGTERM.

Each test runs ``fleet-edge run`` and ``fleet-central run`` as separate OS processes, drives
them with a load generator that records which requests got a 204, and checks at the end that
central stored every acknowledged sample exactly once.
"""

from __future__ import annotations

import collections
import random
import time
from pathlib import Path

import httpx
import pytest
import trio

from tests.e2e.procs import (
    LoadGenerator,
    Proc,
    edge_proc,
    register,
    start_central,
    stored_sequence_numbers,
    write_edge_config,
)
from tests.readers import metric_total

pytestmark = pytest.mark.e2e


def _assert_exactly_once(tmp: Path, load: LoadGenerator) -> None:
    stored = stored_sequence_numbers(tmp)
    counts = collections.Counter(stored)
    dups = {v: c for v, c in counts.items() if c > 1}
    assert not dups, f"{len(dups)} samples stored more than once"
    missing = set(load.expected_values()) - set(counts)
    assert not missing, f"{len(missing)} acknowledged samples never reached central"


async def _drain(tmp: Path, load: LoadGenerator, timeout: float = 60) -> None:
    """Until central holds every acknowledged sample (a count would not do: a request the
    edge committed while its 204 was lost to a kill is stored too, and would make up for one
    still on its way)."""
    want = set(load.expected_values())
    with trio.move_on_after(timeout):  # past it, the exactly-once check names what is missing
        while not want <= set(await trio.to_thread.run_sync(stored_sequence_numbers, tmp)):
            await trio.sleep(0.2)


def _cluster(tmp: Path, procs: list[Proc], extra: str = "") -> tuple[Proc, Proc, str]:
    """Start central, register a node, start its edge; both are stopped after the test."""
    central = start_central(tmp)
    procs.append(central)
    key = register(tmp)
    central.start()
    cfg, url = write_edge_config(tmp, central.url, key, extra=extra)
    edge = edge_proc(tmp, cfg, url)
    procs.append(edge)
    edge.start()
    return central, edge, url


async def test_kill9_repeatedly_loses_nothing_acknowledged(tmp_path: Path,
                                                           procs: list[Proc]) -> None:
    central, edge, url = _cluster(tmp_path, procs)
    load = LoadGenerator(url)
    stop = trio.Event()
    rng = random.Random(42)
    async with trio.open_nursery() as n:
        n.start_soon(load.run, stop)
        for _ in range(4):
            await trio.sleep(rng.uniform(0.5, 1.5))
            cut = load.cut
            edge.kill9()
            await trio.to_thread.run_sync(edge.start)
            assert load.cut > cut, "the kill cut no request in flight: it tested nothing"
            before = len(load.acked)
            with trio.fail_after(20):  # and the restarted node takes requests again
                while len(load.acked) <= before:
                    await trio.sleep(0.05)
        await trio.sleep(1.0)
        stop.set()
    assert len(load.acked) > 50, "the load generator barely got through"
    await _drain(tmp_path, load)
    _assert_exactly_once(tmp_path, load)


async def test_central_outage_then_everything_arrives_once(tmp_path: Path,
                                                           procs: list[Proc]) -> None:
    central, edge, url = _cluster(tmp_path, procs)
    load = LoadGenerator(url, concurrency=4)
    stop = trio.Event()
    async with trio.open_nursery() as n:
        n.start_soon(load.run, stop)
        await trio.sleep(1.0)
        central.kill9()  # the WAN goes down mid-send
        await trio.sleep(2.0)
        acked_while_down = len(load.acked)
        await trio.to_thread.run_sync(central.start)
        await trio.sleep(1.0)
        stop.set()
    assert len(load.acked) > acked_while_down > 0
    await _drain(tmp_path, load)
    _assert_exactly_once(tmp_path, load)
    metrics = httpx.get(url + "/metrics").text
    assert 'fleet_edge_forward_errors_total{reason="network"}' in metrics


async def test_sigterm_drains_and_exits_zero(tmp_path: Path, procs: list[Proc]) -> None:
    central, edge, url = _cluster(tmp_path, procs)
    load = LoadGenerator(url)
    stop = trio.Event()
    async with trio.open_nursery() as n:
        n.start_soon(load.run, stop)
        await trio.sleep(1.5)
        t0 = time.monotonic()
        code = await trio.to_thread.run_sync(edge.terminate)
        took = time.monotonic() - t0
        stop.set()
    assert code == 0, (tmp_path / "edge.log").read_text()
    assert took < 15
    edge.start()  # whatever was buffered but not yet forwarded goes out now
    await _drain(tmp_path, load)
    _assert_exactly_once(tmp_path, load)


async def test_backlog_merge_and_kill9_during_drain(tmp_path: Path, procs: list[Proc]) -> None:
    """A long outage: small segments are merged into big ones; then kill -9 mid-drain."""
    central, edge, url = _cluster(
        tmp_path, procs, extra="merge_after_s = 0.3\nsegment_max_samples = 5000\n")
    central.kill9()  # the WAN is down from the start
    load = LoadGenerator(url, concurrency=4)
    stop = trio.Event()
    async with trio.open_nursery() as n:
        n.start_soon(load.run, stop)
        await trio.sleep(4.0)
        stop.set()
    assert metric_total(url, "fleet_edge_segments_merged_total") > 0, \
        "the backlog was never merged"
    await trio.to_thread.run_sync(central.start)
    want = len(load.acked) * load.per_request
    last = 0
    for _ in range(2):  # kill the edge while it drains (central has some, not all), twice
        with trio.fail_after(30):
            while (stored := len(stored_sequence_numbers(tmp_path))) <= last:
                await trio.sleep(0.01)
        edge.kill9()
        assert stored < want, "the backlog had drained before the kill: it tested nothing"
        last = len(await trio.to_thread.run_sync(stored_sequence_numbers, tmp_path))
        await trio.to_thread.run_sync(edge.start)
    await _drain(tmp_path, load)
    _assert_exactly_once(tmp_path, load)


async def test_status_command_reads_the_running_node(tmp_path: Path, procs: list[Proc]) -> None:
    import json
    import subprocess
    import sys

    _, _, url = _cluster(tmp_path, procs)
    r = httpx.post(url + "/api/v1/ingest", json={"device_id": "d", "heartbeat": True,
                                                  "metrics": [{"name": "x", "value": 1}]})
    assert r.status_code == 204
    cfg = tmp_path / "edge.toml"

    def status(*extra: str) -> str:
        return subprocess.run([sys.executable, "-m", "edge_node.cli", "status", "--config",
                               str(cfg), *extra], check=True, capture_output=True,
                              text=True).stdout

    with trio.fail_after(20):
        while (doc := json.loads(status("--json")))["forward"]["acked_total"] < 2:
            await trio.sleep(0.2)
    assert doc["buffer"]["pending_rows"] == 0 and doc["not_ready"] == []
    assert [d["device"] for d in doc["devices"]] == ["d"]
    text = status()
    assert "node edge-e2e" in text and ": ready" in text
    assert "devices   1 online, 0 offline" in text
    assert "backlog   0 rows waiting" in text


async def test_a_client_that_hangs_up_mid_body_stores_nothing(tmp_path: Path,
                                                              procs: list[Proc]) -> None:
    import socket

    _, edge, url = _cluster(tmp_path, procs)
    port = int(url.rsplit(":", 1)[1])
    body = b'{"device_id": "d", "metrics": [{"name": "x", "value": 1}]}'
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: %d\r\n\r\n" % (len(body) + 100) + body)
    await trio.sleep(0.5)
    metrics = httpx.get(url + "/metrics").text
    assert "fleet_edge_buffer_commits_total 0" in metrics
    assert edge.proc is not None and edge.proc.poll() is None
