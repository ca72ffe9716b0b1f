-- Dodo limits calls per API key, so every keyrelay process on this database draws its calls
-- from one budget. `rate_budget` holds the turn counter and a pause (after a 429);
-- `rate_turns` the time of each recent turn, so a caller can check "no more than B calls in any
-- second and M in any minute" against every process's calls. Both are UNLOGGED: they are only
-- worth a minute of history, need no WAL, and an emptied table after a crash is harmless.
CREATE UNLOGGED TABLE rate_budget (
    name         text        PRIMARY KEY,
    last_turn    bigint      NOT NULL DEFAULT 0,
    paused_until timestamptz NOT NULL DEFAULT '-infinity'
);

CREATE UNLOGGED TABLE rate_turns (
    budget text        NOT NULL,
    turn   bigint      NOT NULL,
    at     timestamptz NOT NULL,
    PRIMARY KEY (budget, turn)
);
CREATE INDEX rate_turns_by_time ON rate_turns (budget, at);

-- Takes the next turn of `budget_name` and returns when it may be used: the earliest time at
-- or after `asked_at` (default: now) that keeps at most `burst` turns in any 1.25 s and
-- `per_minute` turns in any 61 s. The windows are wider than Dodo's (1 s, 60 s) so that a call
-- that leaves a little late cannot land in the previous window. The budget row's lock orders
-- callers; each statement below then sees every turn committed before it.
CREATE FUNCTION take_rate_turn(budget_name text, burst integer, per_minute integer,
                               asked_at timestamptz DEFAULT NULL)
RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    this_turn bigint;
    pause     timestamptz;
    turn_at   timestamptz;
BEGIN
    INSERT INTO rate_budget AS b (name, last_turn) VALUES (budget_name, 1)
    ON CONFLICT (name) DO UPDATE SET last_turn = b.last_turn + 1
    RETURNING b.last_turn, b.paused_until INTO this_turn, pause;

    SELECT greatest(coalesce(asked_at, clock_timestamp()), pause,
                    max(at) FILTER (WHERE turn = this_turn - 1),
                    max(at) FILTER (WHERE turn = this_turn - burst) + interval '1.25 s',
                    max(at) FILTER (WHERE turn = this_turn - per_minute) + interval '61 s')
      INTO turn_at
      FROM rate_turns
     WHERE budget = budget_name
       AND turn IN (this_turn - 1, this_turn - burst, this_turn - per_minute);

    INSERT INTO rate_turns (budget, turn, at) VALUES (budget_name, this_turn, turn_at);
    -- A turn more than a minute before this one can no longer hold anyone back.
    DELETE FROM rate_turns
     WHERE budget = budget_name AND at < turn_at - interval '61 s';
    RETURN turn_at;
END;
$$;
