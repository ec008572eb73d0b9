//! The embedded SQLite store (the default): one file, WAL mode, versioned
//! migrations applied at open.
//!
//! The per-request money path (holds, sent marks, settlements) is group
//! committed on a connection of its own (`sqlite_batch.rs`). Every other
//! write goes through a pool of ONE connection, so those writers queue in
//! the pool; reads use their own pool. The two writing connections meet
//! only at SQLite's write lock, which the busy timeout covers.
//! Every transaction that moves money starts with `BEGIN IMMEDIATE`, so it
//! holds the write lock from its first statement, and the busy timeout
//! covers another process (the CLI) holding the lock.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use super::sql::{
    credited, existing_claim, key_from_row, ledger_from_row, response_from_row, sql_count,
    summary_from_row, totals_from_row, unavailable, usage_from_row, KEY_COLUMNS, LEDGER_COLUMNS,
    RESPONSE_COLUMNS, TOTALS,
};
use super::sqlite_batch::{Batcher, Done, Op};
use super::{
    Claim, Closeable, CreditKind, CreditResult, CreditStore, CreditTotals, HoldRequest, HoldResult,
    IdempotencyClaim, IdempotencyStore, KeyPatch, KeyRecord, KeyStore, LedgerRow, NewKey,
    ResponseStore, StoreError, StoreResult, StoredResponse, Swept, UsageRecord, UsageStore,
    UsageSummary,
};
use crate::accounts::keys::KeyHash;
use crate::config::NanoUsd;

/// How long a request waits for a connection before the store counts as
/// unavailable (CR-08 asks for a 503 within a second).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Holds, sent marks and settlements: group-committed on their own
    /// connection. A settlement may be queued without waiting for it
    /// (`settle_queued`), so the reads of balances, usage and the ledger
    /// first `flush` the queue: they see every settlement queued before
    /// them. (`key_by_hash`, the authentication lookup, does not: its
    /// result is cached for seconds anyway.)
    pub(super) batch: Batcher,
}

/// The page size of a new database. A paying request changes about five
/// pages (its key's row, the open holds, the ledger's tail and the tail of
/// its index, and the page of the key's usage records its record goes
/// into), and each changed page goes whole into the WAL, is checksummed
/// there and copied back by the checkpoint: smaller pages make every
/// commit cheaper. 2 KiB still keeps a ledger row, and a usage record of
/// usual size, inside its page: the usage table is WITHOUT ROWID, whose
/// rows spill to an overflow page above about 490 bytes, which only
/// request ids and model names near their length limits reach.
const PAGE_SIZE: u32 = 2048;

/// The latest usage record of a request (`?3`) of a key (`?4`). A record's
/// usage_key is `<request id>/<hold id>` (migration 0008): the request's
/// records are the keys of its key from `?1` = `<request id>/` up to `?2`
/// = `<request id>0`, a range of the primary key.
const GENERATION: &str = "SELECT substr(usage_key, length(request_id) + 2) AS hold_id, * FROM usage
     WHERE usage_key >= ?1 AND usage_key < ?2 AND request_id = ?3 AND key_id = ?4
     ORDER BY created_at DESC LIMIT 1";

/// How often the WAL is copied into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Checkpoints the WAL from the writer connection, off the request path,
/// until the store closes. PASSIVE: it never waits for, or blocks, the
/// batch writer. Then the batch connection checkpoints what was committed
/// meanwhile, so that the WAL can start over (`Batcher::checkpoint`).
async fn checkpoint_forever(writer: SqlitePool, batch: Batcher) {
    while !writer.is_closed() {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&writer)
            .await
        {
            Ok(_) => batch.checkpoint(),
            Err(e) => {
                if !writer.is_closed() {
                    tracing::warn!(error = %e, "could not checkpoint the SQLite WAL");
                }
            }
        }
    }
}

