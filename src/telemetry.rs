//! Logging setup: human-readable by default, one JSON object per line when
//! `MUME_LOG_FORMAT=json`. The level comes from `MUME_LOG` (or `RUST_LOG`),
//! default `info`. Nothing logged anywhere carries a key or a secret.
//!
//! Lines go to stdout through [`Sink`]: the thread that logs a line appends
//! it to a buffer, and a writer thread writes what has gathered in one
//! `write`, [`GATHER`] after the first line of a batch arrived. A request
//! therefore never waits on the log file, and under load one system call
//! carries many lines. Only the line that finds the buffer empty wakes the
//! writer (a writer woken for every line, as a channel does, was measured
//! to cost more than the writes it saved). Buffered lines are written when
//! the guard that `init` returns is dropped; if the buffer outgrows
//! [`MAX_PENDING`] (stdout is not being read), the logging thread writes
//! it itself, so the log pushes back as a plain stdout would. Colours only
//! when stdout is a terminal.

use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, Thread};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{self, FormatFields};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// How long the writer lets lines gather after the first one arrives.
const GATHER: Duration = Duration::from_millis(50);
/// Beyond this many buffered bytes the logging thread writes them itself.
const MAX_PENDING: usize = 1 << 20;

/// Sets up the global subscriber. Keep the guard until the process ends:
/// dropping it writes the lines still buffered.
pub fn init() -> Flush {
    let filter = EnvFilter::try_from_env("MUME_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        // rmcp reports every MCP session it opens and closes at info.
        .unwrap_or_else(|_| EnvFilter::new("info,rmcp=warn"));
    let json = std::env::var("MUME_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let ansi = io::stdout().is_terminal();
    let sink = Sink::start(Box::new(io::stdout()), GATHER);
    let guard = Flush(sink.clone());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(Clock)
        .with_target(true)
        .with_ansi(ansi && !json)
        .with_writer(sink);
    if json {
        builder.json().flatten_event(true).init();
    } else if ansi {
        builder.init();
    } else {
        builder.fmt_fields(PlainFields).init();
    }
    guard
}

/// Each line's time, as the default timer writes it (RFC 3339, UTC, to
/// the microsecond: `2026-11-30T20:25:37.337626Z`), with the part up to
/// the second formatted once per second per thread instead of on every
/// line (a tenth of an access line's cost, measured).
struct Clock;

thread_local! {
    /// (Unix second, its `YYYY-MM-DDTHH:MM:SS.` text).
    static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

impl FormatTime for Clock {
    fn format_time(&self, w: &mut format::Writer<'_>) -> fmt::Result {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        write_time(w, now.as_secs(), now.subsec_micros())
    }
}

fn write_time(w: &mut impl fmt::Write, secs: u64, micros: u32) -> fmt::Result {
    use std::fmt::Write as _;
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != secs {
            // humantime's RFC 3339 to the second, its `Z` replaced by the dot.
            let at = std::time::UNIX_EPOCH + Duration::from_secs(secs);
            text.clear();
            write!(text, "{}", humantime::format_rfc3339_seconds(at))?;
            text.pop();
            text.push('.');
            *second = secs;
        }
        w.write_str(text)
    })?;
    write!(w, "{:06}Z", micros.min(999_999))
}

/// Fields as `name=value`, space-separated, the message bare: the text
/// the default formatter writes without colours, made without the style
/// wrappers it puts around every field name and `=` even when colours are
/// off (a third of an access line's formatting, measured). A `log`
/// record's own fields, raw identifiers and error sources are written as
/// the default formatter writes them.
struct PlainFields;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: format::Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = PlainVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct PlainVisitor<'w> {
    writer: format::Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// Writes one field: the gap, `name=` (nothing for the message), the
    /// value; one formatting call per field.
    fn put(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        // Fields a `log` record brings along: shown as the line's target.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let w = &mut self.writer;
        let gap = if std::mem::take(&mut self.first) {
            Ok(())
        } else {
            w.write_char(' ')
        };
        let label = if name == "message" {
            Ok(())
        } else {
            let name = name.strip_prefix("r#").unwrap_or(name);
            w.write_str(name).and_then(|()| w.write_char('='))
        };
        self.result = gap.and(label).and_then(|()| write!(w, "{value:?}"));
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.put(field, &format_args!("{value}"));
        } else {
            self.put(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let Some(first) = value.source() else {
            return self.put(field, &format_args!("{value}"));
        };
        let mut sources = String::new();
        let mut next = Some(first);
        while let Some(source) = next {
            if !sources.is_empty() {
                sources.push_str(", ");
            }
            sources.push_str(&source.to_string());
            next = source.source();
        }
        let name = field.name();
        self.put(field, &format_args!("{value} {name}.sources=[{sources}]"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, value);
    }
}

/// Writes the buffered lines when dropped.
pub struct Flush(Sink);

impl Drop for Flush {
    fn drop(&mut self) {
        self.0.shared.write_pending();
    }
}

/// Where log lines go: a buffer that a writer thread empties into `out`.
#[derive(Clone)]
pub struct Sink {
    shared: Arc<Shared>,
}

struct Shared {
    pending: Mutex<Vec<u8>>,
    /// Also the order lock: whoever writes holds it while taking the
    /// pending lines, so batches reach `out` in the order they gathered.
    out: Mutex<Box<dyn Write + Send>>,
    /// The writer thread, to wake; unset if it could not be started, and
    /// then every line is written by the thread that logs it.
    writer: OnceLock<Thread>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A thread that panicked while holding it left whole lines behind.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn write_pending(&self) {
        let mut out = lock(&self.out);
        let lines = std::mem::take(&mut *lock(&self.pending));
        if !lines.is_empty() {
            // Nowhere to report a failing stdout; the lines are dropped.
            let _ = out.write_all(&lines).and_then(|()| out.flush());
        }
    }
}

impl Sink {
    /// Starts the writer thread that writes to `out`, `gather` after the
    /// first line of each batch.
    pub fn start(out: Box<dyn Write + Send>, gather: Duration) -> Self {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::new()),
            out: Mutex::new(out),
            writer: OnceLock::new(),
        });
        // The writer keeps only a weak reference, so it ends with the last
        // sink.
        let weak = Arc::downgrade(&shared);
        let writer = thread::Builder::new()
            .name("mume-log".into())
            .spawn(move || loop {
                thread::park();
                thread::sleep(gather);
                match weak.upgrade() {
                    Some(shared) => shared.write_pending(),
                    None => return,
                }
            });
        if let Ok(writer) = writer {
            let _ = shared.writer.set(writer.thread().clone());
        }
        Sink { shared }
    }

    fn append(&self, line: &[u8]) {
        let Some(writer) = self.shared.writer.get() else {
            let mut out = lock(&self.shared.out);
            let _ = out.write_all(line);
            return;
        };
        let (first, full) = {
            let mut pending = lock(&self.shared.pending);
            let first = pending.is_empty();
            pending.extend_from_slice(line);
            (first, pending.len() > MAX_PENDING)
        };
        if full {
            self.shared.write_pending();
        } else if first {
            writer.unpark();
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.get() {
            // Lets the writer see that the sink is gone.
            writer.unpark();
        }
    }
}

