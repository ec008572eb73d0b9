//! Persistent state behind one trait per concern: keys, the credit ledger,
//! the usage log, idempotency records, stored responses. The gateway's domain code sees only
//! these traits; `open` is the one place a backend is chosen.
//!
//! Times are Unix milliseconds; money is nano-USD (`i64`).

mod postgres;
mod sql;
mod sqlite;
mod sqlite_batch;
mod sqlite_vfs;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::accounts::keys::KeyHash;
use crate::config::NanoUsd;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or failed; callers answer 503.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness or integrity rule was broken (a bug or a race).
    #[error("store conflict: {0}")]
    Conflict(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Per-key limits; `None` means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLimits {
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub max_concurrent: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// `sk-mume-…abcd`: recognisable, never a usable part of the key.
    pub display: String,
    pub created_at: i64,
    pub disabled: bool,
    pub expires_at: Option<i64>,
    /// Available credit; `None` is unlimited.
    pub balance: Option<NanoUsd>,
    pub limits: KeyLimits,
    /// Model id patterns the key may use (`openai/*`); empty allows all.
    pub models: Vec<String>,
    pub metadata: Value,
}

/// A key to insert: its record and the hash of its plaintext.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub record: KeyRecord,
    pub hash: KeyHash,
}

/// Changes to a key; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub disabled: Option<bool>,
    pub expires_at: Option<Option<i64>>,
    pub rpm: Option<Option<u32>>,
    pub tpm: Option<Option<u32>>,
    pub max_concurrent: Option<Option<u32>>,
    pub models: Option<Vec<String>>,
    pub metadata: Option<Value>,
}

impl KeyPatch {
    /// Applies the changes to a key read from the store.
    pub fn apply(&self, key: &mut KeyRecord) {
        if let Some(name) = &self.name {
            key.name = name.clone();
        }
        if let Some(disabled) = self.disabled {
            key.disabled = disabled;
        }
        if let Some(expires_at) = self.expires_at {
            key.expires_at = expires_at;
        }
        if let Some(rpm) = self.rpm {
            key.limits.rpm = rpm;
        }
        if let Some(tpm) = self.tpm {
            key.limits.tpm = tpm;
        }
        if let Some(max) = self.max_concurrent {
            key.limits.max_concurrent = max;
        }
        if let Some(models) = &self.models {
            key.models = models.clone();
        }
        if let Some(metadata) = &self.metadata {
            key.metadata = metadata.clone();
        }
    }
}

/// A hold to place: `amount` moves from the key's balance to the hold.
#[derive(Debug, Clone)]
pub struct HoldRequest {
    pub hold_id: String,
    pub request_id: String,
    pub key_id: String,
    pub amount: NanoUsd,
    /// Whether the request goes upstream as soon as the hold is placed
    /// (the gateway's holds do: nothing runs between the two). Decides
    /// what the sweeper does with a hold its process never settled.
    pub sent: bool,
    pub now: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldResult {
    Held,
    /// The key has unlimited credit: nothing was held.
    Unlimited,
    /// The balance cannot cover the hold; nothing changed.
    Insufficient {
        balance: NanoUsd,
    },
    /// The key no longer exists.
    NoKey,
}

/// What one request did, as the usage log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    pub hold_id: String,
    pub request_id: String,
    pub key_id: String,
    pub model: String,
    pub provider: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cost: NanoUsd,
    /// HTTP status the client got.
    pub status: u16,
    /// `ok`, or the error code the request ended with.
    pub outcome: String,
    pub latency_ms: u64,
    pub streamed: bool,
    pub cancelled: bool,
    pub created_at: i64,
    /// Web searches run for the request (their price is in `cost`).
    pub searches: u32,
    /// MCP tool calls the gateway ran for the request.
    pub mcp_calls: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditKind {
    TopUp,
    Adjust,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditResult {
    /// Done; the new available balance.
    Applied {
        balance: NanoUsd,
    },
    NoKey,
    /// The key has unlimited credit; nothing to add to.
    Unlimited,
    /// The change would take the balance below zero or past the maximum.
    OutOfRange {
        balance: NanoUsd,
    },
}

/// Money across all keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreditTotals {
    pub keys: u64,
    pub unlimited_keys: u64,
    /// Available balance summed over limited keys.
    pub balance: NanoUsd,
    /// Held by requests in flight.
    pub held: NanoUsd,
    pub active_holds: u64,
    /// Everything ever added by top-ups and adjustments (net).
    pub credited: NanoUsd,
    /// Everything ever charged by settled requests.
    pub spent: NanoUsd,
}

/// One row of the append-only ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    pub seq: i64,
    pub key_id: String,
    /// hold, settle, release, topup, adjust
    pub kind: String,
    /// Signed change of the available balance.
    pub amount: NanoUsd,
    /// For settle rows: what the request cost.
    pub cost: NanoUsd,
    pub request_id: Option<String>,
    pub note: Option<String>,
    pub created_at: i64,
}

