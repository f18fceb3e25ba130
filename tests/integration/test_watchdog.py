"""systemd readiness and watchdog notifications from a running node (a fake NOTIFY_SOCKET)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import trio

from edge_node.node import open_edge_node
from tests.conftest import edge_config


async def test_ready_then_watchdog_pings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: pings every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    got: list[str] = []
    async with open_edge_node(edge_config(tmp_path, None)):
        with trio.fail_after(10):
            while got.count("WATCHDOG=1") < 3:
                try:
                    got.append(sock.recv(256).decode())
                except BlockingIOError:
                    await trio.sleep(0.02)
    sock.close()
    assert got[0] == "READY=1"
    assert "STOPPING=1" not in got[:4]


async def test_no_watchdog_for_another_pid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    from edge_node.node import watchdog

    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    with trio.fail_after(1):
        await watchdog()  # returns at once: the watchdog is some other process's
