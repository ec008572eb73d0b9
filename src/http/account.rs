//! What a user key may ask about itself: `GET /api/v1/key` (OpenRouter's
//! shape) and `GET /api/v1/generation?id=` (one request's usage record).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::value::RawValue;

use super::error::ApiError;
use super::views::{time, usd};
use crate::accounts::{now_ms, store_unavailable};
use crate::dates::{civil_from_days, DAY_MS};
use crate::gateway::error::{ErrorKind, GatewayError};
use crate::middleware::auth::AuthedKey;
use crate::state::AppState;

/// Starts of the current UTC day, ISO week (Monday) and month, in ms.
pub fn period_starts(now: i64) -> (i64, i64, i64) {
    let days = now.div_euclid(DAY_MS);
    // 1970-01-01 was a Thursday: weekday 3 counting Monday as 0.
    let weekday = (days + 3).rem_euclid(7);
    let (_, _, day_of_month) = civil_from_days(days);
    (
        days * DAY_MS,
        (days - weekday) * DAY_MS,
        (days - (day_of_month - 1)) * DAY_MS,
    )
}

pub async fn key_info(
    State(state): State<AppState>,
    Extension(AuthedKey(key)): Extension<AuthedKey>,
) -> Result<Response, ApiError> {
    // The cached record may be up to seconds old; money comes fresh.
    let fresh = state.accounts.get_key(&key.id).await?;
    let (day, week, month) = period_starts(now_ms());
    let usage = state
        .accounts
        .store
        .usage
        .summary(&key.id, day, week, month)
        .await
        .map_err(store_unavailable)?;
    /// OpenRouter's `requests` per `interval` (-1: no limit, as
    /// OpenRouter answers), and the gateway's own limits beside them.
    #[derive(Serialize)]
    struct RateLimit {
        requests: i64,
        requests_per_minute: Option<u32>,
        tokens_per_minute: Option<u32>,
        max_concurrent: Option<u32>,
        interval: &'static str,
    }
    #[derive(Serialize)]
    struct Info {
        label: String,
        name: String,
        /// Credit granted so far (remaining + used); null when unlimited.
        limit: Option<Box<RawValue>>,
        limit_remaining: Option<Box<RawValue>>,
        usage: Box<RawValue>,
        usage_daily: Box<RawValue>,
        usage_weekly: Box<RawValue>,
        usage_monthly: Box<RawValue>,
        requests: u64,
        is_free_tier: bool,
        expires_at: Option<String>,
        rate_limit: RateLimit,
    }
    #[derive(Serialize)]
    struct Out {
        data: Info,
    }
    Ok(Json(Out {
        data: Info {
            label: fresh.display.clone(),
            name: fresh.name.clone(),
            limit: fresh.balance.map(|b| usd(b.saturating_add(usage.total))),
            limit_remaining: fresh.balance.map(usd),
            usage: usd(usage.total),
            usage_daily: usd(usage.since_day),
            usage_weekly: usd(usage.since_week),
            usage_monthly: usd(usage.since_month),
            requests: usage.requests,
            is_free_tier: false,
            expires_at: fresh.expires_at.map(time),
            rate_limit: RateLimit {
                requests: fresh.limits.rpm.map_or(-1, i64::from),
                requests_per_minute: fresh.limits.rpm,
                tokens_per_minute: fresh.limits.tpm,
                max_concurrent: fresh.limits.max_concurrent,
                interval: "1m",
            },
        },
    })
    .into_response())
}

pub async fn generation(
    State(state): State<AppState>,
    Extension(AuthedKey(key)): Extension<AuthedKey>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let Some(id) = query.get("id").filter(|id| !id.is_empty()) else {
        return Err(GatewayError::bad_request(
            "missing_field",
            "Pass the request id: GET /api/v1/generation?id=<x-request-id of the request>.",
            Some("id"),
        )
        .into());
    };
    let record = state
        .accounts
        .store
        .usage
        .generation(&key.id, id)
        .await
        .map_err(store_unavailable)?
        .ok_or_else(|| {
            GatewayError::new(
                ErrorKind::NotFound,
                "generation_not_found",
                format!(
                    "No request {id:?} made with this key. Records appear when a request ends."
                ),
            )
        })?;
    #[derive(Serialize)]
    struct Generation {
        id: String,
        model: String,
        provider_name: String,
        created_at: String,
        tokens_prompt: u64,
        tokens_completion: u64,
        native_tokens_cached: u64,
        total_cost: Box<RawValue>,
        /// Milliseconds from the gateway receiving the request to its end.
        latency: u64,
        streamed: bool,
        cancelled: bool,
        status: u16,
        outcome: String,
        /// Web searches run for the request (their price is in total_cost).
        num_searches: u32,
        /// MCP tool calls the gateway ran for the request.
        num_mcp_calls: u32,
    }
    #[derive(Serialize)]
    struct Out {
        data: Generation,
    }
    Ok(Json(Out {
        data: Generation {
            id: record.request_id,
            model: record.model,
            provider_name: record.provider,
            created_at: time(record.created_at),
            tokens_prompt: record.prompt_tokens,
            tokens_completion: record.completion_tokens,
            native_tokens_cached: record.cached_tokens,
            total_cost: usd(record.cost),
            latency: record.latency_ms,
            streamed: record.streamed,
            cancelled: record.cancelled,
            num_searches: record.searches,
            num_mcp_calls: record.mcp_calls,
            status: record.status,
            outcome: record.outcome,
        },
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_start_at_utc_day_monday_and_first_of_month() {
        // 2026-11-25T13:00:00Z is a Wednesday.
        let now = 1_795_611_600_000;
        let (day, week, month) = period_starts(now);
        assert_eq!(time(day), "2026-11-25T00:00:00.000Z");
        assert_eq!(time(week), "2026-11-23T00:00:00.000Z");
        assert_eq!(time(month), "2026-11-01T00:00:00.000Z");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
