-- Operations: an audit trail, the grant-state guard for lifecycle events, and low-stock alerts.

-- Who did what to which grant, key or pool. Kept when events and finished jobs are pruned.
CREATE TABLE audit_log (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text        NOT NULL CHECK (actor IN ('cli', 'webhook', 'worker', 'admin')),
    action   text        NOT NULL,
    pool_id  bigint      REFERENCES pools (id),
    grant_id text,
    key_id   bigint      REFERENCES keys (id),
    batch_id text,
    detail   text
);
CREATE INDEX audit_log_grant ON audit_log (grant_id, id) WHERE grant_id IS NOT NULL;
CREATE INDEX audit_log_pool ON audit_log (pool_id, id) WHERE pool_id IS NOT NULL;
CREATE INDEX audit_log_key ON audit_log (key_id) WHERE key_id IS NOT NULL;

-- The grant's `updated_at` from the newest lifecycle event applied: an older event is stale.
ALTER TABLE jobs ADD COLUMN grant_updated_at timestamptz;

-- Set when the low-stock alert fired; cleared when an import restocks the pool.
ALTER TABLE pools ADD COLUMN low_stock_alerted boolean NOT NULL DEFAULT false;

-- Pruning finds old events and finished jobs by time.
CREATE INDEX jobs_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL;
