"""The node's own health for ``/metrics``: process CPU and memory, and the data disk (psutil)."""

from __future__ import annotations

import psutil

from .metrics import Registry


def register_process_metrics(registry: Registry, data_dir: str) -> None:
    """Add process and disk gauges, read at scrape time."""
    proc = psutil.Process()

    def cpu() -> float:
        t = proc.cpu_times()
        return float(t.user + t.system)

    registry.gauge("process_cpu_seconds", "CPU time used by this process (user + system).",
                   callback=cpu)
    registry.gauge("process_resident_memory_bytes", "Resident memory of this process.",
                   callback=lambda: float(proc.memory_info().rss))
    registry.gauge("process_open_fds", "Open file descriptors.",
                   callback=lambda: float(proc.num_fds()))
    registry.gauge("data_disk_free_bytes", "Free bytes on the filesystem holding data_dir.",
                   callback=lambda: float(psutil.disk_usage(data_dir).free))
    registry.gauge("data_disk_total_bytes", "Size of the filesystem holding data_dir.",
                   callback=lambda: float(psutil.disk_usage(data_dir).total))
