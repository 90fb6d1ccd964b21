-- The events table becomes an ordinary rowid table, appended in commit
-- order, with (task_id, seq) as a unique index beside the gseq index.
--
-- Before, `events` was a WITHOUT ROWID table clustered on (task_id, seq)
-- with each payload inline: every commit's events landed on as many leaves
-- as it had tasks, and rows of a few hundred bytes filled those leaves (and
-- split them) after a handful of inserts. Appended rows share the table's
-- last leaves; the per-task order lives in a small index.
--
-- Every column, value and constraint is kept: (task_id, seq) stays unique,
-- gseq stays unique and nullable (an event written around the engine still
-- shows as `unnumbered` in `mandate evidence check`). Rows are copied in
-- gseq order, so a migrated database stores them as a new one would.
CREATE TABLE events_appended (
    task_id         TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    event_type      TEXT NOT NULL,
    recorded_at_ms  INTEGER NOT NULL,
    actor           TEXT NOT NULL,
    payload         TEXT NOT NULL,
    prev_hash       TEXT NOT NULL,
    hash            TEXT NOT NULL,
    gseq            INTEGER
);

INSERT INTO events_appended (task_id, seq, event_type, recorded_at_ms, actor, payload, prev_hash, hash, gseq)
SELECT task_id, seq, event_type, recorded_at_ms, actor, payload, prev_hash, hash, gseq
FROM events ORDER BY gseq, task_id, seq;

DROP TABLE events;
ALTER TABLE events_appended RENAME TO events;
CREATE UNIQUE INDEX events_task_seq ON events (task_id, seq);
CREATE UNIQUE INDEX events_gseq ON events (gseq);
