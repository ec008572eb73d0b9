//! Logging setup: human-readable by default, one JSON object per line when
//! `MUME_LOG_FORMAT=json`. The level comes from `MUME_LOG` (or `RUST_LOG`),
//! default `info`. Nothing logged anywhere carries a key or a secret.
//!
//! Each line is one write to stdout from the thread that logs it. A
//! background writer thread was measured to cost more (about one
//! `sched_yield` and a third of a futex wake-up per request) than the one
//! `write` it saved. Colours only when stdout is a terminal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("MUME_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        // rmcp reports every MCP session it opens and closes at info.
        .unwrap_or_else(|_| EnvFilter::new("info,rmcp=warn"));
    let json = std::env::var("MUME_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let ansi = std::io::stdout().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi && !json)
        .with_writer(std::io::stdout);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
