//! The outermost layer. It gives every request an id (`x-request-id`,
//! accepted from the client when sane, else `req_<ulid>`), renders error
//! envelopes with that id, and writes the request's one access-log line
//! when its response body ends: for a stream, when the stream ends or the
//! client goes away. It also writes the `x-ratelimit-*` headers the domain
//! recorded.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};

use crate::gateway::error::GatewayError;
use crate::gateway::record::{Outcome, RequestContext};
use crate::http::error::{render, status_of};

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// Which provider answered, after how many attempts. (Names checked when
/// the crate is compiled, not parsed again on every insert.)
const PROVIDER: HeaderName = HeaderName::from_static("x-mume-provider");
const ATTEMPTS: HeaderName = HeaderName::from_static("x-mume-attempts");
const MAX_ID_LEN: usize = 128;

/// A client-supplied id is kept only if it is short and plain.
fn sane(value: &HeaderValue) -> Option<&str> {
    let id = value.to_str().ok()?;
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':');
    (!id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(plain)).then_some(id)
}

pub async fn layer(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = match req.headers().get(&HEADER).and_then(sane) {
        Some(id) => id.to_string(),
        None => format!("req_{}", ulid::Ulid::new()),
    };
    let ctx = RequestContext::new(id);
    req.extensions_mut().insert(ctx.clone());
    // Written as it is if the request goes away before its response
    // exists (the client left while the handler waited, or shutdown ended
    // it): status 499, outcome client_closed.
    let mut unanswered = Unanswered(Some(AccessLine {
        ctx: ctx.clone(),
        method: req.method().clone(),
        path: req.uri().path().to_string(),
        status: 499,
        error_code: None,
        started,
    }));

    let mut response = next.run(req).await;
    let mut line = unanswered.0.take().expect("taken once, here");

    let error = response.extensions_mut().remove::<GatewayError>();
    if let Some(error) = &error {
        render(&mut response, error, &ctx.request_id);
        if status_of(error.kind).is_server_error() {
            tracing::warn!(request_id = %ctx.request_id, code = error.code, detail = ?error.detail, "{}", error.message);
        }
    }
    if let Ok(value) = HeaderValue::from_str(&ctx.request_id) {
        response.headers_mut().insert(HEADER, value);
    }
    let (limits, served_by) = ctx.record.read(|r| {
        let served_by = r
            .provider
            .clone()
            .filter(|_| r.attempts > 0)
            .map(|p| (p, r.attempts));
        (r.rate_limits, served_by)
    });
    for (name, value) in limits.iter().flat_map(|l| l.headers()) {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    // Which provider answered (or failed last), after how many attempts.
    if let Some((provider, attempts)) = served_by {
        if let Ok(value) = HeaderValue::from_str(&provider) {
            response.headers_mut().insert(PROVIDER, value);
        }
        response
            .headers_mut()
            .insert(ATTEMPTS, HeaderValue::from(attempts));
    }
    line.status = response.status().as_u16();
    line.error_code = error.map(|e| e.code);
    response.map(|body| {
        Body::new(LoggedBody {
            inner: body,
            line: Some(line),
        })
    })
}

struct AccessLine {
    ctx: RequestContext,
    method: Method,
    path: String,
    status: u16,
    error_code: Option<&'static str>,
    started: Instant,
}

impl AccessLine {
    /// `body_finished`: the body was sent to its end (false: the client left).
    fn write(self, body_finished: bool) {
        let r = self.ctx.record.snapshot();
        let outcome = match (&r.outcome, self.error_code) {
            (_, Some(code)) => code,
            (Outcome::Failed(code), _) => code,
            (Outcome::Pending, _) if !body_finished => "client_closed",
            _ => "ok",
        };
        let usage = r.usage.unwrap_or_default();
        if let Some(model) = r.model.as_deref() {
            crate::metrics::request_finished(
                model,
                r.provider.as_deref().unwrap_or("-"),
                self.status,
                self.started.elapsed(),
            );
        }
        tracing::info!(
            target: "mume::access",
            request_id = %self.ctx.request_id,
            method = %self.method,
            path = %self.path,
            status = self.status,
            latency_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            key = r.key_id.as_deref().unwrap_or("-"),
            model = r.model.as_deref().unwrap_or("-"),
            provider = r.provider.as_deref().unwrap_or("-"),
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            streamed = r.streamed,
            outcome,
            "request"
        );
    }
}

/// The access line of a request whose response does not exist yet.
struct Unanswered(Option<AccessLine>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(line) = self.0.take() {
            line.write(false);
        }
    }
}

/// A response body that writes the access line when it ends or is dropped.
struct LoggedBody {
    inner: Body,
    line: Option<AccessLine>,
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            if let Some(line) = self.line.take() {
                line.write(true);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            let finished = self.inner.is_end_stream();
            line.write(finished);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_plain_client_ids() {
        assert_eq!(
            sane(&HeaderValue::from_static("abc-123_x.y:z")),
            Some("abc-123_x.y:z")
        );
        for bad in ["", "has space", "semi;colon", "<script>"] {
            assert_eq!(sane(&HeaderValue::from_str(bad).unwrap()), None, "{bad:?}");
        }
        let long = "a".repeat(MAX_ID_LEN + 1);
        assert_eq!(sane(&HeaderValue::from_str(&long).unwrap()), None);
    }
}
