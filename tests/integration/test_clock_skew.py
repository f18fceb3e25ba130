"""Device clocks on a real node with a real central over HTTP: a device two days ahead is
stored at the time it reported (policy correct), shows on /metrics, the status document and the
built-in DeviceClockSkew alert; with policy reject it gets a 422 naming it and nothing is
stored; a device replaying its buffered past is left alone."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import trio

from edge_node.node import open_edge_node
from tests.conftest import Central, edge_config, wait_for

DAY_MS = 86_400_000


def stored(central: Central, device: str) -> list[int]:
    return sorted(int(t) for (t,) in central.store.open_sync().execute(
        "SELECT ts FROM samples_v WHERE name = 'temp_c' AND "
        "json_extract(labels, '$.device') = ?", (device,)))


async def test_a_fast_clock_is_corrected_reported_and_alerted(tmp_path: Path,
                                                              central: Central) -> None:
    cfg = edge_config(tmp_path, central, alerts={"builtin_interval_s": 1.0})
    now = int(time.time() * 1000)
    async with open_edge_node(cfg) as node, httpx.AsyncClient() as c:
        ahead = [now + 2 * DAY_MS - 30_000, now + 2 * DAY_MS]  # its clock: two days fast
        r = await c.post(node.url + "/api/v1/ingest", json={
            "device_id": "pump-1", "metrics": [{"name": "temp_c", "value": v, "ts": t}
                                               for v, t in zip((1.0, 2.0), ahead, strict=True)]})
        assert r.status_code == 204
        replay = [now - 3 * DAY_MS, now - 2 * DAY_MS]  # another device, a right clock, back online
        r = await c.post(node.url + "/api/v1/ingest", json={
            "device_id": "meter-2", "metrics": [{"name": "temp_c", "value": 5.0, "ts": t}
                                                for t in replay]})
        assert r.status_code == 204
        text = (await c.get(node.url + "/metrics")).text
        offset = [ln for ln in text.splitlines()
                  if ln.startswith("fleet_edge_device_clock_offset_seconds{")]
        assert len(offset) == 1 and 'device="pump-1"' in offset[0]
        assert abs(float(offset[0].split()[-1]) - 2 * 86400) < 60
        doc = (await c.get(node.url + "/api/v1/status")).json()
        assert [s["device"] for s in doc["clock_skew"]] == ["pump-1"]

        async def firing() -> list[str]:
            alerts = (await c.get(node.url + "/api/v1/alerts")).json()["data"]["alerts"]
            return [a["labels"].get("device", "") for a in alerts
                    if a["labels"]["alertname"] == "DeviceClockSkew"
                    and a["state"] == "firing"]

        await wait_for(lambda: firing(), timeout=30)
        assert await firing() == ["pump-1"]
        await wait_for(lambda: len(stored(central, "pump-1")) == 2, timeout=30)
        await wait_for(lambda: len(stored(central, "meter-2")) == 2, timeout=30)
    got = stored(central, "pump-1")
    assert got[1] - got[0] == 30_000  # spacing kept...
    assert now - 1000 <= got[1] <= int(time.time() * 1000)  # ...the newest at its arrival
    assert stored(central, "meter-2") == replay  # a true past left alone


async def test_policy_reject_refuses_the_request_and_names_the_device(
        tmp_path: Path, central: Central) -> None:
    cfg = edge_config(tmp_path, central, clock={"policy": "reject"})
    now = int(time.time() * 1000)
    async with open_edge_node(cfg) as node, httpx.AsyncClient() as c:
        r = await c.post(node.url + "/api/v1/import/prometheus",
                         content=f'temp_c{{device="pump-1"}} 1 {now + 2 * DAY_MS}\n'.encode())
        assert r.status_code == 422
        doc = r.json()
        assert doc["field"] == "ts" and "pump-1" in doc["error"] and "ahead" in doc["error"]
        r = await c.post(node.url + "/api/v1/import/prometheus",
                         content=f'temp_c{{device="pump-1"}} 1 {now}\n'.encode())
        assert r.status_code == 204  # its clock right again: accepted
        await wait_for(lambda: len(stored(central, "pump-1")) == 1, timeout=30)
        await trio.sleep(0.5)
    assert stored(central, "pump-1") == [now]  # the refused sample never went anywhere
