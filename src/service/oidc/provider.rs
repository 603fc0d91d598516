//! The service's client of the OpenID provider, on the `openidconnect` crate: discovery
//! (cached, fetched again when an ID token names a key the cached key set lacks), the device
//! authorization grant (RFC 8628), the refresh grant, revocation (RFC 7009), and ID token
//! validation (signature against the provider's keys, issuer, audience, expiry, nonce; the
//! crate refuses `alg: none` and every algorithm not allowed, RS256 by default).
//!
//! Every HTTP exchange with the provider is bounded in time (`auth.oidc.provider_timeout`)
//! and size ([`MAX_ANSWER_BYTES`]), follows no redirect, and its errors never quote a token.

use std::time::{Duration, Instant};

use base64::Engine;
use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod,
    CoreDeviceAuthorizationResponse, CoreGrantType, CoreIdToken, CoreIdTokenVerifier,
    CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm,
    CoreResponseMode, CoreResponseType, CoreRevocableToken, CoreSubjectIdentifierType,
    CoreTokenResponse,
};
use openidconnect::core::{CoreAuthPrompt, CoreAuthenticationFlow};
use openidconnect::{
    AdditionalProviderMetadata, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    DeviceAuthorizationUrl, EndpointMaybeSet, EndpointNotSet, EndpointSet, HttpRequest,
    HttpResponse, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    ProviderMetadata, RedirectUrl, RefreshToken, RequestTokenError, RevocationUrl, Scope,
};
use serde::{Deserialize, Serialize};

use super::config::OidcSettings;

/// The largest answer read from the provider (discovery documents and key sets are a few KB).
pub const MAX_ANSWER_BYTES: usize = 512 * 1024;
/// How long a discovery document (and its key set) is used before it is fetched again.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// The soonest the key set is fetched again for an unknown key id.
const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(10);

/// What the discovery document says beyond the core: the device and revocation endpoints.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ExtraMetadata {
    #[serde(default)]
    device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
    #[serde(default)]
    revocation_endpoint: Option<RevocationUrl>,
}

impl AdditionalProviderMetadata for ExtraMetadata {}

pub type Metadata = ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

type BaseClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Why a call to the provider failed. Messages name the provider, never a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// Unreachable, slow, or answering what is not OpenID Connect: the service answers 503.
    #[error("the OpenID provider {issuer} is unavailable: {reason}")]
    Down { issuer: String, reason: String },
    /// The provider answered with an OAuth error (`invalid_grant`, `access_denied`, ...).
    #[error("the OpenID provider {issuer} refused: {code}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        issuer: String,
        code: String,
        description: Option<String>,
    },
    /// An ID token that does not pass validation.
    #[error("the ID token from {issuer} is not valid: {reason}")]
    BadIdToken { issuer: String, reason: String },
    #[error("the OpenID provider {issuer} offers no {what}")]
    Missing { issuer: String, what: &'static str },
}

/// One exchange's failure, as the oauth2 layer sees it.
#[derive(Debug, thiserror::Error)]
pub enum HttpFailure {
    #[error("{0}")]
    Transport(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("an answer over {0} bytes")]
    TooLarge(usize),
}

/// The bounded HTTP client the `openidconnect` crate calls the provider with.
#[derive(Clone)]
pub struct ProviderHttp {
    client: reqwest::Client,
    timeout: Duration,
    max_bytes: usize,
}

impl ProviderHttp {
    pub fn new(timeout: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            // A redirect could send the client secret or a code elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("cubbi-serve/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| err.to_string())?;
        Ok(Self {
            client,
            timeout,
            max_bytes: MAX_ANSWER_BYTES,
        })
    }

    pub async fn call(self, request: HttpRequest) -> Result<HttpResponse, HttpFailure> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.exchange(request))
            .await
            .map_err(|_| HttpFailure::Timeout(timeout))?
    }

    async fn exchange(&self, request: HttpRequest) -> Result<HttpResponse, HttpFailure> {
        let (parts, body) = request.into_parts();
        let mut response = self
            .client
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(|err| HttpFailure::Transport(transport_reason(&err)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| HttpFailure::Transport(transport_reason(&err)))?
        {
            if bytes.len() + chunk.len() > self.max_bytes {
                return Err(HttpFailure::TooLarge(self.max_bytes));
            }
            bytes.extend_from_slice(&chunk);
        }
        let mut answer = HttpResponse::new(bytes);
        *answer.status_mut() = status;
        *answer.headers_mut() = headers;
        Ok(answer)
    }
}

