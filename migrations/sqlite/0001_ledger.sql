-- The ledger of record, settled from the shards' event streams by the reconciler.
-- Stream ids are stored as (id_ms, id_seq); idx orders the events of one stream entry.

CREATE TABLE skus (
    sku            TEXT PRIMARY KEY,
    shards         INTEGER NOT NULL,
    per_user_limit INTEGER NOT NULL,
    hold_ms        INTEGER NOT NULL,
    starts_at_ms   INTEGER NOT NULL,
    ends_at_ms     INTEGER NOT NULL,
    -- the stream position of the load these rules come from (a later load wins)
    config_id_ms   INTEGER NOT NULL,
    config_id_seq  INTEGER NOT NULL
);

CREATE TABLE reservations (
    rid             TEXT PRIMARY KEY,
    sku             TEXT NOT NULL,
    shard           INTEGER NOT NULL,
    user_id         TEXT NOT NULL,
    quantity        INTEGER NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('held', 'confirmed', 'cancelled', 'expired')),
    idempotency_key TEXT,
    deadline_ms     INTEGER,
    reserved_at_ms  INTEGER,
    confirmed_at_ms INTEGER,
    cancelled_at_ms INTEGER,
    expired_at_ms   INTEGER,
    late_confirm    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX reservations_by_sku ON reservations (sku, state);

-- Append-only: every event applied, once.
CREATE TABLE inventory_ledger (
    sku             TEXT NOT NULL,
    shard           INTEGER NOT NULL,
    id_ms           INTEGER NOT NULL,
    id_seq          INTEGER NOT NULL,
    idx             INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    rid             TEXT,
    user_id         TEXT,
    idempotency_key TEXT,
    quantity        INTEGER NOT NULL,
    at_ms           INTEGER NOT NULL,
    detail          TEXT,
    PRIMARY KEY (sku, shard, id_ms, id_seq, idx)
);
CREATE INDEX inventory_ledger_by_kind ON inventory_ledger (sku, kind);

CREATE TABLE barriers (
    sku             TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    at_ms           INTEGER NOT NULL,
    PRIMARY KEY (sku, user_id, idempotency_key)
);

-- How far each shard's stream is settled, for lag and for the audit.
CREATE TABLE stream_progress (
    sku           TEXT NOT NULL,
    shard         INTEGER NOT NULL,
    last_id_ms    INTEGER NOT NULL,
    last_id_seq   INTEGER NOT NULL,
    settled_at_ms INTEGER NOT NULL,
    PRIMARY KEY (sku, shard)
);
