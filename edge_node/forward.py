"""The forwarder: ships buffered segments to central until acknowledged, live data first.

Two lanes: the **backlog** lane sends oldest first (highest-priority kind first), one batch in
flight, as it always did; when the data it sends is older than ``central.live_window_s`` (a
backlog after an outage), the **live** lane sends the newest segments of fresher data beside it, so
live data reaches central within seconds while the backlog drains behind. Both wait on the
link's cap (``central.max_bytes_per_s``, :mod:`edge_node.bandwidth`), the live lane with its
reserved share. A segment all older than its backend accepts (``central.logs_max_age_s``,
``metrics_max_age_s``) is not sent: dropped and counted, or kept as a dead letter
(``central.too_old``).

Outcomes of a send (the state machine is :func:`classify`, sans-IO)::

    2xx                 ack: delete the segment, remember the series central now knows
    409 missing_series  central lacks definitions: mark them unknown, resend at once
    400 / 413 / 422     malformed: move the segment to the dead-letter table, go on
    anything else       (401/403, 429, 5xx, network errors) back off with jitter, retry forever;
                        ``Retry-After`` is honoured

With an ``https://`` URL the forwarder's own HTTP client trusts ``central.ca_file`` (else the
system's CAs), presents ``central.client_cert`` and expects ``central.server_name`` in central's
certificate; a certificate problem is named (``forward_errors_total{reason="tls"}``, the last
error in the status) with what to set. A reload that changes these or the files rebuilds it.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from .backoff import Backoff, parse_retry_after
from .bandwidth import Link
from .buffer import BufferService, PendingSegment
from .central_key import CentralKey
from .config import EdgeConfig
from .errors import BufferFailure
from .metrics import Registry
from .runtime import Clock, clock_ms
from .tls import client_context, tls_problem
from .wire import BATCH_CONTENT_TYPE, KINDS, Batch, encode_batch

log = logging.getLogger("fleet_edge.forward")

ACK, RESEND, DEAD_LETTER, RETRY = "ack", "resend", "dead_letter", "retry"


@dataclass(frozen=True)
class Verdict:
    action: str
    reason: str = ""
    missing: tuple[int, ...] = ()
    retry_after_s: float | None = None


def classify(status: int, body: Any, retry_after: str | None, now_s: float) -> Verdict:
    """Decide what to do with a segment after central answered ``status``."""
    if 200 <= status < 300:
        return Verdict(ACK)
    reason = ""
    if isinstance(body, dict):
        reason = str(body.get("error", ""))
    if status == 409 and isinstance(body, dict) and isinstance(body.get("missing_series"), list):
        return Verdict(RESEND, reason, tuple(int(x) for x in body["missing_series"]))
    if status in (400, 413, 422):
        return Verdict(DEAD_LETTER, reason or f"HTTP {status}")
    return Verdict(RETRY, reason or f"HTTP {status}", retry_after_s=parse_retry_after(
        retry_after, now_s))


def central_tls(cfg: EdgeConfig) -> tuple[bytes, ssl.SSLContext | None]:
    """(a digest of the link's TLS inputs: settings and file contents, the client's context);
    the context is ``None`` for an ``http://`` URL."""
    c = cfg.central
    if not c.url.startswith("https://"):
        return b"", None
    h = hashlib.sha256(repr((c.ca_file, c.client_cert, c.client_key)).encode())
    for path in (c.ca_file, c.client_cert, c.client_key):
        if path:
            try:
                h.update(Path(path).read_bytes())
            except OSError as exc:
                h.update(str(exc).encode())
    return h.digest(), client_context(c.ca_file, c.client_cert, c.client_key)


