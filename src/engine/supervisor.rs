//! The supervised engine for hosts where systemd is not PID 1 (containers, CI, WSL): the same
//! dockerd with the same daemon.json, started detached in its own session, found again through
//! its pidfile, and stopped with SIGTERM and a deadline.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;

use super::EnginePaths;
use super::runner::{CommandError, CommandRunner};
use super::settings::EngineSettings;
use super::subnet;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot start {dockerd}: {source}")]
    Spawn {
        dockerd: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the log file {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("dockerd exited during start-up; the end of {log}:\n{tail}")]
    ExitedEarly { log: PathBuf, tail: String },
    #[error("dockerd did not answer on {socket} within {seconds} s; the end of {log}:\n{tail}")]
    NotReady {
        socket: PathBuf,
        seconds: u64,
        log: PathBuf,
        tail: String,
    },
    #[error("cannot signal dockerd (pid {pid}): {reason}")]
    Signal { pid: i32, reason: String },
    #[error("cannot set up the bridge {bridge}: {source}")]
    Bridge {
        bridge: String,
        source: CommandError,
    },
    #[error("cannot create {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Whether the engine's dockerd runs, from its pidfile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum EngineStatus {
    Running { pid: i32 },
    Stopped,
}

/// The pid in `pidfile` when that process is alive and is a dockerd (a stale pidfile whose pid
/// was reused by something else must not be signalled).
pub fn status(pidfile: &Path) -> EngineStatus {
    let pid = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        .filter(|pid| *pid > 0);
    match pid {
        Some(pid) if is_live_dockerd(pid) => EngineStatus::Running { pid },
        _ => EngineStatus::Stopped,
    }
}

fn is_live_dockerd(pid: i32) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let comm = std::fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
    let stat = std::fs::read_to_string(proc_dir.join("stat")).unwrap_or_default();
    comm.trim() == "dockerd" && !is_zombie(&stat)
}

/// A zombie has exited; only its parent has not reaped it yet (an init that never reaps, in a
/// container, leaves it forever).
fn is_zombie(proc_stat: &str) -> bool {
    proc_stat
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('Z'))
}

/// Makes the bridge daemon.json names, with its address, and brings it up (idempotent).
pub fn ensure_bridge(
    runner: &dyn CommandRunner,
    settings: &EngineSettings,
) -> Result<(), SupervisorError> {
    let bridge = settings.bridge.as_str();
    let fail = |source| SupervisorError::Bridge {
        bridge: bridge.to_string(),
        source,
    };
    let address = subnet::gateway(&settings.subnet)
        .map(|net| net.to_string())
        .unwrap_or_default();
    if !runner
        .output("ip", &["link", "show", "dev", bridge])
        .map_err(fail)?
        .success
    {
        runner
            .run("ip", &["link", "add", "name", bridge, "type", "bridge"])
            .map_err(fail)?;
    }
    let addresses = runner
        .output("ip", &["-4", "-o", "address", "show", "dev", bridge])
        .map_err(fail)?;
    if !addresses.stdout.contains(&format!(" {address} ")) {
        runner
            .run("ip", &["address", "add", &address, "dev", bridge])
            .map_err(fail)?;
    }
    runner
        .run("ip", &["link", "set", bridge, "up"])
        .map_err(fail)?;
    Ok(())
}

/// The bridges of the engine's networks (`ENGINE` plus a hash, or the old `ENGINEn`), as
/// `ip -o link show type bridge` lists them: dockerd leaves them up when it stops.
pub fn network_bridges(
    runner: &dyn CommandRunner,
    engine_bridge: &str,
) -> Result<Vec<String>, SupervisorError> {
    let listed = runner
        .output("ip", &["-o", "link", "show", "type", "bridge"])
        .map_err(|source| SupervisorError::Bridge {
            bridge: engine_bridge.to_string(),
            source,
        })?;
    Ok(network_bridges_in(&listed.stdout, engine_bridge))
}

