//! Team login with OpenID Connect (`[auth.oidc]` in service.toml): the provider client
//! ([`provider`]), the login flows, and the `/auth/*` routes ([`routes`]).
//!
//! A device login (RFC 8628): `POST /auth/login` starts it at the provider and answers the
//! verification URL and user code with a *handle*; the service then polls the provider
//! itself (at the interval the provider asks), and `POST /auth/login/poll` with the handle
//! answers "pending" until the user approved it, then the service's own tokens, once. The
//! pending logins live in the service's memory (a restart ends them; so would a second
//! service process behind a balancer: poll the one that started it).
//!
//! At login and at every refresh the ID token's groups decide: not in `allowed_groups` (when
//! set) → refused, and the family revoked on a refresh; admin exactly when in `admin_groups`.

pub mod config;
pub mod provider;
pub mod routes;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;

use super::auth_tokens::{IssuedTokens, Lifetimes, OidcLogin, RefreshCheck, Rotation};
use super::store::{Store, StoreError, validate_user};
use config::OidcSettings;
use provider::{Provider, ProviderError, VerifiedClaims, refresh_token_of};

/// How long a browser login may take from `POST /auth/login` to the callback.
const BROWSER_LOGIN_TTL: Duration = Duration::from_secs(600);

/// A browser login under way, found by its state.
struct BrowserPending {
    nonce: String,
    verifier: String,
    expires: Instant,
}

/// Device logins under way at once; past it, new ones are refused until some end.
const MAX_PENDING: usize = 1000;

/// Why a login, refresh or logout failed. Messages never hold a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OidcError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(
        "`{user}` is not in any of the groups this service lets in (auth.oidc.allowed_groups); \
         ask its admin"
    )]
    NotAllowed { user: String },
    #[error(
        "the provider's `{claim}` claim ({value}) is not a cubbi user name: use 1 to 32 \
         characters, a lowercase letter first, then lowercase letters, digits, `_` or `-`"
    )]
    BadUserName { claim: String, value: String },
    #[error("the ID token has no `{claim}` claim (auth.oidc.username_claim)")]
    NoUserName { claim: String },
    #[error("{0}")]
    Clash(String),
    #[error(
        "this refresh token was already used: every token of that login is revoked now; run \
         `cubbi -r NAME auth` again"
    )]
    Reused,
    #[error("the refresh token is unknown, expired or revoked; run `cubbi -r NAME auth` again")]
    RefreshRefused,
    #[error("no such device login under way (it ended, expired, or the service restarted)")]
    UnknownHandle,
    #[error("too many logins are under way; try again in a minute")]
    Busy,
    #[error("the service's token store failed")]
    Store(String),
    #[error(
        "this service offers the device login only (`\"flow\": \"device\"`): the browser \
         login needs auth.oidc.redirect_url"
    )]
    NoBrowserFlow,
    #[error(
        "the login's state is unknown or expired (a forged or replayed callback?); log in again"
    )]
    BadState,
    #[error("the callback has no authorization code")]
    NoCode,
}

impl From<StoreError> for OidcError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::IdentityClash { .. } => Self::Clash(err.to_string()),
            other => {
                tracing::error!("token store: {other}");
                Self::Store(other.to_string())
            }
        }
    }
}

/// A device login as `POST /auth/login` answers it.
#[derive(Debug, Clone)]
pub struct DeviceStart {
    pub handle: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub user_code: String,
    pub interval: u64,
    pub expires_in: u64,
}

/// Where a device login is.
#[derive(Debug, Clone)]
pub enum DevicePoll {
    Pending { interval: u64 },
    Done(IssuedTokens),
}

enum PendingState {
    Waiting,
    Finished(Result<IssuedTokens, OidcError>),
}

struct Pending {
    state: PendingState,
    interval: u64,
    expires: Instant,
}

/// The OpenID Connect side of the service.
pub struct OidcService {
    settings: OidcSettings,
    provider: Provider,
    store: Arc<dyn Store>,
    pending: Mutex<HashMap<String, Pending>>,
    browser_pending: Mutex<HashMap<String, BrowserPending>>,
    /// Whether the service runs TLS: its cookies are `Secure` then.
    tls: bool,
    /// Seals the provider's refresh tokens in the store (the project key).
    sealing: crate::projects::crypto::ProjectKey,
}

