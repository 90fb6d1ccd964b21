-- The demo "world": observable, undoable side effects of the demo tools
-- (mandate-activities). World::ensure_schema runs this same file, so every
-- statement must stay idempotent (IF NOT EXISTS).

-- Current value of each demo resource, e.g. ('service', 'api') -> {"version":"v2"}.
-- value is JSON text.
CREATE TABLE IF NOT EXISTS demo_resources (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (namespace, key)
);

-- One row per applied side effect, keyed by the tool call's idempotency key
-- ("task_id:seq"). A duplicate delivery finds its row here and returns the
-- recorded output instead of applying the effect again.
CREATE TABLE IF NOT EXISTS demo_effects (
    idempotency_key TEXT PRIMARY KEY,
    tool TEXT NOT NULL,
    output TEXT NOT NULL,
    applied_at_ms BIGINT NOT NULL
);
