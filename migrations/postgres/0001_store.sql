-- The Postgres store: keys, open holds, the credit ledger, the usage log,
-- idempotency records and stored responses. The same tables as the SQLite
-- store. Times are Unix milliseconds; money is integer nano-USD (BIGINT);
-- flags are 0 or 1.

CREATE TABLE api_keys (
    id             TEXT PRIMARY KEY,
    hash           BYTEA NOT NULL UNIQUE,     -- SHA-256 of the key; never the key
    display        TEXT NOT NULL,
    name           TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    disabled       BIGINT NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    expires_at     BIGINT,
    balance        BIGINT CHECK (balance >= 0),  -- NULL = unlimited
    rpm            BIGINT,
    tpm            BIGINT,
    max_concurrent BIGINT,
    models         TEXT NOT NULL DEFAULT '[]',
    metadata       TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE holds (
    hold_id    TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    amount     BIGINT NOT NULL CHECK (amount >= 0),
    sent       BIGINT NOT NULL DEFAULT 0 CHECK (sent IN (0, 1)),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX holds_by_expiry ON holds (expires_at);

CREATE TABLE ledger (
    seq        BIGSERIAL PRIMARY KEY,
    key_id     TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('hold', 'settle', 'release', 'topup', 'adjust')),
    amount     BIGINT NOT NULL,
    cost       BIGINT NOT NULL DEFAULT 0,
    request_id TEXT,
    note       TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX ledger_by_key ON ledger (key_id, seq);
CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only';
END $$;
CREATE TRIGGER ledger_no_change BEFORE UPDATE OR DELETE ON ledger
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

CREATE TABLE usage (
    hold_id           TEXT PRIMARY KEY,
    request_id        TEXT NOT NULL,
    key_id            TEXT NOT NULL,
    model             TEXT NOT NULL,
    provider          TEXT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cached_tokens     BIGINT NOT NULL,
    cost              BIGINT NOT NULL,
    status            BIGINT NOT NULL,
    outcome           TEXT NOT NULL,
    latency_ms        BIGINT NOT NULL,
    streamed          BIGINT NOT NULL,
    cancelled         BIGINT NOT NULL,
    created_at        BIGINT NOT NULL
);
CREATE INDEX usage_by_request ON usage (request_id);
CREATE INDEX usage_by_key_time ON usage (key_id, created_at);

CREATE TABLE idempotency (
    key_id     TEXT NOT NULL,
    idem_key   TEXT NOT NULL,
    body_hash  BYTEA NOT NULL,
    request_id TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('running', 'done')),
    response   BYTEA,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (key_id, idem_key)
);

CREATE TABLE responses (
    id                   TEXT PRIMARY KEY,
    key_id               TEXT NOT NULL,
    previous_response_id TEXT,
    input                TEXT NOT NULL,
    response             TEXT NOT NULL,
    created_at           BIGINT NOT NULL
);
CREATE INDEX responses_by_age ON responses (created_at);
