//! `/etc/cubbi/service.toml`: what the service listens on, which Docker endpoint it drives,
//! and what it lets its users ask for. Every key has a safe default; an unknown key is an
//! error, so a typo never silently keeps a default.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::local::limits::{CpuLimit, MemoryLimit, PidsLimit};

use crate::config::PortRange;

/// Where `cubbi serve` reads its config unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/cubbi/service.toml";
/// Where the service keeps its database unless the config or `--state-dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cubbi";

#[derive(Debug, thiserror::Error)]
pub enum ServiceConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// The images sessions may boot (cubbi image names); empty allows every cubbi image.
    pub images: Vec<String>,
    /// The host folders below which requests may mount paths (`false`: none).
    pub allow_host_volumes: super::host_volumes::HostVolumeRoots,
    /// Whether requests may ask for plain runc (not isolated).
    pub allow_unsafe_runc: bool,
    pub state_dir: PathBuf,
    pub server: ServerSettings,
    pub docker: DockerSection,
    pub ssh: SshSection,
    pub ports: PortRange,
    pub limits: Limits,
    pub networks: NetworksSection,
    pub projects: ProjectsSection,
    pub runs: RunsSection,
    pub store: StoreSection,
    /// `[auth]`: OpenID Connect login beside the API tokens.
    pub auth: super::oidc::config::AuthSection,
    /// `[[logging.providers]]`: where sessions' output goes besides `docker logs`.
    pub logging: LoggingSection,
    /// `[egress]`: the names sessions may be allowed (see `egress::service_rules`).
    pub egress: crate::egress::service_rules::ServiceEgress,
    /// `[pool]`: booted members the service keeps per image and refills in the background.
    pub pool: crate::local::pool::PoolTargets,
    /// `[backend]`: where sessions run: the one engine at `docker.endpoint`, or a Docker Swarm
    /// of cubbi engines managed through it.
    pub backend: BackendSection,
}

/// `[backend]`: the kind of engine behind `docker.endpoint`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendSection {
    pub kind: BackendKind,
}

/// `local`: sessions are containers on one engine. `swarm`: sessions are one-replica services
/// of a Docker Swarm whose manager is `docker.endpoint`, placed across its nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Local,
    Swarm,
}

/// `[logging]`: the specification's providers. Only `fluentd` is built; a provider of another
/// type is refused by name when the file is read.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSection {
    pub providers: Vec<LoggingProvider>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum LoggingProvider {
    /// Docker's fluentd log driver to `url` (`tcp://HOST:PORT`), async.
    Fluentd {
        url: crate::local::log_driver::FluentdAddress,
    },
    /// The agents' OpenTelemetry to Langfuse (`url`, `public_key`, `secret_key`; checked
    /// while the file is read).
    Langfuse(crate::local::langfuse::LangfuseExport),
}

impl LoggingSection {
    /// The Fluentd receiver sessions log to, if one is configured.
    pub fn fluentd(&self) -> Option<&crate::local::log_driver::FluentdAddress> {
        self.providers.iter().find_map(|provider| match provider {
            LoggingProvider::Fluentd { url } => Some(url),
            LoggingProvider::Langfuse(_) => None,
        })
    }

    /// The Langfuse sessions' agents export their telemetry to, if one is configured.
    pub fn langfuse(&self) -> Option<&crate::local::langfuse::LangfuseExport> {
        self.providers.iter().find_map(|provider| match provider {
            LoggingProvider::Langfuse(export) => Some(export),
            LoggingProvider::Fluentd { .. } => None,
        })
    }
}

/// Agent runs (`POST /v1/runs`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunsSection {
    /// Runs one user may have under way at once.
    pub per_user: usize,
    /// Seconds a run may take at most (and takes when it asks for no timeout).
    pub max_timeout: u64,
}

impl Default for RunsSection {
    fn default() -> Self {
        Self {
            per_user: 4,
            max_timeout: 3600,
        }
    }
}

