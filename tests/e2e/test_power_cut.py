"""A power cut under load: the buffer on a filesystem that loses every write not yet synced.

``fleet-edge run`` keeps its data directory on :mod:`tests.powercut_fs` (FUSE), takes requests
while central is first down, then up and draining, and the power is cut mid-stream: the node
is frozen, every unsynced write is thrown away, the node is killed. The buffer is then opened
from what the "disk" holds: ``fleet-edge buffer check`` passes, and once a new node on it has
drained, central holds every sample a device got a 204 for, exactly once.

With ``synchronous = "normal"`` (commits not synced) the same cut loses acknowledged samples:
the layer's cut is real, so the check of the ``full`` run can fail.

Needs root and /dev/fuse (CI runs as root), fusermount3 and Debian's python3-fusepy.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

from tests.e2e.procs import (
    LoadGenerator,
    Proc,
    edge_proc,
    register,
    start_central,
    stored_sequence_numbers,
    write_edge_config,
)
from tests.tools import need

pytestmark = pytest.mark.e2e

LAYER = Path(__file__).resolve().parent.parent / "powercut_fs.py"


def mount_layer(backing: Path, mnt: Path) -> subprocess.Popen[bytes]:
    need("fusermount3", "apt-get install fuse3")
    if subprocess.run(["/usr/bin/python3", "-c", "import fusepy"],
                      capture_output=True, check=False).returncode != 0:
        if os.environ.get("CI"):
            pytest.fail("python3-fusepy is missing (scripts/backends installs it)")
        pytest.skip("python3-fusepy is not installed (apt-get install python3-fusepy)")
    if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the power-cut test needs root and /dev/fuse")
        pytest.skip("FUSE mounts need root and /dev/fuse here")
    backing.mkdir()
    mnt.mkdir()
    with (mnt.parent / "powercut_fs.log").open("wb") as log:
        proc = subprocess.Popen(["/usr/bin/python3", str(LAYER), str(backing), str(mnt)],
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the FUSE layer did not mount: "
                               + (mnt.parent / "powercut_fs.log").read_text())
        time.sleep(0.05)
    return proc


def cut_power(mnt: Path, edge: Proc, layer: subprocess.Popen[bytes], seed: int | None
              ) -> None:
    """Freeze the node, throw away what is unsynced (or, with ``seed``, a random part of it),
    kill the node, unmount."""
    assert edge.proc is not None
    edge.proc.send_signal(signal.SIGSTOP)
    try:
        open(mnt / (".powercut" if seed is None else f".powercut-{seed}"), "w").close()
    except OSError:
        pass  # EIO: the layer is dead from this instant
    else:
        raise AssertionError("the power cut did not happen")
    edge.proc.send_signal(signal.SIGKILL)
    edge.proc.wait()
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
    layer.wait(10)


@pytest.mark.parametrize(("synchronous", "seed"), [("full", None), ("full", 1), ("full", 2),
                                                   ("normal", None)],
                         ids=["full", "full-torn-1", "full-torn-2", "normal"])
async def test_a_power_cut_loses_nothing_acknowledged(synchronous: str, seed: int | None,
                                                       tmp_path: Path, procs: list[Proc]) -> None:
    """``seed``: the disk kept a random part of the unsynced writes, torn at sectors."""
    backing, mnt = tmp_path / "disk", tmp_path / "mnt"
    layer = await trio.to_thread.run_sync(mount_layer, backing, mnt)
    try:
        central = start_central(tmp_path)
        procs.append(central)
        key = register(tmp_path)
        cfg, url = write_edge_config(tmp_path, central.url, key)
        cfg.write_text(cfg.read_text()
                       .replace(f'data_dir = "{tmp_path / "edge"}"', f'data_dir = "{mnt / "edge"}"')
                       .replace("roll_interval_s = 0.2",
                                f'roll_interval_s = 0.2\nsynchronous = "{synchronous}"'))
        edge = edge_proc(tmp_path, cfg, url)
        procs.append(edge)
        await trio.to_thread.run_sync(edge.start)
        load = LoadGenerator(url, concurrency=4)
        stop = trio.Event()
        async with trio.open_nursery() as n:
            n.start_soon(load.run, stop)
            await trio.sleep(2.0)  # central down: the backlog builds in the buffer
            await trio.to_thread.run_sync(central.start)
            await trio.sleep(1.5)  # draining while devices keep posting
            acked_before_cut, cut_before = len(load.acked), load.cut
            await trio.to_thread.run_sync(cut_power, mnt, edge, layer, seed)
            stop.set()
    finally:
        if layer.poll() is None:
            await trio.run_process(["fusermount3", "-u", "-z", str(mnt)], check=False)
            layer.kill()
    assert acked_before_cut > 50
    assert load.cut > cut_before, "no request was in flight at the cut"
    sent_before_cut = len(stored_sequence_numbers(tmp_path))
    assert 0 < sent_before_cut < len(load.acked) * load.per_request  # the cut was mid-drain

    # the disk as the cut left it: a new node on it (same config, the plain directory)
    cfg.write_text(cfg.read_text().replace(f'data_dir = "{mnt / "edge"}"',
                                           f'data_dir = "{backing / "edge"}"'))
    check = await trio.run_process([sys.executable, "-m", "edge_node.cli", "buffer", "check",
                                    "--config", str(cfg)], capture_stdout=True,
                                   capture_stderr=True, check=False)
    out = check.stdout.decode() + check.stderr.decode()
    assert check.returncode == 0 and "buffer OK" in out, out
    edge2 = edge_proc(tmp_path, cfg, url)
    procs.append(edge2)
    await trio.to_thread.run_sync(edge2.start)
    want = len(load.acked) * load.per_request
    async with httpx.AsyncClient(timeout=10) as c:
        with trio.fail_after(90):  # until the new node has nothing left for central
            while (await c.get(url + "/api/v1/status")).json()["buffer"]["pending_rows"]:
                await trio.sleep(0.2)
    counts = collections.Counter(stored_sequence_numbers(tmp_path))
    missing = set(load.expected_values()) - set(counts)
    if synchronous == "full":
        assert not [v for v, c in counts.items() if c > 1], "samples stored twice"
        assert not missing, f"{len(missing)} of {want} acknowledged samples lost by the cut"
    else:
        # commits not synced: the cut took the last ones, though they were acknowledged (and
        # the buffer went back in time: a roll or an ack undone may also send rows twice)
        assert missing, "synchronous=normal lost nothing: the cut did not cut"
