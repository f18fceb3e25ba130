"""Durable means durable against power loss: what the real ``fleet-edge`` process does, seen by
``strace``. ``kill -9`` cannot show that a 204 waited for the disk (the page cache survives it);
the order of system calls can: with ``synchronous = "full"``, every 204 is written to its socket
only after the request's rows were written to the buffer's WAL and an ``fdatasync`` of it
returned. With ``"normal"`` the same requests get their 204 without one, so the check can fail,
and the connection reports the setting it really runs with.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from tests.e2e.procs import Proc, free_port, write_edge_config
from tests.tools import need

pytestmark = pytest.mark.e2e

LINE = re.compile(r"^(\d+)\s+(\d\d):(\d\d):(\d\d\.\d+) (.*)$")  # strace pads the pid
CALL = re.compile(r"^(\w+)\((\d+)<([^>]*)>")
RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>")


@dataclass
class Call:
    pid: int
    name: str
    path: str  # the fd's file, or TCP:[...] for a socket (strace -yy)
    start: float
    end: float | None  # when it returned (None: still running at the end)
    text: str


def parse(trace: str) -> list[Call]:
    """System calls of an ``strace -f -tt -yy`` log, each with its start and return time
    (a call another thread's calls interrupted is joined with its ``resumed`` line)."""
    calls: list[Call] = []
    open_: dict[tuple[int, str], Call] = {}
    for raw in trace.splitlines():
        m = LINE.match(raw)
        if not m:
            continue
        pid, t = int(m.group(1)), (int(m.group(2)) * 60 + int(m.group(3))) * 60 + float(
            m.group(4))
        rest = m.group(5)
        r = RESUMED.match(rest)
        if r:
            call = open_.pop((pid, r.group(1)), None)
            if call is not None:
                call.end = t
                call.text += rest
            continue
        c = CALL.match(rest)
        if not c:
            continue
        call = Call(pid, c.group(1), c.group(3), t, None, rest)
        calls.append(call)
        if rest.endswith("<unfinished ...>"):
            open_[(pid, call.name)] = call
        else:
            call.end = t
    return calls


async def test_every_204_waits_for_an_fdatasync_of_the_wal(tmp_path: Path) -> None:
    full = await run_traced(tmp_path / "full", "full")
    assert full.synchronous == "full"
    assert len(full.requests) == 20
    for req in full.requests:
        assert req.data_written, f"request {req.n}: no WAL write before its 204"
        assert req.synced, f"request {req.n}: 204 sent before an fdatasync of the WAL returned"


async def test_the_check_sees_a_204_that_did_not_wait(tmp_path: Path) -> None:
    normal = await run_traced(tmp_path / "normal", "normal")
    assert normal.synchronous == "normal"  # the connection runs with what was configured
    assert len(normal.requests) == 20
    assert all(r.data_written for r in normal.requests)
    # NORMAL syncs the WAL only at checkpoints: most 204s go out without waiting for the disk
    assert sum(r.synced for r in normal.requests) < 5


@dataclass
class Traced:
    n: int
    data_written: bool  # the buffer's WAL was written between the request and its 204
    synced: bool  # ...and an fdatasync/fsync of it returned after that write, before the 204


@dataclass
class Run:
    synchronous: str
    requests: list[Traced]


def start_traced(tmp: Path, synchronous: str) -> tuple[Proc, Path]:
    """``fleet-edge run`` under strace; returns the process and its trace file."""
    strace = need("strace", "apt-get install strace")
    tmp.mkdir()
    cfg, url = write_edge_config(tmp, f"http://127.0.0.1:{free_port()}", "unused")
    # no rolls between the requests: each window holds only its own commit
    cfg.write_text(cfg.read_text().replace(
        "roll_interval_s = 0.2", f'roll_interval_s = 3600\nsynchronous = "{synchronous}"'))
    trace = tmp / "trace.txt"
    argv = [strace, "-f", "-tt", "-yy", "-s", "48", "-o", str(trace),
            "-e", "trace=fdatasync,fsync,pwrite64,write,writev,sendto,sendmsg,recvfrom,read",
            sys.executable, "-m", "edge_node.cli", "run", "--config", str(cfg)]
    proc = Proc(argv, url, tmp / "edge.log")
    try:
        return proc.start(), trace
    except BaseException:
        kill_traced(tmp, proc)
        raise


def kill_traced(tmp: Path, proc: Proc) -> None:
    """Kill the traced node itself if still running (killing strace alone leaves it running,
    detached), then strace."""
    if proc.proc is not None and proc.proc.poll() is None:  # strace runs: so does the node
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((tmp / "edge" / "fleet-edge.pid").read_text()), signal.SIGKILL)
    proc.stop()


async def run_traced(tmp: Path, synchronous: str) -> Run:
    proc, trace = await trio.to_thread.run_sync(start_traced, tmp, synchronous)
    try:
        return await exercise(tmp, proc, trace)
    finally:
        kill_traced(tmp, proc)


async def exercise(tmp: Path, proc: Proc, trace: Path) -> Run:
    async with httpx.AsyncClient(timeout=30) as c:
        status = (await c.get(proc.url + "/api/v1/status")).json()
        for i in range(20):  # one at a time: each 204's window holds only its own commit
            r = await c.post(proc.url + "/api/v1/ingest", json={
                "device_id": f"dev-{i}", "metrics": [{"name": "probe", "value": i}]})
            assert r.status_code == 204
    # stop the traced node itself (SIGTERM: it drains and exits, then strace does); killing
    # strace would leave the node running, detached
    pid = int((tmp / "edge" / "fleet-edge.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    assert proc.proc is not None
    assert await trio.to_thread.run_sync(lambda: proc.proc.wait(30)) == 0  # type: ignore[union-attr]
    text = await trio.to_thread.run_sync(trace.read_text)
    return Run(status["buffer"]["synchronous"], windows(parse(text)))


def windows(calls: list[Call]) -> list[Traced]:
    """For each ingest request: from reading its request line to writing its 204."""
    out = []
    start: float | None = None
    for call in calls:
        if call.path.startswith("TCP:") and call.name in ("recvfrom", "read") and \
                "POST /api/v1/ingest" in call.text:
            start = call.start
        elif call.path.startswith("TCP:") and call.name in ("sendto", "write", "writev",
                                                             "sendmsg") and \
                "HTTP/1.1 204" in call.text and start is not None:
            sent = call.start
            wal = [c for c in calls if c.path.endswith("buffer.sqlite3-wal")
                   and start <= c.start <= sent]
            writes = [c.start for c in wal if c.name == "pwrite64"]
            synced = bool(writes) and any(
                c.name in ("fdatasync", "fsync") and c.start >= max(writes)
                and c.end is not None and c.end <= sent for c in wal)
            out.append(Traced(len(out), bool(writes), synced))
            start = None
    return out
