//! The `/auth/*` routes: how to log in (`GET /auth/config`), the device login
//! (`POST /auth/login`, `POST /auth/login/poll`), `POST /auth/refresh` and
//! `POST /auth/logout`. None takes the `Authenticated` extractor: they are how a caller gets
//! (or gives up) a token.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::provider::ProviderError;
use super::wire::{
    AuthConfig, DeviceLogin, LoginFlow, LoginPending, LoginRequest, LoginTokens, LogoutRequest,
    LogoutResult, OidcOffer, PollRequest, RefreshRequest,
};
use super::{DevicePoll, OidcError, OidcService};
use crate::api::ErrorCode;
use crate::service::auth_tokens::IssuedTokens;
use crate::service::http_error::HttpError;
use crate::service::router::{AppState, SessionHost};
use crate::service::store::now;

const NO_OIDC: &str = "this service has no OpenID Connect login (auth.oidc in its service.toml); \
                       use an API token: `cubbi serve token create` on the service's host";

fn oidc<H: SessionHost>(state: &AppState<H>) -> Result<std::sync::Arc<OidcService>, HttpError> {
    state
        .oidc()
        .ok_or_else(|| HttpError::new(ErrorCode::NotFound, NO_OIDC))
}

/// The answer an [`OidcError`] gets.
pub fn http_error(err: OidcError) -> HttpError {
    let code = match &err {
        OidcError::Provider(ProviderError::Down { .. } | ProviderError::Missing { .. }) => {
            ErrorCode::Unavailable
        }
        OidcError::Provider(ProviderError::Refused { code, .. }) => {
            let message = match code.as_str() {
                "access_denied" => "the login was denied at the OpenID provider".to_string(),
                "expired_token" => {
                    "the login code expired before it was approved; start again".to_string()
                }
                _ => format!("{err}; run `cubbi -r NAME auth` again"),
            };
            return HttpError::unauthorized(message);
        }
        OidcError::Clash(_) => ErrorCode::Conflict,
        OidcError::UnknownHandle => ErrorCode::NotFound,
        OidcError::Busy => ErrorCode::Exhausted,
        OidcError::Store(_) => ErrorCode::Unavailable,
        _ => ErrorCode::Unauthorized,
    };
    HttpError::new(code, err.to_string())
}

fn tokens(issued: IssuedTokens) -> LoginTokens {
    let now = now();
    LoginTokens {
        access_token: issued.access,
        refresh_token: issued.refresh,
        token_type: "Bearer".into(),
        expires_in: issued.access_expires - now,
        refresh_expires_in: issued.refresh_expires - now,
        user: issued.user,
        admin: issued.admin,
    }
}

/// Tokens must never be cached by a proxy or a browser.
fn no_store(status: StatusCode, body: impl serde::Serialize) -> Response {
    (
        status,
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(body),
    )
        .into_response()
}

#[utoipa::path(get, path = "/auth/config", operation_id = "auth_config", tag = "auth",
    responses((status = 200, description = "How to log in to this service", body = AuthConfig)))]
pub async fn config<H: SessionHost>(State(state): State<AppState<H>>) -> Json<AuthConfig> {
    Json(AuthConfig {
        api_tokens: true,
        oidc: state.oidc().map(|oidc| OidcOffer {
            issuer: oidc.issuer().to_string(),
            flows: vec!["device".into()],
        }),
    })
}

#[utoipa::path(post, path = "/auth/login", operation_id = "auth_login", tag = "auth",
    request_body = LoginRequest,
    responses((status = 200, description = "A device login started: show the URL and code, then poll with the handle", body = DeviceLogin),
        (status = 400, description = "Bad body, or a flow this service does not offer", body = crate::api::wire::ErrorBody),
        (status = 404, description = "This service has no OpenID Connect login", body = crate::api::wire::ErrorBody),
        (status = 503, description = "The OpenID provider is unavailable (the message names it)", body = crate::api::wire::ErrorBody)))]
pub async fn login<H: SessionHost>(
    State(state): State<AppState<H>>,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<Response, HttpError> {
    let Json(request) = body?;
    let oidc = oidc(&state)?;
    if request.flow != LoginFlow::Device {
        return Err(HttpError::new(
            ErrorCode::Invalid,
            "this service offers the device login only (`\"flow\": \"device\"`)",
        ));
    }
    let started = oidc.start_device().await.map_err(http_error)?;
    Ok(no_store(
        StatusCode::OK,
        DeviceLogin {
            verification_uri: started.verification_uri,
            verification_uri_complete: started.verification_uri_complete,
            user_code: started.user_code,
            handle: started.handle,
            interval: started.interval,
            expires_in: started.expires_in,
        },
    ))
}

#[utoipa::path(post, path = "/auth/login/poll", operation_id = "auth_login_poll", tag = "auth",
    request_body = PollRequest,
    responses((status = 200, description = "Approved: the service's tokens (handed out once)", body = LoginTokens),
        (status = 202, description = "Not approved yet; poll again after `interval` seconds", body = LoginPending),
        (status = 401, description = "Denied, expired, not in the allowed groups, or a bad ID token", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No such login under way", body = crate::api::wire::ErrorBody),
        (status = 409, description = "The user name belongs to another user", body = crate::api::wire::ErrorBody),
        (status = 503, description = "The OpenID provider is unavailable", body = crate::api::wire::ErrorBody)))]
