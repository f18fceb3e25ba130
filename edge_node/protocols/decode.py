"""Body decoding shared by every ingest protocol: content encodings with hard size limits.

A compressed body is inflated incrementally and refused as soon as it passes the limit, so a
zstd or gzip bomb costs at most ``limit`` bytes of memory, never its claimed size.
"""

from __future__ import annotations

import io
import zlib

import cramjam
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
