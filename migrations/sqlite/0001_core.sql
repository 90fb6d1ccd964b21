-- Mandate core schema (SQLite). The events table is ground truth; every other
-- table here is derived from it (except the lease columns, which coordinate
-- workers and carry no history).

CREATE TABLE tasks (
    id                   TEXT PRIMARY KEY NOT NULL,
    workflow             TEXT NOT NULL,
    workflow_version     INTEGER NOT NULL,
    agent                TEXT,
    idempotency_key      TEXT UNIQUE,
    status               TEXT NOT NULL,
    last_seq             INTEGER NOT NULL,
    last_hash            TEXT NOT NULL,
    created_at_ms        INTEGER NOT NULL,
    updated_at_ms        INTEGER NOT NULL,
    -- The work queue: when a worker must next look at the task (NULL: waiting on
    -- the outside world, or final).
    ready_at_ms          INTEGER,
    lease_owner          TEXT,
    lease_expires_at_ms  INTEGER,
    blocked_reason       TEXT
);

CREATE INDEX tasks_ready ON tasks (ready_at_ms) WHERE ready_at_ms IS NOT NULL;
CREATE INDEX tasks_lease_owner ON tasks (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX tasks_status_created ON tasks (status, created_at_ms);
CREATE INDEX tasks_created ON tasks (created_at_ms);

CREATE TABLE events (
    task_id         TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    event_type      TEXT NOT NULL,
    recorded_at_ms  INTEGER NOT NULL,
    actor           TEXT NOT NULL,
    payload         TEXT NOT NULL,
    prev_hash       TEXT NOT NULL,
    hash            TEXT NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;

-- Pending durable timers, retry backoffs and signal deadlines.
CREATE TABLE timers (
    task_id     TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    fire_at_ms  INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
