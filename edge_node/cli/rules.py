"""The commands about rules: ``check-rules`` validates Prometheus-format rule files;
``aggregates`` and ``alerts`` show what a running node's stream-aggregation and alerting rules
are doing (and ``alerts --notifications``, what its hooks were sent)."""

from __future__ import annotations

import argparse
import sys

from .format import fmt_utc
from .node_client import node_json


def check_rules(args: argparse.Namespace) -> int:
    """Load each rule file; print its groups and rules, or every problem it has."""
    from ..alerts.rules import AlertingRule, load_rule_file
    from ..errors import RuleFileError

    bad = 0
    for f in args.files:
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


def aggregates(args: argparse.Namespace) -> int:
    """The running node's stream-aggregation rules: a table, then each rule and its last output."""
    rules, code = node_json(args, "/api/v1/aggregates", lambda d: d["rules"])
    if code is not None:
        return code
    if not rules:
        print("no stream-aggregation rules (set aggregate.rules_file)")
        return 0
    print(f"{'RULE':<34} {'EVERY':>6} {'SERIES':>7} {'GROUPS':>7} {'SAMPLES':>11} {'LATE':>7} "
          f"{'OUTPUT ROWS':>11}  LAST WINDOW (UTC)")
    for r in rules:
        last = r.get("last_output") or {}
        window = (f"{fmt_utc(last['window_start_ms'])} +{r['interval']} ({last['series']} rows)"
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
    rows, code = node_json(args, "/api/v1/alerts/notifications",
                            lambda d: d["notifications"])
    if code is not None:
        return code
    if not rows:
        print("no notifications yet")
        return 0
    print(f"{'QUEUED (UTC)':<20} {'HOOK':<12} {'STATUS':<9} {'TRIES':>5} {'DELIVERED (UTC)':<20}"
          f" RESULT")
    for r in rows:
        delivered = fmt_utc(r["delivered_ms"]) if r["delivered_ms"] else "pending"
        result = r["last_result"] if r["delivered_ms"] else (r["last_error"] or "")
        group = ", ".join(f"{k}={v}" for k, v in sorted(r["group"].items()))
        print(f"{fmt_utc(r['created_ms']):<20} {r['hook'][:12]:<12} {r['status']:<9} "
              f"{r['attempts']:>5} {delivered:<20} {str(result)[:60]}")
        print(f"{'':<20} {group}")
    return 0


def alerts(args: argparse.Namespace) -> int:
    """The running node's pending and firing alerts (or, --notifications, its notifications)."""
    if args.notifications:
        return _notifications(args)
    alerts, code = node_json(args, "/api/v1/alerts", lambda d: d["data"]["alerts"])
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
              f"{fmt_utc(int(a['activeAt'] * 1000)):<20} {float(a['value']):>12.6g}  {inner}")
        summary = a["annotations"].get("summary")
        if summary:
            print(f"{'':<8} {summary}")
    return 0
