//! Group commit for the per-request money path of the SQLite store: holds
//! and settlements.
//!
//! Every request in flight queues its operation, and whoever finds the
//! connection (rusqlite, of its own) free applies everything queued as
//! ONE transaction, on its own thread (flat combining):
//!
//! 1. `BEGIN IMMEDIATE`, then the settlements in queue order (ledger row,
//!    removal of the hold, usage record; the refund is counted, not
//!    written yet);
//! 2. the holds, in queue order, each decided against its key's balance
//!    as the transaction sees it plus those refunds, and written with its
//!    ledger row;
//! 3. the releases (holds given back whole, queued behind the hold they
//!    release), then each key's balance change as ONE update, whatever
//!    the number of its holds and refunds in the batch, and `COMMIT`.
//!
//! Why: a request's money moves must not each cost a transaction, nor a
//! trip to a database thread and back (two thread wake-ups). A request
//! first lets its thread's other ready requests queue theirs, so that
//! under load one commit takes them all; requests that arrive while a
//! batch commits queue up, and the caller that holds the connection takes
//! them before it lets go. The statements are prepared once, kept beside
//! the connection, and run as direct calls into SQLite (sqlx, used for
//! the rest of the store, would hand every statement to its worker thread
//! and back). A commit writes pages into the OS's cache and never syncs
//! (`synchronous = NORMAL`); a request's task never sleeps on a lock:
//! if another connection holds SQLite's write lock, the batch moves to a
//! blocking thread that waits for it.
//!
//! A settlement that nobody waits for (`submit_detached`: the request has
//! its answer already) is held back for up to `SETTLE_DELAY`, so that it
//! rides in the transaction of the next hold instead of paying for one of
//! its own: most of a transaction's cost is the pages its commit writes to
//! the WAL, and a hold and a settlement write mostly the same pages. A
//! `flush` (every read of balances, usage or the ledger does one) commits
//! whatever is held back first.
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
use std::mem::take;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Params, Row, Statement};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::sql::sql_count;
use super::{HoldRequest, HoldResult, StoreError, StoreResult, UsageRecord};
use crate::config::NanoUsd;

/// The most operations one transaction takes.
const MAX_BATCH: usize = 512;

/// How long a settlement that nobody waits for may be held back, so that
/// it shares the transaction of the next operation somebody does wait
/// for (a hold, a read's `flush`) instead of costing one of its own.
const SETTLE_DELAY: Duration = Duration::from_millis(10);

/// The statements, each run once per row with its values bound (prepared
/// once, when the connection opens: see `Statements`).
pub(super) mod sql {
    /// The open hold being settled: its key and amount. (A `DELETE …
    /// RETURNING` in its place was measured dearer: SQLite gathers the
    /// returned rows in a temporary table.)
    pub const HOLD: &str = "SELECT key_id, amount FROM holds WHERE hold_id = ?1";
    pub const UNHOLD: &str = "DELETE FROM holds WHERE hold_id = ?1";
    /// The transaction statements, prepared once like every other.
    pub const BEGIN: &str = "BEGIN IMMEDIATE";
    pub const COMMIT: &str = "COMMIT";
    pub const ROLLBACK: &str = "ROLLBACK";
    pub const HOLD_INSERT: &str =
        "INSERT INTO holds (hold_id, request_id, key_id, amount, sent, created_at, expires_at)
        VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
    /// A key's balance (NULL: unlimited).
    pub const BALANCE: &str = "SELECT balance FROM api_keys WHERE id = ?1";
    /// Adds a signed amount to a limited key's balance.
    pub const MOVE: &str =
        "UPDATE api_keys SET balance = balance + ?2 WHERE id = ?1 AND balance IS NOT NULL";
    pub const LEDGER: &str =
        "INSERT INTO ledger (key_id, kind, amount, cost, request_id, note, created_at)
        VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6)";
    /// A usage record, once per hold: its `usage_key` is the request id,
    /// a slash and the hold id (migration 0008; `UsageStore::generation`
    /// finds a request's records by that prefix).
    pub const USAGE: &str = "INSERT OR IGNORE INTO usage (usage_key, request_id, key_id, model, provider, prompt_tokens,
        completion_tokens, cached_tokens, cost, status, outcome, latency_ms, streamed, cancelled, created_at,
        searches, mcp_calls)
        VALUES (?2 || '/' || ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)";
}

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
    /// `None`: nobody waits for the result (a failure is logged here).
    reply: Option<oneshot::Sender<StoreResult<Done>>>,
}

impl Job {
    fn detached(op: Op) -> Self {
        Self { op, reply: None }
    }

    /// Answers the job. A hold placed for a request that stopped waiting
    /// for it (its client left) is an orphan nobody would settle, and the
    /// sweeper would charge it in full: the release that gives it back
    /// comes back from here, to be queued.
    fn answer(self, result: StoreResult<Done>) -> Option<Op> {
        match self.reply {
            Some(reply) => match (self.op, reply.send(result)) {
                (Op::Hold(h), Err(Ok(Done::Hold(HoldResult::Held)))) => Some(Op::Release {
                    hold_id: h.hold_id,
                    request_id: h.request_id,
                    at: h.now,
                }),
                _ => None,
            },
            None => {
                if let Err(e) = result {
                    let what = match self.op {
                        Op::Hold(_) => "hold",
                        Op::Settle(_) => "settlement",
                        Op::Release { .. } => "release",
                    };
                    tracing::error!(error = %e, operation = what, "a queued credit operation failed; its hold is left to the sweeper");
                }
                None
            }
        }
    }
}

/// What is queued and not yet taken by the caller that holds the
/// connection.
#[derive(Default)]
struct Pending {
    jobs: Vec<Job>,
    /// Answered once every operation queued before them is committed.
    flushes: Vec<oneshot::Sender<()>>,
    /// Something queued is waited for, or is due: whoever holds the
    /// connection takes it before letting go.
    urgent: bool,
    /// A timer is set to commit the settlements held back.
    timer: bool,
    /// The connection is closed: nothing more is queued.
    closed: bool,
}

