-- Edge stream-aggregation outputs: one row per output series and window.
-- An edge node emits each (series, window) once (its aggregation state is durable), and a
-- batch re-inserted after a crash carries the very same rows: ReplacingMergeTree on the output
-- identity collapses the copy; readers use the view (FINAL) and never see it.
CREATE TABLE IF NOT EXISTS {db}.edge_rollups (
    org String,
    node String,
    site String,
    device String,
    metric String,
    rule String,
    interval_s UInt32,
    output String,
    quantile Float64,
    series_hash UInt64,
    labels String,
    window_start DateTime,
    value Float64
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMMDD(window_start)
ORDER BY (org, metric, output, series_hash, window_start)
{ttl}
{settings};

CREATE VIEW IF NOT EXISTS {db}.edge_rollups_v AS
SELECT org, node, site, device, metric, rule, interval_s, output, quantile, series_hash, labels,
       window_start, value
FROM {db}.edge_rollups FINAL
