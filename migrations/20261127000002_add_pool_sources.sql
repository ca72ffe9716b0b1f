-- A pool's source: `list` pools hand out imported keys; `generate` (from a template) and `sign`
-- (Ed25519) pools make a key for each grant when its job is claimed, so they never run dry.
ALTER TABLE pools
    ADD COLUMN source   text NOT NULL DEFAULT 'list'
        CHECK (source IN ('list', 'generate', 'sign')),
    ADD COLUMN template text,
    ADD COLUMN alphabet text,
    ADD CONSTRAINT pools_template_for_generate
        CHECK ((source = 'generate') = (template IS NOT NULL)),
    ADD CONSTRAINT pools_alphabet_for_generate
        CHECK (alphabet IS NULL OR source = 'generate');
