-- keyrelay's statements each touch a few rows, but a planner's guess at millions of rows (a
-- LIMIT it cannot see, a table's whole size) prices some of them past jit_above_cost, and
-- then every call pays milliseconds to compile: at five million finished jobs the statement
-- that reserves keys was compiled on a quarter of its calls, a tenth of a drain's time. New
-- sessions on this database run without JIT. A role that may not alter the database sets it
-- for itself here; one that may do neither keeps the server's setting, and the server's log
-- says so.
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET jit = off', current_database());
EXCEPTION WHEN insufficient_privilege THEN
    BEGIN
        EXECUTE format('ALTER ROLE CURRENT_USER IN DATABASE %I SET jit = off', current_database());
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE WARNING 'keyrelay could not turn JIT off for its sessions (no right to alter the database or its own role); run ALTER DATABASE % SET jit = off as its owner', quote_ident(current_database());
    END;
END
$$;