/// Cost sums of one key over periods, for `GET /key`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageSummary {
    pub total: NanoUsd,
    pub since_day: NanoUsd,
    pub since_week: NanoUsd,
    pub since_month: NanoUsd,
    pub requests: u64,
}

/// Holds that outlived their TTL, resolved by the sweeper.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Never sent upstream: released in full.
    pub released: u64,
    /// Sent upstream with no settlement: charged the hold.
    pub settled: u64,
}

/// What an `Idempotency-Key` claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First use: the caller runs the request.
    Claimed,
    /// Same key and body, still running.
    InFlight { request_id: String },
    /// Same key, different body.
    Mismatch,
    /// Same key and body, finished. `response` is the stored body of a
    /// non-streamed request; `None` for a stream, which cannot be replayed.
    Done {
        request_id: String,
        response: Option<Vec<u8>>,
    },
}

#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    pub key_id: String,
    pub idem_key: String,
    pub body_hash: [u8; 32],
    pub request_id: String,
    pub now: i64,
    /// Records older than this are treated as absent.
    pub not_before: i64,
}

#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Inserts a key; an initial balance is written to the ledger as a top-up.
    async fn insert_key(&self, key: NewKey) -> StoreResult<()>;
    async fn key_by_hash(&self, hash: &KeyHash) -> StoreResult<Option<KeyRecord>>;
    async fn key_by_id(&self, id: &str) -> StoreResult<Option<KeyRecord>>;
    /// Keys in creation order.
    async fn list_keys(&self, offset: u64, limit: u64) -> StoreResult<Vec<KeyRecord>>;
    async fn update_key(&self, id: &str, patch: &KeyPatch) -> StoreResult<Option<KeyRecord>>;
    async fn delete_key(&self, id: &str) -> StoreResult<bool>;
    async fn count_keys(&self) -> StoreResult<u64>;
}

#[async_trait]
pub trait CreditStore: Send + Sync {
    /// Atomically moves `amount` from the balance to a hold, or refuses.
    async fn hold(&self, hold: &HoldRequest) -> StoreResult<HoldResult>;
    /// Resolves the hold `usage.hold_id` (if it is still open) by charging
    /// `usage.cost` and returning the rest, and writes the usage record, in
    /// one transaction. A second call for the same hold changes nothing.
    async fn settle(&self, usage: &UsageRecord) -> StoreResult<()>;
    /// Queues `settle` without waiting for it, where the backend runs its
    /// money moves in order: every hold, settlement and read of this store
    /// that starts after the call sees it. False if the backend cannot
    /// (the caller then awaits `settle`).
    fn settle_queued(&self, _usage: &UsageRecord) -> bool {
        false
    }
    /// A top-up or adjustment, written to the ledger.
    async fn credit(
        &self,
        key_id: &str,
        kind: CreditKind,
        amount: NanoUsd,
        note: Option<&str>,
        now: i64,
    ) -> StoreResult<CreditResult>;
    /// Resolves holds whose TTL ended before `now` (a crashed process's).
    async fn sweep_expired(&self, now: i64) -> StoreResult<Swept>;
    async fn totals(&self) -> StoreResult<CreditTotals>;
    /// The ledger of one key, oldest first.
    async fn ledger(&self, key_id: &str) -> StoreResult<Vec<LedgerRow>>;
}

