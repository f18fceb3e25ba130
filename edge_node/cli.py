"""``fleet-edge``: run the edge node, validate its config, run the demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psutil
import trio

from . import __version__
from .config import EXAMPLE_CONFIG, EdgeConfig
from .errors import ConfigError, EdgeError
from .process import startup_error, stop_on_signal, tune_gc


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
    demo = sub.add_parser("demo", help="run central + edge + simulated devices in this process "
                                       "and check nothing acknowledged is lost")
    demo.add_argument("--devices", type=int, default=50, help="simulated devices (default 50)")
    demo.add_argument("--duration", type=float, default=20.0,
                      help="seconds the devices report for (default 20)")
    demo.add_argument("--data-dir", help="keep the demo's data here instead of a temp dir")
    for sp in (run, demo):
        sp.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return p


def _load(path: str) -> EdgeConfig:
    try:
        return EdgeConfig.from_toml(path)
    except ConfigError as exc:
        print(f"fleet-edge: invalid configuration: {exc}", file=sys.stderr)
        sys.exit(2)


async def _run(cfg: EdgeConfig, path: str) -> None:
    from .node import run_edge_node

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


def _node_url(args: argparse.Namespace) -> str | None:
    """The running node's base URL from --url or the listen address in --config."""
    if args.url:
        return str(args.url).rstrip("/")
    if args.config:
        cfg = _load(args.config)
        host = cfg.listen_host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        return f"http://{host}:{cfg.listen_port}"
    print(f"fleet-edge {args.cmd}: give --config FILE or --url URL", file=sys.stderr)
    return None


def _node_json(args: argparse.Namespace, path: str, pick: Callable[[Any], Any]
               ) -> tuple[Any, int | None]:
    """GET ``path`` from the running node: (the picked part, None), or (None, exit code) after
    saying what went wrong; with --json the part is printed and the exit code is 0."""
    base = _node_url(args)
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


def _aggregates(args: argparse.Namespace) -> int:
    rules, code = _node_json(args, "/api/v1/aggregates", lambda d: d["rules"])
    if code is not None:
        return code
    if not rules:
        print("no stream-aggregation rules (set aggregate.rules_file)")
        return 0
    print(f"{'RULE':<34} {'EVERY':>6} {'SERIES':>7} {'GROUPS':>7} {'SAMPLES':>11} {'LATE':>7} "
          f"{'OUTPUT ROWS':>11}  LAST WINDOW (UTC)")
    for r in rules:
        last = r.get("last_output") or {}
        window = (f"{_utc(last['window_start_ms'])} +{r['interval']} ({last['series']} rows)"
                  if last else "-")
        print(f"{r['name'][:34]:<34} {r['interval']:>6} {r['series']:>7,} {r['groups']:>7,} "
              f"{r['samples']:>11,} {r['late_samples']:>7,} {r['emitted']:>11,}  {window}")
    for r in rules:
        keeps = (f"by {', '.join(r['by'])}" if r.get("by") else
                 f"without {', '.join(r['without'])}" if r.get("without") else "all labels")
        print(f"\n{r['name']}: {' or '.join(r['match'])} every {r['interval']} ({keeps}), "
              f"grace {r['grace_s']:g}s, raw {'kept' if r['keep_raw'] else 'not forwarded'}")
        print(f"  outputs: {', '.join(r['outputs'])}")
        for labels, value in (r.get("last_output") or {}).get("sample", []):
            name = labels.pop("__name__", "")
            inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            print(f"  {name}{{{inner}}} = {value:g}")
    return 0


