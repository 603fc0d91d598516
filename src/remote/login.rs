//! The CLI's side of a service's OpenID Connect login: the device login (`cubbi -r NAME
//! auth` against a service that offers one), the tokens it gives kept in the system keyring
//! (the Secret Service, item `kind=login`) where one answers, else in
//! `$XDG_CONFIG_HOME/cubbi/credentials/NAME.login.json` (mode 0600, in the 0700 folder of
//! the API tokens), the access token refreshed when it is about to expire, and logout.
//!
//! A remote has either an API token (`NAME.token`) or a login, never both: storing one
//! removes the other.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::keyring;
use super::remotes::{RemoteError, Stored, credentials_dir};
use crate::config::keys;
use crate::service::oidc::wire::{
    AuthConfig, DeviceLogin, LoginFlow, LoginPending, LoginRequest, LoginTokens, LogoutRequest,
    PollRequest, RefreshRequest,
};

/// An access token this close to its end is refreshed before use.
const REFRESH_MARGIN_SECONDS: i64 = 30;
/// How long one exchange with the service may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest login file read.
const MAX_FILE_BYTES: u64 = 16 * 1024;
/// The largest answer read from the service on these routes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A stored login: the service's tokens and when they end (Unix seconds).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredLogin {
    pub user: String,
    pub access_token: String,
    pub access_expires: i64,
    pub refresh_token: String,
    pub refresh_expires: i64,
}

impl std::fmt::Debug for StoredLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredLogin")
            .field("user", &self.user)
            .field("access_expires", &self.access_expires)
            .field("refresh_expires", &self.refresh_expires)
            .finish_non_exhaustive()
    }
}

impl StoredLogin {
    pub fn from_tokens(tokens: &LoginTokens) -> Self {
        let now = now();
        Self {
            user: tokens.user.clone(),
            access_token: tokens.access_token.clone(),
            access_expires: now + tokens.expires_in,
            refresh_token: tokens.refresh_token.clone(),
            refresh_expires: now + tokens.refresh_expires_in,
        }
    }

    /// Whether the access token is (about to be) expired.
    pub fn needs_refresh(&self) -> bool {
        self.access_expires - REFRESH_MARGIN_SECONDS <= now()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// The file of remote `name`'s login in `dir`.
pub fn login_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.login.json"))
}

/// Stores remote `name`'s login: in the keyring when one takes it (and an earlier login
/// file goes), else in its 0600 file.
pub fn save_login(name: &str, login: &StoredLogin) -> Result<Stored, RemoteError> {
    keys::validate_remote_name(name)?;
    let dir = credentials_dir()?;
    let text = serde_json::to_vec(login).map_err(|err| RemoteError::Write {
        path: login_path(&dir, name),
        source: std::io::Error::other(err.classify_text()),
    })?;
    match keyring::save(name, keyring::Kind::Login, &text) {
        Ok(()) => {
            remove_login_in(&dir, name)?;
            Ok(Stored::Keyring)
        }
        Err(err) => {
            keyring::warn_fallback(&err);
            Ok(Stored::File(save_login_in(&dir, name, login)?))
        }
    }
}

pub fn load_login(name: &str) -> Result<Option<StoredLogin>, RemoteError> {
    Ok(load_login_stored(name)?.map(|(login, _)| login))
}

/// Remote `name`'s login and where it is kept: the keyring first, then the file.
pub fn load_login_stored(name: &str) -> Result<Option<(StoredLogin, Stored)>, RemoteError> {
    keys::validate_remote_name(name)?;
    let dir = credentials_dir()?;
    match keyring::load(name, keyring::Kind::Login) {
        Ok(Some(secret)) => {
            let invalid = |reason: String| RemoteError::KeyringInvalid {
                name: name.to_string(),
                reason,
            };
            let login: StoredLogin = serde_json::from_slice(&secret)
                .map_err(|err| invalid(format!("not a login: {}", err.classify_text())))?;
            for token in [&login.access_token, &login.refresh_token] {
                if let Err(RemoteError::InvalidToken { reason }) =
                    super::remotes::validate_token(token)
                {
                    return Err(invalid(reason));
                }
            }
            return Ok(Some((login, Stored::Keyring)));
        }
        Ok(None) => {}
        Err(err) => keyring::warn_fallback(&err),
    }
    let path = login_path(&dir, name);
    Ok(load_login_in(&dir, name)?.map(|login| (login, Stored::File(path))))
}

/// Forgets remote `name`'s login, in the keyring and in the file; returns whether one was
/// stored.
pub fn remove_login(name: &str) -> Result<bool, RemoteError> {
    keys::validate_remote_name(name)?;
    let in_keyring = match keyring::remove(name, keyring::Kind::Login) {
        Ok(found) => found,
        Err(err) => {
            keyring::warn_fallback(&err);
            false
        }
    };
    Ok(remove_login_in(&credentials_dir()?, name)? | in_keyring)
}

/// Writes the login 0600 (through a renamed temp file, so a link in its place is replaced,
/// never followed).
pub fn save_login_in(dir: &Path, name: &str, login: &StoredLogin) -> Result<PathBuf, RemoteError> {
    keys::validate_remote_name(name)?;
    super::remotes::ensure_private_dir(dir)?;
    let path = login_path(dir, name);
    let text = serde_json::to_vec_pretty(login).map_err(|err| RemoteError::Write {
        path: path.clone(),
        source: std::io::Error::other(err.to_string()),
    })?;
    crate::atomic_file::write(&path, &text, 0o600, 0o700).map_err(|source| RemoteError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Reads the login without following a link; refuses a file others may read.
pub fn load_login_in(dir: &Path, name: &str) -> Result<Option<StoredLogin>, RemoteError> {
    keys::validate_remote_name(name)?;
    let path = login_path(dir, name);
    let Some(text) = super::remotes::read_private_file(&path, name, MAX_FILE_BYTES)? else {
        return Ok(None);
    };
    let login: StoredLogin =
        serde_json::from_str(&text).map_err(|err| RemoteError::TokenFileInvalid {
            path: path.clone(),
            name: name.to_string(),
            reason: format!("not a login file: {}", err.classify_text()),
        })?;
    for token in [&login.access_token, &login.refresh_token] {
        if let Err(RemoteError::InvalidToken { reason }) = super::remotes::validate_token(token) {
            return Err(RemoteError::TokenFileInvalid {
                path,
                name: name.to_string(),
                reason,
            });
        }
    }
    Ok(Some(login))
}

trait ClassifyText {
    fn classify_text(&self) -> String;
}

impl ClassifyText for serde_json::Error {
    /// The kind of JSON error and where, never the text around it (a token).
    fn classify_text(&self) -> String {
        format!("{:?} at line {}", self.classify(), self.line())
    }
}

pub fn remove_login_in(dir: &Path, name: &str) -> Result<bool, RemoteError> {
    keys::validate_remote_name(name)?;
    let path = login_path(dir, name);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(RemoteError::Remove { path, source }),
    }
}

/// Why a login exchange failed. No message holds a token.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The service's own error body, as it worded it.
    #[error("{message}")]
    Service {
        status: u16,
        code: Option<crate::api::ErrorCode>,
        message: String,
    },
    #[error("{url} answered something this cubbi cannot read: {reason}")]
    Unreadable { url: String, reason: String },
    #[error("the login was not approved within {0} seconds")]
    TimedOut(u64),
}

impl LoginError {
    /// Whether the service refused the token (so a new login is the only way on).
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Service { status: 401, .. })
    }
}

