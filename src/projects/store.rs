//! The local project store: one TOML file per project in `$XDG_DATA_HOME/cubbi/projects/`
//! (0700), named `<first 16 hex digits of sha256(id)>.toml` (0600, written to a temp file and
//! renamed). Metadata is plain; the secret of the credential is sealed with
//! XChaCha20-Poly1305 (see [`super::crypto`]). Changes happen under an `flock` on `.lock` in
//! the folder, so concurrent `add`s lose nothing and names stay unique.
//!
//! ```toml
//! version = 1
//! id = "github.com/org/repo"
//! name = "repo"
//! url = "ssh://git@github.com/org/repo.git"
//! branch = "main"                  # optional
//! token_user = "x-access-token"    # token credentials only
//! host_keys = ["ssh-ed25519 AAAA..."]   # confirmed keys for hosts cubbi does not ship
//! created = 1764000000
//!
//! [credential]
//! kind = "ssh_key"                 # or "token" or "none"
//! sealed = "base64(nonce || ciphertext || tag)"
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::credential::{self, CredentialSummary};
use super::crypto::{self, ProjectKey};
use super::known_hosts::{self, HostKey};
use super::records::{DirRecords, ProjectRecords, Record};
use super::url::{self, RepoUrl};
use super::{Credential, ProjectCheckout, ProjectError, ProjectSource};
use crate::api::ApiError;

const FORMAT_VERSION: u32 = 1;
/// The format of a record whose sealed credential is bound to its owner as well (the
/// service's records, [`ProjectRecords::owner`]).
const BOUND_VERSION: u32 = 2;

/// A registered project, its secret decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// The normalised `host[:port]/org/repo`.
    pub id: String,
    pub name: String,
    /// The URL git clones, without any secret.
    pub url: String,
    /// The branch sessions check out; the remote's default when `None`.
    pub branch: Option<String>,
    pub credential: Option<Credential>,
    /// Host keys confirmed for this project's host (beyond the shipped and configured ones).
    pub host_keys: Vec<HostKey>,
    /// Unix seconds.
    pub created: i64,
    /// Where it is stored: its file, or its row of the service's database.
    pub file: PathBuf,
}

impl Project {
    /// Whether git reaches it over SSH, and so needs a host key.
    pub fn uses_ssh(&self) -> bool {
        is_ssh_clone_url(&self.url)
    }
}

/// What `project add` registers.
#[derive(Debug, Clone)]
pub struct NewProject {
    pub url: RepoUrl,
    /// The name; the repository's name when `None`.
    pub name: Option<String>,
    pub branch: Option<String>,
    pub credential: Option<Credential>,
    /// Host keys confirmed for a host cubbi does not know.
    pub host_keys: Vec<HostKey>,
}

/// What `project update` changes; `None` fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct ProjectUpdate {
    pub name: Option<String>,
    /// `Some(None)` removes the credential.
    pub credential: Option<Option<Credential>>,
    /// For a token credential: the HTTPS user it goes with.
    pub token_user: Option<String>,
    /// `Some(None)` goes back to the remote's default branch.
    pub branch: Option<Option<String>>,
    /// Replaces the project's own host keys.
    pub host_keys: Option<Vec<HostKey>>,
}

/// Where a host key is known from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostKeySource {
    /// Shipped in cubbi (github.com, gitlab.com, bitbucket.org).
    Builtin,
    /// `projects.known_hosts` in the user config.
    Config,
    /// Confirmed for this project at `add` or `update`.
    Project,
}

/// One host key as `show` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostKeySummary {
    /// `host` or `[host]:port`.
    pub host: String,
    pub key: String,
    pub fingerprint: String,
    pub source: HostKeySource,
}

/// A project as `list --json` and `show --json` print it: no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProjectSummary {
    pub id: String,
    pub name: String,
    pub url: String,
    pub branch: Option<String>,
    pub credential: CredentialSummary,
    pub host_keys: Vec<HostKeySummary>,
    pub created: i64,
}

