//! `cubbi setup` as data: each step says what it found (already done, to do, cannot, skipped)
//! and what applying it means. Building the plan is pure, over [`HostFacts`] and the current
//! [`EngineState`], so every host situation is a unit test; [`super::apply`] carries it out.

use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::Serialize;

use super::daemon_json;
use super::firewall::{self, RuleSet};
use super::host::{
    HostFacts, IDMAPPED_MOUNTS_SINCE, INOTIFY_INSTANCES, KEY_QUOTA_CONF, KEYS_MAXBYTES,
    KEYS_MAXKEYS, SYSBOX_MINIMUM_KERNEL, SYSCTL_CONF, SysctlLimit,
};
use super::settings::EngineSettings;
use super::subnet;
use super::sysbox;
use super::unit::{self, UnitSettings};
use super::{EngineError, EnginePaths, SOCKET_GROUP};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    Done,
    ToDo,
    /// Cannot be done here; setup says why and goes on where the rest does not depend on it.
    Cannot,
    Skipped,
}

/// How the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineMode {
    /// `cubbi-docker.service`, driven over D-Bus.
    Systemd,
    /// `cubbi engine start`: a detached dockerd with a pidfile.
    Supervised,
}

/// Where the Sysbox package comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "lowercase")]
pub enum SysboxSource {
    /// `--sysbox-deb PATH`, already checked to be a .deb with the expected checksum.
    File { path: PathBuf },
    /// The pinned release, verified after download.
    Download { url: String, sha256: String },
}

/// What applying a step does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Action {
    Nothing,
    /// The host-wide SSH port lock (`local::ports::prepare_system_lock`), and with `tmpfiles`
    /// its tmpfiles.d entry so systemd re-creates it in the fresh /run of every boot.
    PreparePortLock {
        tmpfiles: bool,
    },
    InstallPackages {
        packages: Vec<String>,
        docker_ce_repository: bool,
    },
    InstallSysbox {
        source: SysboxSource,
    },
    /// Writes `settings` to the sysctl.d drop-in `conf` (headed by `comment`, why cubbi raised
    /// them) and sets them now.
    RaiseSysctlLimits {
        conf: &'static str,
        comment: &'static str,
        settings: Vec<SysctlSetting>,
    },
    CreateGroup {
        group: String,
        add_user: Option<String>,
    },
    WriteConfig {
        daemon_json: String,
        engine_json: String,
        backup_invalid: bool,
        /// A Swarm node under `--unsafe-runc`: write the allow-everything seccomp profile that
        /// daemon.json names; otherwise remove one an earlier setup wrote.
        seccomp_profile: bool,
    },
    InstallUnit {
        unit: String,
        restart: bool,
    },
    StartUnit,
    StartSupervised {
        restart: bool,
    },
    InstallFirewall {
        script: String,
        #[serde(skip)]
        rules: RuleSet,
        /// Everything the firewall can have: what `rules` lacks of it is taken away.
        #[serde(skip)]
        teardown: RuleSet,
    },
    /// Without iptables and with the guard explicitly off: a script that only says so.
    WriteFirewallScript {
        script: String,
    },
    CreateDockerContext {
        endpoint: String,
        user: Option<String>,
    },
    /// `cubbi setup --service`: the system user the service runs as, in `group`.
    CreateServiceUser {
        user: String,
        group: String,
    },
    /// The service's default config, written only where there is none.
    WriteServiceConfig {
        contents: String,
    },
    /// Writes `cubbi-serve.service`, daemon-reload, enable and start (or restart) it.
    InstallServeUnit {
        unit: String,
        restart: bool,
    },
    StartServeUnit,
    /// Installs `packages` (nftables, when nft is missing), writes `cubbi-egress.service`,
    /// daemon-reload, enable and start (or restart) it.
    InstallEgressResolver {
        unit: String,
        restart: bool,
        packages: Vec<String>,
    },
    StartEgressResolver,
    /// `--swarm-init`: the engine becomes a swarm's first manager, with cubbi's node labels.
    InitSwarm {
        advertise: Option<std::net::IpAddr>,
        labels: std::collections::BTreeMap<String, String>,
    },
    /// `--swarm-join`: the engine joins a swarm (the token is a secret: never in a plan's JSON).
    JoinSwarm {
        manager: std::net::SocketAddr,
        #[serde(skip)]
        token: super::swarm::JoinToken,
        advertise: Option<std::net::IpAddr>,
        labels: std::collections::BTreeMap<String, String>,
    },
    /// The node's labels (runtime, cubbi version) changed.
    LabelSwarmNode {
        labels: std::collections::BTreeMap<String, String>,
    },
}

/// One sysctl and the value setup gives it: the wanted one, or the host's own when higher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SysctlSetting {
    #[serde(flatten)]
    pub limit: SysctlLimit,
    pub value: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub id: &'static str,
    pub state: StepState,
    /// One line: what was found, or what will be done.
    pub finding: String,
    pub action: Action,
}

