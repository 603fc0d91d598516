//! The `cubbi-serve.service` unit: its source lives in `systemd-units/host/` and is embedded in
//! the binary, with the path of the cubbi binary filled in at setup.

use std::path::Path;

/// The unit source, with `@CUBBI@`.
pub const SERVE_UNIT_TEMPLATE: &str =
    include_str!("../../../systemd-units/host/cubbi-serve.service");

/// The unit running `cubbi` (the binary that ran setup) as `cubbi serve`.
pub fn render(cubbi: &Path) -> String {
    SERVE_UNIT_TEMPLATE.replace("@CUBBI@", &cubbi.display().to_string())
}

/// Folders the unit hides from the service (ProtectHome, PrivateTmp): a cubbi binary under one
/// of them cannot be started by it.
const HIDDEN_FROM_THE_SERVICE: &[&str] = &["/home", "/root", "/run/user", "/tmp", "/var/tmp"];

/// Why the service could not run `cubbi` from where it is, if it could not.
pub fn binary_unreachable(cubbi: &Path) -> Option<String> {
    if !cubbi.is_absolute() {
        return Some(format!("{} is not an absolute path", cubbi.display()));
    }
    HIDDEN_FROM_THE_SERVICE
        .iter()
        .find(|hidden| cubbi.starts_with(hidden))
        .map(|hidden| {
            format!(
                "{} is under {hidden}, which the hardened unit hides from the service: install \
                 cubbi outside it (e.g. /usr/local/bin/cubbi) and run that binary's setup",
                cubbi.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directives(unit: &str) -> Vec<&str> {
        unit.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with('['))
            .collect()
    }

    #[test]
    fn renders_the_binary_and_every_hardening_directive() {
        let unit = render(Path::new("/usr/local/bin/cubbi"));
        assert!(!unit.contains('@'), "{unit}");
        let lines = directives(&unit);
        for wanted in [
            "After=network-online.target cubbi-docker.service",
            "Requires=cubbi-docker.service",
            "User=cubbi-serve",
            "Group=cubbi-serve",
            "SupplementaryGroups=cubbi",
            "ExecStart=/usr/local/bin/cubbi serve --config /etc/cubbi/service.toml",
            "StateDirectory=cubbi",
            "StateDirectoryMode=0700",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectKernelLogs=yes",
            "ProtectControlGroups=yes",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
            "RestrictNamespaces=yes",
            "LockPersonality=yes",
            "MemoryDenyWriteExecute=yes",
            "RestrictRealtime=yes",
            "RestrictSUIDSGID=yes",
            "SystemCallArchitectures=native",
            "CapabilityBoundingSet=",
            "ReadWritePaths=/run/cubbi",
            "Restart=on-failure",
            "KillSignal=SIGTERM",
            "TimeoutStopSec=30",
            "LimitNOFILE=65536",
            "WantedBy=multi-user.target",
        ] {
            assert!(lines.contains(&wanted), "missing `{wanted}` in:\n{unit}");
        }
        // No capability comes back in, and nothing runs as root.
        assert!(
            !lines
                .iter()
                .any(|line| line.starts_with("AmbientCapabilities")),
            "{unit}"
        );
        assert!(!lines.contains(&"User=root"), "{unit}");
    }

    #[test]
    fn the_paths_match_the_constants() {
        let unit = render(Path::new("/usr/bin/cubbi"));
        assert!(unit.contains(&format!("--config {}", super::super::SERVICE_CONFIG)));
        assert!(unit.contains(&format!("User={}", super::super::SERVE_USER)));
        assert!(unit.contains(&format!(
            "ReadWritePaths={}",
            crate::local::ports::SYSTEM_LOCK_DIR
        )));
        assert!(unit.contains(&format!(
            "SupplementaryGroups={}",
            crate::engine::SOCKET_GROUP
        )));
        assert!(unit.contains(&format!("Requires={}", crate::engine::UNIT_NAME)));
    }

    #[test]
    fn a_binary_the_unit_cannot_see_is_named() {
        assert_eq!(binary_unreachable(Path::new("/usr/local/bin/cubbi")), None);
        assert_eq!(binary_unreachable(Path::new("/opt/cubbi/bin/cubbi")), None);
        for hidden in [
            "/home/alice/.cargo/bin/cubbi",
            "/root/cubbi",
            "/tmp/cubbi",
            "cubbi",
        ] {
            assert!(binary_unreachable(Path::new(hidden)).is_some(), "{hidden}");
        }
        // A prefix of a name is not the folder.
        assert_eq!(binary_unreachable(Path::new("/homes/cubbi")), None);
    }
}
