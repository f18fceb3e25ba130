"""``fleet-edge run``: the node as a service process: logging, the node in a Trio run, a reload
on each SIGHUP, a graceful stop on SIGTERM/SIGINT, and one clear line if it cannot start."""

from __future__ import annotations

import argparse
import logging
import signal
from functools import partial

import trio

from ..config import EdgeConfig
from ..errors import EdgeError
from ..process import quiet_libraries, run_reporting, stop_on_signal, tune_gc
from .node_client import load_config


def run(args: argparse.Namespace) -> int:
    """Run the node until a signal stops it; 1 (after one line on stderr) if it cannot start."""
    level = args.log_level
    cfg = load_config(args.config)
    logging.basicConfig(level=(level or cfg.log_level).upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries(level or cfg.log_level)  # the forwarder logs what matters
    return run_reporting(_serve, cfg, args.config, expected=(EdgeError, OSError),
                         prefix="fleet-edge: cannot start")


async def _serve(cfg: EdgeConfig, path: str) -> None:
    """The node until SIGTERM or SIGINT stops it; each SIGHUP reloads it (shielded)."""
    from ..node import run_edge_node

    tune_gc()
    async with trio.open_nursery() as nursery:
        node = await nursery.start(partial(run_edge_node, cfg, config_path=path))

        hup = trio.CancelScope()

        async def reload_on_sighup() -> None:
            with hup, trio.open_signal_receiver(signal.SIGHUP) as signals:
                async for _ in signals:
                    logging.getLogger("fleet_edge").info("SIGHUP received: reloading %s", path)
                    with trio.CancelScope(shield=True):  # a SIGTERM now waits for it to finish
                        await node.reload()

        nursery.start_soon(reload_on_sighup)
        await stop_on_signal(node.stop, "fleet_edge")
        hup.cancel()  # the node drains and stops on its own
