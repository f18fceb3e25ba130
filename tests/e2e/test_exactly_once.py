"""Exactly once across a real WAN: the two windows of a retried batch, with real processes.

``fleet-edge`` -> (a TCP proxy the test cuts, as a flapping link) -> ``fleet-central`` ->
VictoriaMetrics + PostgreSQL, private instances. VictoriaMetrics runs *without*
``-dedup.minScrapeInterval`` where the test is about central's own guarantee, so a sample
written twice is exported twice and the duplicate check can see it (each test shows its check
seeing a planted duplicate first).

1. A retry racing the first attempt: VictoriaMetrics stalls (SIGSTOP) with a batch in flight, the
   link to the edge is cut, the edge retries while central's first attempt still waits. The
   batch's lease makes the retry wait and answer duplicate: nothing stored twice.
2. Central killed between a sink's write and its mark (PostgreSQL down at that moment, so the
   mark is lost with it): the retry writes the batch to VictoriaMetrics again (the window the
   lease cannot close). With VictoriaMetrics' dedup on,
   the copy collapses; without it, it is visible: the README's delivery table says exactly that.
"""

from __future__ import annotations

import collections
import uuid
from pathlib import Path

import httpx
import pytest
import trio

from tests import servers
from tests.e2e.procs import (
    LoadGenerator,
    Proc,
    central_cli,
    edge_proc,
    free_port,
    register,
    start_central,
    write_edge_config,
)
from tests.readers import metric_total, vm_export
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e


def stored(vm_url: str, node: str) -> list[float]:
    return [v for s in vm_export(vm_url, f'load_seq{{node="{node}"}}') for v in s["values"]]


def assert_duplicates_visible(vm_url: str) -> None:
    """The check below can fail: a sample imported twice is exported twice."""
    line = '{"metric":{"__name__":"dup_canary"},"values":[1],"timestamps":[1795839600000]}'
    for _ in range(2):
        httpx.post(vm_url + "/api/v1/import", content=line, timeout=10).raise_for_status()
    assert [v for s in vm_export(vm_url, "dup_canary") for v in s["values"]] == [1, 1]




async def drained(edge_url: str) -> None:
    """Until the edge has nothing left for central."""
    async with httpx.AsyncClient(timeout=5) as c:
        with trio.fail_after(90):
            while True:
                st = (await c.get(edge_url + "/api/v1/status")).json()
                if st["buffer"]["pending_rows"] == 0:
                    return
                await trio.sleep(0.2)


async def test_retries_racing_a_stalled_backend_store_nothing_twice(
        pg_server: servers.Server, tmp_path: Path, procs: list[Proc]) -> None:
    vm = servers.start_victoria_metrics(dedup=False)
    try:
        await trio.to_thread.run_sync(assert_duplicates_visible, vm.url)
        tag = uuid.uuid4().hex[:10]
        env = {"DATABASE_URL": servers.create_database(pg_server, f"t_{tag}"),
               "VICTORIA_METRICS_URL": vm.url, "FLEET_CENTRAL_RETRY_AFTER_S": "1"}
        central_cli("migrate", env=env)
        node = f"edge-{tag}"
        key = register(tmp_path, node, env=env)
        central = start_central(tmp_path, env=env)
        procs.append(central)
        await trio.to_thread.run_sync(central.start)
        proxy = TcpProxy(int(central.url.rsplit(":", 1)[1]))
        async with trio.open_nursery() as n:
            port = await n.start(proxy.serve)
            cfg, edge_url = write_edge_config(tmp_path, f"http://127.0.0.1:{port}", key,
                                              node_id=node)
            edge = edge_proc(tmp_path, cfg, edge_url)
            procs.append(edge)
            await trio.to_thread.run_sync(edge.start)
            load = LoadGenerator(edge_url, concurrency=4)
            stop = trio.Event()
            n.start_soon(load.run, stop)
            cut = 0
            for _ in range(4):  # four long stalls of VictoriaMetrics, as in the issue
                await trio.sleep(1.0)
                vm.pause()
                await trio.sleep(1.0)  # a batch goes in flight and hangs on VictoriaMetrics
                cut += proxy.cut()  # the link drops; the edge reconnects and retries
                await trio.sleep(3.5)
                vm.resume()
            await trio.sleep(1.0)
            stop.set()
            await drained(edge_url)
            n.cancel_scope.cancel()
        raced = await trio.to_thread.run_sync(
            metric_total, central.url, "fleet_central_batch_lease_waits_total")
        values = await trio.to_thread.run_sync(stored, vm.url, node)
    finally:
        vm.stop()
    expected = load.expected_values()
    assert cut >= 4 and len(expected) > 0
    dups = [v for v, c in collections.Counter(values).items() if c > 1]
    assert not dups, f"{len(dups)} samples stored twice in VictoriaMetrics"
    assert raced >= 1, "no retry raced a first attempt: the test did not test the race"
    assert sorted(values) == [float(v) for v in expected]


@pytest.mark.parametrize("vm_dedup", [True, False], ids=["vm-dedup", "no-vm-dedup"])
async def test_a_central_crash_between_sink_write_and_mark(
        vm_dedup: bool, tmp_path: Path, procs: list[Proc]) -> None:
    pg = servers.start_postgres()
    vm = servers.start_victoria_metrics(dedup=vm_dedup)
    try:
        if not vm_dedup:
            await trio.to_thread.run_sync(assert_duplicates_visible, vm.url)
        env = {"DATABASE_URL": servers.create_database(pg, "fleet"),
               "VICTORIA_METRICS_URL": vm.url, "FLEET_CENTRAL_RETRY_AFTER_S": "1"}
        central_cli("migrate", env=env)
        key = register(tmp_path, "edge-crash", env=env)
        central = start_central(tmp_path, port=free_port(), env=env)
        procs.append(central)
        await trio.to_thread.run_sync(central.start)
        cfg, edge_url = write_edge_config(tmp_path, central.url, key, node_id="edge-crash")
        edge = edge_proc(tmp_path, cfg, edge_url)
        procs.append(edge)
        await trio.to_thread.run_sync(edge.start)
        inserted0 = await trio.to_thread.run_sync(metric_total, vm.url, "vm_rows_inserted_total")

        vm.pause()
        load = LoadGenerator(edge_url, concurrency=1, per_request=20)
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.post(load.url, json=load._payload(0))
            assert r.status_code == 204
        load.acked.append(0)
        await trio.sleep(1.5)  # forwarded: central looked the batch up and waits on VM
        # PostgreSQL goes down with it: the mark that follows the write never reaches it (a
        # paused server would still run the mark queued in its socket once resumed)
        await trio.to_thread.run_sync(pg.kill)
        vm.resume()
        with trio.fail_after(30):  # VictoriaMetrics took the write
            while await trio.to_thread.run_sync(
                    metric_total, vm.url, "vm_rows_inserted_total") < inserted0 + 20:
                await trio.sleep(0.1)
        central.kill9()  # with its mark unrecorded
        central.proc.wait()  # type: ignore[union-attr]
        await trio.to_thread.run_sync(pg.start)
        await trio.to_thread.run_sync(central.start)
        await drained(edge_url)
        inserted = await trio.to_thread.run_sync(metric_total, vm.url, "vm_rows_inserted_total")
        values = await trio.to_thread.run_sync(stored, vm.url, "edge-crash")
    finally:
        vm.stop()
        pg.stop()
    assert inserted - inserted0 == 40, "the retry did not write the batch again: window missed"
    copies = collections.Counter(values)
    assert set(copies) == {float(v) for v in load.expected_values()}
    assert set(copies.values()) == {1 if vm_dedup else 2}
