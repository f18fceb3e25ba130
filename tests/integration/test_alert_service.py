"""The alert service on Trio's virtual clock (``autojump_clock``): a 5-minute offline rule runs
in milliseconds. Notifications go through the durable outbox to a log hook; a failing webhook
is retried with backoff; a restart neither re-fires nor forgets."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import trio
import trio.testing

from edge_node.alerts.notify import HooksConfig, parse_hooks
from edge_node.alerts.rules import parse_rule_groups
from edge_node.alerts.service import AlertService, builtin_group
from edge_node.config import AlertsConfig
from edge_node.metrics import Registry
from edge_node.model import IngestBatch
from tests.conftest import Central, jsonl
from tests.seams import InlineRunner, virtual_clock

T0 = 1_795_839_600.0  # wall-clock seconds at virtual time 0


def service(tmp: Path, hooks: HooksConfig, groups: list | None = None,
            client: httpx.AsyncClient | None = None) -> AlertService:
    cfg = AlertsConfig(builtin_interval_s=30, device_offline_after_s=300)
    groups = groups if groups is not None else [builtin_group(cfg)]
    return AlertService(groups, hooks, "gw-1", tmp, Registry("fleet_edge"),
                        clock=virtual_clock(T0), client=client, runner=InlineRunner())


def beat(svc: AlertService, device: str) -> None:
    b = IngestBatch()
    b.metric_keys.append((("__name__", "temp"), ("device", device), ("site", "s1")))
    b.metric_ts.append(svc.now_ms())
    b.metric_values.append(21.5)
    svc.observe(b)


def log_hook(tmp: Path) -> HooksConfig:
    return parse_hooks({"route": {"group_by": ["alertname", "device"]},
                        "hooks": [{"name": "journal", "type": "log",
                                   "path": str(tmp / "alerts.jsonl")}]})


def notifications(tmp: Path) -> list[dict]:
    p = tmp / "alerts.jsonl"
    return jsonl(p)


async def test_device_offline_fires_within_threshold_plus_one_interval(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    svc = service(tmp_path, log_hook(tmp_path))
    async with trio.open_nursery() as n:
        await n.start(svc.run)
        for _ in range(10):  # reporting every 30 s
            beat(svc, "pump-1")
            beat(svc, "fan-2")
            await trio.sleep(30)
        beat(svc, "fan-2")
        silent_since = trio.current_time()  # pump-1 stops
        while not notifications(tmp_path):
            beat(svc, "fan-2")
            await trio.sleep(5)
        took = trio.current_time() - silent_since
        assert 300 <= took <= 300 + 30 + 30  # the threshold, one interval, one report gap
        (note,) = notifications(tmp_path)
        assert note["version"] == "4" and note["status"] == "firing"
        (alert,) = note["alerts"]
        assert alert["labels"]["alertname"] == "DeviceOffline"
        assert alert["labels"]["device"] == "pump-1" and alert["labels"]["site"] == "s1"
        assert "pump-1 has sent nothing for 5m" in alert["annotations"]["summary"]
        assert note["groupLabels"] == {"alertname": "DeviceOffline", "device": "pump-1"}
        n.cancel_scope.cancel()
    await svc.close()

    # a restart while it fires: no second notification
    svc2 = service(tmp_path, log_hook(tmp_path))
    assert [a["labels"]["device"] for a in svc2.summary()] == ["pump-1"]
    async with trio.open_nursery() as n:
        await n.start(svc2.run)
        for _ in range(6):
            beat(svc2, "fan-2")
            await trio.sleep(30)
        assert len(notifications(tmp_path)) == 1
        # the device comes back: one resolved notification
        beat(svc2, "pump-1")
        await trio.sleep(61)
        n.cancel_scope.cancel()
    await svc2.close()
    notes = notifications(tmp_path)
    assert [x["status"] for x in notes] == ["firing", "resolved"]
    assert notes[1]["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"


async def test_a_forgotten_device_is_no_longer_offline(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    svc = service(tmp_path, log_hook(tmp_path))
    async with trio.open_nursery() as n:
        await n.start(svc.run)
        beat(svc, "old-cam")
        while not notifications(tmp_path):  # old-cam was decommissioned: it goes offline
            beat(svc, "fan-2")
            await trio.sleep(30)
        assert await svc.forget_device("nobody") is None
        gone = await svc.forget_device("old-cam")
        assert gone is not None and gone["device"] == "old-cam" and gone["site"] == "s1"
        assert "old-cam" not in svc.devices
        await trio.sleep(31)  # the next evaluation resolves it at once (no 5-minute lookback)
        assert [x["status"] for x in notifications(tmp_path)] == ["firing", "resolved"]
        assert svc.summary() == []
        n.cancel_scope.cancel()
    await svc.close()
    svc2 = service(tmp_path, log_hook(tmp_path))  # forgotten for good, across a restart
    assert set(svc2.devices) == {"fan-2"}
    await svc2.close()


async def test_group_wait_and_group_interval_batch_notifications(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    hooks = parse_hooks({"route": {"group_by": ["alertname"], "group_wait": "60s",
                                   "group_interval": "5m"},
                         "hooks": [{"name": "journal", "type": "log",
                                    "path": str(tmp_path / "alerts.jsonl")}]})
    svc = service(tmp_path, hooks)
    silent: set[str] = set()

    async def report(seconds: float) -> None:
        for _ in range(int(seconds // 10)):
            for dev in ("pump-1", "pump-2", "pump-3", "fan"):
                if dev not in silent:
                    beat(svc, dev)
            await trio.sleep(10)

    async with trio.open_nursery() as n:
        await n.start(svc.run)
        await report(60)
        t0 = trio.current_time()
        silent.add("pump-1")
        await report(20)
        silent.add("pump-2")  # offline 20 s later: inside pump-1's group_wait
        await report(180)
        silent.add("pump-3")  # much later: after the first notification
        await report(900)
        silent.discard("pump-1")  # back
        await report(600)
        n.cancel_scope.cancel()
    queued = sorted(r["created_ms"] for r in await svc.recent_notifications()
                    if r["hook"] == "journal")
    await svc.close()
    notes = notifications(tmp_path)
    got = [(n["status"], sorted((a["labels"]["device"], a["status"]) for a in n["alerts"]))
           for n in notes]
    # one notification for the two that went offline together, one when pump-3 joined (not
    # before group_interval), one when pump-1 came back (with the others still firing)
    assert got == [
        ("firing", [("pump-1", "firing"), ("pump-2", "firing")]),
        ("firing", [("pump-1", "firing"), ("pump-2", "firing"), ("pump-3", "firing")]),
        ("firing", [("pump-1", "resolved"), ("pump-2", "firing"), ("pump-3", "firing")]),
    ]
    times = [ms / 1000 - T0 - t0 for ms in queued]
    assert 300 + 60 <= times[0] <= 300 + 60 + 30 + 10  # threshold + group_wait (+ tick, gap)
    assert times[1] - times[0] >= 300  # group_interval
    assert times[2] - times[1] >= 300


async def test_a_failing_webhook_is_retried_until_delivered(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    received: list[dict] = []
    state = {"up": False}

    def handler(request: httpx.Request) -> httpx.Response:
        if not state["up"]:
            return httpx.Response(503)
        received.append(json.loads(request.content))
        return httpx.Response(200)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    hooks = parse_hooks({"hooks": [{"name": "ops", "type": "webhook",
                                    "url": "http://receiver.invalid/hook"}]})
    groups = parse_rule_groups({"groups": [{"name": "g", "interval": "10s", "rules": [
        {"alert": "Hot", "expr": "temp > 30", "labels": {"severity": "page"}}]}]})
    svc = service(tmp_path, hooks, groups, client)
    async with trio.open_nursery() as n:
        await n.start(svc.run)
        b = IngestBatch(metric_keys=[(("__name__", "temp"), ("device", "d1"))],
                        metric_ts=[svc.now_ms()], metric_values=[35.0])
        svc.observe(b)
        await trio.sleep(120)  # the receiver is down: attempts back off
        assert received == []
        outbox = svc.db.outbox()
        assert outbox[0]["attempts"] >= 3 and "503" in outbox[0]["last_error"]
        state["up"] = True
        await trio.sleep(400)
        n.cancel_scope.cancel()
    await svc.close()
    # delivered once, not once per attempt; then resolved once the sample aged out (the
    # 5-minute lookback of an instant selector)
    assert [r["status"] for r in received] == ["firing", "resolved"]
    assert received[0]["alerts"][0]["labels"] == {"alertname": "Hot", "device": "d1",
                                                  "severity": "page"}
    assert received[0]["receiver"] == "ops"


async def test_a_running_node_alerts_and_lists_them(tmp_path: Path, central: Central) -> None:
    """Real clock, real node: a rule file, a log hook, /api/v1/alerts and `fleet-edge alerts`;
    the alert events reach central (its alert_events table) as the highest-priority kind."""
    import subprocess
    import sys

    from edge_node.node import open_edge_node
    from tests.conftest import edge_config, wait_for

    rules = tmp_path / "rules.yml"
    rules.write_text("groups:\n  - name: site\n    interval: 1s\n    rules:\n"
                     "      - alert: Hot\n        expr: max by (device) (temp_c) > 30\n"
                     "        labels: {severity: page}\n"
                     "        annotations: {summary: '{{ $labels.device }} at {{ $value }}C'}\n")
    hooks = tmp_path / "hooks.yml"
    hooks.write_text(f"hooks:\n  - name: journal\n    type: log\n"
                     f"    path: {tmp_path / 'a.jsonl'}\n")
    cfg = edge_config(tmp_path, central, alerts={"rule_files": str(rules),
                                                 "hooks_file": str(hooks)})
    async with open_edge_node(cfg) as node, httpx.AsyncClient() as c:
        r = await c.post(node.url + "/api/v1/ingest", json={
            "device_id": "boiler-1", "metrics": [{"name": "temp_c", "value": 31.5}]})
        assert r.status_code == 204
        await wait_for(lambda: notifications_in(tmp_path / "a.jsonl"), timeout=15)
        doc = (await c.get(node.url + "/api/v1/alerts")).json()
        (alert,) = doc["data"]["alerts"]
        assert alert["state"] == "firing"
        assert alert["labels"] == {"alertname": "Hot", "device": "boiler-1", "severity": "page"}
        assert alert["annotations"]["summary"] == "boiler-1 at 31.5C"
        out = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "edge_node.cli", "alerts", "--url", node.url],
            capture_output=True, text=True, timeout=30))
        assert out.returncode == 0, out.stderr
        assert "firing" in out.stdout and "Hot" in out.stdout and "boiler-1 at 31.5C" in out.stdout
        notes = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "edge_node.cli", "alerts", "--url", node.url,
             "--notifications"], capture_output=True, text=True, timeout=30))
        assert notes.returncode == 0, notes.stderr
        assert "journal" in notes.stdout and "written" in notes.stdout
        assert "alertname=Hot" in notes.stdout
        text = (await c.get(node.url + "/metrics")).text
        assert 'fleet_edge_alerts_active{state="firing"} 1' in text
        assert 'fleet_edge_alert_notifications_total{hook="journal",outcome="delivered"} 1' in text

        def events() -> list[tuple[str, str, str, str]]:
            return central.store.open_sync().execute(
                "SELECT alertname, status, device, severity FROM alert_events").fetchall()

        await wait_for(lambda: events() == [("Hot", "firing", "boiler-1", "page")], timeout=15)
        (labels,) = central.store.open_sync().execute(
            "SELECT labels FROM alert_events").fetchone()
        assert json.loads(labels)["alertname"] == "Hot"
        # the device cools down: the resolution reaches the hooks and central too
        r = await c.post(node.url + "/api/v1/ingest", json={
            "device_id": "boiler-1", "metrics": [{"name": "temp_c", "value": 20.0}]})
        assert r.status_code == 204
        await wait_for(lambda: sorted(e[1] for e in events()) == ["firing", "resolved"],
                       timeout=15)
        assert [n["status"] for n in notifications_in(tmp_path / "a.jsonl")] == \
            ["firing", "resolved"]

        async def acked() -> bool:  # the ack returns a moment after central committed
            text = (await c.get(node.url + "/metrics")).text
            return 'fleet_edge_acked_total{kind="alerts"} 2' in text

        await wait_for(acked, timeout=15)


def notifications_in(path: Path) -> list[dict]:
    return jsonl(path)


def test_outbox_keeps_order_behind_a_retry(tmp_path: Path) -> None:
    from edge_node.alerts.db import AlertDB

    db = AlertDB(tmp_path / "a.sqlite3")
    db.commit(1000, {}, [("h", "d1", "g", "firing", "{}"), ("h", "d2", "g", "resolved", "{}"),
                         ("h", "d1", "g", "firing", "{}")])  # the repeat is ignored (dedup)
    first, second = db.due("h", 1000)
    db.failed(first[0], 5000, "HTTP 503")
    assert db.due("h", 2000) == []  # the resolution waits behind the firing notification
    assert db.next_due_ms("h") == 5000
    assert [r[0] for r in db.due("h", 5000)] == [first[0], second[0]]
    db.close()


async def test_recent_data_is_seeded_from_the_buffer(tmp_path: Path) -> None:
    """After a crash (no snapshot yet), the metric rows still in the buffer -- segments and the
    journal -- seed the rules' recent data, so a rule over a range fires at once."""
    import time as _time

    from edge_node.buffer import Store, pack_journal_rows

    store = Store(tmp_path / "buffer.sqlite3")
    now = int(_time.time() * 1000)
    key = (("__name__", "temp"), ("device", "d1"))
    b1 = IngestBatch(metric_keys=[key] * 3, metric_ts=[now - 3000, now - 2000, now - 1000],
                     metric_values=[40.0, 41.0, 42.0])
    store.append_rows([(1, key)], pack_journal_rows([(b1, ([1, 1, 1], [], []))]))
    store.roll()  # those become a segment
    b2 = IngestBatch(metric_keys=[key], metric_ts=[now], metric_values=[43.0])
    store.append_rows([], pack_journal_rows([(b2, ([1], [], []))]))  # stays in the journal
    groups = parse_rule_groups({"groups": [{"name": "g", "interval": "10s", "rules": [
        {"alert": "HotForAWhile", "expr": "min_over_time(temp[1m]) > 30",
         "annotations": {"summary": "{{ $value }}"}}]}]})
    svc = AlertService(groups, HooksConfig(), "gw", tmp_path, Registry("fleet_edge"),
                       labels_of=store.series.key, runner=InlineRunner())
    assert svc.seed_from_buffer(store.recent_metrics) == 4
    (event,) = await svc.evaluate(groups[0])
    assert event.kind == "firing" and event.alert.value == 40.0
    await svc.close()
    store.close()
