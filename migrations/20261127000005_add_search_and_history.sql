-- Finding grants the way people ask for them, and the history the dashboard charts.
--   * jobs.payment_id: the grant's payment, from the webhook or Dodo's grant list
--   * keys.tail: the last four characters of a key, the ones its masked form shows (NULL when
--     the mask shows none), so a key is found by what the customer can read out
--   * queue_samples: unfinished and failed jobs by state, once a minute

ALTER TABLE jobs ADD COLUMN payment_id text;
UPDATE jobs SET payment_id = events.payload -> 'data' ->> 'payment_id'
FROM events
WHERE events.webhook_id = jobs.webhook_id
  AND length(events.payload -> 'data' ->> 'payment_id') BETWEEN 1 AND 255
  AND events.payload -> 'data' ->> 'payment_id' !~ '[[:cntrl:]]';

CREATE INDEX jobs_customer ON jobs (customer_id, created_at);
CREATE INDEX jobs_payment ON jobs (payment_id) WHERE payment_id IS NOT NULL;
-- Sales per pool over the last day and week (the stock forecast), counted from the index.
CREATE INDEX jobs_delivered ON jobs (entitlement_id, finished_at) WHERE state = 'delivered';
-- Lists filtered by a rare state (cancelled) stay index scans with millions of delivered jobs.
CREATE INDEX jobs_cancelled ON jobs (created_at) WHERE state = 'cancelled';

ALTER TABLE keys ADD COLUMN tail text;
CREATE INDEX keys_tail ON keys (tail) WHERE tail IS NOT NULL;
-- Keys stored before `tail` existed, which `serve` and `migrate` fill in at start: once they
-- are done this index is empty, and the check at each start costs nothing.
CREATE INDEX keys_without_tail ON keys (id) WHERE tail IS NULL AND value_sealed IS NOT NULL;

-- Attempts are appended in time order: a BRIN index answers "the last hour" for almost no
-- upkeep on the hot path.
CREATE INDEX attempts_started_at ON attempts USING brin (started_at);

CREATE TABLE queue_samples (
    at    timestamptz NOT NULL,
    state job_state   NOT NULL,
    jobs  bigint      NOT NULL,
    PRIMARY KEY (at, state)
);
