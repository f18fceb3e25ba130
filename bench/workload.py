"""The standard workload: 1,000 devices x 100 metrics x 20 steps 30 s apart = 2M samples.

Per device, 70 gauges are random walks with two decimals (temperatures, percentages, levels)
and 30 counters increase by random integer amounts each step (bytes, packets, events).
Deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

DEVICES, METRICS, STEPS, STEP_MS = 1000, 100, 20, 30_000
GAUGES = 70
T0_MS = 1_795_839_600_000


@dataclass
class Step:
    """One 30-second step of every series: what a live edge would forward in one batch."""

    ts_ms: int
    values: np.ndarray  # shape (DEVICES, METRICS), float64


def series_labels(device: int, metric: int) -> dict[str, str]:
    kind = "value" if metric < GAUGES else "total"
    return {"__name__": f"sensor_{metric:02d}_{kind}", "device": f"dev-{device:04d}",
            "site": f"site-{device % 10}", "model": f"gw{device % 3}"}


def steps(seed: int = 1, devices: int = DEVICES, n_steps: int = STEPS) -> Iterator[Step]:
    rng = np.random.default_rng(seed)
    gauges = np.round(rng.uniform(0, 100, size=(devices, GAUGES)), 2)
    counters = rng.integers(0, 1_000_000, size=(devices, METRICS - GAUGES)).astype(np.float64)
    for s in range(n_steps):
        if s:
            gauges = np.round(gauges + np.round(rng.normal(0, 1, size=gauges.shape), 2), 2)
            counters = counters + rng.integers(0, 1000, size=counters.shape)
        yield Step(T0_MS + s * STEP_MS, np.concatenate([gauges, counters], axis=1))


def step_samples(step: Step, devices: range) -> Iterator[tuple[str, dict[str, str], float, int]]:
    """(metric name, other labels, value, ts ms) of every series of ``devices`` in ``step``."""
    for d in devices:
        for m in range(METRICS):
            labels = series_labels(d, m)
            name = labels.pop("__name__")
            yield name, labels, float(step.values[d, m]), step.ts_ms


def native_payloads(step: Step, devices: int = DEVICES) -> Iterator[dict[str, object]]:
    """The step as native ingest requests, one per device (100 samples each)."""
    for d in range(devices):
        yield {"device_id": f"dev-{d:04d}", "labels": {"site": f"site-{d % 10}",
                                                        "model": f"gw{d % 3}"},
               "metrics": [{"name": series_labels(d, m)["__name__"],
                            "value": float(step.values[d, m]), "ts": step.ts_ms}
                           for m in range(METRICS)]}


def columnar_payloads(all_steps: list[Step], devices: range) -> list[dict[str, object]]:
    """The steps as columnar requests: per device, each series once with all its points."""
    ts = [st.ts_ms for st in all_steps]
    out: list[dict[str, object]] = []
    for d in devices:
        out.append({"device_id": f"dev-{d:04d}",
                    "labels": {"site": f"site-{d % 10}", "model": f"gw{d % 3}"},
                    "series": [{"name": series_labels(d, m)["__name__"], "ts": ts,
                                "values": [float(st.values[d, m]) for st in all_steps]}
                               for m in range(METRICS)]})
    return out
