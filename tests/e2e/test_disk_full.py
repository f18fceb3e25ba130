"""A full disk is a state, not a crash: the data directory on a real 16 MB tmpfs.

Central is down while devices post metrics and (incompressible) logs until the disk is full.
The edge must answer 503 with ``Retry-After`` and the reason (never a 500, never exit), fire
``BufferDiskFull``, and, once central is up, forward everything, free the space and accept data
again by itself. Every acknowledged sample and line reaches central exactly once, and
``fleet-edge buffer check`` passes.

Mounting needs root (CI runs as root; elsewhere the test is skipped, under CI it fails).
"""

from __future__ import annotations

import collections
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from tests.e2e.procs import NOW, Proc, edge_proc, register, start_central, write_edge_config

pytestmark = pytest.mark.e2e

LINES_PER_REQUEST = 5
SAMPLES_PER_REQUEST = 10


@pytest.fixture
def small_disk(tmp_path: Path) -> object:
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the disk-full test needs root to mount a tmpfs (CI runs as root)")
        pytest.skip("mounting a tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def payload(i: int) -> dict[str, object]:
    return {"device_id": f"dev-{i % 5}",
            "metrics": [{"name": "load_seq", "value": i * 100 + k, "ts": NOW + i * 100 + k}
                        for k in range(SAMPLES_PER_REQUEST)],
            "logs": [{"line": f"req {i} line {k} " + os.urandom(1000).hex(),
                      "ts": NOW + i * 100 + k} for k in range(LINES_PER_REQUEST)]}


def fill(path: Path) -> None:
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def central_rows(tmp: Path) -> tuple[list[int], int]:
    conn = sqlite3.connect(tmp / "central" / "central.sqlite3", timeout=30)
    try:
        values = [int(v) for (v,) in conn.execute(
            "SELECT value FROM samples_v WHERE name='load_seq'")]
        (lines,) = conn.execute("SELECT count(*) FROM logs").fetchone()
        return values, int(lines)
    finally:
        conn.close()


async def test_a_full_disk_refuses_then_recovers_by_itself(
        small_disk: Path, tmp_path: Path, procs: list[Proc]) -> None:
    central = start_central(tmp_path)
    procs.append(central)
    key = register(tmp_path)
    cfg, url = write_edge_config(tmp_path, central.url, key, extra="""
[alerts]
builtin_interval_s = 1
""")
    cfg.write_text(cfg.read_text().replace(f'data_dir = "{tmp_path / "edge"}"',
                                           f'data_dir = "{small_disk / "edge"}"'))
    edge = edge_proc(tmp_path, cfg, url)
    procs.append(edge)
    await trio.to_thread.run_sync(edge.start)  # central is down: it stays down for now

    acked: list[int] = []
    refusals: list[httpx.Response] = []
    other: list[str] = []
    async with httpx.AsyncClient(timeout=30) as c:
        i = 0
        refusing_since: float | None = None
        with trio.fail_after(240):
            # until the disk is full for good: refused for 3 s on end (before that, rolls and
            # checkpoints may hand some room back, and ingest resumes in it)
            while refusing_since is None or trio.current_time() - refusing_since < 3:
                try:
                    r = await c.post(url + "/api/v1/ingest", json=payload(i))
                except httpx.HTTPError as exc:
                    other.append(f"request {i}: {exc!r}")
                    break
                if r.status_code == 204:
                    acked.append(i)
                    refusing_since = None
                elif r.status_code == 503:
                    refusals.append(r)
                    refusing_since = refusing_since or trio.current_time()
                    await trio.sleep(0.05)
                else:
                    other.append(f"request {i}: HTTP {r.status_code} {r.text}")
                    break
                i += 1
        assert not other, other
        assert edge.proc is not None and edge.proc.poll() is None, "the edge exited"
        assert len(acked) > 500  # the disk held data before it filled
        body = refusals[-1].json()
        assert "disk is full" in body["error"] and refusals[-1].headers["Retry-After"] == "30"
        assert refusals[-1].text.endswith("\n")

        async def firing() -> list[str]:
            alerts = (await c.get(url + "/api/v1/alerts")).json()
            return [a["labels"]["alertname"] for a in alerts["data"]["alerts"]
                    if a.get("state") == "firing"]

        with trio.fail_after(30):
            while "BufferDiskFull" not in await firing():
                await trio.sleep(0.5)
        metrics = (await c.get(url + "/metrics")).text
        assert "fleet_edge_buffer_disk_full 1" in metrics
        assert (await c.get(url + "/readyz")).status_code == 503
        status = (await c.get(url + "/api/v1/status")).json()
        assert "disk is full" in status["buffer"]["refusing"]
        assert any("disk is full" in why for why in status["not_ready"])

        # central comes up: forwarding frees the space, and ingest resumes by itself
        await trio.to_thread.run_sync(central.start)
        with trio.fail_after(180):
            while True:
                r = await c.post(url + "/api/v1/ingest", json=payload(i))
                if r.status_code == 204:
                    acked.append(i)
                    break
                assert r.status_code == 503, r.text
                i += 1
                await trio.sleep(0.5)
        with trio.fail_after(120):
            while (await c.get(url + "/api/v1/status")).json()["buffer"]["pending_rows"]:
                await trio.sleep(0.5)
        with trio.fail_after(60):  # drained: the room comes back (pages handed back, step by
            while "fleet_edge_buffer_disk_full 0" not in (  # step, the reserve put back)
                    await c.get(url + "/metrics")).text:
                await trio.sleep(0.5)
    assert edge.terminate() == 0

    values, lines = central_rows(tmp_path)
    counts = collections.Counter(values)
    assert not [v for v, n in counts.items() if n > 1], "samples stored twice"
    want = {i * 100 + k for i in acked for k in range(SAMPLES_PER_REQUEST)}
    assert set(counts) == want  # every acknowledged sample, and only those
    assert lines == len(acked) * LINES_PER_REQUEST
    check = await trio.run_process([sys.executable, "-m", "edge_node.cli", "buffer", "check",
                                    "--config", str(cfg)], capture_stdout=True,
                                   capture_stderr=True, check=False)
    out = check.stdout.decode() + check.stderr.decode()
    assert check.returncode == 0 and "buffer OK" in out, out


async def test_a_disk_filled_by_another_program_is_survived(
        small_disk: Path, tmp_path: Path, procs: list[Proc]) -> None:
    """Something else (a runaway log) takes the last byte while the edge writes: SQLite fails
    mid-commit; the edge frees its reserve, refuses with 503 and carries on; once the other
    file is gone it accepts again. Central is up throughout."""
    central = start_central(tmp_path)
    procs.append(central)
    key = register(tmp_path)
    await trio.to_thread.run_sync(central.start)
    cfg, url = write_edge_config(tmp_path, central.url, key)
    # rolls (which measure the free space first) 5 s apart, so the next request's commit,
    # not a roll's measurement, is what meets the full disk
    cfg.write_text(cfg.read_text().replace(f'data_dir = "{tmp_path / "edge"}"',
                                           f'data_dir = "{small_disk / "edge"}"')
                   .replace("roll_interval_s = 0.2", "roll_interval_s = 5.0"))
    edge = edge_proc(tmp_path, cfg, url)
    procs.append(edge)
    await trio.to_thread.run_sync(edge.start)
    reserve = small_disk / "edge" / "buffer.reserve"
    assert reserve.stat().st_size == 1 << 20  # 2% of 16 MiB is below the 1 MiB floor

    filler = small_disk / "runaway.log"
    acked: list[int] = []
    statuses: collections.Counter[int] = collections.Counter()
    async with httpx.AsyncClient(timeout=30) as c:
        i = 0

        async def post() -> int:
            nonlocal i
            r = await c.post(url + "/api/v1/ingest", json=payload(i))
            statuses[r.status_code] += 1
            if r.status_code == 204:
                acked.append(i)
            i += 1
            return r.status_code

        for _ in range(20):
            assert await post() == 204
        # fill every byte that is left (the reserve file stays: it is the edge's)
        await trio.to_thread.run_sync(fill, filler)
        with trio.fail_after(60):
            while await post() != 503:
                await trio.sleep(0.05)
        why = (await c.get(url + "/api/v1/status")).json()["buffer"]["refusing"]
        if "(SQLite:" in why:  # a commit met the full disk: the reserve goes
            assert not reserve.exists(), "the reserve was not handed back on the full disk"
        else:  # a roll measured first (it can, rarely): refused with the reserve kept
            assert "reserve left" in why and reserve.exists(), why
        for _ in range(10):
            assert await post() == 503
        metrics = (await c.get(url + "/metrics")).text
        assert "fleet_edge_buffer_disk_full 1" in metrics
        filler.unlink()  # the operator cleans up: the edge notices by itself
        with trio.fail_after(60):
            while await post() != 204:
                await trio.sleep(0.2)
        with trio.fail_after(120):
            while (await c.get(url + "/api/v1/status")).json()["buffer"]["pending_rows"]:
                await trio.sleep(0.5)
        assert reserve.exists()  # put back once there was room
    assert set(statuses) <= {204, 503}, statuses
    assert edge.terminate() == 0
    values, lines = central_rows(tmp_path)
    assert sorted(values) == sorted(i * 100 + k for i in acked for k in range(SAMPLES_PER_REQUEST))
    assert lines == len(acked) * LINES_PER_REQUEST


async def test_a_full_disk_at_central_is_a_503_and_the_edge_keeps_its_data(
        small_disk: Path, tmp_path: Path, procs: list[Proc]) -> None:
    """Central's embedded SQLite store on the small disk: filled up, central answers 503, the
    edge keeps every acknowledged row and delivers it once there is room again."""
    central = start_central(small_disk)  # its data dir on the tmpfs
    procs.append(central)
    key = register(small_disk)
    await trio.to_thread.run_sync(central.start)
    cfg, url = write_edge_config(tmp_path, central.url, key)
    edge = edge_proc(tmp_path, cfg, url)
    procs.append(edge)
    await trio.to_thread.run_sync(edge.start)
    filler = small_disk / "runaway.log"
    await trio.to_thread.run_sync(fill, filler)
    acked: list[int] = []
    async with httpx.AsyncClient(timeout=30) as c:
        for i in range(30):
            r = await c.post(url + "/api/v1/ingest", json=payload(i))
            assert r.status_code == 204  # the edge's disk is fine
            acked.append(i)

        async def refused() -> float:
            text = (await c.get(url + "/metrics")).text
            return sum(float(ln.split()[-1]) for ln in text.splitlines()
                       if ln.startswith('fleet_edge_forward_errors_total{reason="503"}'))

        with trio.fail_after(60):
            while not await refused():
                await trio.sleep(0.2)
        assert (await c.get(url + "/api/v1/status")).json()["buffer"]["pending_rows"] > 0
        assert central.proc is not None and central.proc.poll() is None
        filler.unlink()
        with trio.fail_after(120):
            while (await c.get(url + "/api/v1/status")).json()["buffer"]["pending_rows"]:
                await trio.sleep(0.5)
    values, lines = central_rows(small_disk)
    assert sorted(values) == sorted(i * 100 + k for i in acked for k in range(SAMPLES_PER_REQUEST))
    assert lines == len(acked) * LINES_PER_REQUEST