def _notifications(args: argparse.Namespace) -> int:
    rows, code = _node_json(args, "/api/v1/alerts/notifications",
                            lambda d: d["notifications"])
    if code is not None:
        return code
    if not rows:
        print("no notifications yet")
        return 0
    print(f"{'QUEUED (UTC)':<20} {'HOOK':<12} {'STATUS':<9} {'TRIES':>5} {'DELIVERED (UTC)':<20}"
          f" RESULT")
    for r in rows:
        delivered = _utc(r["delivered_ms"]) if r["delivered_ms"] else "pending"
        result = r["last_result"] if r["delivered_ms"] else (r["last_error"] or "")
        group = ", ".join(f"{k}={v}" for k, v in sorted(r["group"].items()))
        print(f"{_utc(r['created_ms']):<20} {r['hook'][:12]:<12} {r['status']:<9} "
              f"{r['attempts']:>5} {delivered:<20} {str(result)[:60]}")
        print(f"{'':<20} {group}")
    return 0


def _alerts(args: argparse.Namespace) -> int:
    if args.notifications:
        return _notifications(args)
    alerts, code = _node_json(args, "/api/v1/alerts", lambda d: d["data"]["alerts"])
    if code is not None:
        return code
    if not alerts:
        print("no pending or firing alerts")
        return 0
    print(f"{'STATE':<8} {'ALERT':<24} {'SINCE (UTC)':<20} {'VALUE':>12}  LABELS")
    for a in alerts:
        labels = {k: v for k, v in a["labels"].items() if k != "alertname"}
        inner = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
        print(f"{a['state']:<8} {a['labels'].get('alertname', '')[:24]:<24} "
              f"{_utc(int(a['activeAt'] * 1000)):<20} {float(a['value']):>12.6g}  {inner}")
        summary = a["annotations"].get("summary")
        if summary:
            print(f"{'':<8} {summary}")
    return 0


def _buffer(args: argparse.Namespace) -> int:
    from .salvage import check, salvage

    cfg = _load(args.config)
    path = cfg.db_path
    if not path.exists():
        print(f"fleet-edge buffer: no buffer at {path}", file=sys.stderr)
        return 1

    def progress(msg: str) -> None:
        print(f"  {msg}", file=sys.stderr, flush=True)

    if args.action == "check":
        print(f"checking {path} (integrity, every segment, journal row and series block)")
        report = check(path, progress)
    else:
        out = Path(args.output) if args.output else path.with_name(path.name + ".salvaged")
        print(f"salvaging {path} into {out} (stop the node first)")
        try:
            report = salvage(path, out, progress)
        except FileExistsError as exc:
            print(f"fleet-edge buffer: {exc}", file=sys.stderr)
            return 1
    for table in sorted(set(report.ok) | set(report.lost)):
        print(f"  {table:<15} {report.ok.get(table, 0):>9,} read"
              + (f", {report.lost[table]:,} unreadable" if report.lost.get(table) else ""))
    for kind in sorted(set(report.rows_ok) | set(report.rows_lost)):
        print(f"  {kind:<15} {report.rows_ok.get(kind, 0):>9,} rows kept"
              + (f", {report.rows_lost[kind]:,} lost" if report.rows_lost.get(kind) else ""))
    for p in report.problems[:50]:
        print(f"  problem: {p}")
    if args.action == "salvage":
        print(f"salvaged into {out}; to use it: mv {out} {path} (keep the damaged file aside)")
        return 0
    print("buffer OK" if not report.problems else f"{len(report.problems)} problem(s)")
    return 0 if not report.problems else 1


def _check_rules(files: list[str]) -> int:
    from .alerts.rules import AlertingRule, load_rule_file
    from .errors import RuleFileError

    bad = 0
    for f in files:
        try:
            groups = load_rule_file(f)
        except RuleFileError as exc:
            bad += 1
            print(f"{f}: FAILED, {len(exc.problems)} problem(s):", file=sys.stderr)
            for p in exc.problems:
                print(f"  {p}", file=sys.stderr)
            continue
        rules = [r for g in groups for r in g.rules]
        alerting = sum(isinstance(r, AlertingRule) for r in rules)
        print(f"{f}: OK, {len(groups)} group(s), {alerting} alerting and "
              f"{len(rules) - alerting} recording rule(s)")
    return 1 if bad else 0


