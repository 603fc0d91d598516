//! Remotes: named cubbi services (`remote.endpoints.NAME.url` in the user config) and the
//! bearer tokens for them, kept in the system keyring (the Secret Service, see
//! [`super::keyring`]) where one answers, else one per file (0600) under
//! `$XDG_CONFIG_HOME/cubbi/credentials`.
//!
//! Tokens live outside `config.toml` so the config can be shown, shared and edited without
//! ever carrying a secret, and so each token file can be checked for its own permissions.

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::keys;
use crate::config::{Config, ConfigError};

/// The longest token accepted; service tokens are far shorter, and a cap keeps a wrong file
/// (or a pasted document) from being sent as a header.
pub const MAX_TOKEN_BYTES: usize = 512;

/// How long checking a token against a service may take before giving up.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// A cubbi service the CLI can act on with `-r NAME`.
pub struct Remote {
    pub name: String,
    /// Base URL without a trailing slash, so API paths can be appended as `{url}/v1/...`.
    pub url: String,
    pub token: Option<String>,
}

impl Remote {
    /// The token, or an error that tells how to store one.
    pub fn require_token(&self) -> Result<&str, RemoteError> {
        self.token.as_deref().ok_or_else(|| RemoteError::NoToken {
            name: self.name.clone(),
        })
    }
}

/// Hand-written so that `{:?}` (in logs, in panics) can never print the token.
impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "set"))
            .finish()
    }
}

/// Everything that can go wrong with remotes and their tokens. No message ever holds a token.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("no remote `{name}`; {}", known_remotes(known))]
    Unknown { name: String, known: Vec<String> },
    #[error("no token stored for remote `{name}`; store one with `cubbi -r {name} auth`")]
    NoToken { name: String },
    #[error("invalid token: {reason}")]
    InvalidToken { reason: String },
    #[error("invalid URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error(
        "{path} is readable by group or others, so the token in it may have leaked; \
         run `chmod 600 {path}` (and get a new token if others could read it)"
    )]
    TokenFileNotPrivate { path: PathBuf },
    #[error(
        "{path} is not a regular file (a symbolic link?); remove it and run `cubbi -r {name} auth`"
    )]
    TokenFileNotRegular { path: PathBuf, name: String },
    #[error("{path} does not hold a valid token ({reason}); run `cubbi -r {name} auth` again")]
    TokenFileInvalid {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("{path} must be a private folder (not a symbolic link); {reason}")]
    CredentialsDir { path: PathBuf, reason: String },
    #[error(
        "the keyring's entry for remote `{name}` is not a valid token ({reason}); run \
         `cubbi -r {name} auth` again"
    )]
    KeyringInvalid { name: String, reason: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the service at {url} refused this token (HTTP 401)")]
    TokenRefused { url: String },
    #[error(
        "{url} answered HTTP {status} instead of 200; is it a cubbi service? \
         (--no-verify stores the token without checking)"
    )]
    UnexpectedStatus { url: String, status: u16 },
    #[error("cannot reach {url}: {reason} (--no-verify stores the token without checking)")]
    Unreachable { url: String, reason: String },
    #[error("the login to remote `{name}` has expired; run `cubbi -r {name} auth` to log in again")]
    LoginExpired { name: String },
    #[error(
        "the service of remote `{name}` ended the login ({reason}); run `cubbi -r {name} auth` \
         to log in again"
    )]
    LoginRefused { name: String, reason: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

fn known_remotes(known: &[String]) -> String {
    if known.is_empty() {
        "no remotes are configured; add one with `cubbi remote add NAME URL`".into()
    } else {
        format!(
            "the known ones are {}; add another with `cubbi remote add NAME URL`",
            known.join(", ")
        )
    }
}

/// Where tokens are stored: `$XDG_CONFIG_HOME/cubbi/credentials`.
pub fn credentials_dir() -> Result<PathBuf, ConfigError> {
    Ok(crate::config::paths::config_dir()?.join("credentials"))
}

/// The file holding remote `name`'s token inside `dir`. `name` must already be validated, so it
/// cannot climb out of `dir`.
fn token_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.token"))
}

