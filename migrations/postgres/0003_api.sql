-- The HTTP API's needs: a global order over all events (the live stream and
-- its resume point), bearer tokens, and the kill switch.

-- Every event gets a global sequence number in commit order. The writer takes
-- the next numbers from `event_log` inside the append transaction; the row lock
-- it holds until commit makes commit order and gseq order the same, across
-- processes. A reader that has seen gseq N has seen every event below N.
ALTER TABLE events ADD COLUMN gseq BIGINT;
UPDATE events SET gseq = r.n
FROM (SELECT task_id, seq, ROW_NUMBER() OVER (ORDER BY recorded_at_ms, task_id, seq) AS n FROM events) AS r
WHERE events.task_id = r.task_id AND events.seq = r.seq;
ALTER TABLE events ALTER COLUMN gseq SET NOT NULL;
CREATE UNIQUE INDEX events_gseq ON events (gseq);

CREATE TABLE event_log (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    head  BIGINT NOT NULL
);
INSERT INTO event_log (id, head) SELECT 1, COALESCE(MAX(gseq), 0) FROM events;

-- Bearer tokens: only the SHA-256 of the secret is kept.
CREATE TABLE api_tokens (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    role            TEXT NOT NULL,
    secret_sha256   TEXT NOT NULL UNIQUE,
    created_at_ms   BIGINT NOT NULL,
    revoked_at_ms   BIGINT
);

-- The kill switch. `agent` NULL halts everything. A row is never deleted:
-- lifting fills `lifted_*`, so the table is the record of every halt.
CREATE TABLE halts (
    id              TEXT PRIMARY KEY,
    agent           TEXT,
    reason          TEXT,
    created_by      TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    lifted_by       TEXT,
    lifted_at_ms    BIGINT
);
CREATE INDEX halts_active ON halts (agent) WHERE lifted_at_ms IS NULL;
