-- Key values are kept sealed (src/crypto.rs): `value_sealed` is the ciphertext, bound to the
-- row's id; `value_hash` the keyed look-up hash on which values are unique; `sealed_with` the
-- id of the encryption key that sealed it, which `keyrelay keys rotate` looks for. `value`
-- held the plaintext in earlier versions: `keyrelay migrate` seals what it finds there and
-- clears it, so no new row ever has it.
ALTER TABLE keys
    ALTER COLUMN value DROP NOT NULL,
    DROP CONSTRAINT keys_value_key,
    ADD COLUMN value_sealed bytea,
    ADD COLUMN value_hash   bytea,
    ADD COLUMN sealed_with  integer,
    ADD CONSTRAINT keys_value_hash_key UNIQUE (value_hash),
    ADD CONSTRAINT keys_sealed_or_legacy CHECK (
        (value_sealed IS NOT NULL AND value_hash IS NOT NULL AND sealed_with IS NOT NULL)
        <> (value IS NOT NULL));

-- A value is sealed for its row id, so ids are taken before the insert: each nextval reserves
-- a block of 1,000 (one call per 1,000 keys of an import instead of one per key).
ALTER TABLE keys ALTER COLUMN id SET INCREMENT BY 1000;

-- Delivered events carry the key Dodo holds (`data.license_key.key`): it is stored sealed in
-- the payload as `key_sealed`; this says under which encryption key, for rotation.
ALTER TABLE events ADD COLUMN key_sealed_with integer;
CREATE INDEX events_key_sealed_with ON events (key_sealed_with) WHERE key_sealed_with IS NOT NULL;
