-- fleetd central schema, version 2: alert events from the edge nodes' local alerting.
-- One row per alert (fingerprint of its labels), state (firing / resolved) and start: a node
-- re-sending a notification, or repeating one for an alert still firing, changes nothing.
CREATE TABLE alert_events (
    org text NOT NULL,
    node_id text NOT NULL,
    fingerprint text NOT NULL,
    status text NOT NULL,
    starts_at timestamptz NOT NULL,
    ends_at timestamptz,
    alertname text NOT NULL,
    severity text NOT NULL DEFAULT '',
    device text NOT NULL DEFAULT '',
    site text NOT NULL DEFAULT '',
    labels jsonb NOT NULL,
    annotations jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org, node_id, fingerprint, status, starts_at)
);
CREATE INDEX alert_events_recent ON alert_events (org, starts_at DESC);

ALTER TABLE alert_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY org_isolation ON alert_events USING (org = current_setting('fleetd.org', true));
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fleetd_reader') THEN
        GRANT SELECT ON alert_events TO fleetd_reader;
    END IF;
END $$;