impl Step {
    pub(super) fn new(
        id: &'static str,
        state: StepState,
        finding: impl Into<String>,
        action: Action,
    ) -> Self {
        Self {
            id,
            state,
            finding: finding.into(),
            action,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub mode: EngineMode,
    pub steps: Vec<Step>,
    pub settings: EngineSettings,
}

impl Plan {
    /// True when nothing is left to do (a re-run).
    pub fn is_noop(&self) -> bool {
        self.steps.iter().all(|step| step.state != StepState::ToDo)
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct SetupOptions {
    pub docker_ce: bool,
    /// A checked `--sysbox-deb`.
    pub sysbox_deb: Option<PathBuf>,
    pub skip_sysbox: bool,
    pub egress_guard: bool,
    pub docker_context: bool,
    pub force: bool,
    pub subnet: Option<Ipv4Net>,
    /// `--pool`: where the engine's other networks take their /24s.
    pub pool: Option<Ipv4Net>,
    pub bridge: String,
    /// The user to add to the group and give the Docker context (`SUDO_USER`).
    pub invoking_user: Option<String>,
    /// Use the supervised engine even where systemd is PID 1.
    pub supervised: bool,
    /// Without Sysbox, make runc the engine's default runtime instead of installing Sysbox.
    pub unsafe_runc: bool,
    /// `--service`: also install `cubbi serve` as a system service.
    pub service: Option<ServiceOptions>,
    /// The egress resolver's unit (`--no-egress-resolver` gives none).
    pub egress_resolver: Option<super::egress_resolver::ResolverOptions>,
    /// `--swarm-init` or `--swarm-join`.
    pub swarm: Option<super::swarm::SwarmRequest>,
}

/// What `--service` needs to know.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// The cubbi binary the unit runs (the one running setup).
    pub cubbi_binary: PathBuf,
}

/// The service as it is now (see [`super::serve`]).
#[derive(Debug, Clone, Default)]
pub struct ServeState {
    pub user_exists: bool,
    /// The user is in the socket's group (so it reaches the engine and the port lock).
    pub user_in_group: bool,
    /// `/etc/cubbi/service.toml`, when it exists.
    pub config: Option<String>,
    /// `/var/lib/cubbi` exists.
    pub state_dir_exists: bool,
    pub unit_file: Option<String>,
    pub unit_active: bool,
    pub unit_enabled: bool,
}

/// What is in place now, read before planning.
#[derive(Debug, Clone, Default)]
pub struct EngineState {
    pub daemon_json: Option<String>,
    pub engine_settings: Option<EngineSettings>,
    /// The seccomp profile beside daemon.json (a Swarm node under `--unsafe-runc`).
    pub seccomp_profile: Option<String>,
    pub unit_file: Option<String>,
    pub group_exists: bool,
    pub user_in_group: bool,
    /// The dedicated socket answers.
    pub engine_answers: bool,
    pub unit_active: bool,
    pub unit_enabled: bool,
    /// The recorded firewall is in iptables as recorded.
    pub firewall_installed: bool,
    /// The firewall script on disk.
    pub firewall_script: Option<String>,
    /// The endpoint of an existing `cubbi` Docker context.
    pub docker_context_endpoint: Option<String>,
    pub nameservers: Vec<std::net::Ipv4Addr>,
    /// The host-wide SSH port lock exists root:cubbi 0660 in a root:cubbi 0770 folder (and
    /// its tmpfiles.d entry where systemd runs).
    pub port_lock_ready: bool,
    pub serve: ServeState,
    /// `cubbi-egress.service` as it is now.
    pub egress_resolver: super::host_unit::UnitState,
    /// The engine's swarm membership, where the engine answers.
    pub swarm: Option<super::swarm::Membership>,
}

/// The one-line summary of the host for the preflight step.
pub fn preflight_finding(facts: &HostFacts) -> (StepState, String) {
    let kernel = match facts.kernel {
        Some(version) if version >= IDMAPPED_MOUNTS_SINCE => {
            format!("kernel {version} (idmapped mounts: Sysbox needs no shiftfs)")
        }
        Some(version) if version >= SYSBOX_MINIMUM_KERNEL => format!(
            "kernel {version} (older than {IDMAPPED_MOUNTS_SINCE}: Sysbox needs shiftfs, which Ubuntu kernels carry)"
        ),
        Some(version) => {
            format!("kernel {version} (too old for Sysbox, which needs {SYSBOX_MINIMUM_KERNEL}+)")
        }
        None => format!("kernel `{}` (version unknown)", facts.kernel_release),
    };
    let init = if facts.systemd_is_pid1 {
        "systemd is PID 1"
    } else {
        "systemd is not PID 1"
    };
    let userns = if facts.user_namespaces.enabled() {
        "user namespaces on"
    } else {
        "user namespaces OFF"
    };
    let distro = if facts.distro.is_debian_family() {
        facts.distro.describe()
    } else {
        format!(
            "{} (no apt: packages need installing by hand)",
            facts.distro.describe()
        )
    };
    (
        StepState::Done,
        format!(
            "{distro}; {kernel}; {init}; cgroup {}; {userns}",
            serde_json::to_value(facts.cgroup)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        ),
    )
}

/// The setup plan for this host and this state.
pub fn plan_setup(
    facts: &HostFacts,
    state: &EngineState,
    paths: &EnginePaths,
    options: &SetupOptions,
) -> Result<Plan, EngineError> {
    let mode = if facts.systemd_is_pid1 && paths.is_system() && !options.supervised {
        EngineMode::Systemd
    } else {
        EngineMode::Supervised
    };
    let mut steps = Vec::new();
    let (state_preflight, finding) = preflight_finding(facts);
    steps.push(Step::new(
        "preflight",
        state_preflight,
        finding,
        Action::Nothing,
    ));

    // Engine binaries.
    let has_engine = facts.has("dockerd") && facts.has("containerd");
    steps.push(if has_engine {
        let dockerd = facts.programs.get("dockerd").map(|p| p.display().to_string());
        Step::new(
            "docker-engine",
            StepState::Done,
            format!("reusing {}", dockerd.unwrap_or_default()),
            Action::Nothing,
        )
    } else if facts.distro.is_debian_family() && facts.has("apt-get") {
        let mut packages: Vec<String> = if options.docker_ce {
            ["docker-ce", "docker-ce-cli", "containerd.io"].map(String::from).to_vec()
        } else {
            ["docker.io"].map(String::from).to_vec()
        };
        // The engine's firewall needs it; the engine does not start without it.
        if !facts.has("iptables") {
            packages.push("iptables".into());
        }
        Step::new(
            "docker-engine",
            StepState::ToDo,
            format!(
                "install {}{}",
                packages.join(" "),
                if options.docker_ce { " from Docker's apt repository" } else { " from the distribution" }
            ),
            Action::InstallPackages {
                packages,
                docker_ce_repository: options.docker_ce,
            },
        )
    } else {
        Step::new(
            "docker-engine",
            StepState::Cannot,
            format!(
                "dockerd/containerd missing and {} has no apt: install Docker Engine (dockerd, containerd) \
                 with your package manager, then run setup again",
                facts.distro.describe()
            ),
            Action::Nothing,
        )
    });

    // Sysbox.
    steps.push(plan_sysbox(facts, options));
    steps.push(plan_inotify(facts, paths));
    steps.push(plan_key_quota(facts, paths));

    // The socket's group.
    let user = options.invoking_user.clone();
    steps.push(
        if state.group_exists && (user.is_none() || state.user_in_group) {
            Step::new(
                "group",
                StepState::Done,
                match &user {
                    Some(user) => format!("group {SOCKET_GROUP} exists and {user} is in it"),
                    None => format!("group {SOCKET_GROUP} exists"),
                },
                Action::Nothing,
            )
        } else {
            Step::new(
                "group",
                StepState::ToDo,
                match (&user, state.group_exists) {
                    (Some(user), true) => {
                        format!("add {user} to group {SOCKET_GROUP} (takes effect at next login)")
                    }
                    (Some(user), false) => format!(
                        "create group {SOCKET_GROUP} and add {user} (takes effect at next login)"
                    ),
                    (None, _) => format!("create group {SOCKET_GROUP}"),
                },
                Action::CreateGroup {
                    group: SOCKET_GROUP.into(),
                    add_user: user,
                },
            )
        },
    );

    // The port lock every user's create takes: root-owned, group cubbi, never created by a
    // user (only for the system engine; a trial engine's sessions use per-user locks).
    if paths.is_system() {
        steps.push(if state.port_lock_ready {
            Step::new(
                "port-lock",
                StepState::Done,
                format!(
                    "{} is root:{SOCKET_GROUP} 0660",
                    crate::local::ports::SYSTEM_LOCK_FILE
                ),
                Action::Nothing,
            )
        } else {
            Step::new(
                "port-lock",
                StepState::ToDo,
                format!(
                    "create {} root:{SOCKET_GROUP} 0660 (the SSH port lock shared by every user)",
                    crate::local::ports::SYSTEM_LOCK_FILE
                ),
                Action::PreparePortLock {
                    tmpfiles: facts.systemd_is_pid1,
                },
            )
        });
    }

    // Bridge, subnet, pool and daemon.json: derived as `cubbi engine start` derives them.
    let super::Desired {
        settings,
        daemon_json: desired,
    } = super::desired(
        facts,
        paths,
        state.engine_settings.as_ref(),
        &super::Wanted {
            bridge: &options.bridge,
            subnet: options.subnet,
            pool: options.pool,
            egress_guard: Some(options.egress_guard),
            unsafe_runc: Some(options.unsafe_runc),
            socket_group: Some(SOCKET_GROUP),
            // Swarm sets no security options per service, so a runc session on a Swarm node
            // needs them from the daemon; a re-run without --swarm-* keeps what is recorded.
            swarm_unsafe_runc: (options.unsafe_runc && options.swarm.is_some()).then_some(true),
        },
    )?;
    let bridge = settings.bridge.clone();
    let subnet = settings.subnet;
    let (merged, backup_invalid) =
        match daemon_json::merge(&paths.daemon_json, state.daemon_json.as_deref(), &desired) {
            Ok(merged) => (merged, false),
            Err(_) if options.force => (
                daemon_json::merge(&paths.daemon_json, None, &desired)?,
                true,
            ),
            Err(err) => return Err(err.into()),
        };
    let settings_changed = state.engine_settings.as_ref() != Some(&settings);
    // The profile daemon.json names must be there (dockerd does not start without it), and
    // none is left once it is not named.
    let profile_wanted = settings.swarm_unsafe_runc;
    let profile_to_write = match (&state.seccomp_profile, profile_wanted) {
        (Some(text), true) => text != daemon_json::SECCOMP_ALLOW_ALL,
        (None, true) => true,
        (Some(_), false) => true,
        (None, false) => false,
    };
    // Only what dockerd reads restarts it; the guard is cubbi's own rules. dockerd reads the
    // profile at start: a changed one needs a restart, a missing one (re-written) does not.
    let engine_changed = merged.changed
        || (profile_wanted
            && state
                .seccomp_profile
                .as_deref()
                .is_some_and(|text| text != daemon_json::SECCOMP_ALLOW_ALL))
        || !state
            .engine_settings
            .as_ref()
            .is_some_and(|recorded| recorded.same_engine(&settings));
    let unsafe_node = if profile_wanted {
        format!(
            "; SWARM NODE UNDER --unsafe-runc: every container and swarm task on this engine runs \
             WITHOUT seccomp filtering (its profile {} allows every syscall) and in a private cgroup \
             namespace, so sessions here are NOT isolated from the host",
            paths.seccomp_profile.display()
        )
    } else {
        String::new()
    };
    steps.push(if merged.changed || settings_changed || profile_to_write {
        let kept = if merged.kept_user_keys.is_empty() {
            String::new()
        } else {
            format!("; keeping your keys {}", merged.kept_user_keys.join(", "))
        };
        Step::new(
            "daemon-json",
            StepState::ToDo,
            format!(
                "write {} (bridge {bridge}, subnet {subnet}, default runtime {}){kept}{}{unsafe_node}",
                paths.daemon_json.display(),
                settings.default_runtime,
                if backup_invalid {
                    "; the invalid file is backed up first"
                } else {
                    ""
                }
            ),
            Action::WriteConfig {
                daemon_json: merged.text,
                engine_json: settings.to_json(),
                backup_invalid,
                seccomp_profile: profile_wanted,
            },
        )
    } else {
        Step::new(
            "daemon-json",
            StepState::Done,
            format!(
                "{} is up to date (bridge {bridge}, subnet {subnet}){unsafe_node}",
                paths.daemon_json.display()
            ),
            Action::Nothing,
        )
    });

    // The firewall, before the engine: the unit runs its script ahead of dockerd.
    let iptables_coming = facts.has("iptables")
        || steps.iter().any(|step| {
            matches!(&step.action, Action::InstallPackages { packages, .. }
                if packages.iter().any(|p| p == "iptables"))
        });
    if !iptables_coming && settings.egress_guard {
        return Err(EngineError::Refused(
            "iptables is not installed, and the engine does not start without its firewall \
             (NAT and the egress guard): install it (`apt-get install iptables`) and run setup \
             again, or turn the guard off explicitly with --no-egress-guard"
                .into(),
        ));
    }
    steps.push(plan_firewall(
        facts,
        state,
        &settings,
        settings_changed,
        iptables_coming,
    ));

    // The engine itself.
    steps.push(plan_engine(
        facts,
        state,
        paths,
        &settings,
        mode,
        engine_changed,
        has_engine,
    ));

    steps.push(super::egress_resolver::plan(
        facts,
        &state.egress_resolver,
        &state.nameservers,
        paths,
        mode,
        &settings,
        options.egress_resolver.as_ref(),
    ));

    if let Some(request) = &options.swarm {
        let mut step = super::swarm::plan(state.swarm.as_ref(), request, &settings.default_runtime);
        if settings.swarm_unsafe_runc {
            step.finding.push_str(
                "; under --unsafe-runc this node runs every task under runc WITHOUT seccomp \
                 filtering: NOT isolated from the host",
            );
        }
        steps.push(step);
    }

    // Docker CLI context.
    let endpoint = paths.endpoint();
    steps.push(if !options.docker_context {
        Step::new(
            "docker-context",
            StepState::Skipped,
            "skipped (--no-docker-context)",
            Action::Nothing,
        )
    } else if !facts.has("docker") {
        Step::new(
            "docker-context",
            StepState::Skipped,
            "no docker CLI installed",
            Action::Nothing,
        )
    } else if state.docker_context_endpoint.as_deref() == Some(endpoint.as_str()) {
        Step::new(
            "docker-context",
            StepState::Done,
            format!("context `{}` points at {endpoint}", super::DOCKER_CONTEXT),
            Action::Nothing,
        )
    } else {
        Step::new(
            "docker-context",
            StepState::ToDo,
            format!("create context `{}` for {endpoint}", super::DOCKER_CONTEXT),
            Action::CreateDockerContext {
                endpoint,
                user: options.invoking_user.clone(),
            },
        )
    });

    if let Some(service) = &options.service {
        steps.extend(super::serve::steps::plan_service(
            &state.serve,
            paths,
            mode,
            service,
        )?);
    }

    Ok(Plan {
        mode,
        steps,
        settings,
    })
}

/// Every session's systemd, journald and dbus take inotify instances; at Debian's default of 128
/// the 27th runc session cannot boot.
fn plan_inotify(facts: &HostFacts, paths: &EnginePaths) -> Step {
    plan_sysctl_limits(
        SysctlStep {
            id: "inotify",
            conf: SYSCTL_CONF,
            comment: "every session's systemd, journald and dbus take inotify\n\
                      instances, and Debian's default of 128 stops the 27th session from booting.",
            limits: &[(INOTIFY_INSTANCES, facts.inotify_instances)],
            why: &|now| {
                format!(
                    "at {} only about {} sessions can boot systemd",
                    now[0],
                    now[0] / 5
                )
            },
        },
        paths,
    )
}

/// Under Sysbox every session's root is the same host user, and at the kernel's default key
/// quota creates past about 24 sessions fail ("create session key: disk quota exceeded"). Not
/// only when Sysbox is set up now, like inotify: Sysbox installed later needs it just the same.
fn plan_key_quota(facts: &HostFacts, paths: &EnginePaths) -> Step {
    plan_sysctl_limits(
        SysctlStep {
            id: "key-quota",
            conf: KEY_QUOTA_CONF,
            comment: "every Sysbox session's root is one host user and shares its\n\
                      kernel key quota; at the defaults (200 keys, 20000 bytes) about\n\
                      the 25th session cannot start.",
            limits: &[
                (KEYS_MAXKEYS, facts.keys_maxkeys),
                (KEYS_MAXBYTES, facts.keys_maxbytes),
            ],
            why: &|_| {
                "every Sysbox session's root is one host user and shares its key quota".into()
            },
        },
        paths,
    )
}

/// Host sysctls one setup step raises together and keeps in its own sysctl.d drop-in.
struct SysctlStep<'a> {
    id: &'static str,
    conf: &'static str,
    /// Heads the drop-in: why cubbi raised them.
    comment: &'static str,
    /// Each limit with its value as read (`None`: unreadable).
    limits: &'a [(SysctlLimit, Option<u64>)],
    /// Why, for the finding, from the values as read (in `limits`' order).
    why: &'a dyn Fn(&[u64]) -> String,
}

fn plan_sysctl_limits(step: SysctlStep<'_>, paths: &EnginePaths) -> Step {
    let id = step.id;
    if !paths.is_system() {
        return Step::new(
            id,
            StepState::Skipped,
            "private engine root: host sysctls are left alone",
            Action::Nothing,
        );
    }
    let mut now = Vec::with_capacity(step.limits.len());
    for (limit, value) in step.limits {
        match value {
            Some(value) => now.push(*value),
            None => {
                return Step::new(
                    id,
                    StepState::Skipped,
                    format!("cannot read {}", limit.name),
                    Action::Nothing,
                );
            }
        }
    }
    let read = step
        .limits
        .iter()
        .map(|(limit, _)| *limit)
        .zip(now.iter().copied());
    let low: Vec<String> = read
        .clone()
        .filter(|(limit, now)| *now < limit.wanted)
        .map(|(limit, now)| format!("{} from {now} to {}", limit.name, limit.wanted))
        .collect();
    if low.is_empty() {
        let found: Vec<String> = read
            .map(|(limit, now)| format!("{} is {now}", limit.name))
            .collect();
        return Step::new(id, StepState::Done, found.join(" and "), Action::Nothing);
    }
    // The drop-in holds every limit of the step, each at the higher of the wanted and the
    // current value: a limit the admin raised further is never lowered, now or at boot.
    let settings: Vec<SysctlSetting> = read
        .map(|(limit, now)| SysctlSetting {
            limit,
            value: now.max(limit.wanted),
        })
        .collect();
    Step::new(
        id,
        StepState::ToDo,
        format!(
            "raise {} ({}) and keep {} in {}",
            low.join(" and "),
            (step.why)(&now),
            if settings.len() == 1 { "it" } else { "them" },
            step.conf
        ),
        Action::RaiseSysctlLimits {
            conf: step.conf,
            comment: step.comment,
            settings,
        },
    )
}

/// The firewall cubbi keeps for `settings` on this host.
pub fn firewall_rules(
    facts: &HostFacts,
    settings: &EngineSettings,
    nameservers: &[std::net::Ipv4Addr],
) -> RuleSet {
    firewall_rules_with(settings, nameservers, facts.has("ip6tables"))
}

fn firewall_rules_with(
    settings: &EngineSettings,
    nameservers: &[std::net::Ipv4Addr],
    ipv6: bool,
) -> RuleSet {
    firewall::rule_set(&firewall::FirewallSettings {
        bridge: settings.bridge.clone(),
        subnets: firewall::engine_subnets(settings.subnet, settings.pool),
        nameservers: nameservers.to_vec(),
        egress_guard: settings.egress_guard,
        ipv6,
    })
}

/// Every chain and hook the firewall can have for this engine (the guarded set), for taking it
/// all away whatever the guard was.
pub fn firewall_superset(facts: &HostFacts, settings: &EngineSettings) -> RuleSet {
    let guarded = EngineSettings {
        egress_guard: true,
        ..settings.clone()
    };
    firewall_rules(facts, &guarded, &[])
}

/// The firewall step. `iptables_coming`: iptables is installed, or the docker-engine step
/// installs it. Without it (only reachable with the guard off) the script the unit requires
/// just says so.
fn plan_firewall(
    facts: &HostFacts,
    state: &EngineState,
    settings: &EngineSettings,
    settings_changed: bool,
    iptables_coming: bool,
) -> Step {
    let id = "firewall";
    let bridges = format!("{}+", settings.bridge);
    let guard = if settings.egress_guard {
        "egress guard on (private networks, carrier-grade NAT, link-local, cloud metadata and this host blocked; new connections into the bridges dropped)"
    } else {
        "egress guard OFF (--no-egress-guard); new connections into the bridges dropped"
    };
    let (script, finding, action) = if iptables_coming {
        let ipv6 = facts.has("ip6tables") || !facts.has("iptables");
        let rules = firewall_rules_with(settings, &state.nameservers, ipv6);
        let superset = firewall_rules_with(
            &EngineSettings {
                egress_guard: true,
                ..settings.clone()
            },
            &[],
            ipv6,
        );
        let script = rules.script(&settings.bridge, &superset);
        (
            script.clone(),
            format!("NAT and forwarding for {bridges} in cubbi's own chains; {guard}"),
            Action::InstallFirewall {
                script,
                rules,
                teardown: superset,
            },
        )
    } else {
        let script = firewall::without_iptables_script(&settings.bridge);
        (
            script.clone(),
            "iptables is not installed and the guard is off (--no-egress-guard): the engine \
             starts without NAT or guard, so sessions have no network (`apt-get install \
             iptables`, then run setup again)"
                .to_string(),
            Action::WriteFirewallScript { script },
        )
    };
    let in_place = !settings_changed
        && state.firewall_script.as_deref() == Some(script.as_str())
        && (state.firewall_installed || !iptables_coming);
    if in_place {
        Step::new(
            id,
            StepState::Done,
            if iptables_coming {
                format!("NAT and forwarding for {bridges} in place; {guard}")
            } else {
                finding
            },
            Action::Nothing,
        )
    } else {
        Step::new(id, StepState::ToDo, finding, action)
    }
}

fn plan_sysbox(facts: &HostFacts, options: &SetupOptions) -> Step {
    if facts.has_sysbox() {
        return Step::new(
            "sysbox",
            StepState::Done,
            "sysbox-runc, sysbox-mgr and sysbox-fs are installed",
            Action::Nothing,
        );
    }
    if options.unsafe_runc {
        return Step::new(
            "sysbox",
            StepState::Skipped,
            "--unsafe-runc: Sysbox is not installed and runc is the engine's default runtime; \
             sessions are NOT isolated from the host (install Sysbox and run setup without \
             --unsafe-runc to fix that)",
            Action::Nothing,
        );
    }
    if options.skip_sysbox {
        return Step::new(
            "sysbox",
            StepState::Skipped,
            "skipped (--skip-sysbox); doctor will report it",
            Action::Nothing,
        );
    }
    if !facts.distro.is_debian_family() || !facts.has("apt-get") {
        return Step::new(
            "sysbox",
            StepState::Cannot,
            format!(
                "Sysbox is missing and {} cannot install .deb packages; by hand: {}",
                facts.distro.describe(),
                sysbox::manual_instructions(&facts.architecture)
            ),
            Action::Nothing,
        );
    }
    if let Some(path) = &options.sysbox_deb {
        return Step::new(
            "sysbox",
            StepState::ToDo,
            format!("install sysbox-ce from {}", path.display()),
            Action::InstallSysbox {
                source: SysboxSource::File { path: path.clone() },
            },
        );
    }
    match sysbox::pinned_package(&facts.architecture) {
        Ok(package) if facts.has("curl") => Step::new(
            "sysbox",
            StepState::ToDo,
            format!(
                "download sysbox-ce {} and check its SHA-256 before installing",
                sysbox::SYSBOX_VERSION
            ),
            Action::InstallSysbox {
                source: SysboxSource::Download {
                    url: package.url,
                    sha256: package.sha256.to_string(),
                },
            },
        ),
        Ok(_) => Step::new(
            "sysbox",
            StepState::Cannot,
            "Sysbox is missing and curl is not installed to fetch it: pass --sysbox-deb PATH",
            Action::Nothing,
        ),
        Err(err) => Step::new(
            "sysbox",
            StepState::Cannot,
            err.to_string(),
            Action::Nothing,
        ),
    }
}

fn plan_engine(
    facts: &HostFacts,
    state: &EngineState,
    paths: &EnginePaths,
    settings: &EngineSettings,
    mode: EngineMode,
    config_changed: bool,
    has_engine: bool,
) -> Step {
    let id = "engine";
    let engine_will_exist = has_engine || facts.distro.is_debian_family();
    if !engine_will_exist {
        return Step::new(
            id,
            StepState::Cannot,
            "no dockerd to run (see docker-engine)",
            Action::Nothing,
        );
    }
    match mode {
        EngineMode::Systemd => {
            let unit_text = unit::render(&UnitSettings {
                dockerd: &program(facts, "dockerd", "/usr/sbin/dockerd"),
                ip: &program(facts, "ip", "/usr/sbin/ip"),
                daemon_json: &paths.daemon_json,
                firewall: &paths.firewall_script,
                bridge: &settings.bridge,
                bridge_address: subnet::gateway(&settings.subnet).unwrap_or(settings.subnet),
            });
            let unit_changed = state.unit_file.as_deref() != Some(unit_text.as_str());
            if unit_changed || config_changed {
                Step::new(
                    id,
                    StepState::ToDo,
                    format!(
                        "write {}, daemon-reload, enable and {} it over D-Bus",
                        paths.unit_file.display(),
                        if state.unit_active {
                            "restart"
                        } else {
                            "start"
                        }
                    ),
                    Action::InstallUnit {
                        unit: unit_text,
                        restart: state.unit_active,
                    },
                )
            } else if state.unit_active && state.unit_enabled && state.engine_answers {
                Step::new(
                    id,
                    StepState::Done,
                    format!("{} is enabled and active", super::UNIT_NAME),
                    Action::Nothing,
                )
            } else {
                Step::new(
                    id,
                    StepState::ToDo,
                    format!("enable and start {}", super::UNIT_NAME),
                    Action::StartUnit,
                )
            }
        }
        EngineMode::Supervised => {
            if state.engine_answers && !config_changed {
                Step::new(
                    id,
                    StepState::Done,
                    format!("supervised dockerd answers on {}", paths.socket.display()),
                    Action::Nothing,
                )
            } else {
                Step::new(
                    id,
                    StepState::ToDo,
                    format!(
                        "{} the supervised dockerd (systemd is not managing it here){}",
                        if state.engine_answers {
                            "restart"
                        } else {
                            "start"
                        },
                        if paths.is_system() {
                            ""
                        } else {
                            " under the private engine root"
                        }
                    ),
                    Action::StartSupervised {
                        restart: state.engine_answers,
                    },
                )
            }
        }
    }
}

fn program(facts: &HostFacts, name: &str, fallback: &str) -> PathBuf {
    facts
        .programs
        .get(name)
        .cloned()
        .unwrap_or_else(|| PathBuf::from(fallback))
}

/// What `--uninstall` removes.
#[derive(Debug, Clone, Serialize)]
pub struct UninstallStep {
    pub id: &'static str,
    pub state: StepState,
    pub finding: String,
}

/// The uninstall plan: stop and disable, remove unit, rules, context and config; the data-root
/// only with `purge`. The `cubbi` group stays (other files may belong to it).
pub fn plan_uninstall(
    state: &EngineState,
    paths: &EnginePaths,
    mode: EngineMode,
    purge: bool,
) -> Vec<UninstallStep> {
    let step = |id, todo: bool, finding: String| UninstallStep {
        id,
        state: if todo {
            StepState::ToDo
        } else {
            StepState::Done
        },
        finding: if todo {
            finding
        } else {
            format!("nothing to do (already gone): {finding}")
        },
    };
    let running = state.engine_answers || state.unit_active;
    let mut steps = super::serve::steps::plan_serve_uninstall(&state.serve, purge);
    steps.extend([
        step(
            "swarm",
            state
                .swarm
                .as_ref()
                .is_some_and(|swarm| swarm.state != "inactive" && !swarm.state.is_empty()),
            "leave the swarm (the engine's node)".into(),
        ),
        step(
            "egress-resolver",
            state.egress_resolver.present(),
            format!(
                "stop and disable {} and remove its unit",
                super::egress_resolver::EGRESS_UNIT.name
            ),
        ),
        step(
            "engine",
            running || (mode == EngineMode::Systemd && state.unit_enabled),
            match mode {
                EngineMode::Systemd => format!("stop and disable {}", super::UNIT_NAME),
                EngineMode::Supervised => "stop the supervised dockerd".into(),
            },
        ),
        step(
            "unit",
            state.unit_file.is_some(),
            format!("remove {}", paths.unit_file.display()),
        ),
        step(
            "firewall",
            state.firewall_installed || state.firewall_script.is_some(),
            "remove the CUBBI-* firewall chains and their script".into(),
        ),
        step(
            "docker-context",
            state.docker_context_endpoint.is_some(),
            format!("remove Docker context `{}`", super::DOCKER_CONTEXT),
        ),
        UninstallStep {
            id: "ip-forward",
            // Only the system engine: a private one under --engine-root shares the host with
            // others and leaves the host's sysctls alone.
            state: if paths.is_system()
                && state
                    .engine_settings
                    .as_ref()
                    .is_some_and(|settings| settings.ip_forward_before == Some(false))
            {
                StepState::ToDo
            } else {
                StepState::Skipped
            },
            finding: "turn net.ipv4.ip_forward off again (it was off before setup; the engine's \
                      dockerd turned it on)"
                .into(),
        },
        step(
            "config",
            state.daemon_json.is_some()
                || state.engine_settings.is_some()
                || state.seccomp_profile.is_some(),
            if state.seccomp_profile.is_some() {
                format!(
                    "remove {}, engine.json and {}",
                    paths.daemon_json.display(),
                    paths.seccomp_profile.display()
                )
            } else {
                format!("remove {} and engine.json", paths.daemon_json.display())
            },
        ),
        UninstallStep {
            id: "data-root",
            state: if purge {
                StepState::ToDo
            } else {
                StepState::Skipped
            },
            finding: if purge {
                format!(
                    "delete {} (images, containers, volumes)",
                    paths.data_root.display()
                )
            } else {
                format!(
                    "keep {} (add --purge to delete it)",
                    paths.data_root.display()
                )
            },
        },
    ]);
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::host::fixture::FixtureHost;

    fn options() -> SetupOptions {
        SetupOptions {
            egress_guard: true,
            docker_context: true,
            bridge: "cubbi0".into(),
            invoking_user: Some("alice".into()),
            ..Default::default()
        }
    }

    fn state_of<'a>(plan: &'a Plan, id: &str) -> &'a Step {
        plan.steps.iter().find(|step| step.id == id).unwrap()
    }

