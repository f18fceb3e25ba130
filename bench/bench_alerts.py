"""Local alerting: evaluation cost of 100 rules over 100k active series, and hook latency.

    .venv/bin/python -m bench.bench_alerts

1. The standard workload's 100,000 series (1,000 devices x 100 metrics) with 10 minutes of
   samples every 30 s in the node's recent store; one group of 100 typical rules (thresholds
   on gauges, ``avg_over_time`` / ``max_over_time`` over 5 minutes, ``rate`` of counters,
   per-site aggregations, ``absent_over_time``); each evaluation cycle timed.
2. Hook latency: from the evaluation that fires an alert to the notification being delivered
   (outbox row created -> delivered), for a ``log`` hook and an ``exec`` hook (``/bin/true``).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import trio

from bench.workload import DEVICES, GAUGES, METRICS, STEP_MS, series_labels, steps
from edge_node.alerts.notify import parse_hooks
from edge_node.alerts.rules import RuleEngine, parse_rule_groups
from edge_node.alerts.service import AlertService
from edge_node.alerts.store import RecentStore
from edge_node.metrics import Registry
from edge_node.model import IngestBatch


def typical_rules() -> list[dict[str, object]]:
    rules: list[dict[str, object]] = []
    for m in range(30):
        rules.append({"alert": f"GaugeHigh{m:02d}", "expr": f"sensor_{m:02d}_value > 99"})
    for m in range(30, 50):
        rules.append({"alert": f"GaugeAvgHigh{m:02d}",
                      "expr": f"avg_over_time(sensor_{m:02d}_value[5m]) > 95", "for": "2m"})
    for m in range(50, 60):
        rules.append({"alert": f"GaugeSiteMax{m:02d}",
                      "expr": f"max by (site) (max_over_time(sensor_{m:02d}_value[5m])) > 99"})
    for m in range(GAUGES, GAUGES + 25):
        rules.append({"alert": f"CounterFast{m:02d}",
                      "expr": f"rate(sensor_{m:02d}_total[5m]) > 30"})
    for m in range(GAUGES + 25, GAUGES + 30):
        rules.append({"alert": f"SiteRate{m:02d}",
                      "expr": f"sum by (site) (rate(sensor_{m:02d}_total[5m])) > 1e5"})
    for m in range(60, 65):
        rules.append({"alert": f"Absent{m:02d}",
                      "expr": f'absent_over_time(sensor_{m:02d}_value{{device="dev-0001"}}[5m])'})
    for m in range(65, 70):
        rules.append({"alert": f"ManyHigh{m:02d}",
                      "expr": f"count by (site) (sensor_{m:02d}_value > 98) > 50"})
    assert len(rules) == 100
    return rules


def evaluation_cost() -> None:
    all_steps = list(steps())  # 20 steps of 30 s = 10 minutes
    store = RecentStore(retention_ms=30 * 60_000, max_series=200_000)
    keys = [tuple(sorted(series_labels(d, m).items())) for d in range(DEVICES)
            for m in range(METRICS)]
    t0 = time.perf_counter()
    for st in all_steps:
        vals = st.values.reshape(-1).tolist()
        for k, v in zip(keys, vals, strict=True):
            store.add(k, st.ts_ms, v)
    load = time.perf_counter() - t0
    groups = parse_rule_groups({"groups": [{"name": "bench", "interval": "30s",
                                            "rules": typical_rules()}]})
    engine = RuleEngine(groups, store)
    now = all_steps[-1].ts_ms
    times = []
    fired = 0
    for i in range(5):
        c0 = time.perf_counter()
        events = engine.evaluate(groups[0], now + i * STEP_MS // 10)
        times.append(time.perf_counter() - c0)
        fired += len(events)
    print(f"1. 100 rules over {len(store):,} active series ({len(all_steps)} samples each; "
          f"loading them took {load:.1f} s)")
    print(f"   evaluation cycle: median {statistics.median(times) * 1000:,.0f} ms, "
          f"min {min(times) * 1000:,.0f} ms, max {max(times) * 1000:,.0f} ms "
          f"({len(engine.active())} alerts active, {fired} transitions)")


async def hook_latency() -> None:
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        hooks = parse_hooks({"hooks": [
            {"name": "log", "type": "log", "path": str(tmp / "alerts.jsonl")},
            {"name": "exec", "type": "exec", "command": ["/bin/true"]}]})
        groups = parse_rule_groups({"groups": [{"name": "g", "interval": "1s", "rules": [
            {"alert": "Hot", "expr": "temp > 30"}]}]})
        svc = AlertService(groups, hooks, "bench", tmp, Registry("fleet_edge"))
        async with trio.open_nursery() as n:
            await n.start(svc.run)
            for i in range(20):  # 20 alerts fire and resolve, one after another
                dev = f"d{i}"
                svc.observe(IngestBatch(metric_keys=[(("__name__", "temp"), ("device", dev))],
                                        metric_ts=[svc.now_ms()], metric_values=[35.0]))
                await trio.sleep(1.1)
                svc.observe(IngestBatch(metric_keys=[(("__name__", "temp"), ("device", dev))],
                                        metric_ts=[svc.now_ms()], metric_values=[20.0]))
                await trio.sleep(1.1)
            await trio.sleep(2)
            n.cancel_scope.cancel()
        rows = svc.db.conn.execute(
            "SELECT hook, delivered_ms - created_ms FROM outbox WHERE delivered_ms IS NOT NULL"
        ).fetchall()
        await svc.close()
    print("2. hook latency, evaluation -> delivered (40 notifications per hook):")
    for hook in ("log", "exec"):
        lat = sorted(ms for h, ms in rows if h == hook)
        print(f"   {hook:<5}: median {statistics.median(lat):.0f} ms, "
              f"p95 {lat[int(len(lat) * 0.95) - 1]:.0f} ms, max {lat[-1]:.0f} ms "
              f"({len(lat)} delivered)")


def main() -> None:
    evaluation_cost()
    trio.run(hook_latency)


if __name__ == "__main__":
    main()
