-- Periodic reads that cost what changed, not what is kept.
--
-- Compaction finds the rows appended since the last fold on a small index of them, instead of
-- grouping every kept row: the job and answer tallies keep a row per minute and group for
-- days (tens of thousands of rows at thirty days of history), and every process compacts
-- every few seconds. A folded row is marked; the rows writers append are not (the column's
-- default), and only those are indexed. A minute that turns a day old is found on an index of
-- the minute rows. Readers sum `n` as before. A job with no finish time is kept at
-- '-infinity' rather than NULL, so a group is found by plain equality.
--
-- Compaction and the webhook roll-up run without JIT: their statements take a millisecond,
-- but at millions of events the planner's estimate for a range it cannot see (a third of the
-- table) is costly enough to JIT-compile them, 150 ms each time.
--
-- Grants revoked for a reason keyrelay does not know get their own partial index, so the
-- review list reads them and not every refunded grant.

ALTER TABLE job_tallies ADD COLUMN folded boolean NOT NULL DEFAULT false;
ALTER TABLE answer_tallies ADD COLUMN folded boolean NOT NULL DEFAULT false;
UPDATE job_tallies SET finished_in = '-infinity' WHERE finished_in IS NULL;
ALTER TABLE job_tallies ALTER COLUMN finished_in SET NOT NULL;

CREATE OR REPLACE FUNCTION tally_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.state IN ('delivered', 'cancelled') THEN
        INSERT INTO job_tallies VALUES (OLD.state, OLD.entitlement_id,
                                        coalesce(tally_minute(OLD.finished_at), '-infinity'), -1);
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.state IN ('delivered', 'cancelled') THEN
        INSERT INTO job_tallies VALUES (NEW.state, NEW.entitlement_id,
                                        coalesce(tally_minute(NEW.finished_at), '-infinity'), 1);
    END IF;
    RETURN NULL;
END
$$;

CREATE INDEX job_tallies_appended ON job_tallies (entitlement_id) WHERE NOT folded;
CREATE INDEX job_tallies_group ON job_tallies (entitlement_id, state, finished_in);
-- Minutes not yet folded into their hour (a row on the hour is one already).
CREATE INDEX job_tallies_minutes ON job_tallies (finished_in)
    WHERE finished_in <> tally_hour(finished_in);
CREATE INDEX answer_tallies_appended ON answer_tallies (minute) WHERE NOT folded;

-- Folds each group that gained a row since the last fold into one row, then folds the minutes
-- that have turned a day old into their hour (its later minutes stay minutes until they do).
-- Its work follows what changed, not what is kept. Safe beside writers and other compactions:
-- it deletes only the rows its snapshot sees (a row another compaction took first is skipped)
-- and writes back their sum, so the total never changes.
CREATE OR REPLACE FUNCTION compact_tallies() RETURNS void LANGUAGE sql SET jit = off AS $$
    WITH due AS (
        SELECT DISTINCT state, entitlement_id, finished_in FROM job_tallies WHERE NOT folded
    ), gone AS (
        DELETE FROM job_tallies t USING due
        WHERE t.entitlement_id = due.entitlement_id AND t.state = due.state
          AND t.finished_in = due.finished_in
        RETURNING t.*
    )
    INSERT INTO job_tallies (state, entitlement_id, finished_in, n, folded)
    SELECT state, entitlement_id, finished_in, sum(n), true FROM gone
    GROUP BY 1, 2, 3 HAVING sum(n) <> 0;

    WITH due AS (
        SELECT DISTINCT state, entitlement_id, tally_hour(finished_in) AS hour FROM job_tallies
        WHERE finished_in <> tally_hour(finished_in) AND finished_in < now() - interval '1 day'
    ), gone AS (
        DELETE FROM job_tallies t USING due
        WHERE t.entitlement_id = due.entitlement_id AND t.state = due.state
          AND t.finished_in >= due.hour AND t.finished_in < due.hour + interval '1 hour'
          AND t.finished_in < now() - interval '1 day'
        RETURNING t.*
    )
    INSERT INTO job_tallies (state, entitlement_id, finished_in, n, folded)
    SELECT state, entitlement_id, tally_hour(finished_in), sum(n), true FROM gone
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
        SELECT DISTINCT minute, series FROM answer_tallies WHERE NOT folded
    ), gone AS (
        DELETE FROM answer_tallies t USING due
        WHERE t.minute = due.minute AND t.series = due.series
        RETURNING t.*
    )
    INSERT INTO answer_tallies (minute, series, n, folded)
    SELECT minute, series, sum(n), true FROM gone GROUP BY 1, 2;
$$;

ALTER FUNCTION roll_up_webhooks(interval) SET jit = off;

CREATE INDEX jobs_to_review ON jobs (updated_at)
    WHERE state = 'cancelled'
      AND last_error LIKE '%a reason keyrelay does not know, treated as a revoke; review it';