def _status(args: argparse.Namespace) -> int:
    doc, code = _node_json(args, "/api/v1/status", lambda d: d)
    if code is not None:
        return code
    if args.watch:
        return _watch_drain(args, doc)
    ready = "ready" if not doc["not_ready"] else "NOT READY: " + "; ".join(doc["not_ready"])
    print(f"node {doc['node_id']} (fleet-edge {doc['version']}), up {_dur(doc['uptime_s'])}: "
          f"{ready}")
    if doc["clock_synchronized"] is False:
        print("clock     NOT synchronized (no NTP sync yet): rows stamped at receive time may "
              "carry a wrong time")
    c = doc["central"]
    print(f"central   {c['url']}: " + ("connected" if c["connected"] else
                                       f"unreachable ({c['last_error'] or 'no exchange yet'})"))
    b, f = doc["buffer"], doc["forward"]
    ratio = b["bytes"] / max(1, b["budget_bytes"])
    print(f"buffer    {b['bytes'] / 1e6:,.1f} MB of {b['budget_bytes'] / 1e6:,.0f} MB "
          f"({ratio:.1%}), dead letters {b['dead_letters']}, dropped "
          f"{sum(b['dropped'].values()):,.0f}")
    eta = f", drained in ~{_dur(f['drain_eta_s'])}" if f["drain_eta_s"] is not None else ""
    print(f"backlog   {b['pending_rows']:,} rows waiting, oldest {_dur(b['backlog_age_s'])}"
          f"{eta}")
    print(f"rates     ingest {_rate(f['ingest_rows_per_s'])}, forwarded "
          f"{_rate(f['rows_per_s'])} (rows/s, last step)")
    for kind, n in sorted(b["pending"].items()):
        if n:
            print(f"          {kind:<11} {n:>12,} waiting")
    if doc["device_tracking"]:
        off = [d["device"] for d in doc["devices"] if not d["online"]]
        n_off = doc["devices_total"] - doc["devices_online"]
        print(f"devices   {doc['devices_online']} online, {n_off} offline"
              + (f": {', '.join(off[:10])}{' ...' if n_off > 10 else ''}" if off else ""))
    for p in doc["protocols"]:
        print(f"protocol  {p['protocol']:<16} {_rate(p['rows_per_s']):>10} rows/s "
              f"{p['rows_total']:>14,.0f} total")
    firing = [a for a in doc["alerts"] if a["state"] == "firing"]
    print(f"alerts    {doc['alerts_firing']} firing, {doc['alerts_pending']} pending"
          + "".join(f"\n          {a['labels'].get('alertname', '')} "
                    + ", ".join(f"{k}={v}" for k, v in sorted(a["labels"].items())
                                if k != "alertname") for a in firing[:10])
          + (f"\n          ... ({doc['alerts_firing'] - 10} more: fleet-edge alerts)"
             if doc["alerts_firing"] > 10 else ""))
    h = doc["host"]
    if h:
        temps = ", ".join(f"{t['sensor']} {t['celsius']:.0f} C" for t in h["temperatures"][:4])
        print(f"gateway   cpu {h['cpu_percent']:.0f}%, memory {h['memory_used_percent']:.0f}%"
              + (f", load {h['load1']:.2f}" if h["load1"] is not None else "")
              + (f", {temps}" if temps else ""))
    r = doc["last_reload"]
    if r:
        print(f"reload    {_utc(int(r['at'] * 1000))} UTC: "
              + (f"applied {', '.join(r['applied']) or 'nothing'}" if r["ok"]
                 else f"REFUSED: {r['error']}"))
    return 0


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s / 60:.0f}m"
    if s < 86400:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def _watch_drain(args: argparse.Namespace, doc: dict[str, Any]) -> int:
    """Follow the backlog until it is drained: rows forwarded of those waiting at the start,
    the rate over the last interval and the time left at that rate."""
    base = _node_url(args)
    start = doc["buffer"]["pending_rows"]
    acked0 = last_acked = doc["forward"]["acked_total"]
    t_last = time.monotonic()
    tty = sys.stdout.isatty()
    print(f"backlog of {start:,} rows, following every {args.watch:g}s (Ctrl-C stops)")
    try:
        while True:
            pending = doc["buffer"]["pending_rows"]
            acked = doc["forward"]["acked_total"]
            now = time.monotonic()
            rate = (acked - last_acked) / max(1e-9, now - t_last)
            last_acked, t_last = acked, now
            done = acked - acked0
            eta = _dur(pending / rate) if rate > 0 and pending else "-"
            share = done / max(1, done + pending)
            central = "" if doc["central"]["connected"] else "  (central unreachable)"
            line = (f"forwarded {done:>12,.0f}, waiting {pending:>12,}  [{share:6.1%}]  "
                    f"{rate:>10,.0f} rows/s  eta {eta}{central}")
            print("\r" + line if tty else line, end="" if tty else "\n", flush=True)
            if not pending:
                print("\nbacklog drained" if tty else "backlog drained")
                return 0
            time.sleep(args.watch)
            doc = httpx.get(f"{base}/api/v1/status", timeout=10).json()
    except KeyboardInterrupt:
        print()
        return 130
    except httpx.HTTPError as exc:
        print(f"\nfleet-edge status: lost the node at {base}: {exc}", file=sys.stderr)
        return 1


