"""Every ingest protocol on the standard workload, side by side with vmagent in the same run.

    .venv/bin/python -m bench.bench_protocols [--seconds 10]

The first step of the standard workload (100 devices x 100 metrics = 10,000 samples per
request, and one device's 100 samples for the small case) encoded in each protocol, posted with
wrk to a real ``fleet-edge run`` process (``synchronous = "full"``: every 204 is on disk), and the
same Prometheus text and remote-write bodies posted to vmagent 1.79 (which acknowledges from
memory). Reports requests/s, samples/s and each server's CPU-seconds per million samples.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import cramjam
import httpx
import msgpack

from bench.bench_ingest import measure
from bench.bench_vmagent import _prom_text, _start_vmagent
from bench.workload import Step, native_payloads, step_samples, steps
from tests.e2e.procs import edge_proc, free_port, write_edge_config
from tests.strategies import encode_write_request


def _remote_write(step: Step, devices: range) -> bytes:
    series = [({"__name__": name, **labels}, [(value, ts)])
              for name, labels, value, ts in step_samples(step, devices)]
    return bytes(cramjam.snappy.compress_raw(encode_write_request(series)))


def _influx(step: Step, devices: range) -> bytes:
    lines = []
    for name, labels, value, ts in step_samples(step, devices):
        tags = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        lines.append(f"{name},{tags} value={value!r} {ts * 1_000_000}")
    return ("\n".join(lines) + "\n").encode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()
    for tool in ("vmagent", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"bench_protocols needs {tool}: apt-get install -y victoria-metrics wrk")
    st = next(steps())
    big, small = range(100), range(1)
    snappy = {"Content-Encoding": "snappy"}
    edge_cases = [
        ("native msgpack", "/api/v1/ingest", "application/msgpack",
         msgpack.packb(list(native_payloads(st))[:100]), {}, 10_000, 4),
        ("Prometheus text", "/api/v1/import/prometheus", "text/plain", _prom_text(st, big), {},
         10_000, 4),
        ("remote write (protobuf+snappy)", "/api/v1/write", "application/x-protobuf",
         _remote_write(st, big), snappy, 10_000, 4),
        ("Influx line protocol", "/write", "text/plain", _influx(st, big), {}, 10_000, 4),
        ("Prometheus text, 100 samples/request", "/api/v1/import/prometheus", "text/plain",
         _prom_text(st, small), {}, 100, 32),
        ("native JSON, 100 samples/request", "/api/v1/ingest", "application/json",
         json.dumps(next(iter(native_payloads(st)))).encode(), {}, 100, 32),
    ]
    vm_cases = [
        ("vmagent: Prometheus text", "/api/v1/import/prometheus", "text/plain",
         _prom_text(st, big), {}, 10_000, 4),
        ("vmagent: remote write", "/api/v1/write", "application/x-protobuf",
         _remote_write(st, big), snappy, 10_000, 4),
        ("vmagent: Prometheus text, 100/request", "/api/v1/import/prometheus", "text/plain",
         _prom_text(st, small), {}, 100, 32),
    ]
    print(f"standard workload, first step; {args.seconds}s per case; wrk and the server share "
          "2 cores; edge acks are fsync'd, vmagent's are not")
    print(f"{'protocol (10,000 samples/request unless said)':<42} {'conns':>5} {'req/s':>9} "
          f"{'samples/s':>11} {'CPU-s/M samples':>16} {'p99':>8} {'non-2xx':>8}")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        cfg, url = write_edge_config(tmp, f"http://127.0.0.1:{free_port()}", "k")
        text = cfg.read_text().replace('log_level = "warning"', 'log_level = "error"')
        cfg.write_text(text.replace("roll_interval_s = 0.2", "roll_interval_s = 1.0")
                       .replace("max_disk_mb = 256", "max_disk_mb = 20000\nmerge_after_s = 3600"))
        edge = edge_proc(tmp, cfg, url).start()
        try:
            for name, path, ctype, body, headers, per_req, conns in edge_cases:
                r = httpx.post(url + path, content=body,
                               headers={"Content-Type": ctype, **headers})
                assert r.status_code == 204, (name, r.status_code, r.text)
                bpath = tmp / "body"
                bpath.write_bytes(body)
                measure(edge.proc.pid, url + path, bpath, ctype,  # type: ignore[union-attr]
                        conns, args.seconds, tmp, per_req, name, headers)
        finally:
            edge.stop()
        closed = f"http://127.0.0.1:{free_port()}/api/v1/write"
        for name, path, ctype, body, headers, per_req, conns in vm_cases:
            proc, vurl = _start_vmagent(tmp / name[-12:].replace(" ", "_"), closed)
            try:
                r = httpx.post(vurl + path, content=body,
                               headers={"Content-Type": ctype, **headers})
                assert r.status_code == 204, (name, r.status_code, r.text)
                bpath = tmp / "body"
                bpath.write_bytes(body)
                measure(proc.pid, vurl + path, bpath, ctype, conns, args.seconds, tmp, per_req,
                        name, headers)
            finally:
                proc.terminate()
                proc.wait()


if __name__ == "__main__":
    main()
