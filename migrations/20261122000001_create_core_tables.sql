-- keyrelay core schema: webhook events, key pools, keys, fulfillment jobs and their attempts.
-- The constraints below keep the invariants true even if application code had a bug:
--   * one job per grant                      (jobs.grant_id primary key)
--   * one key value in the whole database    (keys.value unique)
--   * a key is the current key of one job    (jobs.key_id unique)
--   * a grant holds at most one live key     (keys_one_live_key_per_grant)

CREATE TYPE job_state AS ENUM (
    'queued', 'running', 'retrying', 'waiting_for_keys', 'delivered', 'failed', 'cancelled'
);

CREATE TYPE key_state AS ENUM ('available', 'reserved', 'delivered', 'rejected', 'revoked');

CREATE TABLE events (
    webhook_id  text        PRIMARY KEY,
    event_type  text        NOT NULL,
    grant_id    text,
    received_at timestamptz NOT NULL DEFAULT now(),
    payload     jsonb       NOT NULL
);
CREATE INDEX events_received_at ON events (received_at);
CREATE INDEX events_grant_id ON events (grant_id) WHERE grant_id IS NOT NULL;

CREATE TABLE pools (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name              text        NOT NULL UNIQUE CHECK (name <> ''),
    entitlement_id    text        NOT NULL UNIQUE CHECK (entitlement_id <> ''),
    low_stock         integer     NOT NULL DEFAULT 0 CHECK (low_stock >= 0),
    activations_limit integer     CHECK (activations_limit >= 1),
    expires_in_days   integer     CHECK (expires_in_days >= 1),
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- id is the import order: keys are reserved lowest id first.
CREATE TABLE keys (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pool_id     bigint      NOT NULL REFERENCES pools (id),
    value       text        NOT NULL UNIQUE CHECK (value <> ''),
    state       key_state   NOT NULL DEFAULT 'available',
    grant_id    text,
    batch_id    text        NOT NULL,
    imported_at timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT keys_bound_unless_available CHECK ((state = 'available') = (grant_id IS NULL))
);
CREATE UNIQUE INDEX keys_one_live_key_per_grant ON keys (grant_id)
    WHERE state IN ('reserved', 'delivered', 'revoked');
-- Reservation scans only available keys of one pool, in import order.
CREATE INDEX keys_available ON keys (pool_id, id) WHERE state = 'available';

CREATE TABLE jobs (
    grant_id         text        PRIMARY KEY,
    entitlement_id   text        NOT NULL,
    customer_id      text        NOT NULL,
    state            job_state   NOT NULL DEFAULT 'queued',
    -- queued/retrying: when the job is due; running: when its lease expires.
    run_at           timestamptz NOT NULL DEFAULT now(),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    lease_token      bigint,
    key_id           bigint      UNIQUE REFERENCES keys (id),
    last_error       text,
    last_http_status integer,
    source           text        NOT NULL DEFAULT 'webhook',
    webhook_id       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    CONSTRAINT jobs_lease_only_while_running CHECK ((state = 'running') = (lease_token IS NOT NULL))
);
-- Only unfinished jobs are in this index, so claiming stays flat as finished history grows.
CREATE INDEX jobs_due ON jobs (run_at) WHERE state IN ('queued', 'retrying', 'running');
CREATE INDEX jobs_waiting ON jobs (entitlement_id) WHERE state = 'waiting_for_keys';
CREATE INDEX jobs_created_at ON jobs (created_at);
CREATE INDEX jobs_failed ON jobs (updated_at) WHERE state = 'failed';

-- Fencing tokens: every claim takes a new, larger one.
CREATE SEQUENCE job_lease_tokens;

CREATE TABLE attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    grant_id    text        NOT NULL REFERENCES jobs (grant_id) ON DELETE CASCADE,
    key_id      bigint      REFERENCES keys (id),
    started_at  timestamptz NOT NULL,
    duration_ms integer     NOT NULL,
    http_status integer,
    outcome     text        NOT NULL,
    error       text
);
CREATE INDEX attempts_grant_id ON attempts (grant_id, id);
