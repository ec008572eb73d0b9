//! Authentication, deny by default. Every path is a user route (a user key
//! is required) unless it is on the short public list or is an admin route
//! (the admin secret is required). Unknown and oddly spelled paths are
//! user routes, so they answer 401 before they can answer 404 (PR-05).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::accounts::keys::PlainKey;
use crate::accounts::Accounts;
use crate::gateway::error::{ErrorKind, GatewayError};
use crate::gateway::record::RequestContext;
use crate::http::error::ApiError;
use crate::store::KeyRecord;

/// Who may call a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    User,
    Admin,
}

/// The authenticated key of a user route, for handlers.
#[derive(Debug, Clone)]
pub struct AuthedKey(pub Arc<KeyRecord>);

/// The one list of who may call what; anything not named is a user route.
pub fn access_of(path: &str) -> Access {
    match path {
        "/health" | "/ready" | "/api/v1/models" => Access::Public,
        "/api/v1/keys" | "/api/v1/credits" | "/api/v1/providers" | "/metrics" => Access::Admin,
        p if p.starts_with("/api/v1/models/") => Access::Public,
        p if p.starts_with("/api/v1/keys/") => Access::Admin,
        _ => Access::User,
    }
}

/// The token from `Authorization: Bearer …`, else from `x-api-key`.
fn token(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let value = value.trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(rest.trim());
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

pub async fn layer(
    State(accounts): State<Arc<Accounts>>,
    mut req: Request,
    next: Next,
) -> Response {
    match access_of(req.uri().path()) {
        Access::Public => next.run(req).await,
        Access::Admin => match admin(&accounts, token(req.headers())) {
            Ok(()) => next.run(req).await,
            Err(e) => ApiError(e).into_response(),
        },
        Access::User => match accounts.authenticate(token(req.headers())).await {
            Ok(key) => {
                if let Some(ctx) = req.extensions().get::<RequestContext>() {
                    ctx.record.update(|r| r.key_id = Some(key.id.clone()));
                }
                req.extensions_mut().insert(AuthedKey(key));
                next.run(req).await
            }
            Err(e) => ApiError(e).into_response(),
        },
    }
}

fn admin(accounts: &Accounts, token: Option<&str>) -> Result<(), GatewayError> {
    if !accounts.admin_enabled() {
        return Err(GatewayError::new(
            ErrorKind::Unauthorized,
            "admin_disabled",
            "The admin API is off: the gateway was started without MUME_ADMIN_KEY. Set it and restart to manage keys over HTTP, or use the `mume-gateway keys` CLI.",
        ));
    }
    match token.filter(|t| !t.is_empty()) {
        None => Err(GatewayError::new(
            ErrorKind::Unauthorized,
            "missing_admin_key",
            "Admin routes need the admin key: send `Authorization: Bearer <MUME_ADMIN_KEY>`.",
        )),
        Some(t) if accounts.is_admin(t) => Ok(()),
        Some(t) if PlainKey::parse(t).is_ok() => Err(GatewayError::new(
            ErrorKind::Forbidden,
            "permission_denied",
            "User API keys cannot call admin routes. Use the admin key (MUME_ADMIN_KEY).",
        )),
        Some(_) => Err(GatewayError::new(
            ErrorKind::Unauthorized,
            "invalid_admin_key",
            "The admin key is wrong. Send the value of MUME_ADMIN_KEY the gateway was started with.",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_paths_are_public_or_admin() {
        assert_eq!(access_of("/api/v1/models"), Access::Public);
        assert_eq!(access_of("/api/v1/models/openai/gpt-4.1"), Access::Public);
        assert_eq!(access_of("/api/v1/keys"), Access::Admin);
        assert_eq!(access_of("/api/v1/keys/abc/credits"), Access::Admin);
        assert_eq!(access_of("/api/v1/credits"), Access::Admin);
        for tricky in [
            "//api/v1/keys",
            "/api/v1/../keys",
            "/api/v1%2Fkeys",
            "/API/V1/KEYS",
            "/api/v1/key",
            "/api/v1/chat/completions",
            "/anything",
        ] {
            assert_eq!(access_of(tricky), Access::User, "{tricky}");
        }
    }

    #[test]
    fn bearer_and_x_api_key_are_both_read() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(token(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert("authorization", "bearer  abc ".parse().unwrap());
        assert_eq!(token(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "xyz".parse().unwrap());
        assert_eq!(token(&h), Some("xyz"));
        assert_eq!(token(&HeaderMap::new()), None);
    }
}
