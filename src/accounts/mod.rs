//! API keys and the people who hold them: authentication (with a short
//! cache in front of the store), the admin secret, and the key operations
//! the admin API and the CLI share (create, update, credit), with their
//! input rules. No HTTP types here.

pub mod keys;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::config::{usd_string, NanoUsd};
use crate::gateway::error::{ErrorKind, GatewayError};
use crate::store::{
    CreditKind, CreditResult, KeyLimits, KeyPatch, KeyRecord, NewKey, Store, StoreError,
};
use keys::{KeyHash, Malformed, PlainKey};

/// How long an authenticated key is trusted without asking the store.
/// Changes made through this instance take effect at once (the cache is
/// cleared); changes made elsewhere within this time.
const CACHE_TTL: Duration = Duration::from_secs(2);
const CACHE_MAX: usize = 10_000;
/// The most credit one top-up or adjustment may move: $1,000,000.
pub const MAX_CREDIT_CHANGE: NanoUsd = 1_000_000 * 1_000_000_000;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The admin secret, kept only as its SHA-256 and compared in constant time.
pub struct AdminSecret(KeyHash);

impl AdminSecret {
    pub fn new(secret: &str) -> Self {
        Self(keys::hash_token(secret))
    }

    pub fn matches(&self, token: &str) -> bool {
        keys::hash_token(token).ct_eq(&self.0).into()
    }
}

/// The store failing, as clients see it: 503, and never a detail of it.
pub fn store_unavailable(e: StoreError) -> GatewayError {
    GatewayError::unavailable(
        "store_unavailable",
        "The gateway's key and credit store is unavailable, so the request was not sent. Retry with backoff.",
    )
    .with_detail(e.to_string())
    .with_retry_after(Duration::from_secs(1))
}

fn unauthorized(code: &'static str, message: impl Into<String>) -> GatewayError {
    GatewayError::new(ErrorKind::Unauthorized, code, message)
}

/// Settings for a new key, already validated by the caller's parser.
#[derive(Debug, Clone, Default)]
pub struct KeySpec {
    pub name: String,
    /// `None`: unlimited credit.
    pub credits: Option<NanoUsd>,
    pub limits: KeyLimits,
    pub models: Vec<String>,
    pub expires_at: Option<i64>,
    pub metadata: Option<Value>,
}

pub struct Accounts {
    pub store: Store,
    admin: Option<AdminSecret>,
    cache: Mutex<KeyCache>,
}

/// Keys read recently, and how many times the cache was cleared: a record
/// read from the store before a clear (an admin change on this instance)
/// is not cached after it.
#[derive(Default)]
struct KeyCache {
    keys: HashMap<KeyHash, (Arc<KeyRecord>, Instant)>,
    clears: u64,
}

impl Accounts {
    pub fn new(store: Store, admin: Option<AdminSecret>) -> Self {
        Self {
            store,
            admin,
            cache: Mutex::default(),
        }
    }

    pub fn admin_enabled(&self) -> bool {
        self.admin.is_some()
    }

    pub fn is_admin(&self, token: &str) -> bool {
        self.admin.as_ref().is_some_and(|a| a.matches(token))
    }

