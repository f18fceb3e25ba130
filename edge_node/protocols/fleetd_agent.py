"""The fleetd agent's own calls (sans-IO), so an unmodified ``fleetd agent --server-url
http://<edge>:PORT`` reports to the edge node.

``POST /fleetd.v1.DeviceService/Register`` is a Connect unary call, ``application/proto`` or
``application/json`` (protojson field names). Field numbers from fleetd's
``proto/fleetd/v1/device.proto``::

    RegisterRequest  { string name = 1; string type = 2; string version = 3;
                       map<string, string> capabilities = 4; SystemInfo system_info = 5; }
    RegisterResponse { string device_id = 1; string api_key = 2; }

``POST /api/v1/telemetry`` takes JSON ``{"device_id", "timestamp" (RFC 3339), "metric_name",
"value", "metadata"}`` with ``Authorization: Bearer <api_key>``; the metadata's scalar values
become labels. Errors follow Connect's JSON error shape ``{"code", "message"}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..config import IngestConfig
from ..errors import BadRequest, UnsupportedMedia
from ..model import IngestBatch
from .common import SeriesBuilder, sanitize_label, sanitize_name
from .protobuf import Malformed, fields, string, string_pair

PROTO_TYPES = ("application/proto", "application/x-protobuf", "application/protobuf")
JSON_TYPES = ("application/json",)
CONNECT_CODES = {400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied",
                 413: "resource_exhausted", 415: "invalid_argument", 503: "unavailable"}


@dataclass
class RegisterRequest:
    name: str = ""
    type: str = ""
    version: str = ""
    capabilities: dict[str, str] = field(default_factory=dict)


def _media(content_type: str | None) -> str:
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if ctype in PROTO_TYPES:
        return "proto"
    if ctype in JSON_TYPES:
        return "json"
    raise UnsupportedMedia(f"Content-Type {content_type!r} is not supported (use "
                           "application/proto or application/json)", field="Content-Type")


def parse_register(body: bytes, content_type: str | None) -> tuple[RegisterRequest, str]:
    """The request and its media ("proto" or "json", the response uses the same)."""
    media = _media(content_type)
    req = RegisterRequest()
    if media == "proto":
        try:
            for num, wt, val in fields(body, 0, len(body)):
                if wt != 2:
                    continue
                if num == 1:
                    req.name = string(body, val)
                elif num == 2:
                    req.type = string(body, val)
                elif num == 3:
                    req.version = string(body, val)
                elif num == 4:
                    k, v = string_pair(body, val)
                    req.capabilities[k] = v
        except Malformed as exc:
            raise BadRequest(f"malformed RegisterRequest: {exc}", field="body") from None
    else:
        try:
            doc: Any = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"body is not valid JSON: {exc}", field="body") from None
        if not isinstance(doc, dict):
            raise BadRequest("must be a JSON object", field="body")
        for name in ("name", "type", "version"):
            v = doc.get(name, "")
            if not isinstance(v, str):
                raise BadRequest("must be a string", field=name)
            setattr(req, name, v)
        caps = doc.get("capabilities", {})
        if not isinstance(caps, dict) or not all(isinstance(v, str) for v in caps.values()):
            raise BadRequest("must be an object of strings", field="capabilities")
        req.capabilities = dict(caps)
    if not req.name:
        raise BadRequest("is required", field="name")
    return req, media


def _pb_string(num: int, text: str) -> bytes:
    raw = text.encode()
    out = bytearray([num << 3 | 2])
    n = len(raw)
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + raw


def encode_register_response(device_id: str, api_key: str, media: str) -> tuple[bytes, bytes]:
    """(body, content type) of a RegisterResponse in the request's media."""
    if media == "proto":
        return _pb_string(1, device_id) + _pb_string(2, api_key), b"application/proto"
    return json.dumps({"deviceId": device_id, "apiKey": api_key}).encode(), b"application/json"


def connect_error(status: int, message: str) -> bytes:
    return json.dumps({"code": CONNECT_CODES.get(status, "unknown"), "message": message}).encode()


def parse_telemetry(body: bytes, cfg: IngestConfig, now_ms: int) -> tuple[str, IngestBatch]:
    """(device id the request claims, its sample)."""
    try:
        doc: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", field="body") from None
    items = doc if isinstance(doc, list) else [doc]
    builder = SeriesBuilder(cfg)
    out = IngestBatch()
    device = ""
    for i, item in enumerate(items):
        p = f"[{i}]." if isinstance(doc, list) else ""
        if not isinstance(item, dict):
            raise BadRequest("must be an object", field=p.rstrip(".") or "body")
        dev = item.get("device_id")
        if not isinstance(dev, str) or not dev:
            raise BadRequest("is required: a string", field=p + "device_id")
        if device and dev != device:
            raise BadRequest("all items must be of one device", field=p + "device_id")
        device = dev
        name = item.get("metric_name")
        if not isinstance(name, str) or not name:
            raise BadRequest("is required: a string", field=p + "metric_name")
        value = item.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadRequest("must be a number", field=p + "value")
        ts = now_ms
        stamp = item.get("timestamp")
        if stamp is not None:
            if not isinstance(stamp, str):
                raise BadRequest("must be an RFC 3339 string", field=p + "timestamp")
            try:
                ts = int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
                         * 1000)
            except ValueError:
                raise BadRequest(f"{stamp!r} is not RFC 3339", field=p + "timestamp") from None
        meta = item.get("metadata") or {}
        if not isinstance(meta, dict):
            raise BadRequest("must be an object", field=p + "metadata")
        labels = [("device", dev)]
        for k, v in meta.items():
            if isinstance(v, (dict, list)) or v is None:
                continue  # only scalar metadata can be a label
            labels.append((sanitize_label(str(k)), str(v).lower() if isinstance(v, bool)
                           else str(v)))
        key = builder.key(sanitize_name(name), tuple(sorted(labels)), p + "metric_name")
        builder.add(out, key, ts, float(value))
    if not items:
        raise BadRequest("no telemetry items", field="body")
    return device, out
