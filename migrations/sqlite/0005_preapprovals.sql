-- Batch pre-approvals (SPEC §7): "tool X for agent Y, scope S, until T",
-- granted by an authenticated owner of the tool through its own API, never by
-- a task. A row is never deleted or changed except once, to record its
-- revocation (revoked_by / revoked_at_ms), so the table is the record of
-- every grant.
CREATE TABLE preapprovals (
    id              TEXT PRIMARY KEY NOT NULL,
    tool            TEXT NOT NULL,
    agent           TEXT NOT NULL,
    scope           TEXT,
    granted_by      TEXT NOT NULL,
    granted_at_ms   INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL,
    reason          TEXT,
    revoked_by      TEXT,
    revoked_at_ms   INTEGER
);
CREATE INDEX preapprovals_live ON preapprovals (expires_at_ms) WHERE revoked_at_ms IS NULL;
