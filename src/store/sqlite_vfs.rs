//! A SQLite VFS that gathers a transaction's WAL writes into two system
//! calls, for the batch connection (`sqlite_batch`).
//!
//! SQLite writes each WAL frame as two `pwrite` calls, its 24-byte header
//! and then its page: a paying request's transaction (about seven pages)
//! made fourteen. This VFS wraps the unix one and changes only how
//! bytes reach the WAL file: the frames of a transaction are kept in
//! memory and written in one call when the commit frame's header comes,
//! and the commit frame's page follows in a second. The bytes, their
//! offsets and their order are SQLite's own.
//!
//! Why it is safe:
//! - other connections read only frames that a commit has published in
//!   the WAL index, and SQLite publishes a commit after the commit frame's
//!   writes return, by which time everything before it is in the file;
//! - a commit frame's header is never kept: it and everything gathered
//!   before it are written before its `xWrite` returns, and so is its page
//!   (which also covers SQLite rewriting the headers of a transaction that
//!   overwrote its own frames, where the last write is the commit header);
//! - every other use of the file (read, size, truncate, sync, lock, file
//!   control) first writes out what is gathered, and so does a write that
//!   does not continue it, so the file always ends up with the bytes SQLite
//!   wrote, in the order it wrote them;
//! - nothing gathered outlives the WAL write lock: releasing it (on the
//!   database file's shared memory) first writes out what the WAL file
//!   holds. That covers a transaction rolled back after its page cache
//!   spilled frames into the WAL: its frames are past the last commit,
//!   where the next writer, maybe another connection, writes its own, so
//!   they must be in the file before that writer can start;
//! - a process killed with frames still gathered loses only frames of a
//!   transaction that had not committed, which SQLite would ignore anyway.
//!
//! Files other than WAL files (the database, its shared memory) go straight
//! to the wrapped VFS, so locking and the WAL index are untouched. A WAL
//! file gathers only when its database file is one of this VFS's and
//! overwrites are power-safe (SQLite's default on unix): otherwise SQLite
//! may pad a commit to a sector boundary and split frames, and the file is
//! written straight through.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name to open a connection with.
pub const NAME: &str = "mume-gather";
const NAME_C: &CStr = c"mume-gather";

const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;
/// The most bytes given to the wrapped VFS in one write: the unix VFS
/// takes a length below 128 KiB only (it keeps its low 17 bits).
const MAX_WRITE: usize = 64 << 10;
/// Gathered bytes are written out once there are this many.
const MAX_GATHERED: usize = MAX_WRITE;

/// The VFS this one wraps (SQLite's unix VFS).
static WRAPPED: AtomicPtr<ffi::sqlite3_vfs> = AtomicPtr::new(ptr::null_mut());

/// Registers the VFS once per process. `None` if it could not be (no unix
/// VFS to wrap); connections then use the default one.
pub fn registered() -> Option<&'static str> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    // SAFETY: called once; SQLite copies nothing and keeps the pointer,
    // which is leaked, so it lives as long as the process.
    REGISTERED
        .get_or_init(|| unsafe { register() })
        .then_some(NAME)
}

unsafe fn register() -> bool {
    let wrapped = ffi::sqlite3_vfs_find(c"unix".as_ptr());
    if wrapped.is_null() {
        return false;
    }
    WRAPPED.store(wrapped, Ordering::Release);
    // Every function but xOpen is the unix VFS's own, which ignore the VFS
    // they are given.
    let mut vfs = ptr::read(wrapped);
    vfs.pNext = ptr::null_mut();
    vfs.zName = NAME_C.as_ptr();
    vfs.szOsFile = (OUR_PART as c_int).saturating_add((*wrapped).szOsFile);
    vfs.xOpen = Some(open);
    ffi::sqlite3_vfs_register(Box::into_raw(Box::new(vfs)), 0) == ffi::SQLITE_OK
}

/// What SQLite allocates for a file of this VFS: this, then the wrapped
/// VFS's file.
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    wrapped: *mut ffi::sqlite3_file,
    /// Null unless this is a WAL file that gathers.
    gather: *mut Gather,
    /// A gathering WAL file's database file, and that database file's WAL
    /// file while it is open; null otherwise.
    partner: *mut File,
}

