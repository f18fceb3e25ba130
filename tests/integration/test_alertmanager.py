"""The real Prometheus Alertmanager (Debian's prometheus-alertmanager 0.25) accepts what the
edge's ``alertmanager`` hook pushes, and the edge's ``webhook`` payload has the shape of the
one Alertmanager itself sends to a webhook receiver (so any Alertmanager receiver works)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import trio

from edge_node.alerts.notify import parse_hooks
from edge_node.alerts.rules import parse_rule_groups
from edge_node.alerts.service import AlertService
from edge_node.metrics import Registry
from edge_node.model import IngestBatch
from tests import servers


class Capture:
    """A webhook receiver: records each POST body by path."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[dict]] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.bodies.setdefault(self.path, []).append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def capture() -> Iterator[Capture]:
    c = Capture()
    yield c
    c.server.shutdown()
    c.server.server_close()


@pytest.fixture
def alertmanager(capture: Capture) -> Iterator[servers.Server]:
    cfg = f"""
route:
  receiver: capture
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: capture
    webhook_configs:
      - url: {capture.url}/from-alertmanager
        send_resolved: true
"""
    try:
        am = servers.start_alertmanager(cfg)
    except servers.ServerMissing as exc:
        pytest.fail(str(exc))
    yield am
    am.stop()


async def test_alertmanager_accepts_our_alerts_and_our_webhook_matches_its_own(
        tmp_path: Path, alertmanager: servers.Server, capture: Capture) -> None:
    hooks = parse_hooks({"route": {"group_by": ["alertname"]}, "hooks": [
        {"name": "am", "type": "alertmanager", "url": alertmanager.url},
        {"name": "ours", "type": "webhook", "url": capture.url + "/from-edge"}]})
    groups = parse_rule_groups({"groups": [{"name": "g", "interval": "1s", "rules": [
        {"alert": "Hot", "expr": "temp > 30", "labels": {"severity": "page"},
         "annotations": {"summary": "{{ $labels.device }} at {{ $value }}C"}}]}]})
    svc = AlertService(groups, hooks, "gw-1", tmp_path, Registry("fleet_edge"))
    async with httpx.AsyncClient() as client, trio.open_nursery() as n:
        svc._client = client
        await n.start(svc.run)
        svc.observe(IngestBatch(metric_keys=[(("__name__", "temp"), ("device", "d1"))],
                                metric_ts=[svc.now_ms()], metric_values=[35.0]))
        with trio.fail_after(30):
            while True:
                got = (await client.get(alertmanager.url + "/api/v2/alerts")).json()
                if got and capture.bodies.get("/from-alertmanager") and \
                        capture.bodies.get("/from-edge"):
                    break
                await trio.sleep(0.2)
        n.cancel_scope.cancel()
    await svc.close()

    # Alertmanager took our push as an active alert with our labels and annotations
    (am_alert,) = got
    assert am_alert["labels"] == {"alertname": "Hot", "device": "d1", "severity": "page"}
    assert am_alert["annotations"] == {"summary": "d1 at 35C"}
    assert am_alert["status"]["state"] == "active"

    # ... and notified its webhook receiver: same shape as what our webhook hook sends
    theirs = capture.bodies["/from-alertmanager"][0]
    ours = capture.bodies["/from-edge"][0]
    assert set(ours) == set(theirs)
    assert ours["version"] == theirs["version"] == "4"
    assert set(ours["alerts"][0]) == set(theirs["alerts"][0])
    assert ours["alerts"][0]["labels"] == theirs["alerts"][0]["labels"]
    assert ours["alerts"][0]["annotations"] == theirs["alerts"][0]["annotations"]
    for key in ("status", "groupLabels", "commonLabels", "commonAnnotations"):
        assert ours[key] == theirs[key], key
    for field in ("startsAt", "endsAt"):  # RFC 3339 both
        assert ours["alerts"][0][field][:4].isdigit() and theirs["alerts"][0][field][:4].isdigit()
