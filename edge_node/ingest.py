"""The quart-trio app devices talk to: ``/api/v1/ingest``, ``/healthz``, ``/metrics``."""

from __future__ import annotations

import logging
import time
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from .config import EdgeConfig
from .errors import BufferError_, IngestError, PayloadTooLarge
from .metrics import CONTENT_TYPE, Registry
from .protocols.decode import decompress
from .protocols.native import NativeParser, decode_body
from .writer import BufferService

log = logging.getLogger("fleet_edge.ingest")


def _json_error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None
                ) -> Response:
    import json

    return Response(json.dumps(body), status=status, mimetype="application/json",
                    headers=headers or {})


def create_app(cfg: EdgeConfig, buffer: BufferService, registry: Registry,
               health: dict[str, Any]) -> QuartTrio:
    """Build the ingest app around a running :class:`BufferService`."""
    app = QuartTrio("fleet_edge")
    app.config["MAX_CONTENT_LENGTH"] = cfg.ingest.max_body_bytes
    app.config["BODY_TIMEOUT"] = 60
    parser = NativeParser(cfg.ingest)
    m_requests = registry.counter("ingest_requests_total", "Ingest requests by outcome.",
                                  ("status",))
    m_ingested = registry.counter("ingested_total", "Rows accepted from devices.", ("kind",))
    m_rejected = registry.counter("rejected_total", "Requests refused, by reason.", ("reason",))

    @app.post("/api/v1/ingest")
    async def ingest() -> Response:
        now = time.time_ns() // 1_000_000
        try:
            length = request.content_length
            if length is not None and length > cfg.ingest.max_body_bytes:
                raise PayloadTooLarge(f"body is larger than {cfg.ingest.max_body_bytes} bytes",
                                      field="body")
            body = await request.get_data(cache=False)
            assert isinstance(body, bytes)
            raw = decompress(body, request.headers.get("Content-Encoding"),
                             cfg.ingest.max_decompressed_bytes)
            batch = parser.parse(decode_body(raw, request.headers.get("Content-Type")), now)
        except IngestError as exc:
            m_requests.inc(1, str(exc.status))
            m_rejected.inc(1, type(exc).__name__)
            return _json_error(exc.status, exc.to_json())
        try:
            await buffer.write(batch)
        except BufferError_ as exc:
            m_requests.inc(1, "503")
            return _json_error(503, {"error": str(exc)}, {"Retry-After": "5"})
        m_ingested.inc(batch.n_samples, "metrics")
        m_ingested.inc(batch.n_logs, "logs")
        m_ingested.inc(batch.n_heartbeats, "heartbeats")
        m_requests.inc(1, "204")
        return Response("", status=204)

    @app.errorhandler(413)
    async def too_large(_: Exception) -> Response:
        m_requests.inc(1, "413")
        return _json_error(413, {"error": f"body is larger than {cfg.ingest.max_body_bytes} "
                                          "bytes", "field": "body"})

    @app.get("/healthz")
    async def healthz() -> Response:
        import json

        body = {"status": "ok", "node_id": cfg.node_id, **health}
        return Response(json.dumps(body), mimetype="application/json")

    @app.get("/metrics")
    async def metrics() -> Response:
        with trio.move_on_after(2):
            await buffer.refresh_stats()
        return Response(registry.render(), content_type=CONTENT_TYPE)

    return app
