//! The user config (`~/.config/cubbi/config.toml`): typed settings, the key schema used by
//! `cubbi config`, `${VAR}` references, and atomic, private storage.

pub mod env;
pub mod env_file;
pub mod keys;
pub mod paths;
pub mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use store::ConfigFile;

/// Everything that can go wrong reading or changing the user config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot find the home directory: set HOME or XDG_CONFIG_HOME")]
    NoHome,
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
    #[error(
        "{path} is not valid TOML: {message}fix the file by hand, or start over with `cubbi config reset`"
    )]
    Syntax { path: PathBuf, message: String },
    #[error("{path} does not match cubbi's config: {message}")]
    Schema { path: PathBuf, message: String },
    #[error("unknown config key `{key}`; `cubbi config list` shows the known keys")]
    UnknownKey { key: String },
    #[error("`{key}` is a section, not a key; `cubbi config list` shows its keys")]
    NotALeaf { key: String },
    #[error("invalid value for `{key}`: {reason}")]
    InvalidValue { key: String, reason: String },
    #[error("invalid `${{...}}` reference in the value of `{key}`: {reason}")]
    BadReference { key: String, reason: String },
    #[error("environment variable `{name}` is referenced by the config but not set")]
    UnsetVariable { name: String },
    #[error("`{name}` is not a valid Docker network name: {reason}")]
    InvalidNetworkName { name: String, reason: String },
    #[error("network `{name}` is not in defaults.networks; `cubbi config network list` shows them")]
    NoSuchNetwork { name: String },
}

/// The whole user config. Every section has defaults, so an empty file is a valid config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub defaults: Defaults,
    pub services: Services,
    pub docker: DockerSettings,
    pub ports: PortRange,
    pub remote: RemoteSettings,
    pub ui: UiSettings,
    pub build: BuildSettings,
    pub projects: ProjectSettings,
    pub logging: LoggingSettings,
    /// `[pool]`: booted members kept per image (`pool.base = 2`); see `cubbi pool`.
    #[serde(skip_serializing_if = "crate::local::pool::PoolTargets::is_empty")]
    pub pool: crate::local::pool::PoolTargets,
}

