-- pgbench ceiling for bench/queue (run by run.sh; see docs/PERFORMANCE.md).
-- One job per transaction, ONE statement: claim the first queued job in
-- claim order (jobs_claim_order_idx) with FOR UPDATE SKIP LOCKED and mark
-- it done in the same UPDATE ... RETURNING. The least work Postgres can do
-- per job on our schema: no lease, no second round trip.
UPDATE jobs SET status = 'done', attempts = attempts + 1, attempted_at = now(), finished_at = now()
 WHERE id = (SELECT id FROM jobs WHERE queue = 'generator' AND status = 'queued' AND run_after <= now()
              ORDER BY priority DESC, run_after, id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id;
