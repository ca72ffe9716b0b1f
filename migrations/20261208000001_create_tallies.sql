-- Counts kept as rows change, so a scrape, the overview and the forecast read a few rows
-- however much history is stored. Only the states that pile up are kept: finished jobs
-- (delivered, cancelled) and keys that left stock for good (delivered, rejected, suspended,
-- revoked; written `NOT IN ('available', 'reserved')`, since `suspended` is new in this
-- transaction when all migrations run in one). The other states are few and counted on
-- their partial indexes. A row trigger appends +1 or -1 as a row enters or leaves a kept
-- state, in the statement that changes the row; its WHEN clause keeps every other write free
-- of it. Writers only append, so concurrent writers never wait on a shared counter row;
-- `compact_tallies()` folds the appended rows together now and then, and a sum over a tally
-- is always the exact count.
--
-- Finished jobs are kept by the minute they finished in for a day (the charts and the last
-- day's sales read them), then folded into the hour. Dodo's answers are kept by the minute,
-- appended by the statement that records the attempts (one row per batch and minute), for the
-- charts; they are dropped with the history they describe. Webhooks received are counted per
-- minute too, but intake writes nothing for it (a webhook stays one insert): finished minutes
-- are rolled up from `events` once they have settled (roll_up_webhooks()), and a chart counts
-- only the minutes since from the events themselves.

CREATE TABLE job_tallies (
    state          job_state   NOT NULL,
    entitlement_id text        NOT NULL,
    -- The minute (UTC) the job finished in; the hour, once it is more than a day old.
    finished_in    timestamptz,
    n              bigint      NOT NULL
);

CREATE TABLE answer_tallies (
    minute timestamptz NOT NULL,
    -- As the metrics name Dodo's answers: 2xx, 409, 429, 4xx, 5xx, no_answer, other.
    series text        NOT NULL,
    n      bigint      NOT NULL
);
CREATE INDEX answer_tallies_minute ON answer_tallies (minute);

-- One row per minute rolled up, webhooks or not: the last one is where the events take over.
CREATE TABLE webhook_minutes (
    minute timestamptz PRIMARY KEY,
    n      bigint      NOT NULL
);

CREATE TABLE key_tallies (
    pool_id bigint    NOT NULL,
    state   key_state NOT NULL,
    n       bigint    NOT NULL
);

-- Reserved keys are few (one per job in flight): counted on this index, not kept.
CREATE INDEX keys_reserved ON keys (pool_id) WHERE state = 'reserved';

-- The hour a time falls in, the same whatever the session's time zone.
CREATE FUNCTION tally_hour(at timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT to_timestamp(floor(extract(epoch FROM at) / 3600) * 3600) $$;

CREATE FUNCTION tally_minute(at timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT to_timestamp(floor(extract(epoch FROM at) / 60) * 60) $$;

-- Where a finished job's count is kept: its minute for a day, then its hour.
CREATE FUNCTION tally_bucket(at timestamptz) RETURNS timestamptz
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT CASE WHEN at < now() - interval '1 day' THEN tally_hour(at) ELSE tally_minute(at) END $$;

-- Dodo's answer by class, as the metrics and the charts name it.
CREATE FUNCTION answer_class(http_status int) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE WHEN http_status BETWEEN 200 AND 299 THEN '2xx'
                      WHEN http_status IN (409, 429) THEN http_status::text
                      WHEN http_status BETWEEN 400 AND 499 THEN '4xx'
                      WHEN http_status BETWEEN 500 AND 599 THEN '5xx'
                      WHEN http_status IS NULL THEN 'no_answer' ELSE 'other' END $$;

CREATE FUNCTION tally_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.state IN ('delivered', 'cancelled') THEN
        INSERT INTO job_tallies VALUES (OLD.state, OLD.entitlement_id, tally_minute(OLD.finished_at), -1);
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.state IN ('delivered', 'cancelled') THEN
        INSERT INTO job_tallies VALUES (NEW.state, NEW.entitlement_id, tally_minute(NEW.finished_at), 1);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION tally_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.state NOT IN ('available', 'reserved') THEN
        INSERT INTO key_tallies VALUES (OLD.pool_id, OLD.state, -1);
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.state NOT IN ('available', 'reserved') THEN
        INSERT INTO key_tallies VALUES (NEW.pool_id, NEW.state, 1);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_tally_insert AFTER INSERT ON jobs FOR EACH ROW
    WHEN (NEW.state IN ('delivered', 'cancelled'))
    EXECUTE FUNCTION tally_job();
CREATE TRIGGER jobs_tally_update AFTER UPDATE OF state, entitlement_id, finished_at ON jobs
    FOR EACH ROW
    WHEN ((OLD.state IN ('delivered', 'cancelled') OR NEW.state IN ('delivered', 'cancelled'))
          AND (OLD.state, OLD.entitlement_id, tally_minute(OLD.finished_at))
              IS DISTINCT FROM (NEW.state, NEW.entitlement_id, tally_minute(NEW.finished_at)))
    EXECUTE FUNCTION tally_job();
CREATE TRIGGER jobs_tally_delete AFTER DELETE ON jobs FOR EACH ROW
    WHEN (OLD.state IN ('delivered', 'cancelled'))
    EXECUTE FUNCTION tally_job();

CREATE TRIGGER keys_tally_insert AFTER INSERT ON keys FOR EACH ROW
    WHEN (NEW.state NOT IN ('available', 'reserved'))
    EXECUTE FUNCTION tally_key();
CREATE TRIGGER keys_tally_update AFTER UPDATE OF state, pool_id ON keys FOR EACH ROW
    WHEN ((OLD.state NOT IN ('available', 'reserved')
           OR NEW.state NOT IN ('available', 'reserved'))
          AND (OLD.state, OLD.pool_id) IS DISTINCT FROM (NEW.state, NEW.pool_id))
    EXECUTE FUNCTION tally_key();
CREATE TRIGGER keys_tally_delete AFTER DELETE ON keys FOR EACH ROW
    WHEN (OLD.state NOT IN ('available', 'reserved'))
    EXECUTE FUNCTION tally_key();

-- Folds each tally's rows into one per group, touching only the groups with more than one row
-- (or a day-old minute to fold into its hour): its work follows what changed since the last
-- fold, not what is kept. Safe beside writers and other compactions: it deletes only the rows
-- its snapshot sees (a row another compaction took first is skipped) and writes back their
-- sum, so the total never changes.
CREATE FUNCTION compact_tallies() RETURNS void LANGUAGE sql AS $$
    WITH due AS (
        SELECT state, entitlement_id, coalesce(tally_bucket(finished_in), '-infinity') AS bucket
        FROM job_tallies GROUP BY 1, 2, 3
        HAVING count(*) > 1 OR bool_or(finished_in IS DISTINCT FROM tally_bucket(finished_in))
    ), gone AS (
        DELETE FROM job_tallies t USING due
        WHERE t.state = due.state AND t.entitlement_id = due.entitlement_id
          AND coalesce(tally_bucket(t.finished_in), '-infinity') = due.bucket
        RETURNING t.*
    )
    INSERT INTO job_tallies (state, entitlement_id, finished_in, n)
    SELECT state, entitlement_id, tally_bucket(finished_in), sum(n) FROM gone
    GROUP BY 1, 2, 3 HAVING sum(n) <> 0;

    WITH due AS (
        SELECT pool_id, state FROM key_tallies GROUP BY 1, 2 HAVING count(*) > 1
    ), gone AS (
        DELETE FROM key_tallies t USING due
        WHERE t.pool_id = due.pool_id AND t.state = due.state
        RETURNING t.*
    )
    INSERT INTO key_tallies (pool_id, state, n)
    SELECT pool_id, state, sum(n) FROM gone GROUP BY 1, 2 HAVING sum(n) <> 0;

    WITH due AS (
        SELECT minute, series FROM answer_tallies GROUP BY 1, 2 HAVING count(*) > 1
    ), gone AS (
        DELETE FROM answer_tallies t USING due
        WHERE t.minute = due.minute AND t.series = due.series
        RETURNING t.*
    )
    INSERT INTO answer_tallies (minute, series, n)
    SELECT minute, series, sum(n) FROM gone GROUP BY 1, 2;
$$;

-- Counts the webhooks of each minute since the last one rolled up (at most a day back) that
-- ended `settled` ago or more: long enough for any webhook stamped in it to have committed
-- (intake gives a webhook's insert 0.8 s). Each minute is rolled up once, whichever process
-- gets there first.
CREATE FUNCTION roll_up_webhooks(settled interval) RETURNS void LANGUAGE sql AS $$
    INSERT INTO webhook_minutes (minute, n)
    SELECT m, (SELECT count(*) FROM events
               WHERE received_at >= m AND received_at < m + interval '1 minute')
    FROM generate_series(
        greatest((SELECT max(minute) + interval '1 minute' FROM webhook_minutes),
                 tally_minute(now() - interval '1 day')),
        tally_minute(now() - settled) - interval '1 minute',
        interval '1 minute') AS m
    ON CONFLICT (minute) DO NOTHING;
$$;

-- What is stored now (the triggers above hold the tables until this transaction ends).
INSERT INTO job_tallies (state, entitlement_id, finished_in, n)
SELECT state, entitlement_id, tally_bucket(finished_at), count(*) FROM jobs
WHERE state IN ('delivered', 'cancelled') GROUP BY 1, 2, 3;
INSERT INTO answer_tallies (minute, series, n)
SELECT tally_minute(started_at), answer_class(http_status), count(*) FROM attempts
WHERE started_at > now() - interval '1 day' AND outcome NOT IN ('internal_error', 'no_key')
GROUP BY 1, 2;
INSERT INTO key_tallies (pool_id, state, n)
SELECT pool_id, state, count(*) FROM keys
WHERE state NOT IN ('available', 'reserved') GROUP BY 1, 2;
SELECT roll_up_webhooks(interval '2 minutes');