/// `[store]`: where users and tokens live.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `postgres://USER@HOST:PORT/DATABASE` (no password in it): PostgreSQL, which several
    /// services may share. Absent: SQLite in `STATE_DIR/cubbi.db`.
    pub url: Option<String>,
    /// The database password, in a file only its owner may read (mode 0600).
    pub password_file: Option<PathBuf>,
    /// The CA certificate(s) (PEM) the server's certificate must chain to; setting it makes
    /// the connection TLS, as `sslmode=require` in the URL does (which checks against the
    /// system's roots without it).
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub host: IpAddr,
    pub port: u16,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Seconds a request may take (streams excepted).
    pub request_timeout: u64,
    /// Seconds streams get to end after SIGTERM before the service exits anyway.
    pub shutdown_grace: u64,
    /// Connections open at once (TLS handshakes included); past it, new ones wait in the
    /// kernel's backlog until one closes.
    pub max_connections: usize,
    /// Seconds a client gets to send a whole request head; a connection that says nothing
    /// (or dribbles) is closed then.
    pub header_timeout: u64,
    /// Streams (followed logs, execs) one user may hold open at once.
    pub streams_per_user: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerSection {
    pub endpoint: String,
    /// One network every user's sessions share instead of a network per user (which keeps
    /// users' sessions apart): only for a service whose users trust each other.
    pub network: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshSection {
    /// The address session SSH ports are published on.
    pub bind: IpAddr,
    /// The name clients dial for SSH; the host of the request's URL when absent.
    pub public_host: Option<String>,
    /// `direct`: clients dial the sessions' SSH ports. `proxy`: those ports are not reachable
    /// from clients, so sessions say so and clients go through `GET /v1/sessions/{id}/ssh`
    /// (`cubbi ssh-proxy` as OpenSSH's ProxyCommand).
    pub mode: SshMode,
}

/// How clients reach sessions' sshd (`ssh.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SshMode {
    #[default]
    Direct,
    Proxy,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most sessions one user may have at once (0: no limit).
    pub sessions_per_user: usize,
    /// Largest (and default) memory limit of a session, Docker's syntax.
    pub memory: Option<MemoryLimit>,
    /// Largest (and default) CPU limit of a session.
    pub cpus: Option<CpuLimit>,
    /// Largest (and default) number of processes in a session. Under Sysbox a session's
    /// processes are host processes, so this bounds what one session takes of the host's.
    pub pids_limit: PidsLimit,
    /// Most projects one user may register (each holds a sealed credential and host keys).
    pub projects_per_user: usize,
    /// Most snapshots one user may keep (each is an image on the engine's disk).
    pub snapshots_per_user: usize,
    /// Seconds without an SSH connection after which a session is stopped (kept, like `stop`);
    /// also the most a create may ask for. 0: sessions run until stopped.
    pub idle_stop: u64,
    /// Largest writable layer of a session, Docker's syntax (`20g`). Needs the engine's data
    /// root on XFS with project quotas; unset, a quarter of that file system where possible.
    pub disk: Option<MemoryLimit>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworksSection {
    /// Extra Docker networks requests may join; none unless listed.
    pub allowed: Vec<String>,
}

/// `[projects]`: the users' registered git repositories.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectsSection {
    /// Extra `known_hosts` lines (`HOST KEYTYPE BASE64`) for git hosts cubbi does not ship
    /// keys of; projects on them need no key of their own.
    pub known_hosts: Vec<String>,
    pub storage: ProjectStorage,
}

/// `[projects.storage]`: how credentials are sealed in the database.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectStorage {
    /// 32 bytes as 64 hex digits or base64; `STATE_DIR/project.key` (created on first use)
    /// when absent.
    pub key: Option<SecretText>,
}

/// A secret from the config: its `Debug` never shows it, so a logged config leaks nothing.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretText(pub String);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            images: Vec::new(),
            allow_host_volumes: Default::default(),
            allow_unsafe_runc: false,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            server: ServerSettings::default(),
            docker: DockerSection::default(),
            ssh: SshSection::default(),
            ports: PortRange::default(),
            limits: Limits::default(),
            networks: NetworksSection::default(),
            projects: ProjectsSection::default(),
            runs: RunsSection::default(),
            store: StoreSection::default(),
            auth: Default::default(),
            logging: LoggingSection::default(),
            egress: Default::default(),
            pool: Default::default(),
            backend: BackendSection::default(),
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 3000,
            tls_cert: None,
            tls_key: None,
            body_limit: 256 * 1024,
            request_timeout: 180,
            shutdown_grace: 10,
            max_connections: 512,
            header_timeout: 10,
            streams_per_user: 8,
        }
    }
}

impl Default for DockerSection {
    fn default() -> Self {
        Self {
            endpoint: crate::docker::DEFAULT_ENDPOINT.to_string(),
            network: None,
        }
    }
}

impl Default for SshSection {
    fn default() -> Self {
        Self {
            bind: IpAddr::from([0, 0, 0, 0]),
            public_host: None,
            mode: SshMode::Direct,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            sessions_per_user: 10,
            memory: None,
            cpus: None,
            pids_limit: PidsLimit::default(),
            projects_per_user: 100,
            snapshots_per_user: 10,
            idle_stop: 0,
            disk: None,
        }
    }
}

