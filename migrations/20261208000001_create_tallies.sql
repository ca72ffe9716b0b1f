-- Counts kept as rows change, so a scrape, the overview and the forecast read a few rows
-- however much history is stored. Every statement that inserts, updates or deletes jobs or
-- keys appends its net change to a tally (a statement-level trigger over the statement's
-- transition tables: one row per group it touched). Writers only append, so concurrent
-- writers never wait on a shared counter row; `compact_tallies()` folds the appended rows
-- together now and then, and a sum over a tally is always the exact count.

CREATE TABLE job_tallies (
    state          job_state   NOT NULL,
    entitlement_id text        NOT NULL,
    -- The hour (UTC) a finished job finished in; NULL while it is unfinished.
    hour           timestamptz,
    n              bigint      NOT NULL
);

CREATE TABLE key_tallies (
    pool_id bigint    NOT NULL,
    state   key_state NOT NULL,
    n       bigint    NOT NULL
);

-- The hour a time falls in, the same whatever the session's time zone.
CREATE FUNCTION tally_hour(at timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT to_timestamp(floor(extract(epoch FROM at) / 3600) * 3600) $$;

CREATE FUNCTION tally_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO job_tallies (state, entitlement_id, hour, n)
        SELECT state, entitlement_id, tally_hour(finished_at), count(*)
        FROM new_jobs GROUP BY 1, 2, 3;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO job_tallies (state, entitlement_id, hour, n)
        SELECT state, entitlement_id, tally_hour(finished_at), -count(*)
        FROM old_jobs GROUP BY 1, 2, 3;
    ELSE
        INSERT INTO job_tallies (state, entitlement_id, hour, n)
        SELECT state, entitlement_id, hour, sum(n)
        FROM (SELECT state, entitlement_id, tally_hour(finished_at) AS hour, 1 AS n FROM new_jobs
              UNION ALL
              SELECT state, entitlement_id, tally_hour(finished_at), -1 FROM old_jobs) AS moved
        GROUP BY 1, 2, 3 HAVING sum(n) <> 0;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION tally_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO key_tallies (pool_id, state, n)
        SELECT pool_id, state, count(*) FROM new_keys GROUP BY 1, 2;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO key_tallies (pool_id, state, n)
        SELECT pool_id, state, -count(*) FROM old_keys GROUP BY 1, 2;
    ELSE
        INSERT INTO key_tallies (pool_id, state, n)
        SELECT pool_id, state, sum(n)
        FROM (SELECT pool_id, state, 1 AS n FROM new_keys
              UNION ALL
              SELECT pool_id, state, -1 FROM old_keys) AS moved
        GROUP BY 1, 2 HAVING sum(n) <> 0;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_tally_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs FOR EACH STATEMENT EXECUTE FUNCTION tally_jobs();
CREATE TRIGGER jobs_tally_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION tally_jobs();
CREATE TRIGGER jobs_tally_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_jobs FOR EACH STATEMENT EXECUTE FUNCTION tally_jobs();

CREATE TRIGGER keys_tally_insert AFTER INSERT ON keys
    REFERENCING NEW TABLE AS new_keys FOR EACH STATEMENT EXECUTE FUNCTION tally_keys();
CREATE TRIGGER keys_tally_update AFTER UPDATE ON keys
    REFERENCING OLD TABLE AS old_keys NEW TABLE AS new_keys
    FOR EACH STATEMENT EXECUTE FUNCTION tally_keys();
CREATE TRIGGER keys_tally_delete AFTER DELETE ON keys
    REFERENCING OLD TABLE AS old_keys FOR EACH STATEMENT EXECUTE FUNCTION tally_keys();

-- Folds each tally's rows into one per group. Safe beside writers and other compactions: it
-- deletes only the rows its snapshot sees (a row another compaction took first is skipped)
-- and writes back their sum, so the total never changes.
CREATE FUNCTION compact_tallies() RETURNS void LANGUAGE sql AS $$
    WITH gone AS (DELETE FROM job_tallies RETURNING *)
    INSERT INTO job_tallies (state, entitlement_id, hour, n)
    SELECT state, entitlement_id, hour, sum(n) FROM gone GROUP BY 1, 2, 3 HAVING sum(n) <> 0;
    WITH gone AS (DELETE FROM key_tallies RETURNING *)
    INSERT INTO key_tallies (pool_id, state, n)
    SELECT pool_id, state, sum(n) FROM gone GROUP BY 1, 2 HAVING sum(n) <> 0;
$$;

-- What is stored now (the triggers above hold the tables until this transaction ends).
INSERT INTO job_tallies (state, entitlement_id, hour, n)
SELECT state, entitlement_id, tally_hour(finished_at), count(*) FROM jobs GROUP BY 1, 2, 3;
INSERT INTO key_tallies (pool_id, state, n)
SELECT pool_id, state, count(*) FROM keys GROUP BY 1, 2;
