//! Logging setup: human-readable by default, one JSON object per line when
//! `MUME_LOG_FORMAT=json`. The level comes from `MUME_LOG` (or `RUST_LOG`),
//! default `info`. Nothing logged anywhere carries a key or a secret.
//!
//! Lines are written to stdout by a background thread, so a request never
//! waits on a write system call, and in batches: the thread drains every
//! queued line into a buffer and flushes once when the queue is empty.
//! Colours only when stdout is a terminal.

use std::io::{BufWriter, IsTerminal, Write};
use std::os::fd::AsFd;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Installs the subscriber. Keep the guard alive until exit: dropping it
/// flushes the lines still queued.
pub fn init() -> WorkerGuard {
    let filter = EnvFilter::try_from_env("MUME_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("MUME_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let ansi = std::io::stdout().is_terminal();
    // Not lossy: under a flood, requests wait for the writer rather than
    // lose their log lines.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(batched_stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi && !json)
        .with_writer(writer);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    guard
}

/// Stdout without its per-line flushing: a buffer over a duplicate of its
/// descriptor. Falls back to plain stdout if the descriptor cannot be
/// duplicated.
fn batched_stdout() -> Box<dyn Write + Send> {
    match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(BufWriter::with_capacity(64 << 10, std::fs::File::from(fd))),
        Err(_) => Box::new(std::io::stdout()),
    }
}
