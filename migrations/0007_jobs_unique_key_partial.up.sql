-- Most jobs carry no unique key, yet every job's row versions (enqueue,
-- claim, completion: none of them HOT, status is in partial indexes) each
-- inserted a NULL entry into the unique index. Only keys are indexed now;
-- enqueues name the index's predicate in ON CONFLICT.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique_key_set_idx ON jobs (unique_key)
    WHERE unique_key IS NOT NULL;
DROP INDEX IF EXISTS jobs_unique_key_idx;
