-- fleetd central schema, version 3: per-batch leases (one attempt of a batch applies at a time).
-- A row is claimed for the whole apply of (node, epoch, seq): a second attempt of the same batch,
-- on this instance or another behind the load balancer, waits for it and then finds the batch's
-- mark in "applied" (a duplicate: nothing written twice). expires_at comes from the database's
-- clock, so instances with skewed clocks agree; a lease whose holder crashed is taken over once
-- it expires. UNLOGGED: leases are worthless after a database crash (every attempt in flight
-- failed with it), so they skip the WAL.
CREATE UNLOGGED TABLE batch_leases (
    node_id text NOT NULL,
    epoch text NOT NULL,
    seq bigint NOT NULL,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (node_id, epoch, seq)
);
CREATE INDEX batch_leases_expiry ON batch_leases (expires_at);
