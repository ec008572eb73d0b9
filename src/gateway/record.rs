//! What one request did, filled in as it runs and read once when its
//! response ends: the access-log line and the response's rate-limit headers.

use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::json::RawObject;
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

    /// The same counts as [`Usage::from_json`], read from a `usage` object
    /// split by [`RawObject`] without building a tree: a count that is
    /// missing or not a non-negative integer reads as 0.
    pub fn from_raw(usage: &RawObject<'_>) -> Self {
        fn count(object: &RawObject<'_>, key: &str) -> u64 {
            object
                .get(key)
                .and_then(|v| serde_json::from_str::<u64>(v.get()).ok())
                .unwrap_or(0)
        }
        let details = usage
            .get("prompt_tokens_details")
            .and_then(|d| RawObject::parse(d.get().as_bytes()).ok());
        Self {
            prompt_tokens: count(usage, "prompt_tokens"),
            completion_tokens: count(usage, "completion_tokens"),
            cached_tokens: details.map_or(0, |d| count(&d, "cached_tokens")),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_raw_usage_agrees_with_reading_a_tree() {
        let cases = [
            r#"{"prompt_tokens":8,"completion_tokens":6,"total_tokens":14}"#,
            r#"{"prompt_tokens":8,"completion_tokens":6,"prompt_tokens_details":{"cached_tokens":3}}"#,
            r#"{"prompt_tokens":1,"prompt_tokens":9}"#,
            r#"{"prompt_tokens":-1,"completion_tokens":2.5,"prompt_tokens_details":null}"#,
            r#"{"prompt_tokens":"8","completion_tokens":1e3,"prompt_tokens_details":{"cached_tokens":"2"}}"#,
            r#"{"prompt_tokens":18446744073709551616,"prompt_tokens_details":[1]}"#,
            r#"{"prompt_tokens_details":{"cached_tokens":4},"completion_tokens":  7 }"#,
            r#"{}"#,
        ];
        for case in cases {
            let tree: Value = serde_json::from_str(case).unwrap();
            let raw = RawObject::parse(case.as_bytes()).unwrap();
            assert_eq!(
                Some(Usage::from_raw(&raw)),
                Usage::from_json(Some(&tree)),
                "{case}"
            );
        }
        let raw = RawObject::parse(cases[1].as_bytes()).unwrap();
        assert_eq!(
            Usage::from_raw(&raw),
            Usage {
                prompt_tokens: 8,
                completion_tokens: 6,
                cached_tokens: 3
            }
        );
    }
}
