//! Upstream server-sent events: bytes in, event data out.
//!
//! Parsing is eventsource-stream's. This module adds what it does not do:
//! a bound on how large one event may grow (an upstream that never ends an
//! event must not exhaust memory), failing at the first byte that is not
//! UTF-8 (eventsource-stream keeps it, and everything after it, waiting
//! for the rest of a character that never comes, until the upstream ends),
//! and mapping `event: error` and transport failures into `ProviderError`.

use bytes::Bytes;
use eventsource_stream::{EventStreamError, Eventsource};
use futures::{Stream, StreamExt};

use super::{EventStream, ProviderError};

/// The most bytes one event may span before the stream is declared broken.
pub const MAX_EVENT_BYTES: usize = 4 << 20;

/// Counts bytes since the last blank line (the end of an event). A line
/// ends with CRLF, LF or CR, as the SSE grammar allows.
pub(crate) struct EventSizeGuard {
    since_boundary: usize,
    after_newline: bool,
    /// The last byte was a CR, so an LF now ends no other line.
    after_cr: bool,
    limit: usize,
}

impl Default for EventSizeGuard {
    fn default() -> Self {
        Self::new(MAX_EVENT_BYTES)
    }
}

impl EventSizeGuard {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            since_boundary: 0,
            after_newline: false,
            after_cr: false,
            limit,
        }
    }

    /// Returns false once an event has grown past the limit.
    pub(crate) fn admit(&mut self, chunk: &[u8]) -> bool {
        for &b in chunk {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    if self.after_newline {
                        self.since_boundary = 0;
                    }
                    self.after_newline = true;
                    self.after_cr = b == b'\r';
                }
                _ => {
                    self.after_newline = false;
                    self.after_cr = false;
                    self.since_boundary += 1;
                }
            }
        }
        self.since_boundary <= self.limit
    }
}

/// Checks that a body split into chunks is UTF-8: a character split
/// between two chunks waits for the rest of it; a byte that can begin no
/// character fails at once.
#[derive(Default)]
pub(crate) struct Utf8Guard {
    /// The start of a character the last chunk ended in (at most 3 bytes).
    pending: Vec<u8>,
}

impl Utf8Guard {
    pub(crate) fn admit(&mut self, chunk: &[u8]) -> bool {
        let joined;
        let bytes = if self.pending.is_empty() {
            chunk
        } else {
            let mut both = std::mem::take(&mut self.pending);
            both.extend_from_slice(chunk);
            joined = both;
            &joined[..]
        };
        match std::str::from_utf8(bytes) {
            Ok(_) => true,
            Err(e) if e.error_len().is_some() => false,
            Err(e) => {
                self.pending = bytes[e.valid_up_to()..].to_vec();
                true
            }
        }
    }
}

/// Turns an upstream body into a stream of event data strings.
pub fn events<S, E>(body: S) -> EventStream
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let mut guard = EventSizeGuard::default();
    let mut utf8 = Utf8Guard::default();
    let bounded = body.map(move |chunk| match chunk {
        Ok(bytes) if !guard.admit(&bytes) => Err(ProviderError::Decode(format!(
            "an event grew past {MAX_EVENT_BYTES} bytes"
        ))),
        Ok(bytes) if !utf8.admit(&bytes) => Err(ProviderError::Decode(
            "the stream is not valid UTF-8".into(),
        )),
        Ok(bytes) => Ok(bytes),
        Err(e) => Err(ProviderError::Transport(e.to_string())),
    });
    bounded
        .eventsource()
        .filter_map(|item| async move {
            match item {
                Ok(event) if event.event == "error" => {
                    Some(Err(ProviderError::StreamError(error_message(event.data))))
                }
                // Comments and empty keep-alive events carry nothing to forward.
                Ok(event) if event.data.is_empty() => None,
                Ok(event) => Some(Ok(event.data)),
                Err(EventStreamError::Transport(e)) => Some(Err(e)),
                Err(EventStreamError::Utf8(e)) => Some(Err(ProviderError::Decode(format!(
                    "invalid UTF-8 in stream: {e}"
                )))),
                Err(EventStreamError::Parser(e)) => {
                    Some(Err(ProviderError::Decode(format!("malformed event: {e}"))))
                }
            }
        })
        .boxed()
}

