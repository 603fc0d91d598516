//! Writing files so a crash never leaves half of one: a temp file in the same folder, created
//! with the final mode (secrets are never briefly world-readable), synced, then renamed.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Writes `contents` to `path` atomically with `mode`, creating missing parent folders with
/// `dir_mode`.
pub fn write(path: &Path, contents: &[u8], mode: u32, dir_mode: u32) -> std::io::Result<()> {
    complete_temp(path, contents, mode, dir_mode)?
        .persist(path)
        .map_err(|err| err.error)?;
    Ok(())
}

/// Writes `contents` to `path` with `mode` unless a file is there already: a complete temp
/// file, then `link(2)`, which fails like `O_EXCL` when another process created it first, so
/// nobody ever reads half a file. `true` when this call created it.
pub fn create_new(path: &Path, contents: &[u8], mode: u32, dir_mode: u32) -> std::io::Result<bool> {
    match complete_temp(path, contents, mode, dir_mode)?.persist_noclobber(path) {
        Ok(_) => Ok(true),
        Err(err) if err.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(err.error),
    }
}

/// `contents`, synced, in a temp file beside `path` that already has the final `mode`.
fn complete_temp(
    path: &Path,
    contents: &[u8],
    mode: u32,
    dir_mode: u32,
) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(dir_mode)
        .create(dir)?;
    let mut temp = tempfile::Builder::new()
        .prefix(".cubbi.")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    temp.write_all(contents)?;
    temp.as_file().sync_all()?;
    Ok(temp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_new_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/key");
        assert!(create_new(&path, b"first", 0o600, 0o700).unwrap());
        assert!(!create_new(&path, b"second", 0o600, 0o700).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn writes_with_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/file");
        write(&path, b"one", 0o600, 0o700).unwrap();
        write(&path, b"two", 0o600, 0o700).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }
}
