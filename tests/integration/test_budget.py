"""The disk budget with a real node: old data is dropped and counted, heartbeats never refused."""

from __future__ import annotations

import random
from pathlib import Path

import httpx

from edge_node.node import open_edge_node
from tests.conftest import edge_config

NOW = 1_795_839_600_000


async def test_budget_drops_oldest_and_keeps_heartbeats(tmp_path: Path) -> None:
    # central is unreachable: everything stays in the buffer, which must stay within 1 MB
    cfg = edge_config(tmp_path, buffer={"max_disk_mb": 1.0, "roll_interval_s": 0.05})
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
    assert stats.used_bytes <= 1.2 * 1024 * 1024
    assert stats.pending["heartbeats"] == 60  # never dropped
    dropped_logs = stats.counters.get("dropped_logs", 0)
    assert dropped_logs > 0
    assert f'fleet_edge_dropped_total{{kind="logs"}} {dropped_logs}' in text
