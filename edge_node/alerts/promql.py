"""A PromQL subset for alerting on the edge (sans-IO): tokens -> AST -> evaluator.

Supported (everything else is refused by name at parse time):

- instant selectors with label matchers (``=``, ``!=``, ``=~``, ``!~``) and range selectors
  ``[5m]``, both with ``offset``;
- ``rate``, ``increase``, ``delta`` (with Prometheus' extrapolation), ``avg_over_time``,
  ``min_over_time``, ``max_over_time``, ``sum_over_time``, ``count_over_time``,
  ``last_over_time``, ``absent_over_time``, ``quantile_over_time``, plus ``time()``,
  ``vector(s)``, ``scalar(v)``, ``abs``, ``absent``;
- aggregations ``sum``, ``avg``, ``min``, ``max``, ``count`` with ``by (...)`` / ``without (...)``
  before or after the argument;
- arithmetic ``+ - * / % ^`` and comparisons ``== != > < >= <=`` (with ``bool``) between scalars,
  a vector and a scalar, or two vectors matched one-to-one on their labels (``on (...)`` /
  ``ignoring (...)`` narrow the match); set operators ``and``, ``or``, ``unless``; unary minus;
  parentheses.

Semantics follow Prometheus: an instant selector takes each series' newest sample within the
5-minute lookback before the evaluation time (a staleness marker ends a series); functions,
arithmetic and aggregations drop the metric name; comparisons filter (or give 0/1 with
``bool``).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import PromQLError, SelectorError
from ..model import NAME_LABEL
from ..selector import Matcher, make_matcher

LOOKBACK_MS = 5 * 60_000
STALE_NAN_BITS = 0x7FF0000000000002  # Prometheus' staleness marker

Labels = tuple[tuple[str, str], ...]


# -- tokens ---------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+)(?![\w.])
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[iI][nN][fF]|[nN][aA][nN])
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<op>\|=|\|~|=~|!~|==|!=|>=|<=|[-+*/%^<>=(){}\[\],])
""", re.VERBOSE)

_ESC = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}


@dataclass(frozen=True)
class Token:
    kind: str  # duration | number | ident | string | op | eof
    text: str
    pos: int


def tokenize(src: str) -> list[Token]:
    out: list[Token] = []
    pos = 0
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m:
            raise PromQLError(f"unexpected character {src[pos]!r} at position {pos}")
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append(Token(kind, m.group(), pos))
        pos = m.end()
    out.append(Token("eof", "", len(src)))
    return out


def _unquote(text: str) -> str:
    if text[0] == "`":
        return text[1:-1]
    body, res, i = text[1:-1], [], 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            res.append(_ESC.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            res.append(c)
            i += 1
    return "".join(res)


def parse_duration_ms(text: str) -> int:
    units = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
             "w": 604_800_000, "y": 31_536_000_000}
    total = 0
    for num, unit in re.findall(r"(\d+)(ms|[smhdwy])", text):
        total += int(num) * units[unit]
    return total


# -- AST ------------------------------------------------------------------------------------------

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
# binary operator precedence, lowest first; ^ is right-associative
_PRECEDENCE = [("or",), ("and", "unless"), ("==", "!=", "<=", "<", ">=", ">"), ("+", "-"),
               ("*", "/", "%"), ("^",)]
_COMPARISONS = {"==", "!=", "<=", "<", ">=", ">"}
_SET_OPS = {"and", "or", "unless"}
_KNOWN_UNSUPPORTED = {
    "topk", "bottomk", "stddev", "stdvar", "quantile", "count_values", "group",
    "histogram_quantile",
    "irate", "idelta", "deriv", "predict_linear", "label_replace", "label_join", "sort",
    "sort_desc", "clamp", "clamp_min", "clamp_max", "round", "ceil", "floor", "exp", "ln",
    "log2", "log10", "sqrt", "changes", "resets", "holt_winters", "timestamp", "day_of_week",
    "hour", "minute", "month", "year", "days_in_month", "day_of_month", "stddev_over_time",
    "stdvar_over_time", "present_over_time", "group_left", "group_right", "atan2",
}


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


# -- parser ---------------------------------------------------------------------------------------

