//! What the SQL backends share: reading rows into records (both keep the
//! same columns with the same types: integers for flags, text for JSON),
//! the error mapping, and limits.

use serde_json::Value;
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{KeyLimits, KeyRecord, StoreError, StoredResponse, UsageRecord};
use crate::config::NanoUsd;

/// The largest balance a key may hold: $1,000,000,000.
pub const MAX_BALANCE: NanoUsd = 1_000_000_000 * 1_000_000_000;

/// A failed statement: a broken uniqueness or check rule is a conflict;
/// anything else means the store is unavailable (callers answer 503).
pub(super) fn unavailable(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() || db.is_check_violation() => {
            StoreError::Conflict(db.message().to_string())
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

pub(super) const KEY_COLUMNS: &str = "id, name, display, created_at, disabled, expires_at, balance, rpm, tpm, max_concurrent, models, metadata";

pub(super) const RESPONSE_COLUMNS: &str =
    "id, key_id, previous_response_id, input, response, created_at";

/// What a backend's rows must decode for the readers below.
pub(super) trait SqlRow: Row
where
    for<'a> &'a str: ColumnIndex<Self>,
{
    fn int(&self, name: &str) -> i64;
    fn opt_int(&self, name: &str) -> Option<i64>;
    fn text(&self, name: &str) -> String;
    fn opt_text(&self, name: &str) -> Option<String>;
}

impl<R> SqlRow for R
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    fn int(&self, name: &str) -> i64 {
        self.get(name)
    }
    fn opt_int(&self, name: &str) -> Option<i64> {
        self.get(name)
    }
    fn text(&self, name: &str) -> String {
        self.get(name)
    }
    fn opt_text(&self, name: &str) -> Option<String> {
        self.get(name)
    }
}

pub(super) fn key_from_row<R: SqlRow>(row: &R) -> KeyRecord
where
    for<'a> &'a str: ColumnIndex<R>,
{
    let limit = |name: &str| row.opt_int(name).and_then(|v| u32::try_from(v).ok());
    KeyRecord {
        id: row.text("id"),
        name: row.text("name"),
        display: row.text("display"),
        created_at: row.int("created_at"),
        disabled: row.int("disabled") != 0,
        expires_at: row.opt_int("expires_at"),
        balance: row.opt_int("balance"),
        limits: KeyLimits {
            rpm: limit("rpm"),
            tpm: limit("tpm"),
            max_concurrent: limit("max_concurrent"),
        },
        models: serde_json::from_str(&row.text("models")).unwrap_or_default(),
        metadata: serde_json::from_str(&row.text("metadata"))
            .unwrap_or(Value::Object(Default::default())),
    }
}

pub(super) fn usage_from_row<R: SqlRow>(row: &R) -> UsageRecord
where
    for<'a> &'a str: ColumnIndex<R>,
{
    let count = |name: &str| row.int(name).max(0) as u64;
    UsageRecord {
        hold_id: row.text("hold_id"),
        request_id: row.text("request_id"),
        key_id: row.text("key_id"),
        model: row.text("model"),
        provider: row.text("provider"),
        prompt_tokens: count("prompt_tokens"),
        completion_tokens: count("completion_tokens"),
        cached_tokens: count("cached_tokens"),
        cost: row.int("cost"),
        status: count("status") as u16,
        outcome: row.text("outcome"),
        latency_ms: count("latency_ms"),
        streamed: row.int("streamed") != 0,
        cancelled: row.int("cancelled") != 0,
        created_at: row.int("created_at"),
    }
}

pub(super) fn response_from_row<R: SqlRow>(row: &R) -> StoredResponse
where
    for<'a> &'a str: ColumnIndex<R>,
{
    let json = |name: &str| serde_json::from_str(&row.text(name)).unwrap_or(Value::Null);
    StoredResponse {
        id: row.text("id"),
        key_id: row.text("key_id"),
        previous_response_id: row.opt_text("previous_response_id"),
        input: json("input"),
        response: json("response"),
        created_at: row.int("created_at"),
    }
}

/// Token counts and limits are stored as signed 64-bit integers.
pub(super) fn sql_count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
