//! The owner's agent data as a tar (`cubbi data export|import`): every archive that goes into
//! the data volume, or comes out of it, is read entry by entry and written again, so what
//! Docker extracts is exactly what was checked.
//!
//! Paths are relative to the volume (`claude-code/.claude/settings.json`). Refused, whole and
//! before anything is written: absolute paths, `..`, hard links, symbolic links that leave
//! the archive (absolute, or climbing above its root), device files and FIFOs, and more than
//! [`ArchiveLimits`] allow. Everything lands owned by the session's agent user (uid 1000);
//! set-id bits are dropped.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// The uid and gid of the `agent` user in every cubbi image.
pub const AGENT_UID: u64 = 1000;

/// How much one archive may hold.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveLimits {
    /// Bytes of file content, all entries together.
    pub max_bytes: u64,
    pub max_entries: usize,
}

impl ArchiveLimits {
    pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            max_bytes: Self::DEFAULT_MAX_BYTES,
            max_entries: 100_000,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArchiveError {
    #[error("`{path}` is an absolute path; agent data archives hold paths relative to the volume")]
    Absolute { path: String },
    #[error("`{path}` climbs out with `..`")]
    Climbs { path: String },
    #[error("`{path}` is a hard link; agent data archives hold no hard links")]
    HardLink { path: String },
    #[error("`{path}` is a symbolic link to `{target}`, outside the archive")]
    LinkOut { path: String, target: String },
    #[error(
        "`{path}` is a device file, FIFO or socket; agent data archives hold files, folders and links"
    )]
    Special { path: String },
    #[error("the archive holds more than {0} bytes of files (the limit)")]
    TooLarge(u64),
    #[error("the archive holds more than {0} entries (the limit)")]
    TooManyEntries(usize),
    #[error("the archive is not a readable tar: {0}")]
    Unreadable(String),
}

pub use crate::api::DataSummary as ArchiveSummary;

/// The entry's path, relative and without `.`; `None` for the archive's root itself.
fn relative(path: &Path) -> Result<Option<PathBuf>, ArchiveError> {
    let shown = || path.display().to_string();
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(ArchiveError::Climbs { path: shown() }),
            Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::Absolute { path: shown() });
            }
        }
    }
    Ok((!clean.as_os_str().is_empty()).then_some(clean))
}

/// A link at `path` to `target` stays inside the archive: relative, and never above the
/// root however its `..` are read.
fn link_stays_inside(path: &Path, target: &Path) -> bool {
    let mut depth = path.components().count().saturating_sub(1) as i64;
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Reads the tar `input`, checks every entry, and writes it again under `prefix` (a relative
/// path such as `mnt/agent-data`, or empty) with `strip` leading components removed from each
/// path first. Entries `strip` leaves nothing of are skipped.
pub fn rewrite(
    input: impl Read,
    strip: usize,
    prefix: &Path,
    limits: ArchiveLimits,
) -> Result<(Vec<u8>, ArchiveSummary), ArchiveError> {
    let unreadable = |err: std::io::Error| ArchiveError::Unreadable(err.to_string());
    let mut archive = tar::Archive::new(input);
    let mut out = tar::Builder::new(Vec::new());
    let mut summary = ArchiveSummary::default();
    let mut entries_seen = 0usize;
    for entry in archive.entries().map_err(unreadable)? {
        let mut entry = entry.map_err(unreadable)?;
        entries_seen += 1;
        if entries_seen > limits.max_entries {
            return Err(ArchiveError::TooManyEntries(limits.max_entries));
        }
        let raw = entry.path().map_err(unreadable)?.into_owned();
        let Some(path) = relative(&raw)? else {
            continue;
        };
        let path: PathBuf = path.components().skip(strip).collect();
        if path.as_os_str().is_empty() {
            continue;
        }
        let shown = || path.display().to_string();
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().map_err(unreadable)? & 0o777;
        let mut header = tar::Header::new_gnu();
        header.set_uid(AGENT_UID);
        header.set_gid(AGENT_UID);
        header.set_mtime(entry.header().mtime().unwrap_or(0));
        header.set_mode(mode);
        let target_path = prefix.join(&path);
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size().map_err(unreadable)?;
                summary.bytes += size;
                if summary.bytes > limits.max_bytes {
                    return Err(ArchiveError::TooLarge(limits.max_bytes));
                }
                let mut data = Vec::with_capacity(size as usize);
                (&mut entry)
                    .take(size)
                    .read_to_end(&mut data)
                    .map_err(unreadable)?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                out.append_data(&mut header, &target_path, data.as_slice())
                    .map_err(unreadable)?;
                summary.files += 1;
            }
            tar::EntryType::Directory => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                out.append_data(&mut header, &target_path, std::io::empty())
                    .map_err(unreadable)?;
                summary.folders += 1;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(unreadable)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if !link_stays_inside(&path, &target) {
                    return Err(ArchiveError::LinkOut {
                        path: shown(),
                        target: target.display().to_string(),
                    });
                }
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                out.append_link(&mut header, &target_path, &target)
                    .map_err(unreadable)?;
                summary.links += 1;
            }
            tar::EntryType::Link => return Err(ArchiveError::HardLink { path: shown() }),
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                return Err(ArchiveError::Special { path: shown() });
            }
            // Metadata entries (long names, pax) are read by the tar crate itself; anything
            // else has no place in agent data.
            _ => return Err(ArchiveError::Special { path: shown() }),
        }
        if let Some(Component::Normal(top)) = path.components().next() {
            let top = top.to_string_lossy().into_owned();
            if !summary.tools.contains(&top) {
                summary.tools.push(top);
            }
        }
    }
    let bytes = out.into_inner().map_err(unreadable)?;
    summary.tools.sort();
    Ok((bytes, summary))
}

