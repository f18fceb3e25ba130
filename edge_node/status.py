"""What the status page, ``/readyz`` and ``fleet-edge status`` show.

:class:`History` (sans-IO) turns periodic readings of the node's counters and gauges into chart
points (rates from counter deltas, a counter reset starts afresh) and keeps ``history_hours`` of
them; :class:`StatusService` samples the running node every ``[status] step_s``, saves the
history to ``status-history.json`` in the data directory (so the charts survive a restart) and
builds the ``/api/v1/status`` document.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import trio

from . import __version__
from .clock_skew import parse_policies
from .config import EdgeConfig
from .host import HostCollector, clock_synchronized
from .metrics import Registry
from .runtime import Clock, Runner, ThreadRunner

if TYPE_CHECKING:
    from .alerts.service import AlertService
    from .buffer import BufferService
    from .forward import Forwarder
    from .tls import ServerTLS

log = logging.getLogger("fleet_edge.status")

#: the charted figures: name -> (title, unit)
FIGURES: dict[str, tuple[str, str]] = {
    "ingest_rows_per_s": ("Ingest", "rows/s"),
    "forward_rows_per_s": ("Forwarded to central", "rows/s"),
    "pending_rows": ("Waiting for central", "rows"),
    "backlog_age_s": ("Backlog age", "s"),
    "buffer_bytes": ("Buffer on disk", "bytes"),
    "devices_online": ("Devices online", ""),
    "cpu_percent": ("Gateway CPU", "%"),
    "memory_used_percent": ("Gateway memory", "%"),
}
#: which figures are rates of a counter (the reading is the counter's total)
RATES = {"ingest_rows_per_s", "forward_rows_per_s"}
#: the buffer is "full" from this share of its budget on (for readiness)
FULL_RATIO = 0.95
#: the chart history is written this often (and on shutdown)
SAVE_EVERY_S = 300.0
#: devices listed in the status document: offline ones first, then online ones (the counts
#: cover all); the page refreshes every 5 s, so a 10,000-device site must not send them all
DEVICES_LISTED = 300
#: alerts listed (firing first; the counts cover all)
ALERTS_LISTED = 100


@dataclass
class History:
    """Chart points at ``step_s`` apart, at most ``capacity`` of them (sans-IO)."""

    step_s: float
    capacity: int
    points: deque[tuple[float, dict[str, float | None]]] = field(default_factory=deque)
    _last: tuple[float, dict[str, float]] | None = None  # the previous reading's counters

    def add(self, t: float, reading: dict[str, float]) -> dict[str, float | None]:
        """Add the reading taken at ``t`` (counters as totals, gauges as values); returns the
        point. A rate is None for the first reading and after a counter went backwards (a
        restart) or time did."""
        point: dict[str, float | None] = {}
        prev = self._last
        for name, v in reading.items():
            if name not in RATES:
                point[name] = v
                continue
            if prev is None or name not in prev[1] or t <= prev[0] or v < prev[1][name]:
                point[name] = None
            else:
                point[name] = (v - prev[1][name]) / (t - prev[0])
        self._last = (t, {k: v for k, v in reading.items() if k in RATES})
        self.points.append((t, point))
        while len(self.points) > self.capacity:
            self.points.popleft()
        return point

    def latest(self, name: str) -> float | None:
        for _, p in reversed(self.points):
            v = p.get(name)
            if v is not None:
                return v
        return None

    def series(self) -> dict[str, Any]:
        """Columns for the charts: ``t`` (unix seconds) and one list per figure."""
        names = list(FIGURES)
        return {"step_s": self.step_s, "t": [round(t, 3) for t, _ in self.points],
                "figures": {n: [p.get(n) for _, p in self.points] for n in names}}

    def dump(self) -> str:
        return json.dumps({"step_s": self.step_s,
                           "points": [[t, p] for t, p in self.points]})

    def load(self, text: str, now: float) -> int:
        """Restore saved points no older than the history span; returns how many. A damaged
        file is ignored (charts start empty)."""
        try:
            doc = json.loads(text)
            pts = [(float(t), {str(k): (None if v is None else float(v)) for k, v in p.items()})
                   for t, p in doc["points"]]
        except (ValueError, KeyError, TypeError, AttributeError):
            return 0
        oldest = now - self.capacity * self.step_s
        kept = [(t, p) for t, p in pts if oldest <= t <= now]
        self.points = deque(kept[-self.capacity:])
        return len(self.points)


def drain_eta(pending: float, in_rate: float | None, out_rate: float | None) -> float | None:
    """Seconds until the backlog is forwarded at the current rates; None when it is not
    shrinking (or there is nothing to drain)."""
    if pending <= 0 or out_rate is None:
        return None
    net = out_rate - (in_rate or 0.0)
    return pending / net if net > 0 else None


def capped_eta(eta: float | None, pending_rows: int, pending_bytes: int, cap: float
               ) -> float | None:
    """The drain ETA, no sooner than the link cap allows for the bytes waiting (before the
    rates are measured, the cap alone says it)."""
    if not cap or not pending_rows:
        return eta
    return max(eta or 0.0, pending_bytes / cap)


def readiness(buffer_open: bool, stopping: bool, used_ratio: float, central_ok: bool,
              pending_rows: int, refusal: str | None = None) -> list[str]:
    """Why the node is not ready (empty: ready). Central being unreachable alone is normal at
    the edge: the buffer takes the data. It matters once the buffer is about full, and a full
    data disk (``refusal``) means new data is refused."""
    why = []
    if not buffer_open:
        why.append("the buffer is not open")
    if refusal:
        why.append(refusal)
    if stopping:
        why.append("shutting down")
    if used_ratio >= FULL_RATIO and pending_rows and not central_ok:
        why.append(f"the buffer is {used_ratio:.0%} of its budget and central is unreachable: "
                   "new data pushes out the oldest")
    return why


class StatusSource(Protocol):
    """The parts of a running node the status reads (:class:`edge_node.node.EdgeNode`)."""

    cfg: EdgeConfig
    registry: Registry
    buffer: BufferService
    forwarder: Forwarder
    alerts: AlertService | None
    host: HostCollector | None
    last_reload: dict[str, Any] | None
    server_tls: ServerTLS | None


class StatusService:
    """Samples the node for the charts and answers ``/api/v1/status`` and ``/readyz``."""

    def __init__(self, node: StatusSource, step_s: float, history_hours: float,
                 clock: Clock = time.time, runner: Runner | None = None) -> None:
        self.node = node
        self.clock = clock
        self._run: Runner = runner or ThreadRunner(2)  # file writes, the adjtimex call
        self.history = History(step_s, max(2, int(history_hours * 3600 / step_s)))
        self.path = Path(node.cfg.data_dir) / "status-history.json"
        self.started = clock()
        self.stopping = False
        self._saved = self.started
        self._protocols: tuple[float, dict[str, float]] | None = None
        self.protocol_rates: dict[str, float] = {}
        if clock_synchronized() is not None:  # Linux
            node.registry.gauge(
                "clock_synchronized", "1 when the kernel has the clock synchronized (NTP), 0 "
                "when not: receive-time stamps may then be wrong.",
                callback=lambda: float(bool(clock_synchronized())))
        node.registry.gauge(
            "devices", "Devices known to local alerting, online or offline (last seen within "
            "alerts.device_offline_after_s).", ("state",), callback=self._device_counts)
        try:
            n = self.history.load(self.path.read_text(encoding="utf-8"), self.started)
            log.debug("status history: %d points restored", n)
        except OSError:
            pass

    # -- readings ----------------------------------------------------------------------------

    def devices(self) -> list[dict[str, Any]]:
        """Every tracked device, offline first."""
        return self._devices(int(self.clock() * 1000))

    def _devices(self, now_ms: int) -> list[dict[str, Any]]:
        alerts = self.node.alerts
        if alerts is None:
            return []
        after_ms = self.node.cfg.alerts.device_offline_after_s * 1000
        rows = [{"device": d, "site": site, "last_seen_ms": t,
                 "online": now_ms - t < after_ms}
                for d, (site, t) in list(alerts.devices.items())]
        rows.sort(key=lambda r: (r["online"], r["device"]))  # offline first
        return rows

    def _device_counts(self) -> dict[tuple[str, ...], float]:
        devs = self._devices(int(self.clock() * 1000))
        online = float(sum(d["online"] for d in devs))
        return {("online",): online, ("offline",): len(devs) - online}

    def reading(self) -> dict[str, float]:
        reg = self.node.registry
        buf = self.node.buffer
        st = buf.stats
        out = {"ingest_rows_per_s": reg.value("ingested_total"),
               "forward_rows_per_s": reg.value("acked_total"),
               "pending_rows": float(sum(st.pending.values())),
               "backlog_age_s": buf.backlog_age(),
               "buffer_bytes": float(st.used_bytes),
               "devices_online": self._device_counts()[("online",)]}
        host = self.node.host
        if host is not None and host.last is not None:
            out["cpu_percent"] = host.cpu_percent
            if (mem := host.memory_used_percent) is not None:
                out["memory_used_percent"] = mem
        return out

    def _note_protocols(self, t: float) -> None:
        totals = self.node.registry.by_label("protocol_rows_total", "protocol")
        prev = self._protocols
        if prev is not None and t > prev[0]:
            self.protocol_rates = {p: max(0.0, (v - prev[1].get(p, 0.0)) / (t - prev[0]))
                                   for p, v in totals.items()}
        self._protocols = (t, totals)

    async def sample(self) -> None:
        await self.node.buffer.refresh_stats()
        t = self.clock()
        self.history.add(t, self.reading())
        self._note_protocols(t)

    async def save(self) -> None:
        """Write the chart history (every ``SAVE_EVERY_S`` and on shutdown: gateways run on
        flash, and the history is ~60 kB)."""
        text = self.history.dump()
        try:
            await self._run(_write_atomic, self.path, text)
        except OSError as exc:
            log.warning("saving the status history failed: %s", exc)
        self._saved = self.clock()

    async def run(self) -> None:
        step = self.history.step_s
        while True:
            # on the step grid, so points of restarts line up
            await trio.sleep(step - self.clock() % step)
            await self.sample()
            if self.clock() - self._saved >= SAVE_EVERY_S:
                await self.save()

    # -- answers -----------------------------------------------------------------------------

    def not_ready(self) -> list[str]:
        buf = self.node.buffer
        st = buf.stats
        return readiness(buf.accepting, self.stopping,
                         st.used_bytes / max(1, buf.max_bytes), self.node.forwarder.connected,
                         sum(st.pending.values()), buf.refusal)

    async def document(self) -> dict[str, Any]:
        node = self.node
        cfg = node.cfg
        buf = node.buffer
        fwd = node.forwarder
        reg = node.registry
        with trio.move_on_after(2):
            await buf.refresh_stats()
        st = buf.stats
        now = self.clock()
        devices = self._devices(int(now * 1000))
        online = sum(d["online"] for d in devices)
        pending = sum(st.pending.values())
        in_rate = self.history.latest("ingest_rows_per_s")
        out_rate = self.history.latest("forward_rows_per_s")
        dead = await buf.dead_letters()
        # firing first: a site-wide outage can make thousands of DeviceOffline alerts
        alerts = sorted(node.alerts.summary() if node.alerts is not None else [],
                        key=lambda a: a["state"] != "firing")
        host = node.host
        doc: dict[str, Any] = {
            "node_id": cfg.node_id, "version": __version__, "now": now,
            "started": self.started, "uptime_s": now - self.started,
            "not_ready": self.not_ready(),
            "warnings": cfg.security_warnings(),
            "tls": (node.server_tls.cert.to_json(now) | {"client_certs": cfg.tls.client_certs}
                    if node.server_tls is not None else None),
            "central": {"url": cfg.central.url, "connected": fwd.connected,
                        "key": fwd.keys.describe(now),
                        "last_error": fwd.last_error or None,
                        "last_ack": fwd.last_ack_s or None},
            "devices": devices[:DEVICES_LISTED],
            "devices_total": len(devices), "devices_online": online,
            "device_offline_after_s": cfg.alerts.device_offline_after_s,
            # devices whose clock is off: offset in seconds (positive: ahead), and the policy
            "clock_skew": [{"device": d, "offset_s": o,
                            "policy": parse_policies(cfg.clock.device_policies).get(
                                d, cfg.clock.policy)}
                           for d, o in sorted(reg.by_label("device_clock_offset_seconds",
                                                           "device").items())],
            "device_tracking": node.alerts is not None,
            "protocols": [{"protocol": p, "rows_total": v,
                           "rows_per_s": self.protocol_rates.get(p)}
                          for p, v in sorted(reg.by_label("protocol_rows_total",
                                                          "protocol").items())],
            "buffer": {"bytes": st.used_bytes, "budget_bytes": buf.max_bytes,
                       "pending": dict(st.pending), "pending_rows": pending,
                       "backlog_age_s": buf.backlog_age(), "dead_letters": st.dead_letters,
                       "refusing": buf.refusal, "synchronous": buf.synchronous,
                       "disk_free_bytes": buf.disk.free_bytes if buf.disk else None,
                       "dropped": reg.by_label("dropped_total", "kind"),
                       "expired": reg.by_label("expired_total", "kind")},
            "forward": {"rows_per_s": out_rate, "ingest_rows_per_s": in_rate,
                        "acked_total": reg.value("acked_total"),
                        "errors_total": reg.value("forward_errors_total"),
                        "drain_eta_s": capped_eta(drain_eta(pending, in_rate, out_rate),
                                                  pending, st.pending_bytes,
                                                  cfg.central.max_bytes_per_s),
                        "max_bytes_per_s": cfg.central.max_bytes_per_s or None},
            "alerts": alerts[:ALERTS_LISTED],
            "alerts_firing": sum(a["state"] == "firing" for a in alerts),
            "alerts_pending": sum(a["state"] == "pending" for a in alerts),
            "dead_letters": dead[-10:],
            "host": _host_summary(host),
            # None: unknown (no adjtimex); False: timestamps the node gives may be wrong
            "clock_synchronized": await self._run(clock_synchronized),
            "history": self.history.series(),
            "figures": {k: {"title": t, "unit": u} for k, (t, u) in FIGURES.items()},
            "last_reload": node.last_reload,
        }
        out: dict[str, Any] = _finite(doc)
        return out


def _host_summary(host: HostCollector | None) -> dict[str, Any] | None:
    if host is None or host.last is None:
        return None
    r = host.last
    return {"device": host.base["device"], "cpu_percent": host.cpu_percent,
            "memory_used_percent": host.memory_used_percent,
            "load1": r.load[0] if r.load else None,
            "filesystems": dict(r.filesystems),
            "temperatures": [{"chip": c, "sensor": s, "celsius": v}
                             for c, s, v in r.temperatures]}


def _finite(v: Any) -> Any:
    """JSON has no NaN/inf: they become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)

