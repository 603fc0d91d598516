//! `cubbi engine start | stop | status`: the dedicated dockerd as a supervised process, for
//! hosts where systemd is not PID 1 (and for private engines under `--engine-root`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use ipnet::Ipv4Net;
use serde::Serialize;

use super::{CliError, OutputMode, output};
use crate::engine::daemon_json;
use crate::engine::host::{HostFacts, RealHost};
use crate::engine::runner::SystemRunner;
use crate::engine::settings::{self, EngineSettings};
use crate::engine::supervisor::{self, EngineStatus, StopOutcome};
use crate::engine::{
    self, Desired, EngineError, EnginePaths, SOCKET_GROUP, Wanted, apply, firewall, plan,
};

/// Where the engine's files live; shared by `setup`, `doctor` and `engine`.
#[derive(Debug, Clone, Args)]
pub struct EngineLocation {
    /// Keep every engine file (daemon.json, socket, data-root, exec-root, pidfile, log) under DIR
    /// instead of the system paths. Keep DIR short: socket paths are limited to 107 bytes.
    #[arg(long, env = "CUBBI_ENGINE_ROOT", value_name = "DIR")]
    pub engine_root: Option<PathBuf>,
}

impl EngineLocation {
    pub fn paths(&self) -> EnginePaths {
        EnginePaths::resolve(self.engine_root.as_deref())
    }
}

#[derive(Debug, Args)]
pub struct EngineArgs {
    #[command(subcommand)]
    command: EngineCommand,
}

