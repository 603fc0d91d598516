//! The bodies of the service's project routes (`/v1/projects`), shared by the service and
//! its client. Secrets go up once, in these bodies, and never come back: answers are
//! [`ProjectSummary`](super::store::ProjectSummary). No `Debug` here prints a secret.

use serde::{Deserialize, Deserializer, Serialize};

use super::known_hosts::{self, HostKey};
use super::store::ssh_host_pattern;
use super::url::RepoUrl;
use super::{Credential, ProjectError, credential};

/// A credential as sent: `{"ssh_key": "<OpenSSH private key text>"}` or `{"token": "..."}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialInput {
    /// The text of an unencrypted OpenSSH private key (a deploy key): clones over SSH.
    SshKey(String),
    /// An HTTPS token: clones over HTTPS as `token_user`.
    Token(String),
}

impl std::fmt::Debug for CredentialInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SshKey(_) => f.write_str("SshKey(<redacted>)"),
            Self::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// `POST /v1/projects`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddProjectRequest {
    /// git@host:org/repo, ssh://[user@]host[:port]/org/repo, https://host/org/repo or
    /// host/org/repo.
    pub url: String,
    /// Short name (default: the repository's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The branch sessions check out (default: the remote's default branch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The HTTPS user a token goes with (default: x-access-token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialInput>,
    /// `KEYTYPE BASE64` host keys of an SSH host the service does not know. The service
    /// never scans a host on request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_keys: Vec<String>,
}

/// `PUT /v1/projects/{reference}`: absent fields stay as they are; `null` clears `branch`
/// (the remote's default) and `credential` (a public repository).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProjectRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub branch: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_user: Option<String>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<CredentialInput>)]
    pub credential: Option<Option<CredentialInput>>,
    /// Replaces the project's own host keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_keys: Option<Vec<String>>,
}

/// A field that is present is `Some`, even when it is `null`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

impl CredentialInput {
    /// The checked credential; `token_user` goes with a token. Errors never quote the secret.
    pub fn into_credential(self, token_user: Option<&str>) -> Result<Credential, ProjectError> {
        match self {
            Self::SshKey(text) => {
                if token_user.is_some() {
                    return Err(ProjectError::Refused(
                        "token_user goes with a token, not an SSH key".into(),
                    ));
                }
                credential::check_ssh_key_text(&text).map_err(|reason| {
                    ProjectError::InvalidSshKey {
                        path: "credential.ssh_key".into(),
                        reason,
                    }
                })?;
                let mut private_key = text.trim().to_string();
                private_key.push('\n');
                Ok(Credential::SshKey { private_key })
            }
            Self::Token(token) => {
                let username = token_user.unwrap_or(credential::DEFAULT_TOKEN_USER);
                credential::validate_token_user(username)?;
                credential::validate_token(&token)?;
                Ok(Credential::Token {
                    username: username.to_string(),
                    token,
                })
            }
        }
    }

    /// What a client sends for `credential`.
    pub fn from_credential(credential: &Credential) -> Self {
        match credential {
            Credential::SshKey { private_key } => Self::SshKey(private_key.clone()),
            Credential::Token { token, .. } => Self::Token(token.clone()),
        }
    }
}

/// Parses host keys given for `clone_url`: refused for HTTPS, where no host key applies.
pub fn parse_host_keys(keys: &[String], clone_url: &str) -> Result<Vec<HostKey>, ProjectError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let Some(pattern) = ssh_host_pattern(clone_url) else {
        return Err(ProjectError::Refused(format!(
            "host_keys are for SSH projects; {clone_url} is cloned over HTTPS"
        )));
    };
    keys.iter()
        .map(|key| known_hosts::parse_given(key, &pattern))
        .collect()
}

/// Whether a clone over `clone_url` needs a host key the caller gave: SSH to a host the
/// store knows no key of (`known` empty) and none given.
pub fn needs_host_key(clone_url: &str, known: bool, given: &[HostKey]) -> Option<String> {
    let pattern = ssh_host_pattern(clone_url)?;
    (!known && given.is_empty()).then_some(pattern)
}

/// The URL a client sends for a parsed URL and credential: the form the service derives the
/// same clone URL from.
pub fn url_to_send(url: &RepoUrl, credential: Option<&Credential>) -> String {
    super::store::clone_url(url, credential)
}
