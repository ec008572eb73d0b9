//! Admin routes (the admin secret is checked by `middleware::auth`):
//! keys (create, list, get, update, delete), credit top-ups and
//! adjustments, totals. Input is parsed strictly here, then handed to
//! `Accounts`, which holds the rules the CLI shares.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::extract::{BodyBytes, PathId};
use super::views::{usd, KeyView};
use crate::accounts::{store_unavailable, KeySpec};
use crate::config::{parse_signed_usd, NanoUsd};
use crate::gateway::error::GatewayError;
use crate::state::AppState;
use crate::store::{CreditKind, KeyLimits, KeyPatch};

const MAX_PAGE: u64 = 1000;

fn bad(param: &str, message: impl Into<String>) -> GatewayError {
    GatewayError::bad_request("invalid_field", message, Some(param))
}

/// The body as a JSON object whose keys are all in `allowed`.
fn object(body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, GatewayError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::bad_request(
            "invalid_json",
            format!("The request body is not valid JSON ({e})."),
            None,
        )
    })?;
    let Value::Object(map) = value else {
        return Err(GatewayError::bad_request(
            "invalid_type",
            "The request body must be a JSON object.",
            None,
        ));
    };
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad(
            unknown,
            format!(
                "Unknown field `{unknown}`. Allowed: {}.",
                allowed.join(", ")
            ),
        ));
    }
    Ok(map)
}

/// A USD amount sent as a string ("5.00") or a number (5).
fn amount(value: &Value, param: &str) -> Result<NanoUsd, GatewayError> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => {
            return Err(bad(
                param,
                format!("`{param}` must be a USD amount such as \"5.00\"."),
            ))
        }
    };
    parse_signed_usd(&text).map_err(|e| bad(param, format!("`{param}`: {e}")))
}

/// An optional limit: a positive integer, or null for none.
fn limit(value: &Value, param: &str) -> Result<Option<u32>, GatewayError> {
    match value {
        Value::Null => Ok(None),
        v => v
            .as_u64()
            .filter(|n| (1..=u64::from(u32::MAX)).contains(n))
            .map(|n| Some(n as u32))
            .ok_or_else(|| {
                bad(
                    param,
                    format!("`{param}` must be a positive whole number, or null for no limit."),
                )
            }),
    }
}

/// An expiry: RFC 3339 text, or null for never.
fn expiry(value: &Value) -> Result<Option<i64>, GatewayError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => humantime::parse_rfc3339_weak(s)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| Some(d.as_millis() as i64))
            .ok_or_else(|| bad("expires_at", "`expires_at` must be an RFC 3339 time such as \"2027-01-31T00:00:00Z\", or null.")),
        _ => Err(bad("expires_at", "`expires_at` must be an RFC 3339 string or null.")),
    }
}

fn string_list(value: &Value, param: &str) -> Result<Vec<String>, GatewayError> {
    value
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect()
        })
        .ok_or_else(|| {
            bad(
                param,
                format!("`{param}` must be an array of strings such as [\"openai/*\"]."),
            )
        })
}

fn metadata(value: &Value) -> Result<Value, GatewayError> {
    match value {
        Value::Object(_) if value.to_string().len() <= 16 * 1024 => Ok(value.clone()),
        _ => Err(bad(
            "metadata",
            "`metadata` must be a JSON object of at most 16 KiB.",
        )),
    }
}

const CREATE_FIELDS: &[&str] = &[
    "name",
    "credits",
    "rpm",
    "tpm",
    "max_concurrent",
    "models",
    "expires_at",
    "metadata",
];

pub async fn create_key(
    State(state): State<AppState>,
    BodyBytes(body): BodyBytes,
) -> Result<Response, ApiError> {
    let map = object(&body, CREATE_FIELDS)?;
    let name = map.get("name").and_then(Value::as_str).ok_or_else(|| {
        bad(
            "name",
            "`name` is required: a label for the key, such as \"ci-bot\".",
        )
    })?;
    let null = Value::Null;
    let field = |k: &str| map.get(k).unwrap_or(&null);
    let credits = match field("credits") {
        Value::Null => None,
        v => Some(amount(v, "credits")?),
    };
    let spec = KeySpec {
        name: name.to_string(),
        credits,
        limits: KeyLimits {
            rpm: limit(field("rpm"), "rpm")?,
            tpm: limit(field("tpm"), "tpm")?,
            max_concurrent: limit(field("max_concurrent"), "max_concurrent")?,
        },
        models: match field("models") {
            Value::Null => Vec::new(),
            v => string_list(v, "models")?,
        },
        expires_at: expiry(field("expires_at"))?,
        metadata: match field("metadata") {
            Value::Null => None,
            v => Some(metadata(v)?),
        },
    };
    let (record, plain) = state.accounts.create_key(spec).await?;
    #[derive(Serialize)]
    struct Created<'a> {
        data: KeyView,
        /// The plaintext key: shown here once, never again.
        key: &'a str,
    }
    let body = Created {
        data: KeyView::from(&record),
        key: plain.reveal(),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// A whole number from the query string (`None` when absent); anything
/// else is a 400 naming the parameter.
fn query_count(query: &HashMap<String, String>, name: &str) -> Result<Option<u64>, GatewayError> {
    query
        .get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                bad(
                    name,
                    format!("`{name}` must be a whole number of 0 or more, not {v:?}."),
                )
            })
        })
        .transpose()
}

