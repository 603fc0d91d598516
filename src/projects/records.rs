//! Where a [`ProjectStore`](super::ProjectStore) keeps its records: the sealed TOML text of
//! each project, keyed by the project's id. The store encodes, seals, decodes and checks; a
//! [`ProjectRecords`] only keeps text, and makes the uniqueness of ids and names atomic.
//!
//! Two kinds: [`DirRecords`], one file per project in a private folder (the local CLI), and the
//! service's database (`crate::service::projects`), one row per project and user.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::ProjectError;

/// The largest project file read.
const MAX_FILE_BYTES: u64 = 256 * 1024;

/// One stored project as text, and where it is (named in every error about it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub location: PathBuf,
    pub text: String,
}

/// The persistence of projects. Every change is atomic: `insert` and `replace` check that no
/// other record has the id or the name in the same step that writes.
pub trait ProjectRecords: Send + Sync {
    /// Where the record of `id` is (or would be): a file, or a row of a database.
    fn location(&self, id: &str) -> PathBuf;
    /// Every record.
    fn list(&self) -> Result<Vec<Record>, ProjectError>;
    /// The record of `id`, if any.
    fn get(&self, id: &str) -> Result<Option<Record>, ProjectError>;
    /// Stores a new record; [`ProjectError::AlreadyExists`] when `id` is there,
    /// [`ProjectError::NameTaken`] when another record is called `name`.
    fn insert(&self, id: &str, name: &str, text: &str) -> Result<(), ProjectError>;
    /// Replaces the record of `id`; [`ProjectError::NotFound`] when it is gone,
    /// [`ProjectError::NameTaken`] when another record is called `name`.
    fn replace(&self, id: &str, name: &str, text: &str) -> Result<(), ProjectError>;
    /// Removes the record of `id`; false when there was none.
    fn delete(&self, id: &str) -> Result<bool, ProjectError>;
    /// The user these records belong to, where several users share one store (the
    /// service): sealed credentials are bound to it. `None` for a store of one user.
    fn owner(&self) -> Option<&str> {
        None
    }
}

/// Records as files `<first 16 hex digits of sha256(id)>.toml` (0600) in a private folder
/// (0700), written to a temp file and renamed. Changes happen under an `flock` on `.lock` in
/// the folder, so concurrent `add`s lose nothing and names stay unique.
#[derive(Debug, Clone)]
pub struct DirRecords {
    dir: PathBuf,
}

/// Just enough of a project file to know whose name it has.
#[derive(Deserialize)]
struct Named {
    id: String,
    name: String,
}

impl DirRecords {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the store's lock (blocking), creating the private folder first.
    fn lock(&self) -> Result<Flock<File>, ProjectError> {
        self.ensure_private_dir()?;
        let path = self.dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|source| ProjectError::Lock {
                path: path.clone(),
                source,
            })?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| ProjectError::Lock {
            path,
            source: errno.into(),
        })
    }

    fn ensure_private_dir(&self) -> Result<(), ProjectError> {
        let refuse = |reason: String| ProjectError::StoreDir {
            path: self.dir.clone(),
            reason,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|err| refuse(format!("cannot create it: {err}")))?;
        let metadata = std::fs::symlink_metadata(&self.dir)
            .map_err(|err| refuse(format!("cannot inspect it: {err}")))?;
        if !metadata.is_dir() {
            return Err(refuse("it is a symbolic link or a file; remove it".into()));
        }
        if metadata.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|err| refuse(format!("cannot make it private: {err}")))?;
        }
        Ok(())
    }

    /// The project file names of the folder (none when it does not exist yet).
    fn paths(&self) -> Result<Vec<PathBuf>, ProjectError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(ProjectError::Read {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| ProjectError::Read {
                path: self.dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".toml") {
                continue;
            }
            paths.push(entry.path());
        }
        Ok(paths)
    }

    /// Refuses `name` when a file other than `id`'s has it. Called under the lock.
    fn check_name_free(&self, name: &str, id: &str) -> Result<(), ProjectError> {
        for path in self.paths()? {
            let text = read_file(&path)?;
            let named: Named = toml::from_str(&text).map_err(|err| ProjectError::Corrupt {
                path: path.clone(),
                reason: format!("{} (was it cut short or edited?)", err.message()),
            })?;
            if named.name == name && named.id != id {
                return Err(ProjectError::NameTaken {
                    name: name.to_string(),
                    id: named.id,
                });
            }
        }
        Ok(())
    }

    fn write(&self, path: &Path, text: &str) -> Result<(), ProjectError> {
        crate::atomic_file::write(path, text.as_bytes(), 0o600, 0o700).map_err(|source| {
            ProjectError::Write {
                path: path.to_path_buf(),
                source,
            }
        })
    }
}

impl ProjectRecords for DirRecords {
    fn location(&self, id: &str) -> PathBuf {
        self.dir.join(file_name(id))
    }

    fn list(&self) -> Result<Vec<Record>, ProjectError> {
        self.paths()?
            .into_iter()
            .map(|path| {
                read_file(&path).map(|text| Record {
                    location: path,
                    text,
                })
            })
            .collect()
    }

    fn get(&self, id: &str) -> Result<Option<Record>, ProjectError> {
        let path = self.location(id);
        match std::fs::symlink_metadata(&path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            _ => read_file(&path).map(|text| {
                Some(Record {
                    location: path,
                    text,
                })
            }),
        }
    }

    fn insert(&self, id: &str, name: &str, text: &str) -> Result<(), ProjectError> {
        let _lock = self.lock()?;
        if let Some(existing) = self.get(id)? {
            let named: Option<Named> = toml::from_str(&existing.text).ok();
            return Err(ProjectError::AlreadyExists {
                id: id.to_string(),
                name: named.map_or_else(|| "?".into(), |named| named.name),
            });
        }
        self.check_name_free(name, id)?;
        self.write(&self.location(id), text)
    }

    fn replace(&self, id: &str, name: &str, text: &str) -> Result<(), ProjectError> {
        let _lock = self.lock()?;
        if self.get(id)?.is_none() {
            return Err(ProjectError::NotFound {
                reference: id.to_string(),
            });
        }
        self.check_name_free(name, id)?;
        self.write(&self.location(id), text)
    }

    fn delete(&self, id: &str) -> Result<bool, ProjectError> {
        let _lock = self.lock()?;
        let path = self.location(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(ProjectError::Write { path, source }),
        }
    }
}

/// Reads one project file: a regular file (not a link, not a FIFO), UTF-8, at most 256 KiB.
fn read_file(path: &Path) -> Result<String, ProjectError> {
    let corrupt = |reason: String| ProjectError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| ProjectError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let metadata = file.metadata().map_err(|source| ProjectError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !metadata.is_file() {
        return Err(corrupt("it is not a regular file".into()));
    }
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|_| corrupt("it is not UTF-8 text".into()))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(corrupt("it is larger than 256 KiB".into()));
    }
    Ok(text)
}

fn file_name(id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    let hex: String = digest
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("{hex}.toml")
}
