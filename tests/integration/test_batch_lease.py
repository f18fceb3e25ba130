"""The per-batch lease (issue: a retry racing a slow first attempt wrote a batch twice).

A sink that holds every write until the test opens its gate stands in for a stalled backend;
it counts the writes it was handed, so a second write of a batch is seen. In-process central
over real HTTP (embedded store) for the client-gone-away race; two pipelines on one real
PostgreSQL for the race between central instances.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import pytest
import trio
import trio_asyncio

from central.errors import SinkUnavailable
from central.lease import LeaseTimes
from central.model import Job, NodeInfo
from central.pipeline import Pipeline
from central.server import run_central
from central.sinks.postgres import PostgresStore
from central.sinks.postgres import leases as pg_leases
from central.sinks.sqlite import SQLiteStore
from edge_node.wire import BATCH_CONTENT_TYPE, Batch, Columns, encode_batch, encode_segment
from tests import servers

NOW = 1_795_839_600_000


class GatedSink:
    """Takes metrics; each write waits for ``gate``; ``handed`` counts writes per batch seq."""

    name = "gated"
    kinds = frozenset({"metrics"})
    stores_rows = True

    def __init__(self, gate: trio.Event, handed: list[int]) -> None:
        self.gate = gate
        self.handed = handed
        self.finished: list[int] = []

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ready(self) -> bool:
        return True

    async def write(self, job: Job) -> None:
        self.handed.append(job.seq)
        await self.gate.wait()
        self.finished.append(job.seq)


def batch(node: str, seq: int) -> tuple[Batch, Columns]:
    cols = Columns("metrics", np.array([1, 1], dtype=np.int64),
                   np.array([NOW, NOW + 1], dtype=np.int64), np.array([1.0, 2.0]))
    return Batch(node, seq, "metrics", encode_segment(cols), 2, epoch="e1",
                 series_defs=[(1, {"__name__": "a", "device": "d1"})]), cols


async def test_a_retry_racing_a_slow_first_attempt_writes_once(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "central")
    key = store.add_node("edge-1", "org-a")
    gate, handed = trio.Event(), []
    sink = GatedSink(gate, handed)
    pipeline = Pipeline(store, [sink], sink_timeout_s=30)
    body = encode_batch(batch("edge-1", 1)[0])
    headers = {"Authorization": f"Bearer {key}", "Content-Type": BATCH_CONTENT_TYPE}
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(partial(run_central, pipeline, "127.0.0.1:0",
                                             graceful_s=1))
        url = handle.url + "/api/v1/batches"
        # the edge's first attempt: the link drops while the backend stalls
        async with httpx.AsyncClient(timeout=0.5) as c:
            with pytest.raises(httpx.ReadTimeout):
                await c.post(url, content=body, headers=headers)
        assert handed == [1]
        retry: list[httpx.Response] = []

        async def post_retry() -> None:
            async with httpx.AsyncClient(timeout=30) as c:
                retry.append(await c.post(url, content=body, headers=headers))

        nursery.start_soon(post_retry)
        await trio.sleep(0.5)  # the retry is in, waiting on the first attempt's lease
        assert retry == [] and handed == [1]
        gate.set()
        with trio.fail_after(10):
            while not retry:
                await trio.sleep(0.02)
        handle.stop()
    assert retry[0].status_code == 200 and retry[0].json()["status"] == "duplicate"
    assert handed == [1]  # the backend was handed the batch once
    assert sink.finished == [1]  # and the first attempt was not cancelled by the hang-up
    assert store.counts().get("metrics", 0) == 0  # the sink stores metrics, not the state
    (n,) = store.open_sync().execute("SELECT count(*) FROM applied").fetchone()
    assert n == 1
    assert pipeline.m_lease_waits.get("this instance") == 1
    assert len(pipeline.leases) == 0


@pytest.fixture
def pg_url(pg_server: servers.Server) -> str:
    return servers.create_database(pg_server, f"t_{uuid.uuid4().hex[:10]}")


@asynccontextmanager
async def instances(url: str, n: int, sink_timeout_s: float, gate: trio.Event,
                    handed: list[int], times: LeaseTimes | None = None
                    ) -> AsyncIterator[tuple[list[Pipeline], NodeInfo]]:
    """``n`` central pipelines on one PostgreSQL database (as behind a load balancer)."""
    async with trio_asyncio.open_loop():
        admin = PostgresStore(url)
        await admin.migrate()
        key = await admin.add_node("edge-1", "org-a")
        pipes = [Pipeline(PostgresStore(url, pool_size=3), [GatedSink(gate, handed)],
                          sink_timeout_s=sink_timeout_s, lease_times=times) for _ in range(n)]
        for p in pipes:
            await p.open()
        try:
            node = await pipes[0].state.authenticate(key)
            assert node is not None
            yield pipes, node
        finally:
            for p in pipes:
                await p.close()


async def first_then_retry(pipes: list[Pipeline], node: NodeInfo, gate: trio.Event,
                           handed: list[int], hold_s: float) -> dict[int, bool]:
    """Instance 0 applies batch 1 and stalls in the sink; instance 1 retries it meanwhile; the
    gate opens after ``hold_s``. Returns each attempt's outcome (True: applied)."""
    b, cols = batch("edge-1", 1)
    results: dict[int, bool] = {}

    async def attempt(i: int) -> None:
        results[i] = await pipes[i].apply(node, b, cols)

    async with trio.open_nursery() as n:
        n.start_soon(attempt, 0)
        with trio.fail_after(10):
            while not handed:
                await trio.sleep(0.01)
        n.start_soon(attempt, 1)  # the retry, on the other instance
        await trio.sleep(hold_s)
        assert handed == [1] and results == {}  # the retry waits, it does not write
        gate.set()
    return results


