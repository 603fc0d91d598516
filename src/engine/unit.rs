//! The `cubbi-docker.service` unit: its source lives in `systemd-units/host/` and is embedded in
//! the binary, with the paths and bridge filled in at setup.

use std::path::Path;

use ipnet::Ipv4Net;

/// The unit source, with `@DOCKERD@`, `@DAEMON_JSON@`, `@IP@`, `@BRIDGE@`, `@BRIDGE_ADDRESS@`,
/// `@FIREWALL@`.
pub const UNIT_TEMPLATE: &str = include_str!("../../systemd-units/host/cubbi-docker.service");

/// What the unit needs to know.
#[derive(Debug, Clone)]
pub struct UnitSettings<'a> {
    pub dockerd: &'a Path,
    pub ip: &'a Path,
    pub daemon_json: &'a Path,
    /// The firewall script (`engine::firewall`), run before dockerd; the engine does not start
    /// without it.
    pub firewall: &'a Path,
    pub bridge: &'a str,
    /// The bridge's own address with prefix, e.g. `10.214.0.1/24`.
    pub bridge_address: Ipv4Net,
}

pub fn render(settings: &UnitSettings<'_>) -> String {
    UNIT_TEMPLATE
        .replace("@DOCKERD@", &settings.dockerd.display().to_string())
        .replace("@DAEMON_JSON@", &settings.daemon_json.display().to_string())
        .replace("@IP@", &settings.ip.display().to_string())
        .replace("@FIREWALL@", &settings.firewall.display().to_string())
        .replace("@BRIDGE_ADDRESS@", &settings.bridge_address.to_string())
        .replace("@BRIDGE@", settings.bridge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_placeholder() {
        let unit = render(&UnitSettings {
            dockerd: Path::new("/usr/sbin/dockerd"),
            ip: Path::new("/usr/sbin/ip"),
            daemon_json: Path::new("/etc/cubbi/docker/daemon.json"),
            firewall: Path::new("/etc/cubbi/docker/firewall.sh"),
            bridge: "cubbi0",
            bridge_address: "10.214.0.1/24".parse().unwrap(),
        });
        assert!(!unit.contains('@'), "{unit}");
        assert!(
            unit.contains(
                "ExecStart=/usr/sbin/dockerd --config-file=/etc/cubbi/docker/daemon.json"
            )
        );
        assert!(unit.contains("ExecStartPre=-/usr/sbin/ip address add 10.214.0.1/24 dev cubbi0"));
        assert!(unit.contains("ExecStopPost=-/usr/sbin/ip link delete cubbi0"));
        assert!(unit.contains("Type=notify"));
        // Fail closed: no script, no engine.
        assert!(unit.contains(
            "ExecStartPre=/bin/sh -c 'test -e /etc/cubbi/docker/firewall.sh || { echo \"cubbi: \
             /etc/cubbi/docker/firewall.sh is missing, and the engine does not start without its \
             firewall: run sudo cubbi setup\" >&2; exit 1; }; exec /bin/sh \
             /etc/cubbi/docker/firewall.sh up'"
        ));
        assert!(
            !unit.contains("test ! -e"),
            "a missing script must not be skipped"
        );
        assert!(!unit.contains("docker0"));
        assert!(!unit.contains("/etc/docker/"));
    }
}
