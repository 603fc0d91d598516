//! A real dockerd for the tests: reused when `CUBBI_TEST_DOCKER_HOST` names one, otherwise
//! started from Debian's docker.io on a private socket, data-root, exec-root and bridge (never
//! `docker0`, so it coexists with any other dockerd), and stopped when the run ends.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A dockerd the run may use.
pub struct Dockerd {
    pub endpoint: String,
    owned: Option<OwnedDaemon>,
}

/// What the harness started and must take down again.
struct OwnedDaemon {
    child: Child,
    root: PathBuf,
    bridge: String,
}

impl Dockerd {
    pub fn obtain() -> Result<Self, String> {
        if let Ok(endpoint) = std::env::var("CUBBI_TEST_DOCKER_HOST") {
            return Ok(Self {
                endpoint,
                owned: None,
            });
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(
                "starting a private dockerd needs root (or set CUBBI_TEST_DOCKER_HOST \
                        to a running dockerd)"
                    .into(),
            );
        }
        reap_stale_daemons();
        Self::start_private(None, &[])
    }

    /// A dockerd of the caller's own, its data root at `data_root` when given (a file system
    /// a test prepared) or in its private folder, with `extra_args`; stopped by [`Self::stop`].
    pub fn start_private(data_root: Option<&Path>, extra_args: &[&str]) -> Result<Self, String> {
        which("dockerd")
            .ok_or("dockerd is not installed: run install/test.sh, which installs docker.io")?;
        let root = short_temp_dir()?;
        let data_root = data_root.map_or_else(|| root.join("data"), Path::to_path_buf);
        // One bridge per daemon of this run, at most 9 characters (what cubbi's firewall
        // allows an engine's bridge): the pid, and for later daemons how many came before.
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let bridge = match STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
            0 => format!("cbt{}", std::process::id() % 1_000_000),
            nth => format!("cbt{}{}", std::process::id() % 100_000, nth % 10),
        };
        let subnet = free_subnet()?;
        run(Command::new("ip").args(["link", "add", &bridge, "type", "bridge"]))?;
        let owned_bridge = BridgeGuard(bridge.clone());
        run(Command::new("ip").args(["addr", "add", &format!("{subnet}.1/24"), "dev", &bridge]))?;
        run(Command::new("ip").args(["link", "set", &bridge, "up"]))?;
        // Written so a later run can take down what a killed run left behind.
        let _ = std::fs::write(root.join("owner.pid"), std::process::id().to_string());
        let _ = std::fs::write(root.join("bridge"), &bridge);
        let socket = root.join("docker.sock");
        let log = File::create(root.join("dockerd.log")).map_err(|e| e.to_string())?;
        let mut command = Command::new("dockerd");
        // What `cubbi setup` registers: sessions name the runtime themselves on every create.
        if super::sysbox::installed() {
            command.arg(format!(
                "--add-runtime={}={}",
                super::sysbox::RUNTIME,
                super::sysbox::RUNC_PATH
            ));
        }
        let child = command
            .arg(format!("--host=unix://{}", socket.display()))
            .arg(format!("--data-root={}", data_root.display()))
            .arg(format!("--exec-root={}", root.join("exec").display()))
            .arg(format!("--pidfile={}", root.join("docker.pid").display()))
            .arg(format!("--bridge={bridge}"))
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start dockerd: {e}"))?;
        std::mem::forget(owned_bridge);
        let daemon = Self {
            endpoint: format!("unix://{}", socket.display()),
            owned: Some(OwnedDaemon {
                child,
                root,
                bridge,
            }),
        };
        daemon.wait_until_ready(&socket)?;
        Ok(daemon)
    }

    fn wait_until_ready(&self, socket: &Path) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let answered = Command::new("docker")
                .arg(format!("--host=unix://{}", socket.display()))
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if answered {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!(
            "dockerd did not answer within 60 s; log:\n{}",
            self.log_tail()
        ))
    }

    pub fn log_tail(&self) -> String {
        let Some(owned) = &self.owned else {
            return String::new();
        };
        let text = std::fs::read_to_string(owned.root.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops a daemon the harness started; a reused one is left running.
    pub fn stop(self) {
        let Some(owned) = self.owned else {
            return;
        };
        remove_everything(&self.endpoint);
        owned.terminate();
    }

    /// Stops the daemon as a host shutdown would (SIGTERM: its containers stop, and they and
    /// its data are kept) and starts another on `data_root`, which must be the data root this
    /// one was given (outside its own folder, which goes).
    pub fn restart_on(self, data_root: &Path) -> Result<Self, String> {
        let Some(owned) = self.owned else {
            return Err("only a daemon the harness started can be restarted".into());
        };
        owned.terminate();
        Self::start_private(Some(data_root), &[])
    }
}

impl OwnedDaemon {
    /// SIGTERM, up to 30 s for dockerd to stop its containers, then its bridge and folder go.
    fn terminate(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(BridgeGuard(self.bridge));
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Stops daemons, bridges and folders of earlier runs whose test process is gone (a run that
/// was killed never reaches its teardown).
fn reap_stale_daemons() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let root = entry.path();
        let is_ours = root
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("cubbi-dockerd-"));
        if !is_ours {
            continue;
        }
        let read_pid = |file: &str| {
            std::fs::read_to_string(root.join(file))
                .ok()
                .and_then(|text| text.trim().parse::<i32>().ok())
        };
        let alive = |pid: i32| Path::new(&format!("/proc/{pid}")).exists();
        if read_pid("owner.pid").is_some_and(alive) {
            continue;
        }
        if let Some(daemon) = read_pid("docker.pid").filter(|pid| alive(*pid)) {
            remove_everything(&format!("unix://{}", root.join("docker.sock").display()));
            let pid = nix::unistd::Pid::from_raw(daemon);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while alive(daemon) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if let Ok(bridge) = std::fs::read_to_string(root.join("bridge")) {
            drop(BridgeGuard(bridge.trim().to_string()));
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}

/// Removes every container and network of a harness daemon before it stops: dockerd leaves
/// the bridges of user-defined networks behind when it exits, and each holds one of Docker's
/// default address pools until none is left for anybody on this host.
fn remove_everything(endpoint: &str) {
    let docker = |args: &[&str]| {
        Command::new("docker")
            .arg(format!("--host={endpoint}"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .output()
    };
    if let Ok(listed) = docker(&["ps", "-aq"]) {
        let ids = String::from_utf8_lossy(&listed.stdout).into_owned();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-fv"];
            args.extend(ids);
            let _ = docker(&args);
        }
    }
    let _ = docker(&["network", "prune", "-f"]);
}

/// Removes the harness's bridge, also when start-up fails half-way.
struct BridgeGuard(String);

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "delete", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// Unix socket paths are limited to 108 bytes, so the daemon lives under a short /tmp path.
fn short_temp_dir() -> Result<PathBuf, String> {
    let dir = tempfile::Builder::new()
        .prefix("cubbi-dockerd-")
        .tempdir_in("/tmp")
        .map_err(|e| format!("cannot make a temp dir: {e}"))?;
    Ok(dir.keep())
}

/// A /24 in 10.213.0.0/16 that no route on this host covers yet.
fn free_subnet() -> Result<String, String> {
    let routes = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .map_err(|e| format!("cannot run ip route: {e}"))?;
    let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
    let start = std::process::id() % 200;
    (0..200)
        .map(|offset| format!("10.213.{}", (start + offset) % 200 + 20))
        .find(|prefix| !routes.contains(&format!("{prefix}.")))
        .ok_or_else(|| "no free /24 in 10.213.0.0/16 for the test bridge".into())
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}
