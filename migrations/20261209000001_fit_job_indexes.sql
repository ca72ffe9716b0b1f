-- Failed jobs are listed newest created first (the jobs page's state filter, the attention
-- page), so their index follows that order: with thousands failed, a page reads its rows off
-- the index instead of sorting every failed job or scanning all jobs for the few that failed.
DROP INDEX jobs_failed;
CREATE INDEX jobs_failed ON jobs (created_at, grant_id) WHERE state = 'failed';

-- Each pool's sales are read from job_tallies now; nothing reads this index, and every
-- delivery paid for an entry in it.
DROP INDEX jobs_delivered;
