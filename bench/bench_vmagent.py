"""vmagent (Debian package ``victoria-metrics``) on the same workload, for comparison.

    .venv/bin/python -m bench.bench_vmagent [--seconds 15]

1. Wire bytes: vmagent remote-writes (protobuf + snappy) to a counting HTTP receiver on
   loopback; we feed it the standard workload as Prometheus text with timestamps, once step by
   step (live: each 30-s step flushed on its own) and once all 20 steps at once (backlog).
   Bytes counted: request line, headers and body, plus a minimal 204 response.
2. Accept rate: wrk posts Prometheus text (10,000-sample and 100-sample requests) to
   ``/api/v1/import/prometheus``; vmagent's remote-write target is a closed port, so it only
   queues to its on-disk buffer (no fsync per request). CPU is vmagent's user + system time.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from bench.bench_ingest import measure
from bench.workload import DEVICES, METRICS, STEPS, Step, step_samples, steps
from tests.e2e.procs import free_port


class _Counter(BaseHTTPRequestHandler):
    total = 0
    requests = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(n)
        head = len(self.requestline) + 2 + sum(len(k) + len(v) + 4 for k, v in
                                                self.headers.items()) + 2
        with _Counter.lock:
            _Counter.total += head + len(body) + 60  # + "HTTP/1.1 204 No Content" and headers
            _Counter.requests += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _prom_text(step: Step, devices: range) -> bytes:
    lines = []
    for name, labels, value, ts in step_samples(step, devices):
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        lines.append(f"{name}{{{inner}}} {value!r} {ts}")
    return ("\n".join(lines) + "\n").encode()


def _start_vmagent(tmp: Path, remote: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        ["vmagent", f"-httpListenAddr=127.0.0.1:{port}", f"-remoteWrite.url={remote}",
         f"-remoteWrite.tmpDataPath={tmp / 'vmagent'}", "-remoteWrite.flushInterval=1s",
         "-loggerLevel=ERROR"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("vmagent did not start")


def _settle(before: int) -> int:
    """Wait until the receiver saw no new bytes for 3 s; return the bytes added."""
    last, quiet = _Counter.total, 0.0
    while quiet < 3.0:
        time.sleep(0.25)
        quiet = quiet + 0.25 if _Counter.total == last else 0.0
        last = _Counter.total
    return _Counter.total - before


def wire(tmp: Path) -> None:
    rport = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", rport), _Counter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    all_steps = list(steps())
    n_step = DEVICES * METRICS
    try:
        proc, url = _start_vmagent(tmp, f"http://127.0.0.1:{rport}/api/v1/write")
        try:
            live = []
            for st in all_steps[:5]:
                body = _prom_text(st, range(DEVICES))
                before = _Counter.total
                httpx.post(url + "/api/v1/import/prometheus", content=body, timeout=60)
                live.append(_settle(before))
            before = _Counter.total
            for st in all_steps:
                httpx.post(url + "/api/v1/import/prometheus",
                           content=_prom_text(st, range(DEVICES)), timeout=60)
            backlog = _settle(before)
        finally:
            proc.terminate()
            proc.wait()
    finally:
        server.shutdown()
    print(f"vmagent wire, live (one step = {n_step:,} samples): "
          f"{sum(live[1:]) / len(live[1:]) / n_step:.2f} bytes/sample")
    print(f"vmagent wire, backlog ({STEPS} steps posted at once): "
          f"{backlog / (n_step * STEPS):.2f} bytes/sample")


def accept(tmp: Path, seconds: int) -> None:
    st = next(steps())
    cases = [("Prometheus text, 10,000 samples/request", _prom_text(st, range(100)), 10_000, 4),
             ("Prometheus text, 100 samples/request", _prom_text(st, range(1)), 100, 32)]
    closed = f"http://127.0.0.1:{free_port()}/api/v1/write"
    print(f"{'vmagent accept (no fsync)':<42} {'conns':>5} {'req/s':>9} {'samples/s':>11} "
          f"{'CPU-s/M samples':>16} {'p99':>8} {'non-2xx':>8}")
    for name, body, per_req, conns in cases:
        proc, url = _start_vmagent(tmp / name[-20:].replace(" ", "_"), closed)
        try:
            bpath = tmp / "body.txt"
            bpath.write_bytes(body)
            assert httpx.post(url + "/api/v1/import/prometheus",
                              content=body).status_code == 204
            measure(proc.pid, url + "/api/v1/import/prometheus", bpath, "text/plain", conns,
                    seconds, tmp, per_req, name)
            errors = [ln for ln in httpx.get(url + "/metrics").text.splitlines()
                      if ln.startswith("vm_log_messages_total") and 'level="error"' in ln]
            assert not errors, f"vmagent refused the input: {errors}"
        finally:
            proc.terminate()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=15)
    args = ap.parse_args()
    for tool in ("vmagent", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"bench_vmagent needs {tool}: apt-get install -y victoria-metrics wrk")
    with tempfile.TemporaryDirectory() as t:
        wire(Path(t))
        accept(Path(t), args.seconds)


if __name__ == "__main__":
    main()
