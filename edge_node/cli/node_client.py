"""How a command reaches the node: its config file (for the listen address, the data directory
and the buffer), and the local HTTP API of the running node (GET a JSON document)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import httpx

from ..config import EdgeConfig
from ..errors import ConfigError


def load_config(path: str) -> EdgeConfig:
    """The config at ``path``; if it is invalid, say why and exit with status 2."""
    try:
        return EdgeConfig.from_toml(path)
    except ConfigError as exc:
        print(f"fleet-edge: invalid configuration: {exc}", file=sys.stderr)
        sys.exit(2)


def node_url(args: argparse.Namespace) -> str | None:
    """The running node's base URL from --url or the listen address in --config."""
    if args.url:
        return str(args.url).rstrip("/")
    if args.config:
        cfg = load_config(args.config)
        host = cfg.listen_host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        return f"http://{host}:{cfg.listen_port}"
    print(f"fleet-edge {args.cmd}: give --config FILE or --url URL", file=sys.stderr)
    return None


def node_json(args: argparse.Namespace, path: str, pick: Callable[[Any], Any]
              ) -> tuple[Any, int | None]:
    """GET ``path`` from the running node: (the picked part, None), or (None, exit code) after
    saying what went wrong; with --json the part is printed and the exit code is 0."""
    base = node_url(args)
    if base is None:
        return None, 2
    try:
        part = pick(httpx.get(base + path, timeout=10).json())
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        print(f"fleet-edge {args.cmd}: cannot read {path} from the node at {base}: {exc}",
              file=sys.stderr)
        return None, 1
    if args.json:
        print(json.dumps(part, indent=2))
        return None, 0
    return part, None
