-- Durable background jobs (emails, PDFs, exports, webhook deliveries) and webhook
-- subscriptions. A job row is the job: it is committed before the 202, claimed with
-- FOR UPDATE SKIP LOCKED under a lease, and kept after it ends (done or dead).

CREATE TABLE jobs (
    id              bigserial PRIMARY KEY,
    user_id         bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind            text NOT NULL,
    -- The queue the kind mapped to when the job was enqueued ([jobs.queues] in tuning.toml).
    queue           text NOT NULL,
    params          jsonb NOT NULL DEFAULT '{}',
    -- queued: waiting; running: claimed under a lease; failed: an attempt failed and a retry
    -- is scheduled at run_after; done; dead: out of attempts (kept, listed, retryable).
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'failed', 'done', 'dead')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts    integer NOT NULL CHECK (max_attempts >= 1),
    run_after       timestamptz NOT NULL DEFAULT now(),
    -- The worker holding the lease, and when the lease ends unless a heartbeat extends it.
    locked_by       text,
    locked_until    timestamptz,
    result          jsonb,
    error           text,
    idempotency_key text CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    -- SHA-256 of the canonical request (kind and params): the same key with another body is
    -- refused.
    request_hash    bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'running') = (locked_by IS NOT NULL AND locked_until IS NOT NULL))
);

-- NULL keys are distinct: jobs without a key never conflict.
CREATE UNIQUE INDEX jobs_user_idempotency ON jobs (user_id, idempotency_key);
-- The claim: the oldest runnable job of one queue. Partial, so finished jobs cost nothing.
CREATE INDEX jobs_claim ON jobs (queue, run_after) WHERE status IN ('queued', 'failed');
-- Expired leases (a worker died): found per queue by lease end.
CREATE INDEX jobs_leases ON jobs (queue, locked_until) WHERE status = 'running';
-- GET /v1/jobs: one's jobs, newest first.
CREATE INDEX jobs_user_created ON jobs (user_id, created_at DESC, id DESC);

CREATE TABLE webhooks (
    id         bigserial PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    url        text NOT NULL,
    -- Event kinds delivered; '*' is every kind.
    events     text[] NOT NULL CHECK (cardinality(events) >= 1),
    -- The HMAC-SHA256 key for the signature header; shown once, at creation.
    secret     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- POST /v1/events finds the caller's subscriptions in the same statement as its insert.
CREATE INDEX webhooks_user ON webhooks (user_id);

-- One row per delivery attempt: GET /v1/webhooks/{id}/deliveries.
CREATE TABLE webhook_deliveries (
    id            bigserial PRIMARY KEY,
    webhook_id    bigint NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    -- The job is the delivery: its id is the delivery id sent in every attempt's header.
    job_id        bigint NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt       integer NOT NULL,
    status_code   integer,
    error         text,
    duration_ms   integer NOT NULL,
    attempted_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id, id DESC);
