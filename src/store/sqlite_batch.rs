//! Group commit for the per-request money path of the SQLite store: holds
//! and settlements.
//!
//! Every request in flight queues its operation to one thread, which owns
//! a connection of its own (rusqlite) and applies whatever has queued up
//! as ONE transaction:
//!
//! 1. `BEGIN IMMEDIATE`, the settlements (refunds, ledger rows, removal of
//!    the holds, usage records) done in SQL, and a read of the balances the
//!    holds need;
//! 2. the holds decided here, in queue order, against those balances;
//! 3. the holds written and the transaction committed.
//!
//! Why: a request's money moves must not each cost a transaction and a
//! trip to a database thread. Here a request costs one hand-off to this
//! thread and its share of one transaction; the statements run as direct
//! calls into SQLite (sqlx, used for the rest of the store, would hand
//! every statement to its worker thread and back). The rows travel as one
//! JSON object read with `json_each`, so the SQL text, and its cached
//! prepared statements, never change.
//!
//! Settlements only give credit back, so running a batch's settlements
//! before its holds is a valid order for operations that were concurrent
//! anyway, and never refuses a hold that another order would admit.
//!
//! The write lock is held from the first statement, so the balances read
//! are the balances written against; the table's `CHECK (balance >= 0)`
//! backs that up. If a batch fails, each of its operations is retried
//! alone, so one bad operation cannot fail the others.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::sql::sql_count;
use super::{HoldRequest, HoldResult, StoreError, StoreResult, UsageRecord};
use crate::config::NanoUsd;

/// The most operations one transaction takes.
const MAX_BATCH: usize = 512;

/// The open holds being settled, with what each is charged (never more
/// than the hold). `$.settle` rows: [hold_id, cost, request_id, at].
macro_rules! settled {
    () => {
        "WITH s AS (SELECT json_extract(value, '$[0]') AS hold_id, json_extract(value, '$[1]') AS cost,
                    json_extract(value, '$[2]') AS request_id, json_extract(value, '$[3]') AS at, key AS n
             FROM json_each(?1, '$.settle')),
      r AS (SELECT h.key_id, h.amount, min(max(s.cost, 0), h.amount) AS charged, s.request_id, s.at, s.n
            FROM s JOIN holds AS h ON h.hold_id = s.hold_id)
"
    };
}

/// Settlements: refunds, ledger rows, removal of the holds, usage records
/// (each statement takes the batch's JSON as `?1`).
const SETTLEMENTS: [&str; 4] = [
    concat!(
        settled!(),
        "UPDATE api_keys SET balance = balance + t.refund
    FROM (SELECT key_id, SUM(amount - charged) AS refund FROM r GROUP BY key_id) AS t
    WHERE api_keys.id = t.key_id AND api_keys.balance IS NOT NULL"
    ),
    concat!(
        settled!(),
        "INSERT INTO ledger (key_id, kind, amount, cost, request_id, note, created_at)
    SELECT key_id, CASE WHEN charged = 0 THEN 'release' ELSE 'settle' END, amount - charged, charged,
           request_id, NULL, at
    FROM r ORDER BY n"
    ),
    "DELETE FROM holds WHERE hold_id IN (SELECT json_extract(value, '$[0]') FROM json_each(?1, '$.settle'))",
    "INSERT OR IGNORE INTO usage (hold_id, request_id, key_id, model, provider, prompt_tokens,
                             completion_tokens, cached_tokens, cost, status, outcome, latency_ms,
                             streamed, cancelled, created_at, searches, mcp_calls)
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
           json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]'),
           json_extract(value, '$[6]'), json_extract(value, '$[7]'), json_extract(value, '$[8]'),
           json_extract(value, '$[9]'), json_extract(value, '$[10]'), json_extract(value, '$[11]'),
           json_extract(value, '$[12]'), json_extract(value, '$[13]'), json_extract(value, '$[14]'),
           json_extract(value, '$[15]'), json_extract(value, '$[16]')
    FROM json_each(?1, '$.usage')",
];