class _Parser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.toks = tokenize(src)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.toks[self.i]

    def fail(self, why: str, tok: Token | None = None) -> PromQLError:
        t = tok or self.tok
        return PromQLError(f"{why} at position {t.pos} in {self.src!r}")

    def next(self) -> Token:
        t = self.toks[self.i]
        self.i += 1
        return t

    def accept(self, text: str) -> bool:
        if self.tok.kind in ("op", "ident") and self.tok.text == text:
            self.i += 1
            return True
        return False

    def expect(self, text: str) -> None:
        if not self.accept(text):
            raise self.fail(f"expected {text!r}, found {self.tok.text or 'the end'!r}")

    def parse(self) -> Node:
        node = self.expr(0)
        if self.tok.kind != "eof":
            raise self.fail(f"unexpected {self.tok.text!r}")
        return node

    def _binop_here(self, level: int) -> str | None:
        t = self.tok
        if t.kind == "op" and t.text in _PRECEDENCE[level]:
            return t.text
        if t.kind == "ident" and t.text.lower() in _PRECEDENCE[level]:
            return t.text.lower()
        return None

    def expr(self, level: int) -> Node:
        if level == len(_PRECEDENCE):
            return self.unary()
        lhs = self.expr(level + 1)
        while (op := self._binop_here(level)) is not None:
            op_tok = self.next()
            return_bool = False
            if self.tok.kind == "ident" and self.tok.text == "bool":
                if op not in _COMPARISONS:
                    raise self.fail("bool is only allowed after a comparison")
                self.next()
                return_bool = True
            on: tuple[str, ...] | None = None
            ignoring: tuple[str, ...] = ()
            if self.tok.kind == "ident" and self.tok.text in ("on", "ignoring"):
                which = self.next().text
                labels = self.label_list()
                if which == "on":
                    on = labels
                else:
                    ignoring = labels
            if self.tok.kind == "ident" and self.tok.text in ("group_left", "group_right"):
                raise self.fail(f"{self.tok.text} (many-to-one matching) is not supported")
            # ^ is right-associative: parse its right side at the same level
            rhs = self.expr(level) if op == "^" else self.expr(level + 1)
            lhs = self._binary(op, lhs, rhs, return_bool, on, ignoring, op_tok)
        return lhs

    def _binary(self, op: str, lhs: Node, rhs: Node, return_bool: bool,
                on: tuple[str, ...] | None, ignoring: tuple[str, ...], tok: Token) -> Node:
        lt, rt = type_of(lhs), type_of(rhs)
        if "m" in (lt, rt) or "str" in (lt, rt):
            raise self.fail(f"operator {op!r} needs scalars or instant vectors", tok)
        if op in _SET_OPS and (lt != "v" or rt != "v"):
            raise self.fail(f"set operator {op!r} needs instant vectors on both sides", tok)
        if op in _COMPARISONS and lt == "s" and rt == "s" and not return_bool:
            raise self.fail("comparisons between scalars need the bool modifier", tok)
        return Binary(op, lhs, rhs, return_bool, on, ignoring)

    def unary(self) -> Node:
        if self.tok.kind == "op" and self.tok.text in ("-", "+"):
            op = self.next().text
            # as in Prometheus, -a^b is -(a^b): the sign binds looser than ^
            inner = self.expr(len(_PRECEDENCE) - 1)
            if isinstance(inner, NumberLiteral):
                return NumberLiteral(-inner.value if op == "-" else inner.value)
            return inner if op == "+" else Unary("-", inner)
        return self.postfix(self.primary())

    def postfix(self, node: Node) -> Node:
        while True:
            if self.tok.kind == "op" and self.tok.text == "[":
                if not isinstance(node, VectorSelector):
                    raise self.fail("a range [..] needs a series selector before it "
                                    "(subqueries are not supported)")
                self.next()
                if self.tok.kind != "duration":
                    raise self.fail("expected a duration like 5m")
                rng = parse_duration_ms(self.next().text)
                if self.tok.text.startswith(":"):
                    raise self.fail("subqueries are not supported")
                self.expect("]")
                node = MatrixSelector(node, rng)
            elif self.tok.kind == "ident" and self.tok.text == "offset":
                self.next()
                neg = self.accept("-")
                if self.tok.kind != "duration":
                    raise self.fail("expected a duration after offset")
                off = parse_duration_ms(self.next().text) * (-1 if neg else 1)
                if isinstance(node, VectorSelector):
                    node = VectorSelector(node.matchers, node.offset_ms + off)
                elif isinstance(node, MatrixSelector):
                    node = MatrixSelector(VectorSelector(node.vector.matchers,
                                                         node.vector.offset_ms + off),
                                          node.range_ms)
                else:
                    raise self.fail("offset must follow a series selector")
            else:
                return node

    def log_range(self, sel: VectorSelector) -> MatrixSelector:
        filters: list[tuple[str, str]] = []
        while self.tok.kind == "op" and self.tok.text in ("|=", "|~", "!=", "!~"):
            op = self.next().text
            if self.tok.kind != "string":
                raise self.fail("expected a quoted string after a line filter")
            text = _unquote(self.next().text)
            if op in ("|~", "!~"):
                try:
                    re.compile(text)
                except re.error as exc:
                    raise self.fail(f"invalid regular expression {text!r}: {exc}") from None
            filters.append((op, text))
        if not (self.tok.kind == "op" and self.tok.text == "["):
            raise self.fail("a log stream selector needs a range, e.g. [5m]")
        self.next()
        if self.tok.kind != "duration":
            raise self.fail("expected a duration like 5m")
        rng = parse_duration_ms(self.next().text)
        self.expect("]")
        log = LogFilter(sel.matchers, tuple(filters))
        vector = VectorSelector((make_matcher(NAME_LABEL, "=", log.series_name), *sel.matchers))
        return MatrixSelector(vector, rng, log)

    def label_list(self) -> tuple[str, ...]:
        self.expect("(")
        names: list[str] = []
        while not self.accept(")"):
            if self.tok.kind != "ident":
                raise self.fail("expected a label name")
            names.append(self.next().text)
            if not self.accept(","):
                self.expect(")")
                break
        return tuple(names)

    def primary(self) -> Node:
        t = self.tok
        if t.kind == "number":
            self.next()
            return NumberLiteral(float(int(t.text, 16)) if t.text.lower().startswith("0x")
                                 else float(t.text))
        if t.kind == "duration":
            raise self.fail(f"a duration ({t.text}) is only allowed in [..] or after offset")
        if t.kind == "string":
            self.next()
            return StringLiteral(_unquote(t.text))
        if t.kind == "op" and t.text == "(":
            self.next()
            inner = self.expr(0)
            self.expect(")")
            return inner
        if t.kind == "op" and t.text == "{":
            sel = self.selector(None)
            if self.tok.kind == "op" and self.tok.text in ("|=", "|~", "!=", "!~") and \
                    self.toks[self.i + 1].kind == "string":
                return self.log_range(sel)
            return sel
        if t.kind == "ident":
            name = t.text
            low = name.lower()
            nxt = self.toks[self.i + 1]
            if low in AGGREGATIONS and (nxt.text in ("(",) or nxt.text in ("by", "without")):
                return self.aggregation(low)
            if nxt.kind == "op" and nxt.text == "(":
                if name in FUNCTIONS:
                    return self.call(name)
                if name in _KNOWN_UNSUPPORTED or low in _KNOWN_UNSUPPORTED:
                    raise self.fail(f"{name}() is not in the supported PromQL subset")
                raise self.fail(f"unknown function {name}()")
            if name in _KNOWN_UNSUPPORTED and nxt.text in ("by", "without"):
                raise self.fail(f"aggregation {name} is not in the supported PromQL subset")
            self.next()
            return self.selector(name)
        raise self.fail(f"unexpected {t.text or 'end of expression'!r}")

    def selector(self, name: str | None) -> VectorSelector:
        matchers: list[Matcher] = []
        if name is not None:
            matchers.append(make_matcher(NAME_LABEL, "=", name))
        if self.accept("{"):
            while not self.accept("}"):
                if self.tok.kind != "ident":
                    raise self.fail("expected a label name")
                label = self.next().text
                op = self.tok.text if self.tok.kind == "op" else ""
                if op not in ("=", "!=", "=~", "!~"):
                    raise self.fail(f"expected a matcher operator after {label!r}")
                self.next()
                if self.tok.kind != "string":
                    raise self.fail("expected a quoted string")
                value = _unquote(self.next().text)
                try:
                    matchers.append(make_matcher(label, op, value))
                except SelectorError as exc:
                    raise self.fail(str(exc)) from None
                if not self.accept(","):
                    self.expect("}")
                    break
        if not matchers or all(m.matches("") for m in matchers):
            raise self.fail("a selector needs a metric name or a matcher that does not match "
                            "the empty string")
        return VectorSelector(tuple(matchers))

    def call(self, name: str) -> Call:
        self.next()
        self.expect("(")
        args: list[Node] = []
        while not self.accept(")"):
            args.append(self.expr(0))
            if not self.accept(","):
                self.expect(")")
                break
        want, _ = FUNCTIONS[name]
        if any(isinstance(a, MatrixSelector) and a.log is not None for a in args) and \
                name not in ("count_over_time", "rate"):
            raise self.fail(f"{name}() does not apply to log lines (count_over_time and rate "
                            "do)")
        if len(args) != len(want):
            raise self.fail(f"{name}() takes {len(want)} argument(s), got {len(args)}")
        for k, (a, w) in enumerate(zip(args, want, strict=True)):
            if type_of(a) != w:
                kinds = {"s": "a scalar", "v": "an instant vector", "m": "a range vector "
                         "like x[5m]", "str": "a string"}
                raise self.fail(f"argument {k + 1} of {name}() must be {kinds[w]}, got "
                                f"{kinds[type_of(a)]}")
        return Call(name, tuple(args))

    def aggregation(self, op: str) -> Aggregate:
        self.next()
        grouping: tuple[str, ...] = ()
        without = False
        if self.tok.kind == "ident" and self.tok.text in ("by", "without"):
            without = self.next().text == "without"
            grouping = self.label_list()
        self.expect("(")
        inner = self.expr(0)
        if self.accept(","):
            raise self.fail(f"{op}() takes one argument")
        self.expect(")")
        if self.tok.kind == "ident" and self.tok.text in ("by", "without"):
            if grouping:
                raise self.fail("by/without given twice")
            without = self.next().text == "without"
            grouping = self.label_list()
        if type_of(inner) != "v":
            raise self.fail(f"{op}() needs an instant vector")
        return Aggregate(op, inner, grouping, without)


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


