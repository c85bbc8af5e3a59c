-- The ledger's epoch. A repair moves it on before it rebuilds Redis from the ledger; a
-- batch the reconciler read from Redis before that is not applied (it may come from data
-- Redis has lost since), and is read again.
CREATE TABLE ledger_epoch (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL
);
INSERT INTO ledger_epoch (id, epoch) VALUES (1, 0);
