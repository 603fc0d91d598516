//! SSH: the user's client key and per-session host keys (ed25519, OpenSSH format), the pinned
//! known_hosts entries and per-session OpenSSH config, and a russh client for the readiness
//! probe, one-off commands and interactive shells.

pub mod checked;
pub mod client;
pub mod files;
pub mod keys;

/// Everything SSH-related that can fail.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an OpenSSH private key: {reason}")]
    BadKey {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("cannot generate an SSH key: {0}")]
    KeyGeneration(String),
    #[error("SSH to {address}: {reason}")]
    Connection { address: String, reason: String },
    #[error("the session's host key does not match the pinned one: refusing to connect")]
    HostKeyMismatch,
    #[error("sshd refused the cubbi key for user `{0}`")]
    AuthenticationRefused(String),
    #[error("{0}")]
    Terminal(String),
    #[error("refusing to write OpenSSH files: {0}")]
    Unsafe(#[from] checked::UnsafeValue),
    #[error(
        "left {path} unchanged: {reason}; add this line at its top yourself: {line}",
        line = files::INCLUDE_LINE
    )]
    IncludeRefused {
        path: std::path::PathBuf,
        reason: String,
    },
}
