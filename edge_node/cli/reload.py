"""``fleet-edge reload``: check the config, signal the running node (SIGHUP to the pid in its
data directory, only if that pid is a ``fleet-edge run``) and report what the reload applied."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from ..config import EdgeConfig
from ..errors import ConfigError
from .node_client import node_client


def reload_node(args: argparse.Namespace) -> int:
    """SIGHUP the running node and wait (60 s at most) for its status to report the reload."""
    from ..node import PIDFILE

    try:
        cfg = EdgeConfig.from_toml(args.config)
    except ConfigError as exc:
        print(f"fleet-edge reload: {args.config} is invalid, the node was not signalled and "
              f"keeps its running config: {exc}", file=sys.stderr)
        return 2
    pidfile = Path(cfg.data_dir) / PIDFILE
    try:
        pid = int(pidfile.read_text().strip())
        # a pid file left by a killed node may name a process that reused the number:
        # signal only a fleet-edge run
        argv = " ".join(psutil.Process(pid).cmdline())
        if "run" not in argv or ("fleet-edge" not in argv and "edge_node" not in argv):
            raise ProcessLookupError(pid)
    except psutil.AccessDenied:
        pass  # another user's process: the signal below says whether we may send it
    except PermissionError:
        print(f"fleet-edge reload: not allowed to read {pidfile} or signal the node: run it as "
              "root or the node's user, or: systemctl reload fleet-edge", file=sys.stderr)
        return 1
    except (OSError, ValueError, psutil.NoSuchProcess):
        print(f"fleet-edge reload: no running node ({pidfile} missing or stale); "
              "under systemd: systemctl reload fleet-edge", file=sys.stderr)
        return 1
    client = node_client(args)
    assert client is not None  # --config is required

    def last() -> Any:
        return client.get("/api/v1/status").json()["last_reload"]

    try:
        before = last()
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + 60
        while (now := last()) == before:
            if time.monotonic() > deadline:
                print("fleet-edge reload: the node did not report a reload within 60 s",
                      file=sys.stderr)
                return 1
            time.sleep(0.1)
    except PermissionError:
        print(f"fleet-edge reload: not allowed to signal pid {pid} (run as the node's user or "
              "root)", file=sys.stderr)
        return 1
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        print(f"fleet-edge reload: signalled pid {pid} but cannot read its status at "
              f"{client.base_url}: "
              f"{exc}", file=sys.stderr)
        return 1
    if not now["ok"]:
        print(f"reload refused (the node keeps its running config): {now['error']}",
              file=sys.stderr)
        return 1
    print(f"reloaded {args.config}: applied {', '.join(now['applied']) or 'nothing (no change)'}")
    if now["needs_restart"]:
        print(f"not applied, needs a restart: {', '.join(now['needs_restart'])}")
    return 0
