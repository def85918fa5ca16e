-- pgbench ceiling for bench/queue (run by run.sh; see docs/PERFORMANCE.md).
-- One job per claim, TWO statements (two transactions), the same SQL shape
-- as btl_jobs_claim with limit 1 and btl_jobs_complete: claim with a lease
-- (UPDATE ... RETURNING, SKIP LOCKED), then mark it done.
UPDATE jobs SET status = 'running', locked_by = 'pgbench', lease_until = now() + interval '60 seconds',
       attempts = attempts + 1, attempted_at = now()
 WHERE id = ANY (ARRAY(SELECT id FROM jobs WHERE queue = 'generator' AND status = 'queued'
                        AND run_after <= now() ORDER BY priority DESC, run_after, id
                        LIMIT 1 FOR UPDATE SKIP LOCKED))
   AND status = 'queued'
RETURNING id \gset
UPDATE jobs SET status = 'done', finished_at = now(), lease_until = NULL
 WHERE id = ANY (ARRAY[:id]::bigint[]) AND status = 'running' AND locked_by = 'pgbench'
RETURNING id;
