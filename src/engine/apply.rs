//! Carrying out a [`Plan`]: reads the current [`EngineState`], runs each to-do step through the
//! boundary traits, and reports every step as it goes. Steps the rest depends on (the engine
//! binaries, daemon.json, the engine) stop the run when they fail; Sysbox does not, so the
//! endpoint still comes up and `doctor` reports what is missing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::firewall::{self, RuleSet};
use super::host::{HostFacts, IP_FORWARD_SYSCTL, KEY_QUOTA_CONF, SYSCTL_CONF};
use super::plan::{
    Action, EngineMode, EngineState, Plan, StepState, SysboxSource, SysctlSetting, UninstallStep,
};
use super::runner::CommandRunner;
use super::settings::EngineSettings;
use super::systemd::{self, Systemd};
use super::{
    DOCKER_CONTEXT, EngineError, EnginePaths, SOCKET_GROUP, UNIT_NAME, serve, supervisor, sysbox,
};

/// The host Docker's config, which the sysbox-ce installer edits; cubbi only snapshots and
/// restores it around that installer.
const HOST_DOCKER_DAEMON_JSON: &str = "/etc/docker/daemon.json";
/// The host Docker's unit, which cubbi only ever asks to re-read that file.
const HOST_DOCKER_UNIT: &str = "docker.service";

/// How long a stopping engine may take: the unit's TimeoutStopSec plus ExecStopPost.
const STOP_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    AlreadyDone,
    Applied,
    Skipped,
    Cannot,
    Failed,
    /// Not attempted because a step it depends on failed.
    NotAttempted,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub id: &'static str,
    pub outcome: Outcome,
    pub message: String,
}

/// The real-world handles a run needs.
pub struct Environment<'a> {
    pub paths: &'a EnginePaths,
    pub facts: &'a HostFacts,
    pub runner: &'a dyn CommandRunner,
    /// Present in systemd mode.
    pub systemd: Option<&'a dyn Systemd>,
    pub start_timeout: Duration,
}

/// Reads what is in place now.
pub async fn read_state(
    env: &Environment<'_>,
    invoking_user: Option<&str>,
) -> Result<EngineState, EngineError> {
    let paths = env.paths;
    let engine_settings = EngineSettings::load(&paths.engine_json)?;
    let group = nix::unistd::Group::from_name(SOCKET_GROUP).ok().flatten();
    let user_in_group = match (&group, invoking_user) {
        (Some(group), Some(user)) => {
            group.mem.iter().any(|member| member == user)
                || nix::unistd::User::from_name(user)
                    .ok()
                    .flatten()
                    .is_some_and(|account| account.gid == group.gid)
        }
        _ => false,
    };
    let (unit_active, unit_enabled) = systemd::active_and_enabled(env.systemd, UNIT_NAME).await;
    let nameservers = firewall::host_nameservers();
    let firewall_installed = engine_settings.as_ref().is_some_and(|settings| {
        env.facts.has("iptables")
            && super::plan::firewall_rules(env.facts, settings, &nameservers)
                .is_installed(env.runner)
    });
    let docker_context_endpoint = if env.facts.has("docker") {
        docker_as(
            env.runner,
            invoking_user,
            &[
                "context",
                "inspect",
                DOCKER_CONTEXT,
                "--format",
                "{{.Endpoints.docker.Host}}",
            ],
        )
        .ok()
        .filter(|out| out.success)
        .map(|out| out.stdout.trim().to_string())
    } else {
        None
    };
    Ok(EngineState {
        daemon_json: read_optional(&paths.daemon_json)?,
        engine_settings,
        seccomp_profile: read_optional(&paths.seccomp_profile)?,
        unit_file: read_optional(&paths.unit_file)?,
        group_exists: group.is_some(),
        user_in_group,
        engine_answers: crate::docker::connect(&paths.endpoint()).await.is_ok(),
        unit_active,
        unit_enabled,
        firewall_installed,
        firewall_script: read_optional(&paths.firewall_script)?,
        docker_context_endpoint,
        port_lock_ready: paths.is_system() && port_lock_ready(env.facts.systemd_is_pid1),
        nameservers,
        serve: super::serve::install::read_state(env.systemd).await?,
        egress_resolver: super::egress_resolver::EGRESS_UNIT
            .read(env.systemd)
            .await?,
        swarm: match crate::docker::connect(&paths.endpoint()).await {
            Ok(docker) => {
                use super::swarm::SwarmApi;
                super::swarm::DockerSwarm(docker).membership().await.ok()
            }
            Err(_) => None,
        },
    })
}

/// The user who ran `sudo cubbi …` (not root), whose Docker CLI config gets the context.
pub fn invoking_user() -> Option<String> {
    std::env::var("SUDO_USER")
        .ok()
        .filter(|user| !user.is_empty() && user != "root")
}