/// The balances the holds need (`$.keys`).
const READ: &str =
    "SELECT id, balance FROM api_keys WHERE id IN (SELECT value FROM json_each(?1, '$.keys'))";

/// The admitted holds: `$.changes` [key_id, balance change], `$.holds`,
/// `$.ledger` rows in order.
const WRITE_HOLDS: [&str; 3] = [
    "UPDATE api_keys SET balance = balance + d.change
    FROM (SELECT json_extract(value, '$[0]') AS key_id, json_extract(value, '$[1]') AS change
          FROM json_each(?1, '$.changes')) AS d
    WHERE api_keys.id = d.key_id AND api_keys.balance IS NOT NULL",
    "INSERT INTO holds (hold_id, request_id, key_id, amount, sent, created_at, expires_at)
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
           json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]'),
           json_extract(value, '$[6]')
    FROM json_each(?1, '$.holds')",
    "INSERT INTO ledger (key_id, kind, amount, cost, request_id, note, created_at)
    SELECT json_extract(value, '$[0]'), 'hold', json_extract(value, '$[1]'), 0,
           json_extract(value, '$[2]'), NULL, json_extract(value, '$[3]')
    FROM json_each(?1, '$.ledger') ORDER BY key",
];

/// One per-request operation.
#[derive(Debug)]
pub(super) enum Op {
    Hold(HoldRequest),
    Settle(UsageRecord),
    /// Gives a hold back in full with no usage record: its request gave
    /// up waiting for the hold and was never sent.
    Release {
        hold_id: String,
        request_id: String,
        at: i64,
    },
}

/// What an operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Done {
    Hold(HoldResult),
    Settled,
}

struct Job {
    op: Op,
    reply: oneshot::Sender<StoreResult<Done>>,
}

enum Msg {
    Job(Box<Job>),
    /// Close the connection and stop; later operations fail as unavailable.
    Close(oneshot::Sender<()>),
}

/// The handle requests queue their operations on.
pub(super) struct Batcher {
    queue: mpsc::UnboundedSender<Msg>,
}

fn closed() -> StoreError {
    StoreError::Unavailable("the store is closed".into())
}

