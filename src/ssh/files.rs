//! The user's OpenSSH side of a session: `~/.ssh/cubbi.d/<name>.known_hosts` (the pinned host
//! key) and `~/.ssh/cubbi.d/<name>.conf`, so `ssh cubbi-<name>`, scp, rsync and VS Code
//! Remote-SSH verify the host key on the very first connection.
//!
//! Every session has files of its own, so parallel creates and closes never read-modify-write
//! a shared file (an earlier single `~/.config/cubbi/known_hosts` lost lines that way). Lines a
//! previous version left in that file are harmless: no config refers to it any more.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::SshError;
use super::checked::{self, CheckedEndpoint};
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

    /// The single known_hosts file of earlier versions; read by nothing now, never written.
    pub fn legacy_known_hosts(&self) -> PathBuf {
        self.config_dir.join("known_hosts")
    }

    /// `~/.ssh/cubbi.d/<name>.known_hosts`: the session's pinned host key, alone in its file.
    pub fn session_known_hosts(&self, name: &str) -> PathBuf {
        self.ssh_dir
            .join("cubbi.d")
            .join(format!("{name}.known_hosts"))
    }

    pub fn session_config(&self, name: &str) -> PathBuf {
        self.ssh_dir.join("cubbi.d").join(format!("{name}.conf"))
    }

    pub fn host_alias(name: &str) -> String {
        format!("cubbi-{name}")
    }

    /// Pins the session's host key and writes its OpenSSH config. Both files belong to this
    /// session alone and are replaced atomically, so concurrent creates cannot lose lines.
    /// A name, host, user or key that could leave `cubbi.d` or add a directive is refused
    /// (whoever checked it before: this is the last place before the files).
    pub fn write_session(&self, name: &str, endpoint: &SshEndpoint) -> Result<(), SshError> {
        self.write_session_via(name, endpoint, Route::Direct)
    }

    /// [`Self::write_session`] for a session OpenSSH reaches by `route`. Through a service
    /// (`Route::Proxy`) the pin is filed under the `HostKeyAlias` `cubbi-<name>`, so the
    /// host key is checked as strictly as over TCP.
    pub fn write_session_via(
        &self,
        name: &str,
        endpoint: &SshEndpoint,
        route: Route<'_>,
    ) -> Result<(), SshError> {
        let name = checked::check_name(name)?;
        let endpoint = CheckedEndpoint::parse(endpoint)?;
        let alias = Self::host_alias(name.as_str());
        let proxy = match route {
            Route::Direct => None,
            Route::Proxy { remote, id } => Some(format!(
                "{} -r {} ssh-proxy {}",
                cubbi_program(),
                checked::check_proxy_word(remote)?,
                checked::check_proxy_word(id)?
            )),
        };
        let pinned_as = match proxy {
            Some(_) => alias.clone(),
            None => known_hosts_host(&endpoint.host, endpoint.port),
        };
        let known = format!("{pinned_as} {} {alias}\n", endpoint.host_key);
        write_file(
            &self.session_known_hosts(name.as_str()),
            known.as_bytes(),
            0o600,
        )?;
        write_file(
            &self.session_config(name.as_str()),
            self.session_config_text(name.as_str(), &endpoint, proxy.as_deref())
                .as_bytes(),
            0o600,
        )
    }

    /// The Host block. OpenSSH takes the first value it finds for an option, and the Include
    /// goes first in ~/.ssh/config, so these win over a user's `Host *` defaults: no agent or
    /// X11 forwarding into a sandbox whose user has sudo, and no known_hosts but the pin.
    fn session_config_text(
        &self,
        name: &str,
        endpoint: &CheckedEndpoint,
        proxy: Option<&str>,
    ) -> String {
        let through = proxy
            .map(|command| {
                // The service closes a tunnel idle for 30 minutes; OpenSSH's keepalive keeps
                // a live but quiet shell open, as over TCP.
                format!(
                    "    HostKeyAlias {alias}\n    ProxyCommand {command}\n    \
                     ServerAliveInterval 60\n",
                    alias = Self::host_alias(name)
                )
            })
            .unwrap_or_default();
        format!(
            "# Written by cubbi for session {name}; removed by `cubbi session close`.\n\
             Host {alias}\n    HostName {host}\n    Port {port}\n    User {user}\n    \
             IdentityFile {key}\n    IdentitiesOnly yes\n    UserKnownHostsFile {known}\n    \
             GlobalKnownHostsFile /dev/null\n    StrictHostKeyChecking yes\n    \
             UpdateHostKeys no\n    ForwardAgent no\n    ForwardX11 no\n{through}",
            alias = Self::host_alias(name),
            host = endpoint.host,
            port = endpoint.port,
            user = endpoint.user,
            key = quote(&self.client_key()),
            known = quote(&self.session_known_hosts(name)),
        )
    }

    /// Removes the session's known_hosts and config; missing files are fine.
    /// A name that is not a session name is refused: it could name a file outside `cubbi.d`.
    pub fn remove_session(&self, name: &str) -> Result<(), SshError> {
        let name = checked::check_name(name)?;
        let name = name.as_str();
        for path in [self.session_known_hosts(name), self.session_config(name)] {
            match std::fs::remove_file(&path) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    return Err(SshError::Write { path, source: err });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether `~/.ssh/config` already includes the per-session configs.
    pub fn include_present(&self) -> bool {
        std::fs::read_to_string(self.ssh_dir.join("config"))
            .is_ok_and(|text| text.lines().any(|line| line.trim() == INCLUDE_LINE))
    }

    /// Puts the `Include` first in `~/.ssh/config` (Include must precede any Host block).
    ///
    /// A symlinked config (stow, home-manager) is written through: the link's target is
    /// replaced atomically in its own folder, with its mode, and the link stays. A config that
    /// cannot be read, is not UTF-8, is not a regular file or is a dangling link is left alone:
    /// the error says which line to add by hand.
    pub fn add_include(&self) -> Result<(), SshError> {
        let path = self.ssh_dir.join("config");
        let refuse = |reason: String| SshError::IncludeRefused {
            path: path.clone(),
            reason,
        };
        let metadata = match std::fs::symlink_metadata(&path) {
            Ok(metadata) => metadata,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let text = format!("{INCLUDE_LINE}\n");
                return write_file(&path, text.as_bytes(), 0o600);
            }
            Err(err) => return Err(refuse(format!("cannot inspect it ({err})"))),
        };
        let target = if metadata.file_type().is_symlink() {
            std::fs::canonicalize(&path).map_err(|err| {
                refuse(format!(
                    "it is a symlink whose target cannot be resolved ({err})"
                ))
            })?
        } else {
            path.clone()
        };
        let target_metadata = std::fs::metadata(&target)
            .map_err(|err| refuse(format!("cannot inspect {} ({err})", target.display())))?;
        if !target_metadata.is_file() {
            return Err(refuse(format!(
                "{} is not a regular file",
                target.display()
            )));
        }
        let bytes = std::fs::read(&target)
            .map_err(|err| refuse(format!("cannot read {} ({err})", target.display())))?;
        let existing = String::from_utf8(bytes)
            .map_err(|_| refuse(format!("{} is not UTF-8 text", target.display())))?;
        let mode = target_metadata.permissions().mode() & 0o7777;
        let text = format!("{INCLUDE_LINE}\n\n{existing}");
        crate::atomic_file::write(&target, text.as_bytes(), mode, 0o700).map_err(|source| {
            SshError::Write {
                path: target.clone(),
                source,
            }
        })
    }
}

