"""Logs to Grafana Loki through its push API (``POST /loki/api/v1/push``, JSON).

Tenancy: ``X-Scope-OrgID`` is the authenticated node's organisation, so one organisation's logs
never land in another's tenant. Stream labels are few and low-cardinality (``STREAM_LABELS``);
every other label goes into structured metadata (Loki >= 3.0; the third element of a value) or,
with ``FLEET_CENTRAL_LOKI_METADATA=false`` for older Loki, is appended to the line as logfmt.

Idempotence: Loki drops an entry identical to one it has (same stream, timestamp and line), so a
retried push changes nothing; central's per-sink marks skip the push entirely on most retries.

Grafana Loki cannot be installed on the machines this project is tested on: the sink is tested
against the push API contract as Loki documents it (see tests/integration/test_loki_contract.py).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from ..model import Job
from .http import is_up, new_client, origin, request

STREAM_LABELS = ("org", "node", "site", "device", "level", "app")
_encoder = msgspec.json.Encoder()
_LOGFMT_PLAIN = re.compile(r"^[^\s\"=]+$")


def _logfmt(pairs: dict[str, str]) -> str:
    def val(v: str) -> str:
        return v if _LOGFMT_PLAIN.match(v) else msgspec.json.encode(v).decode()

    return " ".join(f"{k}={val(v)}" for k, v in sorted(pairs.items()))


def encode_push(job: Job, cutoff_ms: int, metadata: bool) -> tuple[bytes, int, int]:
    """The push body for ``job``: (body, lines, expired).

    One stream per distinct stream-label set; entries in time order within each stream.
    """
    assert job.lines is not None
    streams: dict[tuple[tuple[str, str], ...], list[list[Any]]] = {}
    kept = expired = 0
    ts = job.ts.tolist()
    for sid, b, e in job.series():
        labels = job.labels[sid]
        stream = {k: labels[k] for k in STREAM_LABELS if labels.get(k)}
        extra = {k: v for k, v in labels.items() if k not in stream and k != "__name__"}
        values = streams.setdefault(tuple(sorted(stream.items())), [])
        for i in range(b, e):
            if ts[i] < cutoff_ms:
                expired += 1
                continue
            line = job.lines[i].decode("utf-8", "replace")
            ns = str(ts[i] * 1_000_000)
            if not extra:
                values.append([ns, line])
            elif metadata:
                values.append([ns, line, extra])
            else:
                values.append([ns, f"{line} {_logfmt(extra)}"])
            kept += 1
    doc = {"streams": [{"stream": dict(k), "values": sorted(v, key=lambda x: int(x[0]))}
                       for k, v in streams.items() if v]}
    return _encoder.encode(doc), kept, expired


class LokiSink:
    name = "loki"
    kinds = frozenset({"logs"})
    stores_rows = True

    def __init__(self, url: str, *, retention_days: int = 0, metadata: bool = True,
                 timeout_s: float = 15.0, retry_after_s: int = 5) -> None:
        base = url.rstrip("/")
        self.url = base if base.endswith("/loki/api/v1/push") else base + "/loki/api/v1/push"
        self.root = origin(url)
        self.retention_days = retention_days
        self.metadata = metadata
        self.retry_after_s = retry_after_s
        self.client = new_client(timeout_s)

    async def open(self) -> None:
        pass  # Loki needs no schema; readiness is checked per request and by /readyz

    async def close(self) -> None:
        await self.client.aclose()

    async def ready(self) -> bool:
        return await is_up(self.client, self.root + "/ready")

    async def write(self, job: Job) -> None:
        body, n, expired = encode_push(job, job.cutoff(self.retention_days), self.metadata)
        if expired:
            job.expired[self.name] = expired
        if not n:
            return
        await request(self.client, self.name, "POST", self.url, content=body,
                      headers={"Content-Type": "application/json",
                               "X-Scope-OrgID": job.node.org},
                      retry_after_s=self.retry_after_s)
