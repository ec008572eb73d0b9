//! The HTTP side of every provider that speaks to a server: the request
//! (the gateway's own key in the header the provider wants, the configured
//! headers, the body), the first-byte and total limits, error bodies read
//! into `ProviderError`, and the redaction of the key from anything an
//! upstream echoes. Connections, TLS and proxies are `client.rs`'s.
//! Adapters (`openai.rs`, `anthropic.rs`) decide what the body says and how
//! answers are read.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER,
};
use http::{Method, Request, Uri};
use http_body_util::{BodyDataStream, BodyExt, Full, LengthLimitError, Limited};
use serde_json::Value;

use super::client::{Answer, HttpClient, Proxies};
use super::{sse, EventStream, ProviderError};
use crate::config::{ProviderConfig, Timeouts};

/// Largest non-streaming upstream body accepted.
const MAX_BODY_BYTES: usize = 64 << 20;
/// Largest upstream error body read (the rest is not needed for a message).
const MAX_ERROR_BYTES: usize = 64 << 10;

/// How the provider wants the key.
pub enum KeyHeader {
    /// `Authorization: Bearer KEY` (OpenAI and compatible servers).
    Bearer,
    /// The bare key in this header (`x-api-key` for Anthropic).
    Plain(&'static str),
}

/// A key that never prints: its header, and the bare key for redaction.
struct Secret(HeaderName, HeaderValue, Redactor);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

pub struct Transport {
    /// Parsed once, at start.
    url: Uri,
    auth: Result<Option<Secret>, String>,
    headers: HeaderMap,
    http: HttpClient,
    timeouts: Timeouts,
}

impl Transport {
    /// `path` is appended to the provider's base_url; `key` is `(variable
    /// name, value if set)` when the provider needs one; `extra` headers go
    /// on every request (after the configured ones).
    pub fn new(
        config: &ProviderConfig,
        path: &str,
        style: KeyHeader,
        key: Option<(&str, Option<String>)>,
        extra: &[(&'static str, &str)],
        proxies: &Proxies,
    ) -> Result<Self, ProviderError> {
        let auth = match key {
            None => Ok(None),
            Some((var, None)) => Err(format!(
                "Provider {:?} is not configured: environment variable {var} is unset. The operator must set it and restart the gateway.",
                config.name
            )),
            Some((var, Some(value))) if crate::accounts::keys::is_gateway_key(&value) => Err(format!(
                "Provider {:?} is not configured: environment variable {var} holds a key of this gateway (sk-mume-…), not the provider's own key, and a gateway key is never sent upstream. The operator must put the provider's key in {var} and restart the gateway.",
                config.name
            )),
            Some((var, Some(value))) => {
                let (name, text) = match style {
                    KeyHeader::Bearer => (AUTHORIZATION, format!("Bearer {value}")),
                    KeyHeader::Plain(name) => (HeaderName::from_static(name), value.clone()),
                };
                let mut header = HeaderValue::from_str(&text).map_err(|_| {
                    ProviderError::NotConfigured(format!("the value of {var} is not a valid header value"))
                })?;
                header.set_sensitive(true);
                Ok(Some(Secret(name, header, Redactor(Some(value.into())))))
            }
        };
        let mut headers = HeaderMap::new();
        let configured = config.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        for (name, value) in configured.chain(extra.iter().copied()) {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| ProviderError::NotConfigured(e.to_string()))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| ProviderError::NotConfigured(e.to_string()))?;
            headers.insert(name, value);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers
            .entry(ACCEPT)
            .or_insert(HeaderValue::from_static("*/*"));
        let url = Self::url_at(config, path)?;
        let connect = config.timeouts.connect;
        let http =
            HttpClient::new(&url, proxies, connect, &config.ca_certificates).map_err(|e| {
                ProviderError::NotConfigured(format!("provider {:?}: {e}", config.name))
            })?;
        if let Some(proxy) = http.proxy() {
            tracing::info!(provider = %config.name, %proxy, "upstream requests go through a proxy");
        }
        Ok(Self {
            url,
            auth,
            headers,
            http,
            timeouts: config.timeouts,
        })
    }

    /// An endpoint of the provider's server: `path` after its base_url,
    /// normalized as the config check read it.
    pub fn url_at(config: &ProviderConfig, path: &str) -> Result<Uri, ProviderError> {
        let bad = |e: String| ProviderError::NotConfigured(format!("base_url: {e}"));
        let url = reqwest::Url::parse(&format!("{}{path}", config.base_url))
            .map_err(|e| bad(e.to_string()))?;
        url.as_str()
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))
    }

