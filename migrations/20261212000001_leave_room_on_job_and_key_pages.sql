-- Every page of jobs and keys keeps a tenth of itself free. A new row takes a page only if
-- the row and that tenth fit, so sales no longer land one per page in the gaps a packed
-- history leaves (a restore, VACUUM FULL, or rows written in bulk fill each page but for less
-- than a row, and a queued job is smaller than a finished one): at five million finished jobs
-- every grant of a burst had its own page, read from disk and written out whole after each
-- checkpoint, in each of its three updates. Updates may use the free tenth, so a job's new
-- versions often stay on its page. Pages already written keep their layout; the setting
-- applies to what is written from now on.
ALTER TABLE jobs SET (fillfactor = 90);
ALTER TABLE keys SET (fillfactor = 90);
