"""How a command reaches the node: its config file (for the listen address, the data directory
and the buffer), and the local HTTP API of the running node (GET a JSON document)."""

from __future__ import annotations

import argparse
import json
import ssl
import sys
from collections.abc import Callable
from typing import Any

import httpx

from ..config import EdgeConfig
from ..errors import ConfigError
from ..tls import split_listen, tls_problem


def load_config(path: str) -> EdgeConfig:
    """The config at ``path``; if it is invalid, say why and exit with status 2."""
    try:
        return EdgeConfig.from_toml(path)
    except ConfigError as exc:
        print(f"fleet-edge: invalid configuration: {exc}", file=sys.stderr)
        sys.exit(2)


def _local(listen: str) -> str:
    host, port = split_listen(listen)
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"{'[' + host + ']' if ':' in host else host}:{port}"


def pinned(cert_file: str) -> ssl.SSLContext:
    """Trust exactly the listener's own certificate (the command runs on the node's box and
    reaches it by whatever address: the certificate need not name it)."""
    ctx = ssl.create_default_context(cafile=cert_file)
    ctx.check_hostname = False
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf itself is the anchor
    return ctx


def node_client(args: argparse.Namespace) -> httpx.Client | None:
    """A client for the running node's local API, from --url or --config: its plain listener
    (``tls.plain_listen``) when there is one, else ``listen`` (HTTPS trusting the listener's
    own certificate when ``[tls]`` is on)."""
    if args.url:
        return httpx.Client(base_url=str(args.url).rstrip("/"), timeout=10)
    if not args.config:
        print(f"fleet-edge {args.cmd}: give --config FILE or --url URL", file=sys.stderr)
        return None
    cfg = load_config(args.config)
    t = cfg.tls
    if t.plain_listen:
        return httpx.Client(base_url=f"http://{_local(t.plain_listen)}", timeout=10)
    if t.cert_file:
        return httpx.Client(base_url=f"https://{_local(cfg.listen)}", timeout=10,
                            verify=pinned(t.cert_file))
    return httpx.Client(base_url=f"http://{_local(cfg.listen)}", timeout=10)


def unreachable(args: argparse.Namespace, client: httpx.Client, exc: Exception) -> str:
    """Why the node could not be read, with a hint for a listener that wants certificates."""
    problem = tls_problem(exc)
    if problem and "certificate required" in problem:
        problem = ("the listener requires client certificates: set tls.plain_listen = "
                   "\"127.0.0.1:9301\" for the local tools (status, reload, Prometheus on "
                   "the box), or pass --url")
    return (f"fleet-edge {args.cmd}: cannot reach the node at {client.base_url}: "
            f"{problem or exc}")


def node_json(args: argparse.Namespace, path: str, pick: Callable[[Any], Any]
              ) -> tuple[Any, int | None]:
    """GET ``path`` from the running node: (the picked part, None), or (None, exit code) after
    saying what went wrong; with --json the part is printed and the exit code is 0."""
    client = node_client(args)
    if client is None:
        return None, 2
    try:
        with client:
            part = pick(client.get(path).json())
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        print(unreachable(args, client, exc), file=sys.stderr)
        return None, 1
    if args.json:
        print(json.dumps(part, indent=2))
        return None, 0
    return part, None
