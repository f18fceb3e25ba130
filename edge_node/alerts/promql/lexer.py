"""PromQL's tokens: the lexer, string literals and durations (sans-IO)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...errors import PromQLError

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
    """The tokens of ``src`` (whitespace and comments dropped), ending with ``eof``."""
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


def unquote(text: str) -> str:
    """The value of a quoted string token (escapes resolved; backquotes are raw)."""
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
    """``5m``, ``1h30m``, ``250ms``... in milliseconds."""
    units = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
             "w": 604_800_000, "y": 31_536_000_000}
    total = 0
    for num, unit in re.findall(r"(\d+)(ms|[smhdwy])", text):
        total += int(num) * units[unit]
    return total

