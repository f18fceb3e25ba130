"""Bytes per sample on disk and on the wire for the standard workload.

    .venv/bin/python -m bench.bench_wire

Feeds the workload through the real buffer code (journal -> one segment per 30-s step, as live
ingest rolls them; then the backlog merge the node runs while central is unreachable) and
encodes the batches the forwarder would send. HTTP overhead is counted as the request line and
headers the forwarder sends plus a typical response.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from bench.workload import DEVICES, METRICS, STEPS, series_labels, steps
from edge_node.buffer import Store
from edge_node.model import IngestBatch, series_key
from edge_node.wire import Batch, concat_columns, decode_segment, encode_batch, encode_segment

# POST line + Host, Authorization (64-char key), Content-Type, Content-Length, Accept,
# Accept-Encoding, Connection, User-Agent, and a 200 JSON response with its headers.
HTTP_OVERHEAD_BYTES = 420


def main() -> None:
    n_total = DEVICES * METRICS * STEPS
    keys = [series_key(series_labels(d, m)) for d in range(DEVICES) for m in range(METRICS)]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "b.sqlite3")
        ids = {k: i + 1 for i, k in enumerate(keys)}
        new = [(i, k) for k, i in ids.items()]
        live_sizes = []
        t_roll = 0.0
        for s, step in enumerate(steps()):
            b = IngestBatch(metric_keys=keys, metric_ts=[step.ts_ms] * len(keys),
                            metric_values=step.values.reshape(-1).tolist())
            sids = [ids[k] for k in keys]
            store.append(new if s == 0 else [], [(b, (sids, [], []))])
            t = time.perf_counter()
            (seq,) = store.roll(max_rows=10**9)
            t_roll += time.perf_counter() - t
            (blob,) = store.read_segments([seq])
            live_sizes.append(len(encode_batch(Batch("site-1-gw", seq, "metrics", blob,
                                                     len(keys), epoch="e" * 32))))
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        per_step_disk = store.used_bytes()
        seqs = [r[0] for r in store.conn.execute("SELECT seq FROM segments ORDER BY seq")]
        t = time.perf_counter()
        parts = [decode_segment(x) for x in store.read_segments(seqs)]
        cols = concat_columns("metrics", parts)
        merged = encode_segment(cols, level=9)
        t_merge = time.perf_counter() - t
        store.replace_segments(seqs, "metrics", cols, merged)
        store.mark_series(list(ids.values()), True)  # central confirmed the definitions
        store.conn.execute("PRAGMA incremental_vacuum")
        # measure the database at rest; the WAL adds at most ~4 MiB between checkpoints
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        merged_disk = store.used_bytes()
        (dict_bytes,) = store.conn.execute(
            "SELECT sum(pgsize) FROM dbstat WHERE name IN ('series_blocks', 'series_unacked')").fetchone() if _has_dbstat(
                store) else (None,)
        seg_bytes = len(merged)
        defs = [(i, dict(k)) for k, i in ids.items()]
        backlog_batch = len(encode_batch(Batch("site-1-gw", 99, "metrics", merged, n_total,
                                               epoch="e" * 32)))
        defs_bytes = len(encode_batch(Batch("site-1-gw", 99, "metrics", b"", 0, epoch="e" * 32,
                                            series_defs=defs)))
        store.close()
    per_step = len(keys)
    live = (np.mean(live_sizes[1:]) + HTTP_OVERHEAD_BYTES) / per_step
    print(f"standard workload: {DEVICES} devices x {METRICS} metrics x {STEPS} steps = "
          f"{n_total:,} samples ({len(keys):,} series)")
    print(f"roll (journal -> segment), per 100k-sample step: {t_roll / STEPS * 1000:.0f} ms; "
          f"backlog merge of 2M samples: {t_merge:.2f} s")
    print(f"disk, one segment per step (live):      {per_step_disk / n_total:6.3f} bytes/sample")
    print(f"disk, backlog merged:                   {merged_disk / n_total:6.3f} bytes/sample "
          "(whole file)")
    print(f"  of which segments:                    {seg_bytes / n_total:6.3f} bytes/sample")
    if dict_bytes:
        print(f"  of which series dictionary:           {dict_bytes / n_total:6.3f} bytes/sample"
              f" ({dict_bytes / len(keys):.0f} bytes/series, paid once per series)")
    print(f"entropy floor of this workload's values: {_entropy_floor():6.3f} bytes/sample "
          "(no lossless codec can go below it)")
    print(f"wire, backlog drain (1 batch + HTTP):   "
          f"{(backlog_batch + HTTP_OVERHEAD_BYTES) / n_total:6.3f} bytes/sample")
    print(f"wire, live (1 step per batch + HTTP):   {live:6.3f} bytes/sample "
          f"({np.mean(live_sizes[1:]) / 1e3:.0f} kB per 100k-sample batch)")
    print(f"series dictionary, sent once per series: {defs_bytes / len(keys):.1f} bytes/series "
          f"({defs_bytes / 1e6:.2f} MB for {len(keys):,} series)")


def _has_dbstat(store: Store) -> bool:
    try:
        store.conn.execute("SELECT 1 FROM dbstat LIMIT 1").fetchone()
    except Exception:
        return False
    return True


def _entropy_floor() -> float:
    """Empirical entropy of the per-step changes (what any codec must transmit), bytes/sample."""
    vals = np.stack([s.values for s in steps()])  # (steps, devices, metrics)
    deltas = np.round(np.diff(vals, axis=0) * 100).astype(np.int64).reshape(-1, METRICS)
    total_bits = 0.0
    for col in (deltas[:, :70].reshape(-1), deltas[:, 70:].reshape(-1)):
        _, counts = np.unique(col, return_counts=True)
        p = counts / counts.sum()
        total_bits += float(-(counts * np.log2(p)).sum())
    return total_bits / 8 / deltas.size


if __name__ == "__main__":
    main()
