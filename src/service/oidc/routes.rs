//! The `/auth/*` routes: how to log in (`GET /auth/config`), the device login
//! (`POST /auth/login`, `POST /auth/login/poll`), `POST /auth/refresh` and
//! `POST /auth/logout`. None takes the `Authenticated` extractor: they are how a caller gets
//! (or gives up) a token.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::provider::ProviderError;
use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::http::HeaderValue;
use axum::http::header::SET_COOKIE;

use super::wire::{
    AuthConfig, BrowserLogin, BrowserSession, CallbackParams, DeviceLogin, LoginFlow, LoginPending,
    LoginRequest, LoginStarted, LoginTokens, LogoutRequest, LogoutResult, OidcOffer, PollRequest,
    RefreshRequest,
};
use super::{DevicePoll, OidcError, OidcService};
use crate::api::ErrorCode;
use crate::service::auth::{
    ACCESS_COOKIE, CSRF_COOKIE, REFRESH_COOKIE, bearer, check_csrf, cookie,
};
use crate::service::auth_tokens::IssuedTokens;
use crate::service::http_error::HttpError;
use crate::service::router::{AppState, SessionHost};
use crate::service::store::now;

/// The cookie binding a browser login to the browser that started it (its state).
const LOGIN_COOKIE: &str = "cubbi_login";

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
        OidcError::NoBrowserFlow | OidcError::BadState | OidcError::NoCode => ErrorCode::Invalid,
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
            flows: if oidc.offers_browser() {
                vec!["device".into(), "browser".into()]
            } else {
                vec!["device".into()]
            },
        }),
    })
}

#[utoipa::path(post, path = "/auth/login", operation_id = "auth_login", tag = "auth",
    request_body = LoginRequest,
    responses((status = 200, description = "Device: show the URL and code, then poll with the handle. Browser: send the browser to authorize_url", body = LoginStarted),
        (status = 400, description = "Bad body, or a flow this service does not offer", body = crate::api::wire::ErrorBody),
        (status = 404, description = "This service has no OpenID Connect login", body = crate::api::wire::ErrorBody),
        (status = 503, description = "The OpenID provider is unavailable (the message names it)", body = crate::api::wire::ErrorBody)))]
pub async fn login<H: SessionHost>(
    State(state): State<AppState<H>>,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<Response, HttpError> {
    let Json(request) = body?;
    let oidc = oidc(&state)?;
    if request.flow == LoginFlow::Browser {
        let (url, login_state) = oidc.start_browser().await.map_err(http_error)?;
        let response = no_store(
            StatusCode::OK,
            LoginStarted::Browser(BrowserLogin { authorize_url: url }),
        );
        // The callback must come back to the browser that started the login (no login CSRF:
        // another's callback URL opened here is refused). Lax, not Strict: the provider's
        // redirect back is a cross-site navigation, which Strict cookies do not follow.
        let cookie = HeaderValue::from_str(&format!(
            "{LOGIN_COOKIE}={login_state}; Path=/auth/callback; Max-Age=600; HttpOnly; \
             SameSite=Lax{}",
            if oidc.tls() { "; Secure" } else { "" }
        ))
        .ok();
        return Ok(with_cookies(response, cookie.into_iter().collect()));
    }
    let started = oidc.start_device().await.map_err(http_error)?;
    Ok(no_store(
        StatusCode::OK,
        LoginStarted::Device(DeviceLogin {
            verification_uri: started.verification_uri,
            verification_uri_complete: started.verification_uri_complete,
            user_code: started.user_code,
            handle: started.handle,
            interval: started.interval,
            expires_in: started.expires_in,
        }),
    ))
}

/// `Set-Cookie` for a login cookie: SameSite=Strict always, HttpOnly unless `readable`
/// (the CSRF cookie, which the page repeats in a header), Secure under TLS.
fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    max_age: i64,
    readable: bool,
    tls: bool,
) -> Option<HeaderValue> {
    let mut text = format!("{name}={value}; Path={path}; Max-Age={max_age}; SameSite=Strict");
    if !readable {
        text.push_str("; HttpOnly");
    }
    if tls {
        text.push_str("; Secure");
    }
    HeaderValue::from_str(&text).ok()
}

