"""Prometheus series selectors (sans-IO): ``metric{label="v", other=~"re.*", x!="", y!~"a|b"}``.

The syntax is PromQL's instant-vector selector without range or offset: an optional metric name,
then optional label matchers in braces. Regular expressions are anchored (``=~"cam"`` matches
only ``cam``), and a label a series lacks has the value ``""``, as in Prometheus.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import SelectorError
from .model import NAME_LABEL

_METRIC = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_OPS = ("=~", "!~", "!=", "=")
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r"}


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # one of "=", "!=", "=~", "!~"
    value: str
    regex: re.Pattern[str] | None = None

    def matches(self, value: str) -> bool:
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        assert self.regex is not None
        hit = self.regex.fullmatch(value) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        text = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'{self.label}{self.op}"{text}"'


@dataclass(frozen=True)
class Selector:
    """A parsed selector: every matcher must match."""

    matchers: tuple[Matcher, ...]
    text: str

    @property
    def metric(self) -> str | None:
        """The metric name when the selector pins one with ``=``."""
        for m in self.matchers:
            if m.label == NAME_LABEL and m.op == "=":
                return m.value
        return None

    def matches(self, labels: Mapping[str, str]) -> bool:
        get = labels.get
        return all(m.matches(get(m.label, "")) for m in self.matchers)

    def matches_name(self, name: str) -> bool:
        """Whether the metric-name matchers alone accept ``name`` (a cheap first filter)."""
        return all(m.matches(name) for m in self.matchers if m.label == NAME_LABEL)

    def __str__(self) -> str:
        return self.text


def make_matcher(label: str, op: str, value: str) -> Matcher:
    """A matcher, compiling (and checking) the regular expression of ``=~`` / ``!~``."""
    if op not in _OPS:
        raise SelectorError(f"unknown matcher operator {op!r}")
    regex = None
    if op in ("=~", "!~"):
        try:
            regex = re.compile(value)
        except re.error as exc:
            raise SelectorError(f"label {label!r}: invalid regular expression {value!r}: "
                                f"{exc}") from None
    return Matcher(label, op, value, regex)


def parse_selector(text: str) -> Selector:
    """Parse ``text``; raises :class:`SelectorError` naming the position of the problem."""
    p = _Parser(text)
    sel = p.selector()
    p.skip_ws()
    if p.i != len(text):
        p.fail("unexpected text after the selector")
    return sel


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def fail(self, why: str) -> None:
        raise SelectorError(f"{why} at position {self.i} in {self.s!r}")

    def skip_ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i].isspace():
            self.i += 1

    def peek(self) -> str:
        self.skip_ws()
        return self.s[self.i] if self.i < len(self.s) else ""

    def selector(self) -> Selector:
        matchers: list[Matcher] = []
        self.skip_ws()
        m = _METRIC.match(self.s, self.i)
        if m:
            matchers.append(Matcher(NAME_LABEL, "=", m.group()))
            self.i = m.end()
        if self.peek() == "{":
            self.i += 1
            while self.peek() != "}":
                matchers.append(self.matcher())
                c = self.peek()
                if c == ",":
                    self.i += 1
                elif c != "}":
                    self.fail("expected ',' or '}'")
            self.i += 1
        if not matchers:
            self.fail("a selector needs a metric name or a label matcher")
        if all(_matches_empty(m) for m in matchers):
            self.fail("a selector must have at least one matcher that does not match the "
                      "empty string (it would match every series)")
        return Selector(tuple(matchers), self.s.strip())

    def matcher(self) -> Matcher:
        self.skip_ws()
        m = _LABEL.match(self.s, self.i)
        if not m:
            self.fail("expected a label name")
            raise AssertionError  # unreachable: fail raises
        label = m.group()
        self.i = m.end()
        self.skip_ws()
        for op in _OPS:
            if self.s.startswith(op, self.i):
                self.i += len(op)
                break
        else:
            self.fail(f"expected one of {', '.join(_OPS)} after {label!r}")
            raise AssertionError
        value = self.string()
        return make_matcher(label, op, value)

    def string(self) -> str:
        q = self.peek()
        if q not in ('"', "'", "`"):
            self.fail("expected a quoted string")
        self.i += 1
        out: list[str] = []
        while self.i < len(self.s):
            c = self.s[self.i]
            self.i += 1
            if c == q:
                return "".join(out)
            if c == "\\" and q != "`":
                if self.i >= len(self.s):
                    break
                e = self.s[self.i]
                self.i += 1
                if e not in _ESCAPES:
                    self.i -= 2
                    self.fail(f"unknown escape \\{e}")
                out.append(_ESCAPES[e])
            else:
                out.append(c)
        self.fail("unterminated string")
        raise AssertionError


def _matches_empty(m: Matcher) -> bool:
    return m.matches("")
