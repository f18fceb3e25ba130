"""The syntax tree a parsed expression is, what each function takes, and walks over the tree."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ...model import NAME_LABEL
from ...selector import Matcher


@dataclass(frozen=True)
class NumberLiteral:
    value: float


@dataclass(frozen=True)
class StringLiteral:
    value: str


@dataclass(frozen=True)
class VectorSelector:
    matchers: tuple[Matcher, ...]
    offset_ms: int = 0

    @property
    def name(self) -> str | None:
        for m in self.matchers:
            if m.label == NAME_LABEL and m.op == "=":
                return m.value
        return None


@dataclass(frozen=True)
class LogFilter:
    """A LogQL stream selector with line filters: ``{app="pump"} |~ "err|fail" != "debug"``.

    Matching lines are fed into the recent store as samples (value 1) of a series named
    :attr:`series_name` with the stream's labels, so counting them is counting samples.
    """

    matchers: tuple[Matcher, ...]
    filters: tuple[tuple[str, str], ...]  # (op, text): |= != |~ !~

    @property
    def series_name(self) -> str:
        doc = repr(([str(m) for m in self.matchers], self.filters)).encode()
        import hashlib

        return "__log_" + hashlib.sha1(doc).hexdigest()[:12]

    def matches_line(self, line: str) -> bool:
        for op, text in self.filters:
            if op == "|=" and text not in line:
                return False
            if op == "!=" and text in line:
                return False
            if op in ("|~", "!~"):
                hit = _log_regex(text).search(line) is not None
                if hit != (op == "|~"):
                    return False
        return True

    def matches_stream(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels.get(m.label, "")) for m in self.matchers)


_LOG_RE: dict[str, re.Pattern[str]] = {}


def _log_regex(text: str) -> re.Pattern[str]:
    rx = _LOG_RE.get(text)
    if rx is None:
        rx = _LOG_RE[text] = re.compile(text)
    return rx


@dataclass(frozen=True)
class MatrixSelector:
    vector: VectorSelector
    range_ms: int
    log: LogFilter | None = None  # a LogQL range over log lines


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Aggregate:
    op: str
    expr: Node
    grouping: tuple[str, ...] = ()
    without: bool = False


@dataclass(frozen=True)
class Binary:
    op: str
    lhs: Node
    rhs: Node
    return_bool: bool = False
    on: tuple[str, ...] | None = None       # on(...) labels, or None
    ignoring: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unary:
    op: str
    expr: Node


Node = (NumberLiteral | StringLiteral | VectorSelector | MatrixSelector | Call | Aggregate
        | Binary | Unary)

AGGREGATIONS = {"sum", "avg", "min", "max", "count"}
# name -> argument types ("v" instant vector, "m" range vector, "s" scalar); result type
FUNCTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "rate": (("m",), "v"), "increase": (("m",), "v"), "delta": (("m",), "v"),
    "avg_over_time": (("m",), "v"), "min_over_time": (("m",), "v"),
    "max_over_time": (("m",), "v"), "sum_over_time": (("m",), "v"),
    "count_over_time": (("m",), "v"), "last_over_time": (("m",), "v"),
    "absent_over_time": (("m",), "v"), "quantile_over_time": (("s", "m"), "v"),
    "time": ((), "s"), "vector": (("s",), "v"), "scalar": (("v",), "s"),
    "abs": (("v",), "v"), "absent": (("v",), "v"),
}
COMPARISONS = {"==", "!=", "<=", "<", ">=", ">"}
SET_OPS = {"and", "or", "unless"}


def type_of(node: Node) -> str:
    """``"s"`` scalar, ``"v"`` instant vector, ``"m"`` range vector, ``"str"`` string."""
    if isinstance(node, NumberLiteral):
        return "s"
    if isinstance(node, StringLiteral):
        return "str"
    if isinstance(node, VectorSelector):
        return "v"
    if isinstance(node, MatrixSelector):
        return "m"
    if isinstance(node, Call):
        return FUNCTIONS[node.func][1]
    if isinstance(node, Aggregate):
        return "v"
    if isinstance(node, Unary):
        return type_of(node.expr)
    return "s" if type_of(node.lhs) == "s" and type_of(node.rhs) == "s" else "v"


def log_filters(node: Node) -> list[LogFilter]:
    """Every LogQL range in ``node`` (their matching lines must be fed to the store)."""
    out: list[LogFilter] = []

    def walk(n: Node) -> None:
        if isinstance(n, MatrixSelector) and n.log is not None:
            out.append(n.log)
        for child in children(n):
            walk(child)

    walk(node)
    return out


def children(n: Node) -> tuple[Node, ...]:
    """The sub-expressions of ``n`` (none for selectors and literals)."""
    if isinstance(n, Call):
        return n.args
    if isinstance(n, Aggregate | Unary):
        return (n.expr,)
    if isinstance(n, Binary):
        return (n.lhs, n.rhs)
    return ()

