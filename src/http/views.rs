//! JSON shapes shared by the key, credit and usage routes. Money goes out
//! as exact decimal JSON numbers (USD), written from integer nano-USD.

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::config::{usd_string, NanoUsd};
use crate::store::KeyRecord;

/// A USD amount as an exact JSON number.
pub fn usd(nano: NanoUsd) -> Box<RawValue> {
    RawValue::from_string(usd_string(nano)).expect("a decimal is a JSON number")
}

/// Unix milliseconds as RFC 3339 (UTC).
pub fn time(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

#[derive(Serialize)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    /// `sk-mume-…abcd`
    pub label: String,
    pub created_at: String,
    pub disabled: bool,
    pub expires_at: Option<String>,
    /// Available credit in USD; null for unlimited.
    pub balance: Option<Box<RawValue>>,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub max_concurrent: Option<u32>,
    pub models: Vec<String>,
    pub metadata: Value,
}

impl From<&KeyRecord> for KeyView {
    fn from(k: &KeyRecord) -> Self {
        Self {
            id: k.id.clone(),
            name: k.name.clone(),
            label: k.display.clone(),
            created_at: time(k.created_at),
            disabled: k.disabled,
            expires_at: k.expires_at.map(time),
            balance: k.balance.map(usd),
            rpm: k.limits.rpm,
            tpm: k.limits.tpm,
            max_concurrent: k.limits.max_concurrent,
            models: k.models.clone(),
            metadata: k.metadata.clone(),
        }
    }
}
