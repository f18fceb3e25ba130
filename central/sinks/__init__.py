"""Where central writes: the state store and the external backends, behind two Protocols.

Modules:

- :mod:`.base`: the ``StateStore`` and ``Sink`` Protocols every backend implements
- :mod:`.http`: the HTTP plumbing VictoriaMetrics, Loki and ClickHouse share (errors mapped
  to ``SinkUnavailable`` / ``SinkRejected``)
- :mod:`.victoriametrics`: raw metrics and rollups, import lines
- :mod:`.loki`: logs, Loki's push API, one tenant per organisation
- :mod:`.clickhouse`: 1-minute rollups, edge rollups and alert history (MergeTree tables)
- :mod:`.valkey`: online state, latest values, the fast dedup marks
- :mod:`.sqlite`: the embedded state store (everything, when no backend is configured)
- :mod:`.postgres`: the PostgreSQL state store (a package: store, registry, batches,
  partitions, schema)

Import from the modules: a central without PostgreSQL never loads asyncpg.
"""