impl ServiceConfig {
    /// Reads a config file; a missing file at the default path means the defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ServiceConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default());
            }
            Err(source) => {
                return Err(ServiceConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Self::parse(&text, path)
    }

    /// The config at `path`, else at [`DEFAULT_CONFIG_PATH`] (its defaults when missing).
    pub fn load_given(path: Option<&Path>) -> Result<Self, ServiceConfigError> {
        match path {
            Some(path) => Self::load(path, true),
            None => Self::load(Path::new(DEFAULT_CONFIG_PATH), false),
        }
    }

    pub fn parse(text: &str, origin: &Path) -> Result<Self, ServiceConfigError> {
        let config: Self = toml::from_str(text).map_err(|err| ServiceConfigError::Parse {
            path: origin.to_path_buf(),
            reason: where_in(text, err.span()) + err.message(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ServiceConfigError> {
        self.validate_values()
    }
}

/// `line N (`the line`): ` for an error at `span` of `text`, so a refused value is found.
fn where_in(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span.filter(|span| span.start <= text.len()) else {
        return String::new();
    };
    let line_start = text[..span.start].rfind('\n').map_or(0, |at| at + 1);
    let line_end = text[span.start..]
        .find('\n')
        .map_or(text.len(), |at| span.start + at);
    let number = text[..span.start].matches('\n').count() + 1;
    let line: String = text[line_start..line_end].trim().chars().take(80).collect();
    format!("line {number} (`{line}`): ")
}

impl ServiceConfig {
    fn validate_values(&self) -> Result<(), ServiceConfigError> {
        let invalid = |key: &str, reason: String| ServiceConfigError::Invalid {
            key: key.to_string(),
            reason,
        };
        if self.backend.kind == BackendKind::Swarm {
            if !self.pool.is_empty() {
                return Err(invalid(
                    "pool",
                    "a warm pool is not built for the Swarm backend; remove [pool] or use \
                     [backend] kind = \"local\""
                        .to_string(),
                ));
            }
            if self.docker.network.is_some() {
                return Err(invalid(
                    "docker.network",
                    "sessions on a Swarm each get their owner's overlay network; remove \
                     docker.network"
                        .to_string(),
                ));
            }
        }
        if self.ports.start == 0 || self.ports.start > self.ports.end {
            return Err(invalid(
                "ports",
                format!(
                    "{}-{} is not a range of ports (start ≤ end, both above 0)",
                    self.ports.start, self.ports.end
                ),
            ));
        }
        for image in &self.images {
            if !crate::images::metadata::is_image_name(image) {
                return Err(invalid(
                    "images",
                    format!("`{image}` is not a cubbi image name"),
                ));
            }
        }
        for network in &self.networks.allowed {
            crate::config::keys::validate_network_name(network)
                .map_err(|err| invalid("networks.allowed", err.to_string()))?;
        }
        if let Some(network) = &self.docker.network {
            crate::config::keys::validate_network_name(network)
                .map_err(|err| invalid("docker.network", err.to_string()))?;
        }
        // The limits are typed: serde refused bad ones while parsing.
        if self.runs.per_user == 0 || self.runs.max_timeout == 0 {
            return Err(invalid(
                "runs",
                "per_user and max_timeout must be above 0".to_string(),
            ));
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return Err(invalid(
                "server.tls_cert",
                "give both server.tls_cert and server.tls_key, or neither".into(),
            ));
        }
        if !(1..=1_000_000).contains(&self.server.max_connections) {
            return Err(invalid(
                "server.max_connections",
                format!(
                    "{} is not between 1 and 1000000",
                    self.server.max_connections
                ),
            ));
        }
        if !(1..=300).contains(&self.server.header_timeout) {
            return Err(invalid(
                "server.header_timeout",
                format!(
                    "{} seconds is not between 1 and 300",
                    self.server.header_timeout
                ),
            ));
        }
        if !(1..=1000).contains(&self.server.streams_per_user) {
            return Err(invalid(
                "server.streams_per_user",
                format!("{} is not between 1 and 1000", self.server.streams_per_user),
            ));
        }
        let fluentd = self
            .logging
            .providers
            .iter()
            .filter(|p| matches!(p, LoggingProvider::Fluentd { .. }))
            .count();
        if fluentd > 1 || self.logging.providers.len() > fluentd + 1 {
            return Err(invalid(
                "logging.providers",
                "name one provider of each type (one \"fluentd\", one \"langfuse\"); \
                 sessions log to one receiver"
                    .into(),
            ));
        }
        if self.server.body_limit < 1024 {
            return Err(invalid(
                "server.body_limit",
                "at least 1024 bytes".to_string(),
            ));
        }
        crate::projects::known_hosts::validate_config_lines(&self.projects.known_hosts)
            .map_err(|err| invalid("projects.known_hosts", err.to_string()))?;
        if let Some(key) = &self.projects.storage.key
            && crate::projects::crypto::ProjectKey::from_text(&key.0, "").is_none()
        {
            // The message never quotes the value: it is a secret.
            return Err(invalid(
                "projects.storage.key",
                "give 32 bytes as 64 hex digits or as base64 (e.g. `openssl rand -hex 32`)".into(),
            ));
        }
        if let Some(url) = &self.store.url {
            super::pg_store::check_url(url).map_err(|reason| invalid("store.url", reason))?;
        } else if self.store.password_file.is_some() || self.store.ca_file.is_some() {
            return Err(invalid(
                "store.url",
                "store.password_file and store.ca_file go with store.url (the PostgreSQL \
                 store)"
                    .into(),
            ));
        }
        if let Some(host) = &self.ssh.public_host
            && (host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/'))
        {
            return Err(invalid(
                "ssh.public_host",
                format!("`{host}` is not a host name"),
            ));
        }
        Ok(())
    }

    pub fn listen_address(&self) -> SocketAddr {
        SocketAddr::new(self.server.host, self.server.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_means_safe_defaults() {
        let config = ServiceConfig::parse("", Path::new("t.toml")).unwrap();
        assert_eq!(config.listen_address().to_string(), "127.0.0.1:3000");
        assert!(config.allow_host_volumes.is_off());
        assert!(!config.allow_unsafe_runc);
        assert!(config.networks.allowed.is_empty());
        assert_eq!(config.limits.sessions_per_user, 10);
    }

    #[test]
    fn the_documented_keys_parse() {
        let text = r#"
            images = ["base", "claude-code"]
            allow_host_volumes = ["/srv/shared"]
            [server]
            host = "0.0.0.0"
            port = 8443
            [docker]
            endpoint = "unix:///var/run/cubbi-docker.sock"
            network = "cubbi-network"
            [ssh]
            bind = "0.0.0.0"
            public_host = "cubbi.example.org"
            mode = "proxy"
            [ports]
            start = 2300
            end = 2400
            [limits]
            sessions_per_user = 3
            memory = "8g"
            cpus = 2.0
            pids_limit = 2048
            [networks]
            allowed = ["shared-db"]
            [projects]
            known_hosts = ["git.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"]
            [projects.storage]
            key = "0000000000000000000000000000000000000000000000000000000000000000"
            [store]
            url = "postgres://cubbi@db.example.org:5432/cubbi"
            password_file = "/etc/cubbi/db-password"
            ca_file = "/etc/cubbi/db-ca.pem"
        "#;
        let config = ServiceConfig::parse(text, Path::new("t.toml")).unwrap();
        assert_eq!(config.server.port, 8443);
        assert_eq!(config.ssh.public_host.as_deref(), Some("cubbi.example.org"));
        assert_eq!(config.ssh.mode, SshMode::Proxy);
        assert_eq!(config.limits.sessions_per_user, 3);
        assert_eq!(config.images, vec!["base", "claude-code"]);
    }

    #[test]
    fn the_swarm_backend_is_chosen_by_kind_and_refuses_what_it_cannot_have() {
        let config =
            ServiceConfig::parse("[backend]\nkind = \"swarm\"\n", Path::new("t.toml")).unwrap();
        assert_eq!(config.backend.kind, BackendKind::Swarm);
        assert_eq!(
            ServiceConfig::default().backend.kind,
            BackendKind::Local,
            "one engine unless told"
        );
        for (extra, key) in [
            ("[pool]\nbase = 2\n", "pool"),
            ("[docker]\nnetwork = \"shared\"\n", "docker.network"),
        ] {
            let text = format!("[backend]\nkind = \"swarm\"\n{extra}");
            let refused = ServiceConfig::parse(&text, Path::new("t.toml"))
                .unwrap_err()
                .to_string();
            assert!(refused.contains(key), "{refused}");
        }
        let typo = ServiceConfig::parse("[backend]\nkind = \"k8s\"\n", Path::new("t.toml"));
        assert!(typo.is_err());
    }

    #[test]
    fn logging_providers_take_one_fluentd_receiver() {
        let text =
            "[[logging.providers]]\ntype = \"fluentd\"\nurl = \"tcp://logs.example.org:24224\"\n";
        let config = ServiceConfig::parse(text, Path::new("t.toml")).unwrap();
        assert_eq!(
            config.logging.fluentd().map(ToString::to_string).as_deref(),
            Some("tcp://logs.example.org:24224")
        );
        for (text, needle) in [
            (
                "[[logging.providers]]\ntype = \"fluentd\"\nurl = \"udp://h:1\"\n",
                "only tcp://",
            ),
            (
                "[[logging.providers]]\ntype = \"syslog\"\nurl = \"tcp://h:1\"\n",
                "syslog",
            ),
            (
                "[[logging.providers]]\ntype = \"fluentd\"\nurl = \"tcp://a:1\"\n[[logging.providers]]\ntype = \"fluentd\"\nurl = \"tcp://b:1\"\n",
                "one provider",
            ),
        ] {
            let err = ServiceConfig::parse(text, Path::new("t.toml")).unwrap_err();
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn a_langfuse_provider_sits_beside_fluentd() {
        let text = "[[logging.providers]]\ntype = \"fluentd\"\nurl = \"tcp://logs:24224\"\n\
                    [[logging.providers]]\ntype = \"langfuse\"\nurl = \"https://lf.example\"\n\
                    public_key = \"pk-lf\"\nsecret_key = \"sk-lf\"\n";
        let config = ServiceConfig::parse(text, Path::new("t.toml")).unwrap();
        assert!(config.logging.fluentd().is_some());
        assert_eq!(
            config.logging.langfuse().map(|l| l.endpoint()),
            Some("https://lf.example/api/public/otel")
        );
        for (text, needle) in [
            (
                "[[logging.providers]]\ntype = \"langfuse\"\nurl = \"ftp://x\"\npublic_key = \"p\"\nsecret_key = \"s\"\n",
                "Langfuse URL",
            ),
            (
                "[[logging.providers]]\ntype = \"langfuse\"\nurl = \"https://x\"\npublic_key = \"p\"\n",
                "secret_key",
            ),
            (
                "[[logging.providers]]\ntype = \"langfuse\"\nurl = \"https://x\"\npublic_key = \"p\"\nsecret_key = \"s\"\nextra = 1\n",
                "extra",
            ),
        ] {
            let err = ServiceConfig::parse(text, Path::new("t.toml")).unwrap_err();
            assert!(err.to_string().contains(needle), "{text}: {err}");
            assert!(!err.to_string().contains("sk-lf"));
        }
    }

    #[test]
    fn pool_targets_are_read_and_bounded() {
        let text = "[pool]\nbase = 2\nclaude-code = 4\n";
        let config = ServiceConfig::parse(text, Path::new("t.toml")).unwrap();
        assert_eq!(config.pool.target("claude-code"), 4);
        assert_eq!(config.pool.target("goose"), 0);
        let err = ServiceConfig::parse("[pool]\nbase = 100\n", Path::new("t.toml")).unwrap_err();
        assert!(err.to_string().contains("more than the 64"), "{err}");
    }

    #[test]
    fn typos_and_bad_values_are_refused() {
        for (text, needle) in [
            ("[server]\nprot = 1", "prot"),
            ("[ports]\nstart = 2500\nend = 2300", "ports"),
            ("images = [\"../x\"]", "images"),
            (
                "[limits]\nmemory = \"lots\"",
                "line 2 (`memory = \"lots\"`)",
            ),
            ("[limits]\ncpus = -1.0", "line 2 (`cpus = -1.0`)"),
            ("[limits]\ndisk = \"1k\"", "out of range"),
            ("[limits]\npids_limit = 9", "pids limit 9 is out of range"),
            ("[server]\ntls_cert = \"/c.pem\"", "tls_key"),
            ("[ssh]\npublic_host = \"a b\"", "public_host"),
            (
                "[projects.storage]\nkey = \"short\"",
                "projects.storage.key",
            ),
            ("[projects]\nknown_hosts = [\"x\"]", "projects.known_hosts"),
            ("[store]\nurl = \"sqlite://x\"", "store.url"),
            ("[store]\nurl = \"postgres://u:pw@h/d\"", "password_file"),
            ("[store]\npassword_file = \"/pw\"", "store.url"),
            ("[store]\nuri = \"postgres://h/d\"", "uri"),
        ] {
            let err = ServiceConfig::parse(text, Path::new("t.toml")).unwrap_err();
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }
}
