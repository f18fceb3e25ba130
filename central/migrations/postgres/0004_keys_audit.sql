-- fleetd central schema, version 4: node keys that expire and rotate, and the audit log.
-- node_keys: one row per key hash; a node has one current key, at most one next key (offered
-- to the edge, not used yet) and previous keys accepted until their grace period ends
-- (central/keys.py). The keys of version 3 (nodes.key_hash) become current keys that never
-- expire.
CREATE TABLE node_keys (
    key_hash text PRIMARY KEY,
    node_id text NOT NULL REFERENCES nodes (node_id),
    state text NOT NULL CHECK (state IN ('current', 'next', 'previous')),
    created_ms bigint NOT NULL,
    expires_ms bigint,
    until_ms bigint
);
CREATE UNIQUE INDEX node_keys_one_current ON node_keys (node_id) WHERE state = 'current';
CREATE UNIQUE INDEX node_keys_one_next ON node_keys (node_id) WHERE state = 'next';
CREATE INDEX node_keys_node ON node_keys (node_id);
INSERT INTO node_keys (key_hash, node_id, state, created_ms)
    SELECT key_hash, node_id, 'current', created_ms FROM nodes;
ALTER TABLE nodes DROP COLUMN key_hash;

-- append-only: updates, deletes and truncation are refused (a superuser can still drop the
-- triggers: ship the fleet_central.audit log lines off the box as well)
CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    at_ms bigint NOT NULL,
    action text NOT NULL,
    actor text NOT NULL,
    org text NOT NULL DEFAULT '',
    node_id text NOT NULL DEFAULT '',
    source text NOT NULL DEFAULT '',
    detail jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at_ms);
CREATE INDEX audit_log_node ON audit_log (node_id, at_ms);
CREATE FUNCTION fleetd_audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION fleetd_audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION fleetd_audit_log_append_only();

ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
CREATE POLICY org_isolation ON audit_log USING (org = current_setting('fleetd.org', true));
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fleetd_reader') THEN
        GRANT SELECT ON audit_log TO fleetd_reader;
    END IF;
END $$;