class Forwarder:
    """Sends segments from a :class:`BufferService`; ``client`` (tests) replaces the HTTP
    client it builds for ``[central]`` itself."""

    def __init__(self, cfg: EdgeConfig, buffer: BufferService,
                 client: httpx.AsyncClient | None, registry: Registry, *,
                 clock: Clock = time.time) -> None:
        self.buffer = buffer
        self.clock = clock
        self._own_client = client is None
        self._tls_digest: bytes | None = None
        self._retired: list[httpx.AsyncClient] = []
        self.client: httpx.AsyncClient
        if client is not None:
            self.client = client
        self.keys = CentralKey(cfg.data_dir, cfg.central.api_key, registry, clock=clock)
        self.apply(cfg)
        self.connected = False
        self.last_error = ""
        self.idle = trio.Event()
        r = registry
        self.m_forwarded = r.counter("forwarded_total", "Rows sent to central (incl. retries).",
                                     ("kind",))
        self.m_acked = r.counter("acked_total", "Rows central acknowledged.", ("kind",))
        self.m_bytes = r.counter("forwarded_bytes_total", "Batch bytes sent to central.")
        self.m_attempts = r.counter("forward_attempts_total",
                                    "Batches sent to central, each try counted.")
        self.m_errors = r.counter("forward_errors_total", "Failed sends, by reason (network, "
                                  "timeout, tls: a certificate problem, or central's HTTP "
                                  "status).", ("reason",))
        self.m_send_s = r.histogram("forward_seconds", "Time for central to answer a batch "
                                    "(write latency to central, incl. its backends).")
        self.m_dead = r.counter("dead_lettered_total",
                                "Rows moved to the dead-letter table.", ("kind",))
        self.m_expired = r.counter(
            "expired_total", "Rows not sent because they are older than their backend "
            "accepts (central.logs_max_age_s, metrics_max_age_s; central.too_old = drop).",
            ("kind",))
        self.m_live = r.counter("live_lane_sent_total", "Rows the live lane sent beside a "
                                "draining backlog.", ("kind",))
        r.gauge("link_wait_seconds", "Time sends waited for central.max_bytes_per_s, in all.",
                callback=lambda: self.link.waited_s)
        self._backlog_seg: PendingSegment | None = None
        self.last_ack_s = 0.0
        r.gauge("central_connected", "1 when the last exchange with central succeeded.",
                callback=lambda: 1.0 if self.connected else 0.0)
        r.gauge("last_ack_timestamp_seconds", "When central last acknowledged a batch.",
                callback=lambda: self.last_ack_s)
        counters = buffer.stats.counters
        for kind in KINDS:
            self.m_acked.inc(counters.get(f"acked_{kind}", 0), kind)
            self.m_dead.inc(counters.get(f"dead_lettered_{kind}", 0), kind)
            self.m_expired.inc(counters.get(f"expired_{kind}", 0), kind)

    def apply(self, cfg: EdgeConfig) -> None:
        """Use ``cfg``'s ``[central]`` settings from the next send on (also on a reload)."""
        self.cfg = cfg
        self.url = cfg.central.url.rstrip("/") + "/api/v1/batches"
        c = cfg.central
        self.backoff = Backoff(c.backoff_initial_s, c.backoff_max_s)
        self.live_backoff = Backoff(c.backoff_initial_s, c.backoff_max_s)
        old = getattr(self, "link", None)
        if old is None or (old.rate, old.share) != (c.max_bytes_per_s, c.live_share):
            self.link = Link(c.max_bytes_per_s, c.live_share)
        self.max_age_ms = {"logs": int(c.logs_max_age_s * 1000),
                           "metrics": int(c.metrics_max_age_s * 1000),
                           "rollups": int(c.rollups_max_age_s * 1000)}
        self.extensions = {"sni_hostname": c.server_name} if c.server_name else {}
        self.keys.apply(c.api_key)
        self.refresh_client(cfg)

    def refresh_client(self, cfg: EdgeConfig) -> bool:
        """A new HTTP client when the link's TLS settings or files changed (a renewed client
        certificate, a new CA); True when it was replaced. Raises TLSError if they do not
        load (the config check loads them first)."""
        if not self._own_client:
            return False
        digest, ctx = central_tls(cfg)
        if digest == self._tls_digest:
            return False
        first = self._tls_digest is None
        if not first:  # requests in flight finish on the old one
            self._retired.append(self.client)
        self.client = httpx.AsyncClient(verify=ctx if ctx is not None else True,
                                        timeout=cfg.central.timeout_s)
        self._tls_digest = digest
        return not first

    async def aclose(self) -> None:
        """Close the HTTP clients the forwarder made."""
        if self._own_client:
            for client in [*self._retired, self.client]:
                await client.aclose()
            self._retired.clear()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._live_lane)
            await self._backlog_lane()

    async def _backlog_lane(self) -> None:
        while True:
            try:
                seg = await self.buffer.claim()
                if seg is None:
                    self.idle.set()
                    with trio.move_on_after(1.0):
                        await self.buffer.segment_ready.wait()
                    continue
                self.idle = trio.Event()
                self._backlog_seg = seg
                try:
                    await self.deliver(seg)
                finally:
                    self._backlog_seg = None
            except BufferFailure as exc:
                # the disk is full even past its reserve (or the buffer failed): the segment
                # stays, unacknowledged; central answers a resend as a duplicate
                self.last_error = f"buffer: {exc}"
                log.error("forwarding paused: %s", exc)
                await trio.sleep(self.backoff.next_delay())

    async def _live_lane(self) -> None:
        """While the backlog lane works on data older than ``live_window_s``, send the
        newest segments with data fresher than that beside it."""
        while True:
            window = int(self.cfg.central.live_window_s * 1000)
            fresh_since = clock_ms(self.clock) - window
            busy = self._backlog_seg
            if busy is None or busy.max_ts >= fresh_since:
                await trio.sleep(0.25)  # no backlog: the backlog lane sends fresh data itself
                continue
            try:
                seg = await self.buffer.claim(fresh_since_ms=fresh_since)
                if seg is None:
                    with trio.move_on_after(1.0):
                        await self.buffer.segment_ready.wait()
                    continue
                if await self.deliver(seg, live=True):
                    self.m_live.inc(seg.n, seg.kind)
            except BufferFailure as exc:
                log.error("live forwarding paused: %s", exc)
                await trio.sleep(self.live_backoff.next_delay())

    async def _too_old(self, seg: PendingSegment) -> bool:
        """Handle ``seg`` if all of it is older than its backend accepts; True if it was."""
        limit = self.max_age_ms.get(seg.kind, 0)
        if not limit or not seg.max_ts or seg.max_ts >= clock_ms(self.clock) - limit:
            return False
        age_h = (clock_ms(self.clock) - seg.max_ts) / 3_600_000
        if self.cfg.central.too_old == "keep":
            await self.buffer.dead_letter(seg, f"older than the {seg.kind} backend accepts "
                                          f"(newest row {age_h:.0f} h old; central."
                                          f"{seg.kind}_max_age_s)")
            self.m_dead.inc(seg.n, seg.kind)
        else:
            await self.buffer.expire(seg)
            self.m_expired.inc(seg.n, seg.kind)
        log.warning("segment %d: %d %s rows, newest %.0f h old, older than their backend "
                    "accepts: %s", seg.seq, seg.n, seg.kind, age_h,
                    "kept as a dead letter" if self.cfg.central.too_old == "keep" else "dropped")
        return True

    async def deliver(self, seg: PendingSegment, *, live: bool = False) -> bool:
        """Send the claimed ``seg`` until it is acknowledged or dead-lettered; True once
        central acknowledged it."""
        buf = self.buffer
        backoff = self.live_backoff if live else self.backoff
        try:
            if await self._too_old(seg):
                return False
            # computed once per segment (not per retry): finding them decodes the segment
            defs = await buf.definitions_for(seg)
            while True:
                low = await buf.low_watermark()
                body = encode_batch(Batch(node_id=self.cfg.node_id, seq=seg.seq, kind=seg.kind,
                                          segment=seg.blob, rows=seg.n, low_watermark=low,
                                          series_defs=defs, epoch=buf.epoch))
                await self.link.send_allowed(len(body), live=live)
                verdict = await self._send(body, seg)
                if verdict.action == ACK:
                    await buf.ack(seg, [sid for sid, _ in defs])  # shielded
                    self.m_acked.inc(seg.n, seg.kind)
                    self.last_ack_s = self.clock()
                    backoff.reset()
                    return True
                if verdict.action == RESEND:
                    log.info("central lacks %d series definitions; resending",
                             len(verdict.missing))
                    await buf.forget_definitions(verdict.missing)
                    defs = await buf.definitions_for(seg)
                    if backoff.failures > 3:
                        await trio.sleep(backoff.next_delay())
                    else:
                        backoff.failures += 1
                    await buf.retry(seg)
                    continue
                if verdict.action == DEAD_LETTER:
                    log.error("central refused segment %d (%d %s rows) as malformed: %s; moved "
                              "to the dead-letter table", seg.seq, seg.n, seg.kind,
                              verdict.reason)
                    await buf.dead_letter(seg, verdict.reason)  # shielded
                    self.m_dead.inc(seg.n, seg.kind)
                    return False
                delay = backoff.next_delay(verdict.retry_after_s)
                log.warning("sending segment %d failed (%s); retry in %.1fs", seg.seq,
                            verdict.reason, delay)
                await trio.sleep(delay)
                await buf.retry(seg)
        finally:
            buf.release(seg)

    async def _send(self, body: bytes, seg: PendingSegment) -> Verdict:
        key = self.keys.for_request()
        headers = {"Authorization": f"Bearer {key}", "Content-Type": BATCH_CONTENT_TYPE,
                   "X-Fleet-Node": self.cfg.node_id, **self.keys.headers()}
        self.m_forwarded.inc(seg.n, seg.kind)
        self.m_bytes.inc(len(body))
        self.m_attempts.inc()
        t0 = time.perf_counter()
        try:
            with trio.fail_after(self.cfg.central.timeout_s):
                resp = await self.client.post(self.url, content=body, headers=headers,
                                              extensions=self.extensions)
        except (httpx.HTTPError, trio.TooSlowError) as exc:
            self.connected = False
            problem = tls_problem(exc)
            timeout = isinstance(exc, trio.TooSlowError | httpx.TimeoutException)
            self.last_error = problem or f"{type(exc).__name__}: {exc}"
            self.m_errors.inc(1, "tls" if problem else "timeout" if timeout else "network")
            return Verdict(RETRY, self.last_error)
        self.m_send_s.observe(time.perf_counter() - t0)
        try:
            payload = resp.json()
        except ValueError:
            payload = None
        await self.keys.answered(key, resp.status_code, payload)  # a rotation step, if any
        verdict = classify(resp.status_code, payload, resp.headers.get("Retry-After"),
                           self.clock())
        self.connected = verdict.action != RETRY
        if verdict.action != ACK:
            self.last_error = f"HTTP {resp.status_code}: {verdict.reason}"
            self.m_errors.inc(1, str(resp.status_code))
        return verdict
