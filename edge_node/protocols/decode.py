"""Body decoding shared by every ingest protocol: content encodings with hard size limits,
and schema decoders' errors as field names.

A compressed body is inflated incrementally and refused as soon as it passes the limit, so a
zstd or gzip bomb costs at most ``limit`` bytes of memory, never its claimed size.
"""

from __future__ import annotations

import io
import json
import re
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import cramjam
import msgspec
import zstandard

from ..errors import BadRequest, PayloadTooLarge, UnsupportedMedia


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (identity, zstd, gzip, deflate) within ``limit`` bytes.

    Raises:
        UnsupportedMedia: an encoding we do not speak.
        PayloadTooLarge: the inflated body would exceed ``limit``.
        BadRequest: the body is not valid for its encoding.
    """
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        if len(body) > limit:
            raise PayloadTooLarge(f"body is larger than {limit} bytes", field="body")
        return body
    if enc == "zstd":
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body))
            out = reader.read(limit + 1)
            # stream_reader.read may return less than asked before the end: keep reading
            chunks = [out]
            total = len(out)
            while out and total <= limit:
                out = reader.read(limit + 1 - total)
                chunks.append(out)
                total += len(out)
        except zstandard.ZstdError as exc:
            raise BadRequest(f"body is not valid zstd: {exc}", field="Content-Encoding") from exc
        if total > limit:
            raise PayloadTooLarge(f"decompressed body is larger than {limit} bytes",
                                  field="body")
        return b"".join(chunks)
    if enc in ("gzip", "x-gzip", "deflate"):
        wbits = 16 + zlib.MAX_WBITS if enc != "deflate" else zlib.MAX_WBITS
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(body, limit + 1)
        except zlib.error as exc:
            raise BadRequest(f"body is not valid {enc}: {exc}", field="Content-Encoding") from exc
        if len(out) > limit or d.unconsumed_tail:
            raise PayloadTooLarge(f"decompressed body is larger than {limit} bytes",
                                  field="body")
        if not d.eof:
            raise BadRequest(f"{enc} body is truncated", field="Content-Encoding")
        return out
    if enc == "snappy":
        return snappy_block(body, limit)
    raise UnsupportedMedia(f"Content-Encoding {encoding!r} is not supported "
                           "(use identity, zstd, gzip, deflate or snappy)",
                           field="Content-Encoding")


def snappy_block(body: bytes, limit: int) -> bytes:
    """Undo snappy block compression (Prometheus remote write), refusing a bomb up front: the
    block starts with its uncompressed length, checked against ``limit`` before inflating."""
    size = shift = 0
    for byte in body[:10]:
        size |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    else:
        raise BadRequest("body is not valid snappy: bad length header", field="Content-Encoding")
    if size > limit:
        raise PayloadTooLarge(f"decompressed body would be {size} bytes, more than {limit}",
                              field="body")
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except cramjam.DecompressionError as exc:
        raise BadRequest(f"body is not valid snappy: {exc}", field="Content-Encoding") from None


# "<what> - at `$<path>`" or "<what> - at `key` in `$<path>`" (msgspec's error messages)
_DECODER_ERROR = re.compile(r"(.*?)(?: - at `(key` in `)?\$([^`]*)`)?", re.S)
_UNKNOWN = re.compile(r"Object contains unknown field `(.*)`", re.S)
_MISSING = re.compile(r"Object missing required field `(.*)`", re.S)
_GOT = re.compile(r"got `(\w+)`")
_INDEX = re.compile(r"\[\d+\]")
_PLAIN_KEY = re.compile(r"[\w-]+")


def schema_error(exc: msgspec.ValidationError, messages: Mapping[str, tuple[str, bool]],
                 found: Callable[[], Any] | None = None) -> BadRequest:
    """A msgspec decoder's refusal as ours, naming the field: path ``$[1].metrics[0]`` is
    field ``[1].metrics[0]`` (``body`` for the whole document).

    ``messages`` gives the message of a type error by the shape of its field, indexes as
    ``[]`` and a leading list index dropped (``metrics[].value``), and whether it goes on with
    what was found: the value itself when ``found()`` gives the generically decoded document
    (``must be a number, got 'yes'``; only on this error path), else its type (``got str``).
    A missing field "is required" (or its message, if that starts so); an unknown one is named,
    quoted if it is not a plain word.
    """
    m = _DECODER_ERROR.fullmatch(str(exc))
    assert m is not None  # the pattern matches any text
    what, in_key, path = m.group(1), m.group(2), (m.group(3) or "").lstrip(".")
    if in_key:
        return BadRequest("unknown field: field names must be strings", field=path or "body")
    if unknown := _UNKNOWN.fullmatch(what):
        return BadRequest("unknown field", field=child_field(path, unknown.group(1)))
    if missing := _MISSING.fullmatch(what):
        field = child_field(path, missing.group(1))
        message = messages.get(_shape(field), ("is required", False))[0]
        return BadRequest(message if message.startswith("is required") else "is required",
                          field=field)
    if what == "Number out of range":  # an integer beyond the float range
        return BadRequest("integer out of range for a float", field=path or "body")
    expected = messages.get(_shape(path))
    if expected is None:
        return BadRequest(what, field=path or "body")
    message, goes_on = expected
    got = _GOT.search(what)
    if goes_on and got:
        value = _at(found, path) if found is not None else _MISSING_VALUE
        message = (f"{message}, got {got.group(1)}" if value is _MISSING_VALUE
                   else f"{message}, got {value!r:.40}")
    return BadRequest(message, field=path or "body")


_MISSING_VALUE = object()
_STEP = re.compile(r"\[(\d+)\]|\.?([^.\[]+)")


def _at(found: Callable[[], Any], path: str) -> Any:
    """The value at ``path`` (``[1].metrics[0].value``) of the document ``found()`` decodes,
    or :data:`_MISSING_VALUE` when it cannot be had."""
    try:
        node = found()
        for index, key in _STEP.findall(path):
            node = node[int(index)] if index else node[key]
    except Exception:  # a body that fails to decode generically: fall back to the type
        return _MISSING_VALUE
    return node


def child_field(path: str, key: str) -> str:
    """The field name of ``key`` in the object at ``path``; a key that is not a plain word
    (``""``, ``"a.b"``) is quoted, as ``metrics[0][""]``, so the field is always named."""
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _shape(field: str) -> str:
    """``[1].metrics[0].value`` -> ``metrics[].value``."""
    shape = _INDEX.sub("[]", field)
    return shape[2:].lstrip(".") if shape.startswith("[]") else shape
