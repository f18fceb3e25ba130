"""Aggregation by label groups and the binary operators: arithmetic, comparisons, set
operators and one-to-one vector matching (``on`` / ``ignoring``)."""

from __future__ import annotations

import math
from typing import Any

from ...errors import PromQLError
from ...model import NAME_LABEL
from .functions import incremental_mean, sum_in_order
from .nodes import COMPARISONS, SET_OPS, Aggregate, Binary
from .values import Labels, Sample, drop_name


def group_key(labels: Labels, grouping: tuple[str, ...], without: bool) -> Labels:
    """The labels ``by (...)`` keeps or ``without (...)`` leaves (and the name)."""
    if without:
        drop = set(grouping) | {NAME_LABEL}
        return tuple(kv for kv in labels if kv[0] not in drop)
    keep = set(grouping)
    return tuple(kv for kv in labels if kv[0] in keep)


def aggregate(node: Aggregate, vec: list[Sample]) -> list[Sample]:
    """``sum``/``avg``/``min``/``max``/``count`` of ``vec`` per label group, groups in order
    of first appearance."""
    groups: dict[Labels, list[float]] = {}
    for s in vec:
        groups.setdefault(group_key(s.labels, node.grouping, node.without), []).append(s.value)
    out = []
    for key, vals in groups.items():
        if node.op == "sum":
            v = sum_in_order(vals)
        elif node.op == "avg":
            v = incremental_mean(vals, compensated=False)
        elif node.op == "min":
            v = min(vals, key=lambda x: (math.isnan(x), x))
        elif node.op == "max":
            v = max(vals, key=lambda x: (not math.isnan(x), x))
        else:
            v = float(len(vals))
        out.append(Sample(key, v))
    return out


def arith(op: str, a: float, b: float) -> float:
    """``a op b`` for ``+ - * / % ^`` with Prometheus' (Go's) results for 0, inf and NaN."""
    try:
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return a / b if b != 0 else (math.nan if a == 0 or a != a else math.copysign(
                math.inf, a) * math.copysign(1, b))
        if op == "%":
            return math.fmod(a, b) if b != 0 else math.nan
        if op == "^":
            return float(a ** b)
    except (OverflowError, ValueError, ZeroDivisionError):
        return math.nan
    raise PromQLError(f"unknown operator {op}")


def compare(op: str, a: float, b: float) -> bool:
    return {"==": a == b, "!=": a != b, ">": a > b, "<": a < b, ">=": a >= b,
            "<=": a <= b}[op]


def signature(labels: Labels, node: Binary) -> Labels:
    """The labels two series are matched on: ``on (...)``, or all but ``ignoring (...)``."""
    if node.on is not None:
        keep = set(node.on)
        return tuple(kv for kv in labels if kv[0] in keep)
    drop = set(node.ignoring) | {NAME_LABEL}
    return tuple(kv for kv in labels if kv[0] not in drop)


def binary(node: Binary, lhs: Any, rhs: Any) -> Any:
    """``lhs op rhs`` for evaluated operands (floats or lists of samples)."""
    op = node.op
    comparison = op in COMPARISONS
    if isinstance(lhs, float) and isinstance(rhs, float):
        if comparison:
            return 1.0 if compare(op, lhs, rhs) else 0.0
        return arith(op, lhs, rhs)
    if op in SET_OPS:
        rsigs = {signature(s.labels, node) for s in rhs}
        if op == "and":
            return [s for s in lhs if signature(s.labels, node) in rsigs]
        if op == "unless":
            return [s for s in lhs if signature(s.labels, node) not in rsigs]
        lsigs = {signature(s.labels, node) for s in lhs}
        return list(lhs) + [s for s in rhs if signature(s.labels, node) not in lsigs]
    if isinstance(lhs, float) or isinstance(rhs, float):
        scalar_left = isinstance(lhs, float)
        vec = rhs if scalar_left else lhs
        k = lhs if scalar_left else rhs
        out = []
        for s in vec:
            a, b = (k, s.value) if scalar_left else (s.value, k)
            if comparison:
                hit = compare(op, a, b)
                if node.return_bool:
                    out.append(Sample(drop_name(s.labels), 1.0 if hit else 0.0))
                elif hit:
                    out.append(Sample(s.labels, s.value))
            else:
                out.append(Sample(drop_name(s.labels), arith(op, a, b)))
        return out
    # vector op vector: one-to-one on the matching labels
    right: dict[Labels, Sample] = {}
    for s in rhs:
        sig = signature(s.labels, node)
        if sig in right:
            raise PromQLError(f"many-to-one matching: several right-hand series share "
                              f"the labels {dict(sig)} (narrow with on(...) or ignoring(...))")
        right[sig] = s
    out, seen = [], set()
    for s in lhs:
        sig = signature(s.labels, node)
        other = right.get(sig)
        if other is None:
            continue
        if sig in seen:
            raise PromQLError(f"many-to-one matching: several left-hand series share the "
                              f"labels {dict(sig)}")
        seen.add(sig)
        if comparison:
            hit = compare(op, s.value, other.value)
            if node.return_bool:
                out.append(Sample(drop_name(s.labels), 1.0 if hit else 0.0))
            elif hit:
                out.append(Sample(s.labels, s.value))
        else:
            # as Prometheus: on(...) keeps those labels, ignoring(...) drops those (and the name)
            out.append(Sample(sig, arith(op, s.value, other.value)))
    return out