impl Pending {
    /// The next batch: at most `MAX_BATCH` jobs, in queue order, and the
    /// flushes once no job is left behind them.
    fn next_batch(&mut self) -> (Vec<Job>, Vec<oneshot::Sender<()>>) {
        let jobs = if self.jobs.len() > MAX_BATCH {
            let rest = self.jobs.split_off(MAX_BATCH);
            std::mem::replace(&mut self.jobs, rest)
        } else {
            take(&mut self.jobs)
        };
        let flushes = if self.jobs.is_empty() {
            take(&mut self.flushes)
        } else {
            Vec::new()
        };
        self.urgent = !self.jobs.is_empty();
        (jobs, flushes)
    }
}

struct Shared {
    /// Taken alone, or while `conn` is held (never `conn` while this is
    /// held), and only for as long as it takes to move jobs in or out.
    pending: Mutex<Pending>,
    /// `None` once closed. Whoever holds it commits everything pending.
    conn: Mutex<Option<Conn>>,
    /// How long a caller that may block waits for another connection's
    /// write lock (the connection itself never waits: see `commit`).
    busy_timeout: Duration,
}

/// The batch connection, and the holds it committed that are still open
/// as far as it knows: a settlement of one of them removes the row and
/// takes its key and amount from here, without reading the row first.
/// A hold that is not here (written before a restart, forgotten after
/// [`MAX_REMEMBERED`], or settled elsewhere) is read from the table.
pub(super) struct Conn {
    db: Prepared,
    open: HashMap<String, (String, NanoUsd)>,
}

/// The most open holds `Conn` remembers; past it, it forgets them all
/// (their settlements read the rows instead).
const MAX_REMEMBERED: usize = 1 << 16;

/// Which of the batch's statements to run.
#[derive(Clone, Copy)]
enum Sql {
    Begin,
    Commit,
    Rollback,
    Hold,
    Unhold,
    HoldInsert,
    Balance,
    Move,
    Ledger,
    Usage,
}

/// The batch's statements, each prepared once, when the connection opens,
/// and run in place. (rusqlite's statement cache hashes the SQL text and
/// takes the statement out of its LRU list and puts it back on every run:
/// in callgrind, 237.4K instructions per paying request with it, 222.2K
/// without.)
struct Statements<'c> {
    begin: Statement<'c>,
    commit: Statement<'c>,
    rollback: Statement<'c>,
    hold: Statement<'c>,
    unhold: Statement<'c>,
    hold_insert: Statement<'c>,
    balance: Statement<'c>,
    moves: Statement<'c>,
    ledger: Statement<'c>,
    usage: Statement<'c>,
}

impl<'c> Statements<'c> {
    fn prepare(db: &'c Connection) -> rusqlite::Result<Self> {
        Ok(Self {
            begin: db.prepare(sql::BEGIN)?,
            commit: db.prepare(sql::COMMIT)?,
            rollback: db.prepare(sql::ROLLBACK)?,
            hold: db.prepare(sql::HOLD)?,
            unhold: db.prepare(sql::UNHOLD)?,
            hold_insert: db.prepare(sql::HOLD_INSERT)?,
            balance: db.prepare(sql::BALANCE)?,
            moves: db.prepare(sql::MOVE)?,
            ledger: db.prepare(sql::LEDGER)?,
            usage: db.prepare(sql::USAGE)?,
        })
    }

    fn get(&mut self, which: Sql) -> &mut Statement<'c> {
        match which {
            Sql::Begin => &mut self.begin,
            Sql::Commit => &mut self.commit,
            Sql::Rollback => &mut self.rollback,
            Sql::Hold => &mut self.hold,
            Sql::Unhold => &mut self.unhold,
            Sql::HoldInsert => &mut self.hold_insert,
            Sql::Balance => &mut self.balance,
            Sql::Move => &mut self.moves,
            Sql::Ledger => &mut self.ledger,
            Sql::Usage => &mut self.usage,
        }
    }
}

self_cell::self_cell!(
    /// The connection and the statements prepared on it.
    struct Prepared {
        owner: Connection,
        #[covariant]
        dependent: Statements,
    }
);

impl Conn {
    fn new(db: Connection) -> rusqlite::Result<Self> {
        Ok(Self {
            db: Prepared::try_new(db, |db| Statements::prepare(db))?,
            open: HashMap::new(),
        })
    }

    /// Runs one statement with its values: the number of rows changed.
    fn run(&mut self, which: Sql, params: impl Params) -> rusqlite::Result<usize> {
        self.db
            .with_dependent_mut(|_, s| s.get(which).execute(params))
    }

    /// `run`, with SQLite's error as the store's.
    fn exec(&mut self, which: Sql, params: impl Params) -> StoreResult<usize> {
        self.run(which, params).map_err(failed)
    }

    /// Runs one query for its first row, if any.
    fn row<T>(
        &mut self,
        which: Sql,
        params: impl Params,
        read: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> StoreResult<Option<T>> {
        self.db
            .with_dependent_mut(|_, s| s.get(which).query_row(params, read).optional())
            .map_err(failed)
    }
}

// SAFETY: `Prepared` is the connection and the statements prepared on
// it, which only ever move between threads together (it lives in a
// `Conn`, inside `Shared::conn`'s mutex), and are used by one thread at a
// time. rusqlite's `Statement` is `!Send` because it holds a raw
// `sqlite3_stmt` pointer and borrows a `Connection`, which is `!Sync`;
// `Prepared` stays `!Sync`, so neither can be reached from two threads at
// once. SQLite allows a connection and its statements to be used from one
// thread and later from another (rusqlite opens connections with
// SQLITE_OPEN_NO_MUTEX, multi-thread mode, which requires only that no
// two threads use them at once), and rusqlite moves cached statements
// between threads with their connection the same way (its
// `StatementCache` is `Send`).
unsafe impl Send for Prepared {}

impl std::ops::Deref for Conn {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.db.borrow_owner()
    }
}

