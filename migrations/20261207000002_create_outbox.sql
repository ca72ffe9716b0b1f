-- The key's life after delivery.
--   * a suspended key still belongs to its grant: at most one live key per grant counts it
--     (written without naming 'suspended', which cannot be used in the transaction that
--     added it, and the pooler-only mode migrates in one transaction)
--   * jobs.subscription_id / grant_created_at: a newer grant of the same subscription and
--     entitlement, once delivered, revokes a suspended key for good
--   * keys.revocation_seq: taken from one sequence whenever a key is suspended, reinstated or
--     revoked, so the signed revocation list carries a number that grows with every change
--   * outbox: what keyrelay owes a vendor (`source:NAME`) or the shop (`shop`), written in the
--     transaction that made the change and sent by the deliverer
DROP INDEX keys_one_live_key_per_grant;
CREATE UNIQUE INDEX keys_one_live_key_per_grant ON keys (grant_id)
    WHERE state NOT IN ('available', 'rejected');

ALTER TABLE jobs
    ADD COLUMN subscription_id  text,
    ADD COLUMN grant_created_at timestamptz;
CREATE INDEX jobs_subscription ON jobs (subscription_id, entitlement_id)
    WHERE subscription_id IS NOT NULL;

CREATE SEQUENCE revocation_list_seq;
ALTER TABLE keys ADD COLUMN revocation_seq bigint;
CREATE INDEX keys_revocations ON keys (pool_id, revocation_seq) WHERE revocation_seq IS NOT NULL;

CREATE TYPE notice_state AS ENUM ('pending', 'failed', 'sent');

CREATE TABLE outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- `shop` (notify.url) or `source:NAME` (the revoke_url of [key_sources.NAME])
    target      text         NOT NULL,
    event_type  text         NOT NULL,
    grant_id    text,
    -- The key is read (and opened) when the notice is sent: it is never stored here.
    key_id      bigint       REFERENCES keys (id),
    -- What the notice says, apart from the key.
    data        jsonb        NOT NULL,
    state       notice_state NOT NULL DEFAULT 'pending',
    -- pending: when it is next due (pushed ahead while a deliverer sends it)
    run_at      timestamptz  NOT NULL DEFAULT now(),
    attempts    integer      NOT NULL DEFAULT 0,
    last_status integer,
    last_error  text,
    created_at  timestamptz  NOT NULL DEFAULT now(),
    -- when the current run of tries began (an operator's retry starts a new one)
    owed_since  timestamptz  NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX outbox_due ON outbox (run_at) WHERE state = 'pending';
CREATE INDEX outbox_failed ON outbox (id) WHERE state = 'failed';
CREATE INDEX outbox_created_at ON outbox (created_at);
CREATE INDEX outbox_grant ON outbox (grant_id) WHERE grant_id IS NOT NULL;
-- Notices about one key reach each receiver in the order the changes were made: one waits
-- while an older one for the same key and receiver is not sent.
CREATE INDEX outbox_key_order ON outbox (key_id, target, id)
    WHERE key_id IS NOT NULL AND state <> 'sent';
