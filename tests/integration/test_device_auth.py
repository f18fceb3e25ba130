"""Optional device tokens at the edge: per-device and per-site grants, every header form."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from edge_node.config import EdgeConfig
from edge_node.errors import ConfigError
from edge_node.node import open_edge_node
from tests.conftest import Central, edge_config, wait_for

DEV = "dev-token-0123456789"
SITE = "site-token-0123456789"


async def test_tokens_gate_and_label_the_data(tmp_path: Path, central: Central) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({DEV: {"device": "pump-1"}, SITE: {"site": "plant-7"}}))
    cfg = edge_config(tmp_path, central, ingest={"tokens_file": str(tokens)})
    async with open_edge_node(cfg) as node, httpx.AsyncClient() as c:
        prom = node.url + "/api/v1/import/prometheus"
        assert (await c.post(prom, content=b"m 1")).status_code == 401
        assert (await c.post(prom, content=b"m 1", headers={
            "Authorization": "Bearer wrong-token-000000"})).status_code == 401
        other = await c.post(prom, content=b'm{device="pump-2"} 1',
                             headers={"Authorization": f"Bearer {DEV}"})
        assert other.status_code == 403 and "pump-1" in other.json()["error"]
        ok = [await c.post(prom, content=b"rpm 1200", headers={
                  "Authorization": f"Bearer {DEV}"}),
              await c.post(node.url + "/api/v2/write", content=b"temp,host=cam-1 c=21.5",
                           headers={"Authorization": f"Token {SITE}"}),
              await c.post(node.url + "/write", content=b"hum,host=cam-1 pct=40",
                           headers={"Authorization": "Basic " + base64.b64encode(
                               f"telegraf:{SITE}".encode()).decode()})]
        assert [r.status_code for r in ok] == [204, 204, 204]
        spoof = await c.post(node.url + "/api/v1/ingest", json={
            "device_id": "x", "labels": {"site": "elsewhere"},
            "metrics": [{"name": "m", "value": 1}]}, headers={"Authorization": f"Bearer {SITE}"})
        assert spoof.status_code == 403
        await wait_for(lambda: central.counts()["metrics"] == 3)
    rows = {r[0]: json.loads(r[1]) for r in central.store.open_sync().execute(
        "SELECT name, labels FROM samples_v")}
    assert rows["rpm"]["device"] == "pump-1"
    assert rows["temp_c"]["site"] == "plant-7" and rows["hum_pct"]["site"] == "plant-7"


def test_a_bad_tokens_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "tokens.json"
    bad.write_text(json.dumps({"short": {}}))
    with pytest.raises(ConfigError, match="shorter than 16"):
        EdgeConfig.from_mapping({"node_id": "n", "data_dir": str(tmp_path), "central": {
            "url": "http://x", "api_key": "k"}, "ingest": {"tokens_file": str(bad)}}, env={})