async def test_two_central_instances_apply_a_batch_once(pg_url: str) -> None:
    gate, handed = trio.Event(), []
    async with instances(pg_url, 2, 30, gate, handed) as (pipes, node):
        assert await first_then_retry(pipes, node, gate, handed, 0.5) == {0: True, 1: False}
        assert handed == [1]
        assert pipes[1].m_lease_waits.get("another instance") == 1
        # released: nothing left in the lease table
        assert await pipes[0].state._with_conn(
            lambda c: c.fetchval("SELECT count(*) FROM batch_leases")) == 0


async def test_a_lease_whose_holder_died_is_taken_over(pg_url: str) -> None:
    gate, handed = trio.Event(), []
    gate.set()
    async with instances(pg_url, 1, 5.0, gate, handed, LeaseTimes(hold_s=10, ttl_s=1.0)
                         ) as ([pipe], node):
        b, cols = batch("edge-1", 1)
        times = pipe.lease_times
        # an instance claimed the batch and was kill -9'd: its row stays until it expires
        assert await pipe.state._with_conn(lambda c: pg_leases.claim(
            c, "edge-1", "e1", 1, "dead-instance", times.ttl_s))
        assert await pipe.apply(node, b, cols) is True
        assert handed == [1]
        assert pipe.m_lease_waits.get("another instance") == 1
        # a lease still live blocks for at most wait_s, then the attempt is told to retry
        assert await pipe.state._with_conn(lambda c: pg_leases.claim(
            c, "edge-1", "e1", 2, "slow-instance", 3600))
        with pytest.raises(SinkUnavailable, match="still being applied by another attempt"):
            await pipe.apply(node, *batch("edge-1", 2))
        assert handed == [1]


async def test_a_long_apply_keeps_its_lease_past_the_ttl(pg_url: str) -> None:
    gate, handed = trio.Event(), []
    times = LeaseTimes(hold_s=10, ttl_s=0.5)
    async with instances(pg_url, 2, 5.0, gate, handed, times) as (pipes, node):
        # held four times the ttl: unrenewed, the lease would have been free long before
        results = await first_then_retry(pipes, node, gate, handed, 4 * times.ttl_s)
        assert results == {0: True, 1: False} and handed == [1]


