//! The user's OpenSSH side of a session: a pinned `known_hosts` line in
//! `~/.config/cubbi/known_hosts` and `~/.ssh/cubbi.d/<name>.conf`, so `ssh cubbi-<name>`, scp,
//! rsync and VS Code Remote-SSH verify the host key on the very first connection.

use std::path::{Path, PathBuf};

use super::SshError;
use super::keys::write_file;
use crate::api::SshEndpoint;

/// Where the files live.
#[derive(Debug, Clone)]
pub struct SshFiles {
    /// `~/.config/cubbi`
    pub config_dir: PathBuf,
    /// `~/.ssh`
    pub ssh_dir: PathBuf,
}

impl SshFiles {
    pub fn for_user() -> Result<Self, SshError> {
        let config_dir = crate::config::paths::config_dir().map_err(|err| SshError::Write {
            path: PathBuf::from("~/.config/cubbi"),
            source: std::io::Error::other(err.to_string()),
        })?;
        let home = dirs::home_dir().ok_or_else(|| SshError::Write {
            path: PathBuf::from("~/.ssh"),
            source: std::io::Error::other("no home directory"),
        })?;
        Ok(Self {
            config_dir,
            ssh_dir: home.join(".ssh"),
        })
    }

    pub fn client_key(&self) -> PathBuf {
        self.config_dir.join("id_cubbi")
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.config_dir.join("known_hosts")
    }

    pub fn session_config(&self, name: &str) -> PathBuf {
        self.ssh_dir.join("cubbi.d").join(format!("{name}.conf"))
    }

    pub fn host_alias(name: &str) -> String {
        format!("cubbi-{name}")
    }

    /// Pins the session's host key and writes its OpenSSH config.
    pub fn write_session(&self, name: &str, endpoint: &SshEndpoint) -> Result<(), SshError> {
        let mut lines = self.known_hosts_without(name)?;
        lines.push(format!(
            "{} {} {}",
            known_hosts_host(&endpoint.host, endpoint.port),
            key_without_comment(&endpoint.host_key),
            Self::host_alias(name)
        ));
        write_file(
            &self.known_hosts(),
            (lines.join("\n") + "\n").as_bytes(),
            0o600,
        )?;
        let config = format!(
            "# Written by cubbi for session {name}; removed by `cubbi session close`.\n\
             Host {alias}\n    HostName {host}\n    Port {port}\n    User {user}\n    \
             IdentityFile {key}\n    IdentitiesOnly yes\n    UserKnownHostsFile {known}\n    \
             StrictHostKeyChecking yes\n",
            alias = Self::host_alias(name),
            host = endpoint.host,
            port = endpoint.port,
            user = endpoint.user,
            key = quote(&self.client_key()),
            known = quote(&self.known_hosts()),
        );
        write_file(&self.session_config(name), config.as_bytes(), 0o600)
    }

    /// Removes the session's known_hosts line and config; missing files are fine.
    pub fn remove_session(&self, name: &str) -> Result<(), SshError> {
        if self.known_hosts().exists() {
            let lines = self.known_hosts_without(name)?;
            let text = if lines.is_empty() {
                String::new()
            } else {
                lines.join("\n") + "\n"
            };
            write_file(&self.known_hosts(), text.as_bytes(), 0o600)?;
        }
        match std::fs::remove_file(self.session_config(name)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(SshError::Write {
                path: self.session_config(name),
                source: err,
            }),
            _ => Ok(()),
        }
    }

    /// Whether `~/.ssh/config` already includes the per-session configs.
    pub fn include_present(&self) -> bool {
        std::fs::read_to_string(self.ssh_dir.join("config"))
            .is_ok_and(|text| text.lines().any(|line| line.trim() == INCLUDE_LINE))
    }

    /// Puts the `Include` first in `~/.ssh/config` (Include must precede any Host block).
    pub fn add_include(&self) -> Result<(), SshError> {
        let path = self.ssh_dir.join("config");
        let existing = std::fs::read_to_string(&path).unwrap_or_default();
        let text = format!("{INCLUDE_LINE}\n\n{existing}");
        write_file(&path, text.as_bytes(), 0o600)
    }

    fn known_hosts_without(&self, name: &str) -> Result<Vec<String>, SshError> {
        let text = match std::fs::read_to_string(self.known_hosts()) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(SshError::Read {
                    path: self.known_hosts(),
                    source,
                });
            }
        };
        let marker = Self::host_alias(name);
        Ok(text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .filter(|line| line.split_whitespace().nth(3) != Some(marker.as_str()))
            .map(str::to_string)
            .collect())
    }
}

pub const INCLUDE_LINE: &str = "Include ~/.ssh/cubbi.d/*.conf";

fn known_hosts_host(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

fn key_without_comment(key: &str) -> String {
    key.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

fn quote(path: &Path) -> String {
    let text = path.display().to_string();
    if text.contains(' ') {
        format!("\"{text}\"")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(port: u16) -> SshEndpoint {
        SshEndpoint {
            host: "127.0.0.1".into(),
            port,
            user: "agent".into(),
            host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake host@x".into(),
        }
    }

    #[test]
    fn writes_and_removes_only_its_own_lines() {
        let dir = tempfile::tempdir().unwrap();
        let files = SshFiles {
            config_dir: dir.path().join("cubbi"),
            ssh_dir: dir.path().join(".ssh"),
        };
        files.write_session("alpha", &endpoint(2300)).unwrap();
        files.write_session("beta", &endpoint(2301)).unwrap();
        let known = std::fs::read_to_string(files.known_hosts()).unwrap();
        assert!(
            known
                .contains("[127.0.0.1]:2300 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake cubbi-alpha"),
            "{known}"
        );
        let config = std::fs::read_to_string(files.session_config("alpha")).unwrap();
        assert!(config.contains("Host cubbi-alpha\n"), "{config}");
        assert!(config.contains("Port 2300") && config.contains("StrictHostKeyChecking yes"));
        files.remove_session("alpha").unwrap();
        let known = std::fs::read_to_string(files.known_hosts()).unwrap();
        assert!(
            !known.contains("cubbi-alpha") && known.contains("cubbi-beta"),
            "{known}"
        );
        assert!(!files.session_config("alpha").exists());
        files.remove_session("alpha").unwrap();
    }

    #[test]
    fn include_goes_first_once() {
        let dir = tempfile::tempdir().unwrap();
        let files = SshFiles {
            config_dir: dir.path().join("cubbi"),
            ssh_dir: dir.path().join(".ssh"),
        };
        std::fs::create_dir_all(&files.ssh_dir).unwrap();
        std::fs::write(files.ssh_dir.join("config"), "Host x\n  User y\n").unwrap();
        assert!(!files.include_present());
        files.add_include().unwrap();
        assert!(files.include_present());
        let text = std::fs::read_to_string(files.ssh_dir.join("config")).unwrap();
        assert!(text.starts_with(INCLUDE_LINE) && text.ends_with("Host x\n  User y\n"));
    }
}
