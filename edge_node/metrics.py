"""A small Prometheus text-format registry (sans-IO), shared by edge and central.

Counters, gauges and histograms with fixed label names; ``render()`` produces exposition format
0.0.4. Gauges may be callbacks, read at render time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


@dataclass
class Metric:
    name: str
    help: str
    kind: str  # "counter" | "gauge"
    labelnames: tuple[str, ...] = ()
    values: dict[tuple[str, ...], float] = field(default_factory=dict)
    callback: Callable[[], dict[tuple[str, ...], float] | float] | None = None

    def inc(self, by: float = 1.0, *labels: str) -> None:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        self.values[labels] = self.values.get(labels, 0.0) + by

    def set(self, value: float, *labels: str) -> None:
        self.values[labels] = value

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def samples(self) -> dict[tuple[str, ...], float]:
        if self.callback is not None:
            got = self.callback()
            return got if isinstance(got, dict) else {(): float(got)}
        return self.values


# Latency buckets (seconds) for backend writes: from a local Valkey to a slow remote ClickHouse.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Histogram:
    name: str
    help: str
    labelnames: tuple[str, ...]
    buckets: tuple[float, ...]
    # labels -> (bucket counts, sum, count)
    series: dict[tuple[str, ...], tuple[list[int], float, int]] = field(default_factory=dict)

    def observe(self, value: float, *labels: str) -> None:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        counts, total, n = self.series.get(labels) or ([0] * len(self.buckets), 0.0, 0)
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
        self.series[labels] = (counts, total + value, n + 1)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for labels, (counts, total, n) in sorted(self.series.items()):
            base = [f'{k}="{_esc(x)}"' for k, x in zip(self.labelnames, labels, strict=True)]
            for bound, c in [*zip(self.buckets, counts, strict=True), (math.inf, n)]:
                inner = ",".join([*base, f'le="{_fmt(bound)}"'])
                out.append(f"{self.name}_bucket{{{inner}}} {c}")
            tail = "{" + ",".join(base) + "}" if base else ""
            out.append(f"{self.name}_sum{tail} {_fmt(total)}")
            out.append(f"{self.name}_count{tail} {n}")
        return out


class Registry:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.metrics: dict[str, Metric] = {}
        self.histograms: dict[str, Histogram] = {}

    def _add(self, name: str, help: str, kind: str, labelnames: tuple[str, ...],
             callback: Callable[[], dict[tuple[str, ...], float] | float] | None) -> Metric:
        full = f"{self.prefix}_{name}"
        old = self.metrics.get(full)
        if old is not None and old.kind == kind and old.labelnames == labelnames:
            # registered again (a part rebuilt on reload): counters keep counting, a gauge
            # reads its new callback
            old.callback = callback
            return old
        m = Metric(full, help, kind, labelnames, callback=callback)
        self.metrics[full] = m
        return m

    def counter(self, name: str, help: str, labelnames: tuple[str, ...] = ()) -> Metric:
        return self._add(name, help, "counter", labelnames, None)

    def gauge(self, name: str, help: str, labelnames: tuple[str, ...] = (),
              callback: Callable[[], dict[tuple[str, ...], float] | float] | None = None
              ) -> Metric:
        return self._add(name, help, "gauge", labelnames, callback)

    def histogram(self, name: str, help: str, labelnames: tuple[str, ...] = (),
                  buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
        full = f"{self.prefix}_{name}"
        old = self.histograms.get(full)
        if old is not None and old.labelnames == labelnames and old.buckets == buckets:
            return old
        h = Histogram(full, help, labelnames, buckets)
        self.histograms[h.name] = h
        return h

    def value(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
        m = self.metrics.get(f"{self.prefix}_{name}")
        if m is None:
            return 0.0
        want = [(m.labelnames.index(k), v) for k, v in labels.items() if k in m.labelnames]
        return float(sum(v for key, v in m.samples().items()
                         if all(key[i] == x for i, x in want)))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """``name``'s samples summed per value of ``label``."""
        m = self.metrics.get(f"{self.prefix}_{name}")
        if m is None or label not in m.labelnames:
            return {}
        i = m.labelnames.index(label)
        out: dict[str, float] = {}
        for key, v in m.samples().items():
            out[key[i]] = out.get(key[i], 0.0) + v
        return out

    def render(self) -> str:
        out: list[str] = []
        for m in self.metrics.values():
            out.append(f"# HELP {m.name} {m.help}")
            out.append(f"# TYPE {m.name} {m.kind}")
            samples = m.samples()
            if not samples and not m.labelnames:
                samples = {(): 0.0}
            for labels, v in sorted(samples.items()):
                if labels:
                    inner = ",".join(f'{k}="{_esc(x)}"'
                                     for k, x in zip(m.labelnames, labels, strict=True))
                    out.append(f"{m.name}{{{inner}}} {_fmt(v)}")
                else:
                    out.append(f"{m.name} {_fmt(v)}")
        for h in self.histograms.values():
            out.extend(h.render())
        return "\n".join(out) + "\n"
