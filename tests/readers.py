"""Read back what central wrote, with each backend's own client or API (not our code)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from typing import Any

import httpx

from tests.servers import PG_BIN


def psql(url: str, sql: str, *, user: str | None = None, org: str | None = None
         ) -> list[list[str]]:
    """Rows of ``sql`` via the ``psql`` client, as lists of strings."""
    if user:
        url = url.replace("postgres@", f"{user}@", 1)
    if org is not None:
        sql = f"SET fleetd.org = '{org}'; {sql}"
    out = subprocess.run([str(PG_BIN / "psql"), url, "-At", "-F", "\t", "-v",
                          "ON_ERROR_STOP=1", "-c", sql],
                         check=True, capture_output=True, text=True)
    lines = [ln for ln in out.stdout.splitlines() if ln and ln != "SET"]
    return [ln.split("\t") for ln in lines]


def vm_export(url: str, match: str) -> list[dict[str, Any]]:
    """Every raw sample VictoriaMetrics holds for series selector ``match``."""
    httpx.get(url + "/internal/force_flush", timeout=10)
    r = httpx.post(url + "/api/v1/export", data={"match[]": match}, timeout=30)
    r.raise_for_status()
    return [json.loads(ln) for ln in r.text.splitlines() if ln.strip()]


def metric_total(url: str, name: str, *, verify: Any = True, **labels: str) -> float:
    """The sum of every sample of ``name`` on ``url``'s ``/metrics`` whose labels include
    ``labels`` (all label sets when none are given)."""
    total = 0.0
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in httpx.get(url + "/metrics", timeout=10, verify=verify).text.splitlines():
        if line.startswith((name + " ", name + "{")):
            head = line.rsplit(" ", 1)[0]
            inside = head[len(name) + 1:-1].split(",") if head != name else []
            if all(w in inside for w in want):
                total += float(line.rsplit(" ", 1)[1])
    return total


def vm_values(url: str, match: str) -> list[float]:
    return sorted(v for s in vm_export(url, match) for v in s["values"])


def ch_query(url: str, sql: str) -> list[dict[str, Any]]:
    r = httpx.post(url, content=(sql + " FORMAT JSONEachRow").encode(), timeout=30)
    r.raise_for_status()
    return [json.loads(ln) for ln in r.text.splitlines() if ln.strip()]


def redis_cli(addr: str, *args: str) -> str:
    host, _, port = addr.rpartition(":")
    cli = shutil.which("redis-cli") or "redis-cli"
    out = subprocess.run([cli, "-h", host, "-p", port, "--raw", *args], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def eventually(fn: Any, timeout: float = 30.0, interval: float = 0.2) -> Any:
    """Call ``fn`` until it returns a truthy value (returned) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(interval)