    /// POSTs `body`. A success comes back with the redactor for what the
    /// upstream says next; any other status is read into an error.
    pub async fn post(
        &self,
        body: Bytes,
        stream: bool,
    ) -> Result<(Answer, Redactor), ProviderError> {
        self.post_to(None, body, stream).await
    }

    /// `post` to `url` (one made by `url_at`) instead of the provider's
    /// main endpoint.
    pub async fn post_to(
        &self,
        url: Option<&Uri>,
        body: Bytes,
        stream: bool,
    ) -> Result<(Answer, Redactor), ProviderError> {
        let auth = self
            .auth
            .as_ref()
            .map_err(|m| ProviderError::NotConfigured(m.clone()))?;
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = url.unwrap_or(&self.url).clone();
        *request.headers_mut() = self.headers.clone();
        let mut redactor = Redactor(None);
        if let Some(Secret(name, value, key)) = auth {
            request.headers_mut().insert(name, value.clone());
            redactor = key.clone();
        }
        // A non-streaming upstream sends its headers only once the whole
        // answer is ready, so only streams get the first-byte limit; the
        // caller bounds non-streaming calls by the total timeout.
        let limit = if stream {
            self.timeouts.first_byte
        } else {
            self.timeouts.total
        };
        let response = tokio::time::timeout(limit, self.http.send(request))
            .await
            .map_err(|_| ProviderError::Timeout(format!("no response headers within {limit:?}")))?
            .map_err(|e| redactor.error(ProviderError::Transport(describe(&e))))?;
        if !response.status().is_success() {
            return Err(redactor.error(upstream_error(response, &redactor).await));
        }
        Ok((response, redactor))
    }
}

/// The events of a streaming answer, redacted.
pub fn events(response: Answer, redactor: Redactor) -> EventStream {
    let body = BodyDataStream::new(response.into_body()).map_err(|e| describe(&e));
    sse::events(body)
        .map(move |event| match event {
            Ok(data) => Ok(redactor.text(data)),
            Err(e) => Err(redactor.error(e)),
        })
        .boxed()
}

/// The whole body of a complete answer, redacted.
pub async fn body(response: Answer, redactor: &Redactor) -> Result<Bytes, ProviderError> {
    read_capped(response, MAX_BODY_BYTES)
        .await
        .map(|body| redactor.bytes(body))
        .map_err(|e| redactor.error(e))
}

/// Some upstreams quote the key they were sent ("Incorrect API key
/// provided: sk-..."). Everything this adapter hands on from the upstream
/// passes through here, so the key reaches neither a client nor a log.
#[derive(Clone)]
pub struct Redactor(Option<Arc<str>>);

impl Redactor {
    const MASK: &'static str = "[redacted]";

    fn key(&self) -> Option<&str> {
        self.0.as_deref().filter(|k| !k.is_empty())
    }

    fn text(&self, text: String) -> String {
        match self.key() {
            Some(key) if text.contains(key) => text.replace(key, Self::MASK),
            _ => text,
        }
    }

    fn bytes(&self, body: Bytes) -> Bytes {
        match (self.key(), std::str::from_utf8(&body)) {
            (Some(key), Ok(text)) if text.contains(key) => text.replace(key, Self::MASK).into(),
            _ => body,
        }
    }

    fn error(&self, error: ProviderError) -> ProviderError {
        match error {
            ProviderError::Upstream {
                status,
                message,
                code,
                param,
                retry_after,
            } => ProviderError::Upstream {
                status,
                message: self.text(message),
                code: code.map(|c| self.text(c)),
                param: param.map(|p| self.text(p)),
                retry_after,
            },
            ProviderError::Transport(m) => ProviderError::Transport(self.text(m)),
            ProviderError::Decode(m) => ProviderError::Decode(self.text(m)),
            ProviderError::StreamError(m) => ProviderError::StreamError(self.text(m)),
            other => other,
        }
    }
}