    fn debian() -> HostFacts {
        HostFacts::gather(&FixtureHost::debian_with_systemd())
    }

    /// The plan for a fresh Debian host with systemd.
    fn fresh_plan(options: &SetupOptions) -> Plan {
        plan_setup(
            &debian(),
            &EngineState::default(),
            &EnginePaths::system(),
            options,
        )
        .unwrap()
    }

    #[test]
    fn a_fresh_systemd_host_gets_every_step() {
        let plan = fresh_plan(&options());
        assert_eq!(plan.mode, EngineMode::Systemd);
        let ids: Vec<_> = plan.steps.iter().map(|s| (s.id, s.state)).collect();
        assert_eq!(
            ids,
            [
                ("preflight", StepState::Done),
                ("docker-engine", StepState::Done),
                ("sysbox", StepState::Cannot),
                ("inotify", StepState::ToDo),
                ("key-quota", StepState::ToDo),
                ("group", StepState::ToDo),
                ("port-lock", StepState::ToDo),
                ("daemon-json", StepState::ToDo),
                ("firewall", StepState::ToDo),
                ("engine", StepState::ToDo),
                ("egress-resolver", StepState::Skipped),
                ("docker-context", StepState::ToDo),
            ]
        );
        // systemd re-creates the lock in every boot's /run from a tmpfiles.d entry.
        assert!(matches!(
            state_of(&plan, "port-lock").action,
            Action::PreparePortLock { tmpfiles: true }
        ));
        // No curl on the fixture: Sysbox cannot be fetched, and the message says how to go on.
        assert!(state_of(&plan, "sysbox").finding.contains("--sysbox-deb"));
        assert!(matches!(
            state_of(&plan, "engine").action,
            Action::InstallUnit { restart: false, .. }
        ));
        assert_eq!(plan.settings.subnet.to_string(), "10.214.0.0/24");
    }

