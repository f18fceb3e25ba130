"""Central's Loki sink against a real Grafana Loki 3.4.6 (``../shared/bin/loki``, one per test
session): logs exactly once under rewrites and under the retry race, tenants isolated,
structured metadata, and what happens to lines older (or further ahead) than Loki accepts.

Loki collapses an entry identical to one it holds, so reading the lines back cannot show that
central sent a batch twice; ``loki_distributor_lines_received_total{tenant}`` (lines Loki was
handed, duplicates included) can, and the race test checks it.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import pytest
import trio

from central.pipeline import Pipeline
from central.server import run_central
from central.sinks.loki import LokiSink
from central.sinks.sqlite import SQLiteStore
from edge_node.wire import BATCH_CONTENT_TYPE, Batch, Columns, encode_batch, encode_segment
from tests import servers

DAY_MS = 86_400_000


@dataclass
class Central:
    url: str
    store: SQLiteStore
    pipeline: Pipeline
    loki: servers.Server
    keys: dict[str, str]  # node -> key
    orgs: dict[str, str]  # node -> org

    async def post(self, node: str, body: bytes, timeout: float = 30) -> httpx.Response:
        async with httpx.AsyncClient(timeout=timeout) as c:
            return await c.post(self.url + "/api/v1/batches", content=body, headers={
                "Authorization": f"Bearer {self.keys[node]}",
                "Content-Type": BATCH_CONTENT_TYPE})

    def refused(self, reason: str) -> float:
        return self.pipeline.m_refused.get("loki", reason)


@asynccontextmanager
async def central_with_loki(tmp_path: Path, loki: servers.Server, nodes: dict[str, str],
                            **sink: object) -> AsyncIterator[Central]:
    """Central in-process (embedded store) with the real Loki as its logs sink."""
    store = SQLiteStore(tmp_path / "central")
    keys = {node: store.add_node(node, org) for node, org in nodes.items()}
    pipeline = Pipeline(store, [LokiSink(loki.url, timeout_s=30, **sink)],  # type: ignore[arg-type]
                        sink_timeout_s=30)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(partial(run_central, pipeline, "127.0.0.1:0",
                                             graceful_s=1))
        yield Central(handle.url, store, pipeline, loki, keys, nodes)
        handle.stop()


def logs(node: str, seq: int, lines: list[tuple[int, str]], labels: dict[str, str] | None = None
         ) -> bytes:
    cols = Columns("logs", np.zeros(len(lines), dtype=np.int64),
                   np.array([t for t, _ in lines], dtype=np.int64),
                   lines=[ln.encode() for _, ln in lines])
    lbl = {"device": "pump-1", "app": "pumpd", **(labels or {})}
    return encode_batch(Batch(node, seq, "logs", encode_segment(cols), len(lines), epoch="e1",
                              series_defs=[(0, lbl)]))


async def query(loki: servers.Server, org: str, selector: str, since_ms: int = 20 * DAY_MS
                ) -> list[dict[str, object]]:
    now_ns = time.time_ns()
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.get(loki.url + "/loki/api/v1/query_range", headers={"X-Scope-OrgID": org},
                        params={"query": selector, "limit": 5000,
                                "start": str(now_ns - since_ms * 1_000_000),
                                "end": str(now_ns + 3 * DAY_MS * 1_000_000)})
        r.raise_for_status()
        return r.json()["data"]["result"]  # type: ignore[no-any-return]


async def lines_of(loki: servers.Server, org: str, node: str) -> list[str]:
    return sorted(v[1] for s in await query(loki, org, f'{{node="{node}"}}')
                  for v in s["values"])  # type: ignore[attr-defined]


async def received(loki: servers.Server, org: str) -> float:
    """Lines Loki's distributor was handed for tenant ``org``, duplicates included."""
    async with httpx.AsyncClient(timeout=10) as c:
        text = (await c.get(loki.url + "/metrics")).text
    m = re.search(rf'^loki_distributor_lines_received_total{{[^}}]*tenant="{org}"[^}}]*}} (\S+)$',
                  text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:8]


async def test_lines_arrive_once_even_when_a_lost_mark_rewrites_them(
        tmp_path: Path, loki_server: servers.Server, tag: str) -> None:
    node, org = f"edge-{tag}", f"org-{tag}"
    now = int(time.time() * 1000)
    body = logs(node, 1, [(now, "pressure high"), (now + 1, "pump stopped"),
                          (now + 2, "pump started")])
    async with central_with_loki(tmp_path, loki_server, {node: org}) as central:
        assert (await central.post(node, body)).json()["status"] == "applied"
        with trio.fail_after(30):
            while len(await lines_of(loki_server, org, node)) < 3:
                await trio.sleep(0.2)
        # as if central had crashed between the push and its mark: the retry pushes again
        central.store.open_sync().execute("DELETE FROM applied")
        assert (await central.post(node, body)).json()["status"] == "applied"
        assert await received(loki_server, org) == 6  # handed twice...
        await trio.sleep(1)
        assert await lines_of(loki_server, org, node) == [
            "pressure high", "pump started", "pump stopped"]  # ...stored once