#[async_trait]
pub trait UsageStore: Send + Sync {
    /// The latest record of `request_id` made by `key_id`.
    async fn generation(&self, key_id: &str, request_id: &str) -> StoreResult<Option<UsageRecord>>;
    async fn summary(
        &self,
        key_id: &str,
        day_start: i64,
        week_start: i64,
        month_start: i64,
    ) -> StoreResult<UsageSummary>;
}

#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    async fn claim(&self, claim: &IdempotencyClaim) -> StoreResult<Claim>;
    /// The request finished and was billed; `response` as in `Claim::Done`.
    async fn complete(
        &self,
        key_id: &str,
        idem_key: &str,
        response: Option<&[u8]>,
    ) -> StoreResult<()>;
    /// The request `request_id` failed without being billed (or went away
    /// before it could be): its claim goes, and the key may be used again.
    /// Another request's claim of the key is left alone.
    async fn abandon(&self, key_id: &str, idem_key: &str, request_id: &str) -> StoreResult<()>;
}

/// A Responses API object kept for `GET /responses/{id}` and
/// `previous_response_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub id: String,
    /// Only this key may read, chain from or delete it.
    pub key_id: String,
    pub previous_response_id: Option<String>,
    /// The request's input items (a JSON array), each with an id.
    pub input: Value,
    /// The Response object as the client got it.
    pub response: Value,
    pub created_at: i64,
}

#[async_trait]
pub trait ResponseStore: Send + Sync {
    /// Inserts or replaces the response with this id.
    async fn put_response(&self, response: &StoredResponse) -> StoreResult<()>;
    /// The response `id` of `key_id`, if it was created at or after
    /// `not_before` (older ones are past retention).
    async fn get_response(
        &self,
        key_id: &str,
        id: &str,
        not_before: i64,
    ) -> StoreResult<Option<StoredResponse>>;
    /// Deletes the response `id` of `key_id`; false if there was none.
    async fn delete_response(&self, key_id: &str, id: &str) -> StoreResult<bool>;
    /// Deletes every response created before `before`; how many.
    async fn purge_responses(&self, before: i64) -> StoreResult<u64>;
}

/// The store, one handle per concern (all may be the same object).
#[derive(Clone)]
pub struct Store {
    pub keys: Arc<dyn KeyStore>,
    pub credits: Arc<dyn CreditStore>,
    pub usage: Arc<dyn UsageStore>,
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub responses: Arc<dyn ResponseStore>,
    /// Closes connections (tests use it to make the store unavailable).
    closer: Arc<dyn Closeable>,
}

/// Where the store lives: a Postgres URL, else the SQLite file (and how
/// long a writer waits for its lock).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub url: Option<String>,
    pub path: std::path::PathBuf,
    pub busy_timeout: Duration,
}

/// Connections each instance keeps to Postgres at most.
const PG_CONNECTIONS: u32 = 16;

impl Store {
    /// Opens (creating it if needed) and migrates the configured store:
    /// the one place a backend is chosen.
    pub async fn open(options: &StoreOptions) -> StoreResult<Self> {
        if let Some(url) = &options.url {
            let pg = Arc::new(PgStore::connect(url, PG_CONNECTIONS).await?);
            return Ok(Self::from_backend(pg));
        }
        let sqlite = Arc::new(SqliteStore::open(&options.path, options.busy_timeout).await?);
        Ok(Self::from_backend(sqlite))
    }

    fn from_backend<B>(backend: Arc<B>) -> Self
    where
        B: KeyStore
            + CreditStore
            + UsageStore
            + IdempotencyStore
            + ResponseStore
            + Closeable
            + 'static,
    {
        Self {
            keys: backend.clone(),
            credits: backend.clone(),
            usage: backend.clone(),
            idempotency: backend.clone(),
            responses: backend.clone(),
            closer: backend,
        }
    }

    /// Closes every connection; later calls fail as `Unavailable`.
    pub async fn close(&self) {
        self.closer.close().await
    }
}

#[async_trait]
pub trait Closeable: Send + Sync {
    async fn close(&self);
}