def _reload(args: argparse.Namespace) -> int:
    from .node import PIDFILE

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
    base = _node_url(args)
    assert base is not None  # --config is required

    def last() -> Any:
        return httpx.get(f"{base}/api/v1/status", timeout=10).json()["last_reload"]

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
        print(f"fleet-edge reload: signalled pid {pid} but cannot read its status at {base}: "
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


def _dead_letters(args: argparse.Namespace) -> int:
    from .buffer import Store

    cfg = _load(args.config)
    if not cfg.db_path.exists():
        print(f"fleet-edge: no buffer at {cfg.db_path}", file=sys.stderr)
        return 1
    store = Store(cfg.db_path, synchronous=cfg.buffer.synchronous)
    try:
        if args.requeue is not None:
            moved = store.requeue_dead_letters(args.requeue or None)
            for old, new in moved:
                print(f"requeued dead letter {old} as segment {new}")
            print(f"{len(moved)} dead letters requeued")
            return 0
        rows = store.dead_letters()
    finally:
        store.close()
    return _table(rows, args.json, f"{'SEQ':>8} {'KIND':<10} {'ROWS':>9} {'FAILED (UTC)':<20} "
                  "REASON", lambda r: f"{r['seq']:>8} {r['kind']!s:<10} {r['n']:>9} "
                  f"{_utc(r['failed_ms']):<20} {r['reason']}", "dead letters")


def _utc(ms: object) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(str(ms)) / 1000))


def _table(rows: list[dict[str, Any]], as_json: bool, header: str,
           line: Callable[[dict[str, Any]], str], what: str) -> int:
    """Print ``rows`` as JSON or as a table with a count."""
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print(header)
    for r in rows:
        print(line(r))
    print(f"{len(rows)} {what}")
    return 0


