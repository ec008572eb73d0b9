-- The ledger's rule on `kind` was written `kind IN (five names)`. SQLite
-- compiles an IN list of that length into a temporary b-tree, built and
-- searched once for every row the ledger takes: two per paying request,
-- each a page allocated, filled and freed. The same rule written as
-- equalities compiles to plain comparisons. Nothing else changes; the
-- table is rebuilt because SQLite cannot alter a CHECK in place.

CREATE TABLE ledger_new (
    seq        INTEGER PRIMARY KEY,
    key_id     TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind = 'hold' OR kind = 'settle' OR kind = 'release'
                                    OR kind = 'topup' OR kind = 'adjust'),
    amount     INTEGER NOT NULL,              -- signed change of the available balance
    cost       INTEGER NOT NULL DEFAULT 0,    -- settle rows: what the request cost
    request_id TEXT,
    note       TEXT,
    created_at INTEGER NOT NULL
);
INSERT INTO ledger_new SELECT seq, key_id, kind, amount, cost, request_id, note, created_at FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_new RENAME TO ledger;
CREATE INDEX ledger_by_key ON ledger (key_id, seq);
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
