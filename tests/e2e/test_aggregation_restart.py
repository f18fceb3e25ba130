"""Stream aggregation survives kill -9 mid-window, with real ``fleet-edge`` and ``fleet-central``
processes: the rollups central receives for the window equal what one uninterrupted pass of
the pure aggregator computes over the very samples the edge stored."""

from __future__ import annotations

import json
import math
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trio
import yaml

from edge_node.aggregate import Aggregator, parse_rules
from tests.e2e.procs import Proc, edge_proc, register, start_central, write_edge_config

pytestmark = pytest.mark.e2e

WINDOW_S = 20
RULES = f"""
- name: gauges
  match: 'load{{site="e2e"}}'
  interval: {WINDOW_S}s
  grace: 4s
  by: [site]
  outputs: [count_samples, sum_samples, min, max, avg, last, stddev, count_series,
            "quantiles(0.5, 0.9, 0.99)"]
- name: counters
  match: 'requests_total{{site="e2e"}}'
  interval: {WINDOW_S}s
  grace: 4s
  without: [device]
  outputs: [increase_prometheus, total_prometheus, rate_avg, rate_sum]
"""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _central_rows(tmp: Path, table: str) -> list[tuple[dict[str, str], int, float]]:
    conn = sqlite3.connect(tmp / "central" / "central.sqlite3", timeout=30)
    try:
        return [(json.loads(lb), int(t), float(v)) for lb, t, v in conn.execute(
            f"SELECT labels, ts, value FROM {table}")]
    finally:
        conn.close()


def _key(d: dict[str, str]) -> str:
    return json.dumps(d, sort_keys=True)


async def _post(client: httpx.AsyncClient, url: str, dev: int, rng: random.Random,
                counters: dict[int, float], stats: dict[str, int]) -> None:
    t = _now_ms()
    if rng.random() < 0.05:
        counters[dev] = rng.uniform(0, 5)  # a counter reset
    counters[dev] += rng.uniform(0, 50)
    body = {"device_id": f"dev-{dev}", "labels": {"site": "e2e"},
            "metrics": [{"name": "load", "value": round(rng.lognormvariate(2, 1), 3), "ts": t},
                        {"name": "requests_total", "value": round(counters[dev], 2),
                         "ts": t}]}
    try:
        r = await client.post(url + "/api/v1/ingest", json=body)
        stats["acked" if r.status_code == 204 else "refused"] += 1
    except httpx.HTTPError:
        stats["failed"] += 1


async def test_kill9_mid_window_changes_no_rollup(tmp_path: Path, procs: list[Proc]) -> None:
    rules = tmp_path / "aggr.yaml"
    rules.write_text(RULES)
    central = start_central(tmp_path)
    procs.append(central)
    key = register(tmp_path)
    central.start()
    # keep_raw is on, so central gets the raw samples too: the reference input
    cfg, url = write_edge_config(tmp_path, central.url, key,
                                 extra=f'[aggregate]\nrules_file = "{rules}"\n')
    edge = edge_proc(tmp_path, cfg, url)
    procs.append(edge)
    await trio.to_thread.run_sync(edge.start)

    # start right after a window boundary, and finish well inside the window
    while _now_ms() % (WINDOW_S * 1000) > 500:
        await trio.sleep(0.05)
    start = _now_ms() - _now_ms() % (WINDOW_S * 1000)
    end = start + WINDOW_S * 1000
    rng = random.Random(5)
    counters = {d: 0.0 for d in range(6)}
    stats = {"acked": 0, "refused": 0, "failed": 0}
    kills = [start + 5_000, start + 10_000]
    replayed = []
    async with httpx.AsyncClient(timeout=5) as client:
        while _now_ms() < start + 14_000:
            if kills and _now_ms() >= kills[0]:
                kills.pop(0)
                edge.kill9()  # open windows and the replay log live only in the buffer now
                await trio.to_thread.run_sync(edge.start)
                doc = (await client.get(url + "/api/v1/aggregates")).json()
                replayed.append(doc["replayed_on_start"])
            await _post(client, url, rng.randrange(6), rng, counters, stats)
            await trio.sleep(0.02)
    assert stats["acked"] > 150, stats
    assert all(n > 0 for n in replayed), replayed  # the state came back from the replay log

    # wait for the window's rollups (closed at end + grace) at central
    with trio.fail_after(60):
        while True:
            got = [r for r in await trio.to_thread.run_sync(_central_rows, tmp_path, "rollups_v")
                   if r[1] == end]
            if len({_key(lb) for lb, _, _ in got}) >= 15:
                break
            await trio.sleep(0.5)
    await trio.sleep(1.0)  # any straggler batch
    got = [r for r in await trio.to_thread.run_sync(_central_rows, tmp_path, "rollups_v")
           if r[1] == end]

    # the reference: one uninterrupted pass over every raw sample of the window central got
    raw = [r for r in await trio.to_thread.run_sync(_central_rows, tmp_path, "samples_v")
           if start <= r[1] < end]
    assert len(raw) >= 2 * stats["acked"]  # every acknowledged request, both samples
    keys: dict[int, Any] = {}
    ids: dict[str, int] = {}
    sids, ts, vals = [], [], []
    for lb, t, v in sorted(raw, key=lambda r: r[1]):
        k = _key(lb)
        if k not in ids:
            ids[k] = len(ids) + 1
            keys[ids[k]] = tuple(sorted(lb.items()))
        sids.append(ids[k])
        ts.append(t)
        vals.append(v)
    ref = Aggregator(parse_rules(yaml.safe_load(RULES)), keys.get, 0)
    ref.ingest(np.array(sids), np.array(ts), np.array(vals), start)
    out, _ = ref.flush(end + 10 * WINDOW_S * 1000)
    want = {_key(dict(k)): v for k, t, v in zip(out.keys, out.ts, out.values, strict=True)
            if t == end}
    have = {_key(lb): v for lb, _, v in got}
    assert set(have) == set(want)
    for k, v in want.items():
        assert math.isclose(have[k], v, rel_tol=1e-9, abs_tol=1e-9), (k, have[k], v)
    # each output series exactly once for the window
    assert len(got) == len(have)