    /// The state a completed setup leaves, for the re-run tests.
    fn after_setup(plan: &Plan) -> EngineState {
        let mut state = EngineState {
            group_exists: true,
            user_in_group: true,
            engine_answers: true,
            unit_active: true,
            unit_enabled: true,
            firewall_installed: true,
            docker_context_endpoint: Some(EnginePaths::system().endpoint()),
            engine_settings: Some(plan.settings.clone()),
            port_lock_ready: true,
            ..Default::default()
        };
        for step in &plan.steps {
            match &step.action {
                Action::WriteConfig {
                    daemon_json,
                    seccomp_profile,
                    ..
                } => {
                    state.daemon_json = Some(daemon_json.clone());
                    state.seccomp_profile =
                        seccomp_profile.then(|| daemon_json::SECCOMP_ALLOW_ALL.to_string());
                }
                Action::InstallUnit { unit, .. } => state.unit_file = Some(unit.clone()),
                Action::InstallFirewall { script, .. } => {
                    state.firewall_script = Some(script.clone())
                }
                _ => {}
            }
        }
        state
    }

    #[test]
    fn a_rerun_changes_nothing_and_says_so() {
        let first = fresh_plan(&options());
        // The first run raised the inotify limit and the key quota.
        let raised = HostFacts {
            inotify_instances: Some(INOTIFY_INSTANCES.wanted),
            keys_maxkeys: Some(KEYS_MAXKEYS.wanted),
            keys_maxbytes: Some(KEYS_MAXBYTES.wanted),
            ..debian()
        };
        let second = plan_setup(
            &raised,
            &after_setup(&first),
            &EnginePaths::system(),
            &options(),
        )
        .unwrap();
        assert!(second.is_noop(), "{:#?}", second.steps);
        assert_eq!(second.settings, first.settings, "the subnet is reused");
    }

