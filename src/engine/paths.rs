//! Where the dedicated endpoint keeps its files. The system defaults come from the design; every
//! path moves under one folder with `--engine-root` / `CUBBI_ENGINE_ROOT`, so tests (and people
//! trying cubbi out) run a private engine without touching `/var/run` or `/etc`.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Environment variable that relocates every engine path under one folder.
pub const ENGINE_ROOT_ENV: &str = "CUBBI_ENGINE_ROOT";

/// The allow-everything seccomp profile's file name, beside daemon.json.
pub const SECCOMP_PROFILE_FILE: &str = "seccomp-allow-all.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnginePaths {
    /// Folder holding daemon.json and engine.json.
    pub config_dir: PathBuf,
    pub daemon_json: PathBuf,
    /// cubbi's own settings for the engine (bridge name and address), which daemon.json cannot
    /// hold: dockerd refuses unknown keys.
    pub engine_json: PathBuf,
    /// The engine's firewall as a script (`up`/`down`), run before dockerd starts.
    pub firewall_script: PathBuf,
    /// The seccomp profile that allows every syscall, which daemon.json names on a Swarm node
    /// set up with `--unsafe-runc` (Swarm gives a service no per-task security options).
    pub seccomp_profile: PathBuf,
    pub socket: PathBuf,
    pub data_root: PathBuf,
    pub exec_root: PathBuf,
    /// dockerd's own pidfile; the supervised mode also finds the process through it.
    pub pidfile: PathBuf,
    /// Output of a supervised dockerd (systemd mode logs to the journal).
    pub log_file: PathBuf,
    pub unit_file: PathBuf,
}

impl EnginePaths {
    /// The defaults of a real install (see the design's endpoint table).
    pub fn system() -> Self {
        let config_dir = PathBuf::from("/etc/cubbi/docker");
        Self {
            daemon_json: config_dir.join("daemon.json"),
            engine_json: config_dir.join("engine.json"),
            firewall_script: config_dir.join("firewall.sh"),
            seccomp_profile: config_dir.join(SECCOMP_PROFILE_FILE),
            config_dir,
            socket: PathBuf::from("/var/run/cubbi-docker.sock"),
            data_root: PathBuf::from("/var/lib/cubbi-docker"),
            exec_root: PathBuf::from("/var/run/cubbi-docker"),
            pidfile: PathBuf::from("/var/run/cubbi-docker.pid"),
            log_file: PathBuf::from("/var/log/cubbi-docker.log"),
            unit_file: PathBuf::from("/etc/systemd/system/cubbi-docker.service"),
        }
    }

    /// Every path under `root`. Keep `root` short: a unix socket path may not exceed 107 bytes.
    pub fn under_root(root: &Path) -> Self {
        Self {
            config_dir: root.to_path_buf(),
            daemon_json: root.join("daemon.json"),
            engine_json: root.join("engine.json"),
            firewall_script: root.join("firewall.sh"),
            seccomp_profile: root.join(SECCOMP_PROFILE_FILE),
            socket: root.join("docker.sock"),
            data_root: root.join("data"),
            exec_root: root.join("exec"),
            pidfile: root.join("docker.pid"),
            log_file: root.join("dockerd.log"),
            unit_file: root.join("cubbi-docker.service"),
        }
    }

    /// `--engine-root` (or `CUBBI_ENGINE_ROOT`, which clap merges) when given, else the system.
    pub fn resolve(engine_root: Option<&Path>) -> Self {
        match engine_root {
            Some(root) => Self::under_root(root),
            None => Self::system(),
        }
    }

    /// Whether these are the system paths, where systemd may manage the engine.
    pub fn is_system(&self) -> bool {
        *self == Self::system()
    }

    /// The endpoint URL clients use.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_moves_every_path_under_it() {
        let paths = EnginePaths::under_root(Path::new("/tmp/e"));
        for path in [
            &paths.daemon_json,
            &paths.engine_json,
            &paths.seccomp_profile,
            &paths.socket,
            &paths.data_root,
            &paths.exec_root,
            &paths.pidfile,
            &paths.log_file,
            &paths.unit_file,
        ] {
            assert!(path.starts_with("/tmp/e"), "{}", path.display());
        }
        assert!(!paths.is_system());
        assert_eq!(paths.endpoint(), "unix:///tmp/e/docker.sock");
    }

    #[test]
    fn system_paths_match_the_design() {
        let paths = EnginePaths::resolve(None);
        assert!(paths.is_system());
        assert_eq!(paths.endpoint(), crate::docker::DEFAULT_ENDPOINT);
        assert_eq!(
            paths.daemon_json,
            Path::new("/etc/cubbi/docker/daemon.json")
        );
    }
}
