//! The checks, each a pure function of the facts it needs, so every one is tested on fixtures.

use serde_json::Value;

use super::probe::{DoctorFacts, Readable, ServeFacts, ServeLimits, SocketFacts, SysboxDaemons};
use super::{Check, Status};
use crate::engine::daemon_json::{self, SYSBOX_RUNTIME};
use crate::engine::host::{
    CgroupVersion, HostFacts, IDMAPPED_MOUNTS_SINCE, INOTIFY_INSTANCES, KEYS_MAXBYTES,
    KEYS_MAXKEYS, KernelVersion, SYSBOX_MINIMUM_KERNEL, SYSCTL_CONF, UserNamespaces,
};

const SETUP: &str = "sudo cubbi setup";
/// The host Docker's usual sockets and data-root: cubbi's endpoint must be none of them.
const HOST_DOCKER_SOCKETS: &[&str] = &["/var/run/docker.sock", "/run/docker.sock"];
const HOST_DOCKER_ROOT: &str = "/var/lib/docker";
const GIB: u64 = 1024 * 1024 * 1024;

/// Every check, in the order a person reads them.
pub fn run_all(facts: &DoctorFacts) -> Vec<Check> {
    let host = &facts.host;
    let mut checks = vec![
        kernel(host.kernel, &host.kernel_release),
        user_namespaces(host.user_namespaces),
        cgroup(host.cgroup),
        systemd(host.systemd_is_pid1),
        engine_binary(
            "dockerd",
            facts.dockerd_version.as_deref(),
            host.has("dockerd"),
        ),
        engine_binary(
            "containerd",
            facts.containerd_version.as_deref(),
            host.has("containerd"),
        ),
        socket_exists(&facts.socket),
        socket_answers(&facts.socket),
        socket_access(&facts.socket, host.is_root),
        daemon_json_check(facts),
        sysbox_binary(host),
        sysbox_daemons(&facts.sysbox_daemons),
        sysbox_docker_socket(host.has_sysbox(), facts.other_docker_socket.as_deref()),
        sysbox_runtime(facts.docker_info.as_ref()),
        base_image(facts.base_image_present),
        ssh_key(facts),
        free_ports(facts.free_ports, facts.ports.start, facts.ports.end),
        disk(
            facts.data_root_free_bytes,
            &facts.data_root.display().to_string(),
        ),
        not_host_default(&facts.socket, facts.docker_info.as_ref()),
        firewall(&facts.firewall, facts.egress_guard),
        forwarding(host.ip_forward, facts.forward_policy.as_deref()),
        inotify(facts.inotify_instances),
        key_quota(host.keys_maxkeys, host.keys_maxbytes),
    ];
    // Only where `cubbi setup --service` installed it: the service is optional.
    if let Some(service) = &facts.serve {
        checks.push(serve(service));
        checks.push(serve_limits(&service.limits));
    }
    checks
}

/// The session service is running and answers /healthz. A warning, not a failure: local
/// sessions work without it.
pub fn serve(facts: &ServeFacts) -> Check {
    const ID: &str = "serve";
    const REMEDY: &str = "systemctl status cubbi-serve; journalctl -u cubbi-serve";
    let url = format!("http://{}/healthz", facts.address);
    match (facts.active_state.as_deref(), &facts.health) {
        (Some(state), _) if state != "active" => Check::warn(
            ID,
            format!("cubbi-serve.service is {state}, not active"),
            REMEDY,
        ),
        (_, Err(why)) => Check::warn(
            ID,
            format!("cubbi-serve.service does not answer {url}: {why}"),
            REMEDY,
        ),
        (Some(_), Ok(())) => Check::ok(
            ID,
            format!("cubbi-serve.service is active; {url} answers ok"),
        ),
        (None, Ok(())) => Check::ok(
            ID,
            format!("{url} answers ok (systemd not reachable to ask for the unit)"),
        ),
    }
}

/// What one session and one user of the service may take. A warning where a user could take
/// the host (no session cap) or the disk has no limit, with why not.
pub fn serve_limits(limits: &Result<ServeLimits, String>) -> Check {
    const ID: &str = "serve-limits";
    const CONFIG: &str = crate::engine::serve::SERVICE_CONFIG;
    let limits = match limits {
        Ok(limits) => limits,
        Err(why) => return Check::warn(ID, format!("service limits unknown: {why}"), CONFIG),
    };
    let memory = limits
        .memory_bytes
        .map_or("no memory limit".to_string(), |bytes| {
            format!("{} memory", human(bytes.max(0) as u64))
        });
    let cpus = limits
        .cpus
        .as_ref()
        .map_or("no CPU limit".to_string(), |cpus| format!("{cpus} CPUs"));
    let disk = match &limits.disk {
        Ok(bytes) => format!("{} disk", human((*bytes).max(0) as u64)),
        Err(_) => "no disk limit".to_string(),
    };
    let ports = u32::from(limits.ports.end) - u32::from(limits.ports.start) + 1;
    let sessions = match limits.sessions_per_user {
        0 => "no session cap".to_string(),
        cap => format!("{cap} sessions (so {cap} of the {ports} SSH ports)"),
    };
    let finding = format!(
        "each session: {memory}, {cpus}, {} processes, {disk}; each user: {sessions}, {} projects",
        limits.pids, limits.projects_per_user
    );
    match (&limits.disk, limits.sessions_per_user) {
        (_, 0) => Check::warn(
            ID,
            format!("{finding}: one user can take every port and the host"),
            format!("set limits.sessions_per_user in {CONFIG}"),
        ),
        (Err(why), _) => Check::warn(
            ID,
            format!("{finding}; no disk limit because {why}"),
            "use the btrfs storage driver, or put the engine's data root on XFS mounted with -o pquota, to limit each session's disk",
        ),
        (Ok(_), _) => Check::ok(ID, finding),
    }
}