const OUR_PART: usize = std::mem::size_of::<File>().next_multiple_of(16);

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let wrapped_vfs = WRAPPED.load(Ordering::Acquire);
    let ours = file.cast::<File>();
    let wrapped = file.cast::<u8>().add(OUR_PART).cast::<ffi::sqlite3_file>();
    (*ours).base.pMethods = ptr::null();
    (*ours).wrapped = wrapped;
    (*ours).gather = ptr::null_mut();
    (*ours).partner = ptr::null_mut();
    (*wrapped).pMethods = ptr::null();
    let Some(open_wrapped) = (*wrapped_vfs).xOpen else {
        return ffi::SQLITE_CANTOPEN;
    };
    let rc = open_wrapped(wrapped_vfs, name, wrapped, flags, out_flags);
    // SQLite calls xClose exactly when pMethods is set, even after a
    // failed open: mirror the wrapped file.
    if !(*wrapped).pMethods.is_null() {
        (*ours).base.pMethods = &METHODS;
        if rc == ffi::SQLITE_OK && flags & ffi::SQLITE_OPEN_WAL != 0 && !name.is_null() {
            let database = ffi::sqlite3_database_file_object(name);
            if ours_and_powersafe(database) {
                let database = database.cast::<File>();
                (*database).partner = ours;
                (*ours).partner = database;
                (*ours).gather = Box::into_raw(Box::default());
            }
        }
    }
    rc
}

/// Whether `file` was opened by this VFS and overwrites on it are
/// power-safe (so SQLite writes a commit with no padding).
unsafe fn ours_and_powersafe(file: *mut ffi::sqlite3_file) -> bool {
    !file.is_null()
        && ptr::eq((*file).pMethods, &METHODS)
        && device_characteristics(file) & ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE != 0
}

/// A WAL file's writes not yet made.
#[derive(Default)]
struct Gather {
    bytes: Vec<u8>,
    /// The file offset of `bytes[0]`.
    at: i64,
    /// The last write gathered was a frame header: its page comes next.
    frame_open: bool,
    /// Writes made to the file (tests count them).
    #[cfg(test)]
    writes: u64,
}

impl Gather {
    fn end(&self) -> i64 {
        self.at + self.bytes.len() as i64
    }

