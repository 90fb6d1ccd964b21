-- Routing's outbox (crate mandate-routing): one row per notification (one
-- recipient, one thing), its delivery attempts, the items grouped into it,
-- and the response links already used. Coordination, not history: the
-- routing decision itself is recorded in the task's history.
CREATE TABLE notifications (
    id                  TEXT PRIMARY KEY NOT NULL,
    group_key           TEXT NOT NULL,
    task_id             TEXT NOT NULL,
    recipient           TEXT NOT NULL,
    sink                TEXT NOT NULL,
    address             TEXT,
    body                TEXT NOT NULL,
    item_count          INTEGER NOT NULL,
    status              TEXT NOT NULL,
    attempt             INTEGER NOT NULL,
    max_attempts        INTEGER NOT NULL,
    created_at_ms       INTEGER NOT NULL,
    next_attempt_at_ms  INTEGER,
    lease_owner         TEXT,
    lease_expires_at_ms INTEGER,
    sent_at_ms          INTEGER,
    last_error          TEXT
);
CREATE INDEX notifications_due ON notifications (next_attempt_at_ms) WHERE next_attempt_at_ms IS NOT NULL;
-- At most one notification per group still open for more items.
CREATE UNIQUE INDEX notifications_open_group ON notifications (group_key) WHERE status = 'pending' AND attempt = 0;
CREATE INDEX notifications_task ON notifications (task_id);

CREATE TABLE notification_items (
    item_key        TEXT PRIMARY KEY NOT NULL,
    notification_id TEXT NOT NULL,
    added_at_ms     INTEGER NOT NULL
);

CREATE TABLE notification_attempts (
    notification_id TEXT NOT NULL,
    attempt         INTEGER NOT NULL,
    worker          TEXT NOT NULL,
    finished_at_ms  INTEGER NOT NULL,
    outcome         TEXT NOT NULL,
    error           TEXT,
    PRIMARY KEY (notification_id, attempt)
);

CREATE TABLE notification_link_uses (
    use_key         TEXT PRIMARY KEY NOT NULL,
    notification_id TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    action          TEXT NOT NULL,
    used_at_ms      INTEGER NOT NULL
);