pub fn kernel(version: Option<KernelVersion>, release: &str) -> Check {
    const ID: &str = "kernel";
    match version {
        Some(v) if v >= IDMAPPED_MOUNTS_SINCE => {
            Check::ok(ID, format!("kernel {release}: idmapped mounts available"))
        }
        Some(v) if v >= SYSBOX_MINIMUM_KERNEL => Check::warn(
            ID,
            format!(
                "kernel {release} predates idmapped mounts ({IDMAPPED_MOUNTS_SINCE}); Sysbox needs shiftfs"
            ),
            "use an Ubuntu kernel with shiftfs, or upgrade to 5.12+ (e.g. `apt install linux-image-amd64` from backports)",
        ),
        Some(_) => Check::fail(
            ID,
            format!(
                "kernel {release} is too old for Sysbox (needs {SYSBOX_MINIMUM_KERNEL}+, ideally 5.12+)"
            ),
            "upgrade the kernel to 5.12 or newer",
        ),
        None => Check::warn(
            ID,
            format!("cannot read the kernel version from `{release}`"),
            "uname -r",
        ),
    }
}

pub fn user_namespaces(userns: UserNamespaces) -> Check {
    const ID: &str = "user-namespaces";
    if userns.enabled() {
        Check::ok(ID, "user namespaces are enabled")
    } else if userns.unprivileged_clone == Some(false) {
        Check::fail(
            ID,
            "kernel.unprivileged_userns_clone is 0",
            "sudo sysctl -w kernel.unprivileged_userns_clone=1",
        )
    } else {
        Check::fail(
            ID,
            format!(
                "user.max_user_namespaces is {}",
                userns
                    .max
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "unreadable".into())
            ),
            "sudo sysctl -w user.max_user_namespaces=15000",
        )
    }
}

pub fn cgroup(version: CgroupVersion) -> Check {
    const ID: &str = "cgroup";
    match version {
        CgroupVersion::V2 => Check::ok(ID, "cgroup v2"),
        CgroupVersion::V1 | CgroupVersion::Hybrid => Check::warn(
            ID,
            format!(
                "cgroup {} (Sysbox works, but v2 is what it is tested on most)",
                if version == CgroupVersion::V1 {
                    "v1"
                } else {
                    "hybrid"
                }
            ),
            "boot with systemd.unified_cgroup_hierarchy=1 on the kernel command line",
        ),
        CgroupVersion::Unknown => Check::warn(
            ID,
            "no cgroup filesystem at /sys/fs/cgroup",
            "mount cgroup2 on /sys/fs/cgroup",
        ),
    }
}

pub fn systemd(is_pid1: bool) -> Check {
    const ID: &str = "systemd";
    if is_pid1 {
        Check::ok(
            ID,
            "systemd is PID 1: the engine runs as cubbi-docker.service",
        )
    } else {
        Check::warn(
            ID,
            "systemd is not PID 1: the engine runs supervised, and does not start at boot",
            "sudo cubbi engine start   (after each boot)",
        )
    }
}

pub fn engine_binary(id: &'static str, version: Option<&str>, installed: bool) -> Check {
    match (installed, version) {
        (true, Some(version)) => {
            Check::ok(id, version.lines().next().unwrap_or(version).to_string())
        }
        (true, None) => Check::warn(
            id,
            format!("{id} is installed but `{id} --version` failed"),
            format!("{id} --version"),
        ),
        (false, _) => Check::fail(
            id,
            format!("{id} is not installed"),
            format!("{SETUP}   (installs Debian's docker.io)"),
        ),
    }
}

pub fn socket_exists(socket: &SocketFacts) -> Check {
    const ID: &str = "endpoint-socket";
    match &socket.path {
        None => Check::ok(
            ID,
            format!(
                "{} is not a unix socket; checked by answering",
                socket.endpoint
            ),
        ),
        Some(path) if socket.exists => Check::ok(ID, format!("{} exists", path.display())),
        Some(path) => Check::fail(
            ID,
            format!("{} does not exist", path.display()),
            format!("{SETUP}   (or `sudo cubbi engine start`)"),
        ),
    }
}

pub fn socket_answers(socket: &SocketFacts) -> Check {
    const ID: &str = "endpoint-answers";
    match &socket.answers {
        Ok(()) => Check::ok(ID, format!("{} answers", socket.endpoint)),
        Err(reason) => Check::fail(
            ID,
            format!(
                "{} does not answer: {}",
                socket.endpoint,
                reason.lines().next().unwrap_or_default()
            ),
            "sudo cubbi engine start   (or `sudo systemctl restart cubbi-docker`)",
        ),
    }
}

pub fn socket_access(socket: &SocketFacts, is_root: bool) -> Check {
    const ID: &str = "endpoint-access";
    match &socket.path {
        _ if is_root => Check::ok(ID, "root may use every socket"),
        Some(path) if socket.exists && !socket.accessible => Check::fail(
            ID,
            format!(
                "you may not use {}: you are not in its group",
                path.display()
            ),
            format!(
                "sudo usermod -aG {} $USER   (then log in again)",
                crate::engine::SOCKET_GROUP
            ),
        ),
        Some(path) if socket.exists => Check::ok(ID, format!("you may use {}", path.display())),
        _ => Check::ok(ID, "nothing to check without a socket"),
    }
}