/// Where a remote's secret is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// In the system keyring (the Secret Service).
    Keyring,
    /// In this 0600 file.
    File(PathBuf),
}

impl std::fmt::Display for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stored::Keyring => f.write_str("keyring"),
            Stored::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Stores remote `name`'s token: in the keyring when one takes it (and the file of an
/// earlier token goes), else in the user's credentials folder.
pub fn save_token(name: &str, token: &str) -> Result<Stored, RemoteError> {
    keys::validate_remote_name(name)?;
    validate_token(token)?;
    let dir = credentials_dir()?;
    match super::keyring::save(name, super::keyring::Kind::Token, token.as_bytes()) {
        Ok(()) => {
            remove_token_in(&dir, name)?;
            Ok(Stored::Keyring)
        }
        Err(err) => {
            super::keyring::warn_fallback(&err);
            save_token_in(&dir, name, token)?;
            Ok(Stored::File(token_path(&dir, name)))
        }
    }
}

/// Reads remote `name`'s token; `None` when none is stored.
pub fn load_token(name: &str) -> Result<Option<String>, RemoteError> {
    Ok(load_token_stored(name)?.map(|(token, _)| token))
}

/// Remote `name`'s token and where it is kept: the keyring first, then the file.
pub fn load_token_stored(name: &str) -> Result<Option<(String, Stored)>, RemoteError> {
    keys::validate_remote_name(name)?;
    let dir = credentials_dir()?;
    match super::keyring::load(name, super::keyring::Kind::Token) {
        Ok(Some(secret)) => {
            let token = String::from_utf8(secret).map_err(|_| RemoteError::KeyringInvalid {
                name: name.to_string(),
                reason: "it is not text".into(),
            })?;
            validate_token(&token).map_err(|err| RemoteError::KeyringInvalid {
                name: name.to_string(),
                reason: match err {
                    RemoteError::InvalidToken { reason } => reason,
                    other => other.to_string(),
                },
            })?;
            return Ok(Some((token, Stored::Keyring)));
        }
        Ok(None) => {}
        Err(err) => super::keyring::warn_fallback(&err),
    }
    let path = token_path(&dir, name);
    Ok(load_token_in(&dir, name)?.map(|token| (token, Stored::File(path))))
}

/// Forgets remote `name`'s token, in the keyring and in the file; returns whether one was
/// stored.
pub fn remove_token(name: &str) -> Result<bool, RemoteError> {
    keys::validate_remote_name(name)?;
    let in_keyring = match super::keyring::remove(name, super::keyring::Kind::Token) {
        Ok(found) => found,
        Err(err) => {
            super::keyring::warn_fallback(&err);
            false
        }
    };
    Ok(remove_token_in(&credentials_dir()?, name)? | in_keyring)
}

/// Writes the token 0600 in a 0700 `dir`. The write goes to a temp file renamed over the
/// final name, and rename replaces a symbolic link there instead of following it, so a link
/// planted at the token's path never receives the token.
pub fn save_token_in(dir: &Path, name: &str, token: &str) -> Result<(), RemoteError> {
    keys::validate_remote_name(name)?;
    validate_token(token)?;
    ensure_private_dir(dir)?;
    let path = token_path(dir, name);
    crate::atomic_file::write(&path, format!("{token}\n").as_bytes(), 0o600, 0o700)
        .map_err(|source| RemoteError::Write { path, source })
}

/// Reads the token without following a symbolic link, and refuses a file group or others may
/// read: a token that may have leaked should be replaced, not used.
pub fn load_token_in(dir: &Path, name: &str) -> Result<Option<String>, RemoteError> {
    keys::validate_remote_name(name)?;
    let path = token_path(dir, name);
    // One byte more than a valid file can hold (token and newline), to tell "too long" apart.
    let limit = u64::try_from(MAX_TOKEN_BYTES + 2).unwrap_or(u64::MAX);
    let Some(text) = read_private_file(&path, name, limit)? else {
        return Ok(None);
    };
    let token = text.trim_end_matches(['\n', '\r']);
    if let Err(RemoteError::InvalidToken { reason }) = validate_token(token) {
        return Err(RemoteError::TokenFileInvalid {
            path,
            name: name.to_string(),
            reason,
        });
    }
    Ok(Some(token.to_string()))
}

