-- The curator decides a generation run's posts together: it looks them up
-- by run_id (pending and undecided ones, approvals so far) every few
-- seconds while the run lasts.
CREATE INDEX IF NOT EXISTS posts_run_idx ON posts (run_id) WHERE run_id IS NOT NULL;

-- The curator renews the claims it holds (claimed_by = its instance) while
-- an LLM call runs; without this it filtered every pending post.
CREATE INDEX IF NOT EXISTS posts_pending_claimed_idx ON posts (claimed_by)
    WHERE status = 'pending' AND claimed_by IS NOT NULL;
