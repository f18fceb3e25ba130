"""A minimal protobuf wire-format reader (sans-IO) for the few messages the edge decodes
(remote write, Loki push): fields are yielded lazily, nothing is generated from .proto files,
and every truncation or bad wire type raises :class:`Malformed`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class Malformed(Exception):
    """The bytes are not a well-formed protobuf message."""


def varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise Malformed("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value): an int for varints, else (start, end)."""
    while pos < end:
        tag, pos = varint(buf, pos, end)
        num, wt = tag >> 3, tag & 7
        if wt == 0:
            val, pos = varint(buf, pos, end)
            yield num, wt, val
        elif wt == 1:
            if pos + 8 > end:
                raise Malformed("truncated 64-bit field")
            yield num, wt, (pos, pos + 8)
            pos += 8
        elif wt == 2:
            n, pos = varint(buf, pos, end)
            if pos + n > end:
                raise Malformed("length-delimited field runs past its message")
            yield num, wt, (pos, pos + n)
            pos += n
        elif wt == 5:
            if pos + 4 > end:
                raise Malformed("truncated 32-bit field")
            yield num, wt, (pos, pos + 4)
            pos += 4
        else:
            raise Malformed(f"unsupported wire type {wt}")


def string(buf: bytes, span: tuple[int, int]) -> str:
    try:
        return buf[span[0]:span[1]].decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("label is not UTF-8") from None


def string_pair(buf: bytes, span: tuple[int, int]) -> tuple[str, str]:
    """A ``{string name = 1; string value = 2;}`` message (a label, a metadata pair)."""
    name = value = ""
    for num, wt, val in fields(buf, span[0], span[1]):
        if num == 1 and wt == 2:
            name = string(buf, val)
        elif num == 2 and wt == 2:
            value = string(buf, val)
    return name, value


def int64(v: int) -> int:
    """A varint read as a signed int64 (two's complement)."""
    return v - (1 << 64) if v >= 1 << 63 else v
