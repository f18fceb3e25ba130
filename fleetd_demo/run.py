"""The demo run: central (embedded SQLite) + an edge node + simulated devices, end to end.

Everything runs in this process on 127.0.0.1 with OS-assigned ports. The summary compares what
devices were told was accepted (2xx) with what central stored; the exit code is 0 only when
nothing acknowledged was lost and nothing was stored twice.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TextIO

import httpx
import trio

from central.pipeline import Pipeline
from central.server import run_central
from central.sinks.sqlite import SQLiteStore
from edge_node.config import EdgeConfig
from edge_node.node import EdgeNode, run_edge_node
from fleetd_demo.simulate import SimulatedDevice

KINDS = ("metrics", "logs", "heartbeats")


@dataclass
class Tally:
    requests_ok: int = 0
    requests_failed: int = 0
    accepted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))


async def _device(dev: SimulatedDevice, client: httpx.AsyncClient, url: str, tally: Tally,
                  period_s: float, stop: trio.Event, slots: trio.Semaphore) -> None:
    await trio.sleep(random.uniform(0, period_s))  # devices are not in lock-step
    while not stop.is_set():
        payload = dev.step(time.time_ns() // 1_000_000, period_s)
        try:
            # wait here, not in httpx's pool: its queue costs O(waiting requests) per request
            async with slots:
                resp = await client.post(url, json=payload)
        except httpx.HTTPError:
            tally.requests_failed += 1
        else:
            if resp.status_code == 204:
                tally.requests_ok += 1
                tally.accepted["metrics"] += len(payload["metrics"])
                tally.accepted["logs"] += len(payload.get("logs", []))
                tally.accepted["heartbeats"] += 1 if payload.get("heartbeat") else 0
            else:
                tally.requests_failed += 1
        with trio.move_on_after(period_s):
            await stop.wait()


def _acked(node: EdgeNode) -> dict[str, int]:
    return {k: int(node.forwarder.m_acked.get(k)) for k in KINDS}


async def run_demo(devices: int, duration_s: float, *, data_dir: str | None = None,
                   out: TextIO = sys.stdout, period_s: float = 1.0) -> int:
    """Run the demo and print a summary; returns the process exit code."""
    with tempfile.TemporaryDirectory(prefix="fleet-demo-") as tmp:
        base = Path(data_dir) if data_dir else Path(tmp)
        store = SQLiteStore(base / "central")
        key = store.add_node(f"demo-edge-{int(time.time())}", "demo")
        node_id = store.list_nodes()[-1]["node_id"]
        async with trio.open_nursery() as nursery:
            central = await nursery.start(partial(run_central, Pipeline(store), "127.0.0.1:0"))
            rules = base / "aggregation.yaml"
            rules.write_text(DEMO_RULES)
            cfg = EdgeConfig.from_mapping({
                "node_id": str(node_id), "listen": "127.0.0.1:0",
                "data_dir": str(base / "edge"),
                "central": {"url": central.url, "api_key": key, "backoff_max_s": 2.0},
                "buffer": {"roll_interval_s": 0.5},
                "aggregate": {"rules_file": str(rules)},
            }, env={})
            node: EdgeNode = await nursery.start(run_edge_node, cfg)
            print(f"demo: central at {central.url} (SQLite in {store.path.parent}), edge node "
                  f"{node_id} at {node.url}, {devices} devices, {duration_s:.0f} s", file=out)
            tally = Tally()
            stop = trio.Event()
            conns = min(devices, 16)  # httpx pool work grows with its connection count
            limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
            slots = trio.Semaphore(conns)
            async with httpx.AsyncClient(limits=limits, timeout=30) as client:
                url = node.url + "/api/v1/ingest"
                async with trio.open_nursery() as devs:
                    for i in range(devices):
                        dev = SimulatedDevice(f"dev-{i:04d}", rng=random.Random(i))
                        devs.start_soon(_device, dev, client, url, tally, period_s, stop, slots)
                    t0 = trio.current_time()
                    while trio.current_time() - t0 < duration_s:
                        await trio.sleep(1.0)
                        _progress(out, trio.current_time() - t0, duration_s, tally, node)
                    stop.set()
            elapsed = trio.current_time() - t0
            print("\ndemo: devices stopped; draining the edge buffer to central...", file=out)
            with trio.move_on_after(60):
                while True:
                    await node.buffer.roll_now()
                    if _acked(node) == tally.accepted or \
                            sum(node.buffer.stats.pending.values()) == 0:
                        break
                    await trio.sleep(0.2)
            stored = await trio.to_thread.run_sync(_device_counts, store)
            rollups = await trio.to_thread.run_sync(_rollups, store)
            node.stop()
            central.stop()
        rate = tally.requests_ok / max(elapsed, 1e-9)
        if rate < 0.9 * devices / period_s:
            print(f"note: {devices} devices wanted {devices / period_s:,.0f} requests/s; this one "
                  f"process (devices, edge and central together) managed {rate:,.0f}/s",
                  file=out)
        _print_rollups(out, rollups)
        return _summary(out, tally, node, stored)


# Stream aggregation in the demo: per-site figures every 10 s, kept beside the raw samples.
DEMO_RULES = """\
- name: site-cpu
  match: cpu_usage_percent
  interval: 10s
  grace: 2s
  by: [site]
  outputs: [avg, max, count_series, "quantiles(0.5, 0.99)"]