impl OidcService {
    /// Reads the client secret file (0600) and sets up the provider client; the provider is
    /// first asked when the first login comes, so the service starts while it is down.
    /// `sealing` seals the provider's refresh tokens kept in the store ([`sealing_key`]).
    pub fn new(
        settings: &OidcSettings,
        store: Arc<dyn Store>,
        tls: bool,
        sealing: crate::projects::crypto::ProjectKey,
    ) -> Result<Arc<Self>, String> {
        let secret = config::read_client_secret(&settings.client_secret_file)
            .map_err(|err| err.to_string())?;
        let provider = Provider::new(settings, secret).map_err(|err| err.to_string())?;
        Ok(Arc::new(Self {
            settings: settings.clone(),
            provider,
            store,
            pending: Mutex::new(HashMap::new()),
            browser_pending: Mutex::new(HashMap::new()),
            tls,
            sealing,
        }))
    }

    pub fn issuer(&self) -> &str {
        self.provider.issuer()
    }

    /// Whether the browser login is offered (`auth.oidc.redirect_url` is set).
    pub fn offers_browser(&self) -> bool {
        self.settings.redirect_url.is_some()
    }

    pub fn tls(&self) -> bool {
        self.tls
    }

    pub fn access_lifetime(&self) -> i64 {
        self.settings.access_lifetime.seconds()
    }

    pub fn refresh_lifetime(&self) -> i64 {
        self.settings.refresh_lifetime.seconds()
    }

