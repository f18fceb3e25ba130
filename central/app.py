"""The quart-trio app edge nodes talk to: ``POST /api/v1/batches`` plus health and metrics."""

from __future__ import annotations

import json
import logging
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from edge_node import __version__
from edge_node.errors import WireError
from edge_node.metrics import CONTENT_TYPE, Registry
from edge_node.runtime import Runner, ThreadRunner
from edge_node.tls import Peer, ServerTLS
from edge_node.wire import decode_batch, decode_segment

from .audit import Audit
from .errors import MissingSeries, SinkRejected, SinkUnavailable
from .keys import KeyPolicy, KeyService
from .pipeline import Pipeline

log = logging.getLogger("fleet_central.app")

DEFAULT_MAX_BATCH_BYTES = 64 * 1024 * 1024


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body) + "\n", status=status, mimetype="application/json",
                    headers=headers or {})


def _source(scope: Any) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"


def _certificate_refusal(peer: Peer | None, node_id: str, mode: str) -> str:
    """Why a request authenticated as ``node_id`` is refused for its client certificate
    (``""``: it is not)."""
    if peer is None:
        return ("a client certificate naming the node is required (FLEET_CENTRAL_TLS_CLIENT_"
                "CERTS=required)" if mode == "required" else "")
    if node_id not in peer.names:
        return (f"this client certificate ({peer.subject or 'no subject'}; names: "
                f"{', '.join(peer.names) or 'none'}) is not node {node_id!r}'s: a node's "
                "certificate must name its node id")
    return ""