/// The file's layout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectFile {
    version: u32,
    id: String,
    name: String,
    url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_user: Option<String>,
    #[serde(default)]
    host_keys: Vec<String>,
    created: i64,
    credential: SealedCredential,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedCredential {
    kind: CredentialKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum CredentialKind {
    None,
    SshKey,
    Token,
}

impl CredentialKind {
    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::SshKey => "ssh_key",
            Self::Token => "token",
        }
    }
}

/// The project store: projects encoded, sealed and checked here, kept by a
/// [`ProjectRecords`] (files for the local CLI, the database for the service).
pub struct ProjectStore {
    /// The folder (or database) the records are in, for messages.
    dir: PathBuf,
    records: Arc<dyn ProjectRecords>,
    key_file: PathBuf,
    /// Loaded on first need: a store of public projects never creates a key.
    key: Mutex<Option<ProjectKey>>,
    /// `projects.known_hosts` from the user config.
    config_known_hosts: Vec<String>,
}

impl std::fmt::Debug for ProjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectStore")
            .field("dir", &self.dir)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

/// `$XDG_DATA_HOME/cubbi/projects`, by default `~/.local/share/cubbi/projects`.
pub fn default_dir() -> Result<PathBuf, ProjectError> {
    dirs::data_dir()
        .map(|dir| dir.join("cubbi").join("projects"))
        .ok_or(ProjectError::Config(crate::config::ConfigError::NoHome))
}

impl ProjectStore {
    /// The user's store, its key from `CUBBI_PROJECT_KEY` or `~/.config/cubbi/project.key`,
    /// and `known_hosts` lines from the config's `projects.known_hosts`.
    pub fn open_default(config_known_hosts: Vec<String>) -> Result<Self, ProjectError> {
        Ok(Self::new(default_dir()?, crypto::default_key_file()?)
            .with_known_hosts(config_known_hosts))
    }

    /// The user's store with the extra host keys `config` lists (`projects.known_hosts`).
    pub fn for_config(config: &crate::config::Config) -> Result<Self, ProjectError> {
        Self::open_default(config.projects.known_hosts.clone())
    }

    /// A store in `dir`, its key from `CUBBI_PROJECT_KEY` or else `key_file`.
    pub fn new(dir: PathBuf, key_file: PathBuf) -> Self {
        Self {
            records: Arc::new(DirRecords::new(dir.clone())),
            dir,
            key_file,
            key: Mutex::new(None),
            config_known_hosts: Vec::new(),
        }
    }

    /// Uses `key` instead of the environment or the key file.
    pub fn with_key(self, key: ProjectKey) -> Self {
        Self {
            key: Mutex::new(Some(key)),
            ..self
        }
    }

    /// Extra `known_hosts` lines (the user config's `projects.known_hosts`).
    pub fn with_known_hosts(self, lines: Vec<String>) -> Self {
        Self {
            config_known_hosts: lines,
            ..self
        }
    }

