"""The demo's command line (``fleet-edge demo`` hands its arguments here)."""

from __future__ import annotations

import argparse
import logging
import sys
from functools import partial

import trio

from .run import run_demo


def build_parser() -> argparse.ArgumentParser:
    """The options of ``fleet-edge demo``."""
    demo = argparse.ArgumentParser(prog="fleet-edge demo")
    demo.add_argument("--devices", type=int, default=50, help="simulated devices (default 50)")
    demo.add_argument("--duration", type=float, default=20.0,
                      help="seconds the devices report for (default 20)")
    demo.add_argument("--data-dir", help="keep the demo's data here instead of a temp dir")
    demo.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return demo


def main(argv: list[str] | None = None) -> int:
    """Run the demo with the options in ``argv`` (default ``sys.argv[1:]``); its exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=(args.log_level or "warning").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.devices < 1 or args.duration <= 0:
        print("fleet-edge demo: --devices must be >= 1 and --duration > 0", file=sys.stderr)
        return 2
    return trio.run(partial(run_demo, args.devices, args.duration, data_dir=args.data_dir))
