"""The field box: what self-monitoring, the status page, reload and the packaged executable cost.

    .venv/bin/python -m bench.bench_box [--dist DIR]

1. Host metrics: one psutil reading of this box and the samples it makes (CPU time per reading,
   samples per reading, bytes per reading in the buffer's segment codec).
2. The status document (``/api/v1/status``) of a node that knows 10,000 devices with a full
   6-hour chart history (720 points): build time and JSON size.
3. Reload: a SIGHUP-style reload that rebuilds 10 aggregation rules over 10,000 series (state
   saved and loaded back) and the alert service.
4. With ``--dist`` (``packaging/build.py``'s output): the zipapp's first start (unpacking into
   an empty SHIV_ROOT) and later starts (``fleet-edge --version``).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import trio

from edge_node.host import HostCollector, read_host
from edge_node.node import open_edge_node
from edge_node.wire import Columns, encode_segment
from tests.conftest import edge_config


def host_metrics() -> None:
    proc = psutil.Process()
    read_host(["/"], proc)
    cpu, wall = [], []
    for _ in range(50):
        t0, c0 = time.perf_counter(), time.process_time()
        r = read_host(["/", tempfile.gettempdir()], proc)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    collector = HostCollector(None, "gw", ["/"], 15.0)
    batch = collector.batch(r, int(time.time() * 1000))
    n = batch.n_samples
    seg = encode_segment(Columns("metrics", np.arange(n, dtype=np.int64),
                                 np.full(n, 1_795_839_600_000, np.int64),
                                 np.asarray(batch.metric_values, np.float64)))
    print(f"host metrics: {n} samples per reading, read in {statistics.median(wall) * 1e3:.1f} ms"
          f" wall / {statistics.median(cpu) * 1e3:.1f} ms CPU (median of 50); "
          f"{len(seg)} B per reading encoded -> at interval_s=15: "
          f"{len(seg) * 4 * 60 * 24 / 1e6:.1f} MB/day before forwarding, "
          f"{statistics.median(cpu) * 4 * 60 * 24:.1f} CPU-s/day")


async def status_and_reload(tmp: Path) -> None:
    rules = tmp / "aggr.yaml"
    rules.write_text("\n".join(
        f"- name: r{i}\n  match: 'm{i % 5}'\n  interval: 1m\n  by: [site]\n"
        f"  outputs: [avg, max, 'quantiles(0.5, 0.99)']" for i in range(10)) + "\n")
    cfg = edge_config(tmp, None, aggregate={"rules_file": str(rules)},
                      status={"step_s": 30.0, "history_hours": 6.0})
    toml = tmp / "edge.toml"
    toml.write_text(f'node_id = "edge-1"\nlisten = "127.0.0.1:0"\ndata_dir = "{tmp / "edge"}"\n'
                    'drain_timeout_s = 2.0\n[central]\nurl = "http://127.0.0.1:9"\n'
                    'api_key = "k"\nbackoff_initial_s = 0.05\nbackoff_max_s = 0.5\n'
                    '[buffer]\nroll_interval_s = 0.1\ncommit_window_ms = 1.0\n'
                    f'[aggregate]\nrules_file = "{rules}"\n[host]\nenabled = false\n')
    async with open_edge_node(cfg, config_path=str(toml)) as node, httpx.AsyncClient() as c:
        assert node.alerts is not None
        st = node.status
        t = time.time() - 720 * 30
        for i in range(720):
            st.history.add(t + i * 30, {**st.reading(), "ingest_rows_per_s": i * 1000.0,
                                        "forward_rows_per_s": i * 990.0})
        for chunk in range(10):
            body = [{"device_id": f"dev-{d:04d}", "labels": {"site": f"site-{d % 20}"},
                     "metrics": [{"name": f"m{k}", "value": float(k)} for k in range(5)]}
                    for d in range(chunk * 1000, (chunk + 1) * 1000)]
            assert (await c.post(node.url + "/api/v1/ingest", json=body)).status_code == 204
        await node.buffer.roll_now()
        now = int(time.time() * 1000)
        for d in range(10_000):  # 2 in 7 silent for 5-6 minutes: offline
            node.alerts.devices[f"dev-{d:04d}"] = (f"site-{d % 20}", now - (d % 7) * 60_000)
        for group in node.alerts.groups:  # the offline devices' alerts, as after 30 s
            await node.alerts.evaluate(group)
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            doc = await st.document()
            times.append(time.perf_counter() - t0)
        size = len(json.dumps(doc))
        r = await c.get(node.url + "/api/v1/status")
        print(f"status document: {doc['devices_total']:,} devices ({len(doc['devices'])} listed), "
              f"{doc['alerts_firing']:,} alerts firing ({len(doc['alerts'])} listed), "
              f"{len(doc['history']['t'])} chart points x {len(doc['figures'])} figures: built in "
              f"{statistics.median(times) * 1e3:.1f} ms (median of 20), {size / 1e3:.0f} kB JSON "
              f"({len(r.content) / 1e3:.0f} kB over HTTP)")
        series = sum(s["series"] for s in node.aggregation.summary()) if node.aggregation else 0
        rules.write_text(rules.read_text() + "- name: extra\n  match: m0\n  interval: 5m\n"
                         "  outputs: [max]\n")
        t0 = time.perf_counter()
        res = await node.reload()
        dt = time.perf_counter() - t0
        print(f"reload: {res['applied']} with 10 rules over {series:,} rule-series kept, "
              f"1 rule added: {dt * 1e3:.0f} ms")


def zipapp_start(dist: Path) -> None:
    pyz = dist / "fleet-edge.pyz"
    with tempfile.TemporaryDirectory() as root:
        env = {"SHIV_ROOT": root, "PATH": "/usr/bin:/bin"}
        t0 = time.perf_counter()
        subprocess.run([str(pyz), "--version"], check=True, env=env, capture_output=True)
        first = time.perf_counter() - t0
        later = []
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run([str(pyz), "--version"], check=True, env=env, capture_output=True)
            later.append(time.perf_counter() - t0)
    print(f"zipapp: {pyz.stat().st_size / 1e6:.1f} MB; first start (unpacking) {first:.2f} s, "
          f"later starts {statistics.median(later):.2f} s (median of 5)")


def main() -> None:
    logging.basicConfig(level=logging.ERROR)  # central is not running: no retry chatter
    ap = argparse.ArgumentParser()
    ap.add_argument("--dist", help="packaging/build.py's output directory")
    args = ap.parse_args()
    host_metrics()
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(status_and_reload, Path(tmp))
    if args.dist:
        zipapp_start(Path(args.dist))


if __name__ == "__main__":
    main()
