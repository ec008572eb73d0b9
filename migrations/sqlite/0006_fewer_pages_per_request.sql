-- Every paying request inserts and deletes a hold, appends ledger rows and
-- writes a usage record, and each b-tree page it touches is a page its
-- commit writes to the WAL. Three fewer such pages per request:
--   * holds: WITHOUT ROWID, so the hold_id key is the table itself rather
--     than a rowid table plus an index on hold_id;
--   * ledger: no AUTOINCREMENT, so no sqlite_sequence row to update.
--     Rows are never deleted (a trigger forbids it), so a new row's seq is
--     still one above every seq before it;
--   * usage: WITHOUT ROWID, keyed by (key_id, created_at, hold_id), so the
--     per-key index is the table itself. hold_id stays unique.

CREATE TABLE holds_new (
    hold_id    TEXT PRIMARY KEY NOT NULL,
    request_id TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    amount     INTEGER NOT NULL CHECK (amount >= 0),
    sent       INTEGER NOT NULL DEFAULT 0,    -- 1 once the request went upstream
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO holds_new SELECT hold_id, request_id, key_id, amount, sent, created_at, expires_at FROM holds;
DROP TABLE holds;
ALTER TABLE holds_new RENAME TO holds;

CREATE TABLE ledger_new (
    seq        INTEGER PRIMARY KEY,
    key_id     TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('hold', 'settle', 'release', 'topup', 'adjust')),
    amount     INTEGER NOT NULL,              -- signed change of the available balance
    cost       INTEGER NOT NULL DEFAULT 0,    -- settle rows: what the request cost
    request_id TEXT,
    note       TEXT,
    created_at INTEGER NOT NULL
);
INSERT INTO ledger_new SELECT seq, key_id, kind, amount, cost, request_id, note, created_at FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_new RENAME TO ledger;
DELETE FROM sqlite_sequence WHERE name = 'ledger';
CREATE INDEX ledger_by_key ON ledger (key_id, seq);
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;

CREATE TABLE usage_new (
    hold_id           TEXT NOT NULL UNIQUE,
    request_id        TEXT NOT NULL,
    key_id            TEXT NOT NULL,
    model             TEXT NOT NULL,
    provider          TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,
    cost              INTEGER NOT NULL,
    status            INTEGER NOT NULL,
    outcome           TEXT NOT NULL,
    latency_ms        INTEGER NOT NULL,
    streamed          INTEGER NOT NULL,
    cancelled         INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    searches          INTEGER NOT NULL DEFAULT 0,
    mcp_calls         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, created_at, hold_id)
) WITHOUT ROWID;
INSERT INTO usage_new SELECT hold_id, request_id, key_id, model, provider, prompt_tokens,
    completion_tokens, cached_tokens, cost, status, outcome, latency_ms, streamed, cancelled,
    created_at, searches, mcp_calls FROM usage;
DROP TABLE usage;
ALTER TABLE usage_new RENAME TO usage;
CREATE INDEX usage_by_request ON usage (request_id);
