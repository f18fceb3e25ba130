"""Prometheus text exposition format, as ``POST /api/v1/import/prometheus`` takes it (sans-IO).

One sample per line::

    # HELP and # TYPE lines and other comments are skipped
    metric_name{label="value",other="a \\"quoted\\" \\\\ value\\n"} 12.5 1795839600000
    metric_name 3

The value is a float (``NaN``, ``+Inf``, ``-Inf`` included); the optional timestamp is Unix
milliseconds (the receive time when absent). Label values use the format's escapes (``\\\\``,
``\\"``, ``\\n``). Any malformed line refuses the whole request with a 400 naming the line.
"""

from __future__ import annotations

import math
import re

from ..config import IngestConfig
from ..errors import BadRequest
from ..model import IngestBatch, SeriesKey
from .common import SeriesBuilder, bounded, text_lines

_SIMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)[ \t]+(\S+)(?:[ \t]+(\S+))?[ \t]*\Z")
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*\"")
_SPECIAL = {"nan": math.nan, "+inf": math.inf, "inf": math.inf, "-inf": -math.inf}
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def parse_value(text: str, where: str) -> float:
    special = _SPECIAL.get(text.lower())
    if special is not None:
        return special
    try:
        return float(text)
    except ValueError:
        raise BadRequest(f"value {text!r} is not a number", field=where) from None


def parse_timestamp(text: str | None, now_ms: int, where: str) -> int:
    if text is None:
        return now_ms
    if not text.lstrip("-").isdigit():
        raise BadRequest(f"timestamp {text!r} is not an integer of milliseconds", field=where)
    ts = int(text)
    if ts < 0:
        raise BadRequest(f"timestamp {ts} is negative", field=where)
    return ts


def parse_label_set(line: str, pos: int, where: str) -> tuple[tuple[tuple[str, str], ...], int]:
    """Parse ``{...}`` starting at ``line[pos] == "{"``; returns labels and the index after."""
    out: list[tuple[str, str]] = []
    pos += 1
    n = len(line)
    while True:
        while pos < n and line[pos] in " \t":
            pos += 1
        if pos < n and line[pos] == "}":
            return tuple(out), pos + 1
        m = _LABEL.match(line, pos)
        if m is None:
            raise BadRequest("expected label=\"value\" or '}'", field=where)
        key = m.group(1)
        pos = m.end()
        chars: list[str] = []
        while True:
            if pos >= n:
                raise BadRequest(f"label {key!r}: unterminated value", field=where)
            c = line[pos]
            if c == '"':
                pos += 1
                break
            if c == "\\":
                if pos + 1 >= n or line[pos + 1] not in _ESCAPES:
                    raise BadRequest(f"label {key!r}: invalid escape in value", field=where)
                chars.append(_ESCAPES[line[pos + 1]])
                pos += 2
                continue
            chars.append(c)
            pos += 1
        out.append((key, "".join(chars)))
        while pos < n and line[pos] in " \t":
            pos += 1
        if pos < n and line[pos] == ",":
            pos += 1
            continue
        if pos < n and line[pos] == "}":
            return tuple(out), pos + 1
        raise BadRequest("expected ',' or '}' after a label value", field=where)


class TextParser:
    """Parses exposition bodies, remembering the series key of each distinct series text
    (``name{labels}``) it has seen: devices send the same series every time, so after the first
    request a line costs a dictionary lookup and two number conversions."""

    def __init__(self, cfg: IngestConfig, target: dict[str, str] | None = None,
                 max_cached: int = 1_000_000) -> None:
        self.cfg = cfg
        self.target = target
        self.max_cached = max_cached
        self._keys: dict[str, SeriesKey] = {}

    def parse(self, body: bytes, now_ms: int, *, allow_empty: bool = False) -> IngestBatch:
        """Parse a whole (decompressed) request body; every error names its line.

        ``allow_empty`` accepts a body without samples (a scrape of an idle exporter)."""
        lines = text_lines(body)
        cache = bounded(self._keys, self.max_cached)
        builder = SeriesBuilder(self.cfg, self.target)
        out = IngestBatch()
        for lineno, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line[0] == "#":
                continue
            close = line.rfind("}")
            if close < 0:
                if "{" in line:
                    raise BadRequest("labels are not closed: expected '}'",
                                     field=f"line {lineno}")
                m = _SIMPLE.match(line)
                if m is None:
                    first = line.split()[0]
                    if _NAME.fullmatch(first) is None:
                        raise BadRequest(f"invalid metric name {first!r}",
                                         field=f"line {lineno}")
                    raise BadRequest("expected 'name value [timestamp]'", field=f"line {lineno}")
                series, value_s, ts_s = m.group(1), m.group(2), m.group(3)
            else:
                series = line[:close + 1]
                rest = line[close + 1:].split()
                if not 1 <= len(rest) <= 2 or line[close + 1:close + 2] not in (" ", "\t"):
                    raise BadRequest("expected 'value [timestamp]' after the labels",
                                     field=f"line {lineno}")
                value_s, ts_s = rest[0], rest[1] if len(rest) == 2 else None
            key = cache.get(series)
            if key is None:
                key = cache[series] = self._key(series, builder, f"line {lineno}")
            where = f"line {lineno}"
            builder.add(out, key, parse_timestamp(ts_s, now_ms, where),
                        parse_value(value_s, where))
        return out if allow_empty else builder.finish(out)

    @staticmethod
    def _key(series: str, builder: SeriesBuilder, where: str) -> SeriesKey:
        nm = _NAME.match(series)
        if nm is None:
            raise BadRequest("expected a metric name", field=where)
        name, pos = nm.group(0), nm.end()
        labels: tuple[tuple[str, str], ...] = ()
        while pos < len(series) and series[pos] in " \t":
            pos += 1
        if pos < len(series):
            if series[pos] != "{":
                raise BadRequest("expected a value after the metric name", field=where)
            labels, pos = parse_label_set(series, pos, where)
            if pos != len(series):
                raise BadRequest("expected 'value [timestamp]' after the labels", field=where)
        return builder.key(name, tuple(sorted(labels)), where)


def parse(body: bytes, cfg: IngestConfig, now_ms: int, target: dict[str, str] | None = None,
          *, allow_empty: bool = False) -> IngestBatch:
    """Parse one body with a fresh :class:`TextParser` (no cache across calls)."""
    return TextParser(cfg, target).parse(body, now_ms, allow_empty=allow_empty)