    fn key_quota_step(maxkeys: Option<u64>, maxbytes: Option<u64>, paths: &EnginePaths) -> Step {
        let facts = HostFacts {
            keys_maxkeys: maxkeys,
            keys_maxbytes: maxbytes,
            ..debian()
        };
        plan_key_quota(&facts, paths)
    }

    #[test]
    fn the_default_key_quota_is_raised() {
        let step = key_quota_step(Some(200), Some(20000), &EnginePaths::system());
        assert_eq!(step.state, StepState::ToDo);
        assert_eq!(
            step.finding,
            "raise kernel.keys.maxkeys from 200 to 20000 and kernel.keys.maxbytes from 20000 to \
             1400000 (every Sysbox session's root is one host user and shares its key quota) \
             and keep them in /etc/sysctl.d/90-cubbi-keys.conf"
        );
        let Action::RaiseSysctlLimits { conf, settings, .. } = &step.action else {
            panic!("{:?}", step.action);
        };
        assert_eq!(*conf, KEY_QUOTA_CONF);
        let values: Vec<_> = settings.iter().map(|s| (s.limit.name, s.value)).collect();
        assert_eq!(
            values,
            [
                ("kernel.keys.maxkeys", 20000),
                ("kernel.keys.maxbytes", 1400000)
            ]
        );
    }

