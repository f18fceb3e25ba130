"""Shared fixtures: an in-process central (embedded SQLite), edge configs pointing at it, and
private instances of the real backend servers (one per session; each test gets its own
PostgreSQL database, ClickHouse database, and unique organisation/node names)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from central.pipeline import Pipeline
from central.server import CentralHandle, run_central
from central.sinks.sqlite import SQLiteStore
from edge_node.config import EdgeConfig
from tests import servers


@dataclass
class Central:
    handle: CentralHandle
    store: SQLiteStore
    node_id: str
    key: str

    @property
    def url(self) -> str:
        return self.handle.url

    def counts(self) -> dict[str, int]:
        return self.store.counts()


@pytest.fixture
async def central(tmp_path: Path) -> AsyncIterator[Central]:
    store = SQLiteStore(tmp_path / "central")
    key = store.add_node("edge-1", "org-a")
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(partial(run_central, Pipeline(store), "127.0.0.1:0",
                                             graceful_s=1))
        yield Central(handle, store, "edge-1", key)
        handle.stop()


def edge_config(tmp_path: Path, central: Central | None = None, **overrides: Any) -> EdgeConfig:
    data: dict[str, Any] = {
        "node_id": central.node_id if central else "edge-1",
        "listen": "127.0.0.1:0",
        "data_dir": str(tmp_path / "edge"),
        "drain_timeout_s": 2.0,
        "central": {"url": central.url if central else "http://127.0.0.1:9",
                    "api_key": central.key if central else "k",
                    "backoff_initial_s": 0.05, "backoff_max_s": 0.5},
        "buffer": {"roll_interval_s": 0.1, "commit_window_ms": 1.0},
        "host": {"enabled": False},  # the tests count exact rows; test_status turns it on
    }
    for k, v in overrides.items():
        if isinstance(v, dict):
            data.setdefault(k, {}).update(v)
        else:
            data[k] = v
    return EdgeConfig.from_mapping(data, env={})


def jsonl(path: Path) -> list[Any]:
    """The complete JSON lines of ``path`` ([] if absent): a writer may be mid-line."""
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().split("\n")[:-1] if x]


async def wait_for(pred: Any, timeout: float = 20.0, interval: float = 0.05) -> None:
    """Poll ``pred()`` (sync or async) until true; fail after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while True:
            got = pred()
            if hasattr(got, "__await__"):
                got = await got
            if got:
                return
            await trio.sleep(interval)


# -- real backend servers ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[servers.Server]:
    srv = servers.start_postgres()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def vm_server() -> Iterator[servers.Server]:
    # without -dedup.minScrapeInterval: a sample written twice is exported twice, so every
    # exactly-once check against it can see a duplicate (central's own guarantee is tested)
    srv = servers.start_victoria_metrics(dedup=False)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def vm_dedup_server() -> Iterator[servers.Server]:
    """With ``-dedup.minScrapeInterval=1ms``, as the README asks: for the tests of the window
    only backend dedup covers (a sink write whose mark was lost)."""
    srv = servers.start_victoria_metrics(dedup=True)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def loki_server() -> Iterator[servers.Server]:
    """The real Grafana Loki beside the project (../shared/bin/loki); skipped where it is
    missing, a failure under CI (CI always has ../shared)."""
    try:
        srv = servers.start_loki()
    except servers.ServerMissing as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def ch_server() -> Iterator[servers.Server]:
    srv = servers.start_clickhouse()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[servers.Server]:
    srv = servers.start_redis()
    yield srv
    srv.stop()


@dataclass
class Backends:
    """Environment for a central that uses every real backend, private to one test."""

    env: dict[str, str]
    tag: str  # unique per test: use it in org and node names

    def with_env(self, **extra: str) -> dict[str, str]:
        return {**self.env, **extra}


@pytest.fixture
def backends(pg_server: servers.Server, vm_server: servers.Server, ch_server: servers.Server,
             redis_server: servers.Server) -> Backends:
    tag = uuid.uuid4().hex[:10]
    return Backends(env={
        "DATABASE_URL": servers.create_database(pg_server, f"t_{tag}"),
        "VICTORIA_METRICS_URL": vm_server.url,
        "CLICKHOUSE_URL": ch_server.url,
        "CLICKHOUSE_DATABASE": f"t_{tag}",
        "VALKEY_ADDR": redis_server.url,
        "DATABASE_POOL_SIZE": "4",
        "FLEET_CENTRAL_RETRY_AFTER_S": "1",
        "FLEET_CENTRAL_SINK_TIMEOUT_S": "5",
    }, tag=tag)
