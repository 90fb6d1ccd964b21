-- Mandate core schema (PostgreSQL). The events table is ground truth; every
-- other table here is derived from it (except the lease columns, which
-- coordinate workers and carry no history).

CREATE TABLE tasks (
    id                   TEXT PRIMARY KEY NOT NULL,
    workflow             TEXT NOT NULL,
    workflow_version     BIGINT NOT NULL,
    agent                TEXT,
    idempotency_key      TEXT UNIQUE,
    status               TEXT NOT NULL,
    last_seq             BIGINT NOT NULL,
    last_hash            TEXT NOT NULL,
    created_at_ms        BIGINT NOT NULL,
    updated_at_ms        BIGINT NOT NULL,
    ready_at_ms          BIGINT,
    -- The worker holding the task; its lease lives in `workers` (one row per
    -- worker, renewed in O(1) however many tasks it holds).
    lease_owner          TEXT,
    blocked_reason       TEXT
);

-- Ready tasks nobody holds: what a claim takes first.
CREATE INDEX tasks_ready_free ON tasks (ready_at_ms) WHERE ready_at_ms IS NOT NULL AND lease_owner IS NULL;
CREATE INDEX tasks_lease_owner ON tasks (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX tasks_status_created ON tasks (status, created_at_ms, id);
CREATE INDEX tasks_created ON tasks (created_at_ms, id);

-- Worker leases: a worker's tasks are its own while `lease_expires_at_ms` is
-- in the future; after that any worker may claim them. Coordination, not history.
CREATE TABLE workers (
    id                   TEXT PRIMARY KEY NOT NULL,
    lease_expires_at_ms  BIGINT NOT NULL
);

CREATE TABLE events (
    task_id         TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    event_type      TEXT NOT NULL,
    recorded_at_ms  BIGINT NOT NULL,
    actor           TEXT NOT NULL,
    payload         TEXT NOT NULL,
    prev_hash       TEXT NOT NULL,
    hash            TEXT NOT NULL,
    PRIMARY KEY (task_id, seq)
);

CREATE TABLE timers (
    task_id     TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    fire_at_ms  BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    PRIMARY KEY (task_id, seq)
);
