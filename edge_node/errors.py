"""Exceptions raised by the edge node.

The tree::

    EdgeError
    ├── ConfigError          a config file or environment override is invalid
    ├── IngestError          a device request is refused (carries the HTTP status)
    │   ├── BadRequest       400: malformed body, bad field
    │   ├── Unauthorized     401: missing or unknown device key
    │   ├── Forbidden        403: the key belongs to another device
    │   ├── PayloadTooLarge  413: body or decompressed body over a limit
    │   ├── TooManySeries    422: a device would pass its active-series limit
    │   └── UnsupportedMedia 415: content type or encoding we do not speak
    ├── WireError            an edge->central batch cannot be encoded or decoded
    └── BufferError_         the SQLite buffer failed (disk full, corruption)

Handlers log ``Exception`` and never swallow ``trio.Cancelled`` (a ``BaseException``).
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base class of every error the edge node raises on purpose."""


class ConfigError(EdgeError):
    """A configuration value is missing, unknown or invalid.

    Attributes:
        key: dotted name of the offending key (``central.url``), or ``""``.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class IngestError(EdgeError):
    """A device request that is refused; nothing of it is stored."""

    status = 400

    def __init__(self, message: str, *, field: str = "") -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)

    def to_json(self) -> dict[str, str]:
        out = {"error": self.message}
        if self.field:
            out["field"] = self.field
        return out


class BadRequest(IngestError):
    status = 400


class Unauthorized(IngestError):
    status = 401


class Forbidden(IngestError):
    status = 403


class PayloadTooLarge(IngestError):
    status = 413


class TooManySeries(IngestError):
    status = 422


class UnsupportedMedia(IngestError):
    status = 415


class WireError(EdgeError):
    """A batch or segment is malformed (wrong version, truncated, inconsistent)."""


class BufferError_(EdgeError):
    """The durable buffer could not complete an operation."""
