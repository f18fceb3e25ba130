"""The disk budget with a real node: old data is dropped and counted, heartbeats never refused."""

from __future__ import annotations

import collections
import random
from pathlib import Path

import httpx

from edge_node.buffer.store import Store
from edge_node.node import open_edge_node
from edge_node.wire import decode_segment
from tests.conftest import edge_config

NOW = 1_795_839_600_000


async def test_budget_drops_oldest_and_keeps_heartbeats(tmp_path: Path) -> None:
    # central is unreachable: everything stays in the buffer, which must stay within 3 MB (the
    # WAL counts too: at 1 MB it alone passes the budget, and every log would go)
    cfg = edge_config(tmp_path, buffer={"max_disk_mb": 3.0, "roll_interval_s": 0.05})
    rng = random.Random(3)
    async with open_edge_node(cfg) as node, httpx.AsyncClient() as c:
        url = node.url + "/api/v1/ingest"
        for i in range(60):
            body = {"device_id": f"d{i % 5}", "heartbeat": True, "ts": NOW + i,
                    "metrics": [{"name": f"m{k}", "value": rng.random(), "ts": NOW + i}
                                for k in range(500)],
                    "logs": [{"line": rng.randbytes(1000).hex(), "ts": NOW + i}
                             for _ in range(40)]}
            r = await c.post(url, json=body)
            assert r.status_code == 204
            await node.buffer.roll_now()
        stats = await node.buffer.refresh_stats()
        text = (await c.get(node.url + "/metrics")).text
    assert stats.used_bytes <= 1.2 * 3 * 1024 * 1024
    assert stats.pending["heartbeats"] == 60  # never dropped
    dropped_logs = stats.counters.get("dropped_logs", 0)
    assert dropped_logs > 0
    assert f'fleet_edge_dropped_total{{kind="logs"}} {dropped_logs}' in text
    # and in order: the logs still in the buffer are those of the newest requests, every line
    store = Store(cfg.db_path)
    try:
        seqs = [r[0] for r in store.conn.execute("SELECT seq FROM segments WHERE kind='logs'")]
        kept = collections.Counter(int(t) - NOW for b in store.read_segments(seqs)
                                   for t in decode_segment(b).ts.tolist())
    finally:
        store.close()
    requests = sorted(kept)
    assert 0 < len(requests) < 60
    assert requests == list(range(60 - len(requests), 60))  # a suffix: the oldest went first
    assert set(kept.values()) == {40}  # whole requests' logs, none cut in half
    assert sum(kept.values()) + dropped_logs == 60 * 40
