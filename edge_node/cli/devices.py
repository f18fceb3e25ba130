"""``fleet-edge devices``: the fleetd agents registered with the node (read from its data
directory), the devices the running node has seen, and forgetting decommissioned ones."""

from __future__ import annotations

import argparse
import sys

import httpx

from .format import fmt_utc, print_table
from .node_client import load_config, node_client, node_json, unreachable


def devices(args: argparse.Namespace) -> int:
    """``devices registered`` (the default), ``devices seen`` or ``devices forget NAME ...``."""
    from ..devices import DeviceRegistry

    if args.action not in ("registered", "seen", "forget"):
        print(f"fleet-edge devices: unknown action {args.action!r} (registered, seen, forget)",
              file=sys.stderr)
        return 2
    if args.action == "seen":
        rows, code = node_json(args, "/api/v1/devices", lambda d: d["devices"])
        if code is not None:
            return code
        return print_table(rows, False,
                           f"{'DEVICE':<32} {'SITE':<16} {'STATE':<8} LAST SEEN (UTC)",
                           lambda r: f"{r['device'][:32]:<32} {r['site'][:16]:<16} "
                           f"{'online' if r['online'] else 'OFFLINE':<8} "
                           f"{fmt_utc(r['last_seen_ms'])}", "devices seen")
    if args.action == "forget":
        if not args.names:
            print("fleet-edge devices forget: name the devices", file=sys.stderr)
            return 2
        client = node_client(args)
        if client is None:
            return 2
        bad = 0
        for name in args.names:
            try:
                r = client.post("/api/v1/devices/forget", json={"device": name}, timeout=30)
            except httpx.HTTPError as exc:
                print(unreachable(args, client, exc), file=sys.stderr)
                return 1
            if r.status_code == 200:
                print(f"forgot {name} (last seen {fmt_utc(r.json()['last_seen_ms'])} UTC)")
            else:
                bad += 1
                print(f"{name}: {r.json().get('error', r.text)}", file=sys.stderr)
        return 1 if bad else 0

    reg = DeviceRegistry(load_config(args.config).data_dir)
    try:
        rows = reg.list()
    finally:
        reg.close()
    return print_table(rows, args.json, f"{'DEVICE ID':<37} {'NAME':<20} {'TYPE':<14} "
                       f"{'VERSION':<10} REGISTERED (UTC)",
                       lambda r: f"{r['device_id']!s:<37} {r['name']!s:<20} {r['type']!s:<14} "
                       f"{r['version']!s:<10} {fmt_utc(r['registered_ms'])}",
                       "registered devices")