def parse(src: str) -> Node:
    """Parse ``src``; :class:`PromQLError` says what and where for anything unsupported."""
    if not src.strip():
        raise PromQLError("empty expression")
    return _Parser(src).parse()


# -- evaluation -----------------------------------------------------------------------------------

class Queryable(Protocol):
    """Where the evaluator reads samples from (the edge's in-memory recent store)."""

    def select(self, matchers: Sequence[Matcher], start_ms: int, end_ms: int
               ) -> Iterable[tuple[Labels, Sequence[int], Sequence[float]]]:
        """Series matching ``matchers`` with their samples in [start_ms, end_ms], in time
        order, the series in label order (as Prometheus iterates them: sums add up in the
        same order); series without samples there may be left out."""
        ...


@dataclass
class Sample:
    labels: Labels
    value: float


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
            return _aggregate(node, self._eval(node.expr, t))
        if isinstance(node, Unary):
            v = self._eval(node.expr, t)
            if isinstance(v, float):
                return -v
            return [Sample(_drop_name(s.labels), -s.value) for s in v]
        assert isinstance(node, Binary)
        return _binary(node, self._eval(node.lhs, t), self._eval(node.rhs, t))

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
            return [Sample(_drop_name(s.labels), abs(s.value)) for s in self._eval(node.args[0], t)]
        if f == "absent":
            v = self._eval(node.args[0], t)
            arg = node.args[0]
            return [] if v else [Sample(_absent_labels(arg), 1.0)]
        if f == "quantile_over_time":
            phi = float(self._eval(node.args[0], t))
            m = node.args[1]
            assert isinstance(m, MatrixSelector)
            return [Sample(_drop_name(lb), _quantile(phi, list(vals)))
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
                v = _extrapolated(ts, vals, t - m.vector.offset_ms, m.range_ms,
                                  counter=f != "delta", per_second=f == "rate")
                if v is None:
                    continue
            elif f == "avg_over_time":
                v = _mean(vals, compensated=True)
            elif f == "min_over_time":
                v = min(vals)
            elif f == "max_over_time":
                v = max(vals)
            elif f == "sum_over_time":
                v = _kahan_sum(vals)
            elif f == "count_over_time":
                v = float(len(vals))
            elif f == "last_over_time":
                out.append(Sample(lb, vals[-1]))  # the one that keeps the metric name
                continue
            else:  # pragma: no cover - FUNCTIONS and this dispatch are kept in step
                raise PromQLError(f"unsupported function {f}")
            out.append(Sample(_drop_name(lb), v))
        return out


def _is_stale(v: float) -> bool:
    if v == v:
        return False
    import struct

    return bool(struct.unpack("<Q", struct.pack("<d", v))[0] == STALE_NAN_BITS)


def _drop_name(labels: Labels) -> Labels:
    if labels and labels[0][0] == NAME_LABEL:  # the usual case: sorted, lower-case names
        return labels[1:]
    return tuple(kv for kv in labels if kv[0] != NAME_LABEL)


def _absent_labels(node: Node) -> Labels:
    if isinstance(node, MatrixSelector):
        node = node.vector
    if not isinstance(node, VectorSelector):
        return ()
    return tuple(sorted((m.label, m.value) for m in node.matchers
                        if m.op == "=" and m.label != NAME_LABEL))


def _sum(vals: Iterable[float]) -> float:
    total = 0.0
    for v in vals:  # in order, as Prometheus adds
        total += v
    return total


def _kahan_inc(inc: float, total: float, c: float) -> tuple[float, float]:
    t = total + inc
    if abs(total) >= abs(inc):  # Neumaier's variant
        c += (total - t) + inc
    else:
        c += (inc - t) + total
    return t, c


def _kahan_sum(vals: Sequence[float]) -> float:
    """Compensated sum, as Prometheus' sum_over_time."""
    total = c = 0.0
    for v in vals:
        total, c = _kahan_inc(v, total, c)
    return total if math.isinf(total) else total + c


def _mean(vals: Sequence[float], *, compensated: bool) -> float:
    """Prometheus' incremental mean (no overflow for large values), infinities kept;
    ``compensated`` as avg_over_time (Kahan-Neumaier), plain as the avg aggregation."""
    mean = count = c = 0.0
    for v in vals:
        count += 1
        if math.isinf(mean):
            if math.isinf(v) and (mean > 0) == (v > 0):
                continue
            if not math.isinf(v) and not math.isnan(v):
                continue
        if compensated:
            mean, c = _kahan_inc(v / count - mean / count, mean, c)
        else:
            mean += v / count - mean / count
    return mean if math.isinf(mean) else mean + c


def _extrapolated(ts: Sequence[int], vals: Sequence[float], end_ms: int, range_ms: int, *,
                  counter: bool, per_second: bool) -> float | None:
    """Prometheus' extrapolatedRate: rate / increase / delta over the samples in the range."""
    if len(ts) < 2:
        return None
    result = vals[-1] - vals[0]
    if counter:
        for a, b in itertools.pairwise(vals):
            if b < a:
                result += a
    start_ms = end_ms - range_ms
    to_start = (ts[0] - start_ms) / 1000
    to_end = (end_ms - ts[-1]) / 1000
    sampled = (ts[-1] - ts[0]) / 1000
    if sampled <= 0:
        return None
    avg_step = sampled / (len(ts) - 1)
    if counter and result > 0 and vals[0] >= 0:
        to_zero = sampled * (vals[0] / result)
        to_start = min(to_start, to_zero)
    threshold = avg_step * 1.1
    interval = sampled
    interval += to_start if to_start < threshold else avg_step / 2
    interval += to_end if to_end < threshold else avg_step / 2
    factor = interval / sampled  # the order of operations of Prometheus 2.4x, bit for bit
    if per_second:
        factor /= range_ms / 1000
    return result * factor


def _quantile(phi: float, vals: list[float]) -> float:
    """Prometheus' quantile: linear interpolation between the closest ranks."""
    if not vals:
        return math.nan
    if phi < 0:
        return -math.inf
    if phi > 1:
        return math.inf
    s = sorted(vals)
    rank = phi * (len(s) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(s) - 1)
    w = rank - lo
    return s[lo] * (1 - w) + s[hi] * w


def _group_key(labels: Labels, grouping: tuple[str, ...], without: bool) -> Labels:
    if without:
        drop = set(grouping) | {NAME_LABEL}
        return tuple(kv for kv in labels if kv[0] not in drop)
    keep = set(grouping)
    return tuple(kv for kv in labels if kv[0] in keep)


def _aggregate(node: Aggregate, vec: list[Sample]) -> list[Sample]:
    groups: dict[Labels, list[float]] = {}
    for s in vec:
        groups.setdefault(_group_key(s.labels, node.grouping, node.without), []).append(s.value)
    out = []
    for key, vals in groups.items():
        if node.op == "sum":
            v = _sum(vals)
        elif node.op == "avg":
            v = _mean(vals, compensated=False)
        elif node.op == "min":
            v = min(vals, key=lambda x: (math.isnan(x), x))
        elif node.op == "max":
            v = max(vals, key=lambda x: (not math.isnan(x), x))
        else:
            v = float(len(vals))
        out.append(Sample(key, v))
    return out


def _arith(op: str, a: float, b: float) -> float:
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


def _compare(op: str, a: float, b: float) -> bool:
    return {"==": a == b, "!=": a != b, ">": a > b, "<": a < b, ">=": a >= b,
            "<=": a <= b}[op]


def _signature(labels: Labels, node: Binary) -> Labels:
    if node.on is not None:
        keep = set(node.on)
        return tuple(kv for kv in labels if kv[0] in keep)
    drop = set(node.ignoring) | {NAME_LABEL}
    return tuple(kv for kv in labels if kv[0] not in drop)


def _binary(node: Binary, lhs: Any, rhs: Any) -> Any:
    op = node.op
    comparison = op in _COMPARISONS
    if isinstance(lhs, float) and isinstance(rhs, float):
        if comparison:
            return 1.0 if _compare(op, lhs, rhs) else 0.0
        return _arith(op, lhs, rhs)
    if op in _SET_OPS:
        rsigs = {_signature(s.labels, node) for s in rhs}
        if op == "and":
            return [s for s in lhs if _signature(s.labels, node) in rsigs]
        if op == "unless":
            return [s for s in lhs if _signature(s.labels, node) not in rsigs]
        lsigs = {_signature(s.labels, node) for s in lhs}
        return list(lhs) + [s for s in rhs if _signature(s.labels, node) not in lsigs]
    if isinstance(lhs, float) or isinstance(rhs, float):
        scalar_left = isinstance(lhs, float)
        vec = rhs if scalar_left else lhs
        k = lhs if scalar_left else rhs
        out = []
        for s in vec:
            a, b = (k, s.value) if scalar_left else (s.value, k)
            if comparison:
                hit = _compare(op, a, b)
                if node.return_bool:
                    out.append(Sample(_drop_name(s.labels), 1.0 if hit else 0.0))
                elif hit:
                    out.append(Sample(s.labels, s.value))
            else:
                out.append(Sample(_drop_name(s.labels), _arith(op, a, b)))
        return out
    # vector op vector: one-to-one on the matching labels
    right: dict[Labels, Sample] = {}
    for s in rhs:
        sig = _signature(s.labels, node)
        if sig in right:
            raise PromQLError(f"many-to-one matching: several right-hand series share "
                              f"the labels {dict(sig)} (narrow with on(...) or ignoring(...))")
        right[sig] = s
    out, seen = [], set()
    for s in lhs:
        sig = _signature(s.labels, node)
        other = right.get(sig)
        if other is None:
            continue
        if sig in seen:
            raise PromQLError(f"many-to-one matching: several left-hand series share the "
                              f"labels {dict(sig)}")
        seen.add(sig)
        if comparison:
            hit = _compare(op, s.value, other.value)
            if node.return_bool:
                out.append(Sample(_drop_name(s.labels), 1.0 if hit else 0.0))
            elif hit:
                out.append(Sample(s.labels, s.value))
        else:
            # as Prometheus: on(...) keeps those labels, ignoring(...) drops those (and the name)
            out.append(Sample(sig, _arith(op, s.value, other.value)))
    return out
