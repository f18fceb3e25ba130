"""The fleetd agent's calls at the edge: Connect Register (proto and JSON) and telemetry with the
issued key; the device shows up at central; keys are checked."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from edge_node.node import open_edge_node
from edge_node.protocols.protobuf import fields, string
from tests.conftest import Central, edge_config, wait_for
from tests.strategies import _pb_len

REGISTER = "/fleetd.v1.DeviceService/Register"


def _register_proto(name: str) -> bytes:
    cap = _pb_len(1, b"metrics") + _pb_len(2, b"true")
    return (_pb_len(1, name.encode()) + _pb_len(2, b"raspberry-pi") + _pb_len(3, b"0.5.1")
            + _pb_len(4, cap))


async def test_agent_registers_and_sends_telemetry(tmp_path: Path, central: Central) -> None:
    async with open_edge_node(edge_config(tmp_path, central)) as node, httpx.AsyncClient() as c:
        r = await c.post(node.url + REGISTER, content=_register_proto("pump-house-pi"),
                         headers={"Content-Type": "application/proto"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/proto"
        got = {num: string(r.content, span) for num, _, span in
               fields(r.content, 0, len(r.content))}
        device_id, key = got[1], got[2]
        rj = await c.post(node.url + REGISTER, json={"name": "cam-2", "type": "camera"})
        assert rj.status_code == 200 and set(rj.json()) == {"deviceId", "apiKey"}

        t = await c.post(node.url + "/api/v1/telemetry", headers={
            "Authorization": f"Bearer {key}"}, json={
            "device_id": device_id, "timestamp": "2026-11-28T04:20:00Z",
            "metric_name": "cpu.usage", "value": 37.5,
            "metadata": {"core": 0, "throttled": False, "nested": {"x": 1}}})
        assert t.status_code == 200, t.text
        # another device's key, no key, a bad body
        other = await c.post(node.url + "/api/v1/telemetry", headers={
            "Authorization": f"Bearer {rj.json()['apiKey']}"}, json={
            "device_id": device_id, "metric_name": "x", "value": 1})
        assert other.status_code == 403
        nokey = await c.post(node.url + "/api/v1/telemetry", json={"device_id": device_id})
        assert nokey.status_code == 401
        bad = await c.post(node.url + REGISTER, json={"type": "x"})
        assert bad.status_code == 400
        assert bad.json() == {"code": "invalid_argument", "message": "name: is required"}
        await wait_for(lambda: central.counts()["metrics"] == 1
                       and central.counts()["heartbeats"] == 2)
    (name, labels, ts, value), = [
        (r[0], json.loads(r[1]), r[2], r[3]) for r in central.store.open_sync().execute(
            "SELECT name, labels, ts, value FROM samples_v")]
    assert (name, ts, value) == ("cpu_usage", 1_795_839_600_000, 37.5)
    assert labels == {"__name__": "cpu_usage", "device": device_id, "core": "0",
                      "throttled": "false"}
    devices = {r[0] for r in central.store.open_sync().execute("SELECT device FROM devices")}
    assert device_id in devices and len(devices) == 2


def test_devices_command_lists_registrations(tmp_path: Path) -> None:
    import subprocess
    import sys

    import trio

    from edge_node.devices import DeviceRegistry

    reg = DeviceRegistry(tmp_path / "edge")
    trio.run(reg.register, "pump-house-pi", "raspberry-pi", "0.5.1", {"metrics": "true"})
    reg.close()
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'node_id = "n"\ndata_dir = "{tmp_path / "edge"}"\n[central]\n'
                   'url = "http://127.0.0.1:9"\napi_key = "k"\n')
    out = subprocess.run([sys.executable, "-m", "edge_node.cli", "devices", "--config",
                          str(cfg), "--json"], check=True, capture_output=True, text=True)
    (row,) = json.loads(out.stdout)
    assert (row["name"], row["type"], row["version"], json.loads(row["capabilities"])) == (
        "pump-house-pi", "raspberry-pi", "0.5.1", {"metrics": "true"})
