"""Raw metrics to VictoriaMetrics through its import APIs.

``/api/v1/import`` takes one series per line with arrays of values and timestamps, which is the
shape a columnar batch already has: one line per series, no per-sample text. A live batch holds
one sample per series; it goes to ``/api/v1/import/prometheus`` as text lines instead, which
central builds with two pieces per series instead of five (see :func:`encode_text`). Works with a
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
import re
from collections.abc import AsyncIterator

import msgspec
import numpy as np
import numpy.typing as npt

from ..model import Job
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
_MID = b'],"timestamps":['
_END = b"]}\n"


def series_prefix(labels: dict[str, str]) -> bytes:
    """The start of a series' import line, up to its values."""
    return b'{"metric":' + _encoder.encode(labels) + b',"values":['


def _pieces(numbers: list[int] | list[float], starts: npt.NDArray[np.int64],
            ends: npt.NDArray[np.int64], single: bool) -> list[bytes]:
    """JSON text of ``numbers[b:e]`` per series (without brackets), encoded in one C call."""
    text = _encoder.encode(numbers)[1:-1]
    if single:  # one point per series (live batches): the split pieces are the answer
        return text.split(b",")
    # element k ends where comma k is; a series' text runs from after the comma that precedes
    # its first element to the comma that follows its last (numbers never contain commas)
    commas = np.append(np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == 44), len(text))
    lo = np.where(starts > 0, commas[starts - 1] + 1, 0).tolist()
    hi = commas[ends - 1].tolist()
    return [text[a:b] for a, b in zip(lo, hi, strict=True)]


def sendable(job: Job, cutoff_ms: int) -> tuple[npt.NDArray[np.bool_], int, int]:
    """Which samples go to VictoriaMetrics: (mask, older than the retention, NaN/±Inf)."""
    assert job.values is not None
    finite = np.isfinite(job.values)
    recent = job.ts >= cutoff_ms
    return finite & recent, int((~recent).sum()), int((~finite & recent).sum())


# Series per body chunk: joining ~1 MB at a time stays in the CPU cache; one 10+ MB join of
# half a million pieces costs four times as much.
CHUNK_SERIES = 2000


def encode_import(job: Job, cutoff_ms: int, prefixes: dict[int, bytes] | None = None
                  ) -> tuple[list[bytes], int, int, int]:
    """JSON lines for ``job``; returns (body chunks, samples, expired, non-finite).

    Encodes all values and all timestamps with one C call each and cuts the text per series,
    so the cost per sample is a few tens of nanoseconds; ``prefixes`` caches each series'
    ``{"metric":{...},"values":[`` across batches.
    """
    assert job.values is not None
    keep, expired, nonfinite = sendable(job, cutoff_ms)
    sids, starts_a = job.grouping.sids, job.grouping.starts
    ts, vals = job.ts, job.values
    if not bool(keep.all()):
        counts = np.add.reduceat(keep.astype(np.int64), starts_a) if len(sids) else starts_a
        ts, vals = ts[keep], vals[keep]
        sids = sids[counts > 0]
        counts = counts[counts > 0]
        starts_a = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    n = int(sids.shape[0])
    if n == 0:
        return [], 0, expired, nonfinite
    ends_a = np.append(starts_a[1:], ts.shape[0])
    single = int(ts.shape[0]) == n
    cache = prefixes if prefixes is not None else {}
    sid_list = sids.tolist()
    for sid in set(sid_list).difference(cache):
        cache[sid] = series_prefix(job.labels[sid])
    heads = [cache[s] for s in sid_list]
    parts: list[bytes | None] = [None] * (5 * n)
    parts[0::5] = heads
    parts[1::5] = _pieces(vals.tolist(), starts_a, ends_a, single)
    parts[2::5] = [_MID] * n
    parts[3::5] = _pieces(ts.tolist(), starts_a, ends_a, single)
    parts[4::5] = [_END] * n
    step = 5 * CHUNK_SERIES
    chunks = [b"".join(parts[i:i + step]) for i in range(0, len(parts), step)]  # type: ignore
    return chunks, int(ts.shape[0]), expired, nonfinite


_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def text_head(labels: dict[str, str]) -> bytes | None:
    """A newline, ``name{k="v",...}`` and a space: the head of a Prometheus text line; ``None``
    when a name is not valid there (the batch then goes as JSON lines, which take any label)."""
    name = labels.get("__name__", "")
    if not _METRIC_NAME.match(name):
        return None
    pairs = []
    for k, v in labels.items():
        if k == "__name__":
            continue
        if not _LABEL_NAME.match(k):
            return None
        esc = v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        pairs.append(f'{k}="{esc}"')
    return f"\n{name}{{{','.join(pairs)}}} ".encode()


