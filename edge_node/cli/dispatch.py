"""``main``: the parsed command line to its command, the demo handed to its own process."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from ..config import EXAMPLE_CONFIG, EdgeConfig
from ..errors import ConfigError
from ..process import cli_exit
from .buffer_file import buffer_command, dead_letters
from .devices import devices
from .parser import build_parser
from .reload import reload_node
from .rules import aggregates, alerts, check_rules
from .run import run
from .status import status


def main(argv: list[str] | None = None) -> int:
    """``fleet-edge``: run the command ``argv`` (default ``sys.argv[1:]``) names; its exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.cmd == "demo":
        _demo(extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return cli_exit(lambda: _COMMANDS[args.cmd](args))


def _check_config(args: argparse.Namespace) -> int:
    """Validate a config file (with the environment's overrides); print it (--print) or OK."""
    try:
        cfg = EdgeConfig.from_toml(args.file)
    except ConfigError as exc:
        print(f"{args.file}: invalid: {exc}", file=sys.stderr)
        return 2
    warnings = placeholders(cfg) + cfg.security_warnings()
    for w in warnings:
        print(f"{args.file}: warning: {w}", file=sys.stderr)
    if args.print:
        shown = dataclasses.asdict(cfg)
        shown["central"]["api_key"] = "***"
        print(json.dumps(shown, indent=2))
    else:
        print(f"{args.file}: OK (node {cfg.node_id}, listen {cfg.listen}, data in "
              f"{cfg.data_dir}, central {cfg.central.url})"
              + (f", {len(warnings)} warning(s)" if warnings else ""))
    return 1 if warnings and args.strict else 0


def placeholders(cfg: EdgeConfig) -> list[str]:
    """The example config's placeholders still in ``cfg`` (it would run, and never forward)."""
    out = []
    if cfg.central.api_key == "CHANGE-ME":
        out.append("central.api_key is the example's placeholder 'CHANGE-ME': put the key "
                   "'fleet-central nodes add NODE_ID' printed")
    if "central.example" in cfg.central.url:
        out.append(f"central.url {cfg.central.url!r} is the example's placeholder host")
    return out


def _example_config(args: argparse.Namespace) -> int:
    """Print the commented example config."""
    print(EXAMPLE_CONFIG, end="")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": run,
    "check-config": _check_config,
    "example-config": _example_config,
    "check-rules": check_rules,
    "status": status,
    "reload": reload_node,
    "aggregates": aggregates,
    "alerts": alerts,
    "buffer": buffer_command,
    "dead-letters": dead_letters,
    "devices": devices,
}


def _demo(args: list[str]) -> NoReturn:
    """Become ``python -m fleetd_demo ARGS`` (the same process, so its output, signals and exit
    status are the demo's): the demo runs central as well, and edge_node never imports central.

    fleetd_demo is installed beside edge_node (in the same site-packages, or the repository in
    an editable install, or what a zipapp unpacked): that directory goes first on the new
    interpreter's path. ``-P`` keeps the working directory off it, as for the console script.
    """
    beside = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (beside, os.environ.get("PYTHONPATH")) if p)
    os.execve(sys.executable, [sys.executable, "-P", "-m", "fleetd_demo", *args],
              {**os.environ, "PYTHONPATH": path})
