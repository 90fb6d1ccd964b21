-- Routing wired into the engine (crate mandate-routing): how far the
-- follower has read the global event feed (it enqueues deliveries from
-- recorded `OwnersNotified` events, idempotently per item key), and the
-- escalation chains waiting for an acknowledgement (durable timers).
-- Coordination, not history.
CREATE TABLE routing_cursor (
    name  TEXT PRIMARY KEY NOT NULL,
    gseq  BIGINT NOT NULL
);

CREATE TABLE routing_escalations (
    notification_id TEXT PRIMARY KEY NOT NULL,
    task_id         TEXT NOT NULL,
    about_seq       BIGINT NOT NULL,
    chain           TEXT NOT NULL,
    started_at_ms   BIGINT NOT NULL,
    fired_steps     BIGINT NOT NULL,
    next_due_at_ms  BIGINT,
    acked_at_ms     BIGINT,
    acked_by        TEXT
);
CREATE INDEX routing_escalations_due ON routing_escalations (next_due_at_ms) WHERE next_due_at_ms IS NOT NULL;
