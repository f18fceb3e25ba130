-- Alert history from the edge nodes: one row per alert, state and start (a re-sent or repeated
-- notification collapses; read alert_history_v).
CREATE TABLE IF NOT EXISTS {db}.alert_history (
    org String,
    node String,
    site String,
    device String,
    alertname String,
    severity String,
    fingerprint String,
    status String,
    starts_at DateTime,
    ends_at DateTime,
    labels String,
    annotations String
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMMDD(starts_at)
ORDER BY (org, node, fingerprint, status, starts_at)
{ttl_starts_at}
{settings};

CREATE VIEW IF NOT EXISTS {db}.alert_history_v AS
SELECT * FROM {db}.alert_history FINAL