- name: site-network
  match: '{__name__=~"network_.*_bytes_total"}'
  interval: 10s
  grace: 2s
  by: [site]
  outputs: [rate_sum]
"""


def _device_counts(store: SQLiteStore) -> dict[str, int]:
    """Rows central stored, the gateway's own host metrics (``role="gateway"``, written by the
    node itself, not acknowledged to a device) counted apart under ``gateway``."""
    out = store.counts()
    (own,) = store.open_sync().execute(
        "SELECT count(*) FROM samples_v WHERE json_extract(labels, '$.role') = 'gateway'"
    ).fetchone()
    out["metrics"] -= own
    out["gateway"] = own
    return out


def _rollups(store: SQLiteStore) -> list[tuple[str, str, float]]:
    """The newest window's rollups central stored: (name, labels JSON, value)."""
    conn = store.open_sync()
    return [(n, lb, v) for n, lb, v in conn.execute(
        "SELECT name, labels, value FROM rollups_v WHERE ts = (SELECT max(ts) FROM rollups_v) "
        "ORDER BY name, labels")]


def _print_rollups(out: TextIO, rows: list[tuple[str, str, float]]) -> None:
    if not rows:
        print("rollups: no 10-s window closed yet (run the demo for longer)", file=out)
        return
    print(f"rollups computed at the edge (latest 10-s window, {len(rows)} series; "
          "`fleet-edge aggregates` shows the rules):", file=out)
    for name, labels, value in rows[:8]:
        extra = {k: v for k, v in json.loads(labels).items() if k != "__name__"}
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(extra.items()))
        print(f"  {name}{{{inner}}} = {value:,.2f}", file=out)
    if len(rows) > 8:
        print(f"  ... and {len(rows) - 8} more", file=out)


def _progress(out: TextIO, t: float, total: float, tally: Tally, node: EdgeNode) -> None:
    acked = _acked(node)
    pending = sum(node.buffer.stats.pending.values())
    line = (f"\r[{t:5.1f}/{total:.0f}s] accepted {tally.accepted['metrics']:>9,} samples "
            f"{tally.accepted['logs']:>6,} logs {tally.accepted['heartbeats']:>6,} heartbeats | "
            f"central acked {acked['metrics']:>9,} samples | backlog {pending:>7,} rows")
    if out.isatty():
        print(line, end="", file=out, flush=True)
    else:
        print(line.lstrip("\r"), file=out, flush=True)


def _summary(out: TextIO, tally: Tally, node: EdgeNode, stored: dict[str, int]) -> int:
    acked = _acked(node)
    fwd = {k: int(node.forwarder.m_forwarded.get(k)) for k in KINDS}
    committed = {k: int(node.buffer.m_committed.get(k)) for k in KINDS}
    print("\n               accepted  committed  forwarded  acked-by-central   stored    lost "
          " duplicated", file=out)
    worst = 0
    for k in KINDS:
        lost = max(0, tally.accepted[k] - stored[k])
        dup = max(0, stored[k] - tally.accepted[k])
        worst = max(worst, lost, dup)
        print(f"{k:<12} {tally.accepted[k]:>11,} {committed[k]:>10,} {fwd[k]:>10,} "
              f"{acked[k]:>17,} {stored[k]:>8,} {lost:>7,} {dup:>11,}", file=out)
    print(f"requests: {tally.requests_ok:,} acknowledged (204), {tally.requests_failed:,} "
          "failed", file=out)
    print(f"central also stored {stored.get('gateway', 0):,} samples of the gateway's own host "
          "metrics (device=node id, role=gateway)", file=out)
    if worst == 0:
        print("result: OK, every acknowledged row is stored at central exactly once", file=out)
        return 0
    print("result: FAILED, acknowledged rows were lost or duplicated", file=out)
    return 1
