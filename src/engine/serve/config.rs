//! `/etc/cubbi/service.toml`: the default setup writes (once; an existing file is never
//! touched), and where the service listens, read back for the health probe.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The config `cubbi setup --service` writes when there is none.
pub const DEFAULT_SERVICE_CONFIG: &str = r#"# cubbi serve: the session API over HTTP. Written by `cubbi setup --service`, which never
# overwrites it; edit it, then `systemctl restart cubbi-serve`. Unknown keys are refused.

# The host folders below which sessions may mount paths, e.g. ["/srv/shared"]. Off (false): a
# session sees only its own volumes. cubbi's state, config and engine folders are never mounted.
allow_host_volumes = false
# Let sessions run under plain runc instead of Sysbox. Off: runc sessions are NOT isolated.
allow_unsafe_runc = false
# The images sessions may boot; empty offers every cubbi image.
images = []

[server]
# Where the HTTP API listens. Keep it on loopback behind a TLS reverse proxy; a port below
# 1024 also needs CAP_NET_BIND_SERVICE in the unit.
host = "127.0.0.1"
port = 3000

[ssh]
# The address session SSH ports are published on.
bind = "0.0.0.0"
# The name clients dial for SSH (default: the host of the URL they reach the API at).
# public_host = "cubbi.example.com"

[docker]
# The dedicated engine `cubbi setup` installed (group cubbi has access).
endpoint = "unix:///var/run/cubbi-docker.sock"
# Each user's sessions join a network of their own, which other users' sessions cannot reach.
# Naming one here puts every user's sessions on it together instead.
# network = "team"

[limits]
# Sessions one user may have at a time.
sessions_per_user = 10

[networks]
# Extra Docker networks sessions may join (every user may join each of them, so they are
# shared between users).
allowed = []

[projects]
# More pinned SSH host keys for git hosts ("HOST KEYTYPE BASE64"); github.com, gitlab.com and
# bitbucket.org ship with cubbi.
known_hosts = []
# The key users' project credentials are sealed with (64 hex characters or base64). Default: a
# key file made at first start in the state folder (/var/lib/cubbi/project.key).
# [projects.storage]
# key = "..."
"#;

/// The mode of the file: root writes it, the service's group reads it, nobody else.
pub const SERVICE_CONFIG_MODE: u32 = 0o640;

/// Where the service listens when the config does not say (the default config's values).
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3000);

/// The address to probe `/healthz` on: `[server] host` and `port` from the config text when it
/// parses, else [`DEFAULT_LISTEN`]. A wildcard host is probed on loopback, which it covers.
pub fn health_address(config: Option<&str>) -> SocketAddr {
    let server = config
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|table| table.get("server").and_then(|s| s.as_table()).cloned());
    let Some(server) = server else {
        return DEFAULT_LISTEN;
    };
    let host = server
        .get("host")
        .and_then(|host| host.as_str())
        .and_then(|host| host.trim_matches(['[', ']']).parse::<IpAddr>().ok())
        .unwrap_or(DEFAULT_LISTEN.ip());
    let host = match host {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    };
    let port = server
        .get("port")
        .and_then(|port| port.as_integer())
        .and_then(|port| u16::try_from(port).ok())
        .unwrap_or(DEFAULT_LISTEN.port());
    SocketAddr::new(host, port)
}

/// Writes `contents` to `path` owned by root:`gid` with [`SERVICE_CONFIG_MODE`], unless `path`
/// exists. Returns whether it wrote. The file appears whole or not at all (a temp file,
/// chowned, then linked into place with a call that refuses an existing target), so a config
/// someone wrote meanwhile is never replaced.
pub fn write_if_absent(path: &Path, contents: &str, gid: u32) -> std::io::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut temp = tempfile::Builder::new()
        .prefix(".cubbi.")
        .permissions(std::fs::Permissions::from_mode(SERVICE_CONFIG_MODE))
        .tempfile_in(dir)?;
    temp.write_all(contents.as_bytes())?;
    temp.as_file().sync_all()?;
    // Owner unchanged (root when setup runs), group the service's.
    std::os::unix::fs::fchown(temp.as_file(), None, Some(gid))?;
    match temp.persist_noclobber(path) {
        Ok(_) => Ok(true),
        Err(err) if err.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(err.error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_is_what_cubbi_serve_reads() {
        let config = crate::service::config::ServiceConfig::parse(
            DEFAULT_SERVICE_CONFIG,
            std::path::Path::new("service.toml"),
        )
        .unwrap();
        assert_eq!(config.listen_address(), DEFAULT_LISTEN);
        assert!(config.allow_host_volumes.is_off() && !config.allow_unsafe_runc);
        assert_eq!(config.limits.sessions_per_user, 10);
    }

    #[test]
    fn the_health_address_comes_from_the_server_section() {
        assert_eq!(health_address(None), DEFAULT_LISTEN);
        assert_eq!(health_address(Some("not = [toml")), DEFAULT_LISTEN);
        assert_eq!(
            health_address(Some("[server]\nhost = \"10.0.0.5\"\nport = 8080\n")),
            "10.0.0.5:8080".parse().unwrap()
        );
        assert_eq!(
            health_address(Some("[server]\nhost = \"0.0.0.0\"\n")),
            "127.0.0.1:3000".parse().unwrap()
        );
        assert_eq!(
            health_address(Some("[server]\nhost = \"::\"\nport = 3001\n")),
            "[::1]:3001".parse().unwrap()
        );
        // A port that is no port keeps the default.
        assert_eq!(
            health_address(Some("[server]\nport = 70000\n")),
            DEFAULT_LISTEN
        );
    }

    #[test]
    fn an_existing_config_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/service.toml");
        let gid = nix::unistd::getgid().as_raw();
        assert!(write_if_absent(&path, DEFAULT_SERVICE_CONFIG, gid).unwrap());
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            DEFAULT_SERVICE_CONFIG
        );
        std::fs::write(&path, "[server]\nport = 4000\n").unwrap();
        assert!(!write_if_absent(&path, DEFAULT_SERVICE_CONFIG, gid).unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "[server]\nport = 4000\n"
        );
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|entry| entry.file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }
}
