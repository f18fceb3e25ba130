"""systemd readiness and watchdog notifications from a running node and from central (a fake
NOTIFY_SOCKET)."""

from __future__ import annotations

import os
import socket
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from central.pipeline import Pipeline
from central.server import run_central
from central.sinks.sqlite import SQLiteStore
from edge_node.node import open_edge_node
from tests.conftest import edge_config


def _notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> socket.socket:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: pings every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    return sock


async def _read_until(sock: socket.socket, got: list[str], pred: Any) -> None:
    with trio.fail_after(10):
        while not pred(got):
            try:
                got.append(sock.recv(256).decode())
            except BlockingIOError:
                await trio.sleep(0.02)


async def test_ready_then_watchdog_pings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    sock = _notify_socket(tmp_path, monkeypatch)
    got: list[str] = []
    async with open_edge_node(edge_config(tmp_path, None)):
        await _read_until(sock, got, lambda g: g.count("WATCHDOG=1") >= 3)
    sock.close()
    assert got[0] == "READY=1"
    assert "STOPPING=1" not in got[:4]


async def test_central_notifies_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = _notify_socket(tmp_path, monkeypatch)
    got: list[str] = []
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(partial(run_central, Pipeline(SQLiteStore(tmp_path / "c")),
                                             "127.0.0.1:0", graceful_s=1))
        await _read_until(sock, got, lambda g: g.count("WATCHDOG=1") >= 2)
        handle.stop()
    await _read_until(sock, got, lambda g: "STOPPING=1" in g)
    sock.close()
    assert got[0] == "READY=1"


async def test_no_watchdog_for_another_pid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    from edge_node.sdnotify import watchdog

    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    with trio.fail_after(1):
        await watchdog()  # returns at once: the watchdog is some other process's
