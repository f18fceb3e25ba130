"""``fleet-central``: run the service and manage edge node keys."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from functools import partial

import trio

from edge_node import __version__
from edge_node.cli import startup_error, stop_on_signal

from .errors import RegistryError
from .server import run_central
from .sinks.sqlite import SQLiteStore

DEFAULT_DATA_DIR = "./fleet-central-data"


def _store(args: argparse.Namespace) -> SQLiteStore:
    if os.environ.get("DATABASE_URL"):
        sys.exit("fleet-central: DATABASE_URL is set, but this build stores nodes and data in "
                 "the embedded SQLite store only (the PostgreSQL store is tracked in issue #3); "
                 "unset DATABASE_URL to use --data-dir")
    return SQLiteStore(args.data_dir)


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=os.environ.get("FLEET_CENTRAL_DATA_DIR",
                                                        DEFAULT_DATA_DIR),
                   help="directory of the embedded SQLite store (env FLEET_CENTRAL_DATA_DIR; "
                        f"default {DEFAULT_DATA_DIR})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fleet-central",
        description="Central fleetd service: receives batches from edge nodes and stores them.")
    p.add_argument("--version", action="version", version=f"fleet-central {__version__}")
    p.add_argument("--log-level", default=os.environ.get("FLEET_CENTRAL_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="serve POST /api/v1/batches, /healthz, /readyz, /metrics")
    run.add_argument("--listen", default=os.environ.get("FLEET_CENTRAL_LISTEN", "127.0.0.1:9400"),
                     help="host:port to listen on (env FLEET_CENTRAL_LISTEN; "
                          "default 127.0.0.1:9400)")
    _add_data_dir(run)
    nodes = sub.add_parser("nodes", help="manage edge node registrations and keys")
    nsub = nodes.add_subparsers(dest="nodes_cmd", required=True, metavar="ACTION")
    add = nsub.add_parser("add", help="register a node; prints its API key on the last line")
    add.add_argument("node_id")
    add.add_argument("--org", default="default", help="organisation (default: default)")
    _add_data_dir(add)
    ls = nsub.add_parser("list", help="list registered nodes")
    ls.add_argument("--json", action="store_true")
    _add_data_dir(ls)
    rv = nsub.add_parser("revoke", help="revoke a node's key (refused from the next request)")
    rv.add_argument("node_id")
    _add_data_dir(rv)
    rot = nsub.add_parser("rotate", help="give a node a new key; prints it on the last line")
    rot.add_argument("node_id")
    _add_data_dir(rot)
    return p


async def _serve(args: argparse.Namespace) -> None:
    store = _store(args)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(partial(run_central, store, args.listen))
        await stop_on_signal(handle.stop, "fleet_central")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cmd == "run":
        try:
            trio.run(_serve, args)
        except (Exception, BaseExceptionGroup) as exc:
            # e.g. the listen address is in use, the data dir not writable
            leaf = startup_error(exc, (OSError,))
            if leaf is None:
                raise
            print(f"fleet-central: cannot start: {leaf}", file=sys.stderr)
            return 1
        return 0
    store = _store(args)
    try:
        if args.nodes_cmd == "add":
            key = store.add_node(args.node_id, args.org)
            print(f"registered node {args.node_id!r} in organisation {args.org!r} "
                  f"({store.path}); its API key (shown once, only its hash is stored):")
            print(key)
        elif args.nodes_cmd == "rotate":
            key = store.rotate_key(args.node_id)
            print(f"new API key for node {args.node_id!r} (the old one no longer works):")
            print(key)
        elif args.nodes_cmd == "revoke":
            store.revoke_node(args.node_id)
            print(f"revoked node {args.node_id!r}")
        elif args.nodes_cmd == "list":
            rows = store.list_nodes()
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                print(f"{'NODE':<24} {'ORG':<16} {'STATE':<8} LAST SEEN")
                for r in rows:
                    seen = r["last_seen_ms"]
                    when = (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(seen) / 1000))
                            if isinstance(seen, int) else "never")
                    state = "revoked" if r["revoked_ms"] else "active"
                    print(f"{r['node_id']!s:<24} {r['org']!s:<16} {state:<8} {when}")
    except RegistryError as exc:
        print(f"fleet-central: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
