//! Upstream server-sent events: bytes in, event data out.
//!
//! Parsing is eventsource-stream's. This module adds the two things it does
//! not do: a bound on how large one event may grow (an upstream that never
//! ends an event must not exhaust memory), and mapping `event: error` and
//! transport failures into `ProviderError`.

use bytes::Bytes;
use eventsource_stream::{EventStreamError, Eventsource};
use futures::{Stream, StreamExt};

use super::{EventStream, ProviderError};

/// The most bytes one event may span before the stream is declared broken.
pub const MAX_EVENT_BYTES: usize = 4 << 20;

/// Counts bytes since the last blank line (the end of an event).
pub(crate) struct EventSizeGuard {
    since_boundary: usize,
    after_newline: bool,
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
            limit,
        }
    }

    /// Returns false once an event has grown past the limit.
    pub(crate) fn admit(&mut self, chunk: &[u8]) -> bool {
        for &b in chunk {
            match b {
                b'\n' if self.after_newline => self.since_boundary = 0,
                b'\n' => self.after_newline = true,
                b'\r' => {}
                _ => {
                    self.after_newline = false;
                    self.since_boundary += 1;
                }
            }
        }
        self.since_boundary <= self.limit
    }
}

/// Turns an upstream body into a stream of event data strings.
pub fn events<S, E>(body: S) -> EventStream
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let mut guard = EventSizeGuard::default();
    let bounded = body.map(move |chunk| match chunk {
        Ok(bytes) if guard.admit(&bytes) => Ok(bytes),
        Ok(_) => Err(ProviderError::Decode(format!(
            "an event grew past {MAX_EVENT_BYTES} bytes"
        ))),
        Err(e) => Err(ProviderError::Transport(e.to_string())),
    });
    bounded
        .eventsource()
        .filter_map(|item| async move {
            match item {
                Ok(event) if event.event == "error" => {
                    Some(Err(ProviderError::StreamError(event.data)))
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
}
