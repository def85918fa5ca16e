-- The claim orders by (priority DESC, run_after, id); an index in exactly
-- that order lets it read the first batch instead of sorting every queued
-- job (claims slowed as the backlog grew).
CREATE INDEX IF NOT EXISTS jobs_claim_order_idx
    ON jobs (queue, priority DESC, run_after, id) WHERE status = 'queued';
DROP INDEX IF EXISTS jobs_claim_idx;