    /// A store on other `records` (the service's database), sealing with `key`. `location`
    /// names where they are in messages.
    pub fn on_records(
        records: Arc<dyn ProjectRecords>,
        location: PathBuf,
        key: ProjectKey,
    ) -> Self {
        Self {
            dir: location.clone(),
            records,
            key_file: location,
            key: Mutex::new(Some(key)),
            config_known_hosts: Vec::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key, created on first use when `create` (sealing); reading never creates one, so
    /// a missing key is an error and not a silently new, wrong key.
    fn key(&self, create: bool) -> Result<Option<ProjectKey>, ProjectError> {
        let mut slot = self
            .key
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(key) = slot.as_ref() {
            return Ok(Some(key.clone()));
        }
        let key = if create {
            Some(ProjectKey::resolve(&self.key_file)?)
        } else {
            ProjectKey::resolve_existing(&self.key_file)?
        };
        slot.clone_from(&key);
        Ok(key)
    }

    fn no_key(&self, path: &Path) -> ProjectError {
        ProjectError::NoKey {
            path: path.to_path_buf(),
            key_file: self.key_file.clone(),
        }
    }

    /// Every project, sorted by name.
    pub fn list(&self) -> Result<Vec<Project>, ProjectError> {
        let mut projects = self
            .records
            .list()?
            .into_iter()
            .map(|record| self.decode(record))
            .collect::<Result<Vec<_>, _>>()?;
        projects.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(projects)
    }

    /// The project `reference` names: its id, its name or any URL form of it (no `#branch`).
    pub fn get(&self, reference: &str) -> Result<Option<Project>, ProjectError> {
        if reference.contains('/') {
            let id = RepoUrl::parse(reference)?.id();
            return self
                .records
                .get(&id)?
                .map(|record| self.decode(record))
                .transpose();
        }
        if url::validate_name(reference).is_err() {
            return Ok(None);
        }
        Ok(self
            .list()?
            .into_iter()
            .find(|project| project.name == reference))
    }

    /// Like [`get`](Self::get), but a missing project is an error.
    pub fn require(&self, reference: &str) -> Result<Project, ProjectError> {
        self.get(reference)?.ok_or_else(|| ProjectError::NotFound {
            reference: reference.to_string(),
        })
    }

    /// Registers a project. Refuses an id already registered, a name taken, and an SSH
    /// project whose host has no known key.
    pub fn add(&self, new: NewProject) -> Result<Project, ProjectError> {
        let id = new.url.id();
        let name = new.name.unwrap_or_else(|| url::default_name(&new.url));
        url::validate_name(&name)?;
        if let Some(branch) = &new.branch {
            url::validate_branch(branch)?;
        }
        let clone_url = clone_url(&new.url, new.credential.as_ref());
        let project = Project {
            id: id.clone(),
            name,
            url: clone_url,
            branch: new.branch,
            credential: new.credential,
            host_keys: dedup(new.host_keys),
            created: now(),
            file: self.path_for(&id),
        };
        self.check_host_keys(&project)?;
        // The records refuse a taken id or name in the same step that writes.
        let text = self.encode(&project)?;
        self.records.insert(&project.id, &project.name, &text)?;
        Ok(project)
    }

    /// Changes a project; see [`ProjectUpdate`].
    pub fn update(&self, reference: &str, change: ProjectUpdate) -> Result<Project, ProjectError> {
        let mut project = self.require(reference)?;
        if let Some(name) = change.name {
            url::validate_name(&name)?;
            project.name = name;
        }
        if let Some(branch) = change.branch {
            if let Some(branch) = &branch {
                url::validate_branch(branch)?;
            }
            project.branch = branch;
        }
        if let Some(credential) = change.credential {
            let parsed = RepoUrl::parse(&project.url)?;
            project.url = match &credential {
                None => project.url.clone(),
                Some(credential) => clone_url(&parsed, Some(credential)),
            };
            // A new token keeps the user the old one went with, unless told otherwise.
            let credential = match (credential, &project.credential) {
                (
                    Some(Credential::Token { token, .. }),
                    Some(Credential::Token { username, .. }),
                ) if change.token_user.is_none() => Some(Credential::Token {
                    username: username.clone(),
                    token,
                }),
                (credential, _) => credential,
            };
            project.credential = credential;
        }
        if let Some(user) = change.token_user {
            credential::validate_token_user(&user)?;
            match &mut project.credential {
                Some(Credential::Token { username, .. }) => *username = user,
                _ => {
                    return Err(ProjectError::Refused(format!(
                        "project {} has no token; --token-user goes with a token",
                        project.id
                    )));
                }
            }
        }
        if let Some(host_keys) = change.host_keys {
            project.host_keys = dedup(host_keys);
        }
        self.check_host_keys(&project)?;
        let text = self.encode(&project)?;
        self.records.replace(&project.id, &project.name, &text)?;
        Ok(project)
    }

    /// Forgets a project; returns what it was.
    pub fn remove(&self, reference: &str) -> Result<Project, ProjectError> {
        let project = self.require(reference)?;
        if !self.records.delete(&project.id)? {
            // Removed by someone else in the meantime: it is gone, as asked, but not by us.
            return Err(ProjectError::NotFound {
                reference: reference.to_string(),
            });
        }
        Ok(project)
    }

    /// Every host key that applies to `project`, with where it is known from. Empty for an
    /// HTTPS project.
    pub fn host_keys(&self, project: &Project) -> Vec<HostKeySummary> {
        let Some(host) = ssh_host_pattern(&project.url) else {
            return Vec::new();
        };
        self.known_host_keys(&host)
            .into_iter()
            .chain(
                project
                    .host_keys
                    .iter()
                    .cloned()
                    .map(|key| (key, HostKeySource::Project)),
            )
            .fold(Vec::<HostKeySummary>::new(), |mut all, (key, source)| {
                if !all.iter().any(|known| known.key == key.key) {
                    all.push(HostKeySummary {
                        host: host.clone(),
                        key: key.key,
                        fingerprint: key.fingerprint,
                        source,
                    });
                }
                all
            })
    }

    /// The keys cubbi ships or the config lists for `host_pattern` (`host` or
    /// `[host]:port`), without any project's own.
    pub fn known_host_keys(&self, host_pattern: &str) -> Vec<(HostKey, HostKeySource)> {
        let builtin = known_hosts::builtin_for(host_pattern)
            .into_iter()
            .map(|key| (key, HostKeySource::Builtin));
        let config = known_hosts::lines_for(
            self.config_known_hosts.iter().map(String::as_str),
            host_pattern,
        )
        .into_iter()
        .map(|key| (key, HostKeySource::Config));
        builtin.chain(config).collect()
    }

    /// What `list` and `show` print.
    pub fn summary(&self, project: &Project) -> ProjectSummary {
        ProjectSummary {
            id: project.id.clone(),
            name: project.name.clone(),
            url: project.url.clone(),
            branch: project.branch.clone(),
            credential: CredentialSummary::of(project.credential.as_ref()),
            host_keys: self.host_keys(project),
            created: project.created,
        }
    }

    /// The checkout for `reference` (`ID|NAME|URL[#branch]`): the branch after `#` replaces
    /// the stored one.
    pub fn checkout_of(&self, reference: &str) -> Result<Option<ProjectCheckout>, ProjectError> {
        let (base, branch) = match reference.split_once('#') {
            Some((base, branch)) => (base, Some(branch)),
            None => (reference, None),
        };
        // What cannot be a registered project's id, name or URL (an ad-hoc URL in a form the
        // store does not take, say) is simply no registered project.
        let project = match self.get(base) {
            Ok(Some(project)) => project,
            Ok(None) | Err(ProjectError::InvalidUrl { .. } | ProjectError::InvalidName { .. }) => {
                return Ok(None);
            }
            Err(err) => return Err(err),
        };
        if let Some(branch) = branch {
            url::validate_branch(branch)?;
        }
        let known_hosts = self
            .host_keys(&project)
            .into_iter()
            .map(|key| format!("{} {}", key.host, key.key))
            .collect();
        Ok(Some(ProjectCheckout {
            id: project.id,
            url: project.url,
            branch: branch.map(str::to_string).or(project.branch),
            credential: project.credential,
            known_hosts,
            registered: true,
        }))
    }

    /// Where project `id` is stored: `<dir>/<sha256(id)[..16]>.toml` locally.
    pub fn path_for(&self, id: &str) -> PathBuf {
        self.records.location(id)
    }

    fn check_host_keys(&self, project: &Project) -> Result<(), ProjectError> {
        if project.uses_ssh() && self.host_keys(project).is_empty() {
            let host = ssh_host_pattern(&project.url).unwrap_or_default();
            return Err(ProjectError::Refused(format!(
                "no SSH host key is known for {host}; give it with --host-key \"KEYTYPE BASE64\" \
                 (or let `cubbi project add` scan it and confirm), or add it to \
                 projects.known_hosts"
            )));
        }
        Ok(())
    }

    /// The record text of `project`, its credential sealed.
    fn encode(&self, project: &Project) -> Result<String, ProjectError> {
        let (kind, secret, token_user) = match &project.credential {
            None => (CredentialKind::None, None, None),
            Some(Credential::SshKey { private_key }) => {
                (CredentialKind::SshKey, Some(private_key.as_str()), None)
            }
            Some(Credential::Token { username, token }) => (
                CredentialKind::Token,
                Some(token.as_str()),
                Some(username.clone()),
            ),
        };
        let sealed = match secret {
            Some(secret) => Some(
                self.key(true)?
                    .ok_or_else(|| self.no_key(&project.file))?
                    .seal(
                        &associated_data(&project.id, kind, self.records.owner()),
                        secret.as_bytes(),
                    )?,
            ),
            None => None,
        };
        let file = ProjectFile {
            version: match self.records.owner() {
                Some(_) => BOUND_VERSION,
                None => FORMAT_VERSION,
            },
            id: project.id.clone(),
            name: project.name.clone(),
            url: project.url.clone(),
            branch: project.branch.clone(),
            token_user,
            host_keys: project
                .host_keys
                .iter()
                .map(|key| key.key.clone())
                .collect(),
            created: project.created,
            credential: SealedCredential { kind, sealed },
        };
        let text = toml::to_string(&file).map_err(|err| ProjectError::Write {
            path: project.file.clone(),
            source: std::io::Error::other(err),
        })?;
        Ok(format!(
            "# A cubbi project (`cubbi project show {}`); a credential is stored encrypted.\n{text}",
            project.name
        ))
    }

    /// Decodes and checks one record, decrypting its credential. Any inconsistency is an
    /// error naming where the record is: never a silently different project.
    fn decode(&self, record: Record) -> Result<Project, ProjectError> {
        self.decode_with(record, false).map(|(project, _)| project)
    }

    /// Reseals, bound to the owner, every record of a shared store sealed before credentials
    /// were bound to their user; the number resealed. The service runs it at start.
    pub fn bind_credentials(&self) -> Result<usize, ProjectError> {
        if self.records.owner().is_none() {
            return Ok(0);
        }
        let mut resealed = 0;
        for record in self.records.list()? {
            // Only unbound sealed records are opened here; the rest is checked when read.
            let unbound = toml::from_str::<ProjectFile>(&record.text).is_ok_and(|stored| {
                stored.version == FORMAT_VERSION && stored.credential.sealed.is_some()
            });
            if unbound {
                let (project, _) = self.decode_with(record, true)?;
                let text = self.encode(&project)?;
                self.records.replace(&project.id, &project.name, &text)?;
                resealed += 1;
            }
        }
        Ok(resealed)
    }

    /// [`Self::decode`], and the record's format version. `unbound`: a shared store's record
    /// sealed without its owner is read (only to reseal it).
    fn decode_with(&self, record: Record, unbound: bool) -> Result<(Project, u32), ProjectError> {
        let Record { location, text } = record;
        let path = location.as_path();
        let corrupt = |reason: String| ProjectError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let stored: ProjectFile = toml::from_str(&text)
            .map_err(|err| corrupt(format!("{} (was it cut short or edited?)", err.message())))?;
        let owner = self.records.owner();
        let bound = match (stored.version, owner) {
            (FORMAT_VERSION, None) => None,
            (FORMAT_VERSION, Some(_)) if unbound || stored.credential.sealed.is_none() => None,
            (FORMAT_VERSION, Some(user)) => {
                return Err(corrupt(format!(
                    "its credential is not bound to user {user} (a record of an older cubbi the \
                     service did not reseal at start, or one copied from another user)"
                )));
            }
            (BOUND_VERSION, Some(user)) => Some(user),
            (version, _) => {
                return Err(corrupt(format!(
                    "format version {version} is not one this store reads; was it written by \
                     another cubbi?"
                )));
            }
        };
        let parsed = RepoUrl::parse(&stored.id).map_err(|err| corrupt(err.to_string()))?;
        if parsed.id() != stored.id || self.records.location(&stored.id) != path {
            return Err(corrupt(format!(
                "it holds project {} under another project's file name",
                stored.id
            )));
        }
        let url = RepoUrl::parse(&stored.url).map_err(|err| corrupt(err.to_string()))?;
        if url.id() != stored.id {
            return Err(corrupt(format!(
                "its URL {} is not project {}",
                stored.url, stored.id
            )));
        }
        url::validate_name(&stored.name).map_err(|err| corrupt(err.to_string()))?;
        if let Some(branch) = &stored.branch {
            url::validate_branch(branch).map_err(|err| corrupt(err.to_string()))?;
        }
        let host_keys = stored
            .host_keys
            .iter()
            .map(|key| HostKey::parse(key))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| corrupt(err.to_string()))?;
        let kind = stored.credential.kind;
        let credential = match (kind, &stored.credential.sealed) {
            (CredentialKind::None, None) => None,
            (CredentialKind::None, Some(_)) => {
                return Err(corrupt("a credential of kind none is sealed".into()));
            }
            (_, None) => {
                return Err(corrupt(format!(
                    "its {} credential is missing",
                    kind.name()
                )));
            }
            (_, Some(sealed)) => {
                let key = self.key(false)?.ok_or_else(|| self.no_key(path))?;
                let secret = key
                    .open(&associated_data(&stored.id, kind, bound), sealed)
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| ProjectError::Decrypt {
                        path: path.to_path_buf(),
                        key_origin: key.origin().to_string(),
                    })?;
                Some(match kind {
                    CredentialKind::SshKey => Credential::SshKey {
                        private_key: secret,
                    },
                    _ => Credential::Token {
                        username: stored
                            .token_user
                            .clone()
                            .unwrap_or_else(|| credential::DEFAULT_TOKEN_USER.to_string()),
                        token: secret,
                    },
                })
            }
        };
        if let Some(user) = &stored.token_user {
            credential::validate_token_user(user).map_err(|err| corrupt(err.to_string()))?;
        }
        let version = stored.version;
        Ok((
            Project {
                id: stored.id,
                name: stored.name,
                url: stored.url,
                branch: stored.branch,
                credential,
                host_keys,
                created: stored.created,
                file: path.to_path_buf(),
            },
            version,
        ))
    }
}

