"""Native-API ingest throughput with fsync'd acknowledgements, measured with wrk.

    .venv/bin/python -m bench.bench_ingest [--seconds 15]

Starts a real ``fleet-edge run`` process (``synchronous = "full"``: every 204 is on disk) and
drives it with wrk (Debian package ``wrk``) for two request shapes from the standard workload:
10,000-sample msgpack requests in the columnar form (5 devices x 100 series x 20 points) and
in the per-sample form (100 devices x 100 metrics, as a gateway agent batches them), and
100-sample JSON requests (one device's step). Reports samples/s and the edge process's
CPU-seconds per million samples (user + system, from psutil). The central URL points at a
closed port and backlog merging is deferred, so the figures are ingest alone (the forwarder
idles in backoff).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import msgpack
import psutil

from bench.workload import columnar_payloads, native_payloads, steps
from tests.e2e.procs import edge_proc, free_port, write_edge_config

LUA = """
wrk.method = "POST"
local f = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CTYPE")
for k, v in string.gmatch(os.getenv("BENCH_HEADERS") or "", "([^=|]+)=([^|]*)") do
  wrk.headers[k] = v
end
"""


def _wrk(url: str, body: Path, ctype: str, conns: int, seconds: int, tmp: Path,
         headers: dict[str, str] | None = None) -> tuple[float, int, str]:
    script = tmp / "post.lua"
    script.write_text(LUA)
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(conns), "-d", f"{seconds}s", "--latency", "-s", str(script),
         url], capture_output=True, text=True, check=True,
        env={"BENCH_BODY": str(body), "BENCH_CTYPE": ctype, "PATH": "/usr/bin:/bin",
             "BENCH_HEADERS": "|".join(f"{k}={v}" for k, v in (headers or {}).items())}
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p99 = re.search(r"99%\s+(\S+)", out)
    return rps, int(non2xx.group(1)) if non2xx else 0, p99.group(1) if p99 else "?"


def measure(pid: int, url: str, body: Path, ctype: str, conns: int, seconds: int, tmp: Path,
            per_req: int, name: str, headers: dict[str, str] | None = None) -> None:
    """Drive ``url`` with wrk and print one table row with the server process's CPU cost."""
    proc = psutil.Process(pid)
    c0 = proc.cpu_times()
    t0 = time.monotonic()
    rps, non2xx, p99 = _wrk(url, body, ctype, conns, seconds, tmp, headers)
    wall = time.monotonic() - t0
    c1 = proc.cpu_times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    samples = rps * per_req
    print(f"{name:<42} {conns:>5} {rps:>9,.0f} {samples:>11,.0f} "
          f"{cpu / (samples * wall / 1e6):>16.2f} {p99:>8} {non2xx:>8}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=15)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench_ingest needs wrk: apt-get install -y wrk")
    all_steps = list(steps())
    payloads = list(native_payloads(all_steps[0]))
    cases = [
        ("msgpack columnar, 10,000 samples/req", "application/msgpack",
         msgpack.packb(columnar_payloads(all_steps, range(5))), 10_000, 4),
        ("msgpack, 10,000 samples/request", "application/msgpack",
         msgpack.packb(payloads[:100]), 10_000, 4),
        ("JSON, 100 samples/request", "application/json",
         json.dumps(payloads[0]).encode(), 100, 32),
    ]
    print(f"edge ingest, fsync'd acks (synchronous=full), {args.seconds}s per case, "
          f"{psutil.cpu_count()} CPUs shared by wrk and the edge")
    print(f"{'request shape':<42} {'conns':>5} {'req/s':>9} {'samples/s':>11} "
          f"{'CPU-s/M samples':>16} {'p99':>8} {'non-2xx':>8}")
    for name, ctype, body, per_req, conns in cases:
        with tempfile.TemporaryDirectory() as t:
            tmp = Path(t)
            cfg, url = write_edge_config(tmp, f"http://127.0.0.1:{free_port()}", "k")
            text = cfg.read_text().replace('log_level = "warning"', 'log_level = "error"')
            cfg.write_text(text.replace("roll_interval_s = 0.2", "roll_interval_s = 1.0")
                           .replace("max_disk_mb = 256", "max_disk_mb = 20000\n"
                                    "merge_after_s = 3600"))
            edge = edge_proc(tmp, cfg, url).start()
            try:
                bpath = tmp / "body"
                bpath.write_bytes(body)
                assert httpx.post(url + "/api/v1/ingest", content=body,
                                  headers={"Content-Type": ctype}).status_code == 204
                measure(edge.proc.pid, url + "/api/v1/ingest",  # type: ignore[union-attr]
                        bpath, ctype, conns, args.seconds, tmp, per_req, name)
            finally:
                edge.stop()


if __name__ == "__main__":
    main()
