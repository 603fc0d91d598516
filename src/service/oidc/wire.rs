//! The bodies of the `/auth/*` routes, shared by the service and the CLI.

use serde::{Deserialize, Serialize};

/// `GET /auth/config`: how one logs in to this service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuthConfig {
    /// API tokens (`cubbi serve token create`) always work.
    pub api_tokens: bool,
    /// The OpenID Connect login, when the service has one.
    pub oidc: Option<OidcOffer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OidcOffer {
    /// The provider's issuer URL.
    pub issuer: String,
    /// The login flows offered: `device`.
    pub flows: Vec<String>,
}

/// `POST /auth/login`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// `device`: a code to enter on the provider's page (RFC 8628), for the CLI.
    pub flow: LoginFlow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LoginFlow {
    Device,
    Browser,
}

/// A device login started: show the user the URL and code, then poll with the handle.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceLogin {
    /// Where the user enters the code.
    pub verification_uri: String,
    /// The same with the code filled in, when the provider gives one.
    pub verification_uri_complete: Option<String>,
    pub user_code: String,
    /// Poll `POST /auth/login/poll` with this (it is a secret of this login).
    pub handle: String,
    /// Seconds between polls.
    pub interval: u64,
    /// Seconds the code is valid.
    pub expires_in: u64,
}

/// A browser login started: send the browser to `authorize_url`; the provider sends it
/// back to `/auth/callback`, which sets the login cookies.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BrowserLogin {
    pub authorize_url: String,
}

/// What `POST /auth/login` answers: a device login or a browser login.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum LoginStarted {
    Device(DeviceLogin),
    Browser(BrowserLogin),
}

/// What the provider sends back to `/auth/callback` (query, or form for `form_post`).
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackParams {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
    /// RFC 9207's issuer of the answer, when the provider sends it.
    pub iss: Option<String>,
}

/// A browser login: who it is; the tokens are in HttpOnly cookies, never in the body.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BrowserSession {
    pub user: String,
    pub admin: bool,
    /// Seconds the access cookie's token lives.
    pub expires_in: i64,
}

/// `POST /auth/login/poll`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    pub handle: String,
}

/// 202 from `POST /auth/login/poll`: not approved yet.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoginPending {
    /// `pending`.
    pub status: String,
    /// Seconds to wait before polling again.
    pub interval: u64,
}

/// The service's own tokens, after a login or a refresh.
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoginTokens {
    /// `Authorization: Bearer ACCESS_TOKEN` on every API call.
    pub access_token: String,
    /// For `POST /auth/refresh`, once: each refresh gives a new one, and using one twice
    /// revokes every token of the login.
    pub refresh_token: String,
    /// `Bearer`.
    pub token_type: String,
    /// Seconds the access token lives.
    pub expires_in: i64,
    /// Seconds the refresh token lives.
    pub refresh_expires_in: i64,
    /// The cubbi user name.
    pub user: String,
    pub admin: bool,
}

impl std::fmt::Debug for LoginTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginTokens")
            .field("user", &self.user)
            .field("admin", &self.admin)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// `POST /auth/refresh`.
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// `POST /auth/logout`: the refresh token (optional when the bearer token is the login's
/// access token).
#[derive(Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    pub refresh_token: Option<String>,
}

/// What a logout ended.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogoutResult {
    /// Logins (token families) revoked.
    pub revoked: usize,
}