impl SqliteStore {
    pub async fn open(path: &Path, busy_timeout: Duration) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            // Only a new database takes it (WAL mode fixes the page size):
            // PAGE_SIZE explains the choice.
            .page_size(PAGE_SIZE)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(busy_timeout)
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrating {}: {e}", path.display())))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone().read_only(true))
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        let batch = Batcher::start(path, busy_timeout)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        tokio::spawn(checkpoint_forever(writer.clone(), batch.clone()));
        Ok(Self {
            writer,
            reader,
            batch,
        })
    }

    async fn begin(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)
    }
}

/// One ledger row to append.
struct Entry<'a> {
    key_id: &'a str,
    kind: &'a str,
    amount: NanoUsd,
    cost: NanoUsd,
    request_id: Option<&'a str>,
    note: Option<&'a str>,
    at: i64,
}

async fn ledger_row(tx: &mut Transaction<'static, Sqlite>, e: Entry<'_>) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO ledger (key_id, kind, amount, cost, request_id, note, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(e.key_id)
    .bind(e.kind)
    .bind(e.amount)
    .bind(e.cost)
    .bind(e.request_id)
    .bind(e.note)
    .bind(e.at)
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// Gives `amount` back to a key's balance (a no-op for unlimited keys).
async fn give_back(
    tx: &mut Transaction<'static, Sqlite>,
    key_id: &str,
    amount: NanoUsd,
) -> StoreResult<()> {
    sqlx::query("UPDATE api_keys SET balance = balance + ? WHERE id = ? AND balance IS NOT NULL")
        .bind(amount)
        .bind(key_id)
        .execute(&mut **tx)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// A key's balance: `None` if there is no such key, `Some(None)` if it is
/// unlimited.
async fn balance_of(
    tx: &mut Transaction<'static, Sqlite>,
    key_id: &str,
) -> StoreResult<Option<Option<NanoUsd>>> {
    sqlx::query_scalar("SELECT balance FROM api_keys WHERE id = ?")
        .bind(key_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(unavailable)
}

#[async_trait]
impl Closeable for SqliteStore {
    async fn close(&self) {
        self.batch.close().await;
        self.writer.close().await;
        self.reader.close().await;
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn insert_key(&self, key: NewKey) -> StoreResult<()> {
        let r = &key.record;
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO api_keys (id, hash, display, name, created_at, disabled, expires_at, balance, rpm, tpm, max_concurrent, models, metadata) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&r.id)
        .bind(&key.hash[..])
        .bind(&r.display)
        .bind(&r.name)
        .bind(r.created_at)
        .bind(r.disabled as i64)
        .bind(r.expires_at)
        .bind(r.balance)
        .bind(r.limits.rpm.map(i64::from))
        .bind(r.limits.tpm.map(i64::from))
        .bind(r.limits.max_concurrent.map(i64::from))
        .bind(serde_json::to_string(&r.models).unwrap_or_else(|_| "[]".into()))
        .bind(r.metadata.to_string())
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        if let Some(balance) = r.balance.filter(|b| *b > 0) {
            ledger_row(
                &mut tx,
                Entry {
                    key_id: &r.id,
                    kind: "topup",
                    amount: balance,
                    cost: 0,
                    request_id: None,
                    note: Some("initial credit"),
                    at: r.created_at,
                },
            )
            .await?;
        }
        tx.commit().await.map_err(unavailable)
    }

    async fn key_by_hash(&self, hash: &KeyHash) -> StoreResult<Option<KeyRecord>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = ?");
        let row = sqlx::query(&sql)
            .bind(&hash[..])
            .fetch_optional(&self.reader)
            .await
            .map_err(unavailable)?;
        Ok(row.as_ref().map(key_from_row))
    }

    async fn key_by_id(&self, id: &str) -> StoreResult<Option<KeyRecord>> {
        self.batch.flush().await;
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(unavailable)?;
        Ok(row.as_ref().map(key_from_row))
    }

    async fn list_keys(&self, offset: u64, limit: u64) -> StoreResult<Vec<KeyRecord>> {
        self.batch.flush().await;
        let sql =
            format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id LIMIT ? OFFSET ?");
        let rows = sqlx::query(&sql)
            .bind(sql_count(limit))
            .bind(sql_count(offset))
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(key_from_row).collect())
    }

    async fn update_key(&self, id: &str, patch: &KeyPatch) -> StoreResult<Option<KeyRecord>> {
        self.batch.flush().await;
        let mut tx = self.begin().await?;
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?");
        let Some(row) = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let mut key = key_from_row(&row);
        patch.apply(&mut key);
        sqlx::query(
            "UPDATE api_keys SET name = ?, disabled = ?, expires_at = ?, rpm = ?, tpm = ?, max_concurrent = ?, models = ?, metadata = ? WHERE id = ?",
        )
        .bind(&key.name)
        .bind(key.disabled as i64)
        .bind(key.expires_at)
        .bind(key.limits.rpm.map(i64::from))
        .bind(key.limits.tpm.map(i64::from))
        .bind(key.limits.max_concurrent.map(i64::from))
        .bind(serde_json::to_string(&key.models).unwrap_or_else(|_| "[]".into()))
        .bind(key.metadata.to_string())
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Some(key))
    }

    async fn delete_key(&self, id: &str) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM api_keys WHERE id = ?")
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }

    async fn count_keys(&self) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
            .fetch_one(&self.reader)
            .await
            .map_err(unavailable)?;
        Ok(n.max(0) as u64)
    }
}