/// The handle requests queue their operations on.
#[derive(Clone)]
pub(super) struct Batcher {
    shared: Arc<Shared>,
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

/// The queue's lock. A panic cannot leave the queue half-changed (its
/// critical sections only move whole jobs), so a poisoned lock still
/// guards consistent data. (The connection's lock is taken through
/// `Shared::conn_waiting` or `recovered`, which roll back.)
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `work` where it may block: on the runtime's blocking threads, or
/// right here when there is no runtime.
fn blocking(work: impl FnOnce() + Send + 'static) -> Option<tokio::task::JoinHandle<()>> {
    match Handle::try_current() {
        Ok(runtime) => Some(runtime.spawn_blocking(work)),
        Err(_) => {
            work();
            None
        }
    }
}

impl Batcher {
    /// Opens the batch connection to the database at `path` (already
    /// created and migrated).
    pub fn start(path: &Path, busy_timeout: Duration) -> StoreResult<Self> {
        // Its WAL writes gathered: two system calls per commit instead of
        // two per page (`sqlite_vfs`).
        let conn = match super::sqlite_vfs::registered() {
            Some(vfs) => Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs),
            None => Connection::open(path),
        }
        .map_err(failed)?;
        // No checkpoints here: copying the WAL into the database (and its
        // fsync) would stall every request whose hold waits behind it;
        // `SqliteStore` checkpoints in the background instead. No busy
        // wait either: a request's task must not sleep on a lock
        // (`commit` hands a batch that meets one to a blocking thread).
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
             PRAGMA wal_autocheckpoint = 0;",
        )
        .map_err(failed)?;
        conn.busy_timeout(Duration::ZERO).map_err(failed)?;
        let conn = Conn::new(conn).map_err(failed)?;
        Ok(Self {
            shared: Arc::new(Shared {
                pending: Mutex::default(),
                conn: Mutex::new(Some(conn)),
                busy_timeout,
            }),
        })
    }

    pub async fn submit(&self, op: Op) -> StoreResult<Done> {
        let (reply, done) = oneshot::channel();
        {
            let mut pending = lock(&self.shared.pending);
            if pending.closed {
                return Err(closed());
            }
            pending.jobs.push(Job {
                op,
                reply: Some(reply),
            });
            pending.urgent = true;
        }
        // Let this thread's other ready requests queue theirs first, so
        // that under load one commit takes them all; when idle, this
        // returns at once.
        tokio::task::yield_now().await;
        if lock(&self.shared.pending).urgent {
            self.shared.combine();
        }
        done.await.map_err(|_| closed())?
    }

    /// Queues an operation without waiting for it: whatever is queued
    /// later (operations, `flush`) comes after it. It is committed with
    /// the next operation somebody waits for, or after `SETTLE_DELAY`.
    /// False if the store is closed.
    pub fn submit_detached(&self, op: Op) -> bool {
        let set_timer = {
            let mut pending = lock(&self.shared.pending);
            if pending.closed {
                return false;
            }
            pending.jobs.push(Job::detached(op));
            !std::mem::replace(&mut pending.timer, true)
        };
        if set_timer {
            let shared = self.shared.clone();
            match Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        tokio::time::sleep(SETTLE_DELAY).await;
                        shared.due();
                    });
                }
                Err(_) => shared.due(),
            }
        }
        true
    }

    /// Waits until every operation queued before this call is committed,
    /// so that a read that follows sees them.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.shared.pending);
            if pending.closed {
                return;
            }
            pending.flushes.push(tx);
            pending.urgent = true;
        }
        self.shared.combine();
        let _ = rx.await;
    }

    /// Checkpoints the WAL from this connection, between two batches.
    ///
    /// SQLite starts the WAL over (writes from its beginning again) only
    /// when a write transaction begins with every frame already copied to
    /// the database. Under steady load a checkpoint from another
    /// connection never gets there, as this one commits while it runs,
    /// and the WAL file grows with every request. So the store's
    /// checkpointer does the copying and the syncs, then asks for this
    /// one, which finds little left to copy: the WAL stays the size of
    /// what is written between two checkpoints. It may still sync a file,
    /// so it runs on a blocking thread.
    pub fn checkpoint(&self) {
        let shared = self.shared.clone();
        blocking(move || {
            if let Some(conn) = shared.conn_waiting().as_ref() {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "could not checkpoint the SQLite WAL");
                }
            }
            // Whatever was queued meanwhile found the connection taken.
            shared.combine();
        });
    }

    /// Commits what is queued, closes the connection; later operations
    /// fail as unavailable.
    pub async fn close(&self) {
        let shared = self.shared.clone();
        let closing = blocking(move || {
            let mut conn = shared.conn_waiting();
            let (jobs, flushes) = {
                let mut pending = lock(&shared.pending);
                pending.closed = true;
                pending.urgent = false;
                (take(&mut pending.jobs), take(&mut pending.flushes))
            };
            if let Some(c) = conn.as_mut() {
                commit_all(c, jobs, shared.busy_timeout);
            }
            *conn = None;
            for done in flushes {
                let _ = done.send(());
            }
        });
        if let Some(closing) = closing {
            let _ = closing.await;
        }
    }
}

/// The most times one caller empties the queue for others before it
/// hands the rest to a task of its own and goes on with its request.
const MAX_ROUNDS: usize = 4;

