"""Exceptions raised by central.

The tree::

    CentralError
    ├── MissingSeries      409: the batch references series central has no definition for
    ├── SinkUnavailable    503: a backend is down or slow; the edge keeps the batch and retries
    ├── SinkRejected       422: a backend refused the data for good (4xx); the edge dead-letters
    ├── SchemaOutdated     the PostgreSQL/ClickHouse schema needs ``fleet-central migrate``
    ├── SettingsError      a bad environment variable (named in the message)
    └── RegistryError      a node cannot be added/revoked (exists, unknown)

Malformed batches raise :class:`edge_node.errors.WireError` (answered 400).
"""

from __future__ import annotations


class CentralError(Exception):
    """Base class of central's deliberate errors."""


class MissingSeries(CentralError):
    def __init__(self, missing: list[int]) -> None:
        self.missing = missing
        super().__init__(f"{len(missing)} series definitions are unknown")


class SinkUnavailable(CentralError):
    def __init__(self, sink: str, message: str, retry_after_s: int = 5) -> None:
        self.sink = sink
        self.retry_after_s = retry_after_s
        super().__init__(f"{sink}: {message}")


class RegistryError(CentralError):
    pass


class SinkRejected(CentralError):
    def __init__(self, sink: str, message: str) -> None:
        self.sink = sink
        self.reason = message
        super().__init__(f"{sink} refused the batch: {message}")


class SchemaOutdated(CentralError):
    pass


class SettingsError(CentralError):
    pass
