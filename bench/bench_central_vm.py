"""Central alone writing the standard workload (2M samples) into a real VictoriaMetrics.

    .venv/bin/python -m bench.bench_central_vm [--shape live|backlog|both] [--state sqlite|postgresql]

Starts a private VictoriaMetrics (and PostgreSQL with ``--state postgresql``) and a
``fleet-central run`` process routing metrics to it, then posts the workload as edge batches
(one in flight, as an edge node sends them):

- ``live``: 20 batches of 100,000 samples, one per 30-second step (every series once per batch:
  the worst case for the import format, one JSON line per sample);
- ``backlog``: 2 batches of 1,000,000 samples (every series with 10 points: a merged backlog).

Each shape runs twice through the same central: pass 1 meets the 100,000 series for the first
time (their definitions are decoded, stored and turned into label sets once), pass 2 sends the
next 20 steps of the same series (the steady state of a long-running central). Reports central's
CPU-seconds per million samples (its process CPU time over the posting, read with psutil), the
posting wall time, and the time until VictoriaMetrics answers a query that counts all the samples
of the pass (no force-flush: what a dashboard would see).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from bench.workload import DEVICES, METRICS, STEP_MS, STEPS, T0_MS, series_labels, steps
from edge_node.wire import BATCH_CONTENT_TYPE, Batch, Columns, encode_batch, encode_segment
from tests import servers
from tests.e2e.procs import central_cli, free_port, start_central

TOTAL = DEVICES * METRICS * STEPS


def build_batches(node: str, per_batch_steps: int, second_pass: bool = False) -> list[bytes]:
    all_steps = list(steps())
    shift = STEPS * STEP_MS if second_pass else 0
    seq0 = STEPS if second_pass else 0
    n_series = DEVICES * METRICS
    defs = [(sid, series_labels(sid // METRICS, sid % METRICS)) for sid in range(n_series)]
    out = []
    for seq, first in enumerate(range(0, STEPS, per_batch_steps), start=seq0 + 1):
        chunk = all_steps[first:first + per_batch_steps]
        k = len(chunk)
        series = np.repeat(np.arange(n_series, dtype=np.int64), k)
        ts = np.tile(np.array([s.ts_ms + shift for s in chunk], dtype=np.int64), n_series)
        values = np.stack([s.values.reshape(-1) for s in chunk], axis=1).reshape(-1)
        cols = Columns("metrics", series, ts, values)
        out.append(encode_batch(Batch(node, seq, "metrics", encode_segment(cols), len(series),
                                      epoch="bench",
                                      series_defs=defs if seq == 1 else [])))
    return out


def vm_count(vm_url: str, node: str, second_pass: bool) -> int:
    at = (T0_MS + (2 if second_pass else 1) * STEPS * STEP_MS) / 1000
    window = f"{STEPS * STEP_MS // 1000}s"  # exactly one pass: (at - 1 - window, at - 1]
    r = httpx.get(vm_url + "/api/v1/query", params={
        "query": f'sum(count_over_time({{node="{node}"}}[{window}]))', "time": str(at - 1)},
        timeout=60)
    result = r.json()["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


def run(shape: str, state: str, workdir: Path) -> dict[str, dict[str, float]]:
    vm = servers.start_victoria_metrics()
    pg = servers.start_postgres() if state == "postgresql" else None
    central = None
    try:
        env = {"VICTORIA_METRICS_URL": vm.url}
        if pg is not None:
            env["DATABASE_URL"] = servers.create_database(pg, "bench")
            central_cli("migrate", env=env)
        node = f"bench-{shape}"
        key = central_cli("nodes", "add", node, "--org", "bench", "--data-dir",
                          str(workdir / "central"), env=env).strip().splitlines()[-1]
        central = start_central(workdir, free_port(), env=env)
        central.start()
        assert central.proc is not None
        proc = psutil.Process(central.proc.pid)
        out = {}
        for second in (False, True):
            name = "steady" if second else "first sight"
            batches = build_batches(node, 1 if shape == "live" else 10, second)
            size = sum(map(len, batches))
            print(f"  {shape}, {name}: {len(batches)} batches, {size / 1e6:.1f} MB on the wire "
                  f"({size / TOTAL:.2f} B/sample)", flush=True)
            cpu0 = sum(proc.cpu_times()[:2])
            t0 = time.perf_counter()
            with httpx.Client(timeout=600) as client:
                for i, body in enumerate(batches, 1):
                    r = client.post(central.url + "/api/v1/batches", content=body, headers={
                        "Authorization": f"Bearer {key}", "Content-Type": BATCH_CONTENT_TYPE})
                    if r.status_code != 200:
                        sys.exit(f"batch {i}: HTTP {r.status_code}: {r.text}")
                    print(f"\r    posted {i}/{len(batches)}", end="", flush=True)
            posted = time.perf_counter() - t0
            cpu = sum(proc.cpu_times()[:2]) - cpu0
            print()
            while (n := vm_count(vm.url, node, second)) < TOTAL:
                if time.perf_counter() - t0 > 300:
                    sys.exit(f"only {n} of {TOTAL} samples queryable after 300 s")
                time.sleep(0.25)
            out[name] = {"cpu_s_per_m": cpu / (TOTAL / 1e6), "post_s": posted,
                         "queryable_s": time.perf_counter() - t0,
                         "samples_per_s": TOTAL / posted}
        return out
    finally:
        if central is not None:
            central.stop()
        vm.stop()
        if pg is not None:
            pg.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=["live", "backlog", "both"], default="both")
    p.add_argument("--state", choices=["sqlite", "postgresql"], default="sqlite")
    args = p.parse_args()
    shapes = ["live", "backlog"] if args.shape == "both" else [args.shape]
    print(f"central -> VictoriaMetrics, {TOTAL:,} samples, state store: {args.state}, "
          f"{os.cpu_count()} cores")
    results = {}
    for shape in shapes:
        with tempfile.TemporaryDirectory() as tmp:
            results[shape] = run(shape, args.state, Path(tmp))
    print(f"\n{'shape':<9}{'pass':<13}{'central CPU-s/M':>17}{'posting s':>11}"
          f"{'samples/s':>12}{'all queryable s':>17}")
    for shape, passes in results.items():
        for name, r in passes.items():
            print(f"{shape:<9}{name:<13}{r['cpu_s_per_m']:>17.3f}{r['post_s']:>11.2f}"
                  f"{r['samples_per_s']:>12,.0f}{r['queryable_s']:>17.2f}")


if __name__ == "__main__":
    main()