pub fn daemon_json_check(facts: &DoctorFacts) -> Check {
    const ID: &str = "daemon-json";
    let path = facts.daemon_json_path.display();
    match &facts.daemon_json {
        Readable::NeedsRoot => Check::warn(
            ID,
            format!("{path} needs root to read"),
            "sudo cubbi doctor",
        ),
        Readable::Unknown(reason) => {
            Check::fail(ID, format!("cannot read {path}: {reason}"), SETUP)
        }
        Readable::Read(None) => Check::fail(ID, format!("{path} does not exist"), SETUP),
        Readable::Read(Some(text)) => match daemon_json::parse(&facts.daemon_json_path, text) {
            Err(err) => Check::fail(ID, err.to_string(), format!("fix it, or `{SETUP} --force`")),
            Ok(map) => {
                let drifted = daemon_json::mismatched_keys(&map, &facts.expected_daemon_json);
                if drifted.is_empty() {
                    Check::ok(ID, format!("{path} is valid and matches what setup writes"))
                } else {
                    Check::warn(
                        ID,
                        format!(
                            "{path} differs from what setup writes in: {}",
                            drifted.join(", ")
                        ),
                        SETUP,
                    )
                }
            }
        },
    }
}

pub fn sysbox_binary(host: &HostFacts) -> Check {
    const ID: &str = "sysbox-runc";
    match host.programs.get("sysbox-runc") {
        Some(path) => Check::ok(ID, format!("{} is installed", path.display())),
        None => Check::fail(
            ID,
            "sysbox-runc is not installed: sessions cannot run under Sysbox",
            format!(
                "{SETUP}   (or `{SETUP} --sysbox-deb ./sysbox-ce_{}-0.linux_amd64.deb`)",
                crate::engine::sysbox::SYSBOX_VERSION
            ),
        ),
    }
}

