//! Gathering [`DoctorFacts`] from the real machine: files, programs, the endpoint (bollard),
//! systemd (D-Bus) and iptables. Anything unreadable without root is recorded as such.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::config::PortRange;
use crate::engine::EnginePaths;
use crate::engine::firewall;
use crate::engine::host::{HostFacts, HostProbe};
use crate::engine::runner::CommandRunner;
use crate::engine::settings::EngineSettings;
use crate::engine::systemd::Systemd;

/// The image every tool image builds on.
pub const BASE_IMAGE: &str = "cubbi-base";

/// A fact that may need root to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "value", rename_all = "kebab-case")]
pub enum Readable<T> {
    Read(T),
    NeedsRoot,
    Unknown(String),
}

/// How Sysbox's two daemons are doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SysboxDaemons {
    /// ActiveState of sysbox-mgr.service and sysbox-fs.service over D-Bus.
    Units { mgr: String, fs: String },
    /// Without systemd: whether each process runs and answers on its socket in /run/sysbox.
    Processes { mgr: bool, fs: bool },
}

/// The dedicated socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SocketFacts {
    pub endpoint: String,
    /// The socket path for unix:// endpoints.
    pub path: Option<PathBuf>,
    pub exists: bool,
    /// The current user may read and write it.
    pub accessible: bool,
    /// `Ok` when it answered; otherwise why not.
    pub answers: Result<(), String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DoctorFacts {
    pub host: HostFacts,
    pub dockerd_version: Option<String>,
    pub containerd_version: Option<String>,
    pub socket: SocketFacts,
    /// `docker info` of the endpoint, as the Docker API names its fields.
    pub docker_info: Option<Value>,
    pub daemon_json_path: PathBuf,
    pub daemon_json: Readable<Option<String>>,
    /// What setup would write for these paths.
    pub expected_daemon_json: serde_json::Map<String, Value>,
    pub sysbox_daemons: SysboxDaemons,
    pub base_image_present: Option<bool>,
    pub ssh_key: Option<PathBuf>,
    pub ssh_key_present: bool,
    pub ports: PortRange,
    pub free_ports: usize,
    pub data_root: PathBuf,
    pub data_root_free_bytes: Option<u64>,
    /// cubbi's firewall (NAT, forwarding, guard) as engine.json records it is in iptables.
    pub firewall: Readable<bool>,
    /// What engine.json records: `None` before setup, else whether the egress guard is on.
    pub egress_guard: Option<bool>,
    /// `fs.inotify.max_user_instances`; `None` when unreadable.
    pub inotify_instances: Option<u64>,
    /// FORWARD's policy in the filter table (`ACCEPT`, `DROP`); `None` when it cannot be read
    /// (not root, no iptables).
    pub forward_policy: Option<String>,
    /// A Docker socket at the path Sysbox asks (`/var/run/docker.sock`) that is not this
    /// endpoint's.
    pub other_docker_socket: Option<PathBuf>,
    /// `cubbi-serve.service`, when `cubbi setup --service` installed it.
    pub serve: Option<ServeFacts>,
}

/// How the installed service is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServeFacts {
    /// `ActiveState` over D-Bus; `None` without systemd.
    pub active_state: Option<String>,
    /// Where /healthz was asked.
    pub address: std::net::SocketAddr,
    /// `Ok` when /healthz answered ok; otherwise why not.
    pub health: Result<(), String>,
    /// What each session and user may take, from the service's config and the host; why
    /// not known otherwise (the config is readable by root only).
    pub limits: Result<ServeLimits, String>,
}

/// The service's limits in effect: configured, or derived from this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServeLimits {
    pub memory_bytes: Option<i64>,
    /// CPUs, as text (`1`, `0.5`).
    pub cpus: Option<String>,
    pub pids: i64,
    /// Bytes of writable layer per session, or why there is no disk limit.
    pub disk: Result<i64, String>,
    pub sessions_per_user: usize,
    pub projects_per_user: usize,
    /// The SSH ports every user's sessions share.
    pub ports: PortRange,
}

/// The limits `cubbi serve` would apply with the config text, on an engine described by
/// `docker_info`.
pub fn serve_limits(config: &str, docker_info: Option<&Value>) -> Result<ServeLimits, String> {
    use crate::service::{config::ServiceConfig, disk_quota, policy::Policy};
    let parsed = ServiceConfig::parse(config, Path::new(crate::engine::serve::SERVICE_CONFIG))
        .map_err(|err| err.to_string())?;
    let policy = Policy::from_config(&parsed).map_err(|err| err.to_string())?;
    let configured_disk = parsed.limits.disk.map(|limit| limit.bytes());
    let disk = match docker_info.map(|info| serde_json::from_value(info.clone())) {
        Some(Ok(info)) => {
            let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
            match disk_quota::decide(
                configured_disk,
                &info,
                &mounts,
                disk_quota::filesystem_bytes,
            ) {
                Ok(disk_quota::DiskLimit::PerSession(limit)) => Ok(limit.writable_bytes),
                Ok(disk_quota::DiskLimit::Unavailable(why)) | Err(why) => Err(why),
            }
        }
        _ => Err("the engine did not answer".to_string()),
    };
    Ok(ServeLimits {
        memory_bytes: policy.max_memory.map(|limit| limit.bytes()),
        cpus: policy.max_cpus.map(|cpus| format!("{cpus}")),
        pids: policy.max_pids.get(),
        disk,
        sessions_per_user: policy.sessions_per_user,
        projects_per_user: policy.projects_per_user,
        ports: parsed.ports,
    })
}