impl Shared {
    /// Commits what is queued, here, unless another caller holds the
    /// connection: that one looks at the queue again before it lets go,
    /// so whatever was queued before this call is never left behind.
    ///
    /// Why here: a hand-off to a thread of the store's own costs two
    /// thread wake-ups per request, while the work itself is a few page
    /// writes into the OS's cache (no sync: `synchronous = NORMAL`).
    fn combine(self: &Arc<Self>) {
        for _ in 0..MAX_ROUNDS {
            let mut conn = match self.conn.try_lock() {
                Ok(conn) => conn,
                Err(TryLockError::Poisoned(p)) => self.recovered(p.into_inner()),
                Err(TryLockError::WouldBlock) => return,
            };
            if self.commit_next(&mut conn, commit).is_err() {
                // Another connection holds the write lock: wait for it on
                // a blocking thread, the batch back in front of the queue.
                drop(conn);
                let shared = self.clone();
                blocking(move || shared.combine_waiting());
                return;
            }
            drop(conn);
            if !lock(&self.pending).urgent {
                return;
            }
        }
        // Still more: a task of its own takes it from here.
        let shared = self.clone();
        match Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { shared.combine() });
            }
            Err(_) => shared.combine(),
        }
    }

    /// `combine` where it may block: waits for the connection, and for
    /// another connection's write lock up to the busy timeout.
    fn combine_waiting(self: &Arc<Self>) {
        {
            let mut conn = self.conn_waiting();
            let busy_timeout = self.busy_timeout;
            let _ = self.commit_next(&mut conn, |c, jobs| {
                Ok(commit_waiting(c, jobs, busy_timeout))
            });
        }
        self.combine();
    }

    /// Takes the next batch from the queue and commits it on `conn` with
    /// `run`, then answers the flushes that were waiting for it. `Err`:
    /// `run` gave the batch back, and it is in front of the queue again.
    fn commit_next(
        &self,
        conn: &mut Option<Conn>,
        run: impl FnOnce(&mut Conn, Vec<Job>) -> Result<Vec<Op>, Vec<Job>>,
    ) -> Result<(), ()> {
        let (jobs, flushes) = lock(&self.pending).next_batch();
        match conn.as_mut() {
            Some(c) => match run(c, jobs) {
                Ok(releases) if !releases.is_empty() => {
                    let mut pending = lock(&self.pending);
                    pending.jobs.extend(releases.into_iter().map(Job::detached));
                    pending.urgent = true;
                }
                Ok(_) => {}
                Err(jobs) => {
                    self.requeue(jobs, flushes);
                    return Err(());
                }
            },
            None => {
                for job in jobs {
                    job.answer(Err(closed()));
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
        Ok(())
    }

    /// The connection, waiting for it if another caller holds it.
    fn conn_waiting(&self) -> MutexGuard<'_, Option<Conn>> {
        match self.conn.lock() {
            Ok(conn) => conn,
            Err(p) => self.recovered(p.into_inner()),
        }
    }

    /// The connection after a panic while it was held: whatever
    /// transaction it was in is rolled back, so the next batch can begin.
    fn recovered<'a>(
        &self,
        mut conn: MutexGuard<'a, Option<Conn>>,
    ) -> MutexGuard<'a, Option<Conn>> {
        if let Some(c) = conn.as_mut() {
            rollback(c);
        }
        self.conn.clear_poison();
        conn
    }

    /// Puts jobs taken from the queue back in front of it.
    fn requeue(&self, mut jobs: Vec<Job>, mut flushes: Vec<oneshot::Sender<()>>) {
        let mut pending = lock(&self.pending);
        jobs.append(&mut pending.jobs);
        pending.jobs = jobs;
        flushes.append(&mut pending.flushes);
        pending.flushes = flushes;
    }

    /// The settlements held back are due.
    fn due(self: &Arc<Self>) {
        {
            let mut pending = lock(&self.pending);
            pending.timer = false;
            pending.urgent = true;
        }
        self.combine();
    }
}

impl Drop for Shared {
    /// The last handle is gone: commit what was held back.
    fn drop(&mut self) {
        let jobs = take(&mut lock(&self.pending).jobs);
        if let Some(conn) = self.conn_waiting().as_mut() {
            commit_all(conn, jobs, self.busy_timeout);
        }
    }
}

/// `commit`, waiting up to `busy_timeout` for another connection's write
/// lock (on a thread that may block). Returns the operations to queue
/// again: the releases of orphaned holds, and, if the lock stayed taken,
/// the settlements and releases nobody waits for.
fn commit_waiting(conn: &mut Conn, jobs: Vec<Job>, busy_timeout: Duration) -> Vec<Op> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let _ = conn.busy_timeout(busy_timeout);
    let again = commit(conn, jobs).unwrap_or_else(|jobs| {
        let busy = StoreError::Unavailable("the database stayed locked by another writer".into());
        let mut again = Vec::new();
        for job in jobs {
            // A settlement or release only gives credit back, and applying
            // it again is safe (a hold settled is gone): tried again once
            // the lock is free, rather than left to the sweeper, which
            // would charge its hold in full. A hold is answered: its
            // request waits, and fails as unavailable.
            if job.reply.is_none() && !matches!(job.op, Op::Hold(_)) {
                again.push(job.op);
            } else {
                let _ = job.answer(Err(busy.clone()));
            }
        }
        again
    });
    let _ = conn.busy_timeout(Duration::ZERO);
    again
}

/// `commit_waiting`, and then what it gives back (when nothing will come
/// after: the store is closing).
fn commit_all(conn: &mut Conn, jobs: Vec<Job>, busy_timeout: Duration) {
    let again = commit_waiting(conn, jobs, busy_timeout);
    let lost = commit_waiting(
        conn,
        again.into_iter().map(Job::detached).collect(),
        busy_timeout,
    );
    if !lost.is_empty() {
        tracing::error!(
            operations = lost.len(),
            "the database stayed locked while the store closed; the holds of these credit operations are left to the sweeper"
        );
    }
}

/// Commits `jobs` as one transaction and answers them; if that fails,
/// each alone. `Ok`: the releases of the holds placed for requests that
/// are gone (`Job::answer`). `Err`: another connection holds the write
/// lock (and the busy timeout, if any, ran out); the jobs not yet
/// applied come back in order, untouched.
fn commit(conn: &mut Conn, jobs: Vec<Job>) -> Result<Vec<Op>, Vec<Job>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    if let Err(e) = begin(conn) {
        if is_busy(&e) {
            return Err(jobs);
        }
        let e = failed(e);
        for job in jobs {
            let _ = job.answer(Err(e.clone()));
        }
        return Ok(Vec::new());
    }
    let ops: Vec<&Op> = jobs.iter().map(|j| &j.op).collect();
    let e = match apply(conn, &ops) {
        Ok(done) => {
            return Ok(jobs
                .into_iter()
                .zip(done)
                .filter_map(|(job, done)| job.answer(Ok(done)))
                .collect());
        }
        Err(e) => e,
    };
    rollback(conn);
    if jobs.len() == 1 {
        for job in jobs {
            let _ = job.answer(Err(e.clone()));
        }
        return Ok(Vec::new());
    }
    tracing::warn!(error = %e, operations = jobs.len(), "a credit batch failed; applying its operations one by one");
    let mut releases = Vec::new();
    let mut rest = jobs.into_iter();
    while let Some(job) = rest.next() {
        if let Err(e) = begin(conn) {
            if is_busy(&e) {
                // The releases of what was committed still count: queued
                // ahead of the jobs that come back.
                let mut back: Vec<Job> = releases.into_iter().map(Job::detached).collect();
                back.push(job);
                back.extend(rest);
                return Err(back);
            }
            let _ = job.answer(Err(failed(e)));
            continue;
        }
        let result = apply(conn, &[&job.op]);
        if result.is_err() {
            rollback(conn);
        }
        releases.extend(job.answer(result.map(|d| d[0])));
    }
    Ok(releases)
}

