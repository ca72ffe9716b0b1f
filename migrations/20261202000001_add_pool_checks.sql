-- What a worker found wrong with a pool's key source (no signing key, an unknown or
-- unreachable endpoint), and when it last looked; NULL problem = the source is usable.
ALTER TABLE pools
    ADD COLUMN source_problem text,
    ADD COLUMN source_checked_at timestamptz;

-- Keys with spaces inside are refused on import (a pasted header or sentence is not a key),
-- unless the pool was created to hold them (`pool add --keys-with-spaces`).
ALTER TABLE pools ADD COLUMN keys_with_spaces boolean NOT NULL DEFAULT false;
