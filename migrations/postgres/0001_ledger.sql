-- The ledger of record, settled from the shards' event streams by the reconciler.
-- Stream ids are stored as (id_ms, id_seq); idx orders the events of one stream entry.

CREATE TABLE skus (
    sku            TEXT PRIMARY KEY,
    shards         BIGINT NOT NULL,
    per_user_limit BIGINT NOT NULL,
    hold_ms        BIGINT NOT NULL,
    starts_at_ms   BIGINT NOT NULL,
    ends_at_ms     BIGINT NOT NULL,
    -- the stream position of the load these rules come from (a later load wins)
    config_id_ms   BIGINT NOT NULL,
    config_id_seq  BIGINT NOT NULL
);

CREATE TABLE reservations (
    rid             TEXT PRIMARY KEY,
    sku             TEXT NOT NULL,
    shard           BIGINT NOT NULL,
    user_id         TEXT NOT NULL,
    quantity        BIGINT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('held', 'confirmed', 'cancelled', 'expired')),
    idempotency_key TEXT,
    deadline_ms     BIGINT,
    reserved_at_ms  BIGINT,
    confirmed_at_ms BIGINT,
    cancelled_at_ms BIGINT,
    expired_at_ms   BIGINT,
    late_confirm    BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX reservations_by_sku ON reservations (sku, state);

-- Append-only: every event applied, once.
CREATE TABLE inventory_ledger (
    sku             TEXT NOT NULL,
    shard           BIGINT NOT NULL,
    id_ms           BIGINT NOT NULL,
    id_seq          BIGINT NOT NULL,
    idx             BIGINT NOT NULL,
    kind            TEXT NOT NULL,
    rid             TEXT,
    user_id         TEXT,
    idempotency_key TEXT,
    quantity        BIGINT NOT NULL,
    at_ms           BIGINT NOT NULL,
    detail          TEXT,
    PRIMARY KEY (sku, shard, id_ms, id_seq, idx)
);
CREATE INDEX inventory_ledger_by_kind ON inventory_ledger (sku, kind);

CREATE TABLE barriers (
    sku             TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    at_ms           BIGINT NOT NULL,
    PRIMARY KEY (sku, user_id, idempotency_key)
);

-- How far each shard's stream is settled, for lag and for the audit.
CREATE TABLE stream_progress (
    sku           TEXT NOT NULL,
    shard         BIGINT NOT NULL,
    last_id_ms    BIGINT NOT NULL,
    last_id_seq   BIGINT NOT NULL,
    settled_at_ms BIGINT NOT NULL,
    PRIMARY KEY (sku, shard)
);