/// The text of remote `name`'s credential file `path`, at most `limit` bytes, or `None` when
/// there is none. Read without following a symbolic link; a file that is not regular, or that
/// group or others may read, is refused: a credential that may have leaked should be
/// replaced, not used.
pub(super) fn read_private_file(
    path: &Path,
    name: &str,
    limit: u64,
) -> Result<Option<String>, RemoteError> {
    let not_regular = || RemoteError::TokenFileNotRegular {
        path: path.to_path_buf(),
        name: name.to_string(),
    };
    let read_error = |source| RemoteError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) if err.raw_os_error() == Some(nix::libc::ELOOP) => return Err(not_regular()),
        Err(source) => return Err(read_error(source)),
    };
    let metadata = file.metadata().map_err(read_error)?;
    if !metadata.is_file() {
        return Err(not_regular());
    }
    if metadata.permissions().mode() & 0o077 != 0 {
        return Err(RemoteError::TokenFileNotPrivate {
            path: path.to_path_buf(),
        });
    }
    let mut text = String::new();
    file.take(limit)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    Ok(Some(text))
}

/// Removes the token file (or a link in its place, never the link's target).
pub fn remove_token_in(dir: &Path, name: &str) -> Result<bool, RemoteError> {
    keys::validate_remote_name(name)?;
    let path = token_path(dir, name);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(RemoteError::Remove { path, source }),
    }
}

/// Creates `dir` 0700, or tightens an existing one to 0700; refuses a symbolic link, which
/// would put the tokens wherever the link points.
pub(super) fn ensure_private_dir(dir: &Path) -> Result<(), RemoteError> {
    let refuse = |reason: String| RemoteError::CredentialsDir {
        path: dir.to_path_buf(),
        reason,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|err| refuse(format!("cannot create it: {err}")))?;
    let metadata = std::fs::symlink_metadata(dir)
        .map_err(|err| refuse(format!("cannot inspect it: {err}")))?;
    if !metadata.is_dir() {
        return Err(refuse("it is a symbolic link or a file; remove it".into()));
    }
    if metadata.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|err| refuse(format!("cannot make it private: {err}")))?;
    }
    Ok(())
}

/// The configured base URL of remote `name`, without a trailing slash.
pub fn endpoint_url(config: &Config, name: &str) -> Result<String, RemoteError> {
    match config.remote.endpoints.get(name) {
        Some(endpoint) => Ok(endpoint.url.trim_end_matches('/').to_string()),
        None => Err(RemoteError::Unknown {
            name: name.to_string(),
            known: config.remote.endpoints.keys().cloned().collect(),
        }),
    }
}

/// Remote `name` as configured, with its token when one is stored: the access token of its
/// OpenID Connect login (refreshed first when about to expire), else its API token.
pub fn resolve(config: &Config, name: &str) -> Result<Remote, RemoteError> {
    let url = endpoint_url(config, name)?;
    let token = match super::login::load_login(name)? {
        Some(login) => Some(super::login::fresh_access_token(name, &url, login)?),
        None => load_token(name)?,
    };
    Ok(Remote {
        name: name.to_string(),
        url,
        token,
    })
}

/// A token must fit in an HTTP header as is: non-empty, printable ASCII without whitespace,
/// at most [`MAX_TOKEN_BYTES`]. The reason never quotes the token.
pub fn validate_token(token: &str) -> Result<(), RemoteError> {
    match crate::token_text::problem(token, MAX_TOKEN_BYTES) {
        Some(reason) => Err(RemoteError::InvalidToken { reason }),
        None => Ok(()),
    }
}