async def test_a_holder_that_lost_its_lease_stops_unacknowledged(pg_url: str) -> None:
    gate, handed = trio.Event(), []
    async with instances(pg_url, 1, 5.0, gate, handed, LeaseTimes(hold_s=20, ttl_s=1.5)
                         ) as ([pipe], node):
        b, cols = batch("edge-1", 1)
        outcome: list[BaseException | bool] = []

        async def attempt() -> None:
            try:
                outcome.append(await pipe.apply(node, b, cols))
            except BaseException as exc:  # whatever it is, the test looks at it
                outcome.append(exc)

        async with trio.open_nursery() as n:
            n.start_soon(attempt)
            with trio.fail_after(10):
                while not handed:
                    await trio.sleep(0.01)
            # as if this holder's renewals had not reached the database and another attempt
            # took the expired lease over
            await pipe.state._with_conn(lambda c: c.execute(
                "UPDATE batch_leases SET holder = 'another-attempt'"))
        (exc,) = outcome
        assert type(exc) is SinkUnavailable, repr(exc)  # a 503 for the edge, not a 500
        assert "lost the lease of batch e1/1 (taken over by another attempt)" in str(exc)
        sink = pipe.sinks[0]
        assert isinstance(sink, GatedSink) and sink.finished == []  # the write was stopped
        assert await pipe.state._with_conn(
            lambda c: c.fetchval("SELECT count(*) FROM applied")) == 0


async def test_a_holder_whose_renewals_stall_stops_before_its_lease_runs_out(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Renewals queued behind a busy pool: the holder gives up on its own before the ttl, so
    an instance that then takes the expired lease over never writes beside it."""
    gate, handed = trio.Event(), []
    times = LeaseTimes(hold_s=20, ttl_s=1.5)
    async with instances(pg_url, 2, 5.0, gate, handed, times) as (pipes, node):
        real_renew = pg_leases.renew

        async def slow_renew(*args: object) -> bool:
            await asyncio.sleep(10)  # the pool is starved: this renewal comes far too late
            return await real_renew(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(pg_leases, "renew", slow_renew)
        b, cols = batch("edge-1", 1)
        outcome: dict[int, BaseException | bool] = {}

        async def attempt(i: int) -> None:
            try:
                outcome[i] = await pipes[i].apply(node, b, cols)
            except BaseException as exc:
                outcome[i] = exc

        async with trio.open_nursery() as n:
            n.start_soon(attempt, 0)
            with trio.fail_after(10):
                while not handed:
                    await trio.sleep(0.01)
            with trio.fail_after(times.ttl_s + 1):  # it stops before the lease runs out
                while 0 not in outcome:
                    await trio.sleep(0.01)
            n.start_soon(attempt, 1)  # the retry takes the lease over once it expires
            with trio.fail_after(10):
                while len(handed) < 2:
                    await trio.sleep(0.01)
            gate.set()
        assert isinstance(outcome[0], SinkUnavailable) and "not renewed" in str(outcome[0])
        assert outcome[1] is True
        sinks = [p.sinks[0] for p in pipes]
        # the first attempt's write was stopped: only the second one finished
        assert [s.finished for s in sinks if isinstance(s, GatedSink)] == [[], [1]]


async def test_a_sink_error_under_the_lease_reaches_the_handler_as_itself(pg_url: str) -> None:
    gate, handed = trio.Event(), []
    # sink timeout 0.2 s: the gated write never answers, the pipeline gives up on it (the
    # lease's bounds roomy, so a slow box cannot end the apply first)
    async with instances(pg_url, 1, 0.2, gate, handed, LeaseTimes(hold_s=20, ttl_s=5)
                         ) as ([pipe], node):
        with pytest.raises(SinkUnavailable, match=r"gated: no answer within 0\.2 s") as caught:
            await pipe.apply(node, *batch("edge-1", 1))
        assert type(caught.value) is SinkUnavailable  # not an ExceptionGroup: app.py maps it
        assert await pipe.state._with_conn(
            lambda c: c.fetchval("SELECT count(*) FROM batch_leases")) == 0
