"""Real processes end to end: devices -> ``fleet-edge`` -> ``fleet-central`` -> PostgreSQL,
VictoriaMetrics, ClickHouse and Redis (private server instances), with one backend stopped in
the middle of the run and restarted. Every sample a device got a 204 for must be in
VictoriaMetrics exactly once, in ClickHouse's rollups exactly once, its device in PostgreSQL,
and its online state in Redis.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import trio

from tests import servers
from tests.conftest import Backends
from tests.e2e.procs import (
    LoadGenerator,
    Proc,
    central_cli,
    edge_proc,
    register,
    start_central,
    write_edge_config,
)
from tests.readers import ch_query, psql, redis_cli, vm_export

pytestmark = pytest.mark.e2e

def _stored_values(vm_url: str, node: str) -> list[float]:
    return [v for s in vm_export(vm_url, f'load_seq{{node="{node}"}}') for v in s["values"]]


@pytest.mark.parametrize("backend", sorted(servers.BACKENDS))
async def test_backend_stopped_mid_run_loses_and_duplicates_nothing(
        backend: str, backends: Backends, tmp_path: Path, procs: list[Proc]) -> None:
    private, url = servers.start_backend(backend)
    try:
        env = backends.with_env(**{servers.BACKENDS[backend][1]: url,
                                   "FLEET_CENTRAL_ONLINE_TTL_S": "864000000"})
        central_cli("migrate", env=env)
        node, org = f"edge-{backends.tag}", f"org-{backends.tag}"
        key = register(tmp_path, node, env=env, org=org)
        central = start_central(tmp_path, env=env)
        procs.append(central)
        central.start()
        cfg, edge_url = write_edge_config(tmp_path, central.url, key, node_id=node)
        edge = edge_proc(tmp_path, cfg, edge_url)
        procs.append(edge)
        edge.start()

        load = LoadGenerator(edge_url, concurrency=4)
        stop = trio.Event()
        async with trio.open_nursery() as n:
            n.start_soon(load.run, stop)
            await trio.sleep(1.5)
            if backend == "victoria-metrics":  # see test_backends: VM's in-memory buffer
                await trio.to_thread.run_sync(private.terminate)
            else:
                await trio.to_thread.run_sync(private.kill)
            await trio.sleep(2.5)
            acked_while_down = len(load.acked)
            await trio.to_thread.run_sync(private.start)
            await trio.sleep(1.5)
            stop.set()
        assert len(load.acked) > acked_while_down > 0

        expected = load.expected_values()
        vm_url = env["VICTORIA_METRICS_URL"]
        with trio.fail_after(90):
            while len(await trio.to_thread.run_sync(_stored_values, vm_url, node)) < len(
                    expected):
                await trio.sleep(0.5)
        stored = await trio.to_thread.run_sync(_stored_values, vm_url, node)
        dups = [v for v, c in collections.Counter(stored).items() if c > 1]
        assert not dups, f"{len(dups)} samples stored twice in VictoriaMetrics"
        assert sorted(stored) == [float(v) for v in expected]

        db = env["CLICKHOUSE_DATABASE"]
        rows = ch_query(env["CLICKHOUSE_URL"], f"SELECT sum(samples) AS n, sum(sum) AS s FROM "
                                               f"{db}.metric_rollups_1m_v WHERE node = '{node}'")
        assert (int(rows[0]["n"]), rows[0]["s"]) == (len(expected), float(sum(expected)))
        devices = psql(env["DATABASE_URL"], "SELECT count(*) FROM devices WHERE org = "
                                            f"'{org}'")
        assert devices == [["10"]]
        online = redis_cli(env["VALKEY_ADDR"], "HLEN", f"fleetd:{org}:last_seen")
        assert online == "10"
    finally:
        private.stop()