#[async_trait]
impl ProjectSource for ProjectStore {
    async fn checkout(&self, reference: &str) -> Result<Option<ProjectCheckout>, ApiError> {
        self.checkout_of(reference).map_err(ApiError::from)
    }
}

/// The URL git clones: SSH for a key (as given when it was an SSH URL), HTTPS for a token,
/// and for no credential the form the user wrote.
pub fn clone_url(url: &RepoUrl, credential: Option<&Credential>) -> String {
    match credential {
        Some(Credential::SshKey { .. }) => url.ssh_url(),
        Some(Credential::Token { .. }) => url.https_url(),
        None if url.is_ssh_form() => url.ssh_url(),
        None => url.https_url(),
    }
}

/// Whether git reaches `clone_url` over SSH (`ssh://` or scp-like `user@host:path`).
pub fn is_ssh_clone_url(clone_url: &str) -> bool {
    RepoUrl::parse(clone_url).is_ok_and(|url| url.is_ssh_form())
}

/// `host` or `[host]:port` of an SSH clone URL; `None` for HTTPS.
pub fn ssh_host_pattern(clone_url: &str) -> Option<String> {
    RepoUrl::parse(clone_url)
        .ok()
        .filter(RepoUrl::is_ssh_form)
        .map(|url| url.known_hosts_host())
}

