"""The node's HTTP app: the ingest fast path first, then the local API for people and tools.

:class:`EdgeApp` sends ingest paths (:data:`edge_node.ingest.IngestHandler.routes`) to the raw
ASGI :class:`~edge_node.ingest.IngestHandler`, everything else to a quart-trio app:
``/healthz``, ``/readyz``, ``/metrics``, the status page (``/``) and ``/api/v1/status``,
``/api/v1/devices`` (and ``devices/forget``, loopback only), ``/api/v1/alerts`` (Prometheus'
format) and ``alerts/notifications``, ``/api/v1/aggregates``. The app reads the node's parts per
request through :class:`NodeView`, because a reload may replace the alert service and the
aggregation stage.
"""

from __future__ import annotations

import importlib.resources
import json
from typing import TYPE_CHECKING, Any, Protocol

import trio
from quart import Response, request
from quart_trio import QuartTrio

from . import __version__
from .config import EdgeConfig
from .ingest import _JSON_HEADERS, IngestHandler, Receive, Scope, Send
from .metrics import CONTENT_TYPE, Registry
from .tls import is_loopback_host

if TYPE_CHECKING:
    from .aggregate.roll_stage import RollupStage
    from .alerts.service import AlertService
    from .buffer import BufferService
    from .forward import Forwarder
    from .status import StatusService
    from .tls import ServerTLS


class NodeView(Protocol):
    """The parts of a running node the app reads (:class:`edge_node.node.EdgeNode`)."""

    cfg: EdgeConfig
    registry: Registry
    buffer: BufferService
    forwarder: Forwarder
    alerts: AlertService | None
    aggregation: RollupStage | None
    status: StatusService | None
    server_tls: ServerTLS | None


class EdgeApp:
    """ASGI entry point: the ingest fast path, then the Quart app for everything else."""

    def __init__(self, ingest: IngestHandler, quart_app: QuartTrio) -> None:
        self.ingest = ingest
        self.quart_app = quart_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.ingest.routes:
            if scope["method"] == "POST":
                await self.ingest(scope, receive, send)
                return
            await send({"type": "http.response.start", "status": 405,
                        "headers": [*_JSON_HEADERS, (b"allow", b"POST")]})
            await send({"type": "http.response.body",
                        "body": b'{"error": "use POST", "field": "method"}'})
            return
        # hypercorn's precise ASGI types vs. our plain mappings: same messages at runtime
        await self.quart_app(scope, receive, send)  # type: ignore[arg-type]


#: the status page: one self-contained file (no external assets) shipped in the package
STATUS_PAGE = importlib.resources.files(__package__).joinpath(
    "static/status.html").read_text(encoding="utf-8")


def create_app(node: NodeView) -> EdgeApp:
    """Build the node's ASGI app around a running node (its parts are read per request: a
    reload may replace the alert service)."""
    app = QuartTrio("fleet_edge")
    status = node.status
    assert status is not None, "the status service comes first"
    cfg = node.cfg
    registry = node.registry
    buffer = node.buffer

    def as_json(body: Any, status: int = 200) -> Response:
        # one line: a shell prompt after `curl` starts on its own line
        return Response(json.dumps(body) + "\n", status=status, mimetype="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        # "ok" while the node runs: an unreachable central is normal for an edge, and shown
        # in the fields, not as a failed health check that would get the node restarted
        st = buffer.stats
        fwd = node.forwarder
        return as_json({"status": "ok", "node_id": node.cfg.node_id, "version": __version__,
                        "central_connected": fwd.connected,
                        "last_forward_error": fwd.last_error or None,
                        "pending_rows": sum(st.pending.values()),
                        "backlog_age_s": round(buffer.backlog_age(), 3),
                        "buffer_bytes": st.used_bytes, "dead_letters": st.dead_letters})

    @app.get("/readyz")
    async def readyz() -> Response:
        # ready: the buffer takes writes; central reachable, or not needed yet (room left)
        why = status.not_ready()
        return as_json({"status": "not ready" if why else "ready", "reasons": why},
                       503 if why else 200)

    @app.get("/api/v1/status")
    async def status_api() -> Response:
        return as_json(await status.document())

    @app.get("/")
    @app.get("/status")
    async def status_page() -> Response:
        return Response(STATUS_PAGE, mimetype="text/html")

    @app.get("/api/v1/devices")
    async def devices_api() -> Response:
        # every device local alerting tracks, offline first
        return as_json({"devices": status.devices(), "tracking": node.alerts is not None})

    @app.post("/api/v1/devices/forget")
    async def forget_device() -> Response:
        # changes state: only from the gateway itself (fleet-edge devices forget)
        if not (request.remote_addr and is_loopback_host(request.remote_addr)):
            return as_json({"error": "only accepted from the gateway itself (127.0.0.1 or "
                                     "::1): use fleet-edge devices forget"}, 403)
        body = await request.get_json(force=True, silent=True)
        name = body.get("device") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            return as_json({"error": "expected {\"device\": \"<name>\"}",
                            "field": "device"}, 400)
        alerts = node.alerts
        if alerts is None:
            return as_json({"error": "device tracking is off (local alerting is disabled)"},
                           409)
        gone = await alerts.forget_device(name)
        if gone is None:
            return as_json({"error": f"device {name!r} is not known", "field": "device"}, 404)
        return as_json(gone)

    @app.get("/api/v1/alerts")
    async def alerts_api() -> Response:
        # Prometheus' format, so tools that read /api/v1/alerts read this one
        alerts = node.alerts
        return as_json({"status": "success",
                        "data": {"alerts": alerts.summary() if alerts is not None else []}})

    @app.get("/api/v1/alerts/notifications")
    async def alert_notifications() -> Response:
        # the outbox, newest first: hook, status, attempts, delivery, exit status / HTTP status
        alerts = node.alerts
        rows = [] if alerts is None else await alerts.recent_notifications()
        return as_json({"notifications": rows})

    @app.get("/api/v1/aggregates")
    async def aggregates() -> Response:
        stage = node.aggregation
        rules = [] if stage is None else await trio.to_thread.run_sync(stage.summary)
        return as_json({"node_id": cfg.node_id, "rules": rules,
                        # samples re-applied from the replay log when the node started
                        "replayed_on_start": stage.replayed if stage else 0,
                        "checkpoints": stage.checkpoints if stage else 0})

    @app.get("/metrics")
    async def metrics() -> Response:
        with trio.move_on_after(2):
            await buffer.refresh_stats()
        return Response(registry.render(), content_type=CONTENT_TYPE)

    return EdgeApp(IngestHandler(cfg, buffer, registry, tls=node.server_tls), app)
