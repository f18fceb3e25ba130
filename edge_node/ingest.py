"""The ingest routes devices post to: one request in, one durable commit (or a 4xx) out.

They are served by a lean ASGI handler (the hot path: per-request cost in the full Quart
request/response machinery was about a third of the CPU for small requests): the native
``POST /api/v1/ingest``, Prometheus text ``POST /api/v1/import/prometheus``, Prometheus remote
write ``POST /api/v1/write`` (protobuf + snappy), Loki push ``POST /loki/api/v1/push`` (JSON,
or protobuf + snappy), the Influx line protocol ``POST /write`` (v1) and ``POST /api/v2/write``
(v2), and the fleetd agent's calls. A request is read within the body limits, decompressed,
parsed by its protocol (:mod:`edge_node.protocols`), admitted by the per-device series limit,
and written to the buffer; the device gets its 204 once the group commit is durable. Every
other route is :mod:`edge_node.api`.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from .auth import Grant, apply_grant, authorize, load_tokens
from .buffer import Writer
from .clock_skew import ClockSkewTracker
from .config import EdgeConfig
from .devices import DeviceRegistry
from .errors import BufferFailure, DiskFull, Forbidden, IngestError, PayloadTooLarge, Unauthorized
from .limits import SeriesLimiter
from .metrics import Registry
from .model import IngestBatch
from .protocols import fleetd_agent, influx, loki_push, prometheus_text, remote_write
from .protocols.decode import decompress, snappy_block
from .protocols.native import NativeParser
from .runtime import Clock, clock_ms
from .tls import ServerTLS

log = logging.getLogger("fleet_edge.ingest")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON_HEADERS = [(b"content-type", b"application/json")]


class _ClientGone(Exception):
    pass


@dataclass
class Reply:
    """What a route answers when it is not a bare 204 (the fleetd agent's calls)."""

    status: int
    body: bytes
    content_type: bytes
    batch: IngestBatch | None = None


Route = Callable[[bytes, str | None, Scope, int], "IngestBatch | Awaitable[Reply]"]
CONNECT_PATHS = frozenset({"/fleetd.v1.DeviceService/Register"})


def _query(scope: Scope) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1")))


class IngestHandler:
    """Reads, validates and durably commits one ingest request (raw ASGI)."""

    def __init__(self, cfg: EdgeConfig, buffer: Writer, registry: Registry,
                 devices: DeviceRegistry | None = None, *, clock: Clock = time.time,
                 tls: ServerTLS | None = None) -> None:
        self.buffer = buffer
        self.clock = clock
        self.tls = tls  # a verified client certificate names the device, as a token would
        self.devices = devices or DeviceRegistry(cfg.data_dir)
        self.limiter = SeriesLimiter(cfg.ingest.max_series_per_device, cfg.ingest.series_ttl_s)
        self.clocks = ClockSkewTracker(cfg.clock)
        self.apply(cfg)
        # path -> (protocol name, parser of a decompressed body)
        self.routes: dict[str, tuple[str, Route]] = {
            "/api/v1/ingest": ("native", lambda raw, ctype, _, now:
                               self.parser.parse_body(raw, ctype, now)),
            "/api/v1/import/prometheus": ("prometheus_text", lambda raw, _, __, now:
                                          self.text_parser.parse(raw, now)),
            "/api/v1/write": ("remote_write", self._remote_write),
            "/loki/api/v1/push": ("loki", self._loki),
            "/write": ("influx_v1", partial(self._influx, 1)),
            "/api/v2/write": ("influx_v2", partial(self._influx, 2)),
            "/fleetd.v1.DeviceService/Register": ("fleetd_agent", self._register),
            "/api/v1/telemetry": ("fleetd_agent", self._telemetry),
        }
        clocks = self.clocks
        registry.gauge("device_clock_offset_seconds", "How far a device's clock is off (its "
                       "newest timestamp minus the receive time; positive: ahead), for devices "
                       "whose timestamps were out of range lately.", ("device",),
                       callback=lambda: {(d,): o for d, o in
                                         clocks.offsets(clock_ms(self.clock)).items()})
        registry.gauge("clock_skewed_rows", "Rows of devices with a wrong clock since the "
                       "start, by what was done: accept, correct (shifted), reject (422).",
                       ("policy",), callback=lambda: {(p,): float(n)
                                                      for p, n in clocks.rows.items()})
        self.m_protocol = registry.counter(
            "protocol_rows_total", "Samples and log lines accepted, by ingest protocol.",
            ("protocol",))
        self.m_histograms = registry.counter(
            "remote_write_histograms_skipped_total",
            "Native histograms in remote-write requests, skipped (no sample model yet).")
        self.m_strings = registry.counter(
            "influx_string_fields_total", "Influx string fields skipped (not samples).")
        self.m_requests = registry.counter("ingest_requests_total",
                                           "Ingest requests by outcome.", ("status",))
        self.m_ingested = registry.counter("ingested_total", "Rows accepted from devices.",
                                           ("kind",))
        self.m_rejected = registry.counter("rejected_total", "Requests refused, by reason.",
                                           ("reason",))

    def apply(self, cfg: EdgeConfig) -> None:
        """Use ``cfg``'s ``[ingest]`` limits and device tokens from the next request on (also
        on a reload: the series limiter keeps what it counted)."""
        self.cfg = cfg
        self.parser = NativeParser(cfg.ingest)
        self.text_parser = prometheus_text.TextParser(cfg.ingest)
        self.rw_parser = remote_write.RemoteWriteParser(cfg.ingest)
        self.influx_parser = influx.InfluxParser(cfg.ingest)
        self.limiter.max_series = cfg.ingest.max_series_per_device
        self.limiter.ttl_s = cfg.ingest.series_ttl_s
        self.tokens = load_tokens(cfg.ingest.tokens_file) if cfg.ingest.tokens_file else None
        self.clocks.apply(cfg.clock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            status, body, extra = await self._handle(scope, receive)
        except _ClientGone:
            return  # the device hung up before sending its whole body: nothing was stored
        if any(k == b"content-type" for k, _ in extra):
            headers = list(extra)
        else:
            headers = [*(_JSON_HEADERS if body else []), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _read(self, receive: Receive, limit: int, declared: int | None) -> bytes:
        if declared is not None and declared > limit:
            raise PayloadTooLarge(f"body is larger than {limit} bytes", field="body")
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise _ClientGone
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body is larger than {limit} bytes", field="body")
            chunks.append(chunk)
            if not msg.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _remote_write(self, raw: bytes, _: str | None, __: Scope, now: int) -> IngestBatch:
        batch, histograms = self.rw_parser.parse(raw, now)
        self.m_histograms.inc(histograms)
        return batch

    def _loki(self, raw: bytes, ctype: str | None, scope: Scope, now: int) -> IngestBatch:
        proto = (ctype or "").split(";", 1)[0].strip().lower() in loki_push.PROTO_TYPES
        if proto and not any(k == b"content-encoding" for k, _ in scope["headers"]):
            # Loki's protobuf pushes are snappy-compressed without saying so in a header
            raw = snappy_block(raw, self.cfg.ingest.max_decompressed_bytes)
        return loki_push.parse(raw, ctype, self.cfg.ingest, now)

    async def _register(self, raw: bytes, ctype: str | None, _: Scope, now: int) -> Reply:
        req, media = fleetd_agent.parse_register(raw, ctype)
        reg = await self.devices.register(req.name, req.type, req.version, req.capabilities)
        log.info("fleetd agent %r (%s %s) registered as device %s", req.name, req.type,
                 req.version, reg.device_id)
        # a heartbeat carrying the device's description puts it in central's registry at once
        labels = {"device": reg.device_id, "device_name": req.name, "device_type": req.type,
                  "agent_version": req.version}
        batch = IngestBatch(hb_keys=[tuple(sorted((k, v) for k, v in labels.items() if v))],
                            hb_ts=[now])
        body, content_type = fleetd_agent.encode_register_response(reg.device_id, reg.api_key,
                                                                   media)
        return Reply(200, body, content_type, batch)

    async def _telemetry(self, raw: bytes, _: str | None, scope: Scope, now: int) -> Reply:
        auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            raise Unauthorized("missing 'Authorization: Bearer <api_key>'",
                               field="Authorization")
        owner = await self.devices.device_for_key(auth[7:].strip())
        if owner is None:
            raise Unauthorized("unknown API key", field="Authorization")
        device, batch = fleetd_agent.parse_telemetry(raw, self.cfg.ingest, now)
        if device != owner:
            raise Forbidden(f"this key belongs to device {owner!r}", field="device_id")
        return Reply(200, b'{"status": "ok"}', b"application/json", batch)

    def _influx(self, version: int, raw: bytes, _: str | None, scope: Scope, now: int
                ) -> IngestBatch:
        precision = _query(scope).get("precision", "ns")
        batch, strings = self.influx_parser.parse(raw, now, precision, version)
        self.m_strings.inc(strings)
        return batch

    async def _handle(self, scope: Scope, receive: Receive
                      ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        now = clock_ms(self.clock)  # receive time: the stamp of rows that carry none
        ctype = cenc = None
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                ctype = value.decode("latin-1")
            elif name == b"content-encoding":
                cenc = value.decode("latin-1")
            elif name == b"content-length" and value.isdigit():
                declared = int(value)
        lim = self.cfg.ingest
        try:
            grant = None
            peer = self.tls.peer(scope) if self.tls is not None else None
            if peer is not None:
                grant = Grant(device=peer.identity, source="certificate")
            elif self.tokens is not None and scope["path"] != "/api/v1/telemetry":
                grant = authorize(self.tokens, dict(scope["headers"]),
                                  scope.get("query_string", b""))
            body = await self._read(receive, lim.max_body_bytes, declared)
            raw = decompress(body, cenc, lim.max_decompressed_bytes)
            protocol, parse = self.routes[scope["path"]]
            parsed = parse(raw, ctype, scope, now)
            result = await parsed if inspect.isawaitable(parsed) else parsed
            admitted = result if isinstance(result, IngestBatch) else result.batch
            if admitted and grant is not None:
                apply_grant(admitted, grant)
            if admitted:
                self.clocks.check(admitted, protocol, now)  # may shift, or refuse (422)
                self.limiter.admit(admitted, now / 1000)
        except IngestError as exc:
            self.m_requests.inc(1, str(exc.status))
            self.m_rejected.inc(1, type(exc).__name__)
            if scope["path"] in CONNECT_PATHS:
                return exc.status, fleetd_agent.connect_error(exc.status, str(exc)), []
            return exc.status, json.dumps(exc.to_json()).encode() + b"\n", []
        reply = result if isinstance(result, Reply) else None
        batch = result if isinstance(result, IngestBatch) else (reply.batch if reply else None)
        done: tuple[int, bytes, list[tuple[bytes, bytes]]] = (
            (reply.status, reply.body, [(b"content-type", reply.content_type)]) if reply
            else (204, b"", []))
        if not batch:  # e.g. Influx lines with only string fields: valid, nothing to store
            self.m_requests.inc(1, str(done[0]))
            return done
        try:
            await self.buffer.write(batch)
        except BufferFailure as exc:
            self.m_requests.inc(1, "503")
            self.m_rejected.inc(1, type(exc).__name__)
            retry = DiskFull.retry_after_s if isinstance(exc, DiskFull) else 5
            return 503, json.dumps({"error": str(exc)}).encode() + b"\n", [
                (b"retry-after", str(retry).encode())]
        self.m_protocol.inc(batch.n_samples + batch.n_logs, protocol)
        self.m_ingested.inc(batch.n_samples, "metrics")
        self.m_ingested.inc(batch.n_logs, "logs")
        self.m_ingested.inc(batch.n_heartbeats, "heartbeats")
        self.m_requests.inc(1, str(done[0]))
        return done
