-- A usage record was kept in three b-trees: the table (keyed by key_id,
-- created_at, hold_id), a unique index on hold_id, and an index on
-- request_id for GET /generation. Each is a page that every paying
-- request's commit writes to the WAL. Now it is one: the table, keyed by
-- key_id and `usage_key`, which is the request id, a slash, then the hold
-- id.
--   * A hold is still recorded once (its key, request and hold make the
--     key), so a settlement applied twice still leaves one record.
--   * A request's records are the keys of its key from `<request id>/` up
--     to `<request id>0` ('0' is the character after '/'): /generation
--     searches that range of the primary key.
--   * A key's totals read the key's own range, as before.
CREATE TABLE usage_new (
    key_id            TEXT NOT NULL,
    usage_key         TEXT NOT NULL,             -- <request id>/<hold id>
    request_id        TEXT NOT NULL,
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
    PRIMARY KEY (key_id, usage_key)
) WITHOUT ROWID;
INSERT INTO usage_new SELECT key_id, request_id || '/' || hold_id, request_id, model, provider,
    prompt_tokens, completion_tokens, cached_tokens, cost, status, outcome, latency_ms, streamed,
    cancelled, created_at, searches, mcp_calls FROM usage;
DROP TABLE usage;
ALTER TABLE usage_new RENAME TO usage;
