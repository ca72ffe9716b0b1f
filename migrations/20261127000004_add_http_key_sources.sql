-- `http` pools get their keys from an endpoint (`[key_sources.NAME]`): keyrelay asks it once
-- per grant, with an idempotency key derived from the grant, and binds what it answers.
ALTER TABLE pools DROP CONSTRAINT pools_source_check;
ALTER TABLE pools
    ADD CONSTRAINT pools_source_check CHECK (source IN ('list', 'generate', 'sign', 'http')),
    ADD COLUMN endpoint text,
    ADD CONSTRAINT pools_endpoint_for_http CHECK ((source = 'http') = (endpoint IS NOT NULL));

-- Every key an endpoint answered, bound or not. A second, different key for the same grant and
-- idempotency key means the endpoint ignored the idempotency key: that license is `orphan`,
-- shown to operators to revoke at the vendor. Only a masked form and the look-up hash are kept.
CREATE TABLE received_keys (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    grant_id        text        NOT NULL,
    idempotency_key text        NOT NULL,
    value_hash      bytea       NOT NULL,
    masked          text        NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    bound           boolean     NOT NULL,
    orphan          boolean     NOT NULL
);
CREATE INDEX received_keys_grant ON received_keys (grant_id, id);
CREATE INDEX received_keys_orphan ON received_keys (received_at) WHERE orphan;