/// The associated data binds the id and the kind of credential, and in a shared store the
/// user the record belongs to: a sealed credential copied to another user's record, or to
/// another project, does not open.
fn associated_data(id: &str, kind: CredentialKind, owner: Option<&str>) -> String {
    match owner {
        None => format!("{id}\0{}", kind.name()),
        Some(user) => format!("{id}\0{}\0user={user}", kind.name()),
    }
}

fn dedup(keys: Vec<HostKey>) -> Vec<HostKey> {
    let mut unique: Vec<HostKey> = Vec::new();
    for key in keys {
        if !unique.iter().any(|known| known.key == key.key) {
            unique.push(key);
        }
    }
    unique
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    fn store(dir: &Path, byte: u8) -> ProjectStore {
        ProjectStore::new(dir.join("projects"), dir.join("project.key"))
            .with_key(ProjectKey::from_bytes([byte; 32], "TEST_KEY"))
    }

    fn token(value: &str) -> Option<Credential> {
        Some(Credential::Token {
            username: credential::DEFAULT_TOKEN_USER.into(),
            token: value.into(),
        })
    }

    fn new(url: &str, credential: Option<Credential>) -> NewProject {
        NewProject {
            url: RepoUrl::parse(url).unwrap(),
            name: None,
            branch: None,
            credential,
            host_keys: Vec::new(),
        }
    }

    #[test]
    fn add_get_checkout_update_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 1);
        let key = crate::ssh::keys::generate("deploy").unwrap();
        let pem = crate::ssh::keys::private_openssh(&key).unwrap();
        let added = store
            .add(new(
                "git@github.com:Org/Repo.git",
                Some(Credential::SshKey {
                    private_key: pem.clone(),
                }),
            ))
            .unwrap();
        assert_eq!(added.id, "github.com/Org/Repo");
        assert_eq!(added.name, "repo");
        assert_eq!(added.url, "git@github.com:Org/Repo.git", "cloned as given");
        assert!(added.uses_ssh());
        assert_eq!(ssh_host_pattern(&added.url).as_deref(), Some("github.com"));
        let text = std::fs::read_to_string(&added.file).unwrap();
        assert!(
            !text.contains("PRIVATE") && !text.contains(&pem[40..80]),
            "{text}"
        );
        let mode = std::fs::metadata(&added.file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(store.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);

        for reference in ["repo", "github.com/Org/Repo", "https://github.com/Org/Repo"] {
            assert_eq!(store.get(reference).unwrap().unwrap(), added, "{reference}");
        }
        let checkout = store.checkout_of("repo#dev").unwrap().unwrap();
        assert_eq!(checkout.branch.as_deref(), Some("dev"));
        assert!(checkout.registered);
        assert_eq!(
            checkout.credential,
            Some(Credential::SshKey { private_key: pem })
        );
        assert_eq!(checkout.known_hosts.len(), 3);
        assert!(checkout.known_hosts.iter().all(
            |line| line.starts_with("github.com ssh-") || line.starts_with("github.com ecdsa-")
        ));
        assert!(store.checkout_of("nope").unwrap().is_none());
        for other in [
            "Repo",
            "file:///srv/repo.git",
            "https://gitlab.com/o/r#dev",
            "/srv/x",
        ] {
            assert!(store.checkout_of(other).unwrap().is_none(), "{other}");
        }
        assert!(store.checkout_of("repo#-x").is_err());

        assert!(matches!(
            store.add(new("https://github.com/Org/Repo", None)),
            Err(ProjectError::AlreadyExists { .. })
        ));
        assert!(matches!(
            store.add(new("https://gitlab.com/x/repo", None)),
            Err(ProjectError::NameTaken { .. })
        ));

        let updated = store
            .update(
                "repo",
                ProjectUpdate {
                    name: Some("renamed".into()),
                    credential: Some(token("tok-123")),
                    branch: Some(Some("main".into())),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(updated.url, "https://github.com/Org/Repo.git");
        assert_eq!(store.get("renamed").unwrap().unwrap(), updated);
        assert!(store.get("repo").unwrap().is_none());
        let checkout = store.checkout_of("renamed").unwrap().unwrap();
        assert_eq!(checkout.branch.as_deref(), Some("main"));
        assert!(checkout.known_hosts.is_empty());
        let updated = store
            .update(
                "renamed",
                ProjectUpdate {
                    token_user: Some("oauth2".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            updated.credential,
            Some(Credential::Token {
                username: "oauth2".into(),
                token: "tok-123".into()
            })
        );
        assert_eq!(store.remove("renamed").unwrap().id, "github.com/Org/Repo");
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn an_unknown_ssh_host_needs_a_host_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 1);
        let err = store
            .add(new("ssh://git@git.example.com:2222/o/r", None))
            .unwrap_err();
        assert!(err.to_string().contains("--host-key"), "{err}");
        assert!(store.list().unwrap().is_empty());
        let mut project = new("ssh://git@git.example.com:2222/o/r", None);
        project.host_keys = vec![HostKey::parse(ED25519).unwrap()];
        store.add(project).unwrap();
        let checkout = store
            .checkout_of("git.example.com:2222/o/r")
            .unwrap()
            .unwrap();
        assert_eq!(
            checkout.known_hosts,
            vec![format!("[git.example.com]:2222 {ED25519}")]
        );
        // A host the config knows needs nothing more.
        let store = store.with_known_hosts(vec![format!("other.example {ED25519}")]);
        store.add(new("git@other.example:o/r2", None)).unwrap();
    }

    #[test]
    fn a_wrong_key_or_an_altered_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let added = store(dir.path(), 1)
            .add(new("github.com/o/r", token("secret-token")))
            .unwrap();
        let err = store(dir.path(), 2).list().unwrap_err().to_string();
        assert!(
            err.contains(&added.file.display().to_string())
                && err.contains("wrong key (TEST_KEY)")
                && err.contains("altered"),
            "{err}"
        );
        let text = std::fs::read_to_string(&added.file).unwrap();
        let sealed_at = text.find("sealed = \"").unwrap() + 12;
        let mut bytes = text.clone().into_bytes();
        bytes[sealed_at] = if bytes[sealed_at] == b'A' { b'B' } else { b'A' };
        std::fs::write(&added.file, &bytes).unwrap();
        assert!(matches!(
            store(dir.path(), 1).list(),
            Err(ProjectError::Decrypt { .. })
        ));
        // Every prefix of the file is an error, or (a lost final newline) the same project.
        for len in 0..text.len() {
            std::fs::write(&added.file, &text[..len]).unwrap();
            match store(dir.path(), 1).get("github.com/o/r") {
                Err(err) => assert!(
                    err.to_string().contains(&added.file.display().to_string()),
                    "{err}"
                ),
                Ok(found) => assert_eq!(found, Some(added.clone()), "prefix of {len} bytes"),
            }
        }
        std::fs::write(&added.file, &text).unwrap();
        assert_eq!(store(dir.path(), 1).get("r").unwrap(), Some(added));
    }

    #[test]
    fn a_credential_moved_to_another_project_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 1);
        let one = store
            .add(new("github.com/o/one", token("one-token")))
            .unwrap();
        let two = store
            .add(new("github.com/o/two", token("two-token")))
            .unwrap();
        let sealed_of = |path: &Path| {
            let text = std::fs::read_to_string(path).unwrap();
            text.lines()
                .find(|line| line.starts_with("sealed"))
                .unwrap()
                .to_string()
        };
        let text_two = std::fs::read_to_string(&two.file).unwrap();
        let moved = text_two.replace(&sealed_of(&two.file), &sealed_of(&one.file));
        std::fs::write(&two.file, moved).unwrap();
        assert!(matches!(
            store.get("two"),
            Err(ProjectError::Decrypt { .. })
        ));
        // A whole file copied under another's name is refused too.
        std::fs::copy(&one.file, &two.file).unwrap();
        assert!(matches!(
            store.get("github.com/o/two"),
            Err(ProjectError::Corrupt { .. })
        ));
    }

    #[test]
    fn concurrent_adds_lose_nothing_and_names_stay_unique() {
        let dir = tempfile::tempdir().unwrap();
        let outcomes: Vec<Result<Project, ProjectError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let dir = dir.path();
                    scope.spawn(move || {
                        let store = store(dir, 1);
                        store.add(new(&format!("github.com/org{i}/repo{i}"), token("t")))?;
                        // All eight also race for one name.
                        let mut same = new(&format!("gitlab.com/org{i}/same"), None);
                        same.name = Some("same".into());
                        store.add(same)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1);
        let all = store(dir.path(), 1).list().unwrap();
        assert_eq!(all.len(), 9);
        assert_eq!(all.iter().filter(|p| p.name == "same").count(), 1);
    }

    #[test]
    fn reading_without_a_key_is_an_error_and_creates_none() {
        if std::env::var_os(crypto::KEY_ENV).is_some() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let added = store(dir.path(), 1)
            .add(new("github.com/o/r", token("secret-token")))
            .unwrap();
        let keyless =
            ProjectStore::new(dir.path().join("projects"), dir.path().join("project.key"));
        let err = keyless.list().unwrap_err().to_string();
        assert!(
            err.contains(&added.file.display().to_string()) && err.contains("does not exist"),
            "{err}"
        );
        assert!(!dir.path().join("project.key").exists());
    }

    #[test]
    fn a_store_without_credentials_needs_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = ProjectStore::new(dir.path().join("projects"), dir.path().join("project.key"));
        store.add(new("github.com/o/public", None)).unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(!dir.path().join("project.key").exists());
    }
}
