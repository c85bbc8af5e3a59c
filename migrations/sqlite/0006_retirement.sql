-- Retirement: each shard a SKU retired (its `retired` event), when. A SKU is retired once
-- every shard it ever wrote to (every stream_progress row) is here; its Redis keys are then
-- deleted, and the ledger answers for it. Nothing else of it is removed.
CREATE TABLE retired_shards (
    sku   TEXT NOT NULL,
    shard INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (sku, shard)
);