/// One of the host user's own tool folders, and where it goes in the data volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    pub host: PathBuf,
    /// Relative to the volume: `claude-code/.claude`.
    pub volume: PathBuf,
}

/// The host user's tool configs that the images persist: an image's persistent config
/// `/home/agent/REST` kept at `/mnt/agent-data/IMAGE/...` is `$HOME/REST` on the host.
pub fn host_configs(home: &Path, catalog: &crate::images::Catalog) -> Vec<HostConfig> {
    let data_root = Path::new(crate::images::metadata::DATA_VOLUME_PATH);
    let mut found = Vec::new();
    for image in catalog.all() {
        for config in &image.metadata.persistent_configs {
            let (Ok(rest), Ok(volume)) = (
                Path::new(&config.source).strip_prefix("/home/agent"),
                Path::new(&config.target).strip_prefix(data_root),
            ) else {
                continue;
            };
            let host = home.join(rest);
            if rest.as_os_str().is_empty() || !host.exists() {
                continue;
            }
            found.push(HostConfig {
                host,
                volume: volume.to_path_buf(),
            });
        }
    }
    found
}

/// A tar of `configs` with paths relative to the volume. Symbolic links are kept as links
/// (the archive check decides whether they may go in); sockets and devices are left out.
pub fn archive_host_configs(configs: &[HostConfig]) -> std::io::Result<Vec<u8>> {
    let mut out = tar::Builder::new(Vec::new());
    out.follow_symlinks(false);
    out.mode(tar::HeaderMode::Complete);
    for config in configs {
        let metadata = std::fs::symlink_metadata(&config.host)?;
        if metadata.is_dir() {
            append_tree(&mut out, &config.host, &config.volume)?;
        } else if metadata.is_file() {
            out.append_path_with_name(&config.host, &config.volume)?;
        }
    }
    out.into_inner()
}