fn begin(conn: &mut Conn) -> rusqlite::Result<()> {
    conn.run(Sql::Begin, []).map(drop)
}

fn is_busy(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
}

fn rollback(conn: &mut Conn) {
    // Fails harmlessly if the transaction never began or already ended.
    let _ = conn.run(Sql::Rollback, []);
}

/// Applies `ops` in the transaction `commit` began, and commits it.
fn apply(conn: &mut Conn, ops: &[&Op]) -> StoreResult<Vec<Done>> {
    let mut moves = Moves::default();
    // The holds this batch writes, remembered once it commits.
    let mut written = Vec::new();
    // Settlements first, in queue order. A hold settled twice in one batch
    // moves money once.
    let mut settling = HashSet::new();
    for op in ops {
        if let Op::Settle(u) = op {
            if settling.insert(u.hold_id.as_str()) {
                settle_hold(
                    conn,
                    &mut moves,
                    &u.hold_id,
                    u.cost,
                    &u.request_id,
                    u.created_at,
                )?;
            }
            record_usage(conn, u)?;
        }
    }
    // Then the holds, in queue order, each against its key's balance as
    // read plus the batch's changes so far (refunds above, holds before it).
    let mut read: HashMap<&str, Option<Option<NanoUsd>>> = HashMap::new();
    let mut done = Vec::with_capacity(ops.len());
    for op in ops {
        let Op::Hold(h) = op else {
            done.push(Done::Settled);
            continue;
        };
        let stored = match read.get(h.key_id.as_str()) {
            Some(b) => *b,
            None => {
                let b: Option<Option<NanoUsd>> =
                    conn.row(Sql::Balance, [&h.key_id], |r| r.get(0))?;
                read.insert(h.key_id.as_str(), b);
                b
            }
        };
        let changed = moves.of(&h.key_id);
        let balance = stored.map(|b| b.map(|b| b.saturating_add(changed)));
        let result = decide(h, balance);
        if result == HoldResult::Held {
            moves.add(&h.key_id, -h.amount);
            conn.exec(
                Sql::HoldInsert,
                rusqlite::params![
                    h.hold_id,
                    h.request_id,
                    h.key_id,
                    h.amount,
                    i64::from(h.sent),
                    h.now,
                    h.expires_at
                ],
            )?;
            conn.exec(
                Sql::Ledger,
                rusqlite::params![h.key_id, "hold", -h.amount, 0, h.request_id, h.now],
            )?;
            written.push(h);
        }
        done.push(Done::Hold(result));
    }
    // Releases last: a release is queued behind the hold it gives back
    // (whose request stopped waiting for it), and may share its batch.
    for op in ops {
        if let Op::Release {
            hold_id,
            request_id,
            at,
        } = op
        {
            if settling.insert(hold_id.as_str()) {
                settle_hold(conn, &mut moves, hold_id, 0, request_id, *at)?;
            }
        }
    }
    moves.write(conn)?;
    conn.exec(Sql::Commit, [])?;
    if conn.open.len() + written.len() > MAX_REMEMBERED {
        conn.open.clear();
    }
    // (A hold released in its own batch is gone already.)
    for h in written
        .into_iter()
        .filter(|h| !settling.contains(h.hold_id.as_str()))
    {
        conn.open
            .insert(h.hold_id.clone(), (h.key_id.clone(), h.amount));
    }
    Ok(done)
}

/// The balance changes of one batch, summed per key and written once per
/// key at its end: a batch of N requests of one key updates its row once,
/// not once per hold and once per refund.
#[derive(Default)]
struct Moves(Vec<(String, NanoUsd)>);

impl Moves {
    fn add(&mut self, key_id: &str, amount: NanoUsd) {
        match self.0.iter_mut().find(|(k, _)| k == key_id) {
            Some((_, sum)) => *sum = sum.saturating_add(amount),
            None => self.0.push((key_id.to_owned(), amount)),
        }
    }

    /// The change not written yet to `key_id`'s balance.
    fn of(&self, key_id: &str) -> NanoUsd {
        self.0
            .iter()
            .find(|(k, _)| k == key_id)
            .map_or(0, |(_, sum)| *sum)
    }

    fn write(self, conn: &mut Conn) -> StoreResult<()> {
        for (key_id, change) in self.0 {
            if change != 0 {
                conn.exec(Sql::Move, rusqlite::params![key_id, change])?;
            }
        }
        Ok(())
    }
}