/// An HTTP client error as a sentence, with its causes. hyper's errors
/// carry neither the URL (which could hold secrets in the query strings of
/// some deployments) nor the request body.
fn describe(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn read_capped(response: Answer, cap: usize) -> Result<Bytes, ProviderError> {
    match Limited::new(response.into_body(), cap).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(ProviderError::Decode(format!(
            "response body larger than {cap} bytes"
        ))),
        Err(e) => Err(ProviderError::Transport(describe(&*e))),
    }
}

async fn upstream_error(response: Answer, redactor: &Redactor) -> ProviderError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(retry_after_delay);
    // Past the cap, the body's first part still holds its message (a
    // validation error that echoes a long input, say).
    let body = read_prefix(response, MAX_ERROR_BYTES).await;
    // Redacted before any of it is cut, so that no cut leaves a part of
    // the key behind.
    let body = redactor.text(String::from_utf8_lossy(&body).into_owned());
    let (message, code, param) = error_fields(body.as_bytes());
    ProviderError::Upstream {
        status,
        message,
        code,
        param,
        retry_after,
    }
}

/// `Retry-After`: a number of seconds, or an HTTP-date (RFC 9110 §10.2.3),
/// as the delay from now (zero for a date already past).
fn retry_after_delay(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_secs(seconds.ceil() as u64));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// Up to `cap` bytes of a body, the rest left unread.
async fn read_prefix(response: Answer, cap: usize) -> Bytes {
    let mut body = response.into_body();
    let mut out = Vec::new();
    while out.len() < cap {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let take = data.len().min(cap - out.len());
                    out.extend_from_slice(&data[..take]);
                }
            }
            _ => break,
        }
    }
    out.into()
}

/// Pulls message, code and param out of the error bodies OpenAI-compatible
/// servers send: `{"error":{"message",...}}`, `{"message"}`, `{"detail"}`.
pub(crate) fn error_fields(body: &[u8]) -> (String, Option<String>, Option<String>) {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    if let Ok(json) = serde_json::from_slice::<Value>(body) {
        let inner = json.get("error").filter(|e| e.is_object()).unwrap_or(&json);
        let message = text(inner.get("message"))
            .or_else(|| text(json.get("error")))
            .or_else(|| text(inner.get("detail")));
        if let Some(message) = message {
            let code = inner.get("code").and_then(|c| match c {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
            return (message, code, text(inner.get("param")));
        }
    }
    let raw = String::from_utf8_lossy(body);
    let trimmed: String = raw.trim().chars().take(300).collect();
    let message = if trimmed.is_empty() {
        "no error message".to_string()
    } else {
        trimmed
    };
    (message, None, None)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::{error_fields, retry_after_delay};

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        assert_eq!(retry_after_delay(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(retry_after_delay("1.2"), Some(Duration::from_secs(2)));
        assert_eq!(retry_after_delay("-1"), None);
        assert_eq!(retry_after_delay("soon"), None);
        let in_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60));
        let delay = retry_after_delay(&in_a_minute).unwrap();
        assert!(
            (Duration::from_secs(58)..=Duration::from_secs(60)).contains(&delay),
            "{delay:?}"
        );
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(60));
        assert_eq!(retry_after_delay(&past), Some(Duration::ZERO));
    }

    #[test]
    fn reads_the_common_error_shapes() {
        let cases: [(&[u8], &str, Option<&str>); 5] = [
            (br#"{"error":{"message":"too long","code":"context_length_exceeded","param":"messages"}}"#, "too long", Some("context_length_exceeded")),
            (br#"{"object":"error","message":"bad model","code":400}"#, "bad model", Some("400")),
            (br#"{"detail":"nope"}"#, "nope", None),
            (br#"{"error":"flat"}"#, "flat", None),
            (b"<html>oops</html>", "<html>oops</html>", None),
        ];
        for (body, message, code) in cases {
            let (m, c, _) = error_fields(body);
            assert_eq!(m, message);
            assert_eq!(c.as_deref(), code);
        }
    }
}
