"""Tokens -> syntax tree, refusing by name what is outside the subset (sans-IO)."""

from __future__ import annotations

import re

from ...errors import PromQLError, SelectorError
from ...model import NAME_LABEL
from ...selector import Matcher, make_matcher
from .lexer import Token, parse_duration_ms, tokenize, unquote
from .nodes import (
    AGGREGATIONS,
    COMPARISONS,
    FUNCTIONS,
    SET_OPS,
    Aggregate,
    Binary,
    Call,
    LogFilter,
    MatrixSelector,
    Node,
    NumberLiteral,
    StringLiteral,
    Unary,
    VectorSelector,
    type_of,
)

# binary operator precedence, lowest first; ^ is right-associative
_PRECEDENCE = [("or",), ("and", "unless"), ("==", "!=", "<=", "<", ">=", ">"), ("+", "-"),
               ("*", "/", "%"), ("^",)]
_KNOWN_UNSUPPORTED = {
    "topk", "bottomk", "stddev", "stdvar", "quantile", "count_values", "group",
    "histogram_quantile",
    "irate", "idelta", "deriv", "predict_linear", "label_replace", "label_join", "sort",
    "sort_desc", "clamp", "clamp_min", "clamp_max", "round", "ceil", "floor", "exp", "ln",
    "log2", "log10", "sqrt", "changes", "resets", "holt_winters", "timestamp", "day_of_week",
    "hour", "minute", "month", "year", "days_in_month", "day_of_month", "stddev_over_time",
    "stdvar_over_time", "present_over_time", "group_left", "group_right", "atan2",
}


def parse(src: str) -> Node:
    """Parse ``src``; :class:`PromQLError` says what and where for anything unsupported."""
    if not src.strip():
        raise PromQLError("empty expression")
    return _Parser(src).parse()


class _Parser:
    """Recursive descent over the tokens, one method per grammar rule."""

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
                if op not in COMPARISONS:
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
        if op in SET_OPS and (lt != "v" or rt != "v"):
            raise self.fail(f"set operator {op!r} needs instant vectors on both sides", tok)
        if op in COMPARISONS and lt == "s" and rt == "s" and not return_bool:
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
            text = unquote(self.next().text)
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
            return StringLiteral(unquote(t.text))
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
                value = unquote(self.next().text)
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

