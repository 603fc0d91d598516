//! The files cubbi puts into a session before it starts (one Docker archive upload): the host
//! key, the user's authorized key, and the session's environment — as files readable only by
//! root and the agent, never as container env that `docker inspect` would show.

use std::collections::BTreeMap;

use super::project::{CREDENTIAL_DIR, CredentialFiles};
use crate::api::ApiError;
use crate::images::metadata::PersistentConfig;

/// uid/gid of the `agent` user in cubbi images.
pub const AGENT_UID: u64 = 1000;

/// What goes into the container.
pub struct SessionFiles<'a> {
    /// The host key's private and public halves; `None` for a claimed pool member, which
    /// keeps the key it booted with.
    pub host_key: Option<(&'a str, &'a str)>,
    pub authorized_key: &'a str,
    pub env: &'a BTreeMap<String, String>,
    pub init: &'a BTreeMap<String, String>,
    pub persistent_configs: &'a [PersistentConfig],
    /// The project's credential files (absolute paths under
    /// [`project::CREDENTIAL_DIR`](super::project::CREDENTIAL_DIR)); empty without one.
    pub project_credentials: &'a CredentialFiles,
    /// The inner dockerd's bridge address (`--bip`, e.g. `172.19.0.1/16`), for a pool member
    /// ([`INNER_DOCKER_BRIDGE_FILE`]); `None`: dockerd picks one free at its start.
    pub inner_docker_bridge: Option<&'a str>,
}

/// Where a pool member finds its inner dockerd's bridge address (read by
/// `cubbi-docker-storage` before dockerd starts).
pub const INNER_DOCKER_BRIDGE_FILE: &str = "etc/cubbi/docker-bip";

/// A file or folder in the archive.
struct Entry {
    /// Relative to `/`; a folder when `contents` is `None`.
    path: String,
    mode: u32,
    uid: u64,
    gid: u64,
    contents: Option<String>,
}

/// The tar stream to extract at `/` in the container.
pub fn archive(files: &SessionFiles<'_>) -> Result<Vec<u8>, ApiError> {
    let mut entries = Vec::new();
    if let Some((private, public)) = files.host_key {
        entries.push(Entry {
            path: "etc/ssh/ssh_host_ed25519_key".into(),
            mode: 0o600,
            uid: 0,
            gid: 0,
            contents: Some(private.to_string()),
        });
        entries.push(Entry {
            path: "etc/ssh/ssh_host_ed25519_key.pub".into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            contents: Some(format!("{public}\n")),
        });
    }
    entries.extend([
        Entry {
            path: "home/agent/.ssh".into(),
            mode: 0o700,
            uid: AGENT_UID,
            gid: AGENT_UID,
            contents: None,
        },
        Entry {
            path: "home/agent/.ssh/authorized_keys".into(),
            mode: 0o600,
            uid: AGENT_UID,
            gid: AGENT_UID,
            contents: Some(format!("{}\n", files.authorized_key)),
        },
        Entry {
            path: "etc/cubbi/env".into(),
            mode: 0o640,
            uid: 0,
            gid: AGENT_UID,
            contents: Some(env_file(files.env)?),
        },
        Entry {
            path: "etc/cubbi/init.env".into(),
            mode: 0o600,
            uid: 0,
            gid: 0,
            contents: Some(env_file(files.init)?),
        },
        Entry {
            path: "etc/cubbi/persistent-configs".into(),
            mode: 0o600,
            uid: 0,
            gid: 0,
            contents: Some(persistent_configs_file(files.persistent_configs)),
        },
    ]);
    if let Some(bridge) = files.inner_docker_bridge {
        entries.push(Entry {
            path: INNER_DOCKER_BRIDGE_FILE.into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            contents: Some(format!("{bridge}\n")),
        });
    }
    if !files.project_credentials.files.is_empty() {
        entries.push(Entry {
            path: CREDENTIAL_DIR.trim_start_matches('/').into(),
            mode: 0o700,
            uid: AGENT_UID,
            gid: AGENT_UID,
            contents: None,
        });
    }
    for (path, contents) in &files.project_credentials.files {
        entries.push(Entry {
            path: path.trim_start_matches('/').into(),
            mode: 0o600,
            uid: AGENT_UID,
            gid: AGENT_UID,
            contents: Some(contents.clone()),
        });
    }
    let mut builder = tar::Builder::new(Vec::new());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode);
        header.set_uid(entry.uid);
        header.set_gid(entry.gid);
        header.set_mtime(now);
        match entry.contents {
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder
                    .append_data(&mut header, format!("{}/", entry.path), std::io::empty())
                    .map_err(archive_error)?;
            }
            Some(data) => {
                header.set_size(data.len() as u64);
                builder
                    .append_data(&mut header, &entry.path, data.as_bytes())
                    .map_err(archive_error)?;
            }
        }
    }
    builder.into_inner().map_err(archive_error)
}