    unsafe fn write(&mut self, file: *mut ffi::sqlite3_file, data: &[u8], offset: i64) -> c_int {
        let continues = !self.bytes.is_empty() && offset == self.end();
        let page_of_open_frame = std::mem::take(&mut self.frame_open) && continues;
        // Bytes 4..8 of a frame header: the database size after a commit,
        // else 0.
        let frame_header =
            data.len() == FRAME_HEADER && offset >= WAL_HEADER as i64 && data[4..8] == [0, 0, 0, 0];
        let keep = match data.len() {
            WAL_HEADER => offset == 0,
            FRAME_HEADER => frame_header,
            _ => page_of_open_frame,
        };
        if !self.bytes.is_empty() && !continues {
            let rc = self.flush(file);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        if self.bytes.is_empty() && !keep {
            return self.write_through(file, data, offset);
        }
        if self.bytes.is_empty() {
            self.at = offset;
        }
        self.bytes.extend_from_slice(data);
        if keep && self.bytes.len() < MAX_GATHERED {
            self.frame_open = frame_header;
            return ffi::SQLITE_OK;
        }
        self.flush(file)
    }

    /// Writes out what is gathered.
    unsafe fn flush(&mut self, file: *mut ffi::sqlite3_file) -> c_int {
        self.frame_open = false;
        if self.bytes.is_empty() {
            return ffi::SQLITE_OK;
        }
        let bytes = std::mem::take(&mut self.bytes);
        let rc = self.write_through(file, &bytes, self.at);
        self.bytes = bytes;
        self.bytes.clear();
        self.bytes.shrink_to(MAX_GATHERED + MAX_WRITE);
        rc
    }

    unsafe fn write_through(
        &mut self,
        file: *mut ffi::sqlite3_file,
        data: &[u8],
        offset: i64,
    ) -> c_int {
        #[cfg(test)]
        {
            self.writes += 1;
        }
        write_wrapped(file, data, offset)
    }
}

/// Writes `data` at `offset` through the wrapped file, `MAX_WRITE` bytes
/// at a time.
unsafe fn write_wrapped(file: *mut ffi::sqlite3_file, data: &[u8], offset: i64) -> c_int {
    let Some(write) = (*(*file).pMethods).xWrite else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let mut at = offset;
    for chunk in data.chunks(MAX_WRITE) {
        // A chunk is at most MAX_WRITE long, which fits both types.
        let rc = write(file, chunk.as_ptr().cast(), chunk.len() as c_int, at);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        at += chunk.len() as i64;
    }
    ffi::SQLITE_OK
}

/// The wrapped file and its methods.
unsafe fn wrapped(
    file: *mut ffi::sqlite3_file,
) -> (*mut ffi::sqlite3_file, &'static ffi::sqlite3_io_methods) {
    let inner = (*file.cast::<File>()).wrapped;
    (inner, &*(*inner).pMethods)
}

/// Writes out what a WAL file has gathered, before any other use of it.
unsafe fn flushed(file: *mut ffi::sqlite3_file) -> c_int {
    let ours = file.cast::<File>();
    match (*ours).gather.as_mut() {
        Some(gather) => gather.flush((*ours).wrapped),
        None => ffi::SQLITE_OK,
    }
}

/// Calls the wrapped file's method `$m` after writing out what is gathered.
macro_rules! after_flush {
    ($file:expr, $m:ident, $missing:expr $(, $arg:expr)*) => {{
        let rc = flushed($file);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        let (inner, methods) = wrapped($file);
        match methods.$m {
            Some(f) => f(inner $(, $arg)*),
            None => $missing,
        }
    }};
}

/// Calls the wrapped file's method `$m` as it is.
macro_rules! straight {
    ($file:expr, $m:ident, $missing:expr $(, $arg:expr)*) => {{
        let (inner, methods) = wrapped($file);
        match methods.$m {
            Some(f) => f(inner $(, $arg)*),
            None => $missing,
        }
    }};
}

/// Version 3, as the unix VFS's own methods are; a method the wrapped
/// file lacks (None) gets the fallback its call names.
static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    let ours = file.cast::<File>();
    // Nothing is gathered here: the write lock was released before, and
    // what a closing connection writes (a checkpoint's) it reads or syncs.
    if !(*ours).gather.is_null() {
        drop(Box::from_raw((*ours).gather));
        (*ours).gather = ptr::null_mut();
    }
    if !(*ours).partner.is_null() {
        (*(*ours).partner).partner = ptr::null_mut();
        (*ours).partner = ptr::null_mut();
    }
    straight!(file, xClose, ffi::SQLITE_OK)
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    after_flush!(file, xRead, ffi::SQLITE_IOERR_READ, buf, amount, offset)
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let ours = file.cast::<File>();
    let data = match usize::try_from(amount) {
        Ok(n) if !buf.is_null() => std::slice::from_raw_parts(buf.cast::<u8>(), n),
        _ => return after_flush!(file, xWrite, ffi::SQLITE_IOERR_WRITE, buf, amount, offset),
    };
    match (*ours).gather.as_mut() {
        Some(gather) => gather.write((*ours).wrapped, data, offset),
        None => write_wrapped((*ours).wrapped, data, offset),
    }
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    after_flush!(file, xTruncate, ffi::SQLITE_IOERR_TRUNCATE, size)
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    after_flush!(file, xSync, ffi::SQLITE_IOERR_FSYNC, flags)
}

unsafe extern "C" fn file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    after_flush!(file, xFileSize, ffi::SQLITE_IOERR_FSTAT, size)
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    after_flush!(file, xLock, ffi::SQLITE_IOERR_LOCK, level)
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    after_flush!(file, xUnlock, ffi::SQLITE_IOERR_UNLOCK, level)
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    straight!(
        file,
        xCheckReservedLock,
        ffi::SQLITE_IOERR_CHECKRESERVEDLOCK,
        out
    )
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    after_flush!(file, xFileControl, ffi::SQLITE_NOTFOUND, op, arg)
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    straight!(file, xSectorSize, 4096)
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    straight!(file, xDeviceCharacteristics, 0)
}

unsafe extern "C" fn shm_map(
    file: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    straight!(
        file,
        xShmMap,
        ffi::SQLITE_IOERR_SHMMAP,
        region,
        size,
        extend,
        out
    )
}