/// The login cookies for `issued` (or, with None, cookies that clear them).
fn login_cookies(oidc: &OidcService, issued: Option<&IssuedTokens>) -> Vec<HeaderValue> {
    let tls = oidc.tls();
    let now = now();
    let (access, refresh, csrf, access_age, refresh_age) = match issued {
        Some(issued) => (
            issued.access.clone(),
            issued.refresh.clone(),
            super::new_handle(),
            issued.access_expires - now,
            issued.refresh_expires - now,
        ),
        None => (String::new(), String::new(), String::new(), 0, 0),
    };
    [
        set_cookie(ACCESS_COOKIE, &access, "/", access_age, false, tls),
        set_cookie(REFRESH_COOKIE, &refresh, "/auth", refresh_age, false, tls),
        set_cookie(CSRF_COOKIE, &csrf, "/", refresh_age, true, tls),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn with_cookies(mut response: Response, cookies: Vec<HeaderValue>) -> Response {
    for value in cookies {
        response.headers_mut().append(SET_COOKIE, value);
    }
    response
}

fn browser_session(issued: &IssuedTokens) -> BrowserSession {
    BrowserSession {
        user: issued.user.clone(),
        admin: issued.admin,
        expires_in: issued.access_expires - now(),
    }
}

#[utoipa::path(get, path = "/auth/callback", operation_id = "auth_callback", tag = "auth",
    params(CallbackParams),
    responses((status = 200, description = "Logged in: the HttpOnly SameSite=Strict login cookies are set (and a readable cubbi_csrf cookie to repeat in X-CSRF-Token)", body = BrowserSession),
        (status = 303, description = "Logged in, for a browser (`Accept: text/html`): the same cookies, and on to the web page at /"),
        (status = 400, description = "Unknown or expired state (a forged or replayed callback), or no code", body = crate::api::wire::ErrorBody),
        (status = 401, description = "Denied at the provider, a bad ID token, or not in the allowed groups", body = crate::api::wire::ErrorBody),
        (status = 409, description = "The user name belongs to another user", body = crate::api::wire::ErrorBody),
        (status = 503, description = "The OpenID provider is unavailable", body = crate::api::wire::ErrorBody)))]
pub async fn callback<H: SessionHost>(
    state: State<AppState<H>>,
    request: axum::extract::Request,
) -> Result<Response, HttpError> {
    finish_callback(state, request).await
}

/// The callback for `response_mode=form_post`: the same, from a form body.
#[utoipa::path(post, path = "/auth/callback", operation_id = "auth_callback_form_post", tag = "auth",
    params(CallbackParams),
    responses((status = 200, description = "Logged in: the HttpOnly SameSite=Strict login cookies are set (and a readable cubbi_csrf cookie to repeat in X-CSRF-Token)", body = BrowserSession),
        (status = 303, description = "Logged in, for a browser (`Accept: text/html`): the same cookies, and on to the web page at /"),
        (status = 400, description = "Unknown or expired state (a forged or replayed callback), or no code", body = crate::api::wire::ErrorBody),
        (status = 401, description = "Denied at the provider, a bad ID token, or not in the allowed groups", body = crate::api::wire::ErrorBody),
        (status = 409, description = "The user name belongs to another user", body = crate::api::wire::ErrorBody),
        (status = 503, description = "The OpenID provider is unavailable", body = crate::api::wire::ErrorBody)))]
pub async fn callback_post<H: SessionHost>(
    state: State<AppState<H>>,
    request: axum::extract::Request,
) -> Result<Response, HttpError> {
    finish_callback(state, request).await
}

async fn finish_callback<H: SessionHost>(
    State(state): State<AppState<H>>,
    request: axum::extract::Request,
) -> Result<Response, HttpError> {
    let headers = request.headers().clone();
    // The query of a GET, the form body of a POST (`response_mode=form_post`).
    let params: Result<Form<CallbackParams>, FormRejection> =
        <Form<CallbackParams> as axum::extract::FromRequest<()>>::from_request(request, &()).await;
    let Form(params) = params.map_err(|err| HttpError::new(ErrorCode::Invalid, err.body_text()))?;
    let oidc = oidc(&state)?;
    let state_param = params.state.as_deref().unwrap_or_default();
    if let Some(error) = &params.error {
        // The provider's word, but only after the state proves the answer is for us.
        oidc.finish_browser_refused(state_param)
            .map_err(http_error)?;
        let safe: String = error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        return Err(HttpError::unauthorized(format!(
            "the OpenID provider ended the login: {safe}"
        )));
    }
    let started_here = cookie(&headers, LOGIN_COOKIE).is_some_and(|value| {
        bool::from(subtle::ConstantTimeEq::ct_eq(
            value.as_bytes(),
            state_param.as_bytes(),
        ))
    });
    if !started_here {
        return Err(HttpError::new(
            ErrorCode::Invalid,
            "this browser did not start this login (its login cookie is missing or another \
             login's); start again from `POST /auth/login`",
        ));
    }
    let code = params.code.as_deref().unwrap_or_default();
    let issued = oidc
        .finish_browser(state_param, code)
        .await
        .map_err(http_error)?;
    // A browser's navigation (the provider redirected it here) goes on to the web page, which
    // reads the session with the cookies; an API client gets the JSON.
    let navigating = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    let response = if navigating {
        (
            StatusCode::SEE_OTHER,
            [
                (axum::http::header::LOCATION, "/"),
                (axum::http::header::CACHE_CONTROL, "no-store"),
            ],
        )
            .into_response()
    } else {
        no_store(StatusCode::OK, browser_session(&issued))
    };
    let mut cookies = login_cookies(&oidc, Some(&issued));
    cookies.extend(
        HeaderValue::from_str(&format!(
            "{LOGIN_COOKIE}=; Path=/auth/callback; Max-Age=0; HttpOnly; SameSite=Lax"
        ))
        .ok(),
    );
    Ok(with_cookies(response, cookies))
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
    responses((status = 200, description = "A new access token and the next refresh token (for a cookie login, new cookies and a BrowserSession body)", body = LoginTokens),
        (status = 401, description = "Unknown, expired, revoked or reused refresh token, or no longer in the allowed groups", body = crate::api::wire::ErrorBody),
        (status = 404, description = "This service has no OpenID Connect login", body = crate::api::wire::ErrorBody),
        (status = 503, description = "The OpenID provider is unavailable", body = crate::api::wire::ErrorBody)))]
