//! The data of the session API, shared by the CLI, the local backend and the HTTP service.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything needed to create a session. Front ends fill it from flags and config; the
/// backend validates all of it before it makes anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSpec {
    /// Session name; derived from the workspace or project when absent.
    pub name: Option<String>,
    /// A cubbi image name (`claude-code`) or any Docker image reference.
    pub image: String,
    /// Host folder mounted at /home/agent/workspace.
    pub workspace: Option<PathBuf>,
    /// A registered project (id, name or URL, `#branch` allowed) or a git URL, cloned into the
    /// workspace when the session boots.
    pub project: Option<String>,
    /// Run the project's `.cubbi/init.sh` even for an ad-hoc URL (a registered project always
    /// runs it).
    #[serde(default)]
    pub run_init: bool,
    /// Environment for the agent; may hold secrets, so it never becomes container env.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// Extra networks to join (they must exist).
    #[serde(default)]
    pub networks: Vec<String>,
    /// Also join the default network (`docker.network`), created when missing.
    #[serde(default = "yes")]
    pub default_network: bool,
    /// Memory limit in Docker's syntax; half the host's memory when absent. Swap is as large.
    pub memory: Option<crate::local::limits::MemoryLimit>,
    pub cpus: Option<crate::local::limits::CpuLimit>,
    /// Most processes the session may run at once; [`DEFAULT_PIDS_LIMIT`] when absent.
    #[serde(default)]
    pub pids_limit: Option<crate::local::limits::PidsLimit>,
    pub runtime: String,
    /// Allow `runc`, granting what systemd and the inner dockerd need: not isolated.
    #[serde(default)]
    pub unsafe_runc: bool,
    /// Address the SSH port is published on.
    pub ssh_bind: IpAddr,
    /// More OpenSSH public keys allowed to log in as `agent`, besides the backend's own client
    /// key (a service authorizes its caller's key this way).
    #[serde(default)]
    pub authorized_keys: Vec<String>,
    /// Stop the session (as `stop` does) once nobody has been connected over SSH for this
    /// many seconds; `None` keeps it running.
    #[serde(default)]
    pub idle_stop_secs: Option<u64>,
    /// MCP servers the session's tools are configured with (resolved from their names where
    /// the request entered); their header values are secrets, written only into files.
    #[serde(default)]
    pub mcp: Vec<crate::mcp::McpServer>,
    /// MCP servers by name in the caller's registry on a service (`cubbi -r NAME ... --mcp`),
    /// which the service resolves into `mcp`; a backend never sees names.
    #[serde(default)]
    pub mcp_names: Vec<String>,
    /// The names the session may reach; `None` leaves it open (the egress guard still holds).
    #[serde(default)]
    pub egress: Option<crate::egress::EgressRequest>,
}

fn yes() -> bool {
    true
}

/// The pids limit of a session when neither the spec nor the config gives one.
pub const DEFAULT_PIDS_LIMIT: i64 = 4096;

/// A session's resource limits as Docker applies them (bytes, cores, processes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Resources {
    pub memory: Option<i64>,
    /// Memory plus swap, as Docker counts it.
    pub memory_swap: Option<i64>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    pub host: PathBuf,
    pub container: String,
    #[serde(default)]
    pub read_only: bool,
}

/// Where and how to reach a session over SSH; the host key is pinned, never learned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SshEndpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The session's host key, OpenSSH public key format.
    pub host_key: String,
    /// The port is not reachable from clients (`ssh.mode = "proxy"` on the service): SSH goes
    /// through `GET /v1/sessions/{id}/ssh`, which `cubbi ssh-proxy` relays for OpenSSH.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SessionState {
    /// The container exists but never started (or a create was interrupted).
    Creating,
    /// Running, and sshd does not answer yet.
    Starting,
    /// sshd answers.
    Ready,
    /// Running, but cubbi-init reported a failure.
    InitFailed,
    /// Stopped cleanly.
    Stopped,
    /// Ended with an error.
    Exited,
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            Self::Creating => "creating",
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::InitFailed => "init-failed",
            Self::Stopped => "stopped",
            Self::Exited => "exited",
        };
        f.write_str(text)
    }
}