/// The shared-memory lock SQLite writes the WAL under (`WAL_WRITE_LOCK`).
const WRITE_LOCK: c_int = 0;

unsafe extern "C" fn shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    // Called on the database file: before the write lock goes, its WAL
    // file writes out what it holds (frames past the last commit, of a
    // transaction rolled back), while no other writer can start. SQLite
    // ignores what an unlock returns, and so does this.
    let wal = (*file.cast::<File>()).partner;
    let unlocks_writes =
        flags & ffi::SQLITE_SHM_UNLOCK != 0 && offset <= WRITE_LOCK && WRITE_LOCK < offset + n;
    if unlocks_writes && !wal.is_null() {
        let _ = flushed(wal.cast());
    }
    straight!(file, xShmLock, ffi::SQLITE_IOERR_SHMLOCK, offset, n, flags)
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    straight!(file, xShmBarrier, ())
}

unsafe extern "C" fn shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    straight!(file, xShmUnmap, ffi::SQLITE_OK, delete)
}

unsafe extern "C" fn fetch(
    file: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    let rc = flushed(file);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    let (inner, methods) = wrapped(file);
    match methods.xFetch {
        Some(f) => f(inner, offset, amount, out),
        None => {
            // No memory map: SQLite reads instead.
            *out = ptr::null_mut();
            ffi::SQLITE_OK
        }
    }
}

