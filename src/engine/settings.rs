//! cubbi's own record of how the engine was set up (bridge name and subnet), kept in engine.json
//! next to daemon.json so a re-run reuses the same subnet instead of picking a new one.

use std::path::Path;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::EngineError;

/// The dedicated bridge's default name (never `docker0`).
pub const DEFAULT_BRIDGE: &str = "cubbi0";

/// Where the engine's other networks (`cubbi-network`, networks users make) take their /24s:
/// the space the bridge's subnet comes from, outside Docker's default pools.
pub const DEFAULT_POOL: Ipv4Net = super::subnet::ENGINE_SPACE;

fn default_pool() -> Ipv4Net {
    DEFAULT_POOL
}

fn enabled() -> bool {
    true
}

fn sysbox_runtime() -> String {
    super::daemon_json::SYSBOX_RUNTIME.to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    /// The bridge interface dockerd's default network uses; cubbi creates it before dockerd starts.
    pub bridge: String,
    /// The bridge's subnet; the bridge holds its first address.
    pub subnet: Ipv4Net,
    /// The address pool of the engine's other networks (daemon.json `default-address-pools`).
    #[serde(default = "default_pool")]
    pub pool: Ipv4Net,
    /// Whether the firewall includes the egress guard (`setup --no-egress-guard` turns it off).
    #[serde(default = "enabled")]
    pub egress_guard: bool,
    /// The engine's default runtime: sysbox-runc, or runc after `setup --unsafe-runc` on a host
    /// without Sysbox (image builds run under the default runtime).
    #[serde(default = "sysbox_runtime")]
    pub default_runtime: String,
    /// `net.ipv4.ip_forward` before the first setup (dockerd turns it on): `Some(false)` makes
    /// `--uninstall` turn it off again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_forward_before: Option<bool>,
    /// A Swarm node set up with `--unsafe-runc` (and runc the default runtime): the daemon runs
    /// every container with a seccomp profile that allows every syscall and in a private cgroup namespace, since Swarm
    /// gives a service no per-task security options. NOT isolated from the host.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub swarm_unsafe_runc: bool,
}

impl EngineSettings {
    pub fn new(bridge: String, subnet: Ipv4Net, egress_guard: bool) -> Self {
        Self {
            bridge,
            subnet,
            pool: default_pool(),
            egress_guard,
            default_runtime: sysbox_runtime(),
            ip_forward_before: None,
            swarm_unsafe_runc: false,
        }
    }

    /// Whether dockerd must restart to apply `other` (the guard is cubbi's own rules only).
    pub fn same_engine(&self, other: &Self) -> bool {
        self.bridge == other.bridge
            && self.subnet == other.subnet
            && self.pool == other.pool
            && self.default_runtime == other.default_runtime
            && self.swarm_unsafe_runc == other.swarm_unsafe_runc
    }
}

impl EngineSettings {
    /// The recorded settings, or `None` before the first setup.
    pub fn load(path: &Path) -> Result<Option<Self>, EngineError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(EngineError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        serde_json::from_str(&text).map(Some).map_err(|err| {
            EngineError::Refused(format!(
                "{} is not valid (line {}, column {}: {err}); remove it and run setup again",
                path.display(),
                err.line(),
                err.column()
            ))
        })
    }

    pub fn to_json(&self) -> String {
        // Serializing two plain fields cannot fail; fall back to an empty object just in case.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into());
        text.push('\n');
        text
    }
}

/// Whether `name` is a usable Linux interface name for the bridge.
pub fn validate_bridge_name(name: &str) -> Result<(), EngineError> {
    // Each network's bridge is this name plus a hash (Linux allows 15 characters), and the
    // firewall covers and isolates sessions only because their bridges share the prefix.
    let max = crate::local::naming::MAX_ENGINE_BRIDGE;
    let valid = !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name != "docker0";
    if valid {
        Ok(())
    } else {
        Err(EngineError::Refused(format!(
            "`{name}` cannot be the cubbi bridge: use 1-{max} letters, digits, - or _, and not \
             docker0 (each network's bridge adds a hash to the name)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.json");
        assert_eq!(EngineSettings::load(&path).unwrap(), None);
        let settings = EngineSettings::new("cubbi0".into(), "10.214.3.0/24".parse().unwrap(), true);
        std::fs::write(&path, settings.to_json()).unwrap();
        assert_eq!(EngineSettings::load(&path).unwrap(), Some(settings.clone()));
        // A file from before the pool and guard were recorded reads with their defaults.
        std::fs::write(&path, r#"{"bridge": "cubbi0", "subnet": "10.214.3.0/24"}"#).unwrap();
        assert_eq!(EngineSettings::load(&path).unwrap(), Some(settings.clone()));
        // A node-wide unsafe runc is written only when on, and read back.
        let mut unsafe_node = settings.clone();
        unsafe_node.swarm_unsafe_runc = true;
        std::fs::write(&path, unsafe_node.to_json()).unwrap();
        assert!(unsafe_node.to_json().contains("swarm_unsafe_runc"));
        assert!(!settings.to_json().contains("swarm_unsafe_runc"));
        assert_eq!(EngineSettings::load(&path).unwrap(), Some(unsafe_node));
        std::fs::write(&path, "{").unwrap();
        assert!(EngineSettings::load(&path).is_err());
    }

    #[test]
    fn bridge_names_follow_linux_rules_and_never_docker0() {
        assert!(validate_bridge_name("cubbi0").is_ok());
        assert!(validate_bridge_name("docker0").is_err());
        assert!(validate_bridge_name("a-name-too-long-x").is_err());
        assert!(validate_bridge_name("nine-char").is_ok());
        assert!(
            validate_bridge_name("ten-chars-").is_err(),
            "each network's bridge adds a hash of at least 6 characters"
        );
        assert!(validate_bridge_name("bad name").is_err());
    }
}
