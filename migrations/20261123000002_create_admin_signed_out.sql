-- Admin sessions signed out before they expired: their cookies no longer open anything, in any
-- keyrelay process. Rows are dropped once the session would have expired anyway.
CREATE TABLE admin_signed_out (
    session_mac text        PRIMARY KEY,
    expires_at  timestamptz NOT NULL
);