    #[test]
    fn a_raised_key_quota_is_done() {
        let step = key_quota_step(Some(20000), Some(1400000), &EnginePaths::system());
        assert_eq!(step.state, StepState::Done);
        assert_eq!(
            step.finding,
            "kernel.keys.maxkeys is 20000 and kernel.keys.maxbytes is 1400000"
        );
        let higher = key_quota_step(Some(1000000), Some(25000000), &EnginePaths::system());
        assert_eq!(higher.state, StepState::Done);
    }

    #[test]
    fn a_higher_key_limit_is_kept() {
        // maxkeys raised further by the admin, maxbytes still the default.
        let step = key_quota_step(Some(50000), Some(20000), &EnginePaths::system());
        assert_eq!(step.state, StepState::ToDo);
        assert!(
            step.finding
                .starts_with("raise kernel.keys.maxbytes from 20000 to 1400000 ("),
            "{}",
            step.finding
        );
        let Action::RaiseSysctlLimits { settings, .. } = &step.action else {
            panic!("{:?}", step.action);
        };
        let values: Vec<_> = settings.iter().map(|s| (s.limit.name, s.value)).collect();
        assert_eq!(
            values,
            [
                ("kernel.keys.maxkeys", 50000),
                ("kernel.keys.maxbytes", 1400000)
            ],
            "the drop-in keeps the higher maxkeys rather than lowering it at the next boot"
        );
    }

    #[test]
    fn the_key_quota_is_left_alone_when_unknown_or_private() {
        let unreadable = key_quota_step(Some(200), None, &EnginePaths::system());
        assert_eq!(unreadable.state, StepState::Skipped);
        assert_eq!(unreadable.finding, "cannot read kernel.keys.maxbytes");
        let private = key_quota_step(
            Some(200),
            Some(20000),
            &EnginePaths::under_root(std::path::Path::new("/tmp/cubbi-engine")),
        );
        assert_eq!(private.state, StepState::Skipped);
    }

    #[test]
    fn the_inotify_step_keeps_its_finding() {
        let step = plan_inotify(&debian(), &EnginePaths::system());
        assert_eq!(
            step.finding,
            "raise fs.inotify.max_user_instances from 128 to 8192 (at 128 only about 25 \
             sessions can boot systemd) and keep it in /etc/sysctl.d/90-cubbi.conf"
        );
        assert!(matches!(
            &step.action,
            Action::RaiseSysctlLimits { conf: SYSCTL_CONF, settings, .. }
                if settings.len() == 1 && settings[0].value == 8192
        ));
    }

    #[test]
    fn without_systemd_the_engine_is_supervised() {
        let mut host = FixtureHost::debian_with_systemd();
        host.file("/proc/1/comm", "bash\n");
        let plan = plan_setup(
            &HostFacts::gather(&host),
            &EngineState::default(),
            &EnginePaths::system(),
            &options(),
        )
        .unwrap();
        assert_eq!(plan.mode, EngineMode::Supervised);
        assert!(matches!(
            state_of(&plan, "engine").action,
            Action::StartSupervised { restart: false }
        ));
        // A private engine root is supervised even where systemd runs.
        let private = EnginePaths::under_root(std::path::Path::new("/tmp/x"));
        let plan = plan_setup(&debian(), &EngineState::default(), &private, &options()).unwrap();
        assert_eq!(plan.mode, EngineMode::Supervised);
    }

    #[test]
    fn a_host_without_docker_gets_packages_or_instructions() {
        let mut host = FixtureHost::debian_with_systemd();
        host.programs.retain(|p| p != "dockerd");
        let plan = plan_setup(
            &HostFacts::gather(&host),
            &EngineState::default(),
            &EnginePaths::system(),
            &options(),
        )
        .unwrap();
        let step = state_of(&plan, "docker-engine");
        assert_eq!(
            step.action,
            Action::InstallPackages {
                packages: vec!["docker.io".into()],
                docker_ce_repository: false
            }
        );
        let ce = SetupOptions {
            docker_ce: true,
            ..options()
        };
        let plan = plan_setup(
            &HostFacts::gather(&host),
            &EngineState::default(),
            &EnginePaths::system(),
            &ce,
        )
        .unwrap();
        assert!(
            matches!(&state_of(&plan, "docker-engine").action, Action::InstallPackages { docker_ce_repository: true, packages } if packages.contains(&"docker-ce".to_string()))
        );

        host.file(
            "/etc/os-release",
            "ID=fedora\nPRETTY_NAME=\"Fedora Linux 40\"\n",
        );
        let plan = plan_setup(
            &HostFacts::gather(&host),
            &EngineState::default(),
            &EnginePaths::system(),
            &options(),
        )
        .unwrap();
        let step = state_of(&plan, "docker-engine");
        assert_eq!(step.state, StepState::Cannot);
        assert!(step.finding.contains("Fedora Linux 40"), "{}", step.finding);
        assert_eq!(state_of(&plan, "engine").state, StepState::Cannot);
        assert!(state_of(&plan, "sysbox").finding.contains("sha256sum -c"));
    }

