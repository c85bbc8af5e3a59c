-- Carts: the terms every line of a cart carries into the ledger (its user, key, line count
-- and deadline). The lines themselves are reservations whose idempotency_key is
-- '#<cart id>'; a cart's state follows from theirs.
CREATE TABLE carts (
    cart_id         TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    lines           INTEGER NOT NULL,
    deadline_ms     INTEGER NOT NULL,
    at_ms           INTEGER NOT NULL
);
