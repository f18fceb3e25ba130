"""systemd's service notifications (``Type=notify``), without libsystemd: ``READY=1`` once
serving, ``STOPPING=1`` when draining, and ``WATCHDOG=1`` pings from the Trio loop itself, so a
stalled loop stops the pings and systemd restarts the service (``WatchdogSec=``). Used by the
edge node and central; no-ops when not run by systemd.
"""

from __future__ import annotations

import logging
import os
import socket

import trio

log = logging.getLogger("fleet_edge.sdnotify")


def sd_notify(message: str) -> None:
    """Tell systemd about our state when run as a ``Type=notify`` unit (no-op otherwise)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(addr)
            s.sendall(message.encode())
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)


async def watchdog() -> None:
    """Ping systemd's watchdog (``WatchdogSec=``) from the Trio loop at half its period: if
    the loop stalls, the pings stop and systemd restarts the node. A no-op without it."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return
    period = max(int(usec) / 1e6 / 2, 0.05)
    while True:
        sd_notify("WATCHDOG=1")
        await trio.sleep(period)