#[derive(Debug, Subcommand)]
enum EngineCommand {
    /// Start the dedicated dockerd detached (writes daemon.json first when there is none).
    Start(StartArgs),
    /// Stop it: SIGTERM, then SIGKILL after --timeout seconds.
    Stop {
        #[command(flatten)]
        location: EngineLocation,
        /// Seconds to wait for a clean shutdown.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Say whether it runs, and where.
    Status {
        #[command(flatten)]
        location: EngineLocation,
    },
}

#[derive(Debug, Args)]
struct StartArgs {
    #[command(flatten)]
    location: EngineLocation,
    /// The bridge interface to create for the engine (never docker0) when none is recorded yet.
    #[arg(long, env = "CUBBI_ENGINE_BRIDGE", default_value = settings::DEFAULT_BRIDGE)]
    bridge: String,
    /// The bridge's subnet, when none is recorded yet [default: a free /24 in 10.214.0.0/16].
    #[arg(long, value_name = "CIDR")]
    subnet: Option<Ipv4Net>,
    /// Where the engine's other networks take their /24s, when none is recorded yet [default:
    /// 10.214.0.0/16]; refused when it overlaps a host route.
    #[arg(long, value_name = "CIDR")]
    pool: Option<Ipv4Net>,
    /// Seconds to wait for the socket to answer.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

#[derive(Serialize)]
struct StatusReport {
    #[serde(flatten)]
    status: EngineStatus,
    endpoint: String,
    pidfile: PathBuf,
    log_file: PathBuf,
}

pub async fn run(args: EngineArgs, mode: OutputMode) -> Result<ExitCode, CliError> {
    match args.command {
        EngineCommand::Start(start_args) => start(start_args, mode).await,
        EngineCommand::Stop { location, timeout } => {
            require_root("cubbi engine stop")?;
            let paths = location.paths();
            let recorded = EngineSettings::load(&paths.engine_json).map_err(refused)?;
            let outcome = supervisor::stop(&paths.pidfile, Duration::from_secs(timeout))
                .await
                .map_err(|err| refused(err.into()))?;
            if let Some(recorded) = recorded {
                supervisor::remove_bridge(&SystemRunner, &recorded.bridge)
                    .map_err(|err| refused(err.into()))?;
            }
            if mode.json {
                output::print_json(&serde_json::json!({ "outcome": outcome }))?;
            } else {
                println!(
                    "{}",
                    match outcome {
                        StopOutcome::NotRunning => "the engine was not running".to_string(),
                        StopOutcome::Stopped =>
                            format!("stopped the engine on {}", paths.socket.display()),
                        StopOutcome::Killed =>
                            "the engine ignored SIGTERM and was killed".to_string(),
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        EngineCommand::Status { location } => {
            let paths = location.paths();
            let report = StatusReport {
                status: supervisor::status(&paths.pidfile),
                endpoint: paths.endpoint(),
                pidfile: paths.pidfile.clone(),
                log_file: paths.log_file.clone(),
            };
            if mode.json {
                output::print_json(&report)?;
            } else {
                match report.status {
                    EngineStatus::Running { pid } => {
                        println!("running (pid {pid}) on {}", report.endpoint)
                    }
                    EngineStatus::Stopped => println!("stopped ({})", report.endpoint),
                }
            }
            Ok(if matches!(report.status, EngineStatus::Running { .. }) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
    }
}

async fn start(args: StartArgs, mode: OutputMode) -> Result<ExitCode, CliError> {
    require_root("cubbi engine start")?;
    settings::validate_bridge_name(&args.bridge).map_err(refused)?;
    let paths = args.location.paths();
    if let EngineStatus::Running { pid } = supervisor::status(&paths.pidfile) {
        report_started(mode, &paths, pid, true)?;
        return Ok(ExitCode::SUCCESS);
    }
    let facts = HostFacts::gather(&RealHost);
    // Before anything is written: no config, rules or bridge for an engine that cannot run.
    let dockerd = facts.programs.get("dockerd").cloned().ok_or_else(|| {
        CliError::Refused("dockerd is not installed: run `sudo cubbi setup`".into())
    })?;
    let recorded =
        ensure_config(&paths, &facts, &args.bridge, args.subnet, args.pool).map_err(refused)?;
    // dockerd runs without iptables: NAT and the egress guard are cubbi's, put in place first,
    // and without them the engine does not start unless the guard was turned off at setup.
    firewall_before_start(&paths, &facts, &recorded).map_err(refused)?;
    supervisor::ensure_bridge(&SystemRunner, &recorded).map_err(|err| refused(err.into()))?;
    // /run is fresh after a reboot and no systemd re-creates the port lock here.
    if paths.is_system()
        && let Some(group) = nix::unistd::Group::from_name(SOCKET_GROUP).ok().flatten()
        && let Err(err) = crate::local::ports::prepare_system_lock(
            std::path::Path::new(crate::local::ports::SYSTEM_LOCK_DIR),
            group.gid.as_raw(),
        )
    {
        eprintln!("warning: cannot prepare the SSH port lock: {err}");
    }
    let started = supervisor::start(&paths, &dockerd, Duration::from_secs(args.timeout)).await;
    let pid = match started {
        Ok(pid) => pid,
        Err(err) => {
            // Leave no bridge behind when the daemon never came up.
            let _ = supervisor::remove_bridge(&SystemRunner, &recorded.bridge);
            return Err(refused(err.into()));
        }
    };
    report_started(mode, &paths, pid, false)?;
    if let Some(warning) = sysbox_warning(
        &recorded,
        &facts,
        crate::engine::sysbox::daemons_answering(),
    ) {
        eprintln!("warning: {warning}");
    }
    Ok(ExitCode::SUCCESS)
}

/// What keeps sessions from starting under the engine's default runtime, sysbox-runc. cubbi
/// does not supervise sysbox-mgr and sysbox-fs: they serve every engine on the host (one pair
/// per host, fixed sockets), so their lifetime is not this engine's; it says what is missing.
fn sysbox_warning(
    recorded: &EngineSettings,
    facts: &HostFacts,
    (mgr, fs): (bool, bool),
) -> Option<String> {
    use crate::engine::daemon_json::SYSBOX_RUNTIME;
    use crate::engine::sysbox::{FS_SOCKET, MGR_SOCKET};
    if recorded.default_runtime != SYSBOX_RUNTIME {
        return None;
    }
    if !facts.has(SYSBOX_RUNTIME) {
        return Some(
            "sysbox-runc, the engine's default runtime, is not installed: sessions and image \
             builds fail until it is (`sudo cubbi setup`)"
                .into(),
        );
    }
    let down: Vec<String> = [
        (mgr, "sysbox-mgr", MGR_SOCKET),
        (fs, "sysbox-fs", FS_SOCKET),
    ]
    .into_iter()
    .filter(|(answers, ..)| !answers)
    .map(|(_, name, socket)| format!("{name} ({socket})"))
    .collect();
    (!down.is_empty()).then(|| {
        format!(
            "Sysbox is installed but {} not answering, so every sysbox-runc container (sessions, \
             image builds) fails to start: start {} as root (`sysbox-mgr &`, then `sysbox-fs &`; \
             `systemctl start sysbox` where systemd runs), then `cubbi doctor`",
            down.join(" and "),
            if down.len() == 1 { "it" } else { "them" }
        )
    })
}

/// The firewall for `recorded`, applied through the runner (one iptables-restore per family)
/// and written as the script; a refusal when iptables is missing and the guard is on.
fn firewall_before_start(
    paths: &EnginePaths,
    facts: &HostFacts,
    recorded: &EngineSettings,
) -> Result<(), EngineError> {
    if !facts.has("iptables") {
        if recorded.egress_guard {
            return Err(EngineError::Refused(
                "iptables is not installed, and the engine does not start without its firewall \
                 (NAT and the egress guard): `apt-get install iptables`, or turn the guard off \
                 explicitly with `sudo cubbi setup --no-egress-guard`"
                    .into(),
            ));
        }
        eprintln!(
            "warning: iptables is not installed and the egress guard is off, so sessions on \
             this engine get no NAT (apt-get install iptables)"
        );
        return Ok(());
    }
    let nameservers = firewall::host_nameservers();
    let rules = plan::firewall_rules(facts, recorded, &nameservers);
    let teardown = plan::firewall_superset(facts, recorded);
    apply::install_firewall(
        paths,
        &SystemRunner,
        &rules.script(&recorded.bridge, &teardown),
        &rules,
        &teardown,
    )
}

/// daemon.json and engine.json as setup would write them (`engine::desired`, keeping what is
/// recorded), written only when they differ.
fn ensure_config(
    paths: &EnginePaths,
    facts: &HostFacts,
    bridge: &str,
    subnet_wanted: Option<Ipv4Net>,
    pool_wanted: Option<Ipv4Net>,
) -> Result<EngineSettings, EngineError> {
    let recorded = EngineSettings::load(&paths.engine_json)?;
    // A missing group would stop dockerd; setup creates it, a bare `engine start` may not have.
    let group_exists = nix::unistd::Group::from_name(SOCKET_GROUP)
        .ok()
        .flatten()
        .is_some();
    let Desired {
        settings,
        daemon_json: desired,
    } = engine::desired(
        facts,
        paths,
        recorded.as_ref(),
        &Wanted {
            bridge,
            subnet: if recorded.is_some() {
                None
            } else {
                subnet_wanted
            },
            pool: if recorded.is_some() {
                None
            } else {
                pool_wanted
            },
            socket_group: group_exists.then_some(SOCKET_GROUP),
            ..Default::default()
        },
    )?;
    let existing = match std::fs::read_to_string(&paths.daemon_json) {
        Ok(text) => Some(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(EngineError::Read {
                path: paths.daemon_json.clone(),
                source,
            });
        }
    };
    let merged = daemon_json::merge(&paths.daemon_json, existing.as_deref(), &desired)?;
    // The seccomp profile a Swarm node under --unsafe-runc names: dockerd needs the file.
    apply::sync_seccomp_profile(paths, settings.swarm_unsafe_runc)?;
    if merged.changed {
        apply::write_atomically(&paths.daemon_json, &merged.text, 0o644)?;
    }
    if recorded.as_ref() != Some(&settings) {
        apply::write_atomically(&paths.engine_json, &settings.to_json(), 0o644)?;
    }
    Ok(settings)
}

fn report_started(
    mode: OutputMode,
    paths: &EnginePaths,
    pid: i32,
    already: bool,
) -> Result<(), CliError> {
    if mode.json {
        output::print_json(&serde_json::json!({
            "state": "running",
            "pid": pid,
            "already_running": already,
            "endpoint": paths.endpoint(),
            "log_file": paths.log_file,
        }))?;
    } else if already {
        println!(
            "the engine already runs (pid {pid}) on {}",
            paths.endpoint()
        );
    } else {
        println!(
            "started the engine (pid {pid}) on {}\n  log: {}\n  try: docker --host {} info",
            paths.endpoint(),
            paths.log_file.display(),
            paths.endpoint()
        );
    }
    Ok(())
}

/// Commands that change the host say plainly that they need root, before changing anything.
pub fn require_root(command: &str) -> Result<(), CliError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(CliError::Refused(format!(
            "`{command}` changes the system and needs root: run `sudo {command}`"
        )))
    }
}

pub fn refused(err: EngineError) -> CliError {
    CliError::Refused(err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::host::fixture::FixtureHost;

    fn facts(with_sysbox: bool) -> HostFacts {
        let mut host = FixtureHost::debian_with_systemd();
        if with_sysbox {
            host.programs
                .extend(["sysbox-runc", "sysbox-mgr", "sysbox-fs"].map(String::from));
        }
        HostFacts::gather(&host)
    }

    fn settings(runtime: &str) -> EngineSettings {
        let mut settings =
            EngineSettings::new("cubbi0".into(), "10.214.0.0/24".parse().unwrap(), true);
        settings.default_runtime = runtime.into();
        settings
    }

    #[test]
    fn start_says_which_sysbox_daemon_is_down() {
        let sysbox = settings("sysbox-runc");
        assert_eq!(sysbox_warning(&sysbox, &facts(true), (true, true)), None);
        let one = sysbox_warning(&sysbox, &facts(true), (true, false)).unwrap();
        assert!(
            one.contains("sysbox-fs (/run/sysbox/sysfs.sock)") && !one.contains("sysbox-mgr ("),
            "{one}"
        );
        let both = sysbox_warning(&sysbox, &facts(true), (false, false)).unwrap();
        assert!(
            both.contains("sysbox-mgr") && both.contains("start them"),
            "{both}"
        );
        let missing = sysbox_warning(&sysbox, &facts(false), (false, false)).unwrap();
        assert!(missing.contains("not installed"), "{missing}");
        // An engine set up with --unsafe-runc does not need Sysbox.
        assert_eq!(
            sysbox_warning(&settings("runc"), &facts(false), (false, false)),
            None
        );
    }
}
