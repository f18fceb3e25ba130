"""Local alerting: PromQL-subset rules evaluated on the edge's recent data, alert state, hooks."""