pub async fn poll<H: SessionHost>(
    State(state): State<AppState<H>>,
    body: Result<Json<PollRequest>, JsonRejection>,
) -> Result<Response, HttpError> {
    let Json(request) = body?;
    let oidc = oidc(&state)?;
    match oidc.poll_device(&request.handle).map_err(http_error)? {
        DevicePoll::Pending { interval } => Ok(no_store(
            StatusCode::ACCEPTED,
            LoginPending {
                status: "pending".into(),
                interval,
            },
        )),
        DevicePoll::Done(issued) => Ok(no_store(StatusCode::OK, tokens(issued))),
    }
}

#[utoipa::path(post, path = "/auth/refresh", operation_id = "auth_refresh", tag = "auth",
    request_body = RefreshRequest,
    responses((status = 200, description = "A new access token and the next refresh token", body = LoginTokens),
        (status = 401, description = "Unknown, expired, revoked or reused refresh token, or no longer in the allowed groups", body = crate::api::wire::ErrorBody),
        (status = 404, description = "This service has no OpenID Connect login", body = crate::api::wire::ErrorBody),
        (status = 503, description = "The OpenID provider is unavailable", body = crate::api::wire::ErrorBody)))]
pub async fn refresh<H: SessionHost>(
    State(state): State<AppState<H>>,
    body: Result<Json<RefreshRequest>, JsonRejection>,
) -> Result<Response, HttpError> {
    let Json(request) = body?;
    let oidc = oidc(&state)?;
    let issued = oidc
        .refresh(&request.refresh_token)
        .await
        .map_err(http_error)?;
    Ok(no_store(StatusCode::OK, tokens(issued)))
}

#[utoipa::path(post, path = "/auth/logout", operation_id = "auth_logout", tag = "auth",
    request_body = LogoutRequest, security(("token" = [])),
    responses((status = 200, description = "Every token of the login is revoked (and the provider's refresh token, where it has a revocation endpoint)", body = LogoutResult),
        (status = 401, description = "Neither the bearer token nor the refresh token is a live login's", body = crate::api::wire::ErrorBody),
        (status = 404, description = "This service has no OpenID Connect login", body = crate::api::wire::ErrorBody)))]
pub async fn logout<H: SessionHost>(
    State(state): State<AppState<H>>,
    headers: HeaderMap,
    body: Result<Json<LogoutRequest>, JsonRejection>,
) -> Result<Json<LogoutResult>, HttpError> {
    let request = match body {
        Ok(Json(request)) => request,
        // No body at all is fine: the bearer token says which login.
        Err(JsonRejection::MissingJsonContentType(_)) => LogoutRequest::default(),
        Err(other) => return Err(other.into()),
    };
    let oidc = oidc(&state)?;
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let given: Vec<&str> = bearer
        .into_iter()
        .chain(request.refresh_token.as_deref())
        .collect();
    let revoked = oidc.logout(&given).await.map_err(http_error)?;
    if revoked == 0 {
        return Err(HttpError::unauthorized(
            "neither token is a live login's (already logged out, expired, or not an OpenID \
             Connect login)",
        ));
    }
    Ok(Json(LogoutResult { revoked }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_auth_routes_are_in_the_document() {
        let document = serde_json::to_value(crate::service::openapi::document()).unwrap();
        for (path, method, id) in [
            ("/auth/config", "get", "auth_config"),
            ("/auth/login", "post", "auth_login"),
            ("/auth/login/poll", "post", "auth_login_poll"),
            ("/auth/refresh", "post", "auth_refresh"),
            ("/auth/logout", "post", "auth_logout"),
        ] {
            let operation = &document["paths"][path][method];
            assert_eq!(operation["operationId"], id, "{method} {path}: {operation}");
        }
        let poll = &document["paths"]["/auth/login/poll"]["post"]["responses"];
        assert!(poll["202"].is_object() && poll["200"].is_object(), "{poll}");
        let login = &document["paths"]["/auth/login"]["post"]["responses"]["503"];
        assert_eq!(
            login["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody"
        );
    }

    #[test]
    fn provider_failures_map_to_stable_codes() {
        let down = OidcError::Provider(ProviderError::Down {
            issuer: "https://id.example".into(),
            reason: "cannot connect".into(),
        });
        let response = http_error(down).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        for (err, status) in [
            (OidcError::Reused, StatusCode::UNAUTHORIZED),
            (OidcError::RefreshRefused, StatusCode::UNAUTHORIZED),
            (
                OidcError::NotAllowed { user: "bob".into() },
                StatusCode::UNAUTHORIZED,
            ),
            (OidcError::Clash("taken".into()), StatusCode::CONFLICT),
            (OidcError::UnknownHandle, StatusCode::NOT_FOUND),
            (
                OidcError::Provider(ProviderError::Refused {
                    issuer: "https://id.example".into(),
                    code: "access_denied".into(),
                    description: None,
                }),
                StatusCode::UNAUTHORIZED,
            ),
        ] {
            let shown = err.to_string();
            assert_eq!(http_error(err).into_response().status(), status, "{shown}");
        }
    }
}