pub fn sysbox_daemons(daemons: &SysboxDaemons) -> Check {
    const ID: &str = "sysbox-services";
    match daemons {
        SysboxDaemons::Units { mgr, fs } if mgr == "active" && fs == "active" => {
            Check::ok(ID, "sysbox-mgr and sysbox-fs are active")
        }
        SysboxDaemons::Units { mgr, fs } => Check::fail(
            ID,
            format!("sysbox-mgr is {mgr}, sysbox-fs is {fs}"),
            "sudo systemctl start sysbox   (installed by `sudo cubbi setup`)",
        ),
        SysboxDaemons::Processes {
            mgr: true,
            fs: true,
        } => Check::ok(ID, "sysbox-mgr and sysbox-fs are running"),
        SysboxDaemons::Processes { mgr, fs } => Check::fail(
            ID,
            format!(
                "not running or not answering on /run/sysbox: {}",
                [(!mgr).then_some("sysbox-mgr"), (!fs).then_some("sysbox-fs")]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!(
                "start them as root: `sysbox-mgr &` then `sysbox-fs &` (they must answer on {} \
                 and {}); install Sysbox first with `sudo cubbi setup` where it is missing",
                crate::engine::sysbox::MGR_SOCKET,
                crate::engine::sysbox::FS_SOCKET
            ),
        ),
    }
}

/// Where Sysbox asks "the" Docker about a container (`DOCKER_HOST`, else this socket).
pub const SYSBOX_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Sysbox (v0.7.0) asks the Docker at `/var/run/docker.sock` whether a container is Docker's,
/// to alias the embedded DNS for inner containers and to know which path disappears when the
/// container is removed. With nothing there it recognises the engine's data-root by its
/// layout; a *different* dockerd there answers "not mine" for every session (see
/// docs/architecture.md, "Sysbox and /var/run/docker.sock").
pub fn sysbox_docker_socket(sysbox: bool, other: Option<&std::path::Path>) -> Check {
    const ID: &str = "sysbox-docker-socket";
    match (sysbox, other) {
        (false, _) => Check::ok(ID, "no Sysbox here, nothing asks another Docker"),
        (true, None) => Check::ok(
            ID,
            format!(
                "no other Docker at {SYSBOX_DOCKER_SOCKET}: Sysbox recognises the engine's \
                 containers by their data-root"
            ),
        ),
        (true, Some(path)) => Check::warn(
            ID,
            format!(
                "another Docker answers at {}: Sysbox asks it about cubbi's sessions, finds none, \
                 and then neither aliases their inner containers' DNS nor keeps their state \
                 across a stop (inner images are copied back instead)",
                path.display()
            ),
            "where cubbi is Sysbox's only user: a sysbox-mgr drop-in with \
             Environment=DOCKER_HOST=unix:///var/run/cubbi-docker.sock, then \
             `systemctl daemon-reload && systemctl restart sysbox` with no sessions running",
        ),
    }
}

/// `docker info`: sysbox-runc registered and the default runtime.
pub fn sysbox_runtime(info: Option<&Value>) -> Check {
    const ID: &str = "sysbox-default-runtime";
    let Some(info) = info else {
        return Check::fail(
            ID,
            "the endpoint does not answer, so its runtimes are unknown",
            "sudo cubbi engine start",
        );
    };
    let registered = info
        .get("Runtimes")
        .and_then(Value::as_object)
        .is_some_and(|runtimes| runtimes.contains_key(SYSBOX_RUNTIME));
    let default = info
        .get("DefaultRuntime")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    match (registered, default == SYSBOX_RUNTIME) {
        (true, true) => Check::ok(ID, "sysbox-runc is registered and the default runtime"),
        (true, false) => Check::fail(
            ID,
            format!("sysbox-runc is registered but the default is {default}"),
            SETUP,
        ),
        (false, _) => Check::fail(
            ID,
            format!("sysbox-runc is not registered (default: {default})"),
            SETUP,
        ),
    }
}

pub fn base_image(present: Option<bool>) -> Check {
    const ID: &str = "base-image";
    match present {
        Some(true) => Check::ok(ID, format!("{} is present", super::probe::BASE_IMAGE)),
        Some(false) => Check::warn(
            ID,
            format!("{} is not built yet", super::probe::BASE_IMAGE),
            "cubbi image build base",
        ),
        None => Check::warn(
            ID,
            "the endpoint does not answer, so images are unknown",
            "sudo cubbi engine start",
        ),
    }
}

pub fn ssh_key(facts: &DoctorFacts) -> Check {
    const ID: &str = "ssh-key";
    match (&facts.ssh_key, facts.ssh_key_present) {
        (Some(path), true) => Check::ok(ID, format!("{} is present", path.display())),
        (Some(path), false) => Check::warn(
            ID,
            format!("{} does not exist yet", path.display()),
            "created by your first `cubbi session create`",
        ),
        (None, _) => Check::warn(ID, "no home directory to hold the key", "set HOME"),
    }
}

/// Enough inotify instances for many systemd containers (see [`INOTIFY_INSTANCES`]).
pub fn inotify(instances: Option<u64>) -> Check {
    const ID: &str = "inotify";
    let remedy = format!(
        "sudo cubbi setup (or: echo {}={} | sudo tee {SYSCTL_CONF} && sudo sysctl --system)",
        INOTIFY_INSTANCES.name, INOTIFY_INSTANCES.wanted
    );
    match instances {
        None => Check::warn(ID, "cannot read fs.inotify.max_user_instances", remedy),
        Some(n) if n < 1024 => Check::warn(
            ID,
            format!(
                "fs.inotify.max_user_instances is {n}: only about {} sessions can boot systemd at once",
                n / 5
            ),
            remedy,
        ),
        Some(n) => Check::ok(ID, format!("fs.inotify.max_user_instances is {n}")),
    }
}

/// A key quota big enough for many Sysbox sessions, which all share one host user's (see
/// [`KEYS_MAXKEYS`]). A warning: runc sessions and a few Sysbox ones work without it.
pub fn key_quota(maxkeys: Option<u64>, maxbytes: Option<u64>) -> Check {
    const ID: &str = "key-quota";
    let remedy = format!(
        "sudo cubbi setup (or: sysctl -w {}={} {}={})",
        KEYS_MAXKEYS.name, KEYS_MAXKEYS.wanted, KEYS_MAXBYTES.name, KEYS_MAXBYTES.wanted
    );
    let (Some(keys), Some(bytes)) = (maxkeys, maxbytes) else {
        return Check::warn(
            ID,
            format!(
                "cannot read {} and {}",
                KEYS_MAXKEYS.name, KEYS_MAXBYTES.name
            ),
            remedy,
        );
    };
    let found = format!(
        "{} is {keys} and {} is {bytes}",
        KEYS_MAXKEYS.name, KEYS_MAXBYTES.name
    );
    if keys >= KEYS_MAXKEYS.wanted && bytes >= KEYS_MAXBYTES.wanted {
        return Check::ok(ID, found);
    }
    // Seen: at the defaults (200 keys, 20000 bytes) the 25th Sysbox session fails, so each
    // takes about 8 keys. Only an estimate: which of the two runs out first is not measured,
    // and what runs in the sessions may take keys too.
    let bytes_too = if bytes < KEYS_MAXBYTES.wanted {
        format!(
            ", fewer while {} is below {}",
            KEYS_MAXBYTES.name, KEYS_MAXBYTES.wanted
        )
    } else {
        String::new()
    };
    Check::warn(
        ID,
        format!(
            "{found}: every Sysbox session's root is one host user sharing this quota, so only \
             about {} sessions can run at once (an estimate: roughly maxkeys/8{bytes_too})",
            keys / 8
        ),
        remedy,
    )
}

/// The Fluentd receiver sessions log to (`logging.fluentd`). A warning at most: Docker's
/// driver runs async, so sessions boot and `session logs` works while it is away.
pub fn fluentd(address: &str, reachable: Result<(), String>) -> Check {
    const ID: &str = "fluentd";
    let shown = address;
    match reachable {
        Ok(()) => Check::ok(ID, format!("the receiver at {shown} takes connections")),
        Err(why) => Check::warn(
            ID,
            format!(
                "the receiver at {shown} (logging.fluentd): {why}; sessions keep their logs meanwhile"
            ),
            "start the receiver, or `cubbi config unset logging.fluentd`",
        ),
    }
}

/// Whether the Langfuse of `services.langfuse.url` takes connections: a warning at most,
/// since agents only lose their telemetry while it is down.
pub fn langfuse(endpoint: &str, reachable: Result<(), String>) -> Check {
    const ID: &str = "langfuse";
    match reachable {
        Ok(()) => Check::ok(ID, format!("{endpoint} takes connections")),
        Err(why) => Check::warn(
            ID,
            format!(
                "{endpoint} (services.langfuse.url): {why}; sessions boot and run, without \
                 telemetry meanwhile"
            ),
            "start Langfuse, or `cubbi config unset services.langfuse.url` (and its keys)",
        ),
    }
}

/// The engine's swarm membership, where it has one: the node's role, and whether its runtime
/// label says what the engine runs by default (placement relies on it). `manager_port` is
/// whether a manager's port 2377 takes connections.
pub fn swarm(
    membership: &crate::engine::swarm::Membership,
    default_runtime: &str,
    manager_port: Option<Result<(), String>>,
) -> Check {
    use crate::engine::swarm::RUNTIME_LABEL;
    const ID: &str = "swarm";
    let role = if membership.manager {
        "manager"
    } else {
        "worker"
    };
    if !membership.active() {
        return Check::warn(
            ID,
            format!("the engine's swarm node is {}", membership.state),
            "see `docker -H ENDPOINT info`; `sudo cubbi setup --swarm-join ...` joins again",
        );
    }
    let label = membership.labels.get(RUNTIME_LABEL).map(String::as_str);
    if label != Some(default_runtime) {
        return Check::warn(
            ID,
            format!(
                "swarm {role} node {}: its {RUNTIME_LABEL} label is {} but the engine's default \
                 runtime is {default_runtime}",
                membership.node_id,
                label.unwrap_or("missing")
            ),
            "run `sudo cubbi setup` with the same --swarm-* option again to label it",
        );
    }
    if let Some(Err(why)) = manager_port {
        return Check::warn(
            ID,
            format!(
                "swarm manager node {}: port 2377 on {} does not take connections ({why})",
                membership.node_id, membership.node_addr
            ),
            "open TCP 2377, TCP/UDP 7946 and UDP 4789 between the nodes",
        );
    }
    Check::ok(
        ID,
        format!(
            "swarm {role} node {} at {}, labelled {RUNTIME_LABEL}={default_runtime}",
            membership.node_id, membership.node_addr
        ),
    )
}

/// Sessions on a Swarm are pinned to their node (their volumes are there): a drained, paused
/// or down node's sessions stay stopped, never moved. `pinned` counts sessions per node id.
pub fn pinned_sessions(
    nodes: &[crate::swarm::placement::NodeView],
    pinned: &std::collections::BTreeMap<String, usize>,
) -> Check {
    const ID: &str = "swarm-sessions";
    let stuck: Vec<String> = nodes
        .iter()
        .filter(|node| !node.ready || !node.active)
        .filter_map(|node| {
            let count = *pinned.get(&node.id)?;
            let how = if node.ready {
                "drained or paused"
            } else {
                "down"
            };
            Some(format!(
                "{} ({}) is {how} with {count} session(s) pinned to it",
                node.hostname, node.address
            ))
        })
        .collect();
    let total: usize = pinned.values().sum();
    if stuck.is_empty() {
        return Check::ok(
            ID,
            format!("{total} session(s) on the Swarm, every node holding one can run it"),
        );
    }
    Check::warn(
        ID,
        format!(
            "{}; Swarm does not move a session off its node (its volumes are there), so they \
             stay stopped",
            stuck.join("; ")
        ),
        "docker -H ENDPOINT node update --availability active NODE (or bring the node back up); \
         or close those sessions",
    )
}

pub fn free_ports(free: usize, start: u16, end: u16) -> Check {
    const ID: &str = "ports";
    let total = usize::from(end.saturating_sub(start)) + 1;
    let range = format!("{start}-{end}");
    match free {
        0 => Check::fail(
            ID,
            format!("no free port in {range}"),
            "cubbi session close NAME   (or widen with `cubbi config set ports.end N`)",
        ),
        n if n < 10 => Check::warn(
            ID,
            format!("only {n} of {total} ports free in {range}"),
            "cubbi config set ports.end N",
        ),
        n => Check::ok(ID, format!("{n} of {total} ports free in {range}")),
    }
}

pub fn disk(free: Option<u64>, data_root: &str) -> Check {
    const ID: &str = "disk";
    match free {
        None => Check::warn(
            ID,
            format!("cannot read free space for {data_root}"),
            format!("df -h {data_root}"),
        ),
        Some(bytes) if bytes < 2 * GIB => Check::fail(
            ID,
            format!("{} free for {data_root}", human(bytes)),
            "free disk space, or `docker --context cubbi system prune`",
        ),
        Some(bytes) if bytes < 10 * GIB => Check::warn(
            ID,
            format!("{} free for {data_root}", human(bytes)),
            "docker --context cubbi system prune",
        ),
        Some(bytes) => Check::ok(ID, format!("{} free for {data_root}", human(bytes))),
    }
}

fn human(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB as f64)
}

