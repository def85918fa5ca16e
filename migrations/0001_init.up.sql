-- Botticelli initial schema (DESIGN.md §4). Applied by btl_db_migrate inside
-- one transaction: no BEGIN/COMMIT here. Status columns carry CHECK
-- constraints so a bug cannot write a state the services do not know.
-- Text bounds mirror the fixed C buffers that read them back (btl_job etc.).

-- One row per configured schedule; the scheduler keeps it in sync with the
-- config (config_hash) and records outcomes and the circuit breaker here.
CREATE TABLE tasks (
    task_id              text PRIMARY KEY CHECK (task_id <> '' AND length(task_id) <= 127),
    service              text NOT NULL CHECK (service <> '' AND length(service) <= 31),
    schedule             text NOT NULL,
    timezone             text NOT NULL DEFAULT 'UTC',
    last_run             timestamptz,
    next_run             timestamptz,
    consecutive_failures int NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    is_paused            boolean NOT NULL DEFAULT false,
    paused_reason        text,
    circuit_state        text NOT NULL DEFAULT 'closed'
                         CHECK (circuit_state IN ('closed', 'open', 'half_open')),
    circuit_opened_at    timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    config_hash          text,
    last_due             timestamptz,
    last_status          text CHECK (last_status IN ('ok', 'failed', 'skipped', 'running')),
    last_error           text,
    last_success         timestamptz,
    trial_run_id         bigint,          -- the half-open probe run of the circuit breaker
    created_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tasks_next_run_idx ON tasks (next_run) WHERE NOT is_paused;

-- One row per fire of a task. Manual triggers may share a due time, so the
-- de-duplication of a fire is an explicit, optional unique_key.
CREATE TABLE task_runs (
    run_id      bigserial PRIMARY KEY,
    task_id     text NOT NULL CHECK (task_id <> '' AND length(task_id) <= 127),
    due_at      timestamptz NOT NULL,
    fired_at    timestamptz NOT NULL DEFAULT now(),
    reason      text NOT NULL CHECK (reason IN ('scheduled', 'manual', 'catchup', 'startup')),
    status      text NOT NULL DEFAULT 'fired'
                CHECK (status IN ('fired', 'running', 'done', 'failed', 'skipped')),
    unique_key  text UNIQUE,
    finished_at timestamptz,
    error       text
);
CREATE INDEX task_runs_task_idx ON task_runs (task_id, fired_at DESC);

-- The durable work queue (libshared/src/jobs.c). queue = the service that
-- runs the job (generator|curator|poster).
CREATE TABLE jobs (
    id           bigserial PRIMARY KEY,
    queue        text NOT NULL CHECK (queue <> '' AND length(queue) <= 31),
    kind         text NOT NULL CHECK (kind <> '' AND length(kind) <= 63),
    task_id      text CHECK (length(task_id) <= 127),
    run_id       bigint,
    payload      jsonb NOT NULL DEFAULT '{}',
    status       text NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'running', 'done', 'failed', 'dead')),
    priority     int NOT NULL DEFAULT 0,
    attempts     int NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts int NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    run_after    timestamptz NOT NULL DEFAULT now(),
    lease_until  timestamptz,
    locked_by    text,
    last_error   text,
    unique_key   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    attempted_at timestamptz,
    finished_at  timestamptz,
    -- A running job always has a holder and a lease (rescue depends on it).
    CHECK (status <> 'running' OR (lease_until IS NOT NULL AND locked_by IS NOT NULL))
);
-- NULL keys never collide; a key stays taken until cleanup deletes its job.
CREATE UNIQUE INDEX jobs_unique_key_idx ON jobs (unique_key);
CREATE INDEX jobs_claim_idx ON jobs (queue, run_after) WHERE status = 'queued';
CREATE INDEX jobs_lease_idx ON jobs (lease_until) WHERE status = 'running';
CREATE INDEX jobs_finished_idx ON jobs (finished_at) WHERE status IN ('done', 'dead');
CREATE INDEX jobs_run_idx ON jobs (run_id) WHERE run_id IS NOT NULL;

-- One row per drain of a job batch by one instance (exec.result).
CREATE TABLE executions (
    id            bigserial PRIMARY KEY,
    task_id       text NOT NULL,
    run_id        bigint,
    service       text NOT NULL,
    instance      text NOT NULL,
    trigger       text NOT NULL DEFAULT 'scheduled',
    started_at    timestamptz NOT NULL,
    completed_at  timestamptz,
    success       boolean NOT NULL,
    error_message text,
    items_ok      int NOT NULL DEFAULT 0 CHECK (items_ok >= 0),
    items_failed  int NOT NULL DEFAULT 0 CHECK (items_failed >= 0),
    items_skipped int NOT NULL DEFAULT 0 CHECK (items_skipped >= 0),
    metadata      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX executions_task_idx ON executions (task_id, started_at DESC);
CREATE INDEX executions_started_idx ON executions (started_at);

-- Candidate and published posts. content_hash stops the same text twice.
CREATE TABLE posts (
    id            bigserial PRIMARY KEY,
    content_hash  text NOT NULL UNIQUE,
    body          text NOT NULL,
    narrative     text,
    angle         text,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'approved', 'rejected', 'posting', 'posted',
                                    'failed', 'unknown')),
    score         double precision,
    scores        jsonb,
    reject_reason text,
    generated_at  timestamptz NOT NULL DEFAULT now(),
    curated_at    timestamptz,
    not_before    timestamptz,
    claimed_by    text,
    lease_until   timestamptz,
    attempts      int NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    posted_at     timestamptz,
    platform      text,
    channel       text,
    remote_id     text,
    last_error    text,
    metadata      jsonb NOT NULL DEFAULT '{}',
    task_id       text,
    run_id        bigint,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX posts_status_idx ON posts (status);
CREATE INDEX posts_not_before_idx ON posts (not_before);
CREATE INDEX posts_posting_lease_idx ON posts (lease_until) WHERE status = 'posting';
CREATE INDEX posts_approved_idx ON posts (score DESC, id) WHERE status = 'approved';

CREATE VIEW potential_posts AS SELECT * FROM posts WHERE status = 'pending';
CREATE VIEW approved_posts AS SELECT * FROM posts WHERE status = 'approved';

-- Narrative memory between runs (key/value with optional expiry).
CREATE TABLE narrative_state (
    key        text PRIMARY KEY,
    value      jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
);
CREATE INDEX narrative_state_expires_idx ON narrative_state (expires_at)
    WHERE expires_at IS NOT NULL;

-- LLM request/token counters per provider+model per minute/day window,
-- shared by all replicas so budgets hold cluster-wide. The column is
-- window_kind because WINDOW is a reserved word in PostgreSQL.
CREATE TABLE llm_usage (
    provider          text NOT NULL,
    model             text NOT NULL,
    window_kind       text NOT NULL CHECK (window_kind IN ('minute', 'day')),
    window_start      timestamptz NOT NULL,
    requests          bigint NOT NULL DEFAULT 0 CHECK (requests >= 0),
    prompt_tokens     bigint NOT NULL DEFAULT 0 CHECK (prompt_tokens >= 0),
    completion_tokens bigint NOT NULL DEFAULT 0 CHECK (completion_tokens >= 0),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, model, window_kind, window_start)
);
CREATE INDEX llm_usage_window_idx ON llm_usage (window_start);