fn append_tree(out: &mut tar::Builder<Vec<u8>>, host: &Path, inside: &Path) -> std::io::Result<()> {
    out.append_path_with_name(host, inside)?;
    let mut children: Vec<_> = std::fs::read_dir(host)?.collect::<Result<_, _>>()?;
    children.sort_by_key(|entry| entry.file_name());
    for child in children {
        let kind = child.file_type()?;
        let name = inside.join(child.file_name());
        if kind.is_dir() {
            append_tree(out, &child.path(), &name)?;
        } else if kind.is_file() || kind.is_symlink() {
            out.append_path_with_name(child.path(), &name)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, content_or_target) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o4755);
            header.set_uid(0);
            match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    header.set_size(0);
                    // Written raw: the builder's own checks would refuse the hostile ones.
                    header.set_link_name_literal(content_or_target).unwrap();
                    header.set_path_literal(path);
                    header.set_cksum();
                    builder.append(&header, std::io::empty()).unwrap();
                }
                _ => {
                    header.set_size(content_or_target.len() as u64);
                    header.set_path_literal(path);
                    header.set_cksum();
                    builder
                        .append(&header, content_or_target.as_bytes())
                        .unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    type Entry<'a> = (&'a str, tar::EntryType, &'a str);

    trait Literal {
        fn set_path_literal(&mut self, path: &str);
    }

    impl Literal for tar::Header {
        fn set_path_literal(&mut self, path: &str) {
            let name = &mut self.as_old_mut().name;
            name.fill(0);
            name[..path.len()].copy_from_slice(path.as_bytes());
        }
    }

    fn check(entries: &[(&str, tar::EntryType, &str)]) -> Result<ArchiveSummary, ArchiveError> {
        rewrite(
            tar_of(entries).as_slice(),
            0,
            Path::new(""),
            ArchiveLimits::default(),
        )
        .map(|(_, summary)| summary)
    }

    #[test]
    fn hostile_entries_are_refused_by_name() {
        use tar::EntryType::*;
        let cases: Vec<(Vec<Entry>, &str)> = vec![
            (vec![("/etc/passwd", Regular, "x")], "absolute"),
            (vec![("claude-code/../../x", Regular, "x")], "climbs"),
            (vec![("a/link", Symlink, "/etc/shadow")], "outside"),
            (vec![("a/link", Symlink, "../../etc")], "outside"),
            (vec![("a/hard", Link, "a/file")], "hard link"),
            (vec![("a/dev", Char, "")], "device"),
            (vec![("a/fifo", Fifo, "")], "FIFO"),
        ];
        for (entries, expected) in cases {
            let err = check(&entries).unwrap_err();
            assert!(err.to_string().contains(expected), "{entries:?}: {err}");
        }
    }

    #[test]
    fn good_entries_are_rewritten_for_the_agent_without_set_id_bits() {
        use tar::EntryType::*;
        let entries = [
            ("./claude-code/", Directory, ""),
            ("claude-code/.claude/settings.json", Regular, "{}"),
            ("claude-code/.claude/latest", Symlink, "settings.json"),
            ("codex/.codex/up", Symlink, "../../claude-code/.claude"),
        ];
        let (bytes, summary) = rewrite(
            tar_of(&entries).as_slice(),
            0,
            Path::new("mnt/agent-data"),
            ArchiveLimits::default(),
        )
        .unwrap();
        assert_eq!((summary.files, summary.folders, summary.links), (1, 1, 2));
        assert_eq!(summary.tools, ["claude-code", "codex"]);
        let mut archive = tar::Archive::new(bytes.as_slice());
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().into_owned();
            assert!(path.starts_with("mnt/agent-data"), "{path:?}");
            assert_eq!(entry.header().uid().unwrap(), AGENT_UID);
            assert_eq!(entry.header().mode().unwrap(), 0o755);
        }
    }

    #[test]
    fn limits_hold_for_bytes_and_entries() {
        let big = "x".repeat(2048);
        let entries = [("a/one", tar::EntryType::Regular, big.as_str())];
        let small = ArchiveLimits {
            max_bytes: 1024,
            max_entries: 10,
        };
        let err = rewrite(tar_of(&entries).as_slice(), 0, Path::new(""), small).unwrap_err();
        assert_eq!(err, ArchiveError::TooLarge(1024));
        let many: Vec<_> = (0..5)
            .map(|_| ("a/f", tar::EntryType::Regular, "x"))
            .collect();
        let few = ArchiveLimits {
            max_bytes: 1024,
            max_entries: 3,
        };
        let err = rewrite(tar_of(&many).as_slice(), 0, Path::new(""), few).unwrap_err();
        assert_eq!(err, ArchiveError::TooManyEntries(3));
        let garbage = [b'x'; 1024];
        assert!(matches!(
            rewrite(&garbage[..], 0, Path::new(""), small),
            Err(ArchiveError::Unreadable(_))
        ));
    }

    #[test]
    fn host_configs_map_home_folders_into_the_volume() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".claude")).unwrap();
        std::fs::write(home.path().join(".claude/settings.json"), "{}").unwrap();
        let catalog = crate::images::Catalog::embedded().unwrap();
        let found = host_configs(home.path(), &catalog);
        assert_eq!(
            found,
            [HostConfig {
                host: home.path().join(".claude"),
                volume: PathBuf::from("claude-code/.claude"),
            }]
        );
        let bytes = archive_host_configs(&found).unwrap();
        let (_, summary) =
            rewrite(bytes.as_slice(), 0, Path::new(""), ArchiveLimits::default()).unwrap();
        assert_eq!((summary.files, summary.folders), (1, 1));
    }
}
