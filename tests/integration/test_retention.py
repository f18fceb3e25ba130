"""Retention on the real servers: PostgreSQL native partitions and ClickHouse 18.16 partitions
(no TTL there) are dropped once older than the configured retention; rows already older than
it are counted and not written."""

from __future__ import annotations

import time

import numpy as np
import trio_asyncio

from central.pipeline import Pipeline
from central.sinks.clickhouse import ClickHouseSink
from central.sinks.postgres import PostgresStore
from edge_node.wire import Batch, Columns
from tests import servers
from tests.conftest import Backends
from tests.readers import ch_query, psql

DAY_MS = 86_400_000


def _heartbeats(node: str, seq: int, ts: list[int]) -> tuple[Batch, Columns]:
    cols = Columns("heartbeats", np.ones(len(ts), dtype=np.int64), np.array(ts, dtype=np.int64))
    return Batch(node, seq, "heartbeats", b"", len(ts), epoch="e",
                 series_defs=[(1, {"__name__": "fleet_heartbeat", "device": "d1"})]), cols


async def test_postgres_partitions_past_retention_are_dropped(backends: Backends) -> None:
    url = backends.env["DATABASE_URL"]
    now = int(time.time() * 1000)
    async with trio_asyncio.open_loop():
        store = PostgresStore(url, retention_days=2, chunk_seconds=86_400)
        await store.migrate()
        await store.open()
        try:
            key = await store.add_node("gw", "acme")
            node = await store.authenticate(key)
            assert node is not None
            pipeline = Pipeline(store)
            batch, cols = _heartbeats("gw", 1, [now - 5 * DAY_MS, now - DAY_MS, now])
            assert await pipeline.apply(node, batch, cols)
            assert 'fleet_central_expired_rows_total{sink="postgresql"} 1' in \
                pipeline.registry.render()
            parts = psql(url, "SELECT count(*) FROM pg_inherits i JOIN pg_class p ON "
                              "p.oid = i.inhparent WHERE p.relname = 'device_status'")
            assert parts == [["2"]]  # yesterday's and today's; none for the expired row
            dropped = await store.expire(time.time() + 2 * 86_400)
            assert len(dropped) == 1 and dropped[0].startswith("device_status_p")
            assert psql(url, "SELECT count(*) FROM device_status") == [["1"]]
        finally:
            await store.close()


async def test_clickhouse_without_ttl_drops_expired_partitions(ch_server: servers.Server,
                                                               backends: Backends) -> None:
    sink = ClickHouseSink(ch_server.url, database=f"ret_{backends.tag}", retention_days=2)
    try:
        await sink.migrate()
        await sink.open()
        assert await sink.server_version() < (19, 6)  # the Debian package: no TTL
        ddl = ch_query(ch_server.url, f"SHOW CREATE TABLE ret_{backends.tag}.metric_rollups_1m")
        assert "TTL" not in ddl[0]["statement"]
        from central.model import NodeInfo
        from central.router import make_job

        node = NodeInfo("gw", "acme", 0)
        now = int(time.time() * 1000)
        cols = Columns("metrics", np.ones(3, dtype=np.int64),
                       np.array([now - 9 * DAY_MS, now - DAY_MS, now], dtype=np.int64),
                       np.array([1.0, 2.0, 3.0]))
        job = make_job(node, Batch("gw", 1, "metrics", b"", 3, epoch="e"), cols,
                       {1: {"__name__": "m", "device": "d"}}, now)
        await sink.write(job)
        assert job.expired == {"clickhouse": 1}
        table = f"ret_{backends.tag}.metric_rollups_1m"
        assert ch_query(ch_server.url, f"SELECT count() AS n FROM {table}") == [{"n": "2"}]
        today = time.time() // 86_400 * 86_400
        # retention 2 days, evaluated 2 days and an hour after today began: yesterday's day
        # partition is entirely older than the cutoff, today's is not
        dropped = await sink.expire(today + 2 * 86_400 + 3600)
        assert len(dropped) == 1
        assert ch_query(ch_server.url, f"SELECT count() AS n FROM {table}") == [{"n": "1"}]
    finally:
        await sink.close()
