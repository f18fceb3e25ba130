"""A site offline for a day, then reconnected through a capped link: how soon is live data
queryable, and how long does the backlog take?

    .venv/bin/python -m bench.bench_outage [--devices 1000] [--metrics 10] [--hours 24]
        [--interval 60] [--cap 262144] [--only live|fifo]

Real processes: ``fleet-edge``, ``fleet-central`` (embedded state store) and a private
VictoriaMetrics. With central down, the edge takes ``hours`` of the site's data (every device's
``metrics`` every ``interval`` seconds, stamped in the past, 10,000 samples a request) and
merges its backlog. Then central starts while the devices keep reporting live (one
``outage_live_probe`` sample per device every 5 s), the link capped at ``cap`` bytes/s
(``central.max_bytes_per_s``). Measured: seconds from reconnecting until the first live sample
is queryable in VictoriaMetrics, the drain time, and the bytes sent. Run twice: with the live
lane (``live``), and without it (``fifo``: what the forwarder did before, oldest first only).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import httpx
import msgpack

from tests import servers
from tests.e2e.procs import edge_proc, register, start_central, write_edge_config
from tests.readers import metric_total, vm_export


def run(args: argparse.Namespace, live_lane: bool) -> dict[str, float]:
    vm = servers.start_victoria_metrics()
    try:
        with tempfile.TemporaryDirectory() as t:
            tmp = Path(t)
            env = {"VICTORIA_METRICS_URL": vm.url}
            central = start_central(tmp, env=env)
            key = register(tmp, "outage-edge", env=env)
            cfg, url = write_edge_config(tmp, central.url, key, node_id="outage-edge",
                                         extra="merge_after_s = 1.0\n")
            text = (cfg.read_text().replace("max_disk_mb = 256", "max_disk_mb = 8192")
                    .replace('log_level = "warning"', 'log_level = "error"')
                    .replace("backoff_max_s = 0.5", "backoff_max_s = 0.5\n"
                             f"max_bytes_per_s = {args.cap}\n"
                             f"live_window_s = {60 if live_lane else 10**9}"))
            cfg.write_text(text)
            edge = edge_proc(tmp, cfg, url).start()
            try:
                return measure(args, url, central, vm)
            finally:
                edge.stop()
                central.stop()
    finally:
        vm.stop()


def measure(args: argparse.Namespace, url: str, central: object, vm: servers.Server
            ) -> dict[str, float]:
    rng = random.Random(1)
    now = time.time()
    steps = int(args.hours * 3600 / args.interval)
    n = args.devices * args.metrics * steps
    t0 = time.monotonic()
    with httpx.Client(timeout=120) as c:
        for s in range(steps):
            ts = int((now - args.hours * 3600 + s * args.interval) * 1000)
            objs = [{"device_id": f"dev-{d}", "metrics": [
                {"name": f"m{k}", "value": round(rng.gauss(50, 10), 2), "ts": ts}
                for k in range(args.metrics)]} for d in range(args.devices)]
            r = c.post(url + "/api/v1/ingest", content=msgpack.packb(objs),
                       headers={"Content-Type": "application/msgpack"})
            assert r.status_code == 204, r.text
            if s % max(1, steps // 10) == 0:
                print(f"  backlog: {s + 1:,}/{steps:,} steps "
                      f"({(s + 1) * args.devices * args.metrics:,} samples)", flush=True)
    print(f"  ingested {n:,} samples of {args.hours:g} h in {time.monotonic() - t0:.0f} s "
          "(central down)", flush=True)
    time.sleep(3)  # let the merger fold the backlog
    sent0 = metric_total(url, "fleet_edge_forwarded_bytes_total")
    t_up = time.monotonic()
    wall_up = int(time.time() * 1000)
    central.start()  # type: ignore[attr-defined]
    first_live: float | None = None
    last_probe = 0.0
    probe = 0
    with httpx.Client(timeout=30) as c:
        while True:
            if time.monotonic() - last_probe >= 5:  # the devices keep reporting
                probe += 1
                last_probe = time.monotonic()
                objs = [{"device_id": f"dev-{d}", "metrics": [
                    {"name": "outage_live_probe", "value": probe}]}
                    for d in range(args.devices)]
                c.post(url + "/api/v1/ingest", content=msgpack.packb(objs),
                       headers={"Content-Type": "application/msgpack"})
            if first_live is None:
                got = vm_export(vm.url, 'outage_live_probe{device="dev-0"}')
                if any(t >= wall_up for s in got for t in s["timestamps"]):
                    first_live = time.monotonic() - t_up
                    print(f"  live data queryable in VictoriaMetrics {first_live:.1f} s after "
                          "reconnecting", flush=True)
            pending = metric_total(url, "fleet_edge_buffer_pending")
            if pending <= args.devices * 2 and first_live is not None:  # only live is left
                break
            time.sleep(0.5)
    drain = time.monotonic() - t_up
    sent = metric_total(url, "fleet_edge_forwarded_bytes_total") - sent0
    print(f"  drained in {drain:.0f} s, {sent / 1e6:.1f} MB sent "
          f"({sent / drain / 1e3:.0f} KB/s, cap {args.cap / 1e3:.0f} KB/s)", flush=True)
    return {"first_live_s": first_live or float("nan"), "drain_s": drain, "bytes": sent,
            "samples": float(n)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--metrics", type=int, default=10)
    p.add_argument("--hours", type=float, default=24)
    p.add_argument("--interval", type=float, default=60)
    p.add_argument("--cap", type=int, default=256 * 1024, help="bytes/s to central")
    p.add_argument("--only", choices=["live", "fifo"])
    args = p.parse_args()
    results = {}
    for mode in ("live", "fifo"):
        if args.only and args.only != mode:
            continue
        print(f"== {mode}: {'with' if mode == 'live' else 'without'} the live lane", flush=True)
        results[mode] = run(args, live_lane=mode == "live")
    print("\n| mode | live data queryable after | backlog drained in | MB sent | bytes/sample |")
    print("|---|---|---|---|---|")
    for mode, r in results.items():
        print(f"| {mode} | {r['first_live_s']:.1f} s | {r['drain_s']:.0f} s | "
              f"{r['bytes'] / 1e6:.1f} | {r['bytes'] / r['samples']:.3f} |")


if __name__ == "__main__":
    main()