/// The message of an `event: error`: its data's `message` (or
/// `error.message`) when the data is a JSON error, as OpenAI's Responses
/// streams send it; else the data itself.
fn error_message(data: String) -> String {
    let Ok(serde_json::Value::Object(error)) = serde_json::from_str(&data) else {
        return data;
    };
    let inner = error.get("error").unwrap_or(&serde_json::Value::Null);
    match inner.get("message").or_else(|| error.get("message")) {
        Some(serde_json::Value::String(message)) => message.clone(),
        _ => data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_guard_resets_at_blank_lines() {
        let mut g = EventSizeGuard::default();
        assert!(g.admit(b"data: a\n\n"));
        assert_eq!(g.since_boundary, 0);
        assert!(g.admit(b"data: b\r\n\r\n"));
        assert_eq!(g.since_boundary, 0);
        assert!(g.admit(b"data: c\n"));
        assert_eq!(g.since_boundary, 7);
    }

    #[test]
    fn size_guard_takes_any_line_end() {
        let mut g = EventSizeGuard::new(10);
        // CR alone ends lines too: a stream framed that way never adds up.
        for _ in 0..100 {
            assert!(g.admit(b"data: 12\r\r"));
        }
        assert_eq!(g.since_boundary, 0);
        // CRLF is one line end: one CRLF is not a blank line.
        let mut g = EventSizeGuard::new(14);
        assert!(g.admit(b"data: 1\r\ndata: 2"));
        assert_eq!(g.since_boundary, 14);
        assert!(!g.admit(b"3"), "past the limit of 14");
        // LF CR ends an event as well.
        let mut g = EventSizeGuard::new(10);
        assert!(g.admit(b"data: 1\n\rdata: 2\n\n"));
        assert_eq!(g.since_boundary, 0);
    }

    #[test]
    fn utf8_guard_waits_for_split_characters_and_fails_bad_bytes() {
        let mut g = Utf8Guard::default();
        let cafe = "café €".as_bytes();
        // Split inside é (2 bytes) and inside € (3 bytes).
        assert!(g.admit(&cafe[..4]));
        assert!(g.admit(&cafe[4..8]));
        assert!(g.admit(&cafe[8..9]));
        assert!(g.admit(&cafe[9..]));
        assert!(g.pending.is_empty());
        assert!(!Utf8Guard::default().admit(b"data: \xff\n\n"));
        let mut g = Utf8Guard::default();
        assert!(g.admit(b"data: \xe2\x82"));
        assert!(!g.admit(b"x"), "a started character that does not go on");
    }

    #[tokio::test]
    async fn a_bad_byte_fails_the_stream_at_once() {
        // The stream goes on after the bad byte and never ends: the failure
        // must come from the bad byte itself, not from the end.
        let body = futures::stream::iter(vec![
            Ok::<_, std::io::Error>(Bytes::from_static(b"data: {\"a\":1}\n\n")),
            Ok(Bytes::from_static(b"data: \"\xff\"\n\n")),
        ])
        .chain(futures::stream::pending());
        let mut out = events(body);
        assert_eq!(out.next().await.unwrap().unwrap(), "{\"a\":1}");
        let failed = tokio::time::timeout(std::time::Duration::from_secs(5), out.next())
            .await
            .expect("the bad byte fails the stream without waiting for more");
        assert!(matches!(failed, Some(Err(ProviderError::Decode(_)))));
    }

    #[test]
    fn size_guard_rejects_endless_events() {
        let mut g = EventSizeGuard::default();
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert!(!g.admit(&big));
    }

    #[tokio::test]
    async fn parses_events_and_maps_error_events() {
        let body = futures::stream::iter(vec![
            Ok::<_, std::io::Error>(Bytes::from_static(b": keep-alive\n\ndata: {\"a\":1}\n\nda")),
            Ok(Bytes::from_static(
                b"ta: [DONE]\n\nevent: error\ndata: boom\n\n",
            )),
        ]);
        let out: Vec<_> = events(body).collect().await;
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].as_ref().unwrap(), "{\"a\":1}");
        assert_eq!(out[1].as_ref().unwrap(), "[DONE]");
        assert!(matches!(&out[2], Err(ProviderError::StreamError(m)) if m == "boom"));
    }

    #[test]
    fn an_error_event_gives_its_message() {
        let openai = r#"{"type":"error","code":"server_error","message":"The server had an error","param":null,"sequence_number":7}"#;
        assert_eq!(error_message(openai.into()), "The server had an error");
        let nested = r#"{"error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(error_message(nested.into()), "Overloaded");
        assert_eq!(error_message("boom".into()), "boom");
        assert_eq!(error_message(r#"{"code":1}"#.into()), r#"{"code":1}"#);
    }
}
