//! Who is calling: the bearer token of a request, checked against the store, as an axum
//! extractor. A handler that takes [`Authenticated`] cannot run for an unknown caller. Another
//! way to authenticate (OpenID Connect) is another way to produce a [`Caller`] here.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::http_error::HttpError;
use super::router::{AppState, SessionHost};
use super::store::Caller;
use crate::api::ErrorCode;

/// The caller of a request, proven by its token.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Caller);

const NO_TOKEN: &str = "this service needs an API token (`Authorization: Bearer TOKEN`); with the \
                        CLI, run `cubbi -r NAME auth`";
const BAD_TOKEN: &str = "the service does not accept this token (unknown or revoked); get a new \
                         one from the service's admin and run `cubbi -r NAME auth`";

impl<H: SessionHost> FromRequestParts<AppState<H>> for Authenticated {
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState<H>,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| HttpError::unauthorized(NO_TOKEN))?
            .to_string();
        let found = state.store().authenticate(&token).await.map_err(|err| {
            tracing::error!("token store: {err}");
            HttpError::new(ErrorCode::Unavailable, "the service's token store failed")
        })?;
        let caller = found.ok_or_else(|| HttpError::unauthorized(BAD_TOKEN))?;
        tracing::Span::current().record("user", caller.user.as_str());
        Ok(Self(caller))
    }
}