    fn browser_pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, BrowserPending>> {
        self.browser_pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a browser login: the provider's authorize URL (PKCE, state, nonce kept here)
    /// and the state, which the starting browser keeps in a cookie.
    pub async fn start_browser(&self) -> Result<(String, String), OidcError> {
        let redirect = self
            .settings
            .redirect_url
            .as_ref()
            .ok_or(OidcError::NoBrowserFlow)?;
        {
            let mut pending = self.browser_pending();
            let now = Instant::now();
            pending.retain(|_, login| login.expires > now);
            if pending.len() >= MAX_PENDING {
                return Err(OidcError::Busy);
            }
        }
        let start = self.provider.authorize_url(redirect.as_str()).await?;
        self.browser_pending().insert(
            start.state.clone(),
            BrowserPending {
                nonce: start.nonce,
                verifier: start.verifier,
                expires: Instant::now() + BROWSER_LOGIN_TTL,
            },
        );
        Ok((start.url, start.state))
    }

    /// The provider answered a browser login with an error: forgets the login when the state
    /// is ours (else the answer is not for this service: refused like a forged one).
    pub fn finish_browser_refused(&self, state: &str) -> Result<(), OidcError> {
        self.browser_pending()
            .remove(state)
            .map(|_| ())
            .ok_or(OidcError::BadState)
    }

    /// The provider sent the browser back: the state must be one this service made (once),
    /// the code is exchanged with its PKCE verifier, the ID token must carry its nonce.
    pub async fn finish_browser(&self, state: &str, code: &str) -> Result<IssuedTokens, OidcError> {
        let redirect = self
            .settings
            .redirect_url
            .as_ref()
            .ok_or(OidcError::NoBrowserFlow)?;
        let pending = self
            .browser_pending()
            .remove(state)
            .filter(|login| login.expires > Instant::now())
            .ok_or(OidcError::BadState)?;
        if code.is_empty() {
            return Err(OidcError::NoCode);
        }
        let response = self
            .provider
            .exchange_code(redirect.as_str(), code, &pending.verifier)
            .await?;
        let nonce = openidconnect::Nonce::new(pending.nonce);
        self.complete_login_with(&response, Some(&nonce)).await
    }

    fn lifetimes(&self) -> Lifetimes {
        Lifetimes {
            access: self.settings.access_lifetime.seconds(),
            refresh: self.settings.refresh_lifetime.seconds(),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a device login at the provider and polls it in the background.
    pub async fn start_device(self: &Arc<Self>) -> Result<DeviceStart, OidcError> {
        {
            let mut pending = self.pending();
            let now = Instant::now();
            pending.retain(|_, login| login.expires > now);
            if pending.len() >= MAX_PENDING {
                return Err(OidcError::Busy);
            }
        }
        let details = self.provider.start_device().await?;
        let handle = new_handle();
        let interval = details.interval().as_secs().max(1);
        let expires_in = details.expires_in().as_secs();
        let start = DeviceStart {
            handle: handle.clone(),
            verification_uri: details.verification_uri().to_string(),
            verification_uri_complete: details
                .verification_uri_complete()
                .map(|uri| uri.secret().clone()),
            user_code: details.user_code().secret().clone(),
            interval,
            expires_in,
        };
        // Kept a minute past the device code, so a last poll still finds the outcome.
        self.pending().insert(
            handle.clone(),
            Pending {
                state: PendingState::Waiting,
                interval,
                expires: Instant::now() + Duration::from_secs(expires_in + 60),
            },
        );
        let service = Arc::clone(self);
        tokio::spawn(async move {
            let outcome = match service.provider.finish_device(&details).await {
                Ok(response) => service.complete_login(&response).await,
                Err(err) => Err(err.into()),
            };
            if let Err(err) = &outcome {
                tracing::info!("a device login failed: {err}");
            }
            if let Some(login) = service.pending().get_mut(&handle) {
                login.state = PendingState::Finished(outcome);
            }
        });
        Ok(start)
    }

    /// Where the device login `handle` is; its tokens are handed out once.
    pub fn poll_device(&self, handle: &str) -> Result<DevicePoll, OidcError> {
        let mut pending = self.pending();
        let login = pending.get(handle).ok_or(OidcError::UnknownHandle)?;
        if login.expires <= Instant::now() {
            pending.remove(handle);
            return Err(OidcError::UnknownHandle);
        }
        if let PendingState::Waiting = login.state {
            return Ok(DevicePoll::Pending {
                interval: login.interval,
            });
        }
        match pending.remove(handle).map(|login| login.state) {
            Some(PendingState::Finished(outcome)) => outcome.map(DevicePoll::Done),
            _ => Err(OidcError::UnknownHandle),
        }
    }

    /// A token response of a login: the ID token validated, the user and groups checked,
    /// the service's own tokens issued.
    async fn complete_login(
        &self,
        response: &openidconnect::core::CoreTokenResponse,
    ) -> Result<IssuedTokens, OidcError> {
        self.complete_login_with(response, None).await
    }

    async fn complete_login_with(
        &self,
        response: &openidconnect::core::CoreTokenResponse,
        nonce: Option<&openidconnect::Nonce>,
    ) -> Result<IssuedTokens, OidcError> {
        let claims = self.provider.verify(response, nonce).await?;
        let (user, admin) = self.judge(&claims)?;
        let login = OidcLogin {
            issuer: self.provider.issuer().to_string(),
            subject: claims.subject.clone(),
            user,
            admin,
            provider_refresh: self.seal(&claims.subject, refresh_token_of(response))?,
            lifetimes: self.lifetimes(),
        };
        let issued = self.store.oidc_login(&login).await?;
        tracing::info!(
            user = issued.user.as_str(),
            admin,
            "logged in with OpenID Connect"
        );
        Ok(issued)
    }

    /// The user name and admin flag the claims give, or why they may not log in.
    fn judge(&self, claims: &VerifiedClaims) -> Result<(String, bool), OidcError> {
        let claim = self.settings.username_claim.as_str();
        let user = match claims.claims.get(claim) {
            Some(serde_json::Value::String(name)) => name.clone(),
            Some(other) => {
                return Err(OidcError::BadUserName {
                    claim: claim.into(),
                    value: other.to_string(),
                });
            }
            None => {
                return Err(OidcError::NoUserName {
                    claim: claim.into(),
                });
            }
        };
        if validate_user(&user).is_err() {
            return Err(OidcError::BadUserName {
                claim: claim.into(),
                value: format!("{:?}", user.chars().take(64).collect::<String>()),
            });
        }
        let groups = groups_of(claims, self.settings.groups_claim.as_str());
        let allowed = self.settings.allowed_groups.is_empty()
            || groups
                .iter()
                .any(|group| self.settings.allowed_groups.contains(group));
        if !allowed {
            return Err(OidcError::NotAllowed { user });
        }
        let admin = groups
            .iter()
            .any(|group| self.settings.admin_groups.contains(group));
        Ok((user, admin))
    }

    /// Rotates a refresh token: the groups are read again at the provider first.
    pub async fn refresh(&self, refresh: &str) -> Result<IssuedTokens, OidcError> {
        let family = match self.store.oidc_check_refresh(refresh).await? {
            RefreshCheck::Valid(family) => family,
            RefreshCheck::Reused { user } => {
                tracing::warn!(
                    user = user.as_str(),
                    "a refresh token was used twice: its login's tokens are revoked"
                );
                return Err(OidcError::Reused);
            }
            RefreshCheck::Refused => return Err(OidcError::RefreshRefused),
        };
        let Some(provider_refresh) = self.open(&family.subject, family.provider_refresh.as_deref())
        else {
            // Without the provider's refresh token (none was given, or it was sealed with
            // another key) the groups cannot be read again.
            self.store.oidc_revoke_family(&family.id).await?;
            return Err(OidcError::RefreshRefused);
        };
        let response = match self.provider.refresh(&provider_refresh).await {
            Ok(response) => response,
            Err(err @ ProviderError::Refused { .. }) => {
                // The provider ended the login (user disabled, consent withdrawn).
                self.store.oidc_revoke_family(&family.id).await?;
                tracing::info!(user = family.user.as_str(), "refresh refused: {err}");
                return Err(err.into());
            }
            Err(err) => return Err(err.into()),
        };
        let claims = self.provider.verify(&response, None).await?;
        if claims.subject != family.subject {
            self.store.oidc_revoke_family(&family.id).await?;
            return Err(OidcError::RefreshRefused);
        }
        let admin = match self.judge(&claims) {
            Ok((_, admin)) => admin,
            Err(err) => {
                self.store.oidc_revoke_family(&family.id).await?;
                tracing::info!(user = family.user.as_str(), "refresh refused: {err}");
                return Err(match err {
                    OidcError::NotAllowed { .. } => OidcError::NotAllowed { user: family.user },
                    other => other,
                });
            }
        };
        let rotation = Rotation {
            admin,
            provider_refresh: self.seal(&family.subject, refresh_token_of(&response))?,
            lifetimes: self.lifetimes(),
        };
        self.store
            .oidc_rotate(refresh, &rotation)
            .await?
            .ok_or(OidcError::Reused)
    }

    /// Revokes the family of each genuine token given, and the provider's refresh token of
    /// each (best effort: the service's tokens are revoked whatever the provider says).
    /// Returns how many families were revoked.
    pub async fn logout(&self, tokens: &[&str]) -> Result<usize, OidcError> {
        let mut revoked = 0;
        let mut seen = Vec::new();
        for token in tokens {
            let Some(family) = self.store.oidc_logout(token).await? else {
                continue;
            };
            revoked += 1;
            if seen.contains(&family.id) {
                continue;
            }
            seen.push(family.id.clone());
            if let Some(provider_refresh) =
                self.open(&family.subject, family.provider_refresh.as_deref())
            {
                match self.provider.revoke(&provider_refresh).await {
                    Ok(_) => {}
                    Err(err) => tracing::warn!(
                        user = family.user.as_str(),
                        "cubbi's tokens are revoked, the provider's may not be: {err}"
                    ),
                }
            }
            tracing::info!(user = family.user.as_str(), "logged out");
        }
        Ok(revoked)
    }
}

impl OidcService {
    /// What the store keeps of the provider's refresh token: sealed (XChaCha20-Poly1305
    /// with the project key, bound to this issuer and subject), so the database alone does
    /// not hold it.
    fn seal(&self, subject: &str, token: Option<String>) -> Result<Option<String>, OidcError> {
        token
            .map(|token| {
                self.sealing
                    .seal(&self.sealing_context(subject), token.as_bytes())
                    .map_err(|err| OidcError::Store(err.to_string()))
            })
            .transpose()
    }

    fn open(&self, subject: &str, sealed: Option<&str>) -> Option<String> {
        let bytes = self.sealing.open(&self.sealing_context(subject), sealed?)?;
        String::from_utf8(bytes).ok()
    }

    fn sealing_context(&self, subject: &str) -> String {
        format!("oidc-refresh {} {subject}", self.provider.issuer())
    }
}

/// The key that seals the provider's refresh tokens: the project key
/// (`[projects.storage] key`, else `STATE_DIR/project.key`, made on first use).
pub fn sealing_key(
    config: &super::config::ServiceConfig,
) -> Result<crate::projects::crypto::ProjectKey, String> {
    use crate::projects::crypto::ProjectKey;
    match &config.projects.storage.key {
        Some(text) => ProjectKey::from_text(&text.0, "projects.storage.key").ok_or_else(|| {
            "projects.storage.key: give 32 bytes as 64 hex digits or as base64".to_string()
        }),
        None => ProjectKey::load_or_create(&config.state_dir.join(super::projects::KEY_FILE))
            .map_err(|err| err.to_string()),
    }
}

/// The groups in `claim`: a list of strings, or one string.
fn groups_of(claims: &VerifiedClaims, claim: &str) -> Vec<String> {
    match claims.claims.get(claim) {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|item| item.as_str().map(String::from))
            .collect(),
        Some(serde_json::Value::String(group)) => vec![group.clone()],
        _ => Vec::new(),
    }
}

/// A device login's handle: 32 random bytes, base64url.
pub(super) fn new_handle() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn settings(secret_file: &std::path::Path) -> OidcSettings {
        let text = format!(
            "[auth.oidc]\nissuer = \"https://id.example.test\"\nclient_id = \"cubbi\"\n\
             client_secret_file = \"{}\"\nallowed_groups = [\"dev\"]\n\
             admin_groups = [\"ops\"]\n",
            secret_file.display()
        );
        let config =
            super::super::config::ServiceConfig::parse(&text, std::path::Path::new("t")).unwrap();
        config.auth.oidc.unwrap()
    }

    fn service(dir: &std::path::Path) -> Result<Arc<OidcService>, String> {
        let store = Arc::new(super::super::store::SqliteStore::open(dir).unwrap());
        let key = crate::projects::crypto::ProjectKey::from_bytes([7; 32], "test");
        OidcService::new(&settings(&dir.join("secret")), store, false, key)
    }

    #[test]
    fn a_client_secret_others_can_read_stops_the_service() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "hunter2\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let Err(err) = service(dir.path()) else {
            panic!("a readable secret was accepted");
        };
        assert!(
            err.contains("chmod 600") && !err.contains("hunter2"),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(service(dir.path()).is_ok());
    }

