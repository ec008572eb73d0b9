//! The Postgres store, for several gateway instances sharing one state.
//! Selected by `store.url = "postgres://…"` (or `MUME_DATABASE_URL`);
//! migrations in `migrations/postgres/` are applied at connect.
//!
//! Money moves only by conditional statements that Postgres applies
//! atomically: a hold is `UPDATE … SET balance = balance - amount WHERE
//! balance >= amount`, so concurrent holds from any number of instances
//! serialize on the key's row and can never take the balance below zero
//! (the `CHECK (balance >= 0)` backs that up). Each money operation is one
//! statement (its ledger row and hold row written by data-modifying CTEs of
//! the same statement) or one transaction.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};

use super::sql::{
    credited, existing_claim, key_from_row, ledger_from_row, response_from_row, sql_count,
    summary_from_row, totals_from_row, unavailable, usage_from_row, KEY_COLUMNS, LEDGER_COLUMNS,
    RESPONSE_COLUMNS, TOTALS,
};
use super::{
    Claim, Closeable, CreditKind, CreditResult, CreditStore, CreditTotals, HoldRequest, HoldResult,
    IdempotencyClaim, IdempotencyStore, KeyPatch, KeyRecord, KeyStore, LedgerRow, NewKey,
    ResponseStore, StoreError, StoreResult, StoredResponse, Swept, UsageRecord, UsageStore,
    UsageSummary,
};
use crate::accounts::keys::KeyHash;
use crate::config::NanoUsd;

/// How long a request waits for a connection before the store counts as
/// unavailable (CR-08: a 503 within a second, and nothing sent upstream).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        crate::install_tls_provider();
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot connect to Postgres: {e}")))?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrating Postgres: {e}")))?;
        Ok(Self { pool })
    }

    async fn begin(&self) -> StoreResult<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(unavailable)
    }
}

#[async_trait]
impl Closeable for PgStore {
    async fn close(&self) {
        self.pool.close().await;
    }
}

/// Appends one ledger row.
async fn ledger_row(
    tx: &mut Transaction<'static, Postgres>,
    key_id: &str,
    kind: &str,
    amount: NanoUsd,
    note: Option<&str>,
    at: i64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO ledger (key_id, kind, amount, cost, request_id, note, created_at) VALUES ($1, $2, $3, 0, NULL, $4, $5)",
    )
    .bind(key_id)
    .bind(kind)
    .bind(amount)
    .bind(note)
    .bind(at)
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?;
    Ok(())
}

#[async_trait]
impl KeyStore for PgStore {
    async fn insert_key(&self, key: NewKey) -> StoreResult<()> {
        let r = &key.record;
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO api_keys (id, hash, display, name, created_at, disabled, expires_at, balance, rpm, tpm, max_concurrent, models, metadata) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
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
                &r.id,
                "topup",
                balance,
                Some("initial credit"),
                r.created_at,
            )
            .await?;
        }
        tx.commit().await.map_err(unavailable)
    }

    async fn key_by_hash(&self, hash: &KeyHash) -> StoreResult<Option<KeyRecord>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = $1");
        let row = sqlx::query(&sql)
            .bind(&hash[..])
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(row.as_ref().map(key_from_row))
    }

    async fn key_by_id(&self, id: &str) -> StoreResult<Option<KeyRecord>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(row.as_ref().map(key_from_row))
    }

    async fn list_keys(&self, offset: u64, limit: u64) -> StoreResult<Vec<KeyRecord>> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id LIMIT $1 OFFSET $2"
        );
        let rows = sqlx::query(&sql)
            .bind(sql_count(limit))
            .bind(sql_count(offset))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(key_from_row).collect())
    }

    async fn update_key(&self, id: &str, patch: &KeyPatch) -> StoreResult<Option<KeyRecord>> {
        let mut tx = self.begin().await?;
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 FOR UPDATE");
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
            "UPDATE api_keys SET name = $1, disabled = $2, expires_at = $3, rpm = $4, tpm = $5, max_concurrent = $6, models = $7, metadata = $8 WHERE id = $9",
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
        let done = sqlx::query("DELETE FROM api_keys WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }

    async fn count_keys(&self) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(n.max(0) as u64)
    }
}

