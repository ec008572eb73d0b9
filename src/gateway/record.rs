//! What one request did, filled in as it runs and read once when its
//! response ends: the access-log line and the response's rate-limit headers.

use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::ratelimit::LimitStatus;

/// Token counts reported by the upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
}

impl Usage {
    /// Reads an OpenAI `usage` object; `None` when there is none.
    pub fn from_json(usage: Option<&Value>) -> Option<Self> {
        let usage = usage.filter(|u| u.is_object())?;
        let count = |ptr: &str| usage.pointer(ptr).and_then(Value::as_u64).unwrap_or(0);
        Some(Self {
            prompt_tokens: count("/prompt_tokens"),
            completion_tokens: count("/completion_tokens"),
            cached_tokens: count("/prompt_tokens_details/cached_tokens"),
        })
    }
}

/// How the request ended, as far as the gateway knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Outcome {
    /// Still running (a response body not yet finished).
    #[default]
    Pending,
    Completed,
    /// Ended with the error of this `code`.
    Failed(&'static str),
}

#[derive(Debug, Clone, Default)]
pub struct RecordFields {
    /// The public id of the API key that made the request.
    pub key_id: Option<String>,
    /// The key's rate-limit state, for the `x-ratelimit-*` headers.
    pub rate_limits: Option<LimitStatus>,
    /// The answer was a stored one replayed for an `Idempotency-Key`.
    pub replayed: bool,
    pub model: Option<String>,
    pub provider: Option<String>,
    /// Upstream attempts made (retries and failovers included).
    pub attempts: u32,
    pub usage: Option<Usage>,
    pub streamed: bool,
    pub outcome: Outcome,
}

#[derive(Debug, Default)]
pub struct RequestRecord(Mutex<RecordFields>);

impl RequestRecord {
    pub fn update(&self, f: impl FnOnce(&mut RecordFields)) {
        // A poisoned lock only means another thread panicked mid-update;
        // the fields are plain data and still usable.
        let mut fields = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut fields);
    }

    /// Reads fields without cloning the whole record.
    pub fn read<T>(&self, f: impl FnOnce(&RecordFields) -> T) -> T {
        f(&self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn snapshot(&self) -> RecordFields {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Per-request facts the domain needs: the id clients quote, and the record.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: Arc<str>,
    pub record: Arc<RequestRecord>,
}

impl RequestContext {
    pub fn new(request_id: impl Into<Arc<str>>) -> Self {
        Self {
            request_id: request_id.into(),
            record: Arc::default(),
        }
    }
}