/// Resolves the hold `hold_id` if it is still open: charges `cost` (never
/// more than the hold), gives the rest back (in `moves`), writes the
/// ledger row.
fn settle_hold(
    conn: &mut Conn,
    moves: &mut Moves,
    hold_id: &str,
    cost: NanoUsd,
    request_id: &str,
    at: i64,
) -> StoreResult<()> {
    let open = match conn.open.remove(hold_id) {
        // Still open unless the sweeper got there first.
        Some(known) => (conn.exec(Sql::Unhold, [hold_id])? == 1).then_some(known),
        None => {
            let row = conn.row(Sql::Hold, [hold_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            if row.is_some() {
                conn.exec(Sql::Unhold, [hold_id])?;
            }
            row
        }
    };
    let Some((key_id, amount)) = open else {
        return Ok(());
    };
    let charged = cost.max(0).min(amount);
    let refund = amount - charged;
    moves.add(&key_id, refund);
    let kind = if charged == 0 { "release" } else { "settle" };
    conn.exec(
        Sql::Ledger,
        rusqlite::params![key_id, kind, refund, charged, request_id, at],
    )?;
    Ok(())
}

fn record_usage(conn: &mut Conn, u: &UsageRecord) -> StoreResult<()> {
    conn.exec(
        Sql::Usage,
        rusqlite::params![
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
        ],
    )?;
    Ok(())
}

/// Whether the hold fits the key's balance (`None`: no such key;
/// `Some(None)`: unlimited).
fn decide(h: &HoldRequest, balance: Option<Option<NanoUsd>>) -> HoldResult {
    match balance {
        None => HoldResult::NoKey,
        Some(None) => HoldResult::Unlimited,
        Some(Some(balance)) if balance < h.amount => HoldResult::Insufficient { balance },
        Some(Some(_)) => HoldResult::Held,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::{
        CreditStore, KeyLimits, KeyRecord, KeyStore, NewKey, SqliteStore, UsageStore,
    };
    use super::*;
    use crate::accounts::keys::PlainKey;
    use serde_json::json;

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

    /// The usage record of the request `req-{hold_id}`, charged `cost`.
    pub(in crate::store) fn settled(key_id: &str, hold_id: &str, cost: NanoUsd) -> UsageRecord {
        UsageRecord {
            hold_id: hold_id.into(),
            request_id: format!("req-{hold_id}"),
            key_id: key_id.into(),
            model: "up/m".into(),
            provider: "up".into(),
            prompt_tokens: 1,
            completion_tokens: 1,
            cached_tokens: 0,
            cost,
            status: 200,
            outcome: "ok".into(),
            latency_ms: 1,
            streamed: false,
            cancelled: false,
            created_at: 2,
            searches: 0,
            mcp_calls: 0,
        }
    }

    /// A key's balance as a read sees it (`None`: unlimited).
    pub(in crate::store) async fn balance_of(store: &SqliteStore, key: &str) -> Option<NanoUsd> {
        store.key_by_id(key).await.unwrap().unwrap().balance
    }

    /// A key's ledger: (kind, amount, cost) of each row, oldest first.
    async fn ledger_of(store: &SqliteStore, key: &str) -> Vec<(String, i64, i64)> {
        let rows = store.ledger(key).await.unwrap();
        rows.into_iter()
            .map(|r| (r.kind, r.amount, r.cost))
            .collect()
    }

    /// Runs `ops` as ONE batch, in order: queued together, then committed
    /// by one caller (as when they arrive while another batch commits).
    async fn in_one_batch(batch: &Batcher, ops: Vec<Op>) -> Vec<StoreResult<Done>> {
        let mut answers = Vec::new();
        {
            let mut pending = lock(&batch.shared.pending);
            for op in ops {
                let (reply, answer) = oneshot::channel();
                pending.jobs.push(Job {
                    op,
                    reply: Some(reply),
                });
                answers.push(answer);
            }
            pending.urgent = true;
        }
        batch.shared.combine();
        let mut results = Vec::new();
        for answer in answers {
            results.push(answer.await.unwrap());
        }
        results
    }

    /// A settlement queued without waiting is held back, yet every read
    /// and hold that comes after it sees it.
    #[tokio::test]
    async fn a_queued_settlement_is_seen_by_what_comes_after_it() {
        let (_dir, store, key) = store_with_key(100).await;
        store.batch.submit(hold(&key, "h1", 100)).await.unwrap();
        assert!(store.settle_queued(&settled(&key, "h1", 30)));
        assert_eq!(balance_of(&store, &key).await, Some(70));
        let record = store.generation(&key, "req-h1").await.unwrap().unwrap();
        assert_eq!(record.cost, 30);
        assert!(store.settle_queued(&settled(&key, "h1", 0)), "a repeat");
        assert_eq!(
            store.batch.submit(hold(&key, "h2", 70)).await.unwrap(),
            Done::Hold(HoldResult::Held)
        );
        assert_eq!(
            ledger_of(&store, &key).await,
            [
                ("topup".into(), 100, 0),
                ("hold".into(), -100, 0),
                ("settle".into(), 70, 30),
                ("hold".into(), -70, 0)
            ]
        );
    }

    /// With nothing else coming, a queued settlement is committed on its
    /// own within moments.
    #[tokio::test]
    async fn a_queued_settlement_alone_is_committed_soon() {
        let (dir, store, key) = store_with_key(100).await;
        store.batch.submit(hold(&key, "h1", 100)).await.unwrap();
        assert!(store.settle_queued(&settled(&key, "h1", 30)));
        tokio::time::sleep(SETTLE_DELAY * 20).await;
        // Another connection, so that nothing flushes the queue.
        let other = Connection::open(dir.path().join("batch.db")).unwrap();
        let balance: i64 = other.query_row(sql::BALANCE, [&key], |r| r.get(0)).unwrap();
        assert_eq!(balance, 70);
    }

    /// Under steady load the WAL starts over after each checkpoint, rather
    /// than growing with every request until the load stops.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_bounded_under_steady_load() {
        use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
        use std::sync::Arc;
        let (dir, store, key) = store_with_key(i64::MAX / 2).await;
        let store = Arc::new(store);
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn({
            let (store, stop) = (store.clone(), stop.clone());
            async move {
                let mut n = 0u64;
                while !stop.load(Relaxed) {
                    n += 1;
                    let id = format!("h{n}");
                    store.batch.submit(hold(&key, &id, 1)).await.unwrap();
                    let settle = Op::Settle(settled(&key, &id, 1));
                    store.batch.submit(settle).await.unwrap();
                }
                n
            }
        });
        let wal = dir.path().join("batch.db-wal");
        let size = || std::fs::metadata(&wal).map_or(0, |m| m.len());
        // A WAL that never starts over grows with the time under load (4x
        // from the first sample to the second); one that does stays at what
        // one checkpoint interval writes, whatever the time. The margin
        // allows for an interval stretched by a busy machine.
        tokio::time::sleep(Duration::from_millis(750)).await;
        let early = size();
        tokio::time::sleep(Duration::from_millis(2250)).await;
        let late = size();
        stop.store(true, Relaxed);
        let requests = load.await.unwrap();
        assert!(
            early > 0 && requests > 100,
            "{early} bytes, {requests} requests"
        );
        assert!(
            late < 3 * early,
            "the WAL grew from {early} to {late} bytes under steady load ({requests} requests)"
        );
    }

    /// Operations queued together land in one batch and are decided in
    /// order; one that breaks a rule fails alone.
    #[tokio::test]
    async fn a_batch_decides_in_order_and_one_bad_operation_fails_alone() {
        let (_dir, store, key) = store_with_key(100).await;
        let ops = vec![
            hold(&key, "h1", 60),
            hold(&key, "h2", 60),
            hold(&key, "h1", 10),
        ];
        let [a, b, dup] = <[_; 3]>::try_from(in_one_batch(&store.batch, ops).await).unwrap();
        assert_eq!(a.unwrap(), Done::Hold(HoldResult::Held));
        assert_eq!(
            b.unwrap(),
            Done::Hold(HoldResult::Insufficient { balance: 40 })
        );
        assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
        assert_eq!(balance_of(&store, &key).await, Some(40));
        let kinds: Vec<(String, i64)> = store
            .ledger(&key)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.kind, r.amount))
            .collect();
        assert_eq!(kinds, [("topup".into(), 100), ("hold".into(), -60)]);
    }

    /// A hold the batch connection remembers is settled from memory, once;
    /// if the sweeper resolved it first, the late settlement moves no
    /// money. A hold it does not remember is read from its row.
    #[tokio::test]
    async fn remembered_and_forgotten_holds_settle_once() {
        let (_dir, store, key) = store_with_key(100).await;
        let expiring = |hold_id: &str| {
            let Op::Hold(mut h) = hold(&key, hold_id, 40) else {
                unreachable!()
            };
            h.expires_at = 5;
            Op::Hold(h)
        };
        store.batch.submit(expiring("h1")).await.unwrap();
        store.batch.submit(expiring("h2")).await.unwrap();
        store.batch.submit(hold(&key, "h3", 10)).await.unwrap();
        // The sweeper charges h1 in full; the batch still remembers it.
        store.sweep_expired(6).await.unwrap();
        store.settle(&settled(&key, "h1", 1)).await.unwrap();
        // h3 forgotten (as after a restart): settled from its row.
        lock(&store.batch.shared.conn)
            .as_mut()
            .unwrap()
            .open
            .clear();
        store.settle(&settled(&key, "h3", 4)).await.unwrap();
        store.settle(&settled(&key, "h3", 4)).await.unwrap();
        assert_eq!(
            ledger_of(&store, &key).await,
            [
                ("topup".into(), 100, 0),
                ("hold".into(), -40, 0),
                ("hold".into(), -40, 0),
                ("hold".into(), -10, 0),
                ("settle".into(), 0, 40),
                ("settle".into(), 0, 40),
                ("settle".into(), 6, 4),
            ]
        );
        assert_eq!(balance_of(&store, &key).await, Some(16));
        assert_eq!(store.totals().await.unwrap().active_holds, 0);
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
        assert_eq!(balance_of(&store, &key).await, Some(100));
        let last = store.ledger(&key).await.unwrap().pop().unwrap();
        assert_eq!(
            (last.kind.as_str(), last.amount, last.cost),
            ("release", 70, 0)
        );
        assert_eq!(store.generation(&key, "req-h1").await.unwrap(), None);
        assert_eq!(store.totals().await.unwrap().active_holds, 0);
    }

    /// A release queued right behind its hold (the request stopped waiting
    /// for it) gives it back even when both land in one batch.
    #[tokio::test]
    async fn a_release_in_the_same_batch_as_its_hold_gives_it_back() {
        let (_dir, store, key) = store_with_key(100).await;
        let release = Op::Release {
            hold_id: "h1".into(),
            request_id: "req-h1".into(),
            at: 2,
        };
        let ops = vec![hold(&key, "h1", 70), release];
        let [held, released] = <[_; 2]>::try_from(in_one_batch(&store.batch, ops).await).unwrap();
        assert_eq!(held.unwrap(), Done::Hold(HoldResult::Held));
        assert_eq!(released.unwrap(), Done::Settled);
        assert_eq!(balance_of(&store, &key).await, Some(100));
        assert_eq!(
            ledger_of(&store, &key).await,
            [
                ("topup".into(), 100, 0),
                ("hold".into(), -70, 0),
                ("release".into(), 70, 0)
            ]
        );
        assert_eq!(store.totals().await.unwrap().active_holds, 0);
        let remembered = lock(&store.batch.shared.conn).as_ref().unwrap().open.len();
        assert_eq!(
            remembered, 0,
            "a hold gone in its own batch is not remembered"
        );
    }

    /// A batch writes a key's balance once, however many of its holds and
    /// refunds it carries, and decides a hold against the refunds before it.
    #[tokio::test]
    async fn a_batch_writes_a_keys_balance_once_with_its_refunds_counted_first() {
        let (dir, store, key) = store_with_key(1000).await;
        let results = in_one_batch(
            &store.batch,
            vec![hold(&key, "h1", 100), hold(&key, "h2", 200)],
        )
        .await;
        assert!(results
            .iter()
            .all(|r| *r.as_ref().unwrap() == Done::Hold(HoldResult::Held)));
        // Every write of a balance from here on leaves a row.
        rusqlite::Connection::open(dir.path().join("batch.db"))
            .unwrap()
            .execute_batch(
                "CREATE TABLE balance_writes (key_id TEXT NOT NULL);
                 CREATE TRIGGER count_balance_writes AFTER UPDATE OF balance ON api_keys
                 BEGIN INSERT INTO balance_writes VALUES (NEW.id); END;",
            )
            .unwrap();
        // 700 left; the refunds (70 + 150) fund h3, and h4 finds 20.
        let ops = vec![
            Op::Settle(settled(&key, "h1", 30)),
            Op::Settle(settled(&key, "h2", 50)),
            hold(&key, "h3", 900),
            hold(&key, "h4", 100),
        ];
        let [s1, s2, h3, h4] = <[_; 4]>::try_from(in_one_batch(&store.batch, ops).await).unwrap();
        assert_eq!((s1.unwrap(), s2.unwrap()), (Done::Settled, Done::Settled));
        assert_eq!(h3.unwrap(), Done::Hold(HoldResult::Held));
        assert_eq!(
            h4.unwrap(),
            Done::Hold(HoldResult::Insufficient { balance: 20 })
        );
        assert_eq!(balance_of(&store, &key).await, Some(20));
        let writes: i64 = rusqlite::Connection::open(dir.path().join("batch.db"))
            .unwrap()
            .query_row("SELECT count(*) FROM balance_writes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(writes, 1);
        assert_eq!(
            ledger_of(&store, &key).await[3..],
            [
                ("settle".into(), 70, 30),
                ("settle".into(), 150, 50),
                ("hold".into(), -900, 0),
            ]
        );
    }

    /// A settlement's refund is visible to a hold later in the same batch,
    /// and settling the same hold twice moves money once.
    #[tokio::test]
    async fn a_refund_funds_a_later_hold_in_the_same_batch() {
        let (_dir, store, key) = store_with_key(100).await;
        store.batch.submit(hold(&key, "h1", 100)).await.unwrap();
        let usage = settled(&key, "h1", 30);
        let ops = vec![
            Op::Settle(usage.clone()),
            Op::Settle(usage),
            hold(&key, "h2", 70),
        ];
        let [s1, s2, h2] = <[_; 3]>::try_from(in_one_batch(&store.batch, ops).await).unwrap();
        assert_eq!(s1.unwrap(), Done::Settled);
        assert_eq!(s2.unwrap(), Done::Settled);
        assert_eq!(h2.unwrap(), Done::Hold(HoldResult::Held));
        assert_eq!(balance_of(&store, &key).await, Some(0));
        assert_eq!(
            ledger_of(&store, &key).await,
            [
                ("topup".into(), 100, 0),
                ("hold".into(), -100, 0),
                ("settle".into(), 70, 30),
                ("hold".into(), -70, 0),
            ]
        );
    }

    /// While another connection holds SQLite's write lock, a hold waits for
    /// it on a blocking thread: the request's thread goes on (here, the
    /// runtime's only thread commits the other transaction), and the hold
    /// is placed once the lock is free.
    #[tokio::test]
    async fn a_hold_waits_for_another_writer_off_the_request_thread() {
        let (dir, store, key) = store_with_key(100).await;
        let other = Connection::open(dir.path().join("batch.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let placing = tokio::spawn({
            let batch = store.batch.clone();
            let op = hold(&key, "h1", 60);
            async move { batch.submit(op).await }
        });
        // The store's busy timeout is 1 s: a thread that slept on the lock
        // would stall this runtime's only thread that long.
        let slept = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            slept.elapsed() < Duration::from_millis(900),
            "the runtime's thread slept on the lock"
        );
        assert!(!placing.is_finished(), "the hold did not wait for the lock");
        other.execute_batch("COMMIT").unwrap();
        assert_eq!(
            placing.await.unwrap().unwrap(),
            Done::Hold(HoldResult::Held)
        );
        assert_eq!(balance_of(&store, &key).await, Some(40));
    }

    /// A settlement nobody waits for that meets another writer's lock for
    /// longer than the busy timeout is tried again once the lock is free,
    /// not left to the sweeper (which would charge the hold in full).
    #[tokio::test]
    async fn a_settlement_kept_out_by_another_writer_is_tried_again() {
        let (dir, store, key) = store_with_key(100).await;
        store.batch.submit(hold(&key, "h1", 60)).await.unwrap();
        let other = Connection::open(dir.path().join("batch.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert!(store
            .batch
            .submit_detached(Op::Settle(settled(&key, "h1", 30))));
        // Longer than the store's busy timeout (1 s): the first wait for
        // the lock runs out while it is taken.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        other.execute_batch("COMMIT").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.totals().await.unwrap().active_holds > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the settlement was not tried again"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(balance_of(&store, &key).await, Some(70));
    }

    /// A panic while the connection was held (a bug mid-batch) leaves it
    /// inside a transaction: the next caller rolls that back and goes on.
    #[tokio::test]
    async fn a_panic_mid_batch_leaves_the_connection_usable() {
        let (_dir, store, key) = store_with_key(100).await;
        let shared = store.batch.shared.clone();
        let crashed = std::thread::spawn(move || {
            let mut conn = shared.conn.lock().unwrap();
            begin(conn.as_mut().unwrap()).unwrap();
            panic!("a bug mid-batch");
        })
        .join();
        assert!(crashed.is_err() && store.batch.shared.conn.is_poisoned());
        assert_eq!(
            store.batch.submit(hold(&key, "h1", 60)).await.unwrap(),
            Done::Hold(HoldResult::Held)
        );
        assert_eq!(balance_of(&store, &key).await, Some(40));
    }

    /// A hold whose request went away while the hold was queued (its
    /// client left) is given back once it is placed, not left open for
    /// the sweeper to charge in full.
    #[tokio::test]
    async fn a_hold_nobody_waits_for_any_more_is_given_back() {
        let (_dir, store, key) = store_with_key(100).await;
        // Polled once (queued, then yielding), then dropped.
        let gone = futures::FutureExt::now_or_never(store.batch.submit(hold(&key, "h1", 60)));
        assert!(gone.is_none(), "the request went away with its hold queued");
        assert_eq!(
            store.batch.submit(hold(&key, "h2", 10)).await.unwrap(),
            Done::Hold(HoldResult::Held)
        );
        assert_eq!(balance_of(&store, &key).await, Some(90));
        assert_eq!(
            ledger_of(&store, &key).await,
            [
                ("topup".into(), 100, 0),
                ("hold".into(), -60, 0),
                ("hold".into(), -10, 0),
                ("release".into(), 60, 0)
            ]
        );
        assert_eq!(store.totals().await.unwrap().active_holds, 1);
    }
}
