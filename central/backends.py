"""Build central's pipeline from :class:`~central.config.Settings`: the state store plus the
sinks whose environment variables are set (the routing table of the README)."""

from __future__ import annotations

from pathlib import Path

from edge_node.metrics import Registry

from .config import Settings
from .pipeline import Pipeline
from .sinks.base import Sink, StateStore
from .sinks.clickhouse import ClickHouseSink
from .sinks.loki import LokiSink
from .sinks.postgres import PostgresStore
from .sinks.sqlite import SQLiteStore
from .sinks.valkey import ValkeySink
from .sinks.victoriametrics import VictoriaMetricsSink


def state_store(settings: Settings, data_dir: str | Path) -> SQLiteStore | PostgresStore:
    if settings.database_url:
        return PostgresStore(settings.database_url, pool_size=settings.database_pool_size,
                             chunk_seconds=settings.chunk_seconds,
                             retention_days=settings.status_retention_days,
                             timeout_s=settings.sink_timeout_s,
                             retry_after_s=settings.retry_after_s)
    return SQLiteStore(data_dir)


def clickhouse(settings: Settings) -> ClickHouseSink | None:
    if not settings.clickhouse_url:
        return None
    return ClickHouseSink(settings.clickhouse_url, database=settings.clickhouse_database,
                          retention_days=settings.clickhouse_retention_days,
                          timeout_s=settings.sink_timeout_s, retry_after_s=settings.retry_after_s)


def build_pipeline(settings: Settings, data_dir: str | Path,
                   registry: Registry | None = None) -> Pipeline:
    timeout, retry = settings.sink_timeout_s, settings.retry_after_s
    state: StateStore = state_store(settings, data_dir)
    sinks: list[Sink] = []
    if settings.victoria_metrics_url:
        sinks.append(VictoriaMetricsSink(settings.victoria_metrics_url,
                                         retention_days=settings.metrics_retention_days,
                                         timeout_s=timeout, retry_after_s=retry))
    if settings.loki_url:
        sinks.append(LokiSink(settings.loki_url, retention_days=settings.loki_retention_days,
                              metadata=settings.loki_metadata, timeout_s=timeout,
                              retry_after_s=retry, max_age_s=settings.loki_max_age_s,
                              max_ahead_s=settings.loki_max_ahead_s))
    ch = clickhouse(settings)
    if ch is not None:
        sinks.append(ch)
    fast = None
    if settings.valkey_addr:
        fast = ValkeySink(settings.valkey_addr, online_ttl_s=settings.online_ttl_s,
                          timeout_s=timeout, retry_after_s=retry)
        sinks.append(fast)
    return Pipeline(state, sinks, registry=registry, fast=fast, sink_timeout_s=timeout)
