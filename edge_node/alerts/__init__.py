"""Local alerting: PromQL-subset rules evaluated on the edge's recent data, alert state, hooks.

Modules, in data-flow order:

- :mod:`.store`: the rules' recent samples in memory, bounded (sans-IO).
- :mod:`.promql`: the PromQL subset: lexer, parser, evaluator (sans-IO package).
- :mod:`.templates`: Prometheus' annotation templates (sans-IO).
- :mod:`.rules`: rule files and the rule engine: pending -> firing -> resolved (sans-IO).
- :mod:`.builtin`: the built-in rules, from the ``[alerts]`` settings.
- :mod:`.notify`: hook configuration, notification groups, payload formats (sans-IO).
- :mod:`.grouping`: Alertmanager's group_wait / group_interval / repeat timers (sans-IO).
- :mod:`.db`: ``alerts.sqlite3``: alert state, the recent-samples snapshot, the outbox.
- :mod:`.delivery`: sending one notification to a webhook, Alertmanager, command, file, central.
- :mod:`.service`: the Trio service: feeding, evaluation loops, delivery loops, snapshots.

Import from the modules (``from edge_node.alerts.service import AlertService``): this
``__init__`` imports nothing, so the sans-IO parts load without Trio, httpx or SQLite.
"""