/// The endpoint must be cubbi's own, never the host Docker.
pub fn not_host_default(socket: &SocketFacts, info: Option<&Value>) -> Check {
    const ID: &str = "not-host-docker";
    if let Some(path) = &socket.path
        && HOST_DOCKER_SOCKETS
            .iter()
            .any(|host| path.as_path() == std::path::Path::new(host))
    {
        return Check::fail(
            ID,
            format!(
                "the endpoint is the host Docker's socket {}",
                path.display()
            ),
            "cubbi config unset docker.endpoint   (and unset CUBBI_DOCKER_HOST)",
        );
    }
    match info
        .and_then(|info| info.get("DockerRootDir"))
        .and_then(Value::as_str)
    {
        Some(HOST_DOCKER_ROOT) => Check::fail(
            ID,
            format!("the endpoint's data-root is the host Docker's {HOST_DOCKER_ROOT}"),
            "cubbi config unset docker.endpoint",
        ),
        Some(root) => Check::ok(ID, format!("a dedicated engine (data-root {root})")),
        None => Check::ok(
            ID,
            format!("{} is not the host Docker's socket", socket.endpoint),
        ),
    }
}

/// cubbi's firewall: the engine's dockerd runs without iptables, so these rules are its NAT
/// as well as its egress guard.
pub fn firewall(installed: &Readable<bool>, egress_guard: Option<bool>) -> Check {
    const ID: &str = "firewall";
    match (installed, egress_guard) {
        (Readable::Read(_), None) => {
            Check::warn(ID, "no engine set up, so no firewall rules", SETUP)
        }
        (Readable::Read(true), Some(true)) => Check::ok(
            ID,
            "NAT, forwarding, isolation between the engine's networks and the egress guard \
             (CUBBI-* chains) are in place",
        ),
        (Readable::Read(true), Some(false)) => Check::warn(
            ID,
            "NAT, forwarding and isolation between the engine's networks are in place, but the \
             egress guard is off: sessions can reach private networks and this host",
            "sudo cubbi setup (without --no-egress-guard)",
        ),
        (Readable::Read(false), Some(_)) => Check::fail(
            ID,
            "cubbi's firewall chains are missing or changed: sessions may have no network, reach \
             private networks, or reach other users' sessions",
            SETUP,
        ),
        (Readable::NeedsRoot, _) => Check::warn(
            ID,
            "checking firewall rules needs root",
            "sudo cubbi doctor",
        ),
        (Readable::Unknown(reason), _) => {
            Check::warn(ID, reason.clone(), "apt-get install iptables")
        }
    }
}