def create_app(pipeline: Pipeline, reg: Registry, *,
               max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
               decoder: Runner | None = None, tls: ServerTLS | None = None,
               keys: KeyService | None = None) -> QuartTrio:
    """Central's HTTP app. ``decoder`` runs segment decoding off the event loop (two worker
    threads by default). With ``tls`` asking for client certificates, a node's certificate
    must carry its node id (common name or a DNS/URI name): its key alone is not enough."""
    store = pipeline.state
    if keys is None:  # failures are kept in memory (bounded); run_central writes them out
        keys = KeyService(store, KeyPolicy(), Audit(store), pipeline.clock)
    key_service = keys
    app = QuartTrio("fleet_central")
    app.config["MAX_CONTENT_LENGTH"] = max_batch_bytes
    app.config["BODY_TIMEOUT"] = 120
    m_batches = reg.counter("batches_total", "Batches received, by outcome.", ("outcome",))
    m_rows = reg.counter("rows_applied_total", "Rows applied to the store.", ("kind",))
    m_bytes = reg.counter("received_bytes_total", "Batch bytes received.")
    reg.gauge("build_info", "Version of this central service.", ("version",),
              callback=lambda: {(__version__,): 1.0})
    path = getattr(store, "path", None)
    if path is not None:  # the embedded store: its growth (PostgreSQL has its own exporters)
        reg.gauge("store_bytes", "Size of the embedded SQLite store (database + WAL).",
                  callback=lambda: float(sum(p.stat().st_size for p in (
                      path, path.with_name(path.name + "-wal")) if p.exists())))
    reg.gauge("node_key_expiry_timestamp_seconds", "When the key each node last "
              "authenticated with expires (nodes seen since the start; no sample: never).",
              ("node",), callback=lambda: {(n,): e / 1000 for n, (_, e) in
                                           key_service.seen.items() if e is not None})
    reg.gauge("node_key_age_seconds", "Age of the key each node last authenticated with.",
              ("node",), callback=lambda: {(n,): max(0.0, pipeline.clock() - c / 1000)
                                           for n, (c, _) in key_service.seen.items()})
    reg.gauge("auth_failures", "Refused node keys since the start (each is in the audit "
              "log: fleet-central audit).",
              callback=lambda: float(key_service.audit.failures_total))
    app.extensions["registry"] = reg
    decode = decoder or ThreadRunner(2)  # segments decode off the event loop, two at a time

    @app.post("/api/v1/batches")
    async def batches() -> Response:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            m_batches.inc(1, "unauthorized")
            return _json(401, {"error": "missing 'Authorization: Bearer <node key>'"},
                         {"WWW-Authenticate": "Bearer"})
        source = _source(request.scope)
        try:
            decision = await key_service.authenticate(
                auth[7:].strip(), source, request.headers.get("X-Fleet-Node", "")[:128],
                request.headers.get("X-Fleet-Next-Key") or None)
        except SinkUnavailable as exc:
            return _json(503, {"error": str(exc)}, {"Retry-After": str(exc.retry_after_s)})
        node = decision.node
        if node is None:
            m_batches.inc(1, "unauthorized")
            return _json(401, {"error": decision.message, "reason": decision.refusal},
                         {"WWW-Authenticate": "Bearer"})
        if tls is not None and tls.client_certs != "off":
            refused = _certificate_refusal(tls.peer(request.scope), node.node_id,
                                           tls.client_certs)
            if refused:
                m_batches.inc(1, "forbidden")
                log.warning("refused a batch for node %s from %s: %s", node.node_id,
                            source, refused)
                return _json(403, {"error": refused})
        body = await request.get_data(cache=False)
        assert isinstance(body, bytes)
        m_bytes.inc(len(body))
        try:
            batch = decode_batch(body)
            if batch.node_id != node.node_id:
                m_batches.inc(1, "forbidden")
                return _json(403, {"error": f"this key belongs to node {node.node_id!r}, the "
                                            f"batch says {batch.node_id!r}"})
            cols = await decode(decode_segment, batch.segment)
            if cols.kind != batch.kind or len(cols) != batch.rows:
                raise WireError(f"envelope says {batch.rows} {batch.kind} rows, segment holds "
                                f"{len(cols)} {cols.kind} rows")
        except WireError as exc:
            m_batches.inc(1, "malformed")
            log.warning("node %s sent a malformed batch: %s", node.node_id, exc)
            return _json(400, {"error": str(exc)})
        try:
            # shielded: the edge dropping the connection must not cancel an apply half way
            # (its retry would race what is left of it); the pipeline bounds it itself
            with trio.CancelScope(shield=True):
                applied = await pipeline.apply(node, batch, cols)
        except MissingSeries as exc:
            m_batches.inc(1, "missing_series")
            return _json(409, {"error": str(exc), "missing_series": exc.missing[:100_000]})
        except SinkUnavailable as exc:
            m_batches.inc(1, "unavailable")
            log.warning("store unavailable: %s", exc)
            return _json(503, {"error": str(exc)}, {"Retry-After": str(exc.retry_after_s)})
        except SinkRejected as exc:
            m_batches.inc(1, "rejected")
            log.error("batch %s/%s of node %s refused: %s", batch.epoch, batch.seq,
                      node.node_id, exc)
            return _json(422, {"error": str(exc), "sink": exc.sink})
        if applied:
            m_batches.inc(1, "applied")
            m_rows.inc(len(cols), batch.kind)
        else:
            m_batches.inc(1, "duplicate")
        answer: dict[str, Any] = {"status": "applied" if applied else "duplicate",
                                  "seq": batch.seq, "key": {
                                      "created_ms": decision.created_ms,
                                      "expires_ms": decision.expires_ms}}
        try:
            with trio.CancelScope(shield=True):  # stored before it is handed out
                offered = await key_service.offer(decision, source)
        except SinkUnavailable as exc:  # the batch is applied: offer it next time
            log.warning("could not offer node %s its next key: %s", node.node_id, exc)
            offered = None
        if offered is not None:
            answer["next_key"] = offered
        return _json(200, answer)

    @app.errorhandler(413)
    async def too_large(_: Exception) -> Response:
        m_batches.inc(1, "too_large")
        return _json(413, {"error": f"batch is larger than {max_batch_bytes} bytes"})

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json(200, {"status": "ok", "version": __version__})

    @app.get("/readyz")
    async def readyz() -> Response:
        backends = await pipeline.ready()
        ok = all(backends.values())
        return _json(200 if ok else 503, {"status": "ready" if ok else "unavailable",
                                          "backends": backends})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(reg.render(), content_type=CONTENT_TYPE)

    return app
