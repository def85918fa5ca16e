-- One post per generation job, even when a job is delivered twice (a lost
-- lease): the generator inserts with ON CONFLICT DO NOTHING, and this index
-- also serves its "already written?" lookup.
CREATE UNIQUE INDEX IF NOT EXISTS posts_job_key_idx ON posts ((metadata->>'job_key'))
    WHERE metadata ? 'job_key';