/// IP forwarding on (the engine's dockerd turns it on) with FORWARD's policy ACCEPT makes this
/// host a router between all its networks. cubbi's bridges are closed either way (CUBBI-FWD
/// ends with a DROP of anything new into them); the warning is about the host's other networks.
pub fn forwarding(ip_forward: Option<bool>, policy: Option<&str>) -> Check {
    const ID: &str = "ip-forwarding";
    match (ip_forward, policy) {
        (Some(true), Some("ACCEPT")) => Check::warn(
            ID,
            "net.ipv4.ip_forward is 1 and the FORWARD policy is ACCEPT: this host forwards \
             between all its networks (cubbi's bridges are closed by CUBBI-FWD's DROP, other \
             interfaces are not)",
            "sudo iptables -P FORWARD DROP   (after checking nothing on this host relies on \
             forwarding; make it last with your firewall's configuration)",
        ),
        (Some(true), Some(policy)) => Check::ok(
            ID,
            format!("IP forwarding is on and the FORWARD policy is {policy}"),
        ),
        (Some(true), None) => Check::ok(
            ID,
            "IP forwarding is on (reading FORWARD's policy needs root and iptables)",
        ),
        (Some(false), _) => Check::ok(ID, "IP forwarding is off"),
        (None, _) => Check::ok(ID, "net.ipv4.ip_forward cannot be read"),
    }
}

/// Inside a Sysbox container, root (uid 0) must map to an unprivileged host uid. `uid_map` is
/// the container's `/proc/self/uid_map` ("inside outside count" per line).
pub fn uid_map(uid_map: &str) -> Check {
    const ID: &str = "userns-mapping";
    let root_line = uid_map.lines().find_map(|line| {
        let numbers: Vec<u64> = line
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        match numbers.as_slice() {
            [0, outside, count] => Some((*outside, *count)),
            _ => None,
        }
    });
    match root_line {
        Some((0, _)) => Check::fail(
            ID,
            "container root is host root (no user namespace)",
            "run sessions with --runtime sysbox-runc",
        ),
        Some((outside, count)) => Check::ok(
            ID,
            format!("container root is host uid {outside} ({count} ids mapped)"),
        ),
        None => Check::fail(
            ID,
            "cannot read the container's uid map",
            "cat /proc/self/uid_map inside a session",
        ),
    }
}

