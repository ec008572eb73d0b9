-- Stored Responses API objects (`store: true`), each readable only with
-- the key that created it. `input` holds the request's input items, each
-- with an id; `response` the Response object as the client got it.
CREATE TABLE responses (
    id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    previous_response_id TEXT,
    input TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX responses_by_age ON responses (created_at);
