"""The gateway box's own health as device data: CPU, memory, load, disks, network and
temperatures, read with psutil every ``[host] interval_s`` and written to the buffer like any
device's samples (forwarded, aggregated and alerted on the same way), labelled
``device=<[host] device, default node_id>`` and ``role="gateway"``.

Names follow the Prometheus node_exporter where the meaning is the same (``node_cpu_seconds_total``
per cpu and mode, ``node_memory_MemAvailable_bytes``, ``node_filesystem_avail_bytes``, ...), so
existing dashboards and alert rules read them; node_exporter's own ``device`` label (a disk, a
network interface) is ``disk`` / ``interface`` here, since ``device`` names the gateway.
:func:`host_samples` is the sans-IO part (readings in, samples out); :func:`read_host` asks
psutil; :class:`HostCollector` is the Trio loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import trio

from .buffer import Writer
from .model import DEVICE_LABEL, NAME_LABEL, IngestBatch
from .runtime import Clock, Runner, ThreadRunner, clock_ms

log = logging.getLogger("fleet_edge.host")

# network interfaces that say nothing about the box's links
_SKIP_NICS = ("lo",)


@dataclass
class HostReadings:
    """One reading of everything :func:`host_samples` reports (plain values, no psutil)."""

    cpu_times: list[dict[str, float]] = field(default_factory=list)  # per cpu: mode -> seconds
    load: tuple[float, float, float] | None = None
    memory: dict[str, float] = field(default_factory=dict)  # total, available, free, ...
    swap: dict[str, float] = field(default_factory=dict)  # total, free
    filesystems: dict[str, dict[str, float]] = field(default_factory=dict)  # mount -> sizes
    disks: dict[str, dict[str, float]] = field(default_factory=dict)  # device -> io counters
    nics: dict[str, dict[str, float]] = field(default_factory=dict)  # interface -> counters
    temperatures: list[tuple[str, str, float]] = field(default_factory=list)  # chip, sensor, C
    battery: dict[str, float] | None = None  # percent, plugged (1/0)
    boot_time: float | None = None
    clock_synced: bool | None = None  # the kernel's NTP sync state (None: unknown)
    process: dict[str, float] = field(default_factory=dict)  # the node's own process


def host_samples(r: HostReadings, base: dict[str, str]
                 ) -> list[tuple[dict[str, str], float]]:
    """The samples of one reading: (labels incl. ``__name__``, value)."""
    out: list[tuple[dict[str, str], float]] = []

    def add(name: str, value: float, **labels: str) -> None:
        out.append(({**base, **labels, NAME_LABEL: name}, float(value)))

    for i, modes in enumerate(r.cpu_times):
        for mode, secs in sorted(modes.items()):
            add("node_cpu_seconds_total", secs, cpu=str(i), mode=mode)
    if r.cpu_times:
        add("node_cpu_count", len(r.cpu_times))
    if r.load is not None:
        for n, v in zip((1, 5, 15), r.load, strict=True):
            add(f"node_load{n}", v)
    for key, name in (("total", "MemTotal"), ("available", "MemAvailable"), ("free", "MemFree"),
                      ("buffers", "Buffers"), ("cached", "Cached")):
        if key in r.memory:
            add(f"node_memory_{name}_bytes", r.memory[key])
    for key, name in (("total", "SwapTotal"), ("free", "SwapFree")):
        if key in r.swap:
            add(f"node_memory_{name}_bytes", r.swap[key])
    for mount, fs in sorted(r.filesystems.items()):
        for key, name in (("total", "size"), ("free", "avail")):
            add(f"node_filesystem_{name}_bytes", fs[key], mountpoint=mount)
    for dev, io in sorted(r.disks.items()):
        add("node_disk_read_bytes_total", io["read_bytes"], disk=dev)
        add("node_disk_written_bytes_total", io["write_bytes"], disk=dev)
    for nic, c in sorted(r.nics.items()):
        add("node_network_receive_bytes_total", c["bytes_recv"], interface=nic)
        add("node_network_transmit_bytes_total", c["bytes_sent"], interface=nic)
        add("node_network_receive_errs_total", c["errin"], interface=nic)
        add("node_network_transmit_errs_total", c["errout"], interface=nic)
    for chip, sensor, celsius in r.temperatures:
        add("node_hwmon_temp_celsius", celsius, chip=chip, sensor=sensor)
    if r.battery is not None:
        add("node_power_supply_capacity", r.battery["percent"])
        add("node_power_supply_online", r.battery["plugged"])
    if r.boot_time is not None:
        add("node_boot_time_seconds", r.boot_time)
    if r.clock_synced is not None:
        add("node_timex_sync_status", 1.0 if r.clock_synced else 0.0)
    for key, value in sorted(r.process.items()):
        add(f"fleet_edge_process_{key}", value)
    return out


#: adjtimex(2)'s answer when the clock is not synchronized (STA_UNSYNC)
_TIME_ERROR = 5


@functools.cache
def _adjtimex() -> Any:
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name, use_errno=True), "adjtimex", None) if name else None


def clock_synchronized() -> bool | None:
    """Whether the kernel has the clock synchronized (an NTP client such as chrony or
    systemd-timesyncd marks it so); None where adjtimex(2) is not available. A gateway without
    a battery-backed clock boots with a wrong time until it is: receive-time stamps are then
    wrong."""
    adjtimex = _adjtimex()
    if adjtimex is None:
        return None
    buf = ctypes.create_string_buffer(512)  # struct timex, modes = 0: only read
    state = int(adjtimex(buf))
    return None if state < 0 else state != _TIME_ERROR


def _sensor_labels(temps: dict[str, list[Any]]) -> list[tuple[str, str, float]]:
    out = []
    for chip, entries in sorted(temps.items()):
        for i, e in enumerate(entries):
            if e.current is None:
                continue
            out.append((chip, e.label or f"temp{i + 1}", float(e.current)))
    return out


def read_host(paths: list[str], proc: psutil.Process | None = None) -> HostReadings:
    """Read everything psutil offers on this box; a reading psutil cannot take is left out
    (no temperatures in a VM, no battery on most gateways)."""
    r = HostReadings()
    r.cpu_times = [t._asdict() for t in psutil.cpu_times(percpu=True)]
    with contextlib.suppress(OSError):
        r.load = os.getloadavg()
    r.memory = {k: float(v) for k, v in psutil.virtual_memory()._asdict().items()
                if k in ("total", "available", "free", "buffers", "cached")}
    sw = psutil.swap_memory()
    r.swap = {"total": float(sw.total), "free": float(sw.free)}
    mounts: dict[str, str] = {}
    parts = sorted((p.mountpoint for p in psutil.disk_partitions(all=False)), key=len,
                   reverse=True)
    for path in paths:  # the filesystem each path lives on, by its mount point
        real = os.path.realpath(path)
        mount = next((m for m in parts if real == m or real.startswith(m.rstrip("/") + "/")),
                     "/")
        mounts.setdefault(mount, path)
    for mount, path in mounts.items():
        try:
            u = psutil.disk_usage(path)
        except OSError:
            continue
        r.filesystems[mount] = {"total": float(u.total), "free": float(u.free)}
    try:
        io = psutil.disk_io_counters(perdisk=True) or {}
    except (OSError, RuntimeError):
        io = {}
    r.disks = {d: {"read_bytes": float(c.read_bytes), "write_bytes": float(c.write_bytes)}
               for d, c in io.items()
               if not d.startswith(("loop", "ram", "zram"))}  # not physical storage
    nics = psutil.net_io_counters(pernic=True) or {}
    r.nics = {n: {k: float(v) for k, v in c._asdict().items()}
              for n, c in nics.items() if n not in _SKIP_NICS}
    sensors = getattr(psutil, "sensors_temperatures", None)
    if sensors is not None:
        with contextlib.suppress(OSError, RuntimeError):
            r.temperatures = _sensor_labels(sensors())
    battery = getattr(psutil, "sensors_battery", None)
    if battery is not None:
        try:
            b = battery()
        except (OSError, RuntimeError):
            b = None
        if b is not None:
            r.battery = {"percent": float(b.percent), "plugged": float(bool(b.power_plugged))}
    r.boot_time = psutil.boot_time()
    r.clock_synced = clock_synchronized()
    if proc is not None:
        with proc.oneshot():
            t = proc.cpu_times()
            r.process = {"cpu_seconds_total": float(t.user + t.system),
                         "resident_memory_bytes": float(proc.memory_info().rss),
                         "open_fds": float(proc.num_fds())}
    return r


class HostCollector:
    """Writes the box's readings to the buffer every ``interval_s``; ``last`` keeps the newest
    reading for the status page."""

    def __init__(self, buffer: Writer, device: str, paths: list[str], interval_s: float, *,
                 clock: Clock = time.time, runner: Runner | None = None) -> None:
        self.buffer = buffer
        self.clock = clock
        self._run: Runner = runner or ThreadRunner(1)
        self.configure(device, interval_s)
        self.paths = paths
        self.proc = psutil.Process()
        self.last: HostReadings | None = None
        self.cpu_percent = 0.0
        self._prev_cpu: tuple[float, float] | None = None  # (busy, total) seconds

    def configure(self, device: str, interval_s: float) -> None:
        """New settings (a reload), from the next reading on."""
        self.base = {DEVICE_LABEL: device, "role": "gateway"}
        self.interval_s = interval_s

    @property
    def memory_used_percent(self) -> float | None:
        mem = self.last.memory if self.last is not None else {}
        return 100 * (1 - mem["available"] / mem["total"]) if mem.get("total") else None

    def batch(self, r: HostReadings, now_ms: int) -> IngestBatch:
        b = IngestBatch()
        for labels, value in host_samples(r, self.base):
            b.metric_keys.append(tuple(sorted(labels.items())))
            b.metric_ts.append(now_ms)
            b.metric_values.append(value)
        return b

    def _note_cpu(self, r: HostReadings) -> None:
        total = sum(sum(m.values()) for m in r.cpu_times)
        idle = sum(m.get("idle", 0.0) + m.get("iowait", 0.0) for m in r.cpu_times)
        if self._prev_cpu is not None and total > self._prev_cpu[1]:
            busy = (total - idle) - self._prev_cpu[0]
            self.cpu_percent = max(0.0, min(100.0, 100 * busy / (total - self._prev_cpu[1])))
        self._prev_cpu = (total - idle, total)

    async def collect_once(self) -> None:
        r = await self._run(read_host, self.paths, self.proc)
        self._note_cpu(r)
        self.last = r
        await self.buffer.write(self.batch(r, clock_ms(self.clock)))

    async def run(self) -> None:
        while True:
            start = trio.current_time()
            try:
                await self.collect_once()
            except (OSError, RuntimeError) as exc:  # psutil on an odd kernel: keep trying
                log.warning("reading the host's metrics failed: %s", exc)
            await trio.sleep_until(start + self.interval_s)
