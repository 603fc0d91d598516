//! Who is calling: the bearer token of a request, checked against the store, as an axum
//! extractor. A handler that takes [`Authenticated`] cannot run for an unknown caller. The
//! token is an API token or an OpenID Connect access token (the store tells them apart), in
//! `Authorization: Bearer`, or for a browser login in the HttpOnly `cubbi_access` cookie;
//! a request the cookie authenticates that changes anything must carry the `X-CSRF-Token`
//! header with the value of the `cubbi_csrf` cookie (a page of another site can make the
//! browser send the cookie, not read it).

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use subtle::ConstantTimeEq;

use super::http_error::HttpError;
use super::router::{AppState, SessionHost};
use super::store::Caller;
use crate::api::ErrorCode;

/// The caller of a request, proven by its token.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Caller);

/// The cookie holding a browser login's access token (HttpOnly).
pub const ACCESS_COOKIE: &str = "cubbi_access";
/// The cookie holding a browser login's refresh token (HttpOnly, sent to `/auth` only).
pub const REFRESH_COOKIE: &str = "cubbi_refresh";
/// The cookie whose value state-changing cookie requests repeat in [`CSRF_HEADER`].
pub const CSRF_COOKIE: &str = "cubbi_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";

const NO_TOKEN: &str = "this service needs an API token (`Authorization: Bearer TOKEN`); with the \
                        CLI, run `cubbi -r NAME auth`";
const BAD_TOKEN: &str = "the service does not accept this token (unknown, expired or revoked); \
                         run `cubbi -r NAME auth` (or get a new token from the service's admin)";
const NO_CSRF: &str = "a change authenticated by the login cookie needs the `X-CSRF-Token` header \
                       with the value of the `cubbi_csrf` cookie";

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// The value of cookie `name`, if the request sent it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// Refuses a state-changing request authenticated by a cookie unless its CSRF header
/// repeats the CSRF cookie.
pub fn check_csrf(method: &Method, headers: &HeaderMap) -> Result<(), HttpError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let expected = cookie(headers, CSRF_COOKIE);
    let given = headers
        .get(CSRF_HEADER)
        .and_then(|value| value.to_str().ok());
    match (expected, given) {
        (Some(expected), Some(given))
            if bool::from(expected.as_bytes().ct_eq(given.as_bytes())) =>
        {
            Ok(())
        }
        _ => Err(HttpError::unauthorized(NO_CSRF)),
    }
}

impl<H: SessionHost> FromRequestParts<AppState<H>> for Authenticated {
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState<H>,
    ) -> Result<Self, Self::Rejection> {
        let token = match bearer(&parts.headers) {
            Some(token) => token.to_string(),
            None => {
                let token = cookie(&parts.headers, ACCESS_COOKIE)
                    .ok_or_else(|| HttpError::unauthorized(NO_TOKEN))?
                    .to_string();
                check_csrf(&parts.method, &parts.headers)?;
                token
            }
        };
        let found = state.store().authenticate(&token).await.map_err(|err| {
            tracing::error!("token store: {err}");
            HttpError::new(ErrorCode::Unavailable, "the service's token store failed")
        })?;
        let caller = found.ok_or_else(|| HttpError::unauthorized(BAD_TOKEN))?;
        tracing::Span::current().record("user", caller.user.as_str());
        Ok(Self(caller))
    }
}

/// Request headers from literal pairs, for tests of header checks.
#[cfg(test)]
pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name() {
        let map = headers(&[("cookie", "a=1; cubbi_access=tok; cubbi_csrf=c")]);
        assert_eq!(cookie(&map, ACCESS_COOKIE), Some("tok"));
        assert_eq!(cookie(&map, "cubbi"), None);
        assert_eq!(cookie(&headers(&[]), ACCESS_COOKIE), None);
    }

    #[test]
    fn cookie_changes_need_the_csrf_header() {
        let cookies = ("cookie", "cubbi_access=tok; cubbi_csrf=secret-c");
        assert!(check_csrf(&Method::GET, &headers(&[cookies])).is_ok());
        assert!(check_csrf(&Method::POST, &headers(&[cookies])).is_err());
        assert!(
            check_csrf(
                &Method::DELETE,
                &headers(&[cookies, (CSRF_HEADER, "wrong")])
            )
            .is_err()
        );
        assert!(
            check_csrf(
                &Method::POST,
                &headers(&[cookies, (CSRF_HEADER, "secret-c")])
            )
            .is_ok()
        );
        // No CSRF cookie: nothing to match.
        let only_access = ("cookie", "cubbi_access=tok");
        assert!(check_csrf(&Method::POST, &headers(&[only_access, (CSRF_HEADER, "")])).is_err());
    }
}
