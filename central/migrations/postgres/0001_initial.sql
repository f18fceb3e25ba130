-- fleetd central schema, version 1.
-- Every row carries its organisation; row-level security lets a session see only the rows of
-- the organisation in its setting `fleetd.org` (central itself owns the tables and bypasses it).
-- {ts_partition} is "PARTITION BY RANGE (ts)" (native partitions, created per chunk interval by
-- central) or empty when the table becomes a TimescaleDB hypertable. {view_options} makes the
-- views run with the reader's rights (PostgreSQL >= 15); older servers do not grant the views.

CREATE TABLE organisations (
    org text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE nodes (
    node_id text PRIMARY KEY,
    org text NOT NULL REFERENCES organisations (org),
    site text NOT NULL DEFAULT '',
    key_hash text NOT NULL UNIQUE,
    created_ms bigint NOT NULL,
    revoked_ms bigint,
    last_seen_ms bigint
);

-- each node's series dictionary, per buffer epoch; definitions never change
CREATE TABLE series (
    node_id text NOT NULL,
    epoch text NOT NULL,
    sid bigint NOT NULL,
    org text NOT NULL,
    labels jsonb NOT NULL,
    PRIMARY KEY (node_id, epoch, sid)
);

-- dedup: batches applied (marks below a node's low watermark are pruned)
CREATE TABLE applied (
    node_id text NOT NULL,
    epoch text NOT NULL,
    seq bigint NOT NULL,
    kind text NOT NULL,
    rows integer NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node_id, epoch, seq)
);

-- external sinks that took a batch which is not committed yet (partial success)
CREATE TABLE sink_marks (
    node_id text NOT NULL,
    epoch text NOT NULL,
    seq bigint NOT NULL,
    sink text NOT NULL,
    PRIMARY KEY (node_id, epoch, seq, sink)
);

CREATE TABLE devices (
    org text NOT NULL,
    device text NOT NULL,
    name text NOT NULL,
    node_id text NOT NULL,
    site text NOT NULL DEFAULT '',
    labels jsonb NOT NULL DEFAULT '{}',
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    PRIMARY KEY (org, device)
);
CREATE INDEX devices_node ON devices (node_id);

-- device status / heartbeat history (time series)
CREATE TABLE device_status (
    org text NOT NULL,
    device text NOT NULL,
    node_id text NOT NULL,
    ts timestamptz NOT NULL,
    status text NOT NULL
) {ts_partition};
CREATE INDEX device_status_org_device_ts ON device_status (org, device, ts DESC);

-- raw samples and log lines, when no VictoriaMetrics / Loki is configured (time series)
CREATE TABLE samples (
    org text NOT NULL,
    node_id text NOT NULL,
    epoch text NOT NULL,
    sid bigint NOT NULL,
    ts timestamptz NOT NULL,
    value double precision
) {ts_partition};
CREATE INDEX samples_series_ts ON samples (node_id, epoch, sid, ts);

CREATE TABLE logs (
    org text NOT NULL,
    node_id text NOT NULL,
    epoch text NOT NULL,
    sid bigint NOT NULL,
    ts timestamptz NOT NULL,
    line text NOT NULL
) {ts_partition};
CREATE INDEX logs_series_ts ON logs (node_id, epoch, sid, ts);

CREATE VIEW samples_v {view_options} AS
    SELECT s.org, s.node_id, r.labels ->> '__name__' AS name, r.labels, s.ts, s.value
    FROM samples s JOIN series r USING (node_id, epoch, sid);
CREATE VIEW logs_v {view_options} AS
    SELECT l.org, l.node_id, r.labels, l.ts, l.line
    FROM logs l JOIN series r USING (node_id, epoch, sid);

-- tenant isolation
ALTER TABLE nodes ENABLE ROW LEVEL SECURITY;
ALTER TABLE series ENABLE ROW LEVEL SECURITY;
ALTER TABLE devices ENABLE ROW LEVEL SECURITY;
ALTER TABLE device_status ENABLE ROW LEVEL SECURITY;
ALTER TABLE samples ENABLE ROW LEVEL SECURITY;
ALTER TABLE logs ENABLE ROW LEVEL SECURITY;
CREATE POLICY org_isolation ON nodes USING (org = current_setting('fleetd.org', true));
CREATE POLICY org_isolation ON series USING (org = current_setting('fleetd.org', true));
CREATE POLICY org_isolation ON devices USING (org = current_setting('fleetd.org', true));
CREATE POLICY org_isolation ON device_status USING (org = current_setting('fleetd.org', true));
CREATE POLICY org_isolation ON samples USING (org = current_setting('fleetd.org', true));
CREATE POLICY org_isolation ON logs USING (org = current_setting('fleetd.org', true));

-- a role for dashboards and tenants' readers: SELECT only, and only through the policies
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fleetd_reader') THEN
        CREATE ROLE fleetd_reader NOLOGIN;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'cannot create role fleetd_reader (no CREATEROLE); create it by hand';
END $$;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fleetd_reader') THEN
        GRANT SELECT (node_id, org, site, created_ms, revoked_ms, last_seen_ms) ON nodes
            TO fleetd_reader;
        GRANT SELECT ON series, devices, device_status, samples, logs {reader_views}
            TO fleetd_reader;
    END IF;
END $$;