async def test_a_retry_racing_a_stalled_loki_pushes_once(
        tmp_path: Path, loki_server: servers.Server, tag: str) -> None:
    node, org = f"edge-{tag}", f"org-{tag}"
    now = int(time.time() * 1000)
    body = logs(node, 1, [(now + i, f"line {i}") for i in range(50)])
    async with central_with_loki(tmp_path, loki_server, {node: org}) as central:
        loki_server.pause()
        try:
            with pytest.raises(httpx.ReadTimeout):  # the edge gives up: the link dropped
                await central.post(node, body, timeout=1.0)
            retry: list[httpx.Response] = []

            async def post_retry() -> None:
                retry.append(await central.post(node, body))

            async with trio.open_nursery() as n:
                n.start_soon(post_retry)
                await trio.sleep(2.0)  # Loki stalls a while longer, the retry waits
                loki_server.resume()
        finally:
            loki_server.resume()
        assert retry[0].json()["status"] == "duplicate"
        assert await received(loki_server, org) == 50  # handed once: no second push
        with trio.fail_after(30):
            while len(await lines_of(loki_server, org, node)) < 50:
                await trio.sleep(0.2)


async def test_tenants_are_isolated_and_extra_labels_are_structured_metadata(
        tmp_path: Path, loki_server: servers.Server, tag: str) -> None:
    a, b = f"edge-a-{tag}", f"edge-b-{tag}"
    org_a, org_b = f"org-a-{tag}", f"org-b-{tag}"
    now = int(time.time() * 1000)
    async with central_with_loki(tmp_path, loki_server, {a: org_a, b: org_b}) as central:
        r = await central.post(a, logs(a, 1, [(now, "from a")], {"firmware": "1.2.3"}))
        assert r.json()["status"] == "applied"
        assert (await central.post(b, logs(b, 1, [(now, "from b")]))).status_code == 200
        with trio.fail_after(30):
            while not await query(loki_server, org_a, '{app="pumpd"}'):
                await trio.sleep(0.2)
        seen_a = await query(loki_server, org_a, '{app="pumpd"}')
        seen_b = await query(loki_server, org_b, '{app="pumpd"}')
        assert [v[1] for s in seen_a for v in s["values"]] == ["from a"]  # type: ignore[attr-defined]
        assert [v[1] for s in seen_b for v in s["values"]] == ["from b"]  # type: ignore[attr-defined]
        (stream,) = seen_a
        labels = stream["stream"]
        assert isinstance(labels, dict)
        assert (labels["org"], labels["node"], labels["device"]) == (org_a, a, "pump-1")
        assert labels["firmware"] == "1.2.3"  # returned with the entry...
        async with httpx.AsyncClient(timeout=10) as c:
            names = (await c.get(loki_server.url + "/loki/api/v1/labels",
                                 headers={"X-Scope-OrgID": org_a})).json()["data"]
        assert "firmware" not in names and "device" in names  # ...but not an index label


async def test_lines_older_or_further_ahead_than_loki_accepts_are_counted_not_sent(
        tmp_path: Path, loki_server: servers.Server, tag: str) -> None:
    node, org = f"edge-{tag}", f"org-{tag}"
    now = int(time.time() * 1000)
    body = logs(node, 1, [(now - 10 * DAY_MS, "ten days old"), (now, "fresh"),
                          (now + 1, "fresh too"), (now + 2 * DAY_MS, "two days ahead")])
    async with central_with_loki(tmp_path, loki_server, {node: org}) as central:
        r = await central.post(node, body)
        assert r.json()["status"] == "applied"  # the batch is applied, not dead-lettered
        assert (central.refused("too_old"), central.refused("too_new")) == (1, 1)
        assert await received(loki_server, org) == 2  # Loki was not handed what it refuses
        with trio.fail_after(30):
            while len(await lines_of(loki_server, org, node)) < 2:
                await trio.sleep(0.2)
        assert await lines_of(loki_server, org, node) == ["fresh", "fresh too"]


async def test_lines_loki_itself_refuses_are_a_partial_success(
        tmp_path: Path, loki_server: servers.Server, tag: str) -> None:
    """Central set to send a month back while Loki keeps a week: Loki stores the fresh lines
    and answers 400 for the old one. Before, that 400 became a 422 and the edge dead-lettered
    the whole batch (the fresh lines with it); now the batch is applied and the refusal counted."""
    node, org = f"edge-{tag}", f"org-{tag}"
    now = int(time.time() * 1000)
    body = logs(node, 1, [(now - 10 * DAY_MS, "ten days old"), (now, "fresh")])
    async with central_with_loki(tmp_path, loki_server, {node: org},
                                 max_age_s=30 * 86400) as central:
        r = await central.post(node, body)
        assert r.status_code == 200 and r.json()["status"] == "applied", r.text
        assert central.refused("invalid") == 1
        assert await received(loki_server, org) == 2  # handed both; it kept one
        with trio.fail_after(30):
            while not await lines_of(loki_server, org, node):
                await trio.sleep(0.2)
        assert await lines_of(loki_server, org, node) == ["fresh"]
