-- Verified webhooks keyrelay cannot process (an id too long, a type Postgres cannot hold) are
-- kept with the reason, so an operator can see them; they create no job.
ALTER TABLE events ADD COLUMN problem text;
CREATE INDEX events_with_problem ON events (received_at) WHERE problem IS NOT NULL;
