"""InfluxDB line protocol, as Telegraf's influxdb (v1 ``POST /write``) and influxdb_v2
(``POST /api/v2/write``) outputs send it (sans-IO).

::

    measurement[,tag=value...] field=value[,field=value...] [timestamp]

Each numeric field becomes the series ``<measurement>_<field>`` (names made valid the way
Prometheus exporters do), tags become labels. Field values: floats (``1``, ``1.5``, ``-1e3``),
integers (``1i``), unsigned integers (``1u``), booleans (``t``/``true``/``f``/``false``, any case
Influx allows) as 1/0. String fields are not samples: they are skipped and counted. Escapes:
``\\,`` ``\\ `` ``\\=`` in names and tags, ``\\"`` and ``\\\\`` inside string values.
``precision`` (``ns`` default; v1 also ``n``, ``u``, ``us``, ``ms``, ``s``, ``m``, ``h``) scales
the timestamp; the receive time is used when it is absent.
"""

from __future__ import annotations

from ..config import IngestConfig
from ..errors import BadRequest
from ..model import IngestBatch, SeriesKey
from .common import SeriesBuilder, bounded, sanitize_label, sanitize_name, text_lines

# precision -> (multiplier, divisor) to milliseconds, in integers (no float rounding)
PRECISION_V1 = {"n": (1, 1_000_000), "ns": (1, 1_000_000), "u": (1, 1_000), "us": (1, 1_000),
                "µ": (1, 1_000), "ms": (1, 1), "s": (1_000, 1), "m": (60_000, 1),
                "h": (3_600_000, 1)}
PRECISION_V2 = {"ns": (1, 1_000_000), "us": (1, 1_000), "ms": (1, 1), "s": (1_000, 1)}
_TRUE = {"t", "T", "true", "True", "TRUE"}
_FALSE = {"f", "F", "false", "False", "FALSE"}


def _split(text: str, seps: str, where: str, *, quotes: bool = False) -> list[str]:
    """Split at unescaped separators (outside double quotes when ``quotes``); keeps escapes."""
    if len(seps) == 1 and "\\" not in text and '"' not in text:
        return text.split(seps)  # the common case: plain str.split does it
    out: list[str] = []
    cur: list[str] = []
    i, n = 0, len(text)
    in_q = False
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            cur.append(text[i:i + 2])
            i += 2
            continue
        if quotes and c == '"':
            in_q = not in_q
        elif not in_q and c in seps:
            out.append("".join(cur))
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    if in_q:
        raise BadRequest("unterminated string field value", field=where)
    out.append("".join(cur))
    return out


def _unescape(s: str) -> str:
    if "\\" not in s:
        return s
    out: list[str] = []
    i = 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s) and s[i + 1] in ', ="\\':
            out.append(s[i + 1])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _sections(line: str, where: str) -> tuple[str, str, str | None]:
    """(measurement+tags, fields, timestamp) of a line: split at unescaped spaces outside
    string values."""
    parts = [p for p in _split(line, " ", where, quotes=True) if p != ""]
    if len(parts) == 2:
        return parts[0], parts[1], None
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    raise BadRequest("expected 'measurement[,tags] fields [timestamp]'", field=where)


def _field_value(text: str, key: str, where: str) -> float | None:
    """A field's numeric value; ``None`` for a string field."""
    if text.startswith('"'):
        return None
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    num = text[:-1] if text[-1:] in ("i", "u") else text
    try:
        value = float(int(num)) if text[-1:] in ("i", "u") else float(num)
    except ValueError:
        raise BadRequest(f"field {key!r}: {text!r} is not a number, boolean or string",
                         field=where) from None
    if text.endswith("u") and value < 0:
        raise BadRequest(f"field {key!r}: unsigned value {text!r} is negative", field=where)
    return value


class InfluxParser:
    """Parses line protocol, remembering the series key of each (measurement+tags, field) it
    has seen: a Telegraf agent repeats the same heads every interval."""

    def __init__(self, cfg: IngestConfig, max_cached: int = 1_000_000) -> None:
        self.cfg = cfg
        self.max_cached = max_cached
        self._keys: dict[tuple[str, str], SeriesKey] = {}

    def parse(self, body: bytes, now_ms: int, precision: str = "ns", version: int = 1
              ) -> tuple[IngestBatch, int]:
        """Parse a request body; returns the batch and the number of string fields skipped."""
        table = PRECISION_V1 if version == 1 else PRECISION_V2
        if precision not in table:
            raise BadRequest(f"precision {precision!r} is not one of {', '.join(table)}",
                             field="precision")
        mul, div = table[precision]
        lines = text_lines(body)
        cache = bounded(self._keys, self.max_cached)
        builder = SeriesBuilder(self.cfg)
        out = IngestBatch()
        strings = 0
        for lineno, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line[0] == "#":
                continue
            where = f"line {lineno}"
            head, fields_s, ts_s = _sections(line, where)
            if ts_s is None:
                ts = now_ms
            else:
                if not ts_s.lstrip("-").isdigit():
                    raise BadRequest(f"timestamp {ts_s!r} is not an integer", field=where)
                ts = int(ts_s) * mul // div
            for field in _split(fields_s, ",", where, quotes=True):
                kv = _split(field, "=", where, quotes=True)
                if len(kv) != 2 or not kv[0] or not kv[1]:
                    raise BadRequest(f"field {field!r} is not key=value", field=where)
                value = _field_value(kv[1], kv[0], where)
                if value is None:
                    strings += 1
                    continue
                series = cache.get((head, kv[0]))
                if series is None:
                    series = cache[(head, kv[0])] = self._key(head, kv[0], builder, where)
                builder.add(out, series, ts, value)
        if not out and strings:
            return out, strings  # only string fields: valid, nothing to store
        return builder.finish(out), strings

    @staticmethod
    def _key(head: str, field_key: str, builder: SeriesBuilder, where: str) -> SeriesKey:
        head_parts = _split(head, ",", where)
        measurement = _unescape(head_parts[0])
        if not measurement:
            raise BadRequest("empty measurement name", field=where)
        tags: list[tuple[str, str]] = []
        for tag in head_parts[1:]:
            kv = _split(tag, "=", where)
            if len(kv) != 2 or not kv[0] or not kv[1]:
                raise BadRequest(f"tag {tag!r} is not key=value", field=where)
            tags.append((sanitize_label(_unescape(kv[0])), _unescape(kv[1])))
        name = f"{sanitize_name(measurement)}_{sanitize_label(_unescape(field_key))}"
        return builder.key(name, tuple(sorted(tags)), where)


def parse(body: bytes, cfg: IngestConfig, now_ms: int, precision: str = "ns",
          version: int = 1) -> tuple[IngestBatch, int]:
    """Parse one body with a fresh :class:`InfluxParser` (no cache across calls)."""
    return InfluxParser(cfg).parse(body, now_ms, precision, version)
