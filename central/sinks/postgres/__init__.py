"""The PostgreSQL state store: organisations, nodes, devices, status history, dedup marks.

Time-series tables (``device_status``, and ``samples`` / ``logs`` when no VictoriaMetrics / Loki
is configured) are TimescaleDB hypertables when the extension can be created, else natively
range-partitioned by ``TIMESCALE_CHUNK_INTERVAL``; central creates the partitions it needs and
drops those older than ``TIMESCALE_RETENTION_DAYS``. Schema changes are versioned migrations
(``central/migrations/postgres``) applied by ``fleet-central migrate``; ``run`` refuses an
outdated schema. Each batch is applied once however many central instances run (its dedup mark
is the first row its transaction writes).

Modules, in the order a batch meets them:

- ``store``: :class:`PostgresStore`, the pool on trio-asyncio, error mapping, the caches
- ``registry``: nodes and their hashed keys (add, rotate, revoke, list, authenticate)
- ``batches``: the dedup lookup, per-sink marks, and the one-transaction commit
- ``partitions``: native partitions, created as rows need them and dropped past the retention
- ``schema``: migrations, TimescaleDB or native partitioning, the schema version
"""

from __future__ import annotations

from .partitions import partition_name
from .schema import LATEST, MIGRATION_LOCK, TIMESERIES, migrations, render
from .store import PostgresStore

__all__ = ["LATEST", "MIGRATION_LOCK", "TIMESERIES", "PostgresStore", "migrations",
           "partition_name", "render"]
