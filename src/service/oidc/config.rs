//! `[auth.oidc]` of service.toml: the OpenID provider the service logs its users in with.
//! Every value is parsed once into a typed one while the file is read, so a bad value stops
//! `cubbi serve` with the line it is on; the client secret is only ever read from a file
//! (mode 0600), never from the config text.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// `[auth]`: ways to log in beside the API tokens (which always work).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    pub oidc: Option<OidcSettings>,
}

/// `[auth.oidc]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSettings {
    /// The provider's issuer URL; its discovery document is at
    /// `ISSUER/.well-known/openid-configuration`.
    pub issuer: IssuerUrl,
    pub client_id: ClientId,
    /// A file holding the client secret, readable by its owner only (mode 0600).
    pub client_secret_file: PathBuf,
    #[serde(default)]
    pub scopes: Scopes,
    /// The claim whose value is the cubbi user name (it must pass the user-name rules).
    #[serde(default = "default_username_claim")]
    pub username_claim: ClaimName,
    /// The claim holding the user's groups (a list of strings, or one string).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: ClaimName,
    /// Members of any of these groups are admins; checked at login and every refresh.
    #[serde(default)]
    pub admin_groups: Vec<String>,
    /// Only members of one of these groups may log in (and refresh); empty: anyone the
    /// provider lets in.
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    /// Seconds the service's own access tokens live.
    #[serde(default = "default_access_lifetime")]
    pub access_lifetime: Lifetime,
    /// Seconds a refresh token lives (its family is refreshed with a new one each time).
    #[serde(default = "default_refresh_lifetime")]
    pub refresh_lifetime: Lifetime,
    /// The service's `/auth/callback` URL as registered at the provider; the browser login
    /// is offered only with it.
    #[serde(default)]
    pub redirect_url: Option<IssuerUrl>,
    /// Seconds one HTTP exchange with the provider may take.
    #[serde(default = "default_provider_timeout")]
    pub provider_timeout: Lifetime,
}

fn default_username_claim() -> ClaimName {
    ClaimName("preferred_username".into())
}

fn default_groups_claim() -> ClaimName {
    ClaimName("groups".into())
}

fn default_access_lifetime() -> Lifetime {
    Lifetime(900)
}

fn default_refresh_lifetime() -> Lifetime {
    Lifetime(30 * 24 * 3600)
}

fn default_provider_timeout() -> Lifetime {
    Lifetime(10)
}

/// An issuer URL: https, or http on a loopback address only (a provider on this machine, as
/// the tests run one); no query or fragment. Kept without a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct IssuerUrl(String);

impl IssuerUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IssuerUrl {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let url =
            reqwest::Url::parse(&text).map_err(|err| format!("`{text}` is not a URL: {err}"))?;
        let host = url.host_str().unwrap_or_default();
        if host.is_empty() {
            return Err(format!("`{text}` has no host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("`{text}` must have no `?` or `#` part"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("put no user or password in the URL".into());
        }
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(host) => {}
            "http" => {
                return Err(format!(
                    "`{text}` is plain http: only https is accepted, except on a \
                     loopback address (127.0.0.1, ::1, localhost)"
                ));
            }
            other => return Err(format!("`{text}`: scheme {other} is not https")),
        }
        Ok(Self(text))
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(address) => address.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// The OAuth client id: printable ASCII, no spaces.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ClientId(String);

impl ClientId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClientId {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text.is_empty() || text.len() > 256 || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("client_id must be 1 to 256 printable ASCII characters".into());
        }
        Ok(Self(text))
    }
}

/// The scopes asked for; `openid` must be one of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct Scopes(Vec<String>);

impl Scopes {
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

impl Default for Scopes {
    fn default() -> Self {
        Self(
            ["openid", "profile", "email", "offline_access"]
                .map(String::from)
                .to_vec(),
        )
    }
}

impl TryFrom<Vec<String>> for Scopes {
    type Error = String;

    fn try_from(scopes: Vec<String>) -> Result<Self, String> {
        if !scopes.iter().any(|scope| scope == "openid") {
            return Err("scopes must include `openid`".into());
        }
        if let Some(bad) = scopes.iter().find(|scope| {
            scope.is_empty() || !scope.bytes().all(|b| b.is_ascii_graphic() && b != b'"')
        }) {
            return Err(format!("scope {bad:?} is not a scope token"));
        }
        Ok(Self(scopes))
    }
}

/// A claim name: a JSON member name of the ID token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ClaimName(String);

impl ClaimName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClaimName {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text.is_empty() || text.len() > 128 || text.chars().any(char::is_control) {
            return Err("a claim name is 1 to 128 characters without control characters".into());
        }
        Ok(Self(text))
    }
}

