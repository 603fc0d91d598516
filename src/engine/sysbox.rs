//! Sysbox: detection, the pinned release package and its checksum, and refusing anything that
//! is not the package it claims to be before dpkg ever sees it.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The Sysbox release cubbi installs when none is present.
pub const SYSBOX_VERSION: &str = "0.6.7";

/// The pinned package per Debian architecture: file name and SHA-256. The checksums are the
/// published ones for sysbox-ce 0.6.7; a download that does not match is refused.
const PINNED_PACKAGES: &[(&str, &str, &str)] = &[
    (
        "amd64",
        "sysbox-ce_0.6.7-0.linux_amd64.deb",
        "b7ac389e5a19592cadf16e0ca30e40919516128f6e1b7f99e1cb4ff64554172e",
    ),
    (
        "arm64",
        "sysbox-ce_0.6.7-0.linux_arm64.deb",
        "16d80123ba53058cf90f5a68686e297621ea97942602682e34b3352783908f91",
    ),
];

/// Where sysbox-mgr and sysbox-fs listen (fixed paths in Sysbox; sysbox-runc dials them for
/// every container).
pub const MGR_SOCKET: &str = "/run/sysbox/sysmgr.sock";
pub const FS_SOCKET: &str = "/run/sysbox/sysfs.sock";

/// Whether sysbox-mgr and sysbox-fs accept connections on their sockets: what sysbox-runc
/// needs, however the daemons are supervised (systemd units, or started by hand where
/// systemd is not PID 1). A stale socket file left by a dead daemon does not count.
pub fn daemons_answering() -> (bool, bool) {
    let answers = |path: &str| std::os::unix::net::UnixStream::connect(path).is_ok();
    (answers(MGR_SOCKET), answers(FS_SOCKET))
}

const RELEASES_URL: &str = "https://downloads.nestybox.com/sysbox/releases";

/// The beginning of every .deb: an ar archive whose first member is `debian-binary`.
const AR_MAGIC: &[u8] = b"!<arch>\n";
const FIRST_MEMBER: &[u8] = b"debian-binary";

#[derive(Debug, thiserror::Error)]
pub enum SysboxError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a Debian package (it does not start with an ar archive holding \
         debian-binary); pass the sysbox-ce .deb file"
    )]
    NotADebianPackage { path: PathBuf },
    #[error(
        "{path} has SHA-256 {actual}, expected {expected} (sysbox-ce {SYSBOX_VERSION}); refusing \
         to install it. For another release pass its checksum with --sysbox-sha256"
    )]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("no pinned Sysbox package for the {0} architecture; install Sysbox by hand")]
    UnsupportedArchitecture(String),
}

/// The pinned package for an architecture as Rust names it (`x86_64`, `aarch64`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedPackage {
    pub file_name: &'static str,
    pub sha256: &'static str,
    pub url: String,
}

pub fn pinned_package(rust_arch: &str) -> Result<PinnedPackage, SysboxError> {
    let debian_arch = match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    PINNED_PACKAGES
        .iter()
        .find(|(arch, _, _)| *arch == debian_arch)
        .map(|(_, file_name, sha256)| PinnedPackage {
            file_name,
            sha256,
            url: format!("{RELEASES_URL}/v{SYSBOX_VERSION}/{file_name}"),
        })
        .ok_or_else(|| SysboxError::UnsupportedArchitecture(rust_arch.to_string()))
}

/// Refuses a file that is not a .deb, by its first bytes.
pub fn validate_deb(path: &Path) -> Result<(), SysboxError> {
    let read_error = |source| SysboxError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut head = Vec::with_capacity(AR_MAGIC.len() + FIRST_MEMBER.len());
    std::fs::File::open(path)
        .map_err(read_error)?
        .take((AR_MAGIC.len() + FIRST_MEMBER.len()) as u64)
        .read_to_end(&mut head)
        .map_err(read_error)?;
    if head_is_deb(&head) {
        Ok(())
    } else {
        Err(SysboxError::NotADebianPackage {
            path: path.to_path_buf(),
        })
    }
}

fn head_is_deb(head: &[u8]) -> bool {
    head.starts_with(AR_MAGIC) && head[AR_MAGIC.len()..].starts_with(FIRST_MEMBER)
}

/// The file's SHA-256 as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, SysboxError> {
    let read_error = |source| SysboxError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = file.read(&mut buffer).map_err(read_error)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

/// A .deb that is safe to hand to dpkg: the right format and the expected checksum.
pub fn verify_package(path: &Path, expected_sha256: &str) -> Result<(), SysboxError> {
    validate_deb(path)?;
    let actual = sha256_file(path)?;
    if actual.eq_ignore_ascii_case(expected_sha256.trim()) {
        Ok(())
    } else {
        Err(SysboxError::ChecksumMismatch {
            path: path.to_path_buf(),
            expected: expected_sha256.to_lowercase(),
            actual,
        })
    }
}

/// The exact commands for a person to install Sysbox by hand (for distros cubbi cannot drive).
pub fn manual_instructions(rust_arch: &str) -> String {
    match pinned_package(rust_arch) {
        Ok(package) => format!(
            "curl -fLO {url} && echo '{sha}  {file}' | sha256sum -c && sudo apt-get install -y ./{file}  \
             (other distros: see the Sysbox install guide for your distribution)",
            url = package.url,
            sha = package.sha256,
            file = package.file_name
        ),
        Err(err) => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn pinned_packages_per_architecture() {
        let amd64 = pinned_package("x86_64").unwrap();
        assert!(
            amd64
                .url
                .ends_with("/v0.6.7/sysbox-ce_0.6.7-0.linux_amd64.deb"),
            "{}",
            amd64.url
        );
        assert_eq!(amd64.sha256.len(), 64);
        assert!(pinned_package("aarch64").is_ok());
        assert!(matches!(
            pinned_package("riscv64"),
            Err(SysboxError::UnsupportedArchitecture(_))
        ));
    }

    #[test]
    fn refuses_files_that_are_not_debian_packages() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [
            ("text.deb", &b"#!/bin/sh\necho hi\n"[..]),
            ("plain-ar.deb", b"!<arch>\nsomething-else   0  0"),
            ("empty.deb", b""),
        ] {
            let path = write(dir.path(), name, bytes);
            let err = validate_deb(&path).unwrap_err();
            assert!(
                matches!(err, SysboxError::NotADebianPackage { .. }),
                "{name}: {err}"
            );
        }
        let err = validate_deb(&dir.path().join("missing.deb")).unwrap_err();
        assert!(matches!(err, SysboxError::Read { .. }), "{err}");
    }

    #[test]
    fn accepts_a_deb_with_the_right_checksum_only() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = b"!<arch>\ndebian-binary   1700000000  0     0     100644  4         `\n2.0\n";
        let path = write(dir.path(), "fake.deb", bytes);
        validate_deb(&path).unwrap();
        let actual = sha256_file(&path).unwrap();
        verify_package(&path, &actual.to_uppercase()).unwrap();
        let err = verify_package(&path, pinned_package("x86_64").unwrap().sha256).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&actual) && text.contains("--sysbox-sha256"),
            "{text}"
        );
    }

    #[test]
    fn sha256_of_a_known_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "abc", b"abc");
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