def _devices(args: argparse.Namespace) -> int:
    from .devices import DeviceRegistry

    if args.action not in ("registered", "seen", "forget"):
        print(f"fleet-edge devices: unknown action {args.action!r} (registered, seen, forget)",
              file=sys.stderr)
        return 2
    if args.action == "seen":
        rows, code = _node_json(args, "/api/v1/devices", lambda d: d["devices"])
        if code is not None:
            return code
        return _table(rows, False, f"{'DEVICE':<32} {'SITE':<16} {'STATE':<8} LAST SEEN (UTC)",
                      lambda r: f"{r['device'][:32]:<32} {r['site'][:16]:<16} "
                      f"{'online' if r['online'] else 'OFFLINE':<8} {_utc(r['last_seen_ms'])}",
                      "devices seen")
    if args.action == "forget":
        if not args.names:
            print("fleet-edge devices forget: name the devices", file=sys.stderr)
            return 2
        base = _node_url(args)
        bad = 0
        for name in args.names:
            try:
                r = httpx.post(f"{base}/api/v1/devices/forget", json={"device": name},
                               timeout=30)
            except httpx.HTTPError as exc:
                print(f"fleet-edge devices: cannot reach the node at {base}: {exc}",
                      file=sys.stderr)
                return 1
            if r.status_code == 200:
                print(f"forgot {name} (last seen {_utc(r.json()['last_seen_ms'])} UTC)")
            else:
                bad += 1
                print(f"{name}: {r.json().get('error', r.text)}", file=sys.stderr)
        return 1 if bad else 0

    reg = DeviceRegistry(_load(args.config).data_dir)
    try:
        rows = reg.list()
    finally:
        reg.close()
    return _table(rows, args.json, f"{'DEVICE ID':<37} {'NAME':<20} {'TYPE':<14} "
                  f"{'VERSION':<10} REGISTERED (UTC)",
                  lambda r: f"{r['device_id']!s:<37} {r['name']!s:<20} {r['type']!s:<14} "
                  f"{r['version']!s:<10} {_utc(r['registered_ms'])}", "registered devices")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "check-config":
        try:
            cfg = EdgeConfig.from_toml(args.file)
        except ConfigError as exc:
            print(f"{args.file}: invalid: {exc}", file=sys.stderr)
            return 2
        if args.print:
            import dataclasses

            shown = dataclasses.asdict(cfg)
            shown["central"]["api_key"] = "***"
            print(json.dumps(shown, indent=2))
        else:
            print(f"{args.file}: OK (node {cfg.node_id}, listen {cfg.listen}, data in "
                  f"{cfg.data_dir}, central {cfg.central.url})")
        return 0
    if args.cmd == "example-config":
        print(EXAMPLE_CONFIG, end="")
        return 0
    if args.cmd == "status":
        return _status(args)
    if args.cmd == "reload":
        return _reload(args)
    if args.cmd == "aggregates":
        return _aggregates(args)
    if args.cmd == "alerts":
        return _alerts(args)
    if args.cmd == "check-rules":
        return _check_rules(args.files)
    if args.cmd == "buffer":
        return _buffer(args)
    if args.cmd == "dead-letters":
        return _dead_letters(args)
    if args.cmd == "devices":
        return _devices(args)
    level = getattr(args, "log_level", None)
    if args.cmd == "run":
        cfg = _load(args.config)
        logging.basicConfig(level=(level or cfg.log_level).upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if (level or cfg.log_level) != "debug":
            # one line per batch sent is noise at info level; the forwarder logs what matters
            logging.getLogger("httpx").setLevel(logging.WARNING)
        try:
            trio.run(_run, cfg, args.config)
        except (Exception, BaseExceptionGroup) as exc:
            leaf = startup_error(exc, (EdgeError, OSError))
            if leaf is None:
                raise
            print(f"fleet-edge: cannot start: {leaf}", file=sys.stderr)
            return 1
        return 0
    if args.cmd == "demo":
        from .demo import run_demo

        logging.basicConfig(level=(level or "warning").upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if args.devices < 1 or args.duration <= 0:
            print("fleet-edge demo: --devices must be >= 1 and --duration > 0", file=sys.stderr)
            return 2
        return trio.run(partial(run_demo, args.devices, args.duration, data_dir=args.data_dir))
    return 2  # pragma: no cover - argparse enforces the command


if __name__ == "__main__":
    sys.exit(main())