#[async_trait]
impl CreditStore for SqliteStore {
    async fn hold(&self, hold: &HoldRequest) -> StoreResult<HoldResult> {
        // A request waits for its hold at most ACQUIRE_TIMEOUT, then counts
        // the store as unavailable and is not sent. Its hold may still be
        // committed after that: the release queued behind it gives it back.
        let placed =
            tokio::time::timeout(ACQUIRE_TIMEOUT, self.batch.submit(Op::Hold(hold.clone())));
        let done = match placed.await {
            Ok(done) => done?,
            Err(_) => {
                self.batch.submit_detached(Op::Release {
                    hold_id: hold.hold_id.clone(),
                    request_id: hold.request_id.clone(),
                    at: hold.now,
                });
                return Err(StoreError::Unavailable(
                    "the store did not place the hold within 1 s".into(),
                ));
            }
        };
        match done {
            Done::Hold(result) => Ok(result),
            Done::Settled => Err(StoreError::Conflict(
                "the batch writer answered a hold without its result".into(),
            )),
        }
    }

    async fn settle(&self, usage: &UsageRecord) -> StoreResult<()> {
        // No deadline: a settlement runs to the end in its own task.
        self.batch.submit(Op::Settle(usage.clone())).await?;
        Ok(())
    }

    fn settle_queued(&self, usage: &UsageRecord) -> bool {
        self.batch.submit_detached(Op::Settle(usage.clone()))
    }

    async fn credit(
        &self,
        key_id: &str,
        kind: CreditKind,
        amount: NanoUsd,
        note: Option<&str>,
        now: i64,
    ) -> StoreResult<CreditResult> {
        self.batch.flush().await;
        let mut tx = self.begin().await?;
        let balance = balance_of(&mut tx, key_id).await?;
        let balance = match balance {
            None => return Ok(CreditResult::NoKey),
            Some(None) => return Ok(CreditResult::Unlimited),
            Some(Some(b)) => b,
        };
        let after = match credited(balance, amount) {
            Ok(after) => after,
            Err(refused) => return Ok(refused),
        };
        sqlx::query("UPDATE api_keys SET balance = ? WHERE id = ?")
            .bind(after)
            .bind(key_id)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        let kind = match kind {
            CreditKind::TopUp => "topup",
            CreditKind::Adjust => "adjust",
        };
        ledger_row(
            &mut tx,
            Entry {
                key_id,
                kind,
                amount,
                cost: 0,
                request_id: None,
                note,
                at: now,
            },
        )
        .await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(CreditResult::Applied { balance: after })
    }