    /// The key a user route was called with, or the 401 that says exactly
    /// what is wrong with it. A malformed token never reaches the store.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Arc<KeyRecord>, GatewayError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(unauthorized(
                "missing_api_key",
                "No API key was sent. Send it as `Authorization: Bearer sk-mume-…` (or in the `x-api-key` header).",
            ));
        };
        if self.is_admin(token) {
            return Err(unauthorized(
                "admin_key_not_allowed",
                "This is the gateway's admin key; it manages keys and cannot call models. Create a user key with POST /api/v1/keys and use that.",
            ));
        }
        let key = PlainKey::parse(token).map_err(|why| {
            let what = match why {
                Malformed::Prefix => "it does not start with `sk-mume-`",
                Malformed::Length => "it has the wrong length (truncated or padded?)",
                Malformed::Alphabet => "it contains characters a key never has",
                Malformed::Checksum => "its checksum does not match (a typo?)",
            };
            unauthorized(
                "malformed_api_key",
                format!("The API key is malformed: {what}. Copy the whole key, exactly as it was shown when created."),
            )
        })?;
        let hash = key.hash();
        let record = match self.cached(&hash) {
            Ok(record) => record,
            Err(clears) => {
                let found = self
                    .store
                    .keys
                    .key_by_hash(&hash)
                    .await
                    .map_err(store_unavailable)?;
                let Some(found) = found else {
                    return Err(unauthorized(
                        "invalid_api_key",
                        "The API key is not known to this gateway (it may have been deleted). Check which key you are using, or ask the operator for a new one.",
                    ));
                };
                let found = Arc::new(found);
                self.remember(hash, found.clone(), clears);
                found
            }
        };
        if record.disabled {
            return Err(unauthorized(
                "key_disabled",
                format!(
                    "The API key {} is disabled. Ask the gateway operator to enable it.",
                    record.display
                ),
            ));
        }
        if let Some(expired) = record.expires_at.filter(|at| *at <= now_ms()) {
            return Err(unauthorized(
                "key_expired",
                format!(
                    "The API key {} expired at {} (Unix ms). Ask the operator to extend it or issue a new key.",
                    record.display, expired
                ),
            ));
        }
        Ok(record)
    }

    /// The cached record, or (`Err`) the number of clears so far, for
    /// `remember`.
    fn cached(&self, hash: &KeyHash) -> Result<Arc<KeyRecord>, u64> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .keys
            .get(hash)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(record, _)| record.clone())
            .ok_or(cache.clears)
    }

    /// Caches a record read from the store, unless the cache was cleared
    /// since the read began (`clears` then differs): the record may be one
    /// an admin change has just replaced.
    fn remember(&self, hash: KeyHash, record: Arc<KeyRecord>, clears: u64) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.clears != clears {
            return;
        }
        if cache.keys.len() >= CACHE_MAX {
            cache.keys.clear();
        }
        cache.keys.insert(hash, (record, Instant::now()));
    }

    /// Forget every cached key, so an admin change applies to the next request.
    pub fn forget_cached(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.keys.clear();
        cache.clears += 1;
    }

    /// Creates a key; the plaintext is returned once and never stored.
    pub async fn create_key(&self, spec: KeySpec) -> Result<(KeyRecord, PlainKey), GatewayError> {
        validate_spec(&spec)?;
        let plain = PlainKey::generate();
        let record = KeyRecord {
            id: plain.id().to_string(),
            name: spec.name,
            display: plain.display(),
            created_at: now_ms(),
            disabled: false,
            expires_at: spec.expires_at,
            balance: spec.credits,
            limits: spec.limits,
            models: spec.models,
            metadata: spec
                .metadata
                .unwrap_or_else(|| Value::Object(Default::default())),
        };
        self.store
            .keys
            .insert_key(NewKey {
                record: record.clone(),
                hash: plain.hash(),
            })
            .await
            .map_err(store_unavailable)?;
        Ok((record, plain))
    }

    pub async fn get_key(&self, id: &str) -> Result<KeyRecord, GatewayError> {
        self.store
            .keys
            .key_by_id(id)
            .await
            .map_err(store_unavailable)?
            .ok_or_else(|| no_such_key(id))
    }

    pub async fn update_key(&self, id: &str, patch: KeyPatch) -> Result<KeyRecord, GatewayError> {
        if let Some(models) = &patch.models {
            validate_patterns(models)?;
        }
        if let Some(name) = &patch.name {
            validate_name(name)?;
        }
        validate_limits([
            ("rpm", patch.rpm.flatten()),
            ("tpm", patch.tpm.flatten()),
            ("max_concurrent", patch.max_concurrent.flatten()),
        ])?;
        let updated = self
            .store
            .keys
            .update_key(id, &patch)
            .await
            .map_err(store_unavailable)?
            .ok_or_else(|| no_such_key(id))?;
        self.forget_cached();
        Ok(updated)
    }

    pub async fn delete_key(&self, id: &str) -> Result<(), GatewayError> {
        let deleted = self
            .store
            .keys
            .delete_key(id)
            .await
            .map_err(store_unavailable)?;
        self.forget_cached();
        if deleted {
            Ok(())
        } else {
            Err(no_such_key(id))
        }
    }

    /// A top-up (positive) or an adjustment (either sign), via the ledger.
    pub async fn credit(
        &self,
        id: &str,
        kind: CreditKind,
        amount: NanoUsd,
        note: Option<&str>,
    ) -> Result<NanoUsd, GatewayError> {
        let bad =
            |message: String| GatewayError::bad_request("invalid_amount", message, Some("amount"));
        if kind == CreditKind::TopUp && amount <= 0 {
            return Err(bad("A top-up must be a positive amount of USD, e.g. \"5.00\". Use kind \"adjust\" to take credit away.".into()));
        }
        if amount == 0 || amount.unsigned_abs() > MAX_CREDIT_CHANGE as u64 {
            return Err(bad(format!(
                "The amount must be non-zero and at most {} USD either way.",
                usd_string(MAX_CREDIT_CHANGE)
            )));
        }
        match self
            .store
            .credits
            .credit(id, kind, amount, note, now_ms())
            .await
            .map_err(store_unavailable)?
        {
            CreditResult::Applied { balance } => Ok(balance),
            CreditResult::NoKey => Err(no_such_key(id)),
            CreditResult::Unlimited => Err(GatewayError::bad_request(
                "unlimited_key",
                format!("Key {id} has unlimited credit; there is no balance to change."),
                None,
            )),
            CreditResult::OutOfRange { balance } => Err(bad(format!(
                "That would take key {id}'s balance of {} USD below zero or past the maximum.",
                usd_string(balance)
            ))),
        }
    }
}