    #[test]
    fn groups_decide_who_may_log_in_and_who_is_admin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "hunter2\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let oidc = service(dir.path()).unwrap();
        let claims = |value: serde_json::Value| VerifiedClaims {
            issuer: "https://id.example.test".into(),
            subject: "s".into(),
            claims: value.as_object().cloned().unwrap_or_default(),
        };
        let judged = oidc.judge(&claims(serde_json::json!({
            "preferred_username": "alice", "groups": ["dev", "ops"]})));
        assert_eq!(judged.unwrap(), ("alice".to_string(), true));
        let judged = oidc.judge(&claims(serde_json::json!({
            "preferred_username": "bob", "groups": "dev"})));
        assert_eq!(judged.unwrap(), ("bob".to_string(), false));
        let refused = oidc.judge(&claims(serde_json::json!({
            "preferred_username": "eve", "groups": ["guests"]})));
        assert!(
            matches!(refused, Err(OidcError::NotAllowed { .. })),
            "{refused:?}"
        );
        let refused = oidc.judge(&claims(serde_json::json!({
            "preferred_username": "Eve Admin", "groups": ["dev"]})));
        assert!(
            matches!(refused, Err(OidcError::BadUserName { .. })),
            "{refused:?}"
        );
        let refused = oidc.judge(&claims(serde_json::json!({"groups": ["dev"]})));
        assert!(
            matches!(refused, Err(OidcError::NoUserName { .. })),
            "{refused:?}"
        );
    }

    #[test]
    fn provider_refresh_tokens_are_sealed_to_their_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "hunter2\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let oidc = service(dir.path()).unwrap();
        let sealed = oidc
            .seal("alice-sub", Some("provider-rt".into()))
            .unwrap()
            .unwrap();
        assert!(!sealed.contains("provider-rt"));
        assert_eq!(
            oidc.open("alice-sub", Some(&sealed)).as_deref(),
            Some("provider-rt")
        );
        assert_eq!(oidc.open("bob-sub", Some(&sealed)), None);
        assert_eq!(oidc.seal("alice-sub", None).unwrap(), None);
    }
}
