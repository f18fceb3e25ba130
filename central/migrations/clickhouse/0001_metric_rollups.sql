-- One row per (series, minute, batch): partial aggregates that the view merges.
-- ReplacingMergeTree on the batch identity: a batch inserted twice (a retry after a crash)
-- collapses to one row; readers use the view (FINAL) and never see the copy.
CREATE TABLE IF NOT EXISTS {db}.metric_rollups_1m (
    org String,
    node String,
    site String,
    device String,
    metric String,
    series_hash UInt64,
    labels String,
    window_start DateTime,
    batch String,
    count_part UInt64,
    sum_part Float64,
    min_part Float64,
    max_part Float64,
    last_part Float64,
    last_ts_ms Int64
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMMDD(window_start)
ORDER BY (org, metric, series_hash, window_start, batch)
{ttl}
{settings};

CREATE VIEW IF NOT EXISTS {db}.metric_rollups_1m_v AS
SELECT org, node, site, device, metric, series_hash, any(labels) AS labels, window_start,
       sum(count_part) AS samples, sum(sum_part) AS sum, min(min_part) AS min,
       max(max_part) AS max, argMax(last_part, last_ts_ms) AS last,
       sum(sum_part) / sum(count_part) AS avg
FROM {db}.metric_rollups_1m FINAL
GROUP BY org, node, site, device, metric, series_hash, window_start
