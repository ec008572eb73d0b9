-- Keys, the credit ledger, open holds, the usage log, idempotency records.
-- Times are Unix milliseconds; money is integer nano-USD.

CREATE TABLE api_keys (
    id             TEXT PRIMARY KEY NOT NULL,
    hash           BLOB NOT NULL UNIQUE,      -- SHA-256 of the key; never the key
    display        TEXT NOT NULL,             -- sk-mume-…abcd
    name           TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    disabled       INTEGER NOT NULL DEFAULT 0,
    expires_at     INTEGER,
    balance        INTEGER,                   -- available credit; NULL = unlimited
    rpm            INTEGER,
    tpm            INTEGER,
    max_concurrent INTEGER,
    models         TEXT NOT NULL DEFAULT '[]',
    metadata       TEXT NOT NULL DEFAULT '{}',
    CHECK (balance IS NULL OR balance >= 0)
);

-- A hold is open while its request runs; settling deletes it.
CREATE TABLE holds (
    hold_id    TEXT PRIMARY KEY NOT NULL,
    request_id TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    amount     INTEGER NOT NULL CHECK (amount >= 0),
    sent       INTEGER NOT NULL DEFAULT 0,    -- 1 once the request went upstream
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX holds_by_expiry ON holds (expires_at);

-- Every money movement; rows are never changed or removed.
CREATE TABLE ledger (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id     TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('hold', 'settle', 'release', 'topup', 'adjust')),
    amount     INTEGER NOT NULL,              -- signed change of the available balance
    cost       INTEGER NOT NULL DEFAULT 0,    -- settle rows: what the request cost
    request_id TEXT,
    note       TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX ledger_by_key ON ledger (key_id, seq);
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;

CREATE TABLE usage (
    hold_id           TEXT PRIMARY KEY NOT NULL,
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
    created_at        INTEGER NOT NULL
);
CREATE INDEX usage_by_request ON usage (request_id);
CREATE INDEX usage_by_key_time ON usage (key_id, created_at);

CREATE TABLE idempotency (
    key_id     TEXT NOT NULL,
    idem_key   TEXT NOT NULL,
    body_hash  BLOB NOT NULL,
    request_id TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('running', 'done')),
    response   BLOB,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (key_id, idem_key)
);