pub async fn refresh<H: SessionHost>(
    State(state): State<AppState<H>>,
    headers: HeaderMap,
    method: axum::http::Method,
    body: Result<Json<RefreshRequest>, JsonRejection>,
) -> Result<Response, HttpError> {
    let oidc = oidc(&state)?;
    match body {
        Ok(Json(request)) => {
            let issued = oidc
                .refresh(&request.refresh_token)
                .await
                .map_err(http_error)?;
            Ok(no_store(StatusCode::OK, tokens(issued)))
        }
        // No JSON body: a browser login refreshes with its cookie (and the CSRF header).
        Err(JsonRejection::MissingJsonContentType(_)) => {
            let refresh = cookie(&headers, REFRESH_COOKIE)
                .ok_or_else(|| {
                    HttpError::unauthorized(
                        "give {\"refresh_token\"} as JSON, or the login cookie of a browser login",
                    )
                })?
                .to_string();
            check_csrf(&method, &headers)?;
            let issued = oidc.refresh(&refresh).await.map_err(http_error)?;
            let response = no_store(StatusCode::OK, browser_session(&issued));
            Ok(with_cookies(response, login_cookies(&oidc, Some(&issued))))
        }
        Err(other) => Err(other.into()),
    }
}

#[utoipa::path(post, path = "/auth/logout", operation_id = "auth_logout", tag = "auth",
    request_body = LogoutRequest, security(("token" = [])),
    responses((status = 200, description = "Every token of the login is revoked (and the provider's refresh token, where it has a revocation endpoint)", body = LogoutResult),
        (status = 401, description = "Neither the bearer token nor the refresh token is a live login's", body = crate::api::wire::ErrorBody),
        (status = 404, description = "This service has no OpenID Connect login", body = crate::api::wire::ErrorBody)))]
pub async fn logout<H: SessionHost>(
    State(state): State<AppState<H>>,
    headers: HeaderMap,
    method: axum::http::Method,
    body: Result<Json<LogoutRequest>, JsonRejection>,
) -> Result<Response, HttpError> {
    let request = match body {
        Ok(Json(request)) => request,
        // No body at all is fine: the bearer token (or the login cookie) says which login.
        Err(JsonRejection::MissingJsonContentType(_)) => LogoutRequest::default(),
        Err(other) => return Err(other.into()),
    };
    let oidc = oidc(&state)?;
    let mut given: Vec<&str> = bearer(&headers)
        .into_iter()
        .chain(request.refresh_token.as_deref())
        .collect();
    let by_cookie = given.is_empty();
    if by_cookie {
        check_csrf(&method, &headers)?;
        given.extend(cookie(&headers, ACCESS_COOKIE));
        given.extend(cookie(&headers, REFRESH_COOKIE));
    }
    let revoked = oidc.logout(&given).await.map_err(http_error)?;
    if revoked == 0 {
        return Err(HttpError::unauthorized(
            "neither token is a live login's (already logged out, expired, or not an OpenID \
             Connect login)",
        ));
    }
    let response = Json(LogoutResult { revoked }).into_response();
    Ok(if by_cookie {
        with_cookies(response, login_cookies(&oidc, None))
    } else {
        response
    })
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
            ("/auth/callback", "get", "auth_callback"),
            ("/auth/callback", "post", "auth_callback_form_post"),
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
    fn login_cookies_are_strict_http_only_and_secure_under_tls() {
        let plain = set_cookie(ACCESS_COOKIE, "v", "/", 60, false, false).unwrap();
        let plain = plain.to_str().unwrap();
        assert!(
            plain.contains("HttpOnly") && plain.contains("SameSite=Strict"),
            "{plain}"
        );
        assert!(!plain.contains("Secure"), "{plain}");
        let tls = set_cookie(ACCESS_COOKIE, "v", "/", 60, false, true).unwrap();
        assert!(tls.to_str().unwrap().ends_with("; Secure"), "{tls:?}");
        // The CSRF cookie is the one a page may read.
        let csrf = set_cookie(CSRF_COOKIE, "c", "/", 60, true, true).unwrap();
        let csrf = csrf.to_str().unwrap();
        assert!(
            !csrf.contains("HttpOnly") && csrf.contains("SameSite=Strict"),
            "{csrf}"
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
