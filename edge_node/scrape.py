"""Pulling metrics from devices that only expose a Prometheus ``/metrics`` endpoint.

Targets come from ``scrape.static_targets`` and from ``scrape.targets_file`` (Prometheus'
file_sd JSON), which is re-read whenever its modification time changes. Every ``interval_s``
each target is fetched (within ``timeout_s``) and its samples are written to the buffer like any
ingested data, with ``job`` and ``instance`` labels (a sample's own label of those names is kept
as ``exported_<name>``) and per target the series ``up`` (1/0), ``scrape_duration_seconds`` and
``scrape_samples_scraped``. A series that disappears from a target, or every series of a target
that is removed from the list, gets a Prometheus staleness marker (a special NaN) so queries stop
showing it at once instead of five minutes later.

The target-list handling (:func:`parse_targets`) is sans-IO; :class:`Scraper` is the Trio shell.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from .buffer import Writer
from .config import ScrapeConfig
from .errors import ConfigError, IngestError
from .metrics import Registry
from .model import IngestBatch, SeriesKey
from .protocols.common import SeriesBuilder
from .protocols.prometheus_text import parse as parse_text

log = logging.getLogger("fleet_edge.scrape")

#: Prometheus' staleness marker: a NaN with this exact bit pattern
STALE_NAN = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]


@dataclass(frozen=True)
class Target:
    url: str
    labels: tuple[tuple[str, str], ...]  # job, instance and the target's own labels

    @property
    def instance(self) -> str:
        return dict(self.labels)["instance"]


def _target(addr: str, job: str, labels: dict[str, str], where: str) -> Target:
    addr = addr.strip()
    if not addr:
        raise ConfigError(where, "empty target")
    if "://" in addr:
        url = addr
        rest = addr.split("://", 1)[1]
        instance = rest.split("/", 1)[0]
        if "/" not in rest:
            url += "/metrics"
    else:
        url, instance = f"http://{addr}/metrics", addr
    if not url.startswith(("http://", "https://")):
        raise ConfigError(where, f"target {addr!r} must be host:port or an http(s) URL")
    merged = {**labels, "job": labels.get("job", job), "instance": instance}
    return Target(url, tuple(sorted(merged.items())))


def parse_targets(static: str, file_text: str | None, job: str, file_name: str = "targets_file"
                  ) -> list[Target]:
    """The target list from the static setting and the file_sd JSON text (sans-IO).

    Raises:
        ConfigError: naming the setting or the file entry that is wrong.
    """
    out = [_target(a, job, {}, "scrape.static_targets") for a in static.split(",") if a.strip()]
    if file_text is not None:
        try:
            doc: Any = json.loads(file_text)
        except ValueError as exc:
            raise ConfigError(file_name, f"not valid JSON: {exc}") from None
        if not isinstance(doc, list):
            raise ConfigError(file_name, "must be a list of {\"targets\": [...], \"labels\": {}}")
        for i, group in enumerate(doc):
            where = f"{file_name}[{i}]"
            targets = group.get("targets") if isinstance(group, dict) else None
            labels = group.get("labels", {}) if isinstance(group, dict) else None
            if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
                raise ConfigError(where, "'targets' must be a list of strings")
            if not isinstance(labels, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
                raise ConfigError(where, "'labels' must be an object of strings")
            out.extend(_target(t, job, labels, where) for t in targets)
    seen: dict[str, Target] = {}
    for t in out:
        seen.setdefault(t.url, t)
    return list(seen.values())


class Scraper:
    """Scrapes every target each interval and writes what it got into the buffer."""

    def __init__(self, cfg: ScrapeConfig, ingest: Any, buffer: Writer,
                 registry: Registry, client: httpx.AsyncClient | None = None) -> None:
        self.cfg = cfg
        self.ingest = ingest
        self.buffer = buffer
        self.client = client
        self.targets: list[Target] = []
        self._file_mtime: float | None = None
        self._last_series: dict[str, set[SeriesKey]] = {}
        self.m_scrapes = registry.counter("scrapes_total", "Scrapes, by outcome.", ("outcome",))
        self.m_targets = registry.gauge("scrape_targets", "Scrape targets configured.",
                                        callback=lambda: float(len(self.targets)))

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.static_targets.strip() or self.cfg.targets_file)

    def reload(self) -> bool:
        """Re-read the targets file if it changed; ``True`` when the list was (re)built. A bad
        file is logged and the previous list kept."""
        text = None
        if self.cfg.targets_file:
            try:
                mtime = os.stat(self.cfg.targets_file).st_mtime
            except OSError as exc:
                log.warning("scrape targets file %s: %s", self.cfg.targets_file, exc)
                mtime = None
            if mtime == self._file_mtime and self.targets:
                return False
            self._file_mtime = mtime
            if mtime is not None:
                with open(self.cfg.targets_file, encoding="utf-8") as f:
                    text = f.read()
        try:
            self.targets = parse_targets(self.cfg.static_targets, text, self.cfg.job,
                                         self.cfg.targets_file or "targets_file")
        except ConfigError as exc:
            log.error("scrape targets not changed: %s", exc)
            return False
        return True

    async def run(self) -> None:
        own = self.client is None
        client = self.client or httpx.AsyncClient(timeout=self.cfg.timeout_s)
        try:
            while True:
                start = trio.current_time()
                self.reload()
                await self.scrape_all(client)
                await trio.sleep_until(start + self.cfg.interval_s)
        finally:
            if own:
                with trio.CancelScope(shield=True):
                    await client.aclose()

    async def scrape_all(self, client: httpx.AsyncClient) -> None:
        current = {t.url for t in self.targets}
        gone = [u for u in self._last_series if u not in current]
        batch = IngestBatch()
        now = time.time_ns() // 1_000_000
        for url in gone:  # removed targets: mark every series of theirs stale
            for key in self._last_series.pop(url):
                batch.metric_keys.append(key)
                batch.metric_ts.append(now)
                batch.metric_values.append(STALE_NAN)
        if batch:
            await self.buffer.write(batch)
        async with trio.open_nursery() as nursery:
            for t in self.targets:
                nursery.start_soon(self._scrape_one, client, t)

    async def _scrape_one(self, client: httpx.AsyncClient, target: Target) -> None:
        started = time.perf_counter()
        now = time.time_ns() // 1_000_000
        labels = dict(target.labels)
        batch = IngestBatch()
        up = 0.0
        try:
            with trio.fail_after(self.cfg.timeout_s):
                resp = await client.get(target.url, headers={
                    "Accept": "text/plain;version=0.0.4",
                    "X-Prometheus-Scrape-Timeout-Seconds": str(self.cfg.timeout_s)})
            resp.raise_for_status()
            batch = parse_text(resp.content, self.ingest, now, labels, allow_empty=True)
            up = 1.0
            self.m_scrapes.inc(1, "ok")
        except (httpx.HTTPError, trio.TooSlowError, IngestError) as exc:
            self.m_scrapes.inc(1, type(exc).__name__)
            log.warning("scrape of %s failed: %s", target.url, exc or type(exc).__name__)
        seen = set(batch.metric_keys)
        for key in self._last_series.get(target.url, set()) - seen:
            batch.metric_keys.append(key)  # disappeared since the last scrape: stale
            batch.metric_ts.append(now)
            batch.metric_values.append(STALE_NAN)
        self._last_series[target.url] = seen
        builder = SeriesBuilder(self.ingest, labels)
        scraped = float(len(seen))
        for name, value in (("up", up),
                            ("scrape_duration_seconds", time.perf_counter() - started),
                            ("scrape_samples_scraped", scraped)):
            builder.add(batch, builder.key(name, (), "scrape"), now, value)
        await self.buffer.write(batch)