unsafe extern "C" fn unfetch(
    file: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    page: *mut c_void,
) -> c_int {
    straight!(file, xUnfetch, ffi::SQLITE_OK, offset, page)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rusqlite::{Connection, OpenFlags};

    use super::*;

    const SETUP: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
                         PRAGMA wal_autocheckpoint = 0;";

    fn gathering(path: &Path) -> Connection {
        let vfs = registered().expect("the VFS registers");
        let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs).unwrap();
        conn.execute_batch(SETUP).unwrap();
        conn
    }

    /// The gathering state of the WAL file of `conn`.
    fn wal_gather(conn: &Connection) -> &Gather {
        let mut file: *mut ffi::sqlite3_file = ptr::null_mut();
        // SAFETY: JOURNAL_POINTER stores the WAL's sqlite3_file, which this
        // VFS allocated as a `File`; the connection is not used meanwhile.
        unsafe {
            let rc = ffi::sqlite3_file_control(
                conn.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_JOURNAL_POINTER,
                (&mut file as *mut *mut ffi::sqlite3_file).cast(),
            );
            assert_eq!(rc, ffi::SQLITE_OK);
            let gather = (*file.cast::<File>()).gather;
            assert!(!gather.is_null(), "the WAL file gathers");
            &*gather
        }
    }

    /// The writes made so far to the WAL file of `conn`.
    fn wal_writes(conn: &Connection) -> u64 {
        wal_gather(conn).writes
    }

    /// The bytes the WAL file of `conn` holds.
    fn gathered(conn: &Connection) -> usize {
        wal_gather(conn).bytes.len()
    }

    fn totals(conn: &Connection) -> (i64, i64) {
        conn.query_row(
            "SELECT count(*), coalesce(sum(length(v)), 0) FROM t",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }

    #[test]
    fn a_commit_of_many_frames_is_two_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let conn = gathering(&path);
        conn.execute_batch(
            "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT);
             CREATE INDEX t_v ON t (v);
             CREATE TABLE u (k INTEGER PRIMARY KEY, n INTEGER);
             INSERT INTO u VALUES (1, 0);",
        )
        .unwrap();
        let wal = dir.path().join("db-wal");
        for round in 0..5 {
            let size = std::fs::metadata(&wal).unwrap().len();
            let writes = wal_writes(&conn);
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE;
                 INSERT INTO t (v) VALUES ('{round}{}');
                 UPDATE u SET n = n + 1 WHERE k = 1;
                 COMMIT;",
                "x".repeat(100)
            ))
            .unwrap();
            let frames = (std::fs::metadata(&wal).unwrap().len() - size) / (4096 + 24);
            assert!(frames >= 3, "round {round}: {frames} frames");
            assert_eq!(wal_writes(&conn) - writes, 2, "round {round}");
        }
    }

    /// A copy of the database and its WAL as they are now, without the
    /// shared index: opening it rebuilds the index from the WAL's
    /// checksummed frames, so every commit must be whole in the file.
    fn recovered_copy(dir: &Path) -> (tempfile::TempDir, Connection) {
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(dir.join("db"), copy.path().join("db")).unwrap();
        std::fs::copy(dir.join("db-wal"), copy.path().join("db-wal")).unwrap();
        let conn = Connection::open(copy.path().join("db")).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        (copy, conn)
    }

    /// A gathering connection to a new database with a table `t`, whose
    /// cache is so small that a large transaction spills pages into the
    /// WAL before its commit (which then rewrites some of them in place).
    fn spilling(dir: &Path) -> Connection {
        let conn = gathering(&dir.join("db"));
        conn.execute_batch(
            "PRAGMA cache_size = 10;
             CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT);",
        )
        .unwrap();
        conn
    }

    #[test]
    fn frames_of_a_rolled_back_transaction_never_reach_another_connections_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let gathering = spilling(dir.path());
        let other = Connection::open(&path).unwrap();
        other.execute_batch(SETUP).unwrap();
        for round in 0..5 {
            // An empty WAL: the rollback below then reads every page it
            // restores from the database file, not from the WAL.
            other
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
            // Spills frames into the WAL, the last of them still held when
            // the transaction is given up.
            gathering.execute_batch("BEGIN IMMEDIATE").unwrap();
            for i in 0..3000 {
                gathering
                    .execute("INSERT INTO t (v) VALUES (?1)", [format!("{i:0150}")])
                    .unwrap();
            }
            assert!(gathered(&gathering) > 0, "round {round}: frames held");
            gathering.execute_batch("ROLLBACK").unwrap();
            assert_eq!(
                gathered(&gathering),
                0,
                "round {round}: held past the rollback"
            );
            // Another connection commits as many frames, over where those
            // were.
            other.execute_batch("BEGIN IMMEDIATE").unwrap();
            for i in 0..3000 {
                other
                    .execute(
                        "INSERT INTO t (v) VALUES (?1)",
                        [format!("{round}{i:0150}")],
                    )
                    .unwrap();
            }
            other.execute_batch("COMMIT").unwrap();
            // The gathering connection reads and writes again.
            assert_eq!(totals(&gathering), totals(&other), "round {round}");
            gathering
                .execute("INSERT INTO t (v) VALUES (?1)", [format!("mine {round}")])
                .unwrap();
            assert_eq!(totals(&other), totals(&gathering), "round {round}");
            let check: String = other
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(check, "ok", "round {round}");
        }
        let (_copy, recovered) = recovered_copy(dir.path());
        assert_eq!(totals(&recovered), totals(&other));
    }

    #[test]
    fn readers_see_every_commit_and_the_wal_alone_recovers_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let writer = spilling(dir.path());
        writer.execute_batch("CREATE INDEX t_v ON t (v);").unwrap();
        let reader = Connection::open(&path).unwrap();
        let mut expected = (0i64, 0i64);
        for round in 0..40i64 {
            let rows = if round % 4 == 3 { 3000 } else { 1 + round % 5 };
            let value = format!("{round:03}{}", "v".repeat(150));
            writer.execute_batch("BEGIN IMMEDIATE").unwrap();
            {
                let mut insert = writer
                    .prepare("INSERT INTO t (v) VALUES (?1 || ?2)")
                    .unwrap();
                for i in 0..rows {
                    insert.execute((&value, i)).unwrap();
                }
            }
            // Touch pages written earlier in this transaction again.
            writer
                .execute("UPDATE t SET v = v || 'u' WHERE k % 7 = ?1", [round % 7])
                .unwrap();
            if round % 10 == 9 {
                writer.execute_batch("ROLLBACK").unwrap();
            } else {
                writer.execute_batch("COMMIT").unwrap();
                expected = totals(&writer);
            }
            assert_eq!(totals(&reader), expected, "round {round}");
            if round % 6 == 5 {
                reader
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    .unwrap();
            }
        }
        let (_copy, recovered) = recovered_copy(dir.path());
        assert_eq!(totals(&recovered), expected);
        drop(reader);
        drop(writer);
    }
}
