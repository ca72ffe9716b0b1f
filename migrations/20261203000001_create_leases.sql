-- Locks that must outlive one transaction where no session can hold them (behind a
-- transaction pooler without a direct connection): one row per lock, held by `holder` until
-- it is released or `expires_at` passes (a holder that died cannot keep it).
CREATE TABLE leases (
    name text PRIMARY KEY,
    holder bigint NOT NULL,
    expires_at timestamptz NOT NULL
);