    #[test]
    fn sysbox_sources() {
        let mut host = FixtureHost::debian_with_systemd();
        host.programs.push("curl".into());
        let facts = HostFacts::gather(&host);
        let plan = plan_setup(
            &facts,
            &EngineState::default(),
            &EnginePaths::system(),
            &options(),
        )
        .unwrap();
        let Action::InstallSysbox {
            source: SysboxSource::Download { url, sha256 },
        } = &state_of(&plan, "sysbox").action
        else {
            panic!("{:?}", state_of(&plan, "sysbox"));
        };
        assert!(url.contains(sysbox::SYSBOX_VERSION) && sha256.len() == 64);
        let local = SetupOptions {
            sysbox_deb: Some("/tmp/s.deb".into()),
            ..options()
        };
        let plan = plan_setup(
            &facts,
            &EngineState::default(),
            &EnginePaths::system(),
            &local,
        )
        .unwrap();
        assert!(matches!(
            &state_of(&plan, "sysbox").action,
            Action::InstallSysbox {
                source: SysboxSource::File { .. }
            }
        ));
        host.programs
            .extend(["sysbox-runc", "sysbox-mgr", "sysbox-fs"].map(String::from));
        let plan = plan_setup(
            &HostFacts::gather(&host),
            &EngineState::default(),
            &EnginePaths::system(),
            &options(),
        )
        .unwrap();
        assert_eq!(state_of(&plan, "sysbox").state, StepState::Done);
    }

    #[test]
    fn refusals_leave_nothing_planned() {
        let corrupt = EngineState {
            daemon_json: Some("{ nope".into()),
            ..Default::default()
        };
        let err = plan_setup(&debian(), &corrupt, &EnginePaths::system(), &options()).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        let forced = SetupOptions {
            force: true,
            ..options()
        };
        let plan = plan_setup(&debian(), &corrupt, &EnginePaths::system(), &forced).unwrap();
        assert!(matches!(
            state_of(&plan, "daemon-json").action,
            Action::WriteConfig {
                backup_invalid: true,
                ..
            }
        ));

        let mut host = FixtureHost::debian_with_systemd();
        host.file("/proc/net/route", "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\nwg0\t0000D60A\t00000000\t0001\t0\t0\t0\t0000FFFF\n");
        let colliding = SetupOptions {
            subnet: Some("10.214.9.0/24".parse().unwrap()),
            ..options()
        };
        let err = plan_setup(
            &HostFacts::gather(&host),
            &EngineState::default(),
            &EnginePaths::system(),
            &colliding,
        )
        .unwrap_err();
        assert!(err.to_string().contains("wg0"), "{err}");
    }

    #[test]
    fn opt_outs_are_skipped() {
        let opts = SetupOptions {
            egress_guard: false,
            docker_context: false,
            skip_sysbox: true,
            ..options()
        };
        let plan = fresh_plan(&opts);
        for id in ["docker-context", "sysbox"] {
            assert_eq!(state_of(&plan, id).state, StepState::Skipped, "{id}");
        }
        // Without the guard the firewall still gives sessions NAT, and says the guard is off.
        let firewall = state_of(&plan, "firewall");
        assert!(
            firewall.finding.contains("egress guard OFF"),
            "{}",
            firewall.finding
        );
        let Action::InstallFirewall { script, .. } = &firewall.action else {
            panic!("{:?}", firewall.action)
        };
        let up = script.split("down()").next().unwrap_or_default();
        assert!(
            up.contains("MASQUERADE")
                && !up.contains("-A CUBBI-EGRESS")
                && !up.contains("-j CUBBI-EGRESS"),
            "{script}"
        );
        // `up` takes a guard from an earlier setup away in the same payload, and so does `down`.
        assert!(up.contains("-X CUBBI-EGRESS-cubbi0"), "{script}");
        let down = script.split("down()").nth(1).unwrap_or_default();
        assert!(down.contains("-X CUBBI-EGRESS-cubbi0"), "{script}");
    }

    #[test]
    fn unsafe_runc_makes_runc_the_default_instead_of_installing_sysbox() {
        let opts = SetupOptions {
            unsafe_runc: true,
            ..options()
        };
        let plan = fresh_plan(&opts);
        let sysbox = state_of(&plan, "sysbox");
        assert_eq!(sysbox.state, StepState::Skipped);
        assert!(
            sysbox.finding.contains("NOT isolated"),
            "{}",
            sysbox.finding
        );
        assert_eq!(plan.settings.default_runtime, "runc");
        let Action::WriteConfig { daemon_json, .. } = &state_of(&plan, "daemon-json").action else {
            panic!("daemon.json is written")
        };
        let written: serde_json::Value = serde_json::from_str(daemon_json).unwrap();
        assert_eq!(written["default-runtime"], "runc");
        // Sysbox registered and still named, so installing it later is one setup away.
        assert!(written["runtimes"]["sysbox-runc"].is_object());
        // Without the flag the engine's default stays sysbox-runc.
        assert_eq!(
            fresh_plan(&options()).settings.default_runtime,
            "sysbox-runc"
        );
    }

    #[test]
    fn turning_the_guard_off_redoes_the_firewall_but_keeps_the_engine_running() {
        let guarded = fresh_plan(&options());
        let state = after_setup(&guarded);
        let unguarded = SetupOptions {
            egress_guard: false,
            ..options()
        };
        let plan = plan_setup(&debian(), &state, &EnginePaths::system(), &unguarded).unwrap();
        assert_eq!(state_of(&plan, "firewall").state, StepState::ToDo);
        assert_eq!(state_of(&plan, "engine").state, StepState::Done);
        // A firewall someone flushed is put back on a re-run.
        let flushed = EngineState {
            firewall_installed: false,
            ..after_setup(&guarded)
        };
        let plan = plan_setup(&debian(), &flushed, &EnginePaths::system(), &options()).unwrap();
        assert_eq!(state_of(&plan, "firewall").state, StepState::ToDo);
        assert_eq!(state_of(&plan, "engine").state, StepState::Done);
    }

    #[test]
    fn uninstall_keeps_data_unless_purged() {
        let state = EngineState {
            engine_answers: true,
            daemon_json: Some("{}".into()),
            ..Default::default()
        };
        let steps = plan_uninstall(
            &state,
            &EnginePaths::system(),
            EngineMode::Supervised,
            false,
        );
        let data = steps.iter().find(|s| s.id == "data-root").unwrap();
        assert_eq!(data.state, StepState::Skipped);
        assert!(data.finding.contains("--purge"));
        let steps = plan_uninstall(&state, &EnginePaths::system(), EngineMode::Supervised, true);
        assert_eq!(
            steps.iter().find(|s| s.id == "data-root").unwrap().state,
            StepState::ToDo
        );
        assert_eq!(
            steps.iter().find(|s| s.id == "unit").unwrap().state,
            StepState::Done
        );
        let forward = |before: Option<bool>, paths: &EnginePaths| {
            let mut settings =
                EngineSettings::new("cubbi0".into(), "10.214.0.0/24".parse().unwrap(), true);
            settings.ip_forward_before = before;
            let state = EngineState {
                engine_settings: Some(settings),
                ..Default::default()
            };
            plan_uninstall(&state, paths, EngineMode::Systemd, false)
                .into_iter()
                .find(|s| s.id == "ip-forward")
                .unwrap()
                .state
        };
        let system = EnginePaths::system();
        assert_eq!(forward(Some(false), &system), StepState::ToDo);
        assert_eq!(forward(Some(true), &system), StepState::Skipped);
        assert_eq!(forward(None, &system), StepState::Skipped);
        let private = EnginePaths::under_root(std::path::Path::new("/tmp/x"));
        assert_eq!(forward(Some(false), &private), StepState::Skipped);
    }

    #[test]
    fn setup_records_ip_forward_as_it_was_before_the_engine() {
        let plan = fresh_plan(&options());
        assert_eq!(plan.settings.ip_forward_before, Some(false));
    }