pub fn no_such_key(id: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::NotFound,
        "key_not_found",
        format!("There is no key with id {id:?}. GET /api/v1/keys (or `mume-gateway keys list`) lists the ids."),
    )
}

fn validate_name(name: &str) -> Result<(), GatewayError> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(GatewayError::bad_request(
            "invalid_name",
            "A key's name must be 1 to 200 characters.",
            Some("name"),
        ));
    }
    Ok(())
}

/// A limit is a positive count; no limit is `None`. (A limit of 0 would
/// refuse every request while telling clients to retry.)
fn validate_limits(limits: [(&str, Option<u32>); 3]) -> Result<(), GatewayError> {
    match limits.into_iter().find(|(_, v)| *v == Some(0)) {
        Some((name, _)) => Err(GatewayError::bad_request(
            "invalid_field",
            format!("`{name}` must be a positive whole number; leave it out for no limit."),
            Some(name),
        )),
        None => Ok(()),
    }
}

fn validate_patterns(models: &[String]) -> Result<(), GatewayError> {
    if models.len() > 100 {
        return Err(GatewayError::bad_request(
            "invalid_models",
            "At most 100 model patterns per key.",
            Some("models"),
        ));
    }
    for p in models {
        let valid = !p.is_empty()
            && p.len() <= 200
            && p.matches('*').count() <= 1
            && (!p.contains('*') || p.ends_with('*'));
        if !valid {
            return Err(GatewayError::bad_request(
                "invalid_models",
                format!("{p:?} is not a model pattern. Use an exact id (\"openai/gpt-4.1-mini\") or a prefix ending in * (\"openai/*\")."),
                Some("models"),
            ));
        }
    }
    Ok(())
}

fn validate_spec(spec: &KeySpec) -> Result<(), GatewayError> {
    validate_name(&spec.name)?;
    validate_patterns(&spec.models)?;
    let l = spec.limits;
    validate_limits([
        ("rpm", l.rpm),
        ("tpm", l.tpm),
        ("max_concurrent", l.max_concurrent),
    ])?;
    if let Some(credits) = spec.credits {
        if !(0..=MAX_CREDIT_CHANGE).contains(&credits) {
            return Err(GatewayError::bad_request(
                "invalid_amount",
                format!(
                    "Initial credit must be from 0 to {} USD.",
                    usd_string(MAX_CREDIT_CHANGE)
                ),
                Some("credits"),
            ));
        }
    }
    Ok(())
}

/// Whether a key's model patterns allow `model` (no patterns: all models).
pub fn model_allowed(patterns: &[String], model: &str) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => model.starts_with(prefix),
            None => p == model,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_ids_and_prefixes() {
        let p = vec!["openai/*".to_string(), "mock/echo".to_string()];
        assert!(model_allowed(&p, "openai/gpt-4.1-mini"));
        assert!(model_allowed(&p, "mock/echo"));
        assert!(!model_allowed(&p, "mock/slow"));
        assert!(model_allowed(&[], "anything/at-all"));
        assert!(validate_patterns(&["a/*/b*".into()]).is_err());
        assert!(validate_patterns(&["a*b".into()]).is_err());
    }

    /// An admin change on this instance lands while a request reads the
    /// key from the store: the record it read (the one before the change)
    /// is not cached, so the change applies to the very next request.
    #[tokio::test]
    async fn a_key_read_before_a_change_is_not_cached_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&crate::store::StoreOptions {
            url: None,
            path: dir.path().join("k.db"),
            busy_timeout: Duration::from_secs(1),
        })
        .await
        .unwrap();
        let accounts = Accounts::new(store, None);
        let spec = KeySpec {
            name: "k".into(),
            credits: None,
            limits: Default::default(),
            models: Vec::new(),
            expires_at: None,
            metadata: None,
        };
        let (before, plain) = accounts.create_key(spec).await.unwrap();
        let hash = plain.hash();
        let clears = accounts.cached(&hash).unwrap_err();
        // The read is under way; the key is disabled and the cache cleared.
        accounts.forget_cached();
        accounts.remember(hash, Arc::new(before), clears);
        assert!(accounts.cached(&hash).is_err(), "the old record was cached");
        // A read that began after the change is cached.
        let clears = accounts.cached(&hash).unwrap_err();
        let now = accounts.authenticate(Some(plain.reveal())).await.unwrap();
        accounts.remember(hash, now, clears);
        assert!(accounts.cached(&hash).is_ok());
    }

    #[test]
    fn admin_secret_matches_only_itself() {
        let a = AdminSecret::new("correct horse");
        assert!(a.matches("correct horse"));
        assert!(!a.matches("correct hors"));
        assert!(!a.matches(""));
    }
}
