//! Checking the credentials a project is given, and what may be shown of them.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use russh::keys::PrivateKey;
use russh::keys::ssh_key::HashAlg;
use serde::{Deserialize, Serialize};

use super::{Credential, ProjectError};

/// The largest SSH key file read; an OpenSSH RSA-8192 key is under 7 KiB.
pub const MAX_SSH_KEY_BYTES: u64 = 64 * 1024;
/// The longest token accepted.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// The HTTPS user a token goes with when none is given (GitHub's; GitLab wants `oauth2`).
pub const DEFAULT_TOKEN_USER: &str = "x-access-token";

/// Reads and checks an SSH private key file: OpenSSH format, not passphrase-protected, at
/// most 64 KiB.
pub fn read_ssh_key(path: &Path) -> Result<Credential, ProjectError> {
    let refuse = |reason: String| ProjectError::InvalidSshKey {
        path: path.to_path_buf(),
        reason,
    };
    // O_NONBLOCK: a FIFO in the key's place must not hang the command on open.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| ProjectError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let metadata = file.metadata().map_err(|source| ProjectError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !metadata.is_file() {
        return Err(refuse("it is not a regular file".into()));
    }
    if metadata.len() > MAX_SSH_KEY_BYTES {
        return Err(refuse(
            "it is larger than 64 KiB; is it really a key?".into(),
        ));
    }
    let mut text = String::new();
    file.take(MAX_SSH_KEY_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|_| refuse("it is not a text file".into()))?;
    if text.len() as u64 > MAX_SSH_KEY_BYTES {
        return Err(refuse(
            "it is larger than 64 KiB; is it really a key?".into(),
        ));
    }
    check_ssh_key_text(&text).map_err(refuse)?;
    let mut private_key = text.trim().to_string();
    private_key.push('\n');
    Ok(Credential::SshKey { private_key })
}

/// Checks the text of a private key; the reason never quotes it.
pub fn check_ssh_key_text(text: &str) -> Result<PrivateKey, String> {
    let key = PrivateKey::from_openssh(text.trim()).map_err(|_| {
        "not an OpenSSH private key (a file starting with \
         `-----BEGIN OPENSSH PRIVATE KEY-----`; `ssh-keygen -t ed25519 -f FILE` makes one)"
            .to_string()
    })?;
    if key.is_encrypted() {
        return Err(
            "the key is protected by a passphrase; give an unencrypted deploy key made for \
             this repository (`ssh-keygen -t ed25519 -N '' -f FILE`)"
                .into(),
        );
    }
    Ok(key)
}

/// A token must be one line of printable ASCII without spaces, at most 4 KiB. The reason
/// never quotes it.
pub fn validate_token(token: &str) -> Result<(), ProjectError> {
    match crate::token_text::problem(token, MAX_TOKEN_BYTES) {
        Some(reason) => Err(ProjectError::InvalidToken { reason }),
        None => Ok(()),
    }
}

/// The HTTPS user name a token goes with: `[A-Za-z0-9._-]`, 1 to 64, not starting with `-`.
pub fn validate_token_user(user: &str) -> Result<(), ProjectError> {
    let valid = !user.is_empty()
        && user.len() <= 64
        && !user.starts_with('-')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(ProjectError::InvalidTokenUser {
            user: user.to_string(),
        })
    }
}

/// What `list` and `show` print about a credential: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CredentialSummary {
    None,
    SshKey {
        public_key: String,
        fingerprint: String,
    },
    Token {
        username: String,
        /// Always `set`.
        token: String,
    },
}

impl CredentialSummary {
    pub fn of(credential: Option<&Credential>) -> Self {
        match credential {
            None => Self::None,
            Some(Credential::SshKey { private_key }) => match check_ssh_key_text(private_key) {
                Ok(key) => {
                    let mut public = key.public_key().clone();
                    public.set_comment("");
                    Self::SshKey {
                        public_key: public
                            .to_openssh()
                            .map(|line| line.trim().to_string())
                            .unwrap_or_default(),
                        fingerprint: public.fingerprint(HashAlg::Sha256).to_string(),
                    }
                }
                Err(_) => Self::SshKey {
                    public_key: "(unreadable key)".into(),
                    fingerprint: String::new(),
                },
            },
            Some(Credential::Token { username, .. }) => Self::Token {
                username: username.clone(),
                token: "set".into(),
            },
        }
    }

    /// One short line for tables: `ssh-key SHA256:...`, `token (x-access-token)`, `none`.
    pub fn short(&self) -> String {
        match self {
            Self::None => "none".into(),
            Self::SshKey { fingerprint, .. } => format!("ssh-key {fingerprint}"),
            Self::Token { username, .. } => format!("token ({username})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_keys_are_checked_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::ssh::keys::generate("deploy").unwrap();
        let pem = crate::ssh::keys::private_openssh(&key).unwrap();
        let path = dir.path().join("id");
        std::fs::write(&path, &pem).unwrap();
        let credential = read_ssh_key(&path).unwrap();
        let summary = CredentialSummary::of(Some(&credential));
        let CredentialSummary::SshKey {
            public_key,
            fingerprint,
        } = &summary
        else {
            panic!("{summary:?}");
        };
        assert!(public_key.starts_with("ssh-ed25519 "), "{public_key}");
        assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
        let shown = serde_json::to_string(&summary).unwrap() + &format!("{credential:?}");
        assert!(!shown.contains("PRIVATE"), "{shown}");

        let encrypted = key
            .encrypt(&mut rand::rng(), "passphrase")
            .unwrap()
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .unwrap();
        std::fs::write(&path, encrypted.as_bytes()).unwrap();
        let err = read_ssh_key(&path).unwrap_err().to_string();
        assert!(err.contains("unencrypted deploy key"), "{err}");

        std::fs::write(&path, "not a key").unwrap();
        assert!(read_ssh_key(&path).is_err());
        std::fs::write(&path, vec![b'a'; 70 * 1024]).unwrap();
        assert!(
            read_ssh_key(&path)
                .unwrap_err()
                .to_string()
                .contains("64 KiB")
        );
        assert!(read_ssh_key(dir.path()).is_err());
        assert!(read_ssh_key(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn tokens_and_users_are_checked() {
        assert!(validate_token("ghp_abc123").is_ok());
        for bad in ["", "a b", "a\nb", "é", &"a".repeat(MAX_TOKEN_BYTES + 1)] {
            let err = validate_token(bad).unwrap_err().to_string();
            assert!(bad.is_empty() || !err.contains(bad), "{err}");
        }
        assert!(validate_token_user("oauth2").is_ok());
        for bad in ["", "-x", "a b", "a:b", "a@b"] {
            assert!(validate_token_user(bad).is_err(), "{bad}");
        }
    }
}