fn archive_error(err: std::io::Error) -> ApiError {
    ApiError::Failed {
        step: "preparing the session's files".into(),
        reason: err.to_string(),
        logs: Vec::new(),
    }
}

/// `KEY=VALUE` lines, as pam_env's `envfile` reads them (`config::env_file` says which values
/// it can carry).
pub fn env_file(env: &BTreeMap<String, String>) -> Result<String, ApiError> {
    crate::config::env_file::render(env).map_err(|err| ApiError::invalid(err.to_string()))
}

/// Whether a variable can reach the session unchanged (`config::env_file::validate`).
pub fn validate_env(key: &str, value: &str) -> Result<(), ApiError> {
    crate::config::env_file::validate(key, value).map_err(|err| ApiError::invalid(err.to_string()))
}

fn persistent_configs_file(configs: &[PersistentConfig]) -> String {
    configs
        .iter()
        .map(|config| {
            let kind = match config.kind {
                crate::images::metadata::PersistentKind::File => "file",
                crate::images::metadata::PersistentKind::Directory => "directory",
            };
            format!("{}\t{}\t{kind}\n", config.source, config.target)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_has_private_modes_and_owners() {
        let env = BTreeMap::from([("OPENAI_API_KEY".to_string(), "sk-1".to_string())]);
        let init = BTreeMap::new();
        let files = SessionFiles {
            host_key: Some(("-----BEGIN OPENSSH PRIVATE KEY-----\n", "ssh-ed25519 AAAA")),
            authorized_key: "ssh-ed25519 BBBB",
            env: &env,
            init: &init,
            persistent_configs: &[],
            project_credentials: &CredentialFiles {
                files: BTreeMap::from([(
                    super::super::project::SSH_KEY_FILE,
                    "PRIVATE".to_string(),
                )]),
            },
            inner_docker_bridge: None,
        };
        let bytes = archive(&files).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let header = entry.header().clone();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            let path = entry
                .path()
                .unwrap()
                .display()
                .to_string()
                .trim_end_matches('/')
                .to_string();
            seen.insert(
                path,
                (
                    header.mode().unwrap(),
                    header.uid().unwrap(),
                    header.gid().unwrap(),
                    text,
                ),
            );
        }
        assert_eq!(seen["etc/ssh/ssh_host_ed25519_key"].0, 0o600);
        assert_eq!(
            seen["etc/cubbi/env"],
            (0o640, 0, 1000, "OPENAI_API_KEY=sk-1\n".to_string())
        );
        assert_eq!(seen["home/agent/.ssh/authorized_keys"].1, 1000);
        assert_eq!(seen["home/agent/.ssh"].0, 0o700);
        assert_eq!(
            seen["home/agent/.ssh/cubbi-project"],
            (0o700, 1000, 1000, String::new())
        );
        assert_eq!(
            seen["home/agent/.ssh/cubbi-project/id_key"],
            (0o600, 1000, 1000, "PRIVATE".to_string())
        );
    }

    #[test]
    fn env_refusals() {
        assert!(validate_env("BAD NAME", "1").is_err());
        assert!(validate_env("1X", "1").is_err());
        assert!(validate_env("X", "a\nEVIL=1").is_err());
        assert!(validate_env("X", "a\0").is_err());
        assert!(validate_env("X", "pass#word").is_err());
        assert!(validate_env("X", "spaces and = signs are fine").is_ok());
    }
}
