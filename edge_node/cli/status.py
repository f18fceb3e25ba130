"""``fleet-edge status``: the running node's state on one screen, or (``--watch``) a progress
line every few seconds while its backlog drains."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import httpx

from .format import fmt_duration, fmt_rate, fmt_utc
from .node_client import node_client, node_json


def status(args: argparse.Namespace) -> int:
    """Print ``/api/v1/status`` of the running node as a summary (or the document, --json)."""
    doc, code = node_json(args, "/api/v1/status", lambda d: d)
    if code is not None:
        return code
    if args.watch:
        return _watch_drain(args, doc)
    ready = "ready" if not doc["not_ready"] else "NOT READY: " + "; ".join(doc["not_ready"])
    print(f"node {doc['node_id']} (fleet-edge {doc['version']}), "
          f"up {fmt_duration(doc['uptime_s'])}: {ready}")
    if doc["clock_synchronized"] is False:
        print("clock     NOT synchronized (no NTP sync yet): rows stamped at receive time may "
              "carry a wrong time")
    for skew in doc.get("clock_skew", []):
        print(f"clock     device {skew['device']}: off by {skew['offset_s']:+,.0f} s "
              f"(policy {skew['policy']})")
    for warning in doc.get("warnings", []):
        print(f"WARNING   {warning}")
    c = doc["central"]
    print(f"central   {c['url']}: " + ("connected" if c["connected"] else
                                       f"unreachable ({c['last_error'] or 'no exchange yet'})"))
    k = c.get("key")
    if k:
        print(f"key       {k['fingerprint']} ({k['source']}), "
              + (f"expires {k['expires']} (in {k['expires_in_days']:,.0f} days)"
                 if k["expires"] else "expiry not known yet")
              + (f", {k['age_days']:,.0f} days old" if k["age_days"] is not None else "")
              + (", next key offered, switching" if k["next_key_pending"] else ""))
    t = doc.get("tls")
    if t:
        print(f"tls       listener certificate {t['subject']}, expires {t['not_after']} "
              f"(in {t['expires_in_days']:,.0f} days), client certificates {t['client_certs']}")
    b, f = doc["buffer"], doc["forward"]
    ratio = b["bytes"] / max(1, b["budget_bytes"])
    print(f"buffer    {b['bytes'] / 1e6:,.1f} MB of {b['budget_bytes'] / 1e6:,.0f} MB "
          f"({ratio:.1%}), dead letters {b['dead_letters']}, dropped "
          f"{sum(b['dropped'].values()):,.0f}, too old to send "
          f"{sum(b.get('expired', {}).values()):,.0f}")
    eta = f", drained in ~{fmt_duration(f['drain_eta_s'])}" if f["drain_eta_s"] is not None else ""
    print(f"backlog   {b['pending_rows']:,} rows waiting, oldest {fmt_duration(b['backlog_age_s'])}"
          f"{eta}")
    print(f"rates     ingest {fmt_rate(f['ingest_rows_per_s'])}, forwarded "
          f"{fmt_rate(f['rows_per_s'])} (rows/s, last step)")
    for kind, n in sorted(b["pending"].items()):
        if n:
            print(f"          {kind:<11} {n:>12,} waiting")
    if doc["device_tracking"]:
        off = [d["device"] for d in doc["devices"] if not d["online"]]
        n_off = doc["devices_total"] - doc["devices_online"]
        print(f"devices   {doc['devices_online']} online, {n_off} offline"
              + (f": {', '.join(off[:10])}{' ...' if n_off > 10 else ''}" if off else ""))
    for p in doc["protocols"]:
        print(f"protocol  {p['protocol']:<16} {fmt_rate(p['rows_per_s']):>10} rows/s "
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
        print(f"reload    {fmt_utc(int(r['at'] * 1000))} UTC: "
              + (f"applied {', '.join(r['applied']) or 'nothing'}" if r["ok"]
                 else f"REFUSED: {r['error']}"))
    return 0


def _watch_drain(args: argparse.Namespace, doc: dict[str, Any]) -> int:
    """Follow the backlog until it is drained: rows forwarded of those waiting at the start,
    the rate over the last interval and the time left at that rate."""
    client = node_client(args)
    assert client is not None  # the first document came through it
    base = client.base_url
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
            eta = fmt_duration(pending / rate) if rate > 0 and pending else "-"
            share = done / max(1, done + pending)
            central = "" if doc["central"]["connected"] else "  (central unreachable)"
            line = (f"forwarded {done:>12,.0f}, waiting {pending:>12,}  [{share:6.1%}]  "
                    f"{rate:>10,.0f} rows/s  eta {eta}{central}")
            print("\r" + line if tty else line, end="" if tty else "\n", flush=True)
            if not pending:
                print("\nbacklog drained" if tty else "backlog drained")
                return 0
            time.sleep(args.watch)
            doc = client.get("/api/v1/status").json()
    except KeyboardInterrupt:
        print()
        return 130
    except httpx.HTTPError as exc:
        print(f"\nfleet-edge status: lost the node at {base}: {exc}", file=sys.stderr)
        return 1
