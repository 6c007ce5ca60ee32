//! Login, logout, the session extractor and the CSRF check.
//!
//! Every API handler takes a [`Caller`]: extracting it finds the session from the cookie,
//! reads the user's *current* role from Postgres (a demoted or deleted user loses access at
//! once), and, for any method other than GET/HEAD, checks the `X-CSRF-Token` header against
//! the session's token. So no state-changing route can forget CSRF; each handler then states
//! the least role it needs with [`Caller::at_least`].
//!
//! Login answers the same 401 for an unknown name and a wrong password, after a hash
//! verification either way, and is limited per client address and per name (known or not)
//! through sluice-resilience's Redis limiter, so replicas share the count.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json,
    extract::{ConnectInfo, FromRequestParts, State},
    http::{HeaderMap, HeaderValue, Method, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;

use crate::{
    AppState,
    error::ApiError,
    sessions::{Session, same},
    users::Role,
};

/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// An authenticated request's session and role.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The session.
    pub session: Session,
    /// The user's role now.
    pub role: Role,
}

impl Caller {
    /// `Forbidden` unless the role is `min` or above.
    pub fn at_least(&self, min: Role) -> Result<(), ApiError> {
        if self.role >= min {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

/// The value of cookie `name`, if the request has it.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let id =
            cookie(&parts.headers, &state.config.cookie_name).ok_or(ApiError::Unauthenticated)?;
        let session = state
            .sessions
            .get(id)
            .await?
            .ok_or(ApiError::Unauthenticated)?;
        let role = state
            .users
            .role(&session.user)
            .await?
            .ok_or(ApiError::Unauthenticated)?;
        if !matches!(parts.method, Method::GET | Method::HEAD) {
            let sent = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !same(sent, &session.csrf) {
                state.metrics.csrf_refused.inc();
                return Err(ApiError::Csrf);
            }
        }
        Ok(Self { session, role })
    }
}

/// `POST /api/login` body.
#[derive(Deserialize)]
pub(crate) struct Login {
    name: String,
    password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("name", &self.name).finish()
    }
}

fn limited(err: sluice_resilience::Error) -> ApiError {
    match err.retry_after() {
        Some(wait) => ApiError::RateLimited(wait),
        None => ApiError::Unavailable("redis"),
    }
}

/// Logs in: a new session (the old one, if any, is deleted: the id changes at login).
pub(crate) async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<Login>,
) -> Result<Response, ApiError> {
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.len() > 64 || body.password.len() > 1024 {
        state.metrics.login_failures.inc();
        return Err(ApiError::BadCredentials);
    }
    state
        .login_per_ip
        .check(&peer.ip().to_string())
        .await
        .map_err(limited)?;
    state
        .login_per_user
        .check(&name.to_lowercase())
        .await
        .map_err(limited)?;
    let Some(role) = state.users.authenticate(&name, &body.password).await? else {
        state.metrics.login_failures.inc();
        tracing::info!(user = %name, peer = %peer.ip(), "login refused");
        return Err(ApiError::BadCredentials);
    };
    if let Some(old) = cookie(&headers, &state.config.cookie_name) {
        state.sessions.delete(old).await?;
    }
    let session = state.sessions.create(&name).await?;
    tracing::info!(user = %name, %role, "logged in");
    let cookie = session_cookie(&state, &session.id, state.config.session_absolute_secs);
    let body = json!({"name": name, "role": role, "csrf": session.csrf});
    Ok(([(header::SET_COOKIE, cookie)], Json(body)).into_response())
}

/// Logs out: deletes the session server-side and clears the cookie.
pub(crate) async fn logout(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    state.sessions.delete(&caller.session.id).await?;
    let cookie = session_cookie(&state, "", 0);
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({"status": "logged_out"})),
    )
        .into_response())
}

/// Who is logged in, with the CSRF token for the page.
pub(crate) async fn me(caller: Caller) -> Json<serde_json::Value> {
    Json(json!({
        "name": caller.session.user,
        "role": caller.role,
        "csrf": caller.session.csrf,
    }))
}

fn session_cookie(state: &AppState, value: &str, max_age: u64) -> HeaderValue {
    let c = &state.config;
    let secure = if c.cookie_secure { "; Secure" } else { "" };
    let text = format!(
        "{}={value}; Path=/; HttpOnly; SameSite={}; Max-Age={max_age}{secure}",
        c.cookie_name, c.cookie_same_site
    );
    // Built from a validated name, hex digits and fixed words: always a valid header.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_cookie_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; sluice_session=abc; b=2"),
        );
        assert_eq!(cookie(&headers, "sluice_session"), Some("abc"));
        assert_eq!(cookie(&headers, "c"), None);
    }
}