/// A unique or check constraint broken is a conflict (as the rest of the
/// store reports it); anything else leaves the store unavailable.
fn failed(e: rusqlite::Error) -> StoreError {
    use rusqlite::ffi;
    match &e {
        rusqlite::Error::SqliteFailure(code, message)
            if matches!(
                code.extended_code,
                ffi::SQLITE_CONSTRAINT_UNIQUE
                    | ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                    | ffi::SQLITE_CONSTRAINT_CHECK
            ) =>
        {
            StoreError::Conflict(message.clone().unwrap_or_else(|| e.to_string()))
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

impl Batcher {
    /// Opens the batch connection to the database at `path` (already
    /// created and migrated) and starts the thread that owns it.
    pub fn start(path: &Path, busy_timeout: Duration) -> StoreResult<Self> {
        let conn = Connection::open(path).map_err(failed)?;
        conn.busy_timeout(busy_timeout).map_err(failed)?;
        // No checkpoints here: copying the WAL into the database (and its
        // fsync) would stall every request whose hold waits behind it;
        // `SqliteStore` checkpoints in the background instead.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
             PRAGMA wal_autocheckpoint = 0;",
        )
        .map_err(failed)?;
        let (queue, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("mume-credit-batch".into())
            .spawn(move || run(conn, rx))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the batch thread: {e}")))?;
        Ok(Self { queue })
    }

    pub async fn submit(&self, op: Op) -> StoreResult<Done> {
        let (reply, done) = oneshot::channel();
        self.queue
            .send(Msg::Job(Box::new(Job { op, reply })))
            .map_err(|_| closed())?;
        done.await.map_err(|_| closed())?
    }

    /// Queues an operation without waiting for it.
    pub fn submit_detached(&self, op: Op) {
        let (reply, _) = oneshot::channel();
        let _ = self.queue.send(Msg::Job(Box::new(Job { op, reply })));
    }

    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Msg::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

fn run(mut conn: Connection, mut rx: mpsc::UnboundedReceiver<Msg>) {
    conn.set_prepared_statement_cache_capacity(16);
    while let Some(first) = rx.blocking_recv() {
        let mut msgs = vec![first];
        while msgs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(msg) => msgs.push(msg),
                Err(_) => break,
            }
        }
        let mut jobs = Vec::with_capacity(msgs.len());
        let mut close = None;
        for msg in msgs {
            match msg {
                Msg::Job(job) => jobs.push(*job),
                Msg::Close(done) => {
                    // Operations queued after the close are dropped: their
                    // callers see the store as unavailable.
                    close = Some(done);
                    break;
                }
            }
        }
        if !jobs.is_empty() {
            commit(&mut conn, jobs);
        }
        if let Some(done) = close {
            drop(conn);
            let _ = done.send(());
            return;
        }
    }
}

fn commit(conn: &mut Connection, jobs: Vec<Job>) {
    let ops: Vec<&Op> = jobs.iter().map(|j| &j.op).collect();
    match apply(conn, &ops) {
        Ok(done) => {
            for (job, done) in jobs.into_iter().zip(done) {
                let _ = job.reply.send(Ok(done));
            }
        }
        Err(e) if jobs.len() == 1 => {
            rollback(conn);
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            rollback(conn);
            tracing::warn!(error = %e, operations = jobs.len(), "a credit batch failed; applying its operations one by one");
            for job in jobs {
                let result = apply(conn, &[&job.op]);
                if result.is_err() {
                    rollback(conn);
                }
                let _ = job.reply.send(result.map(|d| d[0]));
            }
        }
    }
}

fn rollback(conn: &mut Connection) {
    // Fails harmlessly if the transaction never began or already ended.
    let _ = conn.execute_batch("ROLLBACK");
}

/// Runs each statement with the batch's JSON as `?1`.
fn execute(conn: &Connection, statements: &[&str], rows: &str) -> StoreResult<()> {
    for sql in statements {
        conn.prepare_cached(sql)
            .and_then(|mut statement| statement.execute([rows]))
            .map_err(failed)?;
    }
    Ok(())
}

fn apply(conn: &mut Connection, ops: &[&Op]) -> StoreResult<Vec<Done>> {
    let mut settle = Vec::new();
    let mut usage = Vec::new();
    let mut settling = HashSet::new();
    let mut keys = Vec::new();
    for op in ops {
        match op {
            Op::Settle(u) => {
                // A hold settled twice in one batch moves money once.
                if settling.insert(u.hold_id.as_str()) {
                    settle.push(json!([u.hold_id, u.cost, u.request_id, u.created_at]));
                }
                usage.push(usage_row(u));
            }
            Op::Release {
                hold_id,
                request_id,
                at,
            } => {
                if settling.insert(hold_id.as_str()) {
                    settle.push(json!([hold_id, 0, request_id, at]));
                }
            }
            Op::Hold(h) => keys.push(h.key_id.as_str()),
        }
    }
    conn.execute_batch("BEGIN IMMEDIATE").map_err(failed)?;
    let rows = json!({"settle": settle, "usage": usage, "keys": keys}).to_string();
    // Statements over empty lists still cost a run each: skip them.
    if !settle.is_empty() || !usage.is_empty() {
        execute(conn, &SETTLEMENTS, &rows)?;
    }
    if keys.is_empty() {
        conn.execute_batch("COMMIT").map_err(failed)?;
        return Ok(vec![Done::Settled; ops.len()]);
    }
    // key id -> balance (None: unlimited).
    let mut balances: HashMap<String, Option<NanoUsd>> = HashMap::new();
    {
        let mut read = conn.prepare_cached(READ).map_err(failed)?;
        let mut found = read.query([&rows]).map_err(failed)?;
        while let Some(row) = found.next().map_err(failed)? {
            balances.insert(row.get(0).map_err(failed)?, row.get(1).map_err(failed)?);
        }
    }

    let mut changes: HashMap<&str, NanoUsd> = HashMap::new();
    let mut holds = Vec::new();
    let mut ledger = Vec::new();
    let done: Vec<Done> = ops
        .iter()
        .map(|op| match op {
            Op::Settle(_) | Op::Release { .. } => Done::Settled,
            Op::Hold(h) => {
                let result = decide(h, &mut balances);
                if result == HoldResult::Held {
                    *changes.entry(&h.key_id).or_default() -= h.amount;
                    holds.push(json!([
                        h.hold_id,
                        h.request_id,
                        h.key_id,
                        h.amount,
                        i64::from(h.sent),
                        h.now,
                        h.expires_at
                    ]));
                    ledger.push(json!([h.key_id, -h.amount, h.request_id, h.now]));
                }
                Done::Hold(result)
            }
        })
        .collect();
    if !holds.is_empty() {
        let changes: Vec<Value> = changes.iter().map(|(k, c)| json!([k, c])).collect();
        let rows = json!({"changes": changes, "holds": holds, "ledger": ledger}).to_string();
        execute(conn, &WRITE_HOLDS, &rows)?;
    }
    conn.execute_batch("COMMIT").map_err(failed)?;
    Ok(done)
}

/// Takes the hold out of `balances` if it fits.
fn decide(h: &HoldRequest, balances: &mut HashMap<String, Option<NanoUsd>>) -> HoldResult {
    match balances.get_mut(&h.key_id) {
        None => HoldResult::NoKey,
        Some(None) => HoldResult::Unlimited,
        Some(Some(balance)) if *balance < h.amount => {
            HoldResult::Insufficient { balance: *balance }
        }
        Some(Some(balance)) => {
            *balance -= h.amount;
            HoldResult::Held
        }
    }
}

fn usage_row(u: &UsageRecord) -> Value {
    json!([
        u.hold_id,
        u.request_id,
        u.key_id,
        u.model,
        u.provider,
        sql_count(u.prompt_tokens),
        sql_count(u.completion_tokens),
        sql_count(u.cached_tokens),
        u.cost,
        u.status,
        u.outcome,
        sql_count(u.latency_ms),
        i64::from(u.streamed),
        i64::from(u.cancelled),
        u.created_at,
        u.searches,
        u.mcp_calls
    ])
}

#[cfg(test)]
mod tests {
    use super::super::{
        CreditStore, KeyLimits, KeyRecord, KeyStore, NewKey, SqliteStore, UsageStore,
    };
    use super::*;
    use crate::accounts::keys::PlainKey;

    async fn store_with_key(balance: NanoUsd) -> (tempfile::TempDir, SqliteStore, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("batch.db");
        let store = SqliteStore::open(&path, std::time::Duration::from_secs(1))
            .await
            .unwrap();
        let plain = PlainKey::generate();
        let record = KeyRecord {
            id: plain.id().to_string(),
            name: "batch".into(),
            display: plain.display(),
            created_at: 0,
            disabled: false,
            expires_at: None,
            balance: Some(balance),
            limits: KeyLimits::default(),
            models: vec![],
            metadata: json!({}),
        };
        let id = record.id.clone();
        store
            .insert_key(NewKey {
                record,
                hash: plain.hash(),
            })
            .await
            .unwrap();
        (dir, store, id)
    }

    fn hold(key_id: &str, hold_id: &str, amount: NanoUsd) -> Op {
        Op::Hold(HoldRequest {
            hold_id: hold_id.into(),
            request_id: format!("req-{hold_id}"),
            key_id: key_id.into(),
            amount,
            sent: true,
            now: 1,
            expires_at: i64::MAX,
        })
    }

    /// Operations queued together land in one batch and are decided in
    /// order; one that breaks a rule fails alone.
    #[tokio::test]
    async fn a_batch_decides_in_order_and_one_bad_operation_fails_alone() {
        let (_dir, store, key) = store_with_key(100).await;
        let (a, b, dup) = tokio::join!(
            store.batch.submit(hold(&key, "h1", 60)),
            store.batch.submit(hold(&key, "h2", 60)),
            store.batch.submit(hold(&key, "h1", 10)),
        );
        assert_eq!(a.unwrap(), Done::Hold(HoldResult::Held));
        assert_eq!(
            b.unwrap(),
            Done::Hold(HoldResult::Insufficient { balance: 40 })
        );
        assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
        let key_row = store.key_by_id(&key).await.unwrap().unwrap();
        assert_eq!(key_row.balance, Some(40));
        let kinds: Vec<(String, i64)> = store
            .ledger(&key)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.kind, r.amount))
            .collect();
        assert_eq!(kinds, [("topup".into(), 100), ("hold".into(), -60)]);
    }

    /// A release gives the whole hold back and records no usage.
    #[tokio::test]
    async fn a_release_gives_the_hold_back_without_a_usage_record() {
        let (_dir, store, key) = store_with_key(100).await;
        store.batch.submit(hold(&key, "h1", 70)).await.unwrap();
        let release = Op::Release {
            hold_id: "h1".into(),
            request_id: "req-h1".into(),
            at: 2,
        };
        assert_eq!(store.batch.submit(release).await.unwrap(), Done::Settled);
        assert_eq!(
            store.key_by_id(&key).await.unwrap().unwrap().balance,
            Some(100)
        );
        let last = store.ledger(&key).await.unwrap().pop().unwrap();
        assert_eq!(
            (last.kind.as_str(), last.amount, last.cost),
            ("release", 70, 0)
        );
        assert_eq!(store.generation(&key, "req-h1").await.unwrap(), None);
        assert_eq!(store.totals().await.unwrap().active_holds, 0);
    }

    /// A settlement's refund is visible to a hold later in the same batch,
    /// and settling the same hold twice moves money once.
    #[tokio::test]
    async fn a_refund_funds_a_later_hold_in_the_same_batch() {
        let (_dir, store, key) = store_with_key(100).await;
        store.batch.submit(hold(&key, "h1", 100)).await.unwrap();
        let usage = UsageRecord {
            hold_id: "h1".into(),
            request_id: "req-h1".into(),
            key_id: key.clone(),
            model: "up/m".into(),
            provider: "up".into(),
            prompt_tokens: 1,
            completion_tokens: 1,
            cached_tokens: 0,
            cost: 30,
            status: 200,
            outcome: "ok".into(),
            latency_ms: 1,
            streamed: false,
            cancelled: false,
            created_at: 2,
            searches: 0,
            mcp_calls: 0,
        };
        let (s1, s2, h2) = tokio::join!(
            store.batch.submit(Op::Settle(usage.clone())),
            store.batch.submit(Op::Settle(usage)),
            store.batch.submit(hold(&key, "h2", 70)),
        );
        assert_eq!(s1.unwrap(), Done::Settled);
        assert_eq!(s2.unwrap(), Done::Settled);
        assert_eq!(h2.unwrap(), Done::Hold(HoldResult::Held));
        assert_eq!(
            store.key_by_id(&key).await.unwrap().unwrap().balance,
            Some(0)
        );
        let kinds: Vec<(String, i64, i64)> = store
            .ledger(&key)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.kind, r.amount, r.cost))
            .collect();
        assert_eq!(
            kinds,
            [
                ("topup".into(), 100, 0),
                ("hold".into(), -100, 0),
                ("settle".into(), 70, 30),
                ("hold".into(), -70, 0),
            ]
        );
    }
}