impl io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Sink;

    fn make_writer(&'a self) -> Sink {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_times_are_rfc3339_utc_to_the_microsecond() {
        let at = |secs, micros| {
            let mut out = String::new();
            write_time(&mut out, secs, micros).unwrap();
            out
        };
        assert_eq!(at(1_796_067_937, 337_626), "2026-11-30T19:45:37.337626Z");
        assert_eq!(at(1_796_067_937, 5), "2026-11-30T19:45:37.000005Z");
        assert_eq!(at(951_782_399, 999_999), "2000-02-28T23:59:59.999999Z");
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000000Z");
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
    }

    /// An `out` the test can read.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(lock(&self.0).clone()).unwrap()
        }
    }

    #[test]
    fn lines_reach_the_output_whole_and_in_order_per_thread() {
        let out = Captured::default();
        let sink = Sink::start(Box::new(out.clone()), GATHER);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut sink = sink.make_writer();
                thread::spawn(move || {
                    for i in 0..500 {
                        sink.write_all(format!("thread {t} line {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // The writer thread gets there on its own, without a flush.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while out.text().lines().count() < 2000 && std::time::Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        let text = out.text();
        assert_eq!(text.lines().count(), 2000);
        for t in 0..4 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let expected: Vec<String> = (0..500).map(|i| format!("thread {t} line {i}")).collect();
            assert_eq!(mine, expected);
        }
    }

    #[test]
    fn dropping_the_guard_writes_what_is_still_buffered() {
        let out = Captured::default();
        // A writer that waits an hour: only the guard can write the line.
        let sink = Sink::start(Box::new(out.clone()), Duration::from_secs(3600));
        sink.make_writer().write_all(b"last words\n").unwrap();
        assert_eq!(out.text(), "");
        drop(Flush(sink));
        assert_eq!(out.text(), "last words\n");
    }

    #[test]
    fn a_backlog_beyond_the_bound_is_written_by_the_logging_thread() {
        let out = Captured::default();
        let sink = Sink::start(Box::new(out.clone()), Duration::from_secs(3600));
        let line = vec![b'x'; 4096];
        let mut writer = sink.make_writer();
        for _ in 0..(MAX_PENDING / line.len() + 1) {
            writer.write_all(&line).unwrap();
        }
        // Written at once, by this thread: the writer waits an hour.
        assert!(out.text().len() > MAX_PENDING);
        assert!(lock(&sink.shared.pending).is_empty());
    }

    /// An error with a chain of sources.
    #[derive(Debug)]
    struct Failure(Option<Box<Failure>>);

    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match &self.0 {
                Some(_) => f.write_str("outer failure"),
                None => f.write_str("root cause"),
            }
        }
    }

    impl std::error::Error for Failure {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.0.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn plain_fields_write_what_the_default_formatter_writes_without_colours() {
        fn line(plain: bool) -> String {
            let out = Captured::default();
            let writer = {
                let out = out.clone();
                move || out.clone()
            };
            let builder = tracing_subscriber::fmt()
                .with_ansi(false)
                .without_time()
                .with_target(true)
                .with_writer(writer);
            let emit = || {
                let span = tracing::info_span!("attempt", provider = "up", n = 2);
                let _in = span.enter();
                tracing::info!(
                    target: "mume::access",
                    request_id = %"req_01",
                    status = 200u16,
                    latency_ms = 0.25,
                    key = "k_1",
                    streamed = false,
                    outcome = "ok",
                    error = %"quoted \"text\"",
                    "request"
                );
                let failure = Failure(Some(Box::new(Failure(Some(Box::new(Failure(None)))))));
                tracing::warn!(
                    message = "a plain str message",
                    log.target = "from_a_log_record",
                    r#type = "raw",
                    error = &failure as &(dyn std::error::Error + 'static),
                );
            };
            if plain {
                tracing::subscriber::with_default(builder.fmt_fields(PlainFields).finish(), emit);
            } else {
                tracing::subscriber::with_default(builder.finish(), emit);
            }
            out.text()
        }
        let plain = line(true);
        assert!(
            plain.contains(r#"request request_id=req_01 status=200 latency_ms=0.25 key="k_1""#),
            "{plain}"
        );
        assert!(
            plain.contains("a plain str message type=\"raw\" error=outer failure error.sources=[outer failure, root cause]"),
            "{plain}"
        );
        assert!(!plain.contains("log."), "{plain}");
        assert_eq!(plain, line(false));
    }
}
