"""Exceptions raised by the edge node.

The tree::

    EdgeError
    ├── ConfigError          a config file or environment override is invalid
    ├── RuleError            an aggregation rule is invalid (names the rule and field)
    ├── ProblemsError        a file with problems, every one listed (``.problems``)
    │   ├── RuleFileError    an alert rule file
    │   └── HooksError       an alert hooks file
    ├── ExpressionError      an expression that does not parse (also a ``ValueError``)
    │   ├── SelectorError    a series selector (``{job="x", site=~"a.*"}``)
    │   ├── PromQLError      a PromQL expression outside the supported subset
    │   └── TemplateError    an alert annotation template
    ├── IngestError          a device request is refused (carries the HTTP status)
    │   ├── BadRequest       400: malformed body, bad field
    │   ├── Unauthorized     401: missing or unknown device key
    │   ├── Forbidden        403: the key belongs to another device
    │   ├── PayloadTooLarge  413: body or decompressed body over a limit
    │   ├── TooManySeries    422: a device would pass its active-series limit
    │   ├── ClockSkewed      422: a device's clock is off and its policy is reject
    │   └── UnsupportedMedia 415: content type or encoding we do not speak
    ├── WireError            an edge->central batch cannot be encoded or decoded
    └── BufferFailure        the SQLite buffer failed (corruption, I/O error)
        └── DiskFull         503: the data disk is full; refused until forwarding frees space

Every module raises from this tree; none defines an exception of its own. ``RuleError``,
``ProblemsError`` and ``ExpressionError`` are ``ValueError`` subclasses too: they describe a bad
value a user wrote, and callers that validate text catch ``ValueError``.

Handlers log ``Exception`` and never swallow ``trio.Cancelled`` (a ``BaseException``).
"""

from __future__ import annotations

import errno
import sqlite3


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


class RuleError(EdgeError, ValueError):
    """An invalid aggregation rule; ``key`` names the rule and field (``rules[2].outputs``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class ProblemsError(EdgeError, ValueError):
    """Problems in a file: every one, each naming where (``groups[0].rules[2].expr``)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class RuleFileError(ProblemsError):
    """An alert rule file (Prometheus format) with problems."""


class HooksError(ProblemsError):
    """An alert hooks file with problems."""


class ExpressionError(EdgeError, ValueError):
    """An expression that does not parse; the message says where and why."""


class SelectorError(ExpressionError):
    """A selector that does not parse; the message says where and why."""


class PromQLError(ExpressionError):
    """An expression that does not parse or uses something outside the supported subset."""


class TemplateError(ExpressionError):
    """An annotation template that uses an action outside the supported subset."""


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


class ClockSkewed(IngestError):
    """A device's timestamps are off by more than the edge accepts and its clock policy is
    ``reject``."""

    status = 422

    def __init__(self, device: str, offset_s: float) -> None:
        self.device, self.offset_s = device, offset_s
        way = "ahead of" if offset_s > 0 else "behind"
        super().__init__(f"device {device!r}: its clock is {abs(offset_s):,.0f} s {way} the "
                         f"edge's (offset {offset_s:+,.0f} s); samples refused "
                         "(clock policy: reject)", field="ts")


class UnsupportedMedia(IngestError):
    status = 415


class WireError(EdgeError):
    """A batch or segment is malformed (wrong version, truncated, inconsistent)."""


class BufferFailure(EdgeError):
    """The durable buffer could not complete an operation."""


class DiskFull(BufferFailure):
    """The buffer's disk is full: writes are refused (503 + ``Retry-After``) until forwarding
    frees space. A state the node lives through, never a crash."""

    retry_after_s = 30


def disk_full_cause(exc: BaseException) -> BaseException | None:
    """SQLite's SQLITE_FULL, or the OS's ENOSPC / EDQUOT, found in ``exc``'s chain (a failed
    ROLLBACK can hide the COMMIT's "database or disk is full")."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, sqlite3.Error):
            code = getattr(seen, "sqlite_errorcode", None)
            if code == sqlite3.SQLITE_FULL or "database or disk is full" in str(seen):
                return seen
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def is_disk_full(exc: BaseException) -> bool:
    return disk_full_cause(exc) is not None