pub const INCLUDE_LINE: &str = "Include ~/.ssh/cubbi.d/*.conf";

/// How OpenSSH reaches a session.
#[derive(Debug, Clone, Copy)]
pub enum Route<'a> {
    /// The session's SSH port.
    Direct,
    /// `cubbi -r REMOTE ssh-proxy ID` through the service's HTTPS port.
    Proxy { remote: &'a str, id: &'a str },
}

/// This cubbi's own path for the ProxyCommand (OpenSSH may run with another `PATH`), or
/// plain `cubbi` when the path has characters a shell would read.
fn cubbi_program() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|path| path.to_str().map(str::to_string))
        .filter(|path| {
            path.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+'))
        })
        .unwrap_or_else(|| "cubbi".to_string())
}

fn known_hosts_host(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
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
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn endpoint(port: u16) -> SshEndpoint {
        SshEndpoint {
            host: "127.0.0.1".into(),
            port,
            user: "agent".into(),
            host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAv6DsKRDHwOfHjfUK0cw6GU8eYuf7ZEu6h7mU/A+NFp host@x".into(),
            proxy: false,
        }
    }

    fn files_in(dir: &Path) -> SshFiles {
        SshFiles {
            config_dir: dir.join("cubbi"),
            ssh_dir: dir.join(".ssh"),
        }
    }

    #[test]
    fn writes_and_removes_only_its_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path());
        files.write_session("alpha", &endpoint(2300)).unwrap();
        files.write_session("beta", &endpoint(2301)).unwrap();
        let known = std::fs::read_to_string(files.session_known_hosts("alpha")).unwrap();
        assert_eq!(
            known,
            "[127.0.0.1]:2300 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAv6DsKRDHwOfHjfUK0cw6GU8eYuf7ZEu6h7mU/A+NFp cubbi-alpha\n"
        );
        let mode = std::fs::metadata(files.session_known_hosts("alpha"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let config = std::fs::read_to_string(files.session_config("alpha")).unwrap();
        assert!(config.contains("Host cubbi-alpha\n"), "{config}");
        assert!(config.contains("Port 2300") && config.contains("StrictHostKeyChecking yes"));
        files.remove_session("alpha").unwrap();
        assert!(!files.session_config("alpha").exists());
        assert!(!files.session_known_hosts("alpha").exists());
        assert!(files.session_known_hosts("beta").exists());
        assert!(files.session_config("beta").exists());
        files.remove_session("alpha").unwrap();
        assert!(
            !files.legacy_known_hosts().exists(),
            "the shared file is never written"
        );
    }

    #[test]
    fn a_proxied_session_pins_its_key_under_the_alias() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path());
        let route = Route::Proxy {
            remote: "team",
            id: "abc123",
        };
        files
            .write_session_via("alpha", &endpoint(2300), route)
            .unwrap();
        let known = std::fs::read_to_string(files.session_known_hosts("alpha")).unwrap();
        assert!(known.starts_with("cubbi-alpha ssh-ed25519 "), "{known}");
        let config = std::fs::read_to_string(files.session_config("alpha")).unwrap();
        assert!(
            config.contains("    HostKeyAlias cubbi-alpha\n"),
            "{config}"
        );
        assert!(
            config.contains(" -r team ssh-proxy abc123\n"),
            "the ProxyCommand: {config}"
        );
        assert!(config.contains("StrictHostKeyChecking yes"));
        assert!(config.contains("    ServerAliveInterval 60\n"), "{config}");
        for (remote, id) in [("team; sh", "abc"), ("team", "-oProxy"), ("team", "%h")] {
            let route = Route::Proxy { remote, id };
            let err = files
                .write_session_via("beta", &endpoint(2300), route)
                .unwrap_err();
            assert!(err.to_string().contains("ProxyCommand"), "{err}");
            assert!(!files.session_config("beta").exists());
        }
    }

    /// Defence in depth: whatever a caller checked, nothing leaves `cubbi.d` and no value
    /// can add a line to the files.
    #[test]
    fn hostile_values_are_refused_and_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path());
        let outside = dir.path().join(".config/x");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("cubbi.conf"), "keep").unwrap();
        for name in ["../../.config/x/cubbi", "a/b", "A", "a\nHost *"] {
            let err = files.write_session(name, &endpoint(2300)).unwrap_err();
            assert!(matches!(err, SshError::Unsafe(_)), "{err}");
            let err = files.remove_session(name).unwrap_err();
            assert!(err.to_string().contains("not a session name"), "{err}");
        }
        assert_eq!(
            std::fs::read_to_string(outside.join("cubbi.conf")).unwrap(),
            "keep"
        );
        let hostile = [
            SshEndpoint {
                host: "127.0.0.1\nMatch exec \"touch /tmp/pwned\"".into(),
                ..endpoint(2300)
            },
            SshEndpoint {
                user: "agent\n    ProxyCommand sh -c x".into(),
                ..endpoint(2300)
            },
            SshEndpoint {
                host_key: format!("{}\nHost *\n", endpoint(2300).host_key),
                ..endpoint(2300)
            },
        ];
        for end in hostile {
            let err = files.write_session("alpha", &end).unwrap_err().to_string();
            assert!(err.contains("refusing to write OpenSSH files"), "{err}");
        }
        assert!(!files.ssh_dir.join("cubbi.d").exists(), "nothing written");
    }

    #[test]
    fn host_block_pins_its_own_file_and_forwards_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path());
        files.write_session("alpha", &endpoint(2300)).unwrap();
        let config = std::fs::read_to_string(files.session_config("alpha")).unwrap();
        let options: Vec<(String, String)> = config
            .lines()
            .skip_while(|line| !line.starts_with("Host "))
            .skip(1)
            .filter_map(|line| {
                let (key, value) = line.trim().split_once(' ')?;
                Some((key.to_string(), value.trim().to_string()))
            })
            .collect();
        let get = |key: &str| {
            options
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("ForwardAgent"), Some("no"), "{config}");
        assert_eq!(get("ForwardX11"), Some("no"), "{config}");
        assert_eq!(get("StrictHostKeyChecking"), Some("yes"), "{config}");
        assert_eq!(
            get("UserKnownHostsFile"),
            Some(files.session_known_hosts("alpha").to_str().unwrap()),
            "{config}"
        );
    }

    /// The race of the shared file: 20 sessions written at once in one HOME. Each pin must be
    /// there afterwards, as OpenSSH's own lookup (`ssh-keygen -F`) finds it.
    #[test]
    fn parallel_writes_keep_every_pin() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path());
        let count = 20u16;
        let keys: Vec<String> = (0..count)
            .map(|i| {
                let key = crate::ssh::keys::generate(&format!("k{i}")).unwrap();
                crate::ssh::keys::public_openssh(key.public_key()).unwrap()
            })
            .collect();
        std::thread::scope(|scope| {
            for (i, key) in keys.iter().enumerate() {
                let files = files.clone();
                scope.spawn(move || {
                    let mut end = endpoint(2300 + i as u16);
                    end.host_key = key.clone();
                    files.write_session(&format!("par{i}"), &end).unwrap();
                    // And a close of another name at the same time, as `close` would do.
                    files.remove_session(&format!("gone{i}")).unwrap();
                });
            }
        });
        for (i, key) in keys.iter().enumerate() {
            let file = files.session_known_hosts(&format!("par{i}"));
            let host = format!("[127.0.0.1]:{}", 2300 + i);
            let found = std::process::Command::new("ssh-keygen")
                .arg("-F")
                .arg(&host)
                .arg("-f")
                .arg(&file)
                .output()
                .expect("ssh-keygen (openssh-client) must be installed");
            let text = String::from_utf8_lossy(&found.stdout);
            assert!(
                found.status.success(),
                "{host} not found in {}",
                file.display()
            );
            assert!(
                text.contains(&checked::canonical_host_key(key).unwrap()),
                "{text}"
            );
        }
    }

    #[test]
    fn include_goes_first_once() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path());
        std::fs::create_dir_all(&files.ssh_dir).unwrap();
        let path = files.ssh_dir.join("config");
        std::fs::write(&path, "Host x\n  User y\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(!files.include_present());
        files.add_include().unwrap();
        assert!(files.include_present());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(INCLUDE_LINE) && text.ends_with("Host x\n  User y\n"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "the file's mode is kept");
    }

    #[test]
    fn include_creates_a_missing_config() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path());
        files.add_include().unwrap();
        let text = std::fs::read_to_string(files.ssh_dir.join("config")).unwrap();
        assert_eq!(text, format!("{INCLUDE_LINE}\n"));
    }

    #[test]
    fn include_writes_through_a_symlinked_config() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path());
        let dotfiles = dir.path().join("dotfiles/ssh");
        std::fs::create_dir_all(&dotfiles).unwrap();
        std::fs::create_dir_all(&files.ssh_dir).unwrap();
        let target = dotfiles.join("config");
        std::fs::write(&target, "Host x\n").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = files.ssh_dir.join("config");
        std::os::unix::fs::symlink("../dotfiles/ssh/config", &link).unwrap();
        files.add_include().unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink(),
            "the link must stay a link"
        );
        let text = std::fs::read_to_string(&target).unwrap();
        assert_eq!(text, format!("{INCLUDE_LINE}\n\nHost x\n"));
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        assert!(files.include_present());
    }

    #[test]
    fn include_refuses_what_it_cannot_edit_and_says_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path());
        std::fs::create_dir_all(&files.ssh_dir).unwrap();
        let path = files.ssh_dir.join("config");

        // Not UTF-8: left byte for byte.
        let binary = b"Host x\n  User \xff\xfe\n".to_vec();
        std::fs::write(&path, &binary).unwrap();
        let err = files.add_include().unwrap_err().to_string();
        assert!(err.contains(INCLUDE_LINE) && err.contains("UTF-8"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), binary);

        // A dangling symlink: the link stays, nothing is created.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("missing/config", &path).unwrap();
        let err = files.add_include().unwrap_err().to_string();
        assert!(err.contains(INCLUDE_LINE), "{err}");
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );

        // Not a regular file.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let err = files.add_include().unwrap_err().to_string();
        assert!(err.contains(INCLUDE_LINE), "{err}");
        assert!(path.is_dir());
    }
}