/// Checks a URL for `cubbi remote add` and returns it without trailing slashes: http or https,
/// a host, and nothing API paths could not be appended to (query, fragment) or that would
/// carry credentials of its own (user:password@).
pub fn normalize_url(url: &str) -> Result<String, RemoteError> {
    let invalid = |reason: &str| RemoteError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    keys::validate_url("remote URL", url)
        .map_err(|_| invalid("only http:// and https:// URLs are accepted"))?;
    let parsed = reqwest::Url::parse(url).map_err(|err| invalid(&err.to_string()))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "put no user or password in the URL; the token is the credential",
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("a service URL has no `?` or `#` part"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// Whether a token sent to `url` would cross a network unencrypted: plain http to anything
/// but this machine's loopback.
pub fn sends_token_in_clear(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    if parsed.scheme() != "http" {
        return false;
    }
    // host_str keeps the brackets of an IPv6 literal, which IpAddr does not parse.
    let host = parsed.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(address) => !address.is_loopback(),
        Err(_) => !host.trim_end_matches('.').eq_ignore_ascii_case("localhost"),
    }
}

/// Asks the service at `url` whether it accepts `token`, with `GET {url}/v1/sessions`.
/// Redirects are not followed, so the token only ever goes to the URL the user configured.
pub async fn check_token(url: &str, token: &str) -> Result<(), RemoteError> {
    validate_token(token)?;
    let endpoint = format!("{}/v1/sessions", url.trim_end_matches('/'));
    let unreachable = |reason: String| RemoteError::Unreachable {
        url: endpoint.clone(),
        reason,
    };
    let client = super::http_client(
        reqwest::Client::builder()
            .timeout(CHECK_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none()),
    )
    .map_err(|err| unreachable(err.to_string()))?;
    let mut authorization = reqwest::header::HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|_| RemoteError::InvalidToken {
            reason: "it cannot be sent in an HTTP header".into(),
        })?;
    authorization.set_sensitive(true);
    let response = client
        .get(&endpoint)
        .header(reqwest::header::AUTHORIZATION, authorization)
        .send()
        .await
        .map_err(|err| unreachable(error_chain(&err)))?;
    match response.status().as_u16() {
        200 => Ok(()),
        401 => Err(RemoteError::TokenRefused { url: endpoint }),
        status => Err(RemoteError::UnexpectedStatus {
            url: endpoint,
            status,
        }),
    }
}

/// [`error_chain`], for the login client.
pub(super) fn error_chain_text(err: &dyn std::error::Error) -> String {
    error_chain(err)
}