/// Seconds, from 1 s to a year.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u64")]
pub struct Lifetime(u64);

impl Lifetime {
    pub fn seconds(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    pub fn duration(self) -> Duration {
        Duration::from_secs(self.0)
    }
}

impl TryFrom<u64> for Lifetime {
    type Error = String;

    fn try_from(seconds: u64) -> Result<Self, String> {
        if !(1..=366 * 24 * 3600).contains(&seconds) {
            return Err(format!("{seconds} seconds is not between 1 and a year"));
        }
        Ok(Self(seconds))
    }
}

/// Why the client secret could not be read. Never holds the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("auth.oidc.client_secret_file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error(
        "auth.oidc.client_secret_file {path} is readable by other users (mode {mode:04o}): run \
         `chmod 600 {path}`"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("auth.oidc.client_secret_file {path} is empty or holds more than one line")]
    Malformed { path: PathBuf },
}

/// The client secret in `path` (mode 0600 or tighter); its last line ending is dropped.
pub fn read_client_secret(path: &Path) -> Result<String, SecretFileError> {
    let unreadable = |err: std::io::Error| SecretFileError::Unreadable {
        path: path.to_path_buf(),
        reason: err.to_string(),
    };
    let mode = std::fs::metadata(path)
        .map_err(unreadable)?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Exposed {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() || secret.contains(['\n', '\r']) || secret.len() > 4096 {
        return Err(SecretFileError::Malformed {
            path: path.to_path_buf(),
        });
    }
    Ok(secret.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::config::ServiceConfig;

    const MINIMAL: &str = "[auth.oidc]\nissuer = \"https://id.example.org/realms/team\"\n\
                           client_id = \"cubbi\"\nclient_secret_file = \"/etc/cubbi/oidc-secret\"\n";

    #[test]
    fn defaults_fill_what_is_not_given() {
        let config = ServiceConfig::parse(MINIMAL, Path::new("t.toml")).unwrap();
        let oidc = config.auth.oidc.unwrap();
        assert_eq!(oidc.issuer.as_str(), "https://id.example.org/realms/team");
        assert_eq!(
            oidc.scopes.iter().collect::<Vec<_>>(),
            ["openid", "profile", "email", "offline_access"]
        );
        assert_eq!(oidc.username_claim.as_str(), "preferred_username");
        assert_eq!(oidc.groups_claim.as_str(), "groups");
        assert!(oidc.allowed_groups.is_empty() && oidc.admin_groups.is_empty());
        assert_eq!(oidc.access_lifetime.seconds(), 900);
        assert!(
            ServiceConfig::parse("", Path::new("t.toml"))
                .unwrap()
                .auth
                .oidc
                .is_none()
        );
    }

    #[test]
    fn bad_values_name_their_line() {
        for (extra, needle) in [
            (
                "scopes = [\"profile\"]",
                "line 5 (`scopes = [\"profile\"]`)",
            ),
            ("access_lifetime = 0", "line 5 (`access_lifetime = 0`)"),
            ("groups_claim = \"\"", "line 5"),
            ("client_secret = \"x\"", "unknown field `client_secret`"),
        ] {
            let text = format!("{MINIMAL}{extra}\n");
            let err = ServiceConfig::parse(&text, Path::new("t.toml")).unwrap_err();
            assert!(err.to_string().contains(needle), "{extra}: {err}");
        }
        for (issuer, needle) in [
            ("http://id.example.org", "plain http"),
            ("ftp://id.example.org", "not https"),
            ("https://id.example.org/?a=b", "`?`"),
            ("not a url", "not a URL"),
        ] {
            let text = MINIMAL.replace("https://id.example.org/realms/team", issuer);
            let err = ServiceConfig::parse(&text, Path::new("t.toml")).unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains("line 2") && message.contains(needle),
                "{message}"
            );
        }
        for loopback in [
            "http://127.0.0.1:8080",
            "http://[::1]:9",
            "http://localhost:1",
        ] {
            let text = MINIMAL.replace("https://id.example.org/realms/team", loopback);
            assert!(
                ServiceConfig::parse(&text, Path::new("t.toml")).is_ok(),
                "{loopback}"
            );
        }
    }

    #[test]
    fn the_secret_file_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "hunter2\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_client_secret(&path).unwrap_err().to_string();
        assert!(
            err.contains("chmod 600") && !err.contains("hunter2"),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_client_secret(&path).unwrap(), "hunter2");
        std::fs::write(&path, "a\nb\n").unwrap();
        assert!(matches!(
            read_client_secret(&path),
            Err(SecretFileError::Malformed { .. })
        ));
    }
}