    #[test]
    fn without_iptables_the_guard_refuses_and_an_explicit_opt_out_gets_a_plain_script() {
        let mut host = FixtureHost::debian_with_systemd();
        host.programs.retain(|p| p != "iptables");
        let facts = HostFacts::gather(&host);
        let err = plan_setup(
            &facts,
            &EngineState::default(),
            &EnginePaths::system(),
            &options(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("iptables") && text.contains("--no-egress-guard"),
            "{text}"
        );
        let off = SetupOptions {
            egress_guard: false,
            ..options()
        };
        let plan = plan_setup(
            &facts,
            &EngineState::default(),
            &EnginePaths::system(),
            &off,
        )
        .unwrap();
        assert!(matches!(
            state_of(&plan, "firewall").action,
            Action::WriteFirewallScript { .. }
        ));
        // Installing Docker brings iptables with it, and the guard goes in.
        host.programs.retain(|p| p != "dockerd");
        let plan = plan_setup(
            &HostFacts::gather(&host),
            &EngineState::default(),
            &EnginePaths::system(),
            &options(),
        )
        .unwrap();
        assert!(matches!(
            &state_of(&plan, "docker-engine").action,
            Action::InstallPackages { packages, .. } if packages.contains(&"iptables".to_string())
        ));
        assert!(matches!(
            state_of(&plan, "firewall").action,
            Action::InstallFirewall { .. }
        ));
    }

    fn swarm_init() -> Option<super::super::swarm::SwarmRequest> {
        Some(super::super::swarm::SwarmRequest::Init { advertise: None })
    }

    fn written_daemon_json(plan: &Plan) -> (serde_json::Value, bool) {
        let Action::WriteConfig {
            daemon_json,
            seccomp_profile,
            ..
        } = &state_of(plan, "daemon-json").action
        else {
            panic!(
                "daemon.json is written: {:?}",
                state_of(plan, "daemon-json")
            )
        };
        (serde_json::from_str(daemon_json).unwrap(), *seccomp_profile)
    }

    /// What a completed setup of a swarm node leaves: the plan's files, the node in a swarm.
    fn after_swarm_setup(plan: &Plan) -> EngineState {
        EngineState {
            swarm: Some(super::super::swarm::Membership {
                state: "active".into(),
                node_id: "n1".into(),
                manager: true,
                node_addr: "10.0.0.1".into(),
                worker_token: None,
                labels: super::super::swarm::node_labels(&plan.settings.default_runtime),
            }),
            ..after_setup(plan)
        }
    }

    #[test]
    fn an_unsafe_runc_swarm_node_runs_every_task_without_seccomp_and_says_so() {
        let opts = SetupOptions {
            unsafe_runc: true,
            swarm: swarm_init(),
            ..options()
        };
        let plan = fresh_plan(&opts);
        assert!(plan.settings.swarm_unsafe_runc);
        let (written, profile) = written_daemon_json(&plan);
        assert!(profile, "the profile is written with daemon.json");
        assert_eq!(
            written["seccomp-profile"],
            "/etc/cubbi/docker/seccomp-allow-all.json"
        );
        assert_eq!(written["default-cgroupns-mode"], "private");
        assert_eq!(written["default-runtime"], "runc");
        assert_eq!(
            written["labels"],
            serde_json::json!(["io.cubbi.runtime=runc"])
        );
        for id in ["daemon-json", "swarm"] {
            let finding = &state_of(&plan, id).finding;
            assert!(
                finding.contains("WITHOUT seccomp filtering") && finding.contains("NOT isolated"),
                "{id}: {finding}"
            );
        }
        // A re-run, with or without the swarm flag, keeps it and still says so.
        let state = after_swarm_setup(&plan);
        for rerun in [
            opts.clone(),
            SetupOptions {
                swarm: None,
                ..opts.clone()
            },
        ] {
            let again = plan_setup(&debian(), &state, &EnginePaths::system(), &rerun).unwrap();
            let daemon = state_of(&again, "daemon-json");
            assert_eq!(daemon.state, StepState::Done, "{}", daemon.finding);
            assert!(
                daemon.finding.contains("NOT isolated"),
                "{}",
                daemon.finding
            );
            assert!(again.settings.swarm_unsafe_runc);
            assert_eq!(state_of(&again, "engine").state, StepState::Done);
        }
    }

    #[test]
    fn without_unsafe_runc_or_without_a_swarm_nothing_node_wide_changes() {
        for opts in [
            SetupOptions {
                swarm: swarm_init(),
                ..options()
            },
            SetupOptions {
                unsafe_runc: true,
                ..options()
            },
        ] {
            let plan = fresh_plan(&opts);
            assert!(!plan.settings.swarm_unsafe_runc);
            let (written, profile) = written_daemon_json(&plan);
            assert!(!profile);
            assert!(written.get("seccomp-profile").is_none(), "{written}");
            assert!(written.get("default-cgroupns-mode").is_none(), "{written}");
            assert!(
                !state_of(&plan, "daemon-json").finding.contains("seccomp"),
                "{}",
                state_of(&plan, "daemon-json").finding
            );
        }
    }

    #[test]
    fn setup_without_unsafe_runc_takes_the_unsafe_node_away_and_restarts_the_engine() {
        let opts = SetupOptions {
            unsafe_runc: true,
            swarm: swarm_init(),
            ..options()
        };
        let state = after_swarm_setup(&fresh_plan(&opts));
        let safe = SetupOptions {
            swarm: swarm_init(),
            ..options()
        };
        let plan = plan_setup(&debian(), &state, &EnginePaths::system(), &safe).unwrap();
        assert!(!plan.settings.swarm_unsafe_runc);
        let (written, profile) = written_daemon_json(&plan);
        assert!(!profile, "the profile goes");
        assert!(written.get("seccomp-profile").is_none(), "{written}");
        assert!(written.get("default-cgroupns-mode").is_none(), "{written}");
        assert_eq!(state_of(&plan, "engine").state, StepState::ToDo);
    }

    #[test]
    fn a_missing_profile_is_written_again_and_a_changed_one_restarts_the_engine() {
        let opts = SetupOptions {
            unsafe_runc: true,
            swarm: swarm_init(),
            ..options()
        };
        let done = after_swarm_setup(&fresh_plan(&opts));
        let missing = EngineState {
            seccomp_profile: None,
            ..done.clone()
        };
        let plan = plan_setup(&debian(), &missing, &EnginePaths::system(), &opts).unwrap();
        assert_eq!(state_of(&plan, "daemon-json").state, StepState::ToDo);
        assert!(written_daemon_json(&plan).1);
        // dockerd read it at start: no restart for a file put back.
        assert_eq!(state_of(&plan, "engine").state, StepState::Done);
        let changed = EngineState {
            seccomp_profile: Some("{}".into()),
            ..done
        };
        let plan = plan_setup(&debian(), &changed, &EnginePaths::system(), &opts).unwrap();
        assert_eq!(state_of(&plan, "daemon-json").state, StepState::ToDo);
        assert_eq!(state_of(&plan, "engine").state, StepState::ToDo);
    }

    #[test]
    fn uninstall_removes_the_seccomp_profile() {
        let state = EngineState {
            seccomp_profile: Some(daemon_json::SECCOMP_ALLOW_ALL.into()),
            ..Default::default()
        };
        let steps = plan_uninstall(
            &state,
            &EnginePaths::system(),
            EngineMode::Supervised,
            false,
        );
        let config = steps.iter().find(|s| s.id == "config").unwrap();
        assert_eq!(config.state, StepState::ToDo);
        assert!(
            config
                .finding
                .contains("/etc/cubbi/docker/seccomp-allow-all.json"),
            "{}",
            config.finding
        );
    }
}
