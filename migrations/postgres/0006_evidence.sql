-- The evidence log (engine::evidence): an RFC 6962 Merkle tree over every
-- event in global order (leaf index = gseq - 1, leaf = the event's 32-byte
-- chain hash), kept by a background task that follows the events table, and
-- the signed checkpoints issued over it. The signing key is never stored here.

-- The number of leaves the log holds; the follower moves it fenced on its old value.
CREATE TABLE evidence_log (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    size  BIGINT NOT NULL
);
INSERT INTO evidence_log (id, size) VALUES (1, 0);

-- One row per leaf: which event it is (to name it in reports) and its chain hash.
CREATE TABLE evidence_leaves (
    idx      BIGINT PRIMARY KEY,
    task_id  TEXT NOT NULL,
    seq      BIGINT NOT NULL,
    hash     TEXT NOT NULL
);

-- Every complete subtree above the leaves: node (level, idx) covers leaves
-- [idx * 2^level, (idx + 1) * 2^level). Hashes are lowercase hex.
CREATE TABLE evidence_nodes (
    level  INTEGER NOT NULL,
    idx    BIGINT NOT NULL,
    hash   TEXT NOT NULL,
    PRIMARY KEY (level, idx)
);

-- Checkpoints as signed (C2SP signed note text), newest by size.
CREATE TABLE evidence_checkpoints (
    size          BIGINT PRIMARY KEY,
    root          TEXT NOT NULL,
    issued_at_ms  BIGINT NOT NULL,
    key_id        TEXT NOT NULL,
    note          TEXT NOT NULL
);
