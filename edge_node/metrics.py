"""A small Prometheus text-format registry (sans-IO), shared by edge and central.

Counters and gauges with fixed label names; ``render()`` produces exposition format 0.0.4.
Gauges may be callbacks, read at render time.
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


class Registry:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.metrics: dict[str, Metric] = {}

    def _add(self, name: str, help: str, kind: str, labelnames: tuple[str, ...],
             callback: Callable[[], dict[tuple[str, ...], float] | float] | None) -> Metric:
        full = f"{self.prefix}_{name}"
        m = Metric(full, help, kind, labelnames, callback=callback)
        self.metrics[full] = m
        return m

    def counter(self, name: str, help: str, labelnames: tuple[str, ...] = ()) -> Metric:
        return self._add(name, help, "counter", labelnames, None)

    def gauge(self, name: str, help: str, labelnames: tuple[str, ...] = (),
              callback: Callable[[], dict[tuple[str, ...], float] | float] | None = None
              ) -> Metric:
        return self._add(name, help, "gauge", labelnames, callback)

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
        return "\n".join(out) + "\n"
