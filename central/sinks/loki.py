"""Logs to Grafana Loki through its push API (``POST /loki/api/v1/push``, JSON).

Tenancy: ``X-Scope-OrgID`` is the authenticated node's organisation, so one organisation's logs
never land in another's tenant. Stream labels are few and low-cardinality (``STREAM_LABELS``);
every other label goes into structured metadata (Loki >= 3.0; the third element of a value) or,
with ``FLEET_CENTRAL_LOKI_METADATA=false`` for older Loki, is appended to the line as logfmt.

Idempotence: Loki drops an entry identical to one it has (same stream, timestamp and line), so a
retried push changes nothing; central's per-sink marks skip the push entirely on most retries.

What Loki would refuse is not sent: lines older than ``max_age_s`` (its
``reject_old_samples_max_age``, a week by default) or stamped more than ``max_ahead_s`` ahead
(its ``creation_grace_period``, 10 minutes) are counted (``fleet_central_refused_rows_total``,
reasons ``too_old`` / ``too_new``) and the rest of the batch goes on. When Loki itself refuses
some entries (its limits differ from these settings, or a line breaks another of its rules) it
stores the others and answers 400 listing the refused ones: that is a partial success, counted
as ``invalid``, not a batch to dead-letter. A 400 that refuses the whole request is a
:class:`~central.errors.SinkRejected` (422 to the edge).

Tested against a real Grafana Loki 3.4.6 (tests/integration/test_loki.py) and against the push
API contract (tests/unit/test_loki_push.py).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import msgspec

from ..errors import SinkRejected
from ..model import Job
from .http import is_up, new_client, origin, request

log = logging.getLogger("fleet_central.loki")

STREAM_LABELS = ("org", "node", "site", "device", "level", "app")
_encoder = msgspec.json.Encoder()
_LOGFMT_PLAIN = re.compile(r"^[^\s\"=]+$")


def _logfmt(pairs: dict[str, str]) -> str:
    def val(v: str) -> str:
        return v if _LOGFMT_PLAIN.match(v) else msgspec.json.encode(v).decode()

    return " ".join(f"{k}={val(v)}" for k, v in sorted(pairs.items()))


@dataclass
class Push:
    body: bytes
    lines: int  # entries in the body
    expired: int = 0  # older than the retention
    too_old: int = 0  # older than Loki accepts
    too_new: int = 0  # further ahead than Loki accepts


def encode_push(job: Job, cutoff_ms: int, metadata: bool, oldest_ms: int = 0,
                newest_ms: int | None = None) -> Push:
    """The push body for ``job``; lines before ``cutoff_ms`` (retention), before ``oldest_ms``
    or after ``newest_ms`` (what Loki accepts) are left out and counted.

    One stream per distinct stream-label set; entries in time order within each stream.
    """
    assert job.lines is not None
    streams: dict[tuple[tuple[str, str], ...], list[list[Any]]] = {}
    kept = expired = too_old = too_new = 0
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
            if ts[i] < oldest_ms:
                too_old += 1
                continue
            if newest_ms is not None and ts[i] > newest_ms:
                too_new += 1
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
    return Push(_encoder.encode(doc), kept, expired, too_old, too_new)


_COUNTED = re.compile(r"(\d+) errors? like")


def refused_entries(text: str) -> int:
    """How many entries a Loki 400 says it refused (``N errors like: ...`` per kind, or one
    ``entry for stream ...`` each); 0 when it refused the request as a whole."""
    counted = sum(int(n) for n in _COUNTED.findall(text))
    return counted or text.count("entry for stream")


class LokiSink:
    name = "loki"
    kinds = frozenset({"logs"})
    stores_rows = True

    def __init__(self, url: str, *, retention_days: int = 0, metadata: bool = True,
                 timeout_s: float = 15.0, retry_after_s: int = 5, max_age_s: int = 604800,
                 max_ahead_s: int = 600) -> None:
        base = url.rstrip("/")
        self.url = base if base.endswith("/loki/api/v1/push") else base + "/loki/api/v1/push"
        self.root = origin(url)
        self.retention_days = retention_days
        self.metadata = metadata
        self.max_age_ms = max_age_s * 1000
        self.max_ahead_ms = max_ahead_s * 1000
        self.retry_after_s = retry_after_s
        self.client = new_client(timeout_s)

    async def open(self) -> None:
        pass  # Loki needs no schema; readiness is checked per request and by /readyz

    async def close(self) -> None:
        await self.client.aclose()

    async def ready(self) -> bool:
        return await is_up(self.client, self.root + "/ready")

    async def write(self, job: Job) -> None:
        push = encode_push(
            job, job.cutoff(self.retention_days), self.metadata,
            oldest_ms=job.now_ms - self.max_age_ms if self.max_age_ms else 0,
            newest_ms=job.now_ms + self.max_ahead_ms if self.max_ahead_ms else None)
        if push.expired:
            job.expired[self.name] = push.expired
        for reason, n in (("too_old", push.too_old), ("too_new", push.too_new)):
            if n:
                job.refused[(self.name, reason)] = n
        if push.too_old or push.too_new:
            log.warning("node %s: %d log lines older than Loki accepts and %d too far ahead "
                        "not sent to Loki", job.node.node_id, push.too_old, push.too_new)
        if not push.lines:
            return
        resp = await request(self.client, self.name, "POST", self.url, content=push.body,
                             headers={"Content-Type": "application/json",
                                      "X-Scope-OrgID": job.node.org},
                             retry_after_s=self.retry_after_s, ok=(200, 204, 400))
        if resp.status_code == 400:
            text = resp.text.strip().replace("\n", " ")
            refused = refused_entries(text)
            if not refused:  # the request as a whole: the data itself is wrong
                raise SinkRejected(self.name, f"HTTP 400 from {self.url}: {text[:500]}")
            # Loki stored the other entries: a partial success, not a dead letter
            job.refused[(self.name, "invalid")] = refused
            log.warning("node %s: Loki refused %d of %d log lines (the rest are stored): %s",
                        job.node.node_id, refused, push.lines, text[:300])
