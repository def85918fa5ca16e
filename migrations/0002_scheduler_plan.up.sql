-- The scheduler keeps the nominal (unjittered) due time of the next fire
-- next to next_run, so jitter never drifts an interval schedule, and records
-- which scheduler instance fired each run.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS next_due timestamptz;
ALTER TABLE task_runs ADD COLUMN IF NOT EXISTS fired_by text;