/// A session idle stop stopped (`--idle-stop`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleStopped {
    pub id: String,
    pub name: String,
    pub idle_secs: u64,
}

/// What an agent data archive held (`cubbi data export|import`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DataSummary {
    pub files: u64,
    pub folders: u64,
    pub links: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// The top-level folders: one per tool image (`claude-code`, `codex`, ...).
    pub tools: Vec<String>,
}

/// A session's system container committed as an image of its owner's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Snapshot {
    /// Unique among the owner's snapshots.
    #[schema(pattern = r"^[a-z0-9]+(-[a-z0-9]+)*$", min_length = 1, max_length = 63)]
    pub name: String,
    /// The image's id.
    pub id: String,
    /// The image reference sessions are made from.
    pub image: String,
    pub owner: String,
    /// The name of the session it was taken from.
    pub source: String,
    /// Unix seconds.
    pub created: i64,
    /// `stopped` (committed as it was) or `frozen` (a running session, paused for the commit).
    pub taken: String,
    /// Bytes of the image (its layers, the base image's included).
    pub size: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Session {
    pub id: String,
    /// What the naming rules make of the requested name (see `CreateRequest.name`).
    #[schema(pattern = r"^[a-z0-9]+(-[a-z0-9]+)*$", min_length = 1, max_length = 63)]
    pub name: String,
    pub image: String,
    pub owner: String,
    pub state: SessionState,
    pub ssh: SshEndpoint,
    /// Unix seconds.
    pub created: i64,
    pub workspace: Option<String>,
    /// The command a session runs to start its tool (from the image's metadata).
    pub command: Vec<String>,
    /// `done` or `failed: reason` once cubbi-init has run (only filled by `get`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_status: Option<String>,
    /// The project clone's `done`, `skipped` or `failed: reason` once it has finished (only
    /// filled by `get`; the clone runs beside sshd, so a ready session may not have it yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_status: Option<String>,
    /// Limits as applied (only filled by `get` and `create`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// The Docker networks the session is on (only filled by `get`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    /// The egress policy in force (only filled by `get`; absent: open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressView>,
    /// Made from a warm-pool member (a booted container handed over at create).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pool: bool,
}

/// A session's egress as `show` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EgressView {
    pub mode: crate::egress::EgressMode,
    /// `NAME` (with subdomains) or `=NAME`.
    #[schema(value_type = Vec<String>)]
    pub domains: Vec<crate::egress::DomainRule>,
    /// The last names the resolver refused this session, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied: Vec<String>,
    /// Lookups refused in all.
    #[serde(default)]
    pub denied_lookups: u64,
    /// Connections the kernel refused in all (direct addresses, other resolvers, ports).
    #[serde(default)]
    pub denied_connections: u64,
}

/// Steps of a create, for progress displays and failure messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CreateStep {
    Validating,
    AllocatingPort,
    PreparingKeys,
    CreatingContainer,
    CopyingFiles,
    Starting,
    WaitingForSsh,
    WritingSshConfig,
}

impl std::fmt::Display for CreateStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            Self::Validating => "validating",
            Self::AllocatingPort => "allocating the SSH port",
            Self::PreparingKeys => "preparing SSH keys",
            Self::CreatingContainer => "creating the container",
            Self::CopyingFiles => "copying keys and environment in",
            Self::Starting => "starting the container",
            Self::WaitingForSsh => "waiting for sshd to accept the key",
            Self::WritingSshConfig => "writing the SSH config",
        };
        f.write_str(text)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogOptions {
    pub follow: bool,
    pub tail: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogChunk {
    pub text: String,
}

/// Output of a command run in a session, as it arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(i32),
}
