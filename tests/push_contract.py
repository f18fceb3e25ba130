"""A receiver that enforces Grafana Loki's published push-API contract (JSON), for tests.

Grafana Loki cannot be installed on the machines this project is tested on, so central's Loki
sink is tested against this receiver, which checks what Loki's HTTP API documentation
(``POST /loki/api/v1/push``) specifies and answers as Loki does:

- ``Content-Type: application/json``; body ``{"streams": [{"stream": {label: value},
  "values": [["<unix epoch ns as a string>", "<line>"(, {structured metadata})], ...]}]}``;
- label names match ``[a-zA-Z_][a-zA-Z0-9_]*``, a stream has at least one label, values are
  strings; structured metadata is an object of string values;
- multi-tenant mode: ``X-Scope-OrgID`` is required (401 "no org id" otherwise);
- success is ``204 No Content``; a malformed body is ``400`` with a reason;
- an entry identical to a stored one (same tenant, stream, timestamp and line) is accepted and
  dropped, as Loki's ingester does.

It is not Loki: no storage engine, no query language. ``entries`` holds what was accepted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

Entry = tuple[str, tuple[tuple[str, str], ...], int, str, tuple[tuple[str, str], ...]]


class ContractViolation(ValueError):
    pass


def check_push(body: bytes) -> list[tuple[dict[str, str], int, str, dict[str, str]]]:
    """Validate a JSON push body; returns (stream labels, ts ns, line, metadata) per entry."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise ContractViolation(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("streams"), list):
        raise ContractViolation("body must be an object with a 'streams' list")
    out = []
    for i, st in enumerate(doc["streams"]):
        labels = st.get("stream") if isinstance(st, dict) else None
        if not isinstance(labels, dict) or not labels:
            raise ContractViolation(f"streams[{i}].stream must be a non-empty label object")
        for k, v in labels.items():
            if not LABEL_NAME.match(k) or not isinstance(v, str):
                raise ContractViolation(f"streams[{i}].stream: invalid label {k!r}={v!r}")
        values = st.get("values")
        if not isinstance(values, list):
            raise ContractViolation(f"streams[{i}].values must be a list")
        for j, val in enumerate(values):
            where = f"streams[{i}].values[{j}]"
            if not isinstance(val, list) or len(val) not in (2, 3):
                raise ContractViolation(f"{where} must be [ts, line] or [ts, line, metadata]")
            ts, line = val[0], val[1]
            if not isinstance(ts, str) or not ts.isdigit():
                raise ContractViolation(f"{where}[0] must be a string of unix nanoseconds")
            if not isinstance(line, str):
                raise ContractViolation(f"{where}[1] must be a string")
            meta: dict[str, str] = {}
            if len(val) == 3:
                if not isinstance(val[2], dict) or not all(
                        isinstance(x, str) and LABEL_NAME.match(k) for k, x in val[2].items()):
                    raise ContractViolation(f"{where}[2] must be an object of string values")
                meta = val[2]
            out.append((labels, int(ts), line, meta))
    return out


@dataclass
class PushReceiver:
    """ASGI app implementing the contract; ``fail_next`` answers that many pushes with 503."""

    entries: list[Entry] = field(default_factory=list)
    pushes: int = 0
    fail_next: int = 0
    down: bool = False
    _seen: set[tuple[Any, ...]] = field(default_factory=set)

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        status, text = self.handle(scope, body)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": text.encode()})

    def handle(self, scope: dict[str, Any], body: bytes) -> tuple[int, str]:
        if scope["path"] == "/ready":
            return (503, "not ready") if self.down else (200, "ready")
        if scope["path"] != "/loki/api/v1/push" or scope["method"] != "POST":
            return 404, "404 page not found"
        if self.down:
            return 503, "service unavailable"
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        tenant = headers.get("x-scope-orgid", "")
        if not tenant:
            return 401, "no org id"
        if not headers.get("content-type", "").startswith("application/json"):
            return 415, "this receiver implements the JSON encoding only"
        try:
            got = check_push(body)
        except ContractViolation as exc:
            return 400, str(exc)
        self.pushes += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            return 503, "ingester unavailable"
        for labels, ts, line, meta in got:
            key = (tenant, tuple(sorted(labels.items())), ts, line)
            if key in self._seen:
                continue  # Loki drops an identical entry
            self._seen.add(key)
            self.entries.append((tenant, key[1], ts, line, tuple(sorted(meta.items()))))
        return 204, ""


async def start_receiver(nursery: trio.Nursery, receiver: PushReceiver) -> str:
    """Serve ``receiver`` on a free 127.0.0.1 port in ``nursery``; returns its base URL."""
    cfg = Config()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = None
    binds = await nursery.start(partial(serve, receiver, cfg))  # type: ignore[arg-type]
    return str(binds[0])