    async fn sweep_expired(&self, now: i64) -> StoreResult<Swept> {
        let mut tx = self.begin().await?;
        let expired: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
            "DELETE FROM holds WHERE expires_at < ? RETURNING hold_id, request_id, key_id, amount, sent",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        let mut swept = Swept::default();
        for (_hold_id, request_id, key_id, amount, sent) in expired {
            // Sent upstream: the work happened and its usage is unknown, so
            // the hold (the most it could have cost) is charged. Never sent:
            // everything goes back.
            let (kind, refund, cost, note) = if sent != 0 {
                swept.settled += 1;
                (
                    "settle",
                    0,
                    amount,
                    "hold expired after the request was sent; charged the hold",
                )
            } else {
                swept.released += 1;
                (
                    "release",
                    amount,
                    0,
                    "hold expired before the request was sent",
                )
            };
            give_back(&mut tx, &key_id, refund).await?;
            ledger_row(
                &mut tx,
                Entry {
                    key_id: &key_id,
                    kind,
                    amount: refund,
                    cost,
                    request_id: Some(&request_id),
                    note: Some(note),
                    at: now,
                },
            )
            .await?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(swept)
    }

    async fn totals(&self) -> StoreResult<CreditTotals> {
        self.batch.flush().await;
        let row = sqlx::query(TOTALS)
            .fetch_one(&self.reader)
            .await
            .map_err(unavailable)?;
        Ok(totals_from_row(&row))
    }

    async fn ledger(&self, key_id: &str) -> StoreResult<Vec<LedgerRow>> {
        self.batch.flush().await;
        let sql = format!("SELECT {LEDGER_COLUMNS} FROM ledger WHERE key_id = ? ORDER BY seq");
        let rows = sqlx::query(&sql)
            .bind(key_id)
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(ledger_from_row).collect())
    }
}

#[async_trait]
impl UsageStore for SqliteStore {
    async fn generation(&self, key_id: &str, request_id: &str) -> StoreResult<Option<UsageRecord>> {
        self.batch.flush().await;
        let row = sqlx::query(GENERATION)
            .bind(format!("{request_id}/"))
            .bind(format!("{request_id}0"))
            .bind(request_id)
            .bind(key_id)
            .fetch_optional(&self.reader)
            .await
            .map_err(unavailable)?;
        Ok(row.as_ref().map(usage_from_row))
    }

    async fn summary(
        &self,
        key_id: &str,
        day_start: i64,
        week_start: i64,
        month_start: i64,
    ) -> StoreResult<UsageSummary> {
        self.batch.flush().await;
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(SUM(cost), 0) AS total, \
                    COALESCE(SUM(CASE WHEN created_at >= ?2 THEN cost ELSE 0 END), 0) AS day, \
                    COALESCE(SUM(CASE WHEN created_at >= ?3 THEN cost ELSE 0 END), 0) AS week, \
                    COALESCE(SUM(CASE WHEN created_at >= ?4 THEN cost ELSE 0 END), 0) AS month \
             FROM usage WHERE key_id = ?1",
        )
        .bind(key_id)
        .bind(day_start)
        .bind(week_start)
        .bind(month_start)
        .fetch_one(&self.reader)
        .await
        .map_err(unavailable)?;
        Ok(summary_from_row(&row))
    }
}

#[async_trait]
impl IdempotencyStore for SqliteStore {
    async fn claim(&self, c: &IdempotencyClaim) -> StoreResult<Claim> {
        let mut tx = self.begin().await?;
        let existing = sqlx::query(
            "SELECT body_hash, request_id, state, response, created_at FROM idempotency WHERE key_id = ? AND idem_key = ?",
        )
        .bind(&c.key_id)
        .bind(&c.idem_key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        if let Some(row) = existing.filter(|r| r.get::<i64, _>("created_at") >= c.not_before) {
            tx.rollback().await.map_err(unavailable)?;
            let hash: Vec<u8> = row.get("body_hash");
            let state: String = row.get("state");
            return Ok(existing_claim(
                c,
                &hash,
                row.get("request_id"),
                &state,
                row.get("response"),
            ));
        }
        sqlx::query(
            "INSERT OR REPLACE INTO idempotency (key_id, idem_key, body_hash, request_id, state, response, created_at) VALUES (?, ?, ?, ?, 'running', NULL, ?)",
        )
        .bind(&c.key_id)
        .bind(&c.idem_key)
        .bind(&c.body_hash[..])
        .bind(&c.request_id)
        .bind(c.now)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        // Records past their window are dropped as new ones are written.
        sqlx::query("DELETE FROM idempotency WHERE created_at < ?")
            .bind(c.not_before)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Claim::Claimed)
    }