fn network_bridges_in(listing: &str, engine_bridge: &str) -> Vec<String> {
    let legacy = crate::local::naming::legacy_network_bridge_name(engine_bridge);
    let hashed_len = 15usize.saturating_sub(engine_bridge.len());
    listing
        .lines()
        .filter_map(|line| line.split(':').nth(1))
        .map(|name| {
            name.trim()
                .split('@')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .filter(|name| {
            *name == legacy
                || name.strip_prefix(engine_bridge).is_some_and(|hash| {
                    hash.len() == hashed_len && hash.chars().all(|c| c.is_ascii_hexdigit())
                })
        })
        .collect()
}

/// Removes the bridge when it exists.
pub fn remove_bridge(runner: &dyn CommandRunner, bridge: &str) -> Result<bool, SupervisorError> {
    let fail = |source| SupervisorError::Bridge {
        bridge: bridge.to_string(),
        source,
    };
    if runner
        .output("ip", &["link", "show", "dev", bridge])
        .map_err(fail)?
        .success
    {
        let deleted = runner
            .output("ip", &["link", "delete", bridge])
            .map_err(fail)?;
        // Something else (the unit's ExecStopPost) may delete it between the two commands.
        if !deleted.success
            && runner
                .output("ip", &["link", "show", "dev", bridge])
                .map_err(fail)?
                .success
        {
            return Err(fail(CommandError::Failed {
                command: format!("ip link delete {bridge}"),
                status: "non-zero exit".into(),
                stderr: deleted.stderr,
            }));
        }
        Ok(true)
    } else {
        Ok(false)
    }
}

/// Starts dockerd detached and waits until its socket answers. Returns the pid.
pub async fn start(
    paths: &EnginePaths,
    dockerd: &Path,
    timeout: Duration,
) -> Result<i32, SupervisorError> {
    for folder in [&paths.config_dir, &parent_of(&paths.log_file)] {
        std::fs::create_dir_all(folder).map_err(|source| SupervisorError::Folder {
            path: folder.clone(),
            source,
        })?;
    }
    let log_error = |source| SupervisorError::Log {
        path: paths.log_file.clone(),
        source,
    };
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log_file)
        .map_err(log_error)?;
    let mut command = Command::new(dockerd);
    command
        .arg(format!("--config-file={}", paths.daemon_json.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(log_error)?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent; it detaches dockerd
    // from cubbi's terminal and session so it outlives the command that started it.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command.spawn().map_err(|source| SupervisorError::Spawn {
        dockerd: dockerd.to_path_buf(),
        source,
    })?;
    let pid = child.id() as i32;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return Err(SupervisorError::ExitedEarly {
                log: paths.log_file.clone(),
                tail: log_tail(&paths.log_file),
            });
        }
        if crate::docker::connect(&paths.endpoint()).await.is_ok() {
            return Ok(pid);
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            return Err(SupervisorError::NotReady {
                socket: paths.socket.clone(),
                seconds: timeout.as_secs(),
                log: paths.log_file.clone(),
                tail: log_tail(&paths.log_file),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How a stop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopOutcome {
    NotRunning,
    Stopped,
    /// It ignored SIGTERM past the deadline and was killed.
    Killed,
}

/// SIGTERM, then up to `timeout` for dockerd to stop its containers and exit, then SIGKILL.
pub async fn stop(pidfile: &Path, timeout: Duration) -> Result<StopOutcome, SupervisorError> {
    let EngineStatus::Running { pid } = status(pidfile) else {
        return Ok(StopOutcome::NotRunning);
    };
    let signal = |sig: Signal| {
        kill(Pid::from_raw(pid), sig).map_err(|err| SupervisorError::Signal {
            pid,
            reason: err.to_string(),
        })
    };
    signal(Signal::SIGTERM)?;
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if !is_live_dockerd(pid) {
            return Ok(StopOutcome::Stopped);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    signal(Signal::SIGKILL)?;
    Ok(StopOutcome::Killed)
}

/// The last lines of the log, for error messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn parent_of(path: &Path) -> PathBuf {
    path.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_bridges_are_the_engine_prefix_plus_a_hash() {
        let listing = "3: cubbi0: <BROADCAST> mtu 1500\n\
                       4: cubbi0n: <BROADCAST> mtu 1500\n\
                       5: cubbi0a1b2c3d4e: <BROADCAST> mtu 1500\n\
                       6: cubbi01: <BROADCAST> mtu 1500\n\
                       7: cubbi0zzzzzzzzz: <BROADCAST> mtu 1500\n\
                       8: docker0: <BROADCAST> mtu 1500\n";
        assert_eq!(
            network_bridges_in(listing, "cubbi0"),
            vec!["cubbi0n".to_string(), "cubbi0a1b2c3d4e".to_string()]
        );
    }
    use crate::engine::runner::fake::RecordingRunner;

    #[test]
    fn a_missing_or_foreign_pidfile_means_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("docker.pid");
        assert_eq!(status(&pidfile), EngineStatus::Stopped);
        // Our own pid is alive but is not a dockerd: never treat it as the engine.
        std::fs::write(&pidfile, std::process::id().to_string()).unwrap();
        assert_eq!(status(&pidfile), EngineStatus::Stopped);
        std::fs::write(&pidfile, "garbage").unwrap();
        assert_eq!(status(&pidfile), EngineStatus::Stopped);
    }

    #[test]
    fn zombies_are_not_running() {
        assert!(is_zombie("1234 (dockerd) Z 1 1234 1234 0 -1"));
        assert!(!is_zombie("1234 (dockerd) S 1 1234 1234 0 -1"));
        assert!(is_zombie("1234 (odd) name) Z 1"));
    }

    #[test]
    fn the_bridge_is_made_only_when_missing() {
        let settings = EngineSettings::new("cubbi0".into(), "10.214.3.0/24".parse().unwrap(), true);
        let missing = RecordingRunner::default()
            .answering("ip link show", false, "")
            .answering("ip -4 -o address show", true, "");
        ensure_bridge(&missing, &settings).unwrap();
        assert_eq!(
            missing.commands(),
            [
                "ip link show dev cubbi0",
                "ip link add name cubbi0 type bridge",
                "ip -4 -o address show dev cubbi0",
                "ip address add 10.214.3.1/24 dev cubbi0",
                "ip link set cubbi0 up",
            ]
        );
        let present = RecordingRunner::default().answering(
            "ip -4 -o address show",
            true,
            "5: cubbi0    inet 10.214.3.1/24 scope global cubbi0\\       valid_lft forever",
        );
        ensure_bridge(&present, &settings).unwrap();
        assert_eq!(
            present.commands(),
            [
                "ip link show dev cubbi0",
                "ip -4 -o address show dev cubbi0",
                "ip link set cubbi0 up",
            ]
        );
    }

    #[test]
    fn removing_the_bridge_fails_only_when_it_is_still_there() {
        let gone = RecordingRunner::default().answering("ip link show", false, "");
        assert!(!remove_bridge(&gone, "cubbi0").unwrap());
        assert_eq!(gone.commands(), ["ip link show dev cubbi0"]);
        let stuck = RecordingRunner::default().answering("ip link delete", false, "");
        let err = remove_bridge(&stuck, "cubbi0").unwrap_err();
        assert!(err.to_string().contains("ip link delete cubbi0"), "{err}");
        assert_eq!(
            stuck.commands(),
            [
                "ip link show dev cubbi0",
                "ip link delete cubbi0",
                "ip link show dev cubbi0"
            ]
        );
    }
}