/// A hold in one statement: the conditional debit, and (only if it took)
/// the hold row and its ledger row. The outer select reports the balance
/// as it was before, and whether the key exists and is limited.
const HOLD: &str = "WITH debit AS (
    UPDATE api_keys SET balance = balance - $3
    WHERE id = $2 AND balance IS NOT NULL AND balance >= $3
    RETURNING id
), hold AS (
    INSERT INTO holds (hold_id, request_id, key_id, amount, sent, created_at, expires_at)
    SELECT $1, $4, $2, $3, $5, $6, $7 FROM debit
    RETURNING hold_id
), entry AS (
    INSERT INTO ledger (key_id, kind, amount, cost, request_id, note, created_at)
    SELECT $2, 'hold', -$3, 0, $4, NULL, $6 FROM debit
    RETURNING seq
)
SELECT (SELECT COUNT(*) FROM hold) AS held,
       EXISTS (SELECT 1 FROM api_keys WHERE id = $2) AS found,
       (SELECT balance FROM api_keys WHERE id = $2) AS balance";

/// A settlement in one statement: the hold removed (if still open), the
/// unspent part given back, the ledger row, and the usage record (written
/// once per hold).
const SETTLE: &str = "WITH gone AS (
    DELETE FROM holds WHERE hold_id = $1 RETURNING key_id, amount
), charged AS (
    SELECT key_id, amount, LEAST(GREATEST($2::BIGINT, 0), amount) AS cost FROM gone
), refund AS (
    UPDATE api_keys SET balance = balance + (charged.amount - charged.cost)
    FROM charged WHERE api_keys.id = charged.key_id AND api_keys.balance IS NOT NULL
    RETURNING api_keys.id
), entry AS (
    INSERT INTO ledger (key_id, kind, amount, cost, request_id, note, created_at)
    SELECT key_id, CASE WHEN cost = 0 THEN 'release' ELSE 'settle' END, amount - cost, cost, $3, NULL, $4
    FROM charged
    RETURNING seq
)
INSERT INTO usage (hold_id, request_id, key_id, model, provider, prompt_tokens, completion_tokens,
                   cached_tokens, cost, status, outcome, latency_ms, streamed, cancelled, created_at,
                   searches, mcp_calls)
VALUES ($1, $3, $5, $6, $7, $8, $9, $10, $2, $11, $12, $13, $14, $15, $4, $16, $17)
ON CONFLICT (hold_id) DO NOTHING";

/// Holds past their expiry, resolved in one statement: never sent, given
/// back; sent, charged in full (the work happened, its usage is unknown).
const SWEEP: &str = "WITH gone AS (
    DELETE FROM holds WHERE expires_at < $1 RETURNING request_id, key_id, amount, sent
), refund AS (
    UPDATE api_keys SET balance = balance + t.refund
    FROM (SELECT key_id, SUM(amount) AS refund FROM gone WHERE sent = 0 GROUP BY key_id) AS t
    WHERE api_keys.id = t.key_id AND api_keys.balance IS NOT NULL
    RETURNING api_keys.id
), entry AS (
    INSERT INTO ledger (key_id, kind, amount, cost, request_id, note, created_at)
    SELECT key_id,
           CASE WHEN sent = 1 THEN 'settle' ELSE 'release' END,
           CASE WHEN sent = 1 THEN 0 ELSE amount END,
           CASE WHEN sent = 1 THEN amount ELSE 0 END,
           request_id,
           CASE WHEN sent = 1 THEN 'hold expired after the request was sent; charged the hold'
                ELSE 'hold expired before the request was sent' END,
           $1
    FROM gone
    RETURNING seq
)
SELECT COUNT(*) FILTER (WHERE sent = 1) AS settled, COUNT(*) FILTER (WHERE sent = 0) AS released
FROM gone";

