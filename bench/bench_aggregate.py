"""Stream aggregation: throughput of a typical 10-rule set, and what "5m rollups only" saves.

    .venv/bin/python -m bench.bench_aggregate

The standard workload (1,000 devices x 100 series x 20 steps of 30 s = 2M samples) goes
through the buffer as a live node would see it: each step's samples committed to the journal
(as 10 group commits of 100 devices), then rolled, with the rules applied in the roll.

1. Throughput: the aggregator alone (``Aggregator.ingest`` + window flushes), and the roll with
   the 10 rules against the same roll without rules (the marginal cost in the buffer: rule
   evaluation, the replay log, checkpoints, rollup segments).
2. Reduction: bytes the forwarder would ship (compressed segments plus the definitions of the
   series they reference) for raw forwarding versus "5m rollups only" (keep_raw false, every
   series covered): per device (gauges avg/min/max/last, counters increase/last), per device
   lean (gauges avg/max, counters increase) and per site.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zstandard

from bench.workload import DEVICES, METRICS, STEP_MS, STEPS, series_labels, steps
from edge_node.aggregate import Aggregator, parse_rules
from edge_node.aggregate.roll_stage import RollupStage
from edge_node.buffer import Store
from edge_node.model import IngestBatch, SeriesKey

GAUGES = '{__name__=~"sensor_.*_value"}'
COUNTERS = '{__name__=~"sensor_.*_total"}'
TYPICAL = [
    {"name": "gauges-1m-site", "match": GAUGES, "interval": "1m", "by": ["site"],
     "outputs": ["avg", "min", "max"]},
    {"name": "gauges-5m-site-q", "match": GAUGES, "interval": "5m", "by": ["site"],
     "outputs": ["quantiles(0.5, 0.9, 0.99)"]},
    {"name": "gauges-5m-device", "match": GAUGES, "interval": "5m", "without": ["model"],
     "outputs": ["avg", "max", "last"]},
    {"name": "counters-1m-site", "match": COUNTERS, "interval": "1m", "by": ["site"],
     "outputs": ["increase_prometheus", "rate_sum"]},
    {"name": "counters-5m-device", "match": COUNTERS, "interval": "5m", "without": ["model"],
     "outputs": ["total_prometheus"]},
    {"name": "sensor00-1m-device", "match": "sensor_00_value", "interval": "1m",
     "outputs": ["count_samples", "sum_samples", "stddev"]},
    {"name": "gauges-5m-model", "match": GAUGES, "interval": "5m", "by": ["model"],
     "outputs": ["count_series"]},
    {"name": "counters-5m-site-rate", "match": COUNTERS, "interval": "5m", "by": ["site"],
     "outputs": ["rate_avg"]},
    {"name": "low-sensors-1h-site", "match": '{__name__=~"sensor_0[0-9]_value"}',
     "interval": "1h", "by": ["site"], "outputs": ["avg"]},
    {"name": "dev0-5m-site", "match": '{device=~"dev-0.*"}', "interval": "5m",
     "by": ["site"], "outputs": ["count_samples"]},
]


def rollups_only(by: list[str] | None, lean: bool = False) -> list[dict[str, Any]]:
    group = {"by": by} if by else {}
    return [
        {"name": "g", "match": GAUGES, "interval": "5m", "keep_raw": False, **group,
         "outputs": ["avg", "max"] if lean else ["avg", "min", "max", "last"]},
        {"name": "c", "match": COUNTERS, "interval": "5m", "keep_raw": False, **group,
         "outputs": ["increase_prometheus"] if lean else ["increase_prometheus", "last"]},
    ]


def _keys() -> list[SeriesKey]:
    return [tuple(sorted(series_labels(d, m).items())) for d in range(DEVICES)
            for m in range(METRICS)]


def run_buffer(tmp: Path, rules: list[dict[str, Any]], keys: list[SeriesKey],
               all_steps: list[Any]) -> dict[str, Any]:
    """Feed the workload through a buffer; returns timings and forwardable bytes."""
    path = tmp / f"b{time.monotonic_ns()}.sqlite3"
    store = Store(path, synchronous="normal")
    stage = RollupStage(parse_rules(rules), store.series.key, checkpoint_interval_s=60)
    stage.load(*store.agg_saved())
    series = store.series
    roll_cpu: list[float] = []
    per_commit = len(keys) // 10
    for st in all_steps:
        vals = st.values.reshape(-1)
        for a in range(0, len(keys), per_commit):
            b = IngestBatch(metric_keys=keys[a:a + per_commit],
                            metric_ts=[st.ts_ms] * per_commit,
                            metric_values=vals[a:a + per_commit].tolist())
            sids = series.ids(b.metric_keys)
            new = series.unsaved()
            store.append(new, [(b, (sids, [], []))])
            series.saved(len(new))
        c0 = time.process_time()
        store.roll(stage=stage, now=st.ts_ms + 1_000)
        roll_cpu.append(time.process_time() - c0)
    c0 = time.process_time()
    store.roll(stage=stage, now=all_steps[-1].ts_ms + 2 * 3_600_000)  # close them all
    roll_cpu[-1] += time.process_time() - c0
    counters = store.counters()
    seg = {k: int(v) for k, v in store.conn.execute(
        "SELECT kind, sum(size) FROM segments GROUP BY kind")}
    rows = {k: int(v) for k, v in store.conn.execute(
        "SELECT kind, sum(n) FROM segments GROUP BY kind")}
    # definitions of the series the segments reference, as the forwarder sends them (once)
    used: set[int] = set()
    from edge_node.wire import decode_segment

    for (blob,) in store.conn.execute("SELECT blob FROM segments"):
        used.update(np.unique(decode_segment(blob).series).tolist())
    defs = store.series.labels(sorted(used))
    def_bytes = len(zstandard.compress(msgpack.packb([[s, d] for s, d in defs]), 3))
    store.close()
    return {"roll_cpu": roll_cpu, "seg_bytes": sum(seg.values()), "def_bytes": def_bytes,
            "rollup_rows": rows.get("rollups", 0), "raw_rows": rows.get("metrics", 0),
            "checkpoint_bytes": counters.get("aggregation_checkpoint_bytes", 0),
            "log_bytes": counters.get("aggregation_log_bytes", 0)}


def main() -> None:
    all_steps = list(steps())
    n = DEVICES * METRICS * STEPS
    keys = _keys()
    print(f"standard workload: {n:,} samples ({DEVICES} devices x {METRICS} series x {STEPS} "
          f"steps of {STEP_MS // 1000} s)\n")

    # 1. 40 steps: the first 20 see every series for the first time (rule matching, group and
    # output-series creation), the next 20 are the steady state of a running node
    long = list(steps(n_steps=2 * STEPS))
    labels = dict(enumerate(keys, start=1))
    agg = Aggregator(parse_rules(TYPICAL), labels.get, 0)
    sids = np.arange(1, len(keys) + 1, dtype=np.int64)
    cpu: list[float] = []
    wall: list[float] = []
    emitted = 0
    for st in long:
        c0, w0 = time.process_time(), time.perf_counter()
        agg.ingest(sids, np.full(len(keys), st.ts_ms, np.int64), st.values.reshape(-1),
                   st.ts_ms + 1000)
        emitted += len(agg.flush(st.ts_ms + 1000)[0])
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    print("1. throughput, 10 typical rules (1m/5m/1h windows, by site / per device / by model,")
    print("   avg min max last stddev count_series increase rate total quantiles)")
    for label, a, b in (("first sight", 0, STEPS), ("steady", STEPS, 2 * STEPS)):
        print(f"   aggregator alone, {label:<11}: {n / sum(wall[a:b]):>10,.0f} samples/s "
              f"{sum(cpu[a:b]) / n * 1e6:6.2f} CPU-s per M samples")
    print(f"   ({emitted:,} output rows over {2 * n:,} samples)")

    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        base = run_buffer(tmp, [], keys, long)
        typical = run_buffer(tmp, TYPICAL, keys, long)
        for label, a, b in (("first sight", 0, STEPS), ("steady", STEPS, 2 * STEPS)):
            without = sum(base["roll_cpu"][a:b])
            with_ = sum(typical["roll_cpu"][a:b])
            print(f"   buffer roll, {label:<11}: {without / n * 1e6:5.2f} CPU-s per M samples "
                  f"without rules, {with_ / n * 1e6:5.2f} with them: "
                  f"{n / max(with_ - without, 1e-9):>9,.0f} samples/s of aggregation per core")
        minutes = 2 * STEPS * STEP_MS / 60_000
        print(f"   state written: checkpoints {typical['checkpoint_bytes'] / minutes / 1e3:,.0f} "
              f"kB/min, replay log {typical['log_bytes'] / (2 * n):.2f} B/sample "
              f"(raw segments: {base['seg_bytes'] / (2 * n):.2f} B/sample)")
        print()
        print('2. forwarded bytes, raw vs "5m rollups only" (keep_raw = false), 20 steps')
        base = run_buffer(tmp, [], keys, all_steps)
        raw_total = base["seg_bytes"] + base["def_bytes"]
        print(f"   raw                    : {raw_total:>12,} B  ({base['raw_rows']:,} rows, "
              f"{raw_total / n:.2f} B/sample incl. {base['def_bytes']:,} B of series "
              f"definitions)")
        for label, by, lean in (("5m per device", None, False),
                                ("5m per device, lean", None, True),
                                ("5m by site", ["site"], False)):
            r = run_buffer(tmp, rollups_only(by, lean), keys, all_steps)
            total = r["seg_bytes"] + r["def_bytes"]
            print(f"   {label:<23}: {total:>12,} B  ({r['rollup_rows']:,} rollup rows, "
                  f"{r['raw_rows']:,} raw)  reduction {raw_total / total:,.1f}x")


if __name__ == "__main__":
    main()
