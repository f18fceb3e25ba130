"""Draining a backlog end to end: real edge and central processes, the standard workload.

    .venv/bin/python -m bench.bench_drain

Central is down while the workload (2M samples, as 10,000-sample msgpack requests) is ingested;
the edge merges its backlog; then central (embedded SQLite store) starts and the edge drains.
Reports the drain time, the bytes the forwarder put on the wire per sample (request bodies),
and the CPU both processes spent.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import httpx
import msgpack
import psutil

from bench.workload import DEVICES, METRICS, STEPS, native_payloads, steps
from tests.e2e.procs import edge_proc, register, start_central, write_edge_config
from tests.readers import metric_total


def main() -> None:
    n_total = DEVICES * METRICS * STEPS
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        central = start_central(tmp)
        key = register(tmp, "bench-edge")
        cfg, url = write_edge_config(tmp, central.url, key, node_id="bench-edge",
                                     extra="merge_after_s = 1.0\n")
        text = cfg.read_text().replace("max_disk_mb = 256", "max_disk_mb = 4096")
        cfg.write_text(text.replace('log_level = "warning"', 'log_level = "error"'))
        edge = edge_proc(tmp, cfg, url).start()
        try:
            t0 = time.monotonic()
            with httpx.Client(timeout=60) as c:
                for st in steps():
                    objs = list(native_payloads(st))
                    for i in range(0, DEVICES, 100):
                        r = c.post(url + "/api/v1/ingest", content=msgpack.packb(objs[i:i + 100]),
                                   headers={"Content-Type": "application/msgpack"})
                        assert r.status_code == 204, r.text
            print(f"ingested {n_total:,} samples in {time.monotonic() - t0:.1f} s "
                  "(central down)")
            while metric_total(url, "fleet_edge_segments_merged_total") < STEPS - 1:
                time.sleep(0.5)
            sent0 = metric_total(url, "fleet_edge_forwarded_bytes_total")
            eproc = psutil.Process(edge.proc.pid)  # type: ignore[union-attr]
            e0 = sum(eproc.cpu_times()[:2])
            t1 = time.monotonic()
            central.start()
            cproc = psutil.Process(central.proc.pid)  # type: ignore[union-attr]
            while metric_total(url, "fleet_edge_buffer_pending") > 0:
                time.sleep(0.1)
            drain = time.monotonic() - t1
            sent = metric_total(url, "fleet_edge_forwarded_bytes_total") - sent0
            e_cpu = sum(eproc.cpu_times()[:2]) - e0
            c_cpu = sum(cproc.cpu_times()[:2])
            batches = metric_total(central.url, "fleet_central_batches_total")
        finally:
            edge.stop()
            central.stop()
    print(f"drained {n_total:,} samples in {drain:.1f} s ({n_total / drain:,.0f} samples/s) "
          f"in {batches:.0f} batches")
    print(f"wire (batch bodies): {sent / n_total:.3f} bytes/sample")
    print(f"CPU during the drain: edge {e_cpu:.1f} s, central {c_cpu:.1f} s "
          "(central's embedded SQLite store inserts one row per sample)")


if __name__ == "__main__":
    main()
