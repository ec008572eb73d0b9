//! What the SQL backends share: reading rows into records (both keep the
//! same columns with the same types: integers for flags, text for JSON),
//! the error mapping, and limits.

use serde_json::Value;
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{
    Claim, CreditResult, CreditTotals, IdempotencyClaim, KeyLimits, KeyRecord, LedgerRow,
    StoreError, StoredResponse, UsageRecord, UsageSummary,
};
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
    let count = |name: &str| count(row, name);
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
        searches: u32::try_from(count("searches")).unwrap_or(u32::MAX),
        mcp_calls: u32::try_from(count("mcp_calls")).unwrap_or(u32::MAX),
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

/// Money across all keys, in one portable statement (no parameters).
pub(super) const TOTALS: &str = "SELECT (SELECT COUNT(*) FROM api_keys) AS keys,
       (SELECT COUNT(*) - COUNT(balance) FROM api_keys) AS unlimited,
       (SELECT CAST(COALESCE(SUM(balance), 0) AS BIGINT) FROM api_keys) AS balance,
       (SELECT COUNT(*) FROM holds) AS holds,
       (SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM holds) AS held,
       (SELECT CAST(COALESCE(SUM(CASE WHEN kind IN ('topup', 'adjust') THEN amount ELSE 0 END), 0) AS BIGINT) FROM ledger) AS credited,
       (SELECT CAST(COALESCE(SUM(cost), 0) AS BIGINT) FROM ledger) AS spent";

pub(super) const LEDGER_COLUMNS: &str =
    "seq, key_id, kind, amount, cost, request_id, note, created_at";

fn count<R: SqlRow>(row: &R, name: &str) -> u64
where
    for<'a> &'a str: ColumnIndex<R>,
{
    row.int(name).max(0) as u64
}

pub(super) fn totals_from_row<R: SqlRow>(row: &R) -> CreditTotals
where
    for<'a> &'a str: ColumnIndex<R>,
{
    CreditTotals {
        keys: count(row, "keys"),
        unlimited_keys: count(row, "unlimited"),
        balance: row.int("balance"),
        held: row.int("held"),
        active_holds: count(row, "holds"),
        credited: row.int("credited"),
        spent: row.int("spent"),
    }
}

pub(super) fn ledger_from_row<R: SqlRow>(row: &R) -> LedgerRow
where
    for<'a> &'a str: ColumnIndex<R>,
{
    LedgerRow {
        seq: row.int("seq"),
        key_id: row.text("key_id"),
        kind: row.text("kind"),
        amount: row.int("amount"),
        cost: row.int("cost"),
        request_id: row.opt_text("request_id"),
        note: row.opt_text("note"),
        created_at: row.int("created_at"),
    }
}

/// A usage summary row: `n`, `total`, `day`, `week`, `month`.
pub(super) fn summary_from_row<R: SqlRow>(row: &R) -> UsageSummary
where
    for<'a> &'a str: ColumnIndex<R>,
{
    UsageSummary {
        total: row.int("total"),
        since_day: row.int("day"),
        since_week: row.int("week"),
        since_month: row.int("month"),
        requests: count(row, "n"),
    }
}

/// What an existing idempotency record within its window means for a new
/// claim: the record's body hash, request id, state and stored response.
pub(super) fn existing_claim(
    claim: &IdempotencyClaim,
    body_hash: &[u8],
    request_id: String,
    state: &str,
    response: Option<Vec<u8>>,
) -> Claim {
    if body_hash != claim.body_hash {
        Claim::Mismatch
    } else if state == "running" {
        Claim::InFlight { request_id }
    } else {
        Claim::Done {
            request_id,
            response,
        }
    }
}

/// A balance after a top-up or adjustment of `amount`, or why not.
pub(super) fn credited(balance: NanoUsd, amount: NanoUsd) -> Result<NanoUsd, CreditResult> {
    balance
        .checked_add(amount)
        .filter(|a| (0..=MAX_BALANCE).contains(a))
        .ok_or(CreditResult::OutOfRange { balance })
}

/// Token counts and limits are stored as signed 64-bit integers.
pub(super) fn sql_count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