pub async fn list_keys(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let offset = query_count(&query, "offset")?.unwrap_or(0);
    let limit = query_count(&query, "limit")?
        .unwrap_or(100)
        .clamp(1, MAX_PAGE);
    let keys = state
        .accounts
        .store
        .keys
        .list_keys(offset, limit + 1)
        .await
        .map_err(store_unavailable)?;
    let more = keys.len() as u64 > limit;
    #[derive(Serialize)]
    struct List {
        data: Vec<KeyView>,
        offset: u64,
        limit: u64,
        next_offset: Option<u64>,
    }
    Ok(Json(List {
        data: keys
            .iter()
            .take(limit as usize)
            .map(KeyView::from)
            .collect(),
        offset,
        limit,
        next_offset: more.then_some(offset + limit),
    })
    .into_response())
}

/// `KeyView` holds exact USD as raw JSON, so it is serialized directly.
fn key_response(record: &crate::store::KeyRecord) -> Response {
    #[derive(Serialize)]
    struct One {
        data: KeyView,
    }
    Json(One {
        data: KeyView::from(record),
    })
    .into_response()
}

pub async fn get_key(
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    Ok(key_response(&state.accounts.get_key(&id).await?))
}

const PATCH_FIELDS: &[&str] = &[
    "name",
    "disabled",
    "rpm",
    "tpm",
    "max_concurrent",
    "models",
    "expires_at",
    "metadata",
];

pub async fn update_key(
    State(state): State<AppState>,
    PathId(id): PathId,
    BodyBytes(body): BodyBytes,
) -> Result<Response, ApiError> {
    let map = object(&body, PATCH_FIELDS)?;
    let mut patch = KeyPatch::default();
    for (k, v) in &map {
        match k.as_str() {
            "name" => {
                patch.name = Some(
                    v.as_str()
                        .ok_or_else(|| bad("name", "`name` must be a string."))?
                        .to_string(),
                )
            }
            "disabled" => {
                patch.disabled = Some(
                    v.as_bool()
                        .ok_or_else(|| bad("disabled", "`disabled` must be true or false."))?,
                )
            }
            "rpm" => patch.rpm = Some(limit(v, "rpm")?),
            "tpm" => patch.tpm = Some(limit(v, "tpm")?),
            "max_concurrent" => patch.max_concurrent = Some(limit(v, "max_concurrent")?),
            "models" => patch.models = Some(string_list(v, "models")?),
            "expires_at" => patch.expires_at = Some(expiry(v)?),
            "metadata" => patch.metadata = Some(metadata(v)?),
            _ => unreachable!("object() allows only PATCH_FIELDS"),
        }
    }
    Ok(key_response(&state.accounts.update_key(&id, patch).await?))
}

pub async fn delete_key(
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Value>, ApiError> {
    state.accounts.delete_key(&id).await?;
    Ok(Json(json!({"data": {"id": id, "deleted": true}})))
}

pub async fn credit_key(
    State(state): State<AppState>,
    PathId(id): PathId,
    BodyBytes(body): BodyBytes,
) -> Result<Response, ApiError> {
    let map = object(&body, &["amount", "kind", "note"])?;
    let amount = amount(
        map.get("amount")
            .ok_or_else(|| bad("amount", "`amount` is required: USD such as \"5.00\"."))?,
        "amount",
    )?;
    let kind = match map.get("kind") {
        None | Some(Value::Null) => CreditKind::TopUp,
        Some(Value::String(kind)) if kind == "topup" => CreditKind::TopUp,
        Some(Value::String(kind)) if kind == "adjust" => CreditKind::Adjust,
        // Anything else, a string or not, is refused: a typo must not
        // move money as a top-up.
        Some(_) => {
            return Err(bad(
                "kind",
                "`kind` must be \"topup\" (the default) or \"adjust\".",
            )
            .into())
        }
    };
    let note = match map.get("note") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= 1000 => Some(s.as_str()),
        Some(_) => {
            return Err(bad("note", "`note` must be a string of at most 1000 bytes.").into())
        }
    };
    let balance = state.accounts.credit(&id, kind, amount, note).await?;
    #[derive(Serialize)]
    struct Credited {
        id: String,
        balance: Box<RawValue>,
    }
    #[derive(Serialize)]
    struct Out {
        data: Credited,
    }
    Ok(Json(Out {
        data: Credited {
            id,
            balance: usd(balance),
        },
    })
    .into_response())
}

pub async fn credits(State(state): State<AppState>) -> Result<Response, ApiError> {
    let t = state
        .accounts
        .store
        .credits
        .totals()
        .await
        .map_err(store_unavailable)?;
    #[derive(Serialize)]
    struct Totals {
        /// Credit ever granted (top-ups and adjustments), USD.
        total_credits: Box<RawValue>,
        /// Credit ever charged for requests, USD.
        total_usage: Box<RawValue>,
        /// Available now, summed over keys with a balance.
        balance: Box<RawValue>,
        /// Held by requests in flight.
        held: Box<RawValue>,
        active_holds: u64,
        keys: u64,
        unlimited_keys: u64,
    }
    #[derive(Serialize)]
    struct Out {
        data: Totals,
    }
    Ok(Json(Out {
        data: Totals {
            total_credits: usd(t.credited),
            total_usage: usd(t.spent),
            balance: usd(t.balance),
            held: usd(t.held),
            active_holds: t.active_holds,
            keys: t.keys,
            unlimited_keys: t.unlimited_keys,
        },
    })
    .into_response())
}

/// `GET /api/v1/providers`: every model endpoint and its circuit state.
pub async fn providers(State(state): State<AppState>) -> Json<Value> {
    Json(state.gateway.endpoint_health())
}

/// `GET /metrics`: Prometheus text exposition (admin only).
pub async fn metrics() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
        .into_response()
}