    async fn complete(
        &self,
        key_id: &str,
        idem_key: &str,
        response: Option<&[u8]>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE idempotency SET state = 'done', response = ? WHERE key_id = ? AND idem_key = ?",
        )
        .bind(response)
        .bind(key_id)
        .bind(idem_key)
        .execute(&self.writer)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn abandon(&self, key_id: &str, idem_key: &str, request_id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM idempotency WHERE key_id = ? AND idem_key = ? AND request_id = ?")
            .bind(key_id)
            .bind(idem_key)
            .bind(request_id)
            .execute(&self.writer)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl ResponseStore for SqliteStore {
    async fn put_response(&self, r: &StoredResponse) -> StoreResult<()> {
        sqlx::query(
            "INSERT OR REPLACE INTO responses (id, key_id, previous_response_id, input, response, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&r.id)
        .bind(&r.key_id)
        .bind(&r.previous_response_id)
        .bind(r.input.to_string())
        .bind(r.response.to_string())
        .bind(r.created_at)
        .execute(&self.writer)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn get_response(
        &self,
        key_id: &str,
        id: &str,
        not_before: i64,
    ) -> StoreResult<Option<StoredResponse>> {
        let sql = format!(
            "SELECT {RESPONSE_COLUMNS} FROM responses WHERE id = ? AND key_id = ? AND created_at >= ?"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(key_id)
            .bind(not_before)
            .fetch_optional(&self.reader)
            .await
            .map_err(unavailable)?;
        Ok(row.as_ref().map(response_from_row))
    }

    async fn delete_response(&self, key_id: &str, id: &str) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM responses WHERE id = ? AND key_id = ?")
            .bind(id)
            .bind(key_id)
            .execute(&self.writer)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }

    async fn purge_responses(&self, before: i64) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM responses WHERE created_at < ?")
            .bind(before)
            .execute(&self.writer)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::super::sqlite_batch::tests::{balance_of, settled};
    use super::*;

    /// A store opened (so migrated) on `database_before(version)`; the
    /// directory lives as long as the caller keeps it.
    async fn opened_on_database_before(version: i64) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        database_before(&path, version).await;
        let store = SqliteStore::open(&path, Duration::from_secs(1))
            .await
            .unwrap();
        (dir, store)
    }

    /// A database as the migrations before `version` left it, with a key,
    /// its ledger, an open hold and a usage record.
    async fn database_before(path: &Path, version: i64) {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal),
            )
            .await
            .unwrap();
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        let before: Vec<_> = migrator
            .migrations
            .iter()
            .filter(|m| m.version < version)
            .cloned()
            .collect();
        assert_eq!(before.len() as i64, version - 1);
        migrator.migrations = before.into();
        migrator.run(&pool).await.unwrap();
        for statement in [
            "INSERT INTO api_keys (id, hash, display, name, created_at, balance)
             VALUES ('k1', x'01', 'sk-mume-…0001', 'old', 1, 1000)",
            "INSERT INTO ledger (key_id, kind, amount, request_id, created_at)
             VALUES ('k1', 'topup', 2000, NULL, 1), ('k1', 'hold', -600, 'r0', 2),
                    ('k1', 'settle', 100, 'r0', 3), ('k1', 'hold', -500, 'r1', 4)",
            "INSERT INTO holds (hold_id, request_id, key_id, amount, sent, created_at, expires_at)
             VALUES ('h1', 'r1', 'k1', 500, 1, 4, 10)",
            "INSERT INTO usage (hold_id, request_id, key_id, model, provider, prompt_tokens,
                completion_tokens, cached_tokens, cost, status, outcome, latency_ms, streamed,
                cancelled, created_at, searches, mcp_calls)
             VALUES ('h0', 'r0', 'k1', 'up/m', 'up', 10, 20, 0, 500, 200, 'ok', 7, 0, 0, 3, 0, 0)",
        ] {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
        pool.close().await;
    }

    #[tokio::test]
    async fn migration_0006_keeps_every_row_and_the_rules_they_live_by() {
        let (_dir, store) = opened_on_database_before(6).await;

        let ledger = store.ledger("k1").await.unwrap();
        let seqs: Vec<i64> = ledger.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        let old = store
            .generation("k1", "r0")
            .await
            .unwrap()
            .expect("usage kept");
        assert_eq!((old.cost, old.completion_tokens), (500, 20));

        // The open hold survived: the sweeper charges it, in a new ledger
        // row numbered after the old ones.
        let swept = store.sweep_expired(100).await.unwrap();
        assert_eq!((swept.settled, swept.released), (1, 0));
        let ledger = store.ledger("k1").await.unwrap();
        assert_eq!(ledger.last().unwrap().seq, 5);
        assert_eq!(balance_of(&store, "k1").await, Some(1000));

        // Holds and settlements work on the new tables; a hold settles once.
        let hold = HoldRequest {
            hold_id: "h2".into(),
            request_id: "req-h2".into(),
            key_id: "k1".into(),
            amount: 300,
            sent: true,
            now: 200,
            expires_at: 10_000,
        };
        assert_eq!(store.hold(&hold).await.unwrap(), HoldResult::Held);
        store.settle(&settled("k1", "h2", 100)).await.unwrap();
        store.settle(&settled("k1", "h2", 100)).await.unwrap();
        assert_eq!(balance_of(&store, "k1").await, Some(900));
        assert_eq!(
            store
                .generation("k1", "req-h2")
                .await
                .unwrap()
                .unwrap()
                .cost,
            100
        );
        let seqs: Vec<i64> = store
            .ledger("k1")
            .await
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6, 7]);
        // The ledger is still append-only.
        assert!(sqlx::query("DELETE FROM ledger WHERE seq = 1")
            .execute(&store.writer)
            .await
            .is_err());
        store.close().await;
    }

    #[tokio::test]
    async fn migration_0007_keeps_the_ledger_and_checks_its_kinds_without_a_temporary_table() {
        let (_dir, store) = opened_on_database_before(7).await;

        let ledger = store.ledger("k1").await.unwrap();
        let rows: Vec<(i64, &str, i64)> = ledger
            .iter()
            .map(|r| (r.seq, r.kind.as_str(), r.amount))
            .collect();
        assert_eq!(
            rows,
            [
                (1, "topup", 2000),
                (2, "hold", -600),
                (3, "settle", 100),
                (4, "hold", -500)
            ]
        );

        // The statement every hold and settlement runs compiles to plain
        // comparisons: no temporary b-tree for the list of kinds.
        let plan: Vec<String> = sqlx::query(&format!(
            "EXPLAIN {}",
            super::super::sqlite_batch::sql::LEDGER
        ))
        .bind("k1")
        .bind("hold")
        .bind(-1)
        .bind(0)
        .bind("r")
        .bind(1)
        .fetch_all(&store.writer)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get("opcode"))
        .collect();
        assert!(plan.iter().any(|op| op == "Insert"), "{plan:?}");
        assert!(!plan.iter().any(|op| op == "OpenEphemeral"), "{plan:?}");

        // The rules still hold: only the five kinds, and append-only.
        for kind in ["hold", "settle", "release", "topup", "adjust"] {
            sqlx::query(
                "INSERT INTO ledger (key_id, kind, amount, created_at) VALUES ('k1', ?, 0, 9)",
            )
            .bind(kind)
            .execute(&store.writer)
            .await
            .unwrap();
        }
        let refused = sqlx::query(
            "INSERT INTO ledger (key_id, kind, amount, created_at) VALUES ('k1', 'gift', 5, 9)",
        )
        .execute(&store.writer)
        .await
        .unwrap_err();
        assert!(refused.to_string().contains("CHECK"), "{refused}");
        for change in [
            "DELETE FROM ledger WHERE seq = 1",
            "UPDATE ledger SET amount = 0",
        ] {
            assert!(sqlx::query(change).execute(&store.writer).await.is_err());
        }
        assert_eq!(store.ledger("k1").await.unwrap().len(), 9);
        store.close().await;
    }

    #[tokio::test]
    async fn migration_0008_finds_usage_by_its_key_without_a_request_index() {
        let (_dir, store) = opened_on_database_before(8).await;

        // The record written before the migration is found, with its hold.
        let old = store
            .generation("k1", "r0")
            .await
            .unwrap()
            .expect("usage kept");
        assert_eq!((old.hold_id.as_str(), old.cost), ("h0", 500));

        // The usage table is one b-tree, with no index: /generation and a
        // key's totals search ranges of its primary key.
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'usage'",
        )
        .fetch_all(&store.reader)
        .await
        .unwrap();
        assert!(indexes.is_empty(), "{indexes:?}");
        let details: Vec<String> = sqlx::query(&format!("EXPLAIN QUERY PLAN {GENERATION}"))
            .bind("r/")
            .bind("r0")
            .bind("r")
            .bind("k1")
            .fetch_all(&store.reader)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get("detail"))
            .collect();
        assert!(
            details.iter().any(|d| d
                == "SEARCH usage USING PRIMARY KEY (key_id=? AND usage_key>? AND usage_key<?)"),
            "{details:?}"
        );

        // New records: one per hold, found by their request only.
        for (request, hold, cost) in [("r7", "h7", 30), ("r7", "h8", 40), ("r70", "h9", 50)] {
            let mut usage = settled("k1", hold, cost);
            usage.request_id = request.into();
            usage.created_at = 100 + cost;
            store.settle(&usage).await.unwrap();
            store.settle(&usage).await.unwrap();
        }
        let latest = store.generation("k1", "r7").await.unwrap().unwrap();
        assert_eq!((latest.hold_id.as_str(), latest.cost), ("h8", 40));
        let other = store.generation("k1", "r70").await.unwrap().unwrap();
        assert_eq!(other.hold_id, "h9");
        assert!(store.generation("k1", "r").await.unwrap().is_none());
        assert!(store.generation("k2", "r7").await.unwrap().is_none());
        let records: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage")
            .fetch_one(&store.reader)
            .await
            .unwrap();
        assert_eq!(records, 4);
        store.close().await;
    }

    /// `.cargo/config.toml` builds the bundled SQLite without memory
    /// statistics (a global mutex on every allocation otherwise).
    #[tokio::test]
    async fn the_bundled_sqlite_keeps_no_memory_statistics() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db"), Duration::from_secs(1))
            .await
            .unwrap();
        let options: Vec<String> = sqlx::query_scalar("PRAGMA compile_options")
            .fetch_all(&store.reader)
            .await
            .unwrap();
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
        store.close().await;
    }

    #[tokio::test]
    async fn a_new_database_has_small_pages_and_an_old_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let page_size = |store: &SqliteStore| {
            let reader = store.reader.clone();
            async move {
                sqlx::query_scalar::<_, i64>("PRAGMA page_size")
                    .fetch_one(&reader)
                    .await
                    .unwrap()
            }
        };
        let new = SqliteStore::open(&dir.path().join("new.db"), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(page_size(&new).await, i64::from(PAGE_SIZE));
        new.close().await;

        // A database made with the default pages (and already in WAL mode)
        // opens, migrates and keeps them.
        let (_old_dir, old) = opened_on_database_before(7).await;
        assert_eq!(page_size(&old).await, 4096);
        old.close().await;
    }
}