def encode_text(job: Job, cutoff_ms: int, heads: dict[int, bytes | None] | None = None
                ) -> tuple[list[bytes], int, int, int] | None:
    """Prometheus text lines (``name{labels} value ts``) for a batch holding at most one sample
    per series, the shape of live batches; ``None`` when it does not fit (then use
    :func:`encode_import`). Two pieces per series instead of five: values and timestamps are
    encoded interleaved in one C call and turned into ``"v ts"`` tails by rewriting the
    separators in place."""
    assert job.values is not None
    g = job.grouping
    if job.rows != int(g.sids.shape[0]):
        return None  # some series has several samples: JSON lines carry them more compactly
    cache = heads if heads is not None else {}
    sid_list = g.sids.tolist()
    if not all(map(cache.__contains__, sid_list)):
        for sid in set(sid_list).difference(cache):
            cache[sid] = text_head(job.labels[sid])
    head_list = list(map(cache.__getitem__, sid_list))
    if None in head_list:
        return None
    keep, expired, nonfinite = sendable(job, cutoff_ms)
    vals, ts = job.values, job.ts
    if not bool(keep.all()):
        vals, ts = vals[keep], ts[keep]
        head_list = [h for h, k in zip(head_list, keep.tolist(), strict=True) if k]
    n = len(head_list)
    if n == 0:
        return [], 0, expired, nonfinite
    mixed: list[float | int] = [0] * (2 * n)
    mixed[0::2] = vals.tolist()
    mixed[1::2] = ts.tolist()
    arr = np.frombuffer(_encoder.encode(mixed), dtype=np.uint8)[1:-1].copy()
    commas = np.flatnonzero(arr == 44)
    arr[commas[0::2]] = 32  # value<space>timestamp
    arr[commas[1::2]] = 10  # one sample per line
    tails = arr.tobytes().split(b"\n")
    parts: list[bytes] = [b""] * (2 * n)
    parts[0::2] = head_list  # type: ignore[assignment]
    parts[1::2] = tails
    step = 2 * CHUNK_SERIES
    chunks = [b"".join(parts[i:i + step]) for i in range(0, len(parts), step)]
    chunks[-1] += b"\n"
    return chunks, n, expired, nonfinite


class VictoriaMetricsSink:
    name = "victoria-metrics"
    kinds = frozenset({"metrics", "rollups"})  # edge rollups are series like any other
    stores_rows = True

    def __init__(self, url: str, *, retention_days: int = 0, timeout_s: float = 15.0,
                 retry_after_s: int = 5) -> None:
        self.url = import_url(url)
        self.text_url = self.url + "/prometheus"
        self.root = origin(url)
        self.retention_days = retention_days
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.client = new_client(timeout_s)
        # (node, org, site, epoch) -> sid -> line prefix (JSON) / head (text); reset past ~4M
        # series (memory bound)
        self._prefixes: dict[tuple[str, str, str, str], dict[int, bytes]] = {}
        self._heads: dict[tuple[str, str, str, str], dict[int, bytes | None]] = {}
        self._cached = 0

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
        key = (job.node.node_id, job.node.org, job.node.site, job.epoch)
        if self._cached > 4_000_000:
            self._prefixes.clear()
            self._heads.clear()
            self._cached = 0
        cutoff = job.cutoff(self.retention_days)
        heads = self._heads.setdefault(key, {})
        before = len(heads)
        text = encode_text(job, cutoff, heads)
        self._cached += len(heads) - before
        if text is not None:
            body, n, expired, nonfinite = text
            url, ctype = self.text_url, "text/plain"
        else:
            prefixes = self._prefixes.setdefault(key, {})
            before = len(prefixes)
            body, n, expired, nonfinite = encode_import(job, cutoff, prefixes)
            self._cached += len(prefixes) - before
            url, ctype = self.url, "application/json"
        if expired:
            job.expired[self.name] = expired
        if nonfinite:
            job.unrepresentable[self.name] = nonfinite
            log.warning("%d non-finite samples (NaN/±Inf) of node %s not sent to "
                        "VictoriaMetrics (its JSON import has no representation for them)",
                        nonfinite, job.node.node_id)
        if not n:
            return
        async def stream() -> AsyncIterator[bytes]:
            for chunk in body:
                yield chunk

        await request(self.client, self.name, "POST", url, content=stream(),
                      headers={"Content-Type": ctype,
                               "Content-Length": str(sum(map(len, body)))},
                      retry_after_s=self.retry_after_s)
