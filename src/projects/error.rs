//! Everything the project store can fail with. No message ever holds a credential.

use std::path::PathBuf;

use crate::api::ApiError;
use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("invalid repository URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error(
        "invalid project name `{name}`: use 1 to 63 of a-z, 0-9, `.`, `_` and `-`, \
         starting with a letter or digit"
    )]
    InvalidName { name: String },
    #[error("invalid branch `{branch}`: {reason}")]
    InvalidBranch { branch: String, reason: String },
    #[error("invalid token user `{user}`: use letters, digits, `.`, `_` and `-`")]
    InvalidTokenUser { user: String },
    #[error("invalid token: {reason}")]
    InvalidToken { reason: String },
    #[error("invalid SSH key {path}: {reason}")]
    InvalidSshKey { path: PathBuf, reason: String },
    #[error("invalid host key `{key}`: {reason}")]
    InvalidHostKey { key: String, reason: String },
    #[error(
        "no project matches `{reference}`; `cubbi project list` shows them, \
         `cubbi project add URL` registers one"
    )]
    NotFound { reference: String },
    #[error(
        "project {id} is already registered (as `{name}`); change it with `cubbi project update {name}`"
    )]
    AlreadyExists { id: String, name: String },
    #[error("the name `{name}` is taken by project {id}; choose another with --name")]
    NameTaken { name: String, id: String },
    #[error(
        "invalid CUBBI_PROJECT_KEY: give 32 bytes as 64 hex digits or as base64 \
         (e.g. `openssl rand -hex 32`)"
    )]
    BadEnvKey,
    #[error("invalid project key file {path}: {reason}")]
    BadKeyFile { path: PathBuf, reason: String },
    #[error(
        "cannot decrypt credentials in {path}: wrong key ({key_origin}) or the file was altered"
    )]
    Decrypt { path: PathBuf, key_origin: String },
    #[error(
        "cannot decrypt credentials in {path}: no key (CUBBI_PROJECT_KEY is not set and \
         {key_file} does not exist); set the key the credentials were stored with"
    )]
    NoKey { path: PathBuf, key_file: PathBuf },
    #[error("{path} is not a valid project file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path} must be a private folder (not a symbolic link); {reason}")]
    StoreDir { path: PathBuf, reason: String },
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
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("project database {path}: {reason}")]
    Database { path: PathBuf, reason: String },
    #[error("cannot scan the SSH host key of {address}: {reason}")]
    HostScan { address: String, reason: String },
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// What a cubbi service answered, as it worded it.
    #[error(transparent)]
    Service(ApiError),
}

impl From<ProjectError> for ApiError {
    fn from(err: ProjectError) -> Self {
        match err {
            ProjectError::InvalidUrl { .. }
            | ProjectError::InvalidName { .. }
            | ProjectError::InvalidBranch { .. }
            | ProjectError::InvalidTokenUser { .. }
            | ProjectError::InvalidToken { .. }
            | ProjectError::InvalidSshKey { .. }
            | ProjectError::InvalidHostKey { .. }
            | ProjectError::Refused(_) => ApiError::Invalid(err.to_string()),
            ProjectError::AlreadyExists { .. } | ProjectError::NameTaken { .. } => {
                ApiError::Conflict(err.to_string())
            }
            ProjectError::NotFound { .. } => ApiError::Invalid(err.to_string()),
            ProjectError::HostScan { .. } => ApiError::Unavailable(err.to_string()),
            ProjectError::Service(err) => err,
            other => ApiError::Failed {
                step: "project store".into(),
                reason: other.to_string(),
                logs: Vec::new(),
            },
        }
    }
}
