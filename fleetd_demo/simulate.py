"""Simulated devices for the demo (sans-IO): realistic gauges, counters, logs and heartbeats."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

_LOG_LINES = (
    ("info", "sensor poll completed in {ms} ms"),
    ("info", "uploaded {n} readings"),
    ("warning", "temperature {t:.1f} C above soft limit"),
    ("error", "modbus read timeout on register {r}"),
    ("debug", "rssi={rssi} dBm link ok"),
)


@dataclass
class SimulatedDevice:
    """A gateway-attached device: 4 CPU cores, memory, temperature, disk, network counters."""

    device_id: str
    site: str = "demo-site"
    rng: random.Random = field(default_factory=random.Random)
    cpu: list[float] = field(default_factory=lambda: [20.0, 25.0, 15.0, 30.0])
    mem_bytes: float = 512 * 1024 * 1024
    temp_c: float = 45.0
    disk_pct: float = 40.0
    rx_total: int = 0
    tx_total: int = 0
    uptime_s: int = 0

    def step(self, ts_ms: int, dt_s: float = 1.0, *, heartbeat: bool = True) -> dict[str, Any]:
        """Advance one tick and return a native ingest payload for it."""
        r = self.rng
        self.cpu = [round(min(100.0, max(0.0, c + r.uniform(-5, 5))), 1) for c in self.cpu]
        self.mem_bytes = min(2 << 30, max(64 << 20, self.mem_bytes + r.randint(-4, 4) * (1 << 20)))
        self.temp_c = round(min(95.0, max(20.0, self.temp_c + r.uniform(-0.5, 0.5))), 1)
        self.disk_pct = round(min(99.9, self.disk_pct + r.uniform(0, 0.01)), 2)
        self.rx_total += r.randint(1_000, 50_000)
        self.tx_total += r.randint(500, 20_000)
        self.uptime_s += int(dt_s)
        metrics: list[dict[str, Any]] = [
            {"name": "cpu_usage_percent", "value": c, "ts": ts_ms, "labels": {"core": str(i)}}
            for i, c in enumerate(self.cpu)]
        metrics += [
            {"name": "memory_used_bytes", "value": int(self.mem_bytes), "ts": ts_ms},
            {"name": "temperature_celsius", "value": self.temp_c, "ts": ts_ms},
            {"name": "disk_used_percent", "value": self.disk_pct, "ts": ts_ms},
            {"name": "network_receive_bytes_total", "value": self.rx_total, "ts": ts_ms},
            {"name": "network_transmit_bytes_total", "value": self.tx_total, "ts": ts_ms},
            {"name": "uptime_seconds_total", "value": self.uptime_s, "ts": ts_ms},
        ]
        payload: dict[str, Any] = {"device_id": self.device_id, "labels": {"site": self.site},
                                   "metrics": metrics}
        if r.random() < 0.2:
            level, fmt = r.choice(_LOG_LINES)
            line = fmt.format(ms=r.randint(1, 90), n=r.randint(1, 500), t=self.temp_c,
                              r=r.randint(40001, 40100), rssi=r.randint(-90, -40))
            payload["logs"] = [{"ts": ts_ms, "line": line, "level": level,
                                "labels": {"app": "sensord"}}]
        if heartbeat:
            payload["heartbeat"] = True
            payload["ts"] = ts_ms
        return payload