#[async_trait]
impl CreditStore for PgStore {
    async fn hold(&self, h: &HoldRequest) -> StoreResult<HoldResult> {
        let row = sqlx::query(HOLD)
            .bind(&h.hold_id)
            .bind(&h.key_id)
            .bind(h.amount)
            .bind(&h.request_id)
            .bind(i64::from(h.sent))
            .bind(h.now)
            .bind(h.expires_at)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        let held: i64 = row.get("held");
        let found: bool = row.get("found");
        let balance: Option<i64> = row.get("balance");
        Ok(match (held, found, balance) {
            (1, _, _) => HoldResult::Held,
            (_, false, _) => HoldResult::NoKey,
            (_, true, None) => HoldResult::Unlimited,
            (_, true, Some(balance)) => HoldResult::Insufficient { balance },
        })
    }

    async fn settle(&self, u: &UsageRecord) -> StoreResult<()> {
        sqlx::query(SETTLE)
            .bind(&u.hold_id)
            .bind(u.cost)
            .bind(&u.request_id)
            .bind(u.created_at)
            .bind(&u.key_id)
            .bind(&u.model)
            .bind(&u.provider)
            .bind(sql_count(u.prompt_tokens))
            .bind(sql_count(u.completion_tokens))
            .bind(sql_count(u.cached_tokens))
            .bind(i64::from(u.status))
            .bind(&u.outcome)
            .bind(sql_count(u.latency_ms))
            .bind(i64::from(u.streamed))
            .bind(i64::from(u.cancelled))
            .bind(i64::from(u.searches))
            .bind(i64::from(u.mcp_calls))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn credit(
        &self,
        key_id: &str,
        kind: CreditKind,
        amount: NanoUsd,
        note: Option<&str>,
        now: i64,
    ) -> StoreResult<CreditResult> {
        let mut tx = self.begin().await?;
        let balance: Option<Option<i64>> =
            sqlx::query_scalar("SELECT balance FROM api_keys WHERE id = $1 FOR UPDATE")
                .bind(key_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
        let balance = match balance {
            None => return Ok(CreditResult::NoKey),
            Some(None) => return Ok(CreditResult::Unlimited),
            Some(Some(b)) => b,
        };
        let after = match credited(balance, amount) {
            Ok(after) => after,
            Err(refused) => return Ok(refused),
        };
        sqlx::query("UPDATE api_keys SET balance = $1 WHERE id = $2")
            .bind(after)
            .bind(key_id)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        let kind = match kind {
            CreditKind::TopUp => "topup",
            CreditKind::Adjust => "adjust",
        };
        ledger_row(&mut tx, key_id, kind, amount, note, now).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(CreditResult::Applied { balance: after })
    }

    async fn sweep_expired(&self, now: i64) -> StoreResult<Swept> {
        let row = sqlx::query(SWEEP)
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(Swept {
            released: row.get::<i64, _>("released").max(0) as u64,
            settled: row.get::<i64, _>("settled").max(0) as u64,
        })
    }

    async fn totals(&self) -> StoreResult<CreditTotals> {
        let row = sqlx::query(TOTALS)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(totals_from_row(&row))
    }

    async fn ledger(&self, key_id: &str) -> StoreResult<Vec<LedgerRow>> {
        let sql = format!("SELECT {LEDGER_COLUMNS} FROM ledger WHERE key_id = $1 ORDER BY seq");
        let rows = sqlx::query(&sql)
            .bind(key_id)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(ledger_from_row).collect())
    }
}

#[async_trait]
impl UsageStore for PgStore {
    async fn generation(&self, key_id: &str, request_id: &str) -> StoreResult<Option<UsageRecord>> {
        let row = sqlx::query(
            "SELECT * FROM usage WHERE request_id = $1 AND key_id = $2 ORDER BY created_at DESC LIMIT 1",
        )
        .bind(request_id)
        .bind(key_id)
        .fetch_optional(&self.pool)
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
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(SUM(cost), 0)::BIGINT AS total, \
                    COALESCE(SUM(cost) FILTER (WHERE created_at >= $2), 0)::BIGINT AS day, \
                    COALESCE(SUM(cost) FILTER (WHERE created_at >= $3), 0)::BIGINT AS week, \
                    COALESCE(SUM(cost) FILTER (WHERE created_at >= $4), 0)::BIGINT AS month \
             FROM usage WHERE key_id = $1",
        )
        .bind(key_id)
        .bind(day_start)
        .bind(week_start)
        .bind(month_start)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(summary_from_row(&row))
    }
}