/// The worst status of a set of checks.
pub fn overall(checks: &[Check]) -> Status {
    checks
        .iter()
        .map(|check| check.status)
        .max()
        .unwrap_or(Status::Ok)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_drained_node_with_sessions_pinned_to_it_is_a_warning() {
        use crate::swarm::placement::NodeView;
        let node = |id: &str, ready: bool, active: bool| NodeView {
            id: id.into(),
            hostname: format!("host-{id}"),
            address: "10.0.0.1".into(),
            ready,
            active,
            runtime: Some("sysbox-runc".into()),
            memory: 1 << 30,
        };
        let nodes = [
            node("a", true, true),
            node("b", true, false),
            node("c", false, true),
        ];
        let pinned = std::collections::BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 1)]);
        let check = super::pinned_sessions(&nodes, &pinned);
        let text = format!("{check:?}");
        assert_eq!(check.status, crate::doctor::Status::Warn, "{text}");
        assert!(text.contains("host-b"), "{text}");
        assert!(text.contains("drained"), "{text}");
        assert!(
            !text.contains("host-c"),
            "no session is pinned to c: {text}"
        );
        assert!(text.contains("--availability active"), "{text}");
        let healthy = std::collections::BTreeMap::from([("a".to_string(), 2)]);
        let check = super::pinned_sessions(&nodes, &healthy);
        let text = format!("{check:?}");
        assert_eq!(check.status, crate::doctor::Status::Ok, "{text}");
        assert!(text.contains("2 session(s)"), "{text}");
        assert!(!text.contains("drained"), "{text}");
    }

    use std::path::PathBuf;

    use serde_json::json;

    use super::*;

    fn socket(path: &str, exists: bool, accessible: bool, answers: bool) -> SocketFacts {
        SocketFacts {
            endpoint: format!("unix://{path}"),
            path: Some(PathBuf::from(path)),
            exists,
            accessible,
            answers: if answers {
                Ok(())
            } else {
                Err("connection refused".into())
            },
        }
    }

    #[test]
    fn kernel_versions() {
        let check = |release: &str| kernel(KernelVersion::parse(release), release).status;
        assert_eq!(check("6.18.44"), Status::Ok);
        assert_eq!(check("5.12.0"), Status::Ok);
        assert_eq!(check("5.4.0-100-generic"), Status::Fail);
        assert_eq!(check("5.10.0-28-amd64"), Status::Warn);
        assert_eq!(check("weird"), Status::Warn);
        assert!(
            kernel(KernelVersion::parse("5.10.0"), "5.10.0")
                .finding
                .contains("shiftfs")
        );
    }

    #[test]
    fn user_namespace_knobs() {
        assert_eq!(
            user_namespaces(UserNamespaces {
                max: Some(1),
                unprivileged_clone: None
            })
            .status,
            Status::Ok
        );
        let off = user_namespaces(UserNamespaces {
            max: Some(1),
            unprivileged_clone: Some(false),
        });
        assert_eq!(off.status, Status::Fail);
        assert!(off.remedy.contains("unprivileged_userns_clone=1"));
        assert!(
            user_namespaces(UserNamespaces {
                max: Some(0),
                unprivileged_clone: None
            })
            .remedy
            .contains("max_user_namespaces")
        );
    }

    #[test]
    fn cgroups_and_systemd() {
        assert_eq!(cgroup(CgroupVersion::V2).status, Status::Ok);
        assert_eq!(cgroup(CgroupVersion::V1).status, Status::Warn);
        assert_eq!(systemd(true).status, Status::Ok);
        let no = systemd(false);
        assert_eq!(no.status, Status::Warn);
        assert!(no.remedy.contains("cubbi engine start"));
    }

    #[test]
    fn engine_binaries() {
        assert_eq!(
            engine_binary(
                "dockerd",
                Some("Docker version 20.10.24+dfsg1, build 297e128"),
                true
            )
            .status,
            Status::Ok
        );
        assert_eq!(engine_binary("dockerd", None, false).status, Status::Fail);
    }

    #[test]
    fn socket_checks() {
        assert_eq!(
            socket_exists(&socket("/s", false, false, false)).status,
            Status::Fail
        );
        assert_eq!(
            socket_answers(&socket("/s", true, true, false)).status,
            Status::Fail
        );
        assert_eq!(
            socket_answers(&socket("/s", true, true, true)).status,
            Status::Ok
        );
        let denied = socket_access(&socket("/s", true, false, true), false);
        assert_eq!(denied.status, Status::Fail);
        assert!(denied.remedy.contains("usermod -aG cubbi"));
        assert_eq!(
            socket_access(&socket("/s", true, false, true), true).status,
            Status::Ok
        );
    }

    #[test]
    fn docker_info_runtimes() {
        let sysbox = json!({"DefaultRuntime": "sysbox-runc", "Runtimes": {"runc": {}, "sysbox-runc": {"path": "/usr/bin/sysbox-runc"}}});
        assert_eq!(sysbox_runtime(Some(&sysbox)).status, Status::Ok);
        let registered_only =
            json!({"DefaultRuntime": "runc", "Runtimes": {"runc": {}, "sysbox-runc": {}}});
        assert!(
            sysbox_runtime(Some(&registered_only))
                .finding
                .contains("default is runc")
        );
        let plain = json!({"DefaultRuntime": "runc", "Runtimes": {"runc": {}}});
        assert_eq!(sysbox_runtime(Some(&plain)).status, Status::Fail);
        assert_eq!(sysbox_runtime(None).status, Status::Fail);
    }

    #[test]
    fn another_docker_at_sysbox_socket_is_a_warning() {
        let other = std::path::Path::new("/var/run/docker.sock");
        assert_eq!(sysbox_docker_socket(false, Some(other)).status, Status::Ok);
        assert_eq!(sysbox_docker_socket(true, None).status, Status::Ok);
        let warned = sysbox_docker_socket(true, Some(other));
        assert_eq!(warned.status, Status::Warn);
        assert!(
            warned.finding.contains("/var/run/docker.sock"),
            "{}",
            warned.finding
        );
        assert!(warned.remedy.contains("DOCKER_HOST"), "{}", warned.remedy);
    }

    #[test]
    fn sysbox_binary_and_daemons() {
        let mut host =
            HostFacts::gather(&crate::engine::host::fixture::FixtureHost::debian_with_systemd());
        let missing = sysbox_binary(&host);
        assert_eq!(missing.status, Status::Fail);
        assert!(missing.remedy.contains("--sysbox-deb"));
        host.programs
            .insert("sysbox-runc".into(), "/usr/bin/sysbox-runc".into());
        assert_eq!(sysbox_binary(&host).status, Status::Ok);
        let units = SysboxDaemons::Units {
            mgr: "active".into(),
            fs: "inactive".into(),
        };
        assert!(
            sysbox_daemons(&units)
                .finding
                .contains("sysbox-fs is inactive")
        );
        let procs = SysboxDaemons::Processes {
            mgr: false,
            fs: false,
        };
        let down = sysbox_daemons(&procs);
        assert_eq!(
            down.finding,
            "not running or not answering on /run/sysbox: sysbox-mgr, sysbox-fs"
        );
        assert!(
            down.remedy.contains("/run/sysbox/sysmgr.sock"),
            "{}",
            down.remedy
        );
        assert_eq!(
            sysbox_daemons(&SysboxDaemons::Processes {
                mgr: true,
                fs: true
            })
            .status,
            Status::Ok
        );
    }

    #[test]
    fn the_host_docker_is_never_the_endpoint() {
        assert_eq!(
            not_host_default(&socket("/var/run/docker.sock", true, true, true), None).status,
            Status::Fail
        );
        let host_root = json!({"DockerRootDir": "/var/lib/docker"});
        assert_eq!(
            not_host_default(&socket("/tmp/x.sock", true, true, true), Some(&host_root)).status,
            Status::Fail
        );
        let own = json!({"DockerRootDir": "/var/lib/cubbi-docker"});
        assert_eq!(
            not_host_default(
                &socket("/var/run/cubbi-docker.sock", true, true, true),
                Some(&own)
            )
            .status,
            Status::Ok
        );
    }

    #[test]
    fn ports_disk_image_egress() {
        assert_eq!(free_ports(0, 2300, 2500).status, Status::Fail);
        assert_eq!(free_ports(5, 2300, 2500).status, Status::Warn);
        assert!(free_ports(201, 2300, 2500).finding.contains("201 of 201"));
        assert_eq!(disk(Some(GIB), "/d").status, Status::Fail);
        assert_eq!(disk(Some(5 * GIB), "/d").status, Status::Warn);
        assert_eq!(disk(Some(50 * GIB), "/d").status, Status::Ok);
        assert_eq!(base_image(Some(false)).remedy, "cubbi image build base");
        assert_eq!(
            firewall(&Readable::NeedsRoot, Some(true)).remedy,
            "sudo cubbi doctor"
        );
        assert_eq!(
            firewall(&Readable::Read(true), Some(true)).status,
            Status::Ok
        );
        assert_eq!(
            firewall(&Readable::Read(true), Some(false)).status,
            Status::Warn
        );
        assert_eq!(
            firewall(&Readable::Read(false), Some(true)).status,
            Status::Fail
        );
        assert_eq!(firewall(&Readable::Read(false), None).status, Status::Warn);
    }

    #[test]
    fn forwarding_with_an_accept_policy_warns() {
        assert_eq!(forwarding(Some(true), Some("ACCEPT")).status, Status::Warn);
        assert!(
            forwarding(Some(true), Some("ACCEPT"))
                .remedy
                .contains("-P FORWARD DROP")
        );
        assert_eq!(forwarding(Some(true), Some("DROP")).status, Status::Ok);
        assert_eq!(forwarding(Some(false), Some("ACCEPT")).status, Status::Ok);
        assert_eq!(forwarding(None, None).status, Status::Ok);
        assert_eq!(
            super::super::probe::parse_forward_policy(
                "-P FORWARD ACCEPT\n-A FORWARD -j CUBBI-FWD-cubbi0\n"
            )
            .as_deref(),
            Some("ACCEPT")
        );
    }

    #[test]
    fn uid_maps() {
        assert_eq!(
            uid_map("         0     165536      65536\n").status,
            Status::Ok
        );
        assert_eq!(
            uid_map("         0          0 4294967295\n").status,
            Status::Fail
        );
        assert_eq!(uid_map("").status, Status::Fail);
    }

    /// The service's limits are said with what is missing: a disk limit and why not, a
    /// session cap.
    #[test]
    fn service_limits_are_said_and_gaps_warned() {
        let engine =
            serde_json::json!({"Driver": "overlay2", "DockerRootDir": "/nonexistent/cubbi-docker"});
        let limits = crate::doctor::probe::serve_limits(
            "[limits]\nmemory = \"2g\"\ncpus = 1.5\nsessions_per_user = 4\n",
            Some(&engine),
        )
        .unwrap();
        assert_eq!(limits.memory_bytes, Some(2 << 30));
        assert_eq!(limits.cpus.as_deref(), Some("1.5"));
        let check = serve_limits(&Ok(limits.clone()));
        assert_eq!(check.status, Status::Warn, "{}", check.finding);
        for part in [
            "2.0 GiB memory",
            "1.5 CPUs",
            "4096 processes",
            "4 sessions (so 4 of the 201 SSH ports)",
            "100 projects",
            "no disk limit because",
        ] {
            assert!(check.finding.contains(part), "{part}: {}", check.finding);
        }
        assert!(check.remedy.contains("pquota"), "{}", check.remedy);
        let with_disk = ServeLimits {
            disk: Ok(20 << 30),
            ..limits.clone()
        };
        let check = serve_limits(&Ok(with_disk.clone()));
        assert_eq!(check.status, Status::Ok, "{}", check.finding);
        assert!(check.finding.contains("20.0 GiB disk"), "{}", check.finding);
        let uncapped = serve_limits(&Ok(ServeLimits {
            sessions_per_user: 0,
            ..with_disk
        }));
        assert_eq!(uncapped.status, Status::Warn);
        assert!(uncapped.remedy.contains("limits.sessions_per_user"));
        // Defaults come from the host: memory and CPUs are always limited.
        let defaults = crate::doctor::probe::serve_limits("", None).unwrap();
        assert!(
            defaults
                .memory_bytes
                .is_some_and(|bytes| bytes >= 512 << 20)
        );
        assert!(defaults.cpus.is_some());
        assert!(defaults.disk.is_err());
        // A config the service would refuse is reported, not guessed around.
        assert!(crate::doctor::probe::serve_limits("[limits]\ndisk = \"lots\"", None).is_err());
    }

    #[test]
    fn the_service_is_checked_when_installed() {
        let facts = |state: Option<&str>, health: Result<(), String>| ServeFacts {
            active_state: state.map(String::from),
            address: "127.0.0.1:3000".parse().unwrap(),
            health,
            limits: Err("not read".into()),
        };
        let up = serve(&facts(Some("active"), Ok(())));
        assert_eq!(up.status, Status::Ok);
        assert!(
            up.finding.contains("http://127.0.0.1:3000/healthz"),
            "{}",
            up.finding
        );
        for down in [
            facts(Some("failed"), Ok(())),
            facts(Some("activating"), Err("nothing answers".into())),
            facts(Some("active"), Err("nothing answers".into())),
            facts(None, Err("nothing answers".into())),
        ] {
            let check = serve(&down);
            assert_eq!(check.status, Status::Warn, "{down:?}");
            assert!(check.remedy.contains("journalctl -u cubbi-serve"));
            assert!(check.remedy.contains("systemctl status cubbi-serve"));
        }
    }

    #[test]
    fn overall_is_the_worst() {
        let checks = [
            Check::ok("a", ""),
            Check::warn("b", "", ""),
            Check::ok("c", ""),
        ];
        assert_eq!(overall(&checks), Status::Warn);
        assert!(super::super::passed(&checks));
        assert!(!super::super::passed(&[Check::fail("x", "", "")]));
    }

    #[test]
    fn inotify_limit_is_checked() {
        assert_eq!(inotify(Some(128)).status, Status::Warn);
        assert!(
            inotify(Some(128))
                .remedy
                .contains("max_user_instances=8192")
        );
        assert_eq!(inotify(Some(8192)).status, Status::Ok);
        assert_eq!(inotify(None).status, Status::Warn);
    }

    #[test]
    fn key_quota_is_checked() {
        let low = key_quota(Some(200), Some(20000));
        assert_eq!(low.status, Status::Warn);
        assert!(
            low.finding.contains("only about 25 sessions") && low.finding.contains("estimate"),
            "{}",
            low.finding
        );
        assert_eq!(
            low.remedy,
            "sudo cubbi setup (or: sysctl -w kernel.keys.maxkeys=20000 kernel.keys.maxbytes=1400000)"
        );
        // One of the two still low is enough to warn.
        assert_eq!(key_quota(Some(20000), Some(20000)).status, Status::Warn);
        assert_eq!(key_quota(Some(20000), Some(1400000)).status, Status::Ok);
        assert_eq!(key_quota(Some(1000000), Some(25000000)).status, Status::Ok);
        assert_eq!(key_quota(None, Some(1400000)).status, Status::Warn);
    }
}
