"""The command line: every command, its options and help text (``fleet-edge --help``)."""

from __future__ import annotations

import argparse
import os

from .. import __version__


def _node_args(sp: argparse.ArgumentParser, json_help: str = "print JSON") -> None:
    """--config / --url / --json of the commands that ask the running node's local API."""
    sp.add_argument("--config", "-c", default=os.environ.get("FLEET_EDGE_CONFIG"),
                    help="the node's config (to find its listen address)")
    sp.add_argument("--url", help="the node's base URL instead of --config")
    sp.add_argument("--json", action="store_true", help=json_help)


def _config_arg(sp: argparse.ArgumentParser, why: str) -> None:
    """A required --config (unless FLEET_EDGE_CONFIG is set)."""
    sp.add_argument("--config", "-c", default=os.environ.get("FLEET_EDGE_CONFIG"),
                    required="FLEET_EDGE_CONFIG" not in os.environ, help=why)


def build_parser() -> argparse.ArgumentParser:
    """The ``fleet-edge`` parser: one subcommand each, ``cmd`` names the one given."""
    p = argparse.ArgumentParser(
        prog="fleet-edge",
        description="fleetd edge node: receives device data, buffers it durably in SQLite, "
                    "aggregates and alerts locally, and forwards it to central.")
    p.add_argument("--version", action="version", version=f"fleet-edge {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the edge node")
    _config_arg(run, "TOML config file (env FLEET_EDGE_CONFIG)")
    chk = sub.add_parser("check-config", help="validate a config file (and FLEET_EDGE_* "
                                              "overrides); names the bad key")
    chk.add_argument("file")
    chk.add_argument("--print", action="store_true", help="print the effective config as JSON")
    chk.add_argument("--strict", action="store_true",
                     help="exit 1 on warnings too (the example's placeholders left in)")
    sub.add_parser("example-config", help="print a commented example config")
    cr = sub.add_parser("check-rules", help="validate Prometheus-format alerting/recording rule "
                                            "files; names every unsupported or invalid part")
    cr.add_argument("files", nargs="+", metavar="FILE")
    st = sub.add_parser("status", help="show a running node's state: readiness, central, "
                                       "buffer and backlog, devices, protocols, alerts")
    _node_args(st, "the whole /api/v1/status document")
    st.add_argument("--watch", type=float, nargs="?", const=2.0, metavar="SECONDS",
                    help="follow the backlog drain: a progress line every SECONDS (default 2) "
                         "until nothing is waiting (Ctrl-C stops)")
    rl = sub.add_parser("reload", help="make the running node re-read its config and the "
                                       "rule/hook files (SIGHUP); prints what changed")
    _config_arg(rl, "the node's config (its data directory holds the pid file)")
    rl.add_argument("--url", help="the node's base URL, if --config's listen address is not "
                                  "reachable from here")
    ag = sub.add_parser("aggregates", help="show a running node's stream-aggregation rules: "
                                           "series, windows, late samples, last outputs")
    _node_args(ag)
    al = sub.add_parser("alerts", help="list a running node's pending and firing alerts")
    _node_args(al)
    al.add_argument("--notifications", action="store_true",
                    help="list recent notifications instead: hook, status, attempts, delivery, "
                         "the hook's result (exit status, HTTP status) or last error")
    bf = sub.add_parser("buffer", help="check the buffer file, or salvage what is readable "
                                       "from a damaged one into a fresh buffer")
    bf.add_argument("action", choices=["check", "salvage"])
    _config_arg(bf, "the node's config (to find its buffer)")
    bf.add_argument("--output", help="salvage: the new buffer file (default: next to the "
                                     "damaged one, .salvaged)")
    dl = sub.add_parser("dead-letters", help="list the batches central refused as malformed; "
                                             "--requeue sends them again")
    _config_arg(dl, "the node's config (to find its buffer)")
    dl.add_argument("--requeue", nargs="*", type=int, metavar="SEQ",
                    help="requeue these (or, with no SEQ, all) dead letters")
    dl.add_argument("--drop", nargs="+", type=int, metavar="SEQ",
                    help="delete these dead letters for good (counted in the buffer, logged)")
    dl.add_argument("--json", action="store_true")
    dv = sub.add_parser(
        "devices", help="list the fleetd agents registered with this node (registered), every "
                        "device the node has seen with online/offline (seen), or forget "
                        "decommissioned devices (forget NAME ...: no longer offline, their "
                        "DeviceOffline alerts resolve)")
    dv.add_argument("action", nargs="?", default="registered", metavar="ACTION",
                    help="registered (default), seen, or forget")
    dv.add_argument("names", nargs="*", metavar="NAME", help="forget: the devices")
    _config_arg(dv, "the node's config (its data directory and listen address)")
    dv.add_argument("--url", help="seen/forget: the node's base URL instead of --config's")
    dv.add_argument("--json", action="store_true")
    # the demo runs central too, so it lives in fleetd_demo and parses its own options
    # (fleet-edge demo --help): this parser passes them on untouched
    sub.add_parser("demo", add_help=False,
                   help="run central + edge + simulated devices in this process and check "
                        "nothing acknowledged is lost")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return p