#[async_trait]
impl IdempotencyStore for PgStore {
    async fn claim(&self, c: &IdempotencyClaim) -> StoreResult<Claim> {
        let mut tx = self.begin().await?;
        // Two instances claiming the same new key race on the insert: one
        // inserts, the other finds the row (locked until the first commits).
        let inserted = sqlx::query(
            "INSERT INTO idempotency (key_id, idem_key, body_hash, request_id, state, response, created_at) \
             VALUES ($1, $2, $3, $4, 'running', NULL, $5) ON CONFLICT (key_id, idem_key) DO NOTHING",
        )
        .bind(&c.key_id)
        .bind(&c.idem_key)
        .bind(&c.body_hash[..])
        .bind(&c.request_id)
        .bind(c.now)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        if inserted == 0 {
            let row = sqlx::query(
                "SELECT body_hash, request_id, state, response, created_at FROM idempotency WHERE key_id = $1 AND idem_key = $2 FOR UPDATE",
            )
            .bind(&c.key_id)
            .bind(&c.idem_key)
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
            if row.get::<i64, _>("created_at") >= c.not_before {
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
            // Past its window: the key is free again.
            sqlx::query(
                "UPDATE idempotency SET body_hash = $3, request_id = $4, state = 'running', response = NULL, created_at = $5 \
                 WHERE key_id = $1 AND idem_key = $2",
            )
            .bind(&c.key_id)
            .bind(&c.idem_key)
            .bind(&c.body_hash[..])
            .bind(&c.request_id)
            .bind(c.now)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        sqlx::query("DELETE FROM idempotency WHERE created_at < $1")
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
            "UPDATE idempotency SET state = 'done', response = $1 WHERE key_id = $2 AND idem_key = $3",
        )
        .bind(response)
        .bind(key_id)
        .bind(idem_key)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn abandon(&self, key_id: &str, idem_key: &str, request_id: &str) -> StoreResult<()> {
        sqlx::query(
            "DELETE FROM idempotency WHERE key_id = $1 AND idem_key = $2 AND request_id = $3",
        )
        .bind(key_id)
        .bind(idem_key)
        .bind(request_id)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl ResponseStore for PgStore {
    async fn put_response(&self, r: &StoredResponse) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO responses (id, key_id, previous_response_id, input, response, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET response = EXCLUDED.response",
        )
        .bind(&r.id)
        .bind(&r.key_id)
        .bind(&r.previous_response_id)
        .bind(r.input.to_string())
        .bind(r.response.to_string())
        .bind(r.created_at)
        .execute(&self.pool)
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
            "SELECT {RESPONSE_COLUMNS} FROM responses WHERE id = $1 AND key_id = $2 AND created_at >= $3"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(key_id)
            .bind(not_before)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(row.as_ref().map(response_from_row))
    }

    async fn delete_response(&self, key_id: &str, id: &str) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM responses WHERE id = $1 AND key_id = $2")
            .bind(id)
            .bind(key_id)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }

    async fn purge_responses(&self, before: i64) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM responses WHERE created_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}
