"""Raw metrics to VictoriaMetrics through its JSON-lines import API.

``/api/v1/import`` takes one series per line with arrays of values and timestamps, which is the
shape a columnar batch already has: one line per series, no per-sample text. Works with a
single-node server (``VICTORIA_METRICS_URL=http://vm:8428``) and with a cluster's vminsert
(``http://vminsert:8480/insert/<accountID>/prometheus/``).

Idempotence: a retried batch writes the same (series, timestamp, value) triples again; a server
started with ``-dedup.minScrapeInterval=1ms`` keeps one sample per series and millisecond (the
README asks for it; central warns at start when a single-node server runs without it). Central's
per-sink marks already skip this sink on a retry after a partial failure; the server setting
covers a crash between the write and its mark.

VictoriaMetrics' JSON import answers 204 even for lines it cannot parse and drops them, and it
has no representation for ±Inf there: non-finite values are not sent, they are counted.
"""

from __future__ import annotations

import logging

import msgspec
import numpy as np

from ..router import Job
from .http import is_up, new_client, origin, request

log = logging.getLogger("fleet_central.victoriametrics")


def import_url(base: str) -> str:
    """The import endpoint for a single-node or cluster (``/insert/<id>/prometheus``) URL."""
    base = base.rstrip("/")
    if base.endswith("/api/v1/import"):
        return base
    if "/insert/" in base and not base.endswith("/prometheus"):
        base += "/prometheus"
    return base + "/api/v1/import"


_encoder = msgspec.json.Encoder()


def encode_import(job: Job, cutoff_ms: int) -> tuple[bytes, int, int, int]:
    """JSON lines for ``job``; returns (body, samples, expired, non-finite)."""
    assert job.values is not None
    finite = np.isfinite(job.values)
    recent = job.ts >= cutoff_ms
    keep = finite & recent
    all_kept = bool(keep.all())
    lines: list[bytes] = []
    ts, vals = job.ts, job.values
    for sid, b, e in job.series():
        if all_kept:
            t, v = ts[b:e], vals[b:e]
        else:
            k = keep[b:e]
            t, v = ts[b:e][k], vals[b:e][k]
            if t.shape[0] == 0:
                continue
        lines.append(_encoder.encode({"metric": job.labels[sid], "values": v.tolist(),
                                      "timestamps": t.tolist()}))
    body = b"\n".join(lines) + b"\n" if lines else b""
    expired = int((~recent).sum())
    nonfinite = int((~finite & recent).sum())
    return body, int(keep.sum()), expired, nonfinite


class VictoriaMetricsSink:
    name = "victoria-metrics"
    kinds = frozenset({"metrics"})
    stores_rows = True

    def __init__(self, url: str, *, retention_days: int = 0, timeout_s: float = 15.0,
                 retry_after_s: int = 5) -> None:
        self.url = import_url(url)
        self.root = origin(url)
        self.retention_days = retention_days
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.client = new_client(timeout_s)
        self.nonfinite = 0

    async def open(self) -> None:
        try:
            resp = await self.client.get(self.root + "/flags")
        except Exception as exc:
            log.warning("VictoriaMetrics at %s not reachable yet (%s); batches get 503 until "
                        "it is", self.root, exc)
            return
        flags = resp.text if resp.status_code == 200 else ""
        if "storageDataPath" in flags and not any(
                line.startswith("-dedup.minScrapeInterval") and '"0s"' not in line
                for line in flags.splitlines()):
            log.warning("VictoriaMetrics at %s runs without -dedup.minScrapeInterval: a batch "
                        "rewritten after a central crash can duplicate samples; start it with "
                        "-dedup.minScrapeInterval=1ms", self.root)

    async def close(self) -> None:
        await self.client.aclose()

    async def ready(self) -> bool:
        return await is_up(self.client, self.root + "/health")

    async def write(self, job: Job) -> None:
        body, n, expired, nonfinite = encode_import(job, job.cutoff(self.retention_days))
        if expired:
            job.expired[self.name] = expired
        if nonfinite:
            self.nonfinite += nonfinite
            log.warning("%d non-finite samples (NaN/±Inf) of node %s not sent to "
                        "VictoriaMetrics (its JSON import has no representation for them)",
                        nonfinite, job.node.node_id)
        if not n:
            return
        await request(self.client, self.name, "POST", self.url, content=body,
                      headers={"Content-Type": "application/json"},
                      retry_after_s=self.retry_after_s)
