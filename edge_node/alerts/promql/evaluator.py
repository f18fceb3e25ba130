"""The evaluator: selectors over the store, function calls, and dispatch to the operators."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...errors import PromQLError
from ...model import NAME_LABEL
from .functions import extrapolated, incremental_mean, kahan_sum, quantile
from .nodes import (
    Aggregate,
    Binary,
    Call,
    MatrixSelector,
    Node,
    NumberLiteral,
    StringLiteral,
    Unary,
    VectorSelector,
)
from .operators import aggregate, binary
from .values import Labels, Queryable, Sample, drop_name

LOOKBACK_MS = 5 * 60_000
STALE_NAN_BITS = 0x7FF0000000000002  # Prometheus' staleness marker


@dataclass
class Evaluator:
    """Evaluate parsed expressions at an instant against a :class:`Queryable`."""

    store: Queryable
    lookback_ms: int = LOOKBACK_MS
    _funcs: dict[str, Callable[..., Any]] = field(default_factory=dict, init=False)

    def instant(self, node: Node, t_ms: int) -> list[Sample] | float:
        """A list of samples (instant vector) or a float (scalar)."""
        res = self._eval(node, t_ms)
        if isinstance(res, str):
            raise PromQLError("a string is not a valid result")
        return res if isinstance(res, list) else float(res)

    def _eval(self, node: Node, t: int) -> Any:
        if isinstance(node, NumberLiteral):
            return node.value
        if isinstance(node, StringLiteral):
            return node.value
        if isinstance(node, VectorSelector):
            return self._instant_vector(node, t)
        if isinstance(node, MatrixSelector):
            raise PromQLError("a range vector cannot be the result; wrap it in a function "
                              "such as rate()")
        if isinstance(node, Call):
            return self._call(node, t)
        if isinstance(node, Aggregate):
            return aggregate(node, self._eval(node.expr, t))
        if isinstance(node, Unary):
            v = self._eval(node.expr, t)
            if isinstance(v, float):
                return -v
            return [Sample(drop_name(s.labels), -s.value) for s in v]
        assert isinstance(node, Binary)
        return binary(node, self._eval(node.lhs, t), self._eval(node.rhs, t))

    def _instant_vector(self, sel: VectorSelector, t: int) -> list[Sample]:
        at = t - sel.offset_ms
        out = []
        for labels, ts, vals in self.store.select(sel.matchers, at - self.lookback_ms + 1, at):
            if not ts:
                continue
            v = vals[-1]
            if _is_stale(v):
                continue  # the series ended
            out.append(Sample(labels, v))
        return out

    def _range(self, m: MatrixSelector, t: int
               ) -> list[tuple[Labels, Sequence[int], Sequence[float]]]:
        at = t - m.vector.offset_ms
        out: list[tuple[Labels, Sequence[int], Sequence[float]]] = []
        # [t - range, t], both ends included, as in Prometheus 2.x; series in label order
        for labels, ts, vals in self.store.select(m.vector.matchers, at - m.range_ms, at):
            if any(map(math.isnan, vals)):  # rare: drop staleness markers
                keep = [(a, b) for a, b in zip(ts, vals, strict=True) if not _is_stale(b)]
                ts, vals = [a for a, _ in keep], [b for _, b in keep]
            if ts:
                out.append((labels, ts, vals))
        return out

    def _call(self, node: Call, t: int) -> Any:
        f = node.func
        if f == "time":
            return t / 1000.0
        if f == "vector":
            return [Sample((), float(self._eval(node.args[0], t)))]
        if f == "scalar":
            v = self._eval(node.args[0], t)
            return v[0].value if len(v) == 1 else math.nan
        if f == "abs":
            return [Sample(drop_name(s.labels), abs(s.value)) for s in self._eval(node.args[0], t)]
        if f == "absent":
            v = self._eval(node.args[0], t)
            arg = node.args[0]
            return [] if v else [Sample(_absent_labels(arg), 1.0)]
        if f == "quantile_over_time":
            phi = float(self._eval(node.args[0], t))
            m = node.args[1]
            assert isinstance(m, MatrixSelector)
            return [Sample(drop_name(lb), quantile(phi, list(vals)))
                    for lb, _, vals in self._range(m, t)]
        m = node.args[0]
        assert isinstance(m, MatrixSelector)
        series = self._range(m, t)
        if f == "absent_over_time":
            return [] if series else [Sample(_absent_labels(m.vector), 1.0)]
        out = []
        if m.log is not None:  # LogQL: count_over_time, or rate = lines per second
            div = m.range_ms / 1000 if f == "rate" else 1.0
            return [Sample(tuple(kv for kv in lb if kv[0] != NAME_LABEL), len(ts) / div)
                    for lb, ts, _ in series]
        for lb, ts, vals in series:
            if f in ("rate", "increase", "delta"):
                v = extrapolated(ts, vals, t - m.vector.offset_ms, m.range_ms,
                                  counter=f != "delta", per_second=f == "rate")
                if v is None:
                    continue
            elif f == "avg_over_time":
                v = incremental_mean(vals, compensated=True)
            elif f == "min_over_time":
                v = min(vals)
            elif f == "max_over_time":
                v = max(vals)
            elif f == "sum_over_time":
                v = kahan_sum(vals)
            elif f == "count_over_time":
                v = float(len(vals))
            elif f == "last_over_time":
                out.append(Sample(lb, vals[-1]))  # the one that keeps the metric name
                continue
            else:  # pragma: no cover - FUNCTIONS and this dispatch are kept in step
                raise PromQLError(f"unsupported function {f}")
            out.append(Sample(drop_name(lb), v))
        return out


def _is_stale(v: float) -> bool:
    if v == v:
        return False
    import struct

    return bool(struct.unpack("<Q", struct.pack("<d", v))[0] == STALE_NAN_BITS)


def _absent_labels(node: Node) -> Labels:
    if isinstance(node, MatrixSelector):
        node = node.vector
    if not isinstance(node, VectorSelector):
        return ()
    return tuple(sorted((m.label, m.value) for m in node.matchers
                        if m.op == "=" and m.label != NAME_LABEL))