/// An error and its causes on one line: reqwest's own message ("error sending request") hides
/// the useful part (connection refused, certificate invalid) in its sources.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "cubbi_tok-3xAmple.Value~";

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn saved_token_is_private_and_loads_back() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("credentials");
        save_token_in(&dir, "team", TOKEN).unwrap();
        assert_eq!(mode_of(&dir), 0o700);
        assert_eq!(mode_of(&dir.join("team.token")), 0o600);
        assert_eq!(load_token_in(&dir, "team").unwrap().as_deref(), Some(TOKEN));
        assert_eq!(load_token_in(&dir, "other").unwrap(), None);
        assert!(remove_token_in(&dir, "team").unwrap());
        assert!(!remove_token_in(&dir, "team").unwrap());
        assert_eq!(load_token_in(&dir, "team").unwrap(), None);
    }

    #[test]
    fn existing_open_credentials_dir_is_tightened() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("credentials");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        save_token_in(&dir, "team", TOKEN).unwrap();
        assert_eq!(mode_of(&dir), 0o700);
    }

    #[test]
    fn token_file_readable_by_others_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("credentials");
        save_token_in(&dir, "team", TOKEN).unwrap();
        let path = dir.join("team.token");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_token_in(&dir, "team").unwrap_err();
        assert!(
            matches!(err, RemoteError::TokenFileNotPrivate { .. }),
            "{err}"
        );
        let message = err.to_string();
        assert!(message.contains("chmod 600"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(!message.contains(TOKEN), "{message}");
    }

    #[test]
    fn saving_replaces_a_symlink_and_never_writes_its_target() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("credentials");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let target = base.path().join("elsewhere");
        std::fs::write(&target, "untouched").unwrap();
        let link = dir.join("team.token");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        // A link in the token's place is never read through either.
        assert!(matches!(
            load_token_in(&dir, "team"),
            Err(RemoteError::TokenFileNotRegular { .. })
        ));
        save_token_in(&dir, "team", TOKEN).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(mode_of(&link), 0o600);
        assert_eq!(load_token_in(&dir, "team").unwrap().as_deref(), Some(TOKEN));
    }

    #[test]
    fn symlinked_credentials_dir_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let real = base.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let dir = base.path().join("credentials");
        std::os::unix::fs::symlink(&real, &dir).unwrap();
        assert!(matches!(
            save_token_in(&dir, "team", TOKEN),
            Err(RemoteError::CredentialsDir { .. })
        ));
        assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0);
    }

    #[test]
    fn names_that_could_leave_the_folder_are_refused() {
        let base = tempfile::tempdir().unwrap();
        for name in ["../x", "a/b", "", "local"] {
            assert!(save_token_in(base.path(), name, TOKEN).is_err(), "{name}");
            assert!(load_token_in(base.path(), name).is_err(), "{name}");
        }
    }

    #[test]
    fn tokens_are_validated() {
        assert!(validate_token(TOKEN).is_ok());
        assert!(validate_token(&"a".repeat(MAX_TOKEN_BYTES)).is_ok());
        for bad in [
            String::new(),
            "a".repeat(MAX_TOKEN_BYTES + 1),
            "has space".into(),
            "tab\there".into(),
            "new\nline".into(),
            "nul\0".into(),
            "ünicode".into(),
            "bell\x07".into(),
        ] {
            let err = validate_token(&bad).unwrap_err().to_string();
            assert!(bad.is_empty() || !err.contains(&bad), "{err}");
        }
    }

    #[test]
    fn invalid_token_file_is_reported_without_its_content() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("credentials");
        save_token_in(&dir, "team", TOKEN).unwrap();
        let path = dir.join("team.token");
        std::fs::write(&path, "two words\n").unwrap();
        let err = load_token_in(&dir, "team").unwrap_err().to_string();
        assert!(
            err.contains("whitespace") && !err.contains("two words"),
            "{err}"
        );
    }

    #[test]
    fn debug_never_shows_the_token() {
        let remote = Remote {
            name: "team".into(),
            url: "https://cubbi.example".into(),
            token: Some(TOKEN.into()),
        };
        let shown = format!("{remote:?} {remote:#?}");
        assert!(!shown.contains(TOKEN), "{shown}");
        assert!(shown.contains("set") && shown.contains("team"), "{shown}");
        let without = Remote {
            token: None,
            ..remote
        };
        assert!(format!("{without:?}").contains("None"));
        assert!(matches!(
            without.require_token(),
            Err(RemoteError::NoToken { .. })
        ));
    }

    #[test]
    fn resolve_names_known_remotes_when_unknown() {
        let mut config = Config::default();
        config.remote.endpoints.insert(
            "team".into(),
            crate::config::RemoteEndpoint {
                url: "https://cubbi.example/".into(),
            },
        );
        assert_eq!(
            endpoint_url(&config, "team").unwrap(),
            "https://cubbi.example"
        );
        let err = endpoint_url(&config, "nope").unwrap_err().to_string();
        assert!(
            err.contains("team") && err.contains("cubbi remote add"),
            "{err}"
        );
        assert!(
            RemoteError::NoToken { name: "x".into() }
                .to_string()
                .contains("cubbi -r x auth")
        );
    }

    #[test]
    fn urls_are_checked_and_trimmed() {
        assert_eq!(
            normalize_url("https://cubbi.example/").unwrap(),
            "https://cubbi.example"
        );
        assert_eq!(
            normalize_url("http://127.0.0.1:8080/base").unwrap(),
            "http://127.0.0.1:8080/base"
        );
        for bad in [
            "ftp://cubbi.example",
            "cubbi.example",
            "https://",
            "https://user:pw@cubbi.example",
            "https://cubbi.example/?x=1",
            "https://cubbi.example/#top",
        ] {
            assert!(normalize_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn clear_text_is_only_flagged_off_this_machine() {
        for local in [
            "https://cubbi.example",
            "http://127.0.0.1:8080",
            "http://127.1.2.3",
            "http://[::1]:80",
            "http://localhost:9000",
            "http://LOCALHOST.",
        ] {
            assert!(!sends_token_in_clear(local), "{local}");
        }
        for remote in [
            "http://cubbi.example",
            "http://10.0.0.2:80",
            "http://[fe80::1]",
        ] {
            assert!(sends_token_in_clear(remote), "{remote}");
        }
    }
}
