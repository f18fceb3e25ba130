"""Real edge and central processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

NOW = 1_795_839_600_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20,
                 verify: ssl.SSLContext | bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=1, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not healthy after {timeout}s:\n{log.read_text()}")


@dataclass
class Proc:
    argv: list[str]
    url: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    verify: ssl.SSLContext | bool = True  # how the health check trusts an https:// url

    def start(self) -> Proc:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, **self.env})
        wait_healthy(self.url, self.proc, self.log, verify=self.verify)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def central_cli(*args: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run([sys.executable, "-m", "central.cli", *args], check=True,
                         capture_output=True, text=True, env={**os.environ, **(env or {})})
    return out.stdout


def start_central(tmp: Path, port: int | None = None, env: dict[str, str] | None = None
                  ) -> Proc:
    """A ``fleet-central run`` process (not started); ``env`` selects its backends."""
    port = port or free_port()
    return Proc([sys.executable, "-m", "central.cli", "--log-level", "warning", "run",
                 "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp / "central")],
                f"http://127.0.0.1:{port}", tmp / "central.log", env=env or {})


def register(tmp: Path, node_id: str = "edge-e2e", env: dict[str, str] | None = None,
             org: str = "acme") -> str:
    out = central_cli("nodes", "add", node_id, "--org", org, "--data-dir",
                      str(tmp / "central"), env=env)
    return out.strip().splitlines()[-1]


# the tests count exact rows: the gateway's own metrics only where a test asks for them
NO_HOST = "[host]\nenabled = false"


def write_edge_config(tmp: Path, central_url: str, key: str, *, node_id: str = "edge-e2e",
                      port: int | None = None, extra: str = "") -> tuple[Path, str]:
    port = port or free_port()
    cfg = tmp / "edge.toml"
    cfg.write_text(f"""
node_id = "{node_id}"
listen = "127.0.0.1:{port}"
data_dir = "{tmp / 'edge'}"
log_level = "warning"
drain_timeout_s = 5.0
[central]
url = "{central_url}"
api_key = "{key}"
backoff_initial_s = 0.05
backoff_max_s = 0.5
[buffer]
max_disk_mb = 256
roll_interval_s = 0.2
{extra}
{"" if "[host]" in extra else NO_HOST}
""")
    return cfg, f"http://127.0.0.1:{port}"


def edge_proc(tmp: Path, cfg: Path, url: str) -> Proc:
    return Proc([sys.executable, "-m", "edge_node.cli", "run", "--config", str(cfg)], url,
                tmp / "edge.log")


def stored_sequence_numbers(tmp: Path) -> list[int]:
    """Values of every ``load_seq`` sample central stored (one per acknowledged request)."""
    conn = sqlite3.connect(tmp / "central" / "central.sqlite3", timeout=30)
    try:
        return [int(v) for (v,) in conn.execute(
            "SELECT value FROM samples_v WHERE name='load_seq'")]
    finally:
        conn.close()


class LoadGenerator:
    """Posts numbered requests; records which ones the edge acknowledged with 204."""

    def __init__(self, url: str, *, concurrency: int = 8, per_request: int = 20) -> None:
        self.url = url + "/api/v1/ingest"
        self.concurrency = concurrency
        self.per_request = per_request
        self.next = 0
        self.acked: list[int] = []
        self.failed = 0
        #: requests that were under way when the connection broke (not refused at connect)
        self.cut = 0

    def _payload(self, i: int) -> dict[str, object]:
        # sample k of request i carries value i*1000+k at a unique timestamp
        return {"device_id": f"dev-{i % 10}", "labels": {"site": "e2e"},
                "metrics": [{"name": "load_seq", "value": i * 1000 + k, "ts": NOW + i * 1000 + k}
                            for k in range(self.per_request)]}

    async def run(self, stop: trio.Event) -> None:
        async with httpx.AsyncClient(timeout=10) as client, trio.open_nursery() as n:
            for _ in range(self.concurrency):
                n.start_soon(self._worker, client, stop)

    async def _worker(self, client: httpx.AsyncClient, stop: trio.Event) -> None:
        while not stop.is_set():
            i = self.next
            self.next += 1
            try:
                r = await client.post(self.url, json=self._payload(i))
            except httpx.HTTPError as exc:
                self.failed += 1
                if not isinstance(exc, httpx.ConnectError):
                    self.cut += 1
                await trio.sleep(0.05)
                continue
            if r.status_code == 204:
                self.acked.append(i)
            else:
                self.failed += 1

    def expected_values(self) -> list[int]:
        return sorted(i * 1000 + k for i in self.acked for k in range(self.per_request))
