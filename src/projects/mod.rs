//! Projects: git repositories registered once with their credentials, then cloned into
//! sessions (issue #12).
//!
//! This module owns the types every part shares: the store (local files or the service's
//! database) produces a [`ProjectCheckout`] through [`ProjectSource`]; the local backend turns
//! it into files uploaded before the container starts (never env, labels or arguments).

pub mod catalog;
pub mod credential;
pub mod crypto;
mod error;
pub mod host_scan;
pub mod known_hosts;
pub mod records;
pub mod store;
pub mod url;
pub mod wire;

use std::fmt;

use async_trait::async_trait;

use crate::api::ApiError;

pub use error::ProjectError;
pub use store::{NewProject, Project, ProjectStore, ProjectUpdate};

/// How git authenticates to the project's host.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// The text of an OpenSSH private key file (unencrypted).
    SshKey { private_key: String },
    /// An HTTPS token, given to git as the password of `username` through a credential store
    /// file.
    Token { username: String, token: String },
}

impl fmt::Debug for Credential {
    /// Never prints a secret, whatever logs or error messages a value ends up in.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::SshKey { .. } => f.write_str("SshKey(<redacted>)"),
            Credential::Token { username, .. } => write!(f, "Token({username}:<redacted>)"),
        }
    }
}

/// Everything a session needs to clone a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectCheckout {
    /// The normalised `host/org/repo`.
    pub id: String,
    /// The URL git clones (an SSH or HTTPS form, without any secret in it).
    pub url: String,
    /// The branch to check out; the remote's default when absent.
    pub branch: Option<String>,
    pub credential: Option<Credential>,
    /// `known_hosts` lines for the git host (`HOST KEYTYPE BASE64`), written before the clone
    /// so it never trusts a key on first use.
    pub known_hosts: Vec<String>,
    /// A registered project runs its `.cubbi/init.sh`; an ad-hoc URL only when asked.
    pub registered: bool,
}

/// Where a backend looks up the projects its owner registered.
#[async_trait]
pub trait ProjectSource: Send + Sync {
    /// The registered project `reference` names (its id, its name or any URL form of it,
    /// optionally with `#branch`), secrets included; `None` when no project matches.
    async fn checkout(&self, reference: &str) -> Result<Option<ProjectCheckout>, ApiError>;
}
