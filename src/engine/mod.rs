//! The dedicated Docker endpoint: its daemon.json, bridge and subnet, the systemd unit (driven
//! over D-Bus), the supervised fallback where systemd is not PID 1, Sysbox, the firewall (NAT and egress guard), and
//! `cubbi setup` as a plan of checked steps.
//!
//! Everything that touches the kernel, a daemon or an external program sits behind a trait
//! ([`host::HostProbe`], [`systemd::Systemd`], [`runner::CommandRunner`]), so the decisions are
//! unit-tested against fixtures and the real implementations stay thin.

pub mod apply;
pub mod daemon_json;
pub mod desired;
pub mod egress_resolver;
pub mod firewall;
pub mod host;
pub mod host_unit;
pub mod paths;
pub mod plan;
pub mod runner;
pub mod serve;
pub mod settings;
pub mod subnet;
pub mod supervisor;
pub mod swarm;
pub mod sysbox;
pub mod systemd;
pub mod unit;

use std::path::PathBuf;

pub use desired::{Desired, Wanted, desired};
pub use paths::EnginePaths;

/// The group that owns the dedicated socket; setup creates it and adds the invoking user.
pub const SOCKET_GROUP: &str = "cubbi";

/// The systemd unit name of the dedicated engine.
pub const UNIT_NAME: &str = "cubbi-docker.service";

/// The Docker CLI context setup creates, so `docker --context cubbi ps` works.
pub const DOCKER_CONTEXT: &str = "cubbi";

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
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
    #[error(transparent)]
    DaemonJson(#[from] daemon_json::DaemonJsonError),
    #[error(transparent)]
    Subnet(#[from] subnet::SubnetError),
    #[error(transparent)]
    Sysbox(#[from] sysbox::SysboxError),
    #[error(transparent)]
    Systemd(#[from] systemd::SystemdError),
    #[error(transparent)]
    Command(#[from] runner::CommandError),
    #[error(transparent)]
    Supervisor(#[from] supervisor::SupervisorError),
    #[error("{0}")]
    Refused(String),
}