/// `[logging]`: where local sessions' output goes besides `docker logs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSettings {
    /// A Fluentd receiver, `tcp://HOST:PORT`: sessions log there too (Docker's fluentd driver).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fluentd: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    /// Image a new session boots when `--image` is not given.
    pub image: String,
    /// Connect to a new session right after it is ready.
    pub connect: bool,
    /// Mount the current directory as the workspace when no path is given.
    pub mount_local: bool,
    /// Extra Docker networks every session joins.
    pub networks: Vec<String>,
    /// Memory limit, in Docker's syntax (`4g`, `512m`); half the host's memory when unset.
    /// Sessions get as much swap again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// CPU limit; half the host's cores when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Most processes a session may run at once (a fork bomb stays inside).
    pub pids_limit: i64,
    /// OCI runtime for sessions.
    pub runtime: String,
    /// Allow `runc` without Sysbox: sessions are then NOT isolated from the host.
    pub allow_unsafe_runc: bool,
    /// Registered MCP servers (`cubbi mcp add`) every local session's tools get.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mcp: Vec<String>,
    /// Egress of new sessions (`allow-list`, `open`, `none`); `allow-list` when
    /// `allowed_domains` names any, else open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<crate::egress::EgressMode>,
    /// Names every new session may reach (`NAME` with its subdomains, `=NAME` alone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_domains: Vec<crate::egress::DomainRule>,
    /// When the CLI refills a warm pool after a create took a member (`background`, `manual`).
    #[serde(
        default,
        skip_serializing_if = "crate::local::pool::PoolRefill::is_background"
    )]
    pub pool_refill: crate::local::pool::PoolRefill,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            image: "base".into(),
            connect: true,
            mount_local: true,
            networks: Vec::new(),
            memory: None,
            cpus: None,
            pids_limit: crate::api::DEFAULT_PIDS_LIMIT,
            runtime: "sysbox-runc".into(),
            allow_unsafe_runc: false,
            mcp: Vec::new(),
            egress: None,
            allowed_domains: Vec::new(),
            pool_refill: crate::local::pool::PoolRefill::Background,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Services {
    pub anthropic: ApiKeyService,
    pub openai: ApiKeyService,
    pub openrouter: ApiKeyService,
    pub google: ApiKeyService,
    pub langfuse: Langfuse,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeyService {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Langfuse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerSettings {
    /// Docker endpoint; the dedicated cubbi endpoint when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// A network every session joins (unless `--no-default-network`) instead of its owner's
    /// own `cubbi-OWNER-HASH`; sessions of different owners on it can reach each other.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// The inclusive range SSH ports are allocated from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl Default for PortRange {
    fn default() -> Self {
        Self {
            start: 2300,
            end: 2500,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    pub endpoints: BTreeMap<String, RemoteEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteEndpoint {
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiSettings {
    pub colors: bool,
    pub table_format: TableFormat,
}

impl Default for UiSettings {
    fn default() -> Self {
        Self {
            colors: true,
            table_format: TableFormat::Plain,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildSettings {
    /// Extra CA certificates (PEM files) image builds trust; the host's
    /// /usr/local/share/ca-certificates/*.crt when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectSettings {
    /// Extra `known_hosts` lines (`HOST KEYTYPE BASE64`) for git hosts, beside the keys of
    /// github.com, gitlab.com and bitbucket.org that cubbi ships.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub known_hosts: Vec<String>,
}

/// How tables for people are drawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    /// Aligned columns without borders, like `docker ps`.
    #[default]
    Plain,
    Ascii,
    Utf8,
    Markdown,
}

impl TableFormat {
    pub const NAMES: &'static [&'static str] = &["plain", "ascii", "utf8", "markdown"];
}

impl Config {
    /// Cross-field rules that serde's types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ports.start == 0 || self.ports.start > self.ports.end {
            return Err(ConfigError::InvalidValue {
                key: "ports".into(),
                reason: format!(
                    "the range {}-{} is empty; ports.start must be between 1 and ports.end",
                    self.ports.start, self.ports.end
                ),
            });
        }
        for name in &self.defaults.networks {
            keys::validate_network_name(name)?;
        }
        for name in &self.defaults.mcp {
            crate::mcp::check_name(name).map_err(|err| ConfigError::InvalidValue {
                key: "defaults.mcp".into(),
                reason: err.to_string(),
            })?;
        }
        if let Some(network) = &self.docker.network {
            keys::validate_network_name(network)?;
        }
        if let Some(cpus) = self.defaults.cpus
            && !(cpus > 0.0 && cpus.is_finite())
        {
            return Err(ConfigError::InvalidValue {
                key: "defaults.cpus".into(),
                reason: "must be a positive number".into(),
            });
        }
        crate::local::limits::pids_limit(Some(self.defaults.pids_limit)).map_err(|err| {
            ConfigError::InvalidValue {
                key: "defaults.pids_limit".into(),
                reason: err.to_string(),
            }
        })?;
        for (name, endpoint) in &self.remote.endpoints {
            keys::validate_remote_name(name)?;
            keys::validate_url(&format!("remote.endpoints.{name}.url"), &endpoint.url)?;
        }
        for path in self.build.ca_certificates.iter().flatten() {
            keys::validate_absolute_path("build.ca_certificates", path)?;
        }
        crate::projects::known_hosts::validate_config_lines(&self.projects.known_hosts).map_err(
            |err| ConfigError::InvalidValue {
                key: "projects.known_hosts".into(),
                reason: err.to_string(),
            },
        )?;
        if let Some(default) = &self.remote.default
            && !self.remote.endpoints.contains_key(default)
        {
            return Err(ConfigError::InvalidValue {
                key: "remote.default".into(),
                reason: format!(
                    "no endpoint `{default}`; add it with `cubbi config set remote.endpoints.{default}.url URL`"
                ),
            });
        }
        Ok(())
    }
}