/// The probes doctor uses; all real ones by default.
pub struct Probes<'a> {
    pub host: &'a dyn HostProbe,
    pub runner: &'a dyn CommandRunner,
    /// `None` where systemd is not PID 1 or the bus is unreachable.
    pub systemd: Option<&'a dyn Systemd>,
}

pub async fn gather(
    probes: &Probes<'_>,
    paths: &EnginePaths,
    endpoint: &str,
    ports: PortRange,
) -> DoctorFacts {
    let host = HostFacts::gather(probes.host);
    let version = |program: &str| {
        host.has(program).then(|| {
            probes
                .runner
                .output(program, &["--version"])
                .ok()
                .filter(|out| out.success)
                .map(|out| out.stdout.trim().to_string())
        })?
    };
    let dockerd_version = version("dockerd");
    let containerd_version = version("containerd");
    let socket_path = endpoint.strip_prefix("unix://").map(PathBuf::from);
    let exists = socket_path.as_ref().is_some_and(|path| path.exists());
    let accessible = socket_path.as_ref().is_some_and(|path| {
        nix::unistd::access(
            path.as_path(),
            nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK,
        )
        .is_ok()
    });
    let (answers, docker_info, base_image_present) = match crate::docker::connect(endpoint).await {
        Ok(docker) => {
            let info = docker
                .info()
                .await
                .ok()
                .and_then(|info| serde_json::to_value(info).ok());
            let image = docker.inspect_image(BASE_IMAGE).await.is_ok();
            (Ok(()), info, Some(image))
        }
        Err(err) => (Err(err.to_string()), None, None),
    };
    let daemon_json = match std::fs::read_to_string(&paths.daemon_json) {
        Ok(text) => Readable::Read(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Readable::Read(None),
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => Readable::NeedsRoot,
        Err(err) => Readable::Unknown(err.to_string()),
    };
    let settings = EngineSettings::load(&paths.engine_json).ok().flatten();
    let expected_daemon_json =
        crate::engine::daemon_json::render(&crate::engine::daemon_json::DaemonSettings {
            paths,
            bridge: settings
                .as_ref()
                .map(|s| s.bridge.as_str())
                .unwrap_or(crate::engine::settings::DEFAULT_BRIDGE),
            pool: settings
                .as_ref()
                .map_or(crate::engine::settings::DEFAULT_POOL, |s| s.pool),
            default_runtime: settings
                .as_ref()
                .map_or(crate::engine::daemon_json::SYSBOX_RUNTIME, |s| {
                    s.default_runtime.as_str()
                }),
            // Setup always names the group; a bare `engine start` leaves it out when it is missing.
            socket_group: nix::unistd::Group::from_name(crate::engine::SOCKET_GROUP)
                .ok()
                .flatten()
                .map(|_| crate::engine::SOCKET_GROUP),
            swarm_unsafe_runc: settings.as_ref().is_some_and(|s| s.swarm_unsafe_runc),
        });
    let sysbox_daemons = match probes.systemd {
        Some(systemd) => SysboxDaemons::Units {
            mgr: systemd
                .active_state("sysbox-mgr.service")
                .await
                .unwrap_or_else(|_| "unknown".into()),
            fs: systemd
                .active_state("sysbox-fs.service")
                .await
                .unwrap_or_else(|_| "unknown".into()),
        },
        None => {
            // Without systemd: the process runs and answers on its socket.
            let running = running_programs();
            let (mgr_answers, fs_answers) = crate::engine::sysbox::daemons_answering();
            SysboxDaemons::Processes {
                mgr: mgr_answers && running.iter().any(|name| name == "sysbox-mgr"),
                fs: fs_answers && running.iter().any(|name| name == "sysbox-fs"),
            }
        }
    };
    let ssh_key = crate::ssh::files::SshFiles::for_user()
        .ok()
        .map(|files| files.client_key());
    let ssh_key_present = ssh_key.as_ref().is_some_and(|path| path.exists());
    let free_ports = (ports.start..=ports.end)
        .filter(|port| {
            crate::local::ports::can_bind(std::net::SocketAddr::from(([0, 0, 0, 0], *port)))
        })
        .count();
    let firewall = match (&settings, host.is_root, host.has("iptables")) {
        (None, _, _) => Readable::Read(false),
        (Some(_), false, _) => Readable::NeedsRoot,
        (Some(_), true, false) => Readable::Unknown("iptables is not installed".into()),
        (Some(settings), true, true) => {
            let nameservers = firewall::host_nameservers();
            Readable::Read(
                crate::engine::plan::firewall_rules(&host, settings, &nameservers)
                    .is_installed(probes.runner),
            )
        }
    };
    let forward_policy = (host.is_root && host.has("iptables"))
        .then(|| {
            probes
                .runner
                .output("iptables", &["-w", "-t", "filter", "-S", "FORWARD"])
                .ok()
                .filter(|out| out.success)
                .and_then(|out| parse_forward_policy(&out.stdout))
        })
        .flatten();
    let other_docker_socket = other_docker_socket(socket_path.as_deref());
    let serve = serve_facts(probes.systemd, docker_info.as_ref()).await;
    DoctorFacts {
        serve,
        other_docker_socket,
        forward_policy,
        dockerd_version,
        containerd_version,
        socket: SocketFacts {
            endpoint: endpoint.to_string(),
            path: socket_path,
            exists,
            accessible,
            answers,
        },
        docker_info,
        daemon_json_path: paths.daemon_json.clone(),
        daemon_json,
        expected_daemon_json,
        sysbox_daemons,
        base_image_present,
        ssh_key,
        ssh_key_present,
        ports,
        free_ports,
        data_root_free_bytes: free_bytes(&paths.data_root),
        data_root: paths.data_root.clone(),
        firewall,
        egress_guard: settings.as_ref().map(|settings| settings.egress_guard),
        inotify_instances: std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
            .ok()
            .and_then(|text| text.trim().parse().ok()),
        host,
    }
}

/// The service's state and one /healthz, only where its unit is installed. The config is
/// root:cubbi-serve 0640, so without root the default address is asked.
async fn serve_facts(
    systemd: Option<&dyn Systemd>,
    docker_info: Option<&Value>,
) -> Option<ServeFacts> {
    use crate::engine::serve;
    if !Path::new(serve::SERVE_UNIT_FILE).exists() {
        return None;
    }
    let active_state = match systemd {
        Some(systemd) => Some(
            systemd
                .active_state(serve::SERVE_UNIT_NAME)
                .await
                .unwrap_or_else(|_| "unknown".into()),
        ),
        None => None,
    };
    let config = std::fs::read_to_string(serve::SERVICE_CONFIG);
    let limits = match &config {
        Ok(text) => serve_limits(text, docker_info),
        Err(err) => Err(format!(
            "cannot read {}: {err} (run doctor as root to see them)",
            serve::SERVICE_CONFIG
        )),
    };
    let config = config.ok();
    let address = serve::config::health_address(config.as_deref());
    let health = serve::health::probe(address, serve::health::PROBE_TIMEOUT)
        .await
        .map_err(|err| err.to_string());
    Some(ServeFacts {
        active_state,
        address,
        health,
        limits,
    })
}

/// `ACCEPT` from `-P FORWARD ACCEPT` in `iptables -S FORWARD`.
/// The socket at `/var/run/docker.sock` (where Sysbox looks for "the" Docker), unless it is
/// the endpoint's own.
fn other_docker_socket(endpoint_socket: Option<&Path>) -> Option<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let path = Path::new(crate::doctor::checks::SYSBOX_DOCKER_SOCKET);
    let is_socket = std::fs::metadata(path).is_ok_and(|meta| meta.file_type().is_socket());
    let ours = endpoint_socket
        .and_then(|ours| ours.canonicalize().ok())
        .zip(path.canonicalize().ok())
        .is_some_and(|(ours, theirs)| ours == theirs);
    (is_socket && !ours).then(|| path.to_path_buf())
}

pub fn parse_forward_policy(listing: &str) -> Option<String> {
    listing
        .lines()
        .find_map(|line| line.trim().strip_prefix("-P FORWARD "))
        .map(|policy| policy.trim().to_string())
}

/// Names of running programs, from /proc/*/comm.
fn running_programs() -> Vec<String> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| {
                    entry
                        .file_name()
                        .to_string_lossy()
                        .chars()
                        .all(|c| c.is_ascii_digit())
                })
                .filter_map(|entry| std::fs::read_to_string(entry.path().join("comm")).ok())
                .map(|comm| comm.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Free bytes on the filesystem holding `path` (or its nearest existing parent, before setup).
fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|candidate| candidate.exists())?;
    let stats = nix::sys::statvfs::statvfs(existing).ok()?;
    Some(stats.blocks_available() as u64 * stats.fragment_size() as u64)
}