/// The command line running `program` as `user` when one is given (the sudo caller), via
/// runuser.
fn as_user(user: Option<&str>, program: &str, args: &[&str]) -> (String, Vec<String>) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    match user {
        Some(user) => {
            let mut full = vec![
                "-u".to_string(),
                user.to_string(),
                "--".to_string(),
                program.to_string(),
            ];
            full.extend(args);
            ("runuser".to_string(), full)
        }
        None => (program.to_string(), args),
    }
}

/// The Docker CLI as the sudo caller (so contexts land in their `~/.docker`), else as root.
/// The one place cubbi runs `docker` on someone's behalf.
pub fn docker_as(
    runner: &dyn CommandRunner,
    user: Option<&str>,
    args: &[&str],
) -> Result<super::runner::CommandOutput, super::runner::CommandError> {
    let (program, args) = as_user(user, "docker", args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    runner.output(&program, &args)
}

fn read_optional(path: &Path) -> Result<Option<String>, EngineError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(EngineError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The sysctl.d drop-in for `settings`, headed by why cubbi raised them.
fn sysctl_conf(comment: &str, settings: &[SysctlSetting]) -> String {
    let mut conf = String::new();
    for (index, line) in comment.lines().enumerate() {
        let lead = if index == 0 {
            "Written by `cubbi setup`: "
        } else {
            ""
        };
        conf.push_str(&format!("# {lead}{line}\n"));
    }
    for setting in settings {
        conf.push_str(&format!("{} = {}\n", setting.limit.name, setting.value));
    }
    conf
}

/// Keeps the limits in sysctl.d for the next boot and sets them now; a read-only /proc/sys
/// (inside a container) leaves the file for the next boot and says so.
fn raise_sysctl_limits(
    conf: &str,
    comment: &str,
    settings: &[SysctlSetting],
) -> Result<String, EngineError> {
    write_atomically(Path::new(conf), &sysctl_conf(comment, settings), 0o644)?;
    let unset: Vec<String> = settings
        .iter()
        .filter_map(|setting| {
            let written = std::fs::write(setting.limit.path, format!("{}\n", setting.value));
            written
                .err()
                .map(|err| format!("{} ({err})", setting.limit.name))
        })
        .collect();
    Ok(if unset.is_empty() {
        String::new()
    } else {
        format!(
            "could not set {} now; it applies at the next boot or `sysctl --system`",
            unset.join(", ")
        )
    })
}

/// Writes the firewall script (for the unit and `cubbi engine start`) and puts its rules in place.
pub fn install_firewall(
    paths: &EnginePaths,
    runner: &dyn CommandRunner,
    script: &str,
    rules: &RuleSet,
    teardown: &RuleSet,
) -> Result<(), EngineError> {
    write_atomically(&paths.firewall_script, script, 0o700)?;
    rules.apply(teardown, runner)?;
    Ok(())
}

/// Writes through a temp file in the same folder, so a crash never leaves half a file.
pub fn write_atomically(path: &Path, contents: &str, mode: u32) -> Result<(), EngineError> {
    crate::atomic_file::write(path, contents.as_bytes(), mode, 0o755).map_err(|source| {
        EngineError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// The allow-everything seccomp profile of a Swarm node under `--unsafe-runc` (0644, beside
/// daemon.json) when `wanted`, else none: written only when it differs, removed when present.
pub fn sync_seccomp_profile(paths: &EnginePaths, wanted: bool) -> Result<(), EngineError> {
    if !wanted {
        return remove_if_present(&paths.seccomp_profile);
    }
    if read_optional(&paths.seccomp_profile)?.as_deref()
        != Some(super::daemon_json::SECCOMP_ALLOW_ALL)
    {
        write_atomically(
            &paths.seccomp_profile,
            super::daemon_json::SECCOMP_ALLOW_ALL,
            0o644,
        )?;
    }
    Ok(())
}

/// Applies every to-do step, calling `report` after each.
pub async fn apply(
    plan: &Plan,
    env: &Environment<'_>,
    report: &mut dyn FnMut(&StepReport),
) -> Vec<StepReport> {
    let mut reports = Vec::new();
    let mut blocked_by: Option<&'static str> = None;
    for step in &plan.steps {
        let (outcome, message) = match (step.state, blocked_by) {
            (StepState::Done, _) => (Outcome::AlreadyDone, step.finding.clone()),
            (StepState::Skipped, _) => (Outcome::Skipped, step.finding.clone()),
            (StepState::Cannot, _) => (Outcome::Cannot, step.finding.clone()),
            (StepState::ToDo, Some(failed)) => (
                Outcome::NotAttempted,
                format!("not attempted: `{failed}` failed"),
            ),
            (StepState::ToDo, None) => match apply_action(&step.action, plan, env).await {
                Ok(note) => (
                    Outcome::Applied,
                    if note.is_empty() {
                        step.finding.clone()
                    } else {
                        format!("{}; {note}", step.finding)
                    },
                ),
                // Sysbox is optional for bringing the endpoint up: say why and go on.
                Err(err) if step.id == "sysbox" => (
                    Outcome::Cannot,
                    format!(
                        "cannot install Sysbox: {err}; the endpoint comes up without it and \
                         `cubbi doctor` reports it"
                    ),
                ),
                Err(err) => {
                    // The service's unit needs its user (for the config's group and User=).
                    if matches!(
                        step.id,
                        "docker-engine" | "daemon-json" | "engine" | "serve-user"
                    ) {
                        blocked_by = Some(step.id);
                    }
                    (Outcome::Failed, err.to_string())
                }
            },
        };
        let entry = StepReport {
            id: step.id,
            outcome,
            message,
        };
        report(&entry);
        reports.push(entry);
    }
    reports
}

async fn apply_action(
    action: &Action,
    plan: &Plan,
    env: &Environment<'_>,
) -> Result<String, EngineError> {
    let runner = env.runner;
    match action {
        Action::Nothing => Ok(String::new()),
        Action::InstallPackages {
            packages,
            docker_ce_repository,
        } => {
            if *docker_ce_repository {
                add_docker_ce_repository(env)?;
            }
            install_packages(runner, packages)?;
            Ok(String::new())
        }
        Action::InstallSysbox { source } => install_sysbox(source, env).await,
        Action::RaiseSysctlLimits {
            conf,
            comment,
            settings,
        } => raise_sysctl_limits(conf, comment, settings),
        Action::PreparePortLock { tmpfiles } => {
            let gid = nix::unistd::Group::from_name(SOCKET_GROUP)
                .ok()
                .flatten()
                .map(|group| group.gid.as_raw())
                .ok_or_else(|| {
                    EngineError::Refused(format!(
                        "group {SOCKET_GROUP} is missing, so the port lock cannot be made"
                    ))
                })?;
            let dir = Path::new(crate::local::ports::SYSTEM_LOCK_DIR);
            crate::local::ports::prepare_system_lock(dir, gid).map_err(|source| {
                EngineError::Write {
                    path: dir.to_path_buf(),
                    source,
                }
            })?;
            if *tmpfiles {
                write_atomically(
                    Path::new(TMPFILES_CONF),
                    crate::local::ports::TMPFILES_LINES,
                    0o644,
                )?;
            }
            Ok(String::new())
        }
        Action::CreateGroup { group, add_user } => {
            if nix::unistd::Group::from_name(group)
                .ok()
                .flatten()
                .is_none()
            {
                runner.run("groupadd", &["--system", group])?;
            }
            if let Some(user) = add_user {
                runner.run("usermod", &["--append", "--groups", group, user])?;
            }
            Ok(String::new())
        }
        Action::WriteConfig {
            daemon_json,
            engine_json,
            backup_invalid,
            seccomp_profile,
        } => {
            let paths = env.paths;
            let mut note = String::new();
            if *backup_invalid && paths.daemon_json.exists() {
                let backup = backup_path(&paths.daemon_json);
                std::fs::copy(&paths.daemon_json, &backup).map_err(|source| {
                    EngineError::Write {
                        path: backup.clone(),
                        source,
                    }
                })?;
                note = format!("the invalid file was kept as {}", backup.display());
            }
            // Before daemon.json names it: dockerd does not start without the file.
            sync_seccomp_profile(paths, *seccomp_profile)?;
            write_atomically(&paths.daemon_json, daemon_json, 0o644)?;
            write_atomically(&paths.engine_json, engine_json, 0o644)?;
            Ok(note)
        }
        Action::InstallUnit { unit, restart } => {
            write_atomically(&env.paths.unit_file, unit, 0o644)?;
            let systemd = require_systemd(env)?;
            systemd.daemon_reload().await?;
            if *restart {
                // A start queued while the stop job is pending would replace it: no restart.
                systemd.stop(UNIT_NAME).await?;
                systemd::wait_until_stopped(systemd, UNIT_NAME, STOP_TIMEOUT).await?;
            }
            start_unit(systemd, env).await
        }
        Action::StartUnit => start_unit(require_systemd(env)?, env).await,
        Action::StartSupervised { restart } => {
            if *restart {
                supervisor::stop(&env.paths.pidfile, Duration::from_secs(60)).await?;
            }
            supervisor::ensure_bridge(runner, &plan.settings)?;
            let dockerd = env
                .facts
                .programs
                .get("dockerd")
                .cloned()
                .unwrap_or_else(|| PathBuf::from("dockerd"));
            let pid = supervisor::start(env.paths, &dockerd, env.start_timeout).await?;
            Ok(format!(
                "dockerd pid {pid}, log {}",
                env.paths.log_file.display()
            ))
        }
        Action::InstallFirewall {
            script,
            rules,
            teardown,
        } => {
            write_atomically(&env.paths.firewall_script, script, 0o700)?;
            // One iptables-restore per family; a guard turned off goes in the same payload.
            rules.apply(teardown, runner)?;
            Ok(String::new())
        }
        Action::WriteFirewallScript { script } => {
            write_atomically(&env.paths.firewall_script, script, 0o700)?;
            Ok(String::new())
        }
        Action::CreateDockerContext { endpoint, user } => {
            let host = format!("host={endpoint}");
            let exists = docker_as(
                runner,
                user.as_deref(),
                &["context", "inspect", DOCKER_CONTEXT],
            )
            .is_ok_and(|out| out.success);
            let verb = if exists { "update" } else { "create" };
            let args = ["context", verb, DOCKER_CONTEXT, "--docker", &host];
            let out = docker_as(runner, user.as_deref(), &args)?;
            super::runner::check("docker", &args, out)?;
            Ok(format!("try `docker --context {DOCKER_CONTEXT} ps`"))
        }
        Action::CreateServiceUser { user, group } => {
            serve::install::create_user(runner, user, group)?;
            Ok(String::new())
        }
        Action::WriteServiceConfig { contents } => serve::install::write_config(contents),
        Action::InstallServeUnit { unit, restart } => {
            serve::install::install_unit(require_systemd(env)?, unit, *restart, env.start_timeout)
                .await
        }
        Action::StartServeUnit => {
            serve::install::start_unit(require_systemd(env)?, env.start_timeout).await
        }
        Action::InstallEgressResolver {
            unit,
            restart,
            packages,
        } => {
            if !packages.is_empty() {
                install_packages(runner, packages)?;
            }
            super::egress_resolver::EGRESS_UNIT
                .install(require_systemd(env)?, unit, *restart, env.start_timeout)
                .await
        }
        Action::InitSwarm { .. } | Action::JoinSwarm { .. } | Action::LabelSwarmNode { .. } => {
            let docker = crate::docker::connect(&env.paths.endpoint())
                .await
                .map_err(|err| EngineError::Refused(err.to_string()))?;
            super::swarm::apply(&super::swarm::DockerSwarm(docker), action)
                .await
                .map_err(|err| EngineError::Refused(err.to_string()))
        }
        Action::StartEgressResolver => {
            super::egress_resolver::EGRESS_UNIT
                .start(require_systemd(env)?, env.start_timeout)
                .await
        }
    }
}

fn install_packages(runner: &dyn CommandRunner, packages: &[String]) -> Result<(), EngineError> {
    let mut args = vec![
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
    ];
    args.extend(packages.iter().map(String::as_str));
    runner.run("env", &args)?;
    Ok(())
}

fn require_systemd<'a>(env: &Environment<'a>) -> Result<&'a dyn Systemd, EngineError> {
    env.systemd.ok_or_else(|| {
        EngineError::Refused("systemd mode without a D-Bus connection to systemd".into())
    })
}

async fn start_unit(systemd: &dyn Systemd, env: &Environment<'_>) -> Result<String, EngineError> {
    systemd.enable(UNIT_NAME).await?;
    systemd.start(UNIT_NAME).await?;
    systemd::wait_until_active(systemd, UNIT_NAME, env.start_timeout).await?;
    Ok(format!("{UNIT_NAME} is active"))
}

fn backup_path(path: &Path) -> PathBuf {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".invalid-{seconds}.bak"));
    path.with_file_name(name)
}

fn add_docker_ce_repository(env: &Environment<'_>) -> Result<(), EngineError> {
    let distro = &env.facts.distro;
    let id = if distro.id == "ubuntu" || distro.id_like.iter().any(|l| l == "ubuntu") {
        "ubuntu"
    } else {
        "debian"
    };
    let keyring = "/etc/apt/keyrings/docker.asc";
    std::fs::create_dir_all("/etc/apt/keyrings").map_err(|source| EngineError::Write {
        path: "/etc/apt/keyrings".into(),
        source,
    })?;
    env.runner.run(
        "curl",
        &[
            "-fsSL",
            "--connect-timeout",
            "10",
            &format!("https://download.docker.com/linux/{id}/gpg"),
            "-o",
            keyring,
        ],
    )?;
    let arch = match env.facts.architecture.as_str() {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let line = format!(
        "deb [arch={arch} signed-by={keyring}] https://download.docker.com/linux/{id} {} stable\n",
        distro.version_codename
    );
    write_atomically(
        Path::new("/etc/apt/sources.list.d/docker.list"),
        &line,
        0o644,
    )?;
    env.runner.run("apt-get", &["update"])?;
    Ok(())
}

/// Installs sysbox-ce, keeping the host Docker's daemon.json as it was: the package's installer
/// adds sysbox-runc to it and restarts the host Docker, which cubbi does not want.
async fn install_sysbox(
    source: &SysboxSource,
    env: &Environment<'_>,
) -> Result<String, EngineError> {
    let download_dir = tempfile::tempdir().map_err(|source| EngineError::Write {
        path: std::env::temp_dir(),
        source,
    })?;
    let package = match source {
        SysboxSource::File { path } => path.clone(),
        SysboxSource::Download { url, sha256 } => {
            let file_name = url.rsplit('/').next().unwrap_or("sysbox-ce.deb");
            let target = download_dir.path().join(file_name);
            let target_text = target.display().to_string();
            env.runner.run(
                "curl",
                &[
                    "-fsSL",
                    "--connect-timeout",
                    "10",
                    "--max-time",
                    "600",
                    "-o",
                    &target_text,
                    url,
                ],
            )?;
            sysbox::verify_package(&target, sha256)?;
            target
        }
    };
    let host_config = Path::new(HOST_DOCKER_DAEMON_JSON);
    let before = std::fs::read(host_config).ok();
    let package_text = package.display().to_string();
    let installed = env.runner.run(
        "env",
        &[
            "DEBIAN_FRONTEND=noninteractive",
            "apt-get",
            "install",
            "-y",
            &package_text,
        ],
    );
    let note = restore_host_docker(host_config, before, env.systemd).await?;
    match installed {
        Ok(_) => Ok(note),
        Err(err) => Err(EngineError::Refused(format!(
            "{err}\n  sysbox-ce's installer refuses while the host Docker has containers; the endpoint comes up \
             without Sysbox and `cubbi doctor` says what is missing. {note}"
        ))),
    }
}

/// The sysbox-ce installer adds itself to the host Docker's daemon.json and restarts it; cubbi
/// puts the file back as it was and has a running docker.service re-read it, so the host Docker
/// ends up with its own configuration. Returns what happened, for the step's message.
async fn restore_host_docker(
    host_config: &Path,
    before: Option<Vec<u8>>,
    systemd: Option<&dyn Systemd>,
) -> Result<String, EngineError> {
    if std::fs::read(host_config).ok() == before {
        return Ok(String::new());
    }
    // Atomically: dockerd (or a person) reading it meanwhile sees the old or the new file whole.
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(host_config).map_or(0o644, |meta| meta.permissions().mode() & 0o7777)
    };
    match &before {
        Some(bytes) => crate::atomic_file::write(host_config, bytes, mode, 0o755),
        None => std::fs::remove_file(host_config),
    }
    .map_err(|source| EngineError::Write {
        path: host_config.to_path_buf(),
        source,
    })?;
    let mut note = format!(
        "the sysbox-ce installer changed {} (and restarts docker.service); cubbi restored the \
         file as it was",
        host_config.display()
    );
    let running = match systemd {
        Some(systemd) => systemd
            .active_state(HOST_DOCKER_UNIT)
            .await
            .is_ok_and(|state| state == "active"),
        None => false,
    };
    match systemd {
        Some(systemd) if running => {
            systemd.reload(HOST_DOCKER_UNIT).await?;
            note.push_str(&format!(
                " and reloaded {HOST_DOCKER_UNIT} (a reload re-applies only dockerd's reloadable \
                 settings; if the installer's restart changed others, restart {HOST_DOCKER_UNIT} \
                 yourself when its containers can stop)"
            ));
        }
        _ => note.push_str(&format!(
            "; {HOST_DOCKER_UNIT} is not running under systemd here, so nothing was reloaded"
        )),
    }
    Ok(note)
}

/// Carries out `--uninstall`.
pub async fn uninstall(
    steps: &[UninstallStep],
    state: &EngineState,
    mode: EngineMode,
    env: &Environment<'_>,
    report: &mut dyn FnMut(&StepReport),
) -> Vec<StepReport> {
    let mut reports = Vec::new();
    for step in steps {
        let (outcome, message) = match step.state {
            StepState::Done => (Outcome::AlreadyDone, step.finding.clone()),
            StepState::Skipped | StepState::Cannot => (Outcome::Skipped, step.finding.clone()),
            StepState::ToDo => match uninstall_step(step.id, state, mode, env).await {
                Ok(note) if note.is_empty() => (Outcome::Applied, step.finding.clone()),
                Ok(note) => (Outcome::Skipped, format!("{}: {note}", step.finding)),
                Err(err) => (Outcome::Failed, err.to_string()),
            },
        };
        let entry = StepReport {
            id: step.id,
            outcome,
            message,
        };
        report(&entry);
        reports.push(entry);
    }
    reports
}

async fn uninstall_step(
    id: &str,
    state: &EngineState,
    mode: EngineMode,
    env: &Environment<'_>,
) -> Result<String, EngineError> {
    let paths = env.paths;
    match id {
        "engine" => {
            match mode {
                EngineMode::Systemd => {
                    let systemd = require_systemd(env)?;
                    systemd.stop(UNIT_NAME).await?;
                    // ExecStopPost deletes the bridge; wait for it before going on.
                    systemd::wait_until_stopped(systemd, UNIT_NAME, STOP_TIMEOUT).await?;
                    systemd.disable(UNIT_NAME).await?;
                }
                EngineMode::Supervised => {
                    supervisor::stop(&paths.pidfile, Duration::from_secs(60)).await?;
                }
            }
            if let Some(settings) = &state.engine_settings {
                supervisor::remove_bridge(env.runner, &settings.bridge)?;
                // dockerd leaves its networks' bridges up when it stops; they are ours.
                for network_bridge in supervisor::network_bridges(env.runner, &settings.bridge)? {
                    supervisor::remove_bridge(env.runner, &network_bridge)?;
                }
            }
            Ok(String::new())
        }
        "unit" => {
            remove_if_present(&paths.unit_file)?;
            if let Some(systemd) = env.systemd {
                systemd.daemon_reload().await?;
            }
            Ok(String::new())
        }
        "firewall" => {
            if let Some(settings) = &state.engine_settings
                && env.facts.has("iptables")
            {
                // One restore per family: every hook and chain, guarded or not.
                super::plan::firewall_superset(env.facts, settings).uninstall(env.runner)?;
            }
            remove_if_present(&paths.firewall_script)?;
            Ok(String::new())
        }
        "docker-context" => {
            let args = ["context", "rm", "--force", DOCKER_CONTEXT];
            let out = docker_as(env.runner, invoking_user().as_deref(), &args)?;
            super::runner::check("docker", &args, out)?;
            Ok(String::new())
        }
        "ip-forward" => restore_ip_forward(
            Path::new(IP_FORWARD_SYSCTL),
            Path::new("/sys/class/net/docker0"),
        ),
        "config" => {
            remove_if_present(&paths.daemon_json)?;
            remove_if_present(&paths.engine_json)?;
            remove_if_present(&paths.seccomp_profile)?;
            if paths.is_system() {
                // The live limit stays: lowering it under running containers helps nobody.
                remove_if_present(Path::new(SYSCTL_CONF))?;
                remove_if_present(Path::new(KEY_QUOTA_CONF))?;
                remove_if_present(Path::new(TMPFILES_CONF))?;
                remove_if_present(Path::new(crate::local::ports::SYSTEM_LOCK_FILE))?;
                let _ = std::fs::remove_dir(crate::local::ports::SYSTEM_LOCK_DIR);
            }
            // Only an emptied folder goes; anything else in it is the user's.
            let _ = std::fs::remove_dir(&paths.config_dir);
            if paths.is_system()
                && let Some(parent) = paths.config_dir.parent()
            {
                // /etc/cubbi too, when setup made it and nothing else lives there.
                let _ = std::fs::remove_dir(parent);
            }
            Ok(String::new())
        }
        "serve" => {
            serve::install::remove_unit(env.systemd).await?;
            Ok(String::new())
        }
        "swarm" => {
            use super::swarm::SwarmApi;
            let docker = crate::docker::connect(&paths.endpoint())
                .await
                .map_err(|err| EngineError::Refused(err.to_string()))?;
            super::swarm::DockerSwarm(docker)
                .leave()
                .await
                .map_err(|err| EngineError::Refused(err.to_string()))?;
            Ok(String::new())
        }
        "egress-resolver" => {
            super::egress_resolver::EGRESS_UNIT
                .remove(env.systemd)
                .await?;
            // A stopped resolver leaves its table (restricted sessions stay closed); with the
            // engine going, it goes too. Its absence is no error.
            if let Some(settings) = &state.engine_settings
                && env.facts.has("nft")
            {
                let table = crate::egress::nft::table_name(&settings.bridge);
                let _ = env.runner.run("nft", &["delete", "table", "ip", &table]);
            }
            Ok(String::new())
        }
        "serve-data" => {
            serve::install::purge(env.runner)?;
            Ok(String::new())
        }
        "data-root" => match std::fs::remove_dir_all(&paths.data_root) {
            Ok(()) => Ok(String::new()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(source) => Err(EngineError::Write {
                path: paths.data_root.clone(),
                source,
            }),
        },
        _ => Ok(String::new()),
    }
}

/// systemd re-creates the port lock from this at every boot (/run is a tmpfs).
const TMPFILES_CONF: &str = "/etc/tmpfiles.d/cubbi.conf";

/// The port lock and its folder as setup makes them, and the tmpfiles.d entry where needed.
fn port_lock_ready(systemd: bool) -> bool {
    let Some(gid) = nix::unistd::Group::from_name(SOCKET_GROUP)
        .ok()
        .flatten()
        .map(|group| group.gid.as_raw())
    else {
        return false;
    };
    crate::local::ports::system_lock_ready(Path::new(crate::local::ports::SYSTEM_LOCK_DIR), gid)
        && (!systemd
            || std::fs::read_to_string(TMPFILES_CONF)
                .is_ok_and(|text| text == crate::local::ports::TMPFILES_LINES))
}

/// Turns `net.ipv4.ip_forward` off again (it was off before cubbi's engine first ran), unless
/// the host Docker's `docker0` exists: that Docker needs forwarding too. Returns why it was left
/// on, or nothing.
fn restore_ip_forward(sysctl: &Path, docker0: &Path) -> Result<String, EngineError> {
    if docker0.exists() {
        return Ok(format!(
            "left on: {} exists, and the host Docker needs forwarding",
            docker0.display()
        ));
    }
    std::fs::write(sysctl, "0\n").map_err(|source| EngineError::Write {
        path: sysctl.to_path_buf(),
        source,
    })?;
    Ok(String::new())
}

pub(in crate::engine) fn remove_if_present(path: &Path) -> Result<(), EngineError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(EngineError::Write {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::host::fixture::FixtureHost;
    use crate::engine::plan::{SetupOptions, plan_setup};
    use crate::engine::runner::fake::RecordingRunner;
    use crate::engine::systemd::fake::FakeSystemd;

    /// The drop-ins a fresh system setup writes, by step.
    fn drop_in(id: &str) -> (&'static str, String) {
        let facts = HostFacts::gather(&FixtureHost::debian_with_systemd());
        let options = SetupOptions {
            bridge: "cubbi0".into(),
            ..Default::default()
        };
        let plan = plan_setup(
            &facts,
            &EngineState::default(),
            &EnginePaths::system(),
            &options,
        )
        .unwrap();
        let step = plan.steps.iter().find(|step| step.id == id).unwrap();
        let Action::RaiseSysctlLimits {
            conf,
            comment,
            settings,
        } = &step.action
        else {
            panic!("{id}: {:?}", step.action);
        };
        (conf, sysctl_conf(comment, settings))
    }

    #[test]
    fn the_inotify_drop_in_is_rendered() {
        assert_eq!(
            drop_in("inotify"),
            (
                SYSCTL_CONF,
                "# Written by `cubbi setup`: every session's systemd, journald and dbus take inotify\n\
                 # instances, and Debian's default of 128 stops the 27th session from booting.\n\
                 fs.inotify.max_user_instances = 8192\n"
                    .to_string()
            )
        );
    }

    #[test]
    fn the_key_quota_drop_in_is_rendered() {
        assert_eq!(
            drop_in("key-quota"),
            (
                KEY_QUOTA_CONF,
                "# Written by `cubbi setup`: every Sysbox session's root is one host user and shares its\n\
                 # kernel key quota; at the defaults (200 keys, 20000 bytes) about\n\
                 # the 25th session cannot start.\n\
                 kernel.keys.maxkeys = 20000\n\
                 kernel.keys.maxbytes = 1400000\n"
                    .to_string()
            )
        );
    }

    #[test]
    fn an_unwritable_sysctl_keeps_the_drop_in_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("90-test.conf");
        let settings = [SysctlSetting {
            limit: crate::engine::host::SysctlLimit {
                name: "kernel.keys.maxkeys",
                // No such folder: stands in for a read-only /proc/sys inside a container.
                path: "/nonexistent-cubbi-test/kernel/keys/maxkeys",
                wanted: 20000,
            },
            value: 20000,
        }];
        let note = raise_sysctl_limits(conf.to_str().unwrap(), "why", &settings).unwrap();
        assert!(
            note.starts_with("could not set kernel.keys.maxkeys (") && note.contains("next boot"),
            "{note}"
        );
        assert_eq!(
            std::fs::read_to_string(&conf).unwrap(),
            "# Written by `cubbi setup`: why\nkernel.keys.maxkeys = 20000\n"
        );
    }

    #[tokio::test]
    async fn systemd_mode_writes_files_and_drives_the_unit_over_the_trait() {
        let dir = tempfile::tempdir().unwrap();
        let paths = EnginePaths::under_root(dir.path());
        let facts = HostFacts::gather(&FixtureHost::debian_with_systemd());
        let options = SetupOptions {
            bridge: "cubbi0".into(),
            skip_sysbox: true,
            supervised: false,
            egress_guard: true,
            ..Default::default()
        };
        let mut plan = plan_setup(
            &facts,
            &EngineState {
                group_exists: true,
                ..Default::default()
            },
            &paths,
            &options,
        )
        .unwrap();
        // A private root is always supervised; force the systemd path to exercise it.
        plan.mode = EngineMode::Systemd;
        for step in &mut plan.steps {
            if step.id == "engine" {
                step.action = Action::InstallUnit {
                    unit: "[Unit]\n".into(),
                    restart: false,
                };
            }
        }
        let runner = RecordingRunner::default();
        let systemd = FakeSystemd::default();
        let env = Environment {
            paths: &paths,
            facts: &facts,
            runner: &runner,
            systemd: Some(&systemd),
            start_timeout: Duration::from_secs(2),
        };
        let mut seen = Vec::new();
        let reports = apply(&plan, &env, &mut |r| seen.push(r.id)).await;
        assert_eq!(seen.len(), plan.steps.len());
        assert!(
            reports.iter().all(|r| r.outcome != Outcome::Failed),
            "{reports:#?}"
        );
        assert_eq!(
            systemd.calls(),
            [
                "daemon-reload",
                "enable cubbi-docker.service",
                "start cubbi-docker.service"
            ]
        );
        assert!(
            paths.daemon_json.exists() && paths.engine_json.exists() && paths.unit_file.exists()
        );
        // The guard is on (asked for above), so its rules went in with the one restore.
        assert!(options.egress_guard);
        let restores: Vec<(String, String)> = runner
            .inputs()
            .into_iter()
            .filter(|(command, _)| command.starts_with("iptables-restore"))
            .collect();
        assert_eq!(restores.len(), 1, "{restores:#?}");
        assert!(
            restores[0]
                .1
                .contains("-A CUBBI-EGRESS-cubbi0 -d 10.0.0.0/8 -j REJECT"),
            "{}",
            restores[0].1
        );
        assert!(
            paths.firewall_script.exists(),
            "the unit runs the firewall script"
        );
    }

    #[tokio::test]
    async fn the_host_docker_gets_its_own_config_back_after_the_sysbox_installer() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("daemon.json");
        let systemd = FakeSystemd::default();
        systemd.start(HOST_DOCKER_UNIT).await.unwrap();

        // Untouched: nothing to say, nothing reloaded.
        std::fs::write(&config, "{\"log-level\": \"warn\"}").unwrap();
        let before = std::fs::read(&config).ok();
        let note = restore_host_docker(&config, before.clone(), Some(&systemd))
            .await
            .unwrap();
        assert!(note.is_empty());

        // Edited by the installer: the file is put back and docker.service re-reads it.
        std::fs::write(&config, "{\"runtimes\": {\"sysbox-runc\": {}}}").unwrap();
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
        let inode = std::fs::metadata(&config).unwrap().ino();
        let note = restore_host_docker(&config, before, Some(&systemd))
            .await
            .unwrap();
        // Replaced by a rename (never truncated in place), keeping the file's mode.
        let restored = std::fs::metadata(&config).unwrap();
        assert_ne!(restored.ino(), inode, "the file was rewritten in place");
        assert_eq!(restored.permissions().mode() & 0o777, 0o640);
        assert_eq!(
            std::fs::read_to_string(&config).unwrap(),
            "{\"log-level\": \"warn\"}"
        );
        assert!(note.contains("reloaded docker.service"), "{note}");
        assert!(note.contains("only dockerd's reloadable"), "{note}");
        assert_eq!(
            systemd.calls().last().map(String::as_str),
            Some("reload docker.service")
        );

        // Created by the installer where there was none: it goes again.
        let note = restore_host_docker(&config, None, None).await.unwrap();
        assert!(!config.exists());
        assert!(note.contains("nothing was reloaded"), "{note}");
    }

    #[test]
    fn backups_sit_next_to_the_file() {
        let backup = backup_path(Path::new("/etc/cubbi/docker/daemon.json"));
        assert!(backup.starts_with("/etc/cubbi/docker"));
        assert!(backup.to_string_lossy().ends_with(".bak"));
    }

    #[test]
    fn commands_for_the_sudo_caller_run_through_runuser() {
        let runner = RecordingRunner::default();
        docker_as(&runner, Some("alice"), &["context", "ls"]).unwrap();
        docker_as(&runner, None, &["context", "ls"]).unwrap();
        assert_eq!(
            runner.commands(),
            ["runuser -u alice -- docker context ls", "docker context ls"]
        );
    }

    #[test]
    fn uninstall_turns_ip_forward_off_again_unless_another_docker_needs_it() {
        let dir = tempfile::tempdir().unwrap();
        let sysctl = dir.path().join("ip_forward");
        let docker0 = dir.path().join("docker0");
        std::fs::write(&sysctl, "1\n").unwrap();
        let note = restore_ip_forward(&sysctl, &docker0).unwrap();
        assert_eq!(std::fs::read_to_string(&sysctl).unwrap(), "0\n");
        assert!(note.is_empty(), "{note}");
        std::fs::write(&sysctl, "1\n").unwrap();
        std::fs::create_dir(&docker0).unwrap();
        let note = restore_ip_forward(&sysctl, &docker0).unwrap();
        assert_eq!(std::fs::read_to_string(&sysctl).unwrap(), "1\n");
        assert!(note.contains("docker0"), "{note}");
    }

    #[test]
    fn the_allow_all_seccomp_profile_is_written_0644_beside_daemon_json_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = EnginePaths::under_root(dir.path());
        sync_seccomp_profile(&paths, true).unwrap();
        assert_eq!(paths.seccomp_profile.parent(), paths.daemon_json.parent());
        assert_eq!(
            std::fs::read_to_string(&paths.seccomp_profile).unwrap(),
            r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#
        );
        let mode = std::fs::metadata(&paths.seccomp_profile)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        // A changed file is put right; without the setting it goes, and twice is no error.
        std::fs::write(&paths.seccomp_profile, "{}").unwrap();
        sync_seccomp_profile(&paths, true).unwrap();
        assert_eq!(
            std::fs::read_to_string(&paths.seccomp_profile).unwrap(),
            super::super::daemon_json::SECCOMP_ALLOW_ALL
        );
        sync_seccomp_profile(&paths, false).unwrap();
        assert!(!paths.seccomp_profile.exists());
        sync_seccomp_profile(&paths, false).unwrap();
    }
}
