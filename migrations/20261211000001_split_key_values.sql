-- A key's look-up hash and its searchable tail are written once, when the key is stored, and
-- never change while the key moves through its states. They live in their own table because
-- every state change of a key is a new row version that Postgres writes into every index on
-- `keys` (`state` decides partial indexes, so the update cannot be HOT): with the hash and the
-- tail on `keys`, each reservation and each delivery also wrote into two indexes keyed by
-- random values, which at millions of keys outgrow memory and cost a disk read each.
--
-- `value_hash` is where values are unique: a key is stored only once its value is claimed
-- here, in the same statement. `key_id` has no foreign key: keys are never deleted, and the
-- check would lock each new key's row, a write per key of an import. `tail` is NULL until it
-- is known (keys sealed from an earlier keyrelay's plaintext are given it at start), empty
-- when the masked key shows none.
CREATE TABLE key_values (
    value_hash bytea  NOT NULL,
    key_id     bigint NOT NULL,
    tail       text
);
INSERT INTO key_values (value_hash, key_id, tail)
SELECT value_hash, id, tail FROM keys WHERE value_hash IS NOT NULL;
ALTER TABLE key_values
    ADD PRIMARY KEY (value_hash),
    ADD CONSTRAINT key_values_key_id_key UNIQUE (key_id);
CREATE INDEX key_values_tail ON key_values (tail) WHERE tail IS NOT NULL;
-- Keys still to be given their tail: empty once they are, so the check at each start is free.
CREATE INDEX key_values_without_tail ON key_values (key_id) WHERE tail IS NULL;
-- Statistics now, not when autovacuum comes: without them a search by a key's last four
-- characters was planned as a parallel scan (7 ms instead of 0.5 at a million keys).
ANALYZE key_values;

ALTER TABLE keys
    DROP CONSTRAINT keys_sealed_or_legacy,
    DROP COLUMN value_hash,
    DROP COLUMN tail,
    ADD CONSTRAINT keys_sealed_or_legacy CHECK (
        (value_sealed IS NOT NULL AND sealed_with IS NOT NULL) <> (value IS NOT NULL));