/// A client of one service's `/auth/*` routes. Redirects are not followed, so tokens only
/// ever go to the URL the user configured.
pub struct LoginClient {
    url: String,
    http: reqwest::Client,
}

impl LoginClient {
    pub fn new(url: &str) -> Result<Self, LoginError> {
        let http = super::http_client(
            reqwest::Client::builder()
                .timeout(EXCHANGE_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("cubbi/", env!("CARGO_PKG_VERSION"))),
        )
        .map_err(|err| LoginError::Unreachable {
            url: url.to_string(),
            reason: err.to_string(),
        })?;
        Ok(Self {
            url: url.trim_end_matches('/').to_string(),
            http,
        })
    }

    async fn exchange<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        endpoint: &str,
    ) -> Result<(u16, T), LoginError> {
        let url = format!("{}{endpoint}", self.url);
        let mut response = request
            .send()
            .await
            .map_err(|err| LoginError::Unreachable {
                url: url.clone(),
                reason: super::remotes::error_chain_text(&err.without_url()),
            })?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| LoginError::Unreachable {
                url: url.clone(),
                reason: super::remotes::error_chain_text(&err.without_url()),
            })?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(LoginError::Unreadable {
                    url,
                    reason: format!("an answer over {MAX_ANSWER_BYTES} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        if !(200..300).contains(&status) {
            let detail = serde_json::from_slice::<crate::api::wire::ErrorBody>(&body)
                .ok()
                .map(|body| body.error);
            return Err(LoginError::Service {
                status,
                code: detail.as_ref().map(|d| d.code),
                message: detail.map(|d| d.message).unwrap_or_else(|| {
                    format!("{url} answered HTTP {status} without an error body")
                }),
            });
        }
        let value = serde_json::from_slice(&body).map_err(|err| LoginError::Unreadable {
            url,
            reason: err.classify_text(),
        })?;
        Ok((status, value))
    }

    /// How the service lets one log in; None for a service without `/auth/config` (older).
    pub async fn config(&self) -> Result<Option<AuthConfig>, LoginError> {
        let request = self.http.get(format!("{}/auth/config", self.url));
        match self.exchange(request, "/auth/config").await {
            Ok((_, config)) => Ok(Some(config)),
            Err(LoginError::Service { status: 404, .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    pub async fn start_device(&self) -> Result<DeviceLogin, LoginError> {
        let request = self
            .http
            .post(format!("{}/auth/login", self.url))
            .json(&LoginRequest {
                flow: LoginFlow::Device,
            });
        Ok(self.exchange(request, "/auth/login").await?.1)
    }

    /// Polls until the login is approved (the tokens), refused, or `expires_in` passes.
    pub async fn wait_device(&self, login: &DeviceLogin) -> Result<LoginTokens, LoginError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(login.expires_in + 30);
        let mut interval = login.interval.max(1);
        loop {
            tokio::time::sleep(Duration::from_secs(interval)).await;
            if tokio::time::Instant::now() > deadline {
                return Err(LoginError::TimedOut(login.expires_in));
            }
            let request = self
                .http
                .post(format!("{}/auth/login/poll", self.url))
                .json(&PollRequest {
                    handle: login.handle.clone(),
                });
            let (status, value) = self
                .exchange::<serde_json::Value>(request, "/auth/login/poll")
                .await?;
            if status == 202 {
                let pending: LoginPending =
                    serde_json::from_value(value).map_err(|err| LoginError::Unreadable {
                        url: format!("{}/auth/login/poll", self.url),
                        reason: err.classify_text(),
                    })?;
                interval = pending.interval.clamp(1, 60);
                continue;
            }
            return serde_json::from_value(value).map_err(|err| LoginError::Unreadable {
                url: format!("{}/auth/login/poll", self.url),
                reason: err.classify_text(),
            });
        }
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<LoginTokens, LoginError> {
        let request = self
            .http
            .post(format!("{}/auth/refresh", self.url))
            .json(&RefreshRequest {
                refresh_token: refresh_token.to_string(),
            });
        Ok(self.exchange(request, "/auth/refresh").await?.1)
    }

    pub async fn logout(&self, login: &StoredLogin) -> Result<(), LoginError> {
        let request = self
            .http
            .post(format!("{}/auth/logout", self.url))
            .bearer_auth(&login.access_token)
            .json(&LogoutRequest {
                refresh_token: Some(login.refresh_token.clone()),
            });
        self.exchange::<serde_json::Value>(request, "/auth/logout")
            .await
            .map(|_| ())
    }
}

/// The access token of remote `name`'s login, refreshed first when it is about to expire
/// (the new tokens are stored). Runs the exchange on a thread of its own, so it can be called
/// from synchronous code and from inside the CLI's runtime alike.
pub fn fresh_access_token(
    name: &str,
    url: &str,
    login: StoredLogin,
) -> Result<String, RemoteError> {
    if !login.needs_refresh() {
        return Ok(login.access_token);
    }
    let expired = || RemoteError::LoginExpired {
        name: name.to_string(),
    };
    if login.refresh_expires <= now() {
        return Err(expired());
    }
    let url_owned = url.to_string();
    let refresh_token = login.refresh_token.clone();
    let refreshed = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|err| LoginError::Unreachable {
                        url: url_owned.clone(),
                        reason: err.to_string(),
                    })?;
                runtime
                    .block_on(async { LoginClient::new(&url_owned)?.refresh(&refresh_token).await })
            })
            .join()
    })
    .map_err(|_| RemoteError::Unreachable {
        url: url.to_string(),
        reason: "the refresh failed".into(),
    })?;
    match refreshed {
        Ok(tokens) => {
            let renewed = StoredLogin::from_tokens(&tokens);
            save_login(name, &renewed)?;
            Ok(renewed.access_token)
        }
        Err(err) if err.is_refusal() => {
            // The login is over (revoked, reused, out of the allowed groups): forget it.
            remove_login(name)?;
            Err(RemoteError::LoginRefused {
                name: name.to_string(),
                reason: err.to_string(),
            })
        }
        Err(err) => Err(RemoteError::Unreachable {
            url: url.to_string(),
            reason: err.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn login() -> StoredLogin {
        StoredLogin {
            user: "alice".into(),
            access_token: "cubbia_000000000000_secretaccess".into(),
            access_expires: now() + 600,
            refresh_token: "cubbir_000000000000_secretrefresh".into(),
            refresh_expires: now() + 6000,
        }
    }

    #[test]
    fn the_login_file_is_private_and_loads_back() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("credentials");
        let path = save_login_in(&dir, "team", &login()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_login_in(&dir, "team").unwrap(), Some(login()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_login_in(&dir, "team"),
            Err(RemoteError::TokenFileNotPrivate { .. })
        ));
        assert!(remove_login_in(&dir, "team").unwrap());
        assert_eq!(load_login_in(&dir, "team").unwrap(), None);
    }

    #[test]
    fn a_broken_login_file_is_named_without_its_content() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("credentials");
        let path = save_login_in(&dir, "team", &login()).unwrap();
        std::fs::write(&path, "{\"user\": \"cubbia_leaked\"").unwrap();
        let err = load_login_in(&dir, "team").unwrap_err().to_string();
        assert!(
            err.contains("cubbi -r team auth") && !err.contains("leaked"),
            "{err}"
        );
    }

    #[test]
    fn debug_shows_no_secrets() {
        let shown = format!("{:?}", login());
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn an_access_token_near_its_end_needs_a_refresh() {
        let mut stored = login();
        assert!(!stored.needs_refresh());
        stored.access_expires = now() + 10;
        assert!(stored.needs_refresh());
    }
}
