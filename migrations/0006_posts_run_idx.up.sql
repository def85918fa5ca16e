-- The curator decides a generation run's posts together: it looks them up
-- by run_id (pending and undecided ones, approvals so far) every few
-- seconds while the run lasts.
CREATE INDEX IF NOT EXISTS posts_run_idx ON posts (run_id) WHERE run_id IS NOT NULL;