/// A reqwest error and its causes, without the URL (which the message names elsewhere).
fn transport_reason(err: &reqwest::Error) -> String {
    let mut text = err.without_url_ref().to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        if self.is_timeout() {
            "timed out".into()
        } else if self.is_connect() {
            "cannot connect".into()
        } else if self.is_body() || self.is_decode() {
            "the answer broke off".into()
        } else {
            "the request failed".into()
        }
    }
}

/// An ID token that passed validation: who it names, and all its claims.
#[derive(Debug, Clone)]
pub struct VerifiedClaims {
    pub issuer: String,
    pub subject: String,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

struct Cached {
    metadata: Metadata,
    fetched: Instant,
}

/// The provider, as the service's OAuth client of it.
pub struct Provider {
    issuer: String,
    client_id: ClientId,
    secret: ClientSecret,
    scopes: Vec<String>,
    http: ProviderHttp,
    cache: tokio::sync::Mutex<Option<Cached>>,
    /// The soonest the discovery document is fetched again for an unknown key id.
    refetch_every: Duration,
}

impl Provider {
    pub fn new(settings: &OidcSettings, secret: String) -> Result<Self, ProviderError> {
        let issuer = settings.issuer.as_str().to_string();
        let http = ProviderHttp::new(settings.provider_timeout.duration()).map_err(|reason| {
            ProviderError::Down {
                issuer: issuer.clone(),
                reason,
            }
        })?;
        Ok(Self {
            issuer,
            client_id: ClientId::new(settings.client_id.as_str().to_string()),
            secret: ClientSecret::new(secret),
            scopes: settings.scopes.iter().map(String::from).collect(),
            http,
            cache: tokio::sync::Mutex::new(None),
            refetch_every: REFETCH_AT_MOST_EVERY,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    fn down(&self, reason: impl Into<String>) -> ProviderError {
        ProviderError::Down {
            issuer: self.issuer.clone(),
            reason: reason.into(),
        }
    }

    fn http_client(
        &self,
    ) -> impl Fn(
        HttpRequest,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<HttpResponse, HttpFailure>> + Send>,
    > + use<> {
        let http = self.http.clone();
        move |request| Box::pin(http.clone().call(request))
    }

    /// The discovery document: cached, or fetched when stale or `refetch` asks (an unknown
    /// key id), the latter at most every [`REFETCH_AT_MOST_EVERY`].
    async fn metadata(&self, refetch: bool) -> Result<Metadata, ProviderError> {
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.as_ref() {
            let age = cached.fetched.elapsed();
            let fresh_enough = if refetch {
                age < self.refetch_every
            } else {
                age < DISCOVERY_TTL
            };
            if fresh_enough {
                return Ok(cached.metadata.clone());
            }
        }
        let issuer = openidconnect::IssuerUrl::new(self.issuer.clone())
            .map_err(|err| self.down(format!("the issuer URL: {err}")))?;
        let http = self.http_client();
        let metadata = Metadata::discover_async(issuer, &http)
            .await
            .map_err(|err| self.down(format!("discovery: {}", error_chain(&err))))?;
        *cache = Some(Cached {
            metadata: metadata.clone(),
            fetched: Instant::now(),
        });
        Ok(metadata)
    }

    fn client(&self, metadata: Metadata) -> BaseClient {
        CoreClient::from_provider_metadata(
            metadata,
            self.client_id.clone(),
            Some(self.secret.clone()),
        )
    }

    /// Starts a device login (RFC 8628 §3.1): the user code and where to enter it.
    pub async fn start_device(&self) -> Result<CoreDeviceAuthorizationResponse, ProviderError> {
        let metadata = self.metadata(false).await?;
        let device_url = metadata
            .additional_metadata()
            .device_authorization_endpoint
            .clone()
            .ok_or_else(|| ProviderError::Missing {
                issuer: self.issuer.clone(),
                what: "device authorization endpoint (the device flow)",
            })?;
        let client = self
            .client(metadata)
            .set_device_authorization_url(device_url);
        let http = self.http_client();
        let mut request = client.exchange_device_code();
        for scope in &self.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        request
            .request_async(&http)
            .await
            .map_err(|err| self.token_error(err))
    }

    /// Polls the token endpoint (at the interval the provider asks, slowing down when told)
    /// until the user approved or denied the login, or the device code expired.
    pub async fn finish_device(
        &self,
        details: &CoreDeviceAuthorizationResponse,
    ) -> Result<CoreTokenResponse, ProviderError> {
        let metadata = self.metadata(false).await?;
        let client = self.client(metadata);
        let http = self.http_client();
        let request = client
            .exchange_device_access_token(details)
            .map_err(|err| self.down(err.to_string()))?;
        request
            .request_async(&http, tokio::time::sleep, None)
            .await
            .map_err(|err| match err {
                RequestTokenError::ServerResponse(response) => ProviderError::Refused {
                    issuer: self.issuer.clone(),
                    code: response.error().to_string(),
                    description: response.error_description().cloned(),
                },
                other => self.down(error_chain(&other)),
            })
    }

    /// Where to send a browser to log in (authorization code flow with PKCE, state and
    /// nonce): the URL, and the state, nonce and PKCE verifier the callback needs.
    pub async fn authorize_url(&self, redirect: &str) -> Result<BrowserStart, ProviderError> {
        let metadata = self.metadata(false).await?;
        let redirect = RedirectUrl::new(redirect.to_string())
            .map_err(|err| self.down(format!("auth.oidc.redirect_url: {err}")))?;
        let client = self.client(metadata).set_redirect_uri(redirect);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        // The crate adds `openid` itself.
        for scope in self.scopes.iter().filter(|scope| *scope != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        // Providers give a refresh token for offline_access only after an explicit consent.
        if self.scopes.iter().any(|scope| scope == "offline_access") {
            request = request.add_prompt(CoreAuthPrompt::Consent);
        }
        let (url, state, nonce) = request.url();
        Ok(BrowserStart {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
        })
    }

    /// Exchanges the authorization code (with the PKCE verifier) for tokens.
    pub async fn exchange_code(
        &self,
        redirect: &str,
        code: &str,
        verifier: &str,
    ) -> Result<CoreTokenResponse, ProviderError> {
        let metadata = self.metadata(false).await?;
        let redirect = RedirectUrl::new(redirect.to_string())
            .map_err(|err| self.down(format!("auth.oidc.redirect_url: {err}")))?;
        let client = self.client(metadata).set_redirect_uri(redirect);
        let http = self.http_client();
        client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|err| self.down(err.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_string()))
            .request_async(&http)
            .await
            .map_err(|err| self.token_error(err))
    }

    /// The refresh grant with the provider's refresh token.
    pub async fn refresh(&self, refresh_token: &str) -> Result<CoreTokenResponse, ProviderError> {
        let metadata = self.metadata(false).await?;
        let client = self.client(metadata);
        let http = self.http_client();
        let token = RefreshToken::new(refresh_token.to_string());
        client
            .exchange_refresh_token(&token)
            .map_err(|err| self.down(err.to_string()))?
            .request_async(&http)
            .await
            .map_err(|err| self.token_error(err))
    }

    /// Revokes the provider's refresh token when the provider has a revocation endpoint;
    /// false when it has none.
    pub async fn revoke(&self, refresh_token: &str) -> Result<bool, ProviderError> {
        let metadata = self.metadata(false).await?;
        let Some(url) = metadata.additional_metadata().revocation_endpoint.clone() else {
            return Ok(false);
        };
        let client = self.client(metadata).set_revocation_url(url);
        let http = self.http_client();
        client
            .revoke_token(CoreRevocableToken::RefreshToken(RefreshToken::new(
                refresh_token.to_string(),
            )))
            .map_err(|err| self.down(err.to_string()))?
            .request_async(&http)
            .await
            .map_err(|err| match err {
                RequestTokenError::ServerResponse(response) => ProviderError::Refused {
                    issuer: self.issuer.clone(),
                    code: response.error().to_string(),
                    description: response.error_description().cloned(),
                },
                other => self.down(error_chain(&other)),
            })?;
        Ok(true)
    }

    /// Validates the ID token of a token response; fetches the key set again once when the
    /// token names a key the cached set lacks (the provider rotated its keys).
    pub async fn verify(
        &self,
        response: &CoreTokenResponse,
        nonce: Option<&Nonce>,
    ) -> Result<VerifiedClaims, ProviderError> {
        let id_token =
            response
                .extra_fields()
                .id_token()
                .ok_or_else(|| ProviderError::BadIdToken {
                    issuer: self.issuer.clone(),
                    reason:
                        "the token response holds no ID token (is `openid` in auth.oidc.scopes?)"
                            .into(),
                })?;
        let metadata = self.metadata(false).await?;
        match self.verify_with(&metadata, id_token, nonce) {
            Err(VerifyError::UnknownKey) => {
                let metadata = self.metadata(true).await?;
                self.verify_with(&metadata, id_token, nonce)
                    .map_err(|err| err.into_provider_error(&self.issuer))
            }
            other => other.map_err(|err| err.into_provider_error(&self.issuer)),
        }
    }

    fn verify_with(
        &self,
        metadata: &Metadata,
        id_token: &CoreIdToken,
        nonce: Option<&Nonce>,
    ) -> Result<VerifiedClaims, VerifyError> {
        let verifier = CoreIdTokenVerifier::new_confidential_client(
            self.client_id.clone(),
            self.secret.clone(),
            metadata.issuer().clone(),
            metadata.jwks().clone(),
        );
        verify_id_token(id_token, &verifier, nonce)
    }

    fn token_error<RE: std::error::Error + 'static>(
        &self,
        err: RequestTokenError<
            RE,
            openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
        >,
    ) -> ProviderError {
        match err {
            RequestTokenError::ServerResponse(response) => ProviderError::Refused {
                issuer: self.issuer.clone(),
                code: response.error().to_string(),
                description: response.error_description().cloned(),
            },
            other => self.down(error_chain(&other)),
        }
    }
}

/// A browser login started: where to send the browser, and what the callback checks.
#[derive(Clone)]
pub struct BrowserStart {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub verifier: String,
}

/// The provider's refresh token in a token response, if it gave one.
pub fn refresh_token_of(response: &CoreTokenResponse) -> Option<String> {
    response.refresh_token().map(|token| token.secret().clone())
}

/// Why an ID token was refused.
#[derive(Debug)]
pub enum VerifyError {
    /// Signed with a key the key set lacks: fetch the set again.
    UnknownKey,
    Invalid(String),
}

impl VerifyError {
    fn into_provider_error(self, issuer: &str) -> ProviderError {
        let reason = match self {
            Self::UnknownKey => "it is signed with a key the provider does not publish".into(),
            Self::Invalid(reason) => reason,
        };
        ProviderError::BadIdToken {
            issuer: issuer.to_string(),
            reason,
        }
    }
}

/// Validates `id_token` with `verifier` (signature, issuer, audience, expiry) and `nonce`
/// (when the login sent one; else the token must carry none), and returns its claims.
pub fn verify_id_token(
    id_token: &CoreIdToken,
    verifier: &CoreIdTokenVerifier<'_>,
    nonce: Option<&Nonce>,
) -> Result<VerifiedClaims, VerifyError> {
    use openidconnect::{ClaimsVerificationError, SignatureVerificationError};
    let checked = match nonce {
        Some(expected) => id_token.claims(verifier, expected),
        None => id_token.claims(verifier, |found: Option<&Nonce>| match found {
            None => Ok(()),
            Some(_) => Err("the ID token carries a nonce this login did not send".to_string()),
        }),
    };
    let claims = match checked {
        Ok(claims) => claims,
        Err(ClaimsVerificationError::SignatureVerification(
            SignatureVerificationError::NoMatchingKey,
        )) => return Err(VerifyError::UnknownKey),
        Err(err) => return Err(VerifyError::Invalid(error_chain(&err))),
    };
    let issuer = claims.issuer().as_str().to_string();
    let subject = claims.subject().as_str().to_string();
    let raw = raw_claims(id_token).map_err(VerifyError::Invalid)?;
    Ok(VerifiedClaims {
        issuer,
        subject,
        claims: raw,
    })
}

/// The payload of a (validated) compact JWT as JSON: the claims the crate does not model
/// (groups, any username claim) are read from it.
fn raw_claims(
    id_token: &CoreIdToken,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let compact = id_token.to_string();
    let payload = compact
        .split('.')
        .nth(1)
        .ok_or("the ID token is not a compact JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|err| format!("the ID token's payload: {err}"))?;
    serde_json::from_slice(&bytes).map_err(|err| format!("the ID token's payload: {err}"))
}

/// An error and its causes, `: `-joined.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    //! ID token validation with a key made here (openssl): what the provider would sign,
    //! and every way a token can be wrong.
    use std::str::FromStr;

    use base64::Engine;
    use openidconnect::core::{CoreJwsSigningAlgorithm, CoreRsaPrivateSigningKey};
    use openidconnect::{IssuerUrl, JsonWebKeyId, JsonWebKeySet, PrivateSigningKey};
    use serde_json::{Value, json};

    use super::*;

    const ISSUER: &str = "https://id.example.test";
    const CLIENT: &str = "cubbi";

    fn key(kid: &str) -> CoreRsaPrivateSigningKey {
        let output = std::process::Command::new("openssl")
            .args(["genrsa", "-traditional", "2048"])
            .stderr(std::process::Stdio::null())
            .output()
            .expect("openssl genrsa runs");
        assert!(output.status.success(), "openssl genrsa failed");
        let pem = String::from_utf8(output.stdout).expect("PEM text");
        CoreRsaPrivateSigningKey::from_pem(&pem, Some(JsonWebKeyId::new(kid.into())))
            .expect("an RSA key")
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn now() -> i64 {
        crate::service::store::now()
    }

    fn claims() -> Value {
        json!({
            "iss": ISSUER, "aud": CLIENT, "sub": "sub-alice",
            "iat": now(), "exp": now() + 300,
            "preferred_username": "alice", "groups": ["dev", "admins"],
        })
    }

    fn sign(key: &CoreRsaPrivateSigningKey, header: &Value, claims: &Value) -> String {
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = key
            .sign(
                &CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
                signing_input.as_bytes(),
            )
            .expect("signed");
        format!("{signing_input}.{}", b64(&signature))
    }

    fn header(kid: &str) -> Value {
        json!({"alg": "RS256", "typ": "JWT", "kid": kid})
    }

    /// Parses and validates `text` as the service does; Err says why it was refused.
    fn check(
        text: &str,
        keys: &[&CoreRsaPrivateSigningKey],
        nonce: Option<&Nonce>,
    ) -> Result<VerifiedClaims, String> {
        let token = CoreIdToken::from_str(text).map_err(|err| format!("parse: {err}"))?;
        let jwks = JsonWebKeySet::new(keys.iter().map(|key| key.as_verification_key()).collect());
        let verifier = CoreIdTokenVerifier::new_confidential_client(
            ClientId::new(CLIENT.into()),
            ClientSecret::new("client-secret".into()),
            IssuerUrl::new(ISSUER.into()).expect("an issuer URL"),
            jwks,
        );
        verify_id_token(&token, &verifier, nonce).map_err(|err| format!("{err:?}"))
    }

    #[test]
    fn a_good_token_gives_its_claims_and_bad_ones_are_refused() {
        let k1 = key("k1");
        let good = sign(&k1, &header("k1"), &claims());
        let verified = check(&good, &[&k1], None).expect("a good token");
        assert_eq!(verified.subject, "sub-alice");
        assert_eq!(verified.issuer, ISSUER);
        assert_eq!(verified.claims["groups"], json!(["dev", "admins"]));

        // Tampered: the payload changed after signing.
        let mut parts: Vec<String> = good.split('.').map(String::from).collect();
        let mut changed = claims();
        changed["sub"] = json!("sub-mallory");
        parts[1] = b64(changed.to_string().as_bytes());
        let err = check(&parts.join("."), &[&k1], None).unwrap_err();
        assert!(err.contains("Signature") || err.contains("Crypto"), "{err}");

        // Signed by another key under the same key id.
        let k2 = key("k1");
        let err = check(&sign(&k2, &header("k1"), &claims()), &[&k1], None).unwrap_err();
        assert!(err.contains("Signature") || err.contains("Crypto"), "{err}");

        for (field, value, needle) in [
            ("exp", json!(now() - 600), "Expired"),
            ("aud", json!("another-client"), "audience"),
            ("iss", json!("https://evil.example.test"), "issuer"),
        ] {
            let mut wrong = claims();
            wrong[field] = value;
            let err = check(&sign(&k1, &header("k1"), &wrong), &[&k1], None).unwrap_err();
            assert!(
                err.to_lowercase().contains(&needle.to_lowercase()),
                "{field}: {err}"
            );
        }

        // `alg: none`, unsigned: refused, whether at parsing or validation.
        let none = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"}).to_string().as_bytes()),
            b64(claims().to_string().as_bytes())
        );
        assert!(check(&none, &[&k1], None).is_err());
        // HS256 with the client secret as the key is not an allowed algorithm either.
        let hs = format!(
            "{}.{}.{}",
            b64(json!({"alg": "HS256"}).to_string().as_bytes()),
            b64(claims().to_string().as_bytes()),
            b64(b"whatever")
        );
        assert!(check(&hs, &[&k1], None).is_err());
    }

    #[test]
    fn an_unknown_key_id_asks_for_the_keys_again_and_nonces_must_match() {
        let k1 = key("k1");
        let rotated = key("k2");
        let err = check(&sign(&rotated, &header("k2"), &claims()), &[&k1], None).unwrap_err();
        assert!(err.contains("UnknownKey"), "{err}");
        // With the new key published, it passes.
        assert!(
            check(
                &sign(&rotated, &header("k2"), &claims()),
                &[&k1, &rotated],
                None
            )
            .is_ok()
        );

        let mut with_nonce = claims();
        with_nonce["nonce"] = json!("n-1");
        let token = sign(&k1, &header("k1"), &with_nonce);
        assert!(check(&token, &[&k1], Some(&Nonce::new("n-1".into()))).is_ok());
        assert!(check(&token, &[&k1], Some(&Nonce::new("n-2".into()))).is_err());
        // A nonce where the login sent none (a replayed browser login's token).
        assert!(check(&token, &[&k1], None).is_err());
        // No nonce where one was sent.
        let plain = sign(&k1, &header("k1"), &claims());
        assert!(check(&plain, &[&k1], Some(&Nonce::new("n-1".into()))).is_err());
    }

    /// A provider on loopback whose key set the test changes: discovery and the keys are
    /// fetched once, and again when a token names a key the cached set lacks.
    #[tokio::test]
    async fn an_unknown_key_id_fetches_the_key_set_again() {
        use openidconnect::core::{CoreIdTokenFields, CoreTokenType};
        use openidconnect::{AccessToken, EmptyExtraTokenFields};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};

        let k1 = key("k1");
        let k2 = key("k2");
        let jwks = Arc::new(Mutex::new(JsonWebKeySet::new(vec![
            k1.as_verification_key(),
        ])));
        let fetches = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let metadata = json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/auth"),
            "token_endpoint": format!("{issuer}/token"),
            "jwks_uri": format!("{issuer}/jwks"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        });
        let app = {
            let jwks = Arc::clone(&jwks);
            let fetches = Arc::clone(&fetches);
            axum::Router::new()
                .route(
                    "/.well-known/openid-configuration",
                    axum::routing::get(move || {
                        let metadata = metadata.clone();
                        async move { axum::Json(metadata) }
                    }),
                )
                .route(
                    "/jwks",
                    axum::routing::get(move || {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        let keys = serde_json::to_value(&*jwks.lock().unwrap()).unwrap();
                        async move { axum::Json(keys) }
                    }),
                )
        };
        tokio::spawn(async move { axum::serve(listener, app).await });

        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[auth.oidc]\nissuer = \"{issuer}\"\nclient_id = \"{CLIENT}\"\n\
             client_secret_file = \"{}\"\n",
            dir.path().join("unused").display()
        );
        let config =
            crate::service::config::ServiceConfig::parse(&text, std::path::Path::new("t.toml"))
                .unwrap();
        let mut provider = Provider::new(config.auth.oidc.as_ref().unwrap(), "s".into()).unwrap();
        provider.refetch_every = Duration::ZERO;
        let response = |token: String| {
            CoreTokenResponse::new(
                AccessToken::new("provider-access".into()),
                CoreTokenType::Bearer,
                CoreIdTokenFields::new(
                    Some(CoreIdToken::from_str(&token).unwrap()),
                    EmptyExtraTokenFields {},
                ),
            )
        };
        let mut claims = claims();
        claims["iss"] = json!(issuer);

        let first = sign(&k1, &header("k1"), &claims);
        let verified = provider.verify(&response(first), None).await.unwrap();
        assert_eq!(verified.subject, "sub-alice");
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        // The provider rotates to k2: the cached set lacks it, so it is fetched again.
        *jwks.lock().unwrap() =
            JsonWebKeySet::new(vec![k1.as_verification_key(), k2.as_verification_key()]);
        let rotated = sign(&k2, &header("k2"), &claims);
        provider.verify(&response(rotated), None).await.unwrap();
        assert_eq!(fetches.load(Ordering::SeqCst), 2);

        // A key the provider does not publish at all stays refused after the refetch.
        let k3 = key("k3");
        let err = provider
            .verify(&response(sign(&k3, &header("k3"), &claims)), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::BadIdToken { .. }), "{err}");
        assert!(err.to_string().contains("does not publish"), "{err}");
    }
}
