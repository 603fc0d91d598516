//! What a session may mount: host sources that give no way to the host's container engines or
//! D-Bus, and container targets that do not cover what cubbi itself puts in the session.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use crate::api::ApiError;

/// Targets a mount may neither be, nor be above, nor be below: cubbi uploads keys, env and
/// status files there (a host folder mounted over them would receive them, and cubbi-init
/// would chown it).
const PROTECTED_TREES: &[&str] = &[
    "/home/agent/.ssh",
    "/etc/ssh",
    "/etc/cubbi",
    "/var/lib/cubbi",
    crate::images::metadata::DATA_VOLUME_PATH,
    crate::images::metadata::CONFIG_VOLUME_PATH,
];

/// Targets a mount may neither be nor be above; below is fine (the workspace is).
const PROTECTED_ROOTS: &[&str] = &["/home/agent"];

/// Kernel and runtime filesystems: no mount at or below them.
const SYSTEM_TREES: &[&str] = &["/proc", "/sys", "/dev", "/run", "/var/run"];

/// Where the sockets of container engines and D-Bus live on common hosts.
const KNOWN_SOCKETS: &[&str] = &[
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/cubbi-docker.sock",
    "/var/run/cubbi-docker.sock",
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
    "/run/podman/podman.sock",
    "/run/crio/crio.sock",
    "/run/dbus/system_bus_socket",
    "/var/run/dbus/system_bus_socket",
];

/// How many entries a source folder on the same filesystem as an engine socket is searched
/// for another name of that socket (a hard link) before cubbi stops looking (and warns).
const HARD_LINK_SEARCH_LIMIT: usize = 100_000;

/// `path` made absolute and lexically normal: `..` and `.` resolved, `//` and a trailing `/`
/// dropped. `None` when it is not absolute.
pub fn normalize_container_path(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// Whether `ancestor` is `path` or a folder above it (both normalized).
fn is_at_or_under(path: &str, ancestor: &str) -> bool {
    ancestor == "/"
        || path == ancestor
        || path
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Checks a `-v` target and returns it normalized.
pub fn check_target(raw: &str) -> Result<String, ApiError> {
    if raw.contains(':') || raw.contains('\0') {
        return Err(ApiError::invalid(format!(
            "`{raw}` is not a usable container path"
        )));
    }
    let target = normalize_container_path(raw)
        .ok_or_else(|| ApiError::invalid(format!("`{raw}` is not an absolute container path")))?;
    let refuse = |why: String| {
        Err(ApiError::invalid(format!(
            "refusing to mount over `{raw}`: {why}; mount it somewhere else, e.g. \
             /home/agent/workspace/NAME or /srv/NAME"
        )))
    };
    if target == "/" {
        return refuse("it is the session's root".into());
    }
    for tree in SYSTEM_TREES {
        if is_at_or_under(&target, tree) {
            return refuse(format!("{tree} belongs to the kernel and the runtime"));
        }
    }
    for tree in PROTECTED_TREES {
        if is_at_or_under(&target, tree) || is_at_or_under(tree, &target) {
            return refuse(format!(
                "cubbi puts the session's keys and settings in {tree}"
            ));
        }
    }
    for root in PROTECTED_ROOTS {
        if is_at_or_under(root, &target) {
            return refuse(format!(
                "cubbi puts the session's keys and settings in {root}"
            ));
        }
    }
    Ok(target)
}

/// Refuses two mounts on one target (Docker's own message names neither flag).
pub fn check_duplicates<'a>(
    targets: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), ApiError> {
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for (target, what) in targets {
        if let Some((_, first)) = seen.iter().find(|(t, _)| *t == target) {
            return Err(ApiError::invalid(format!(
                "two mounts on `{target}`: {first} and {what}; give each mount its own target"
            )));
        }
        seen.push((target, what));
    }
    Ok(())
}

/// The engine and D-Bus sockets on this host: the usual places, the endpoint cubbi talks to,
/// and the user's runtime folder.
pub fn known_sockets(endpoint_socket: Option<&Path>) -> Vec<PathBuf> {
    let mut candidates: Vec<PathBuf> = KNOWN_SOCKETS.iter().map(PathBuf::from).collect();
    candidates.extend(endpoint_socket.map(Path::to_path_buf));
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from)
        && runtime.is_absolute()
    {
        for name in ["docker.sock", "bus", "podman/podman.sock"] {
            candidates.push(runtime.join(name));
        }
    }
    candidates
}

/// A socket found on the host: where it was named, where it really is, and its inode.
struct FoundSocket {
    named: PathBuf,
    canonical: PathBuf,
    dev: u64,
    ino: u64,
}

fn found_sockets(candidates: &[PathBuf]) -> Vec<FoundSocket> {
    candidates
        .iter()
        .filter_map(|named| {
            let meta = std::fs::metadata(named).ok()?;
            meta.file_type().is_socket().then(|| FoundSocket {
                named: named.clone(),
                canonical: named.canonicalize().unwrap_or_else(|_| named.clone()),
                dev: meta.dev(),
                ino: meta.ino(),
            })
        })
        .collect()
}

/// Refuses a mount source that is a socket (any socket: an engine's can have any name), or a
/// folder that holds an engine or D-Bus socket at any depth, under its own name or another
/// (a hard link on the same filesystem). `given` is what the user typed, `resolved` its
/// canonical form.
pub fn check_source(given: &Path, resolved: &Path, sockets: &[PathBuf]) -> Result<(), ApiError> {
    let meta = std::fs::metadata(resolved)
        .map_err(|err| ApiError::invalid(format!("`{}` cannot be used: {err}", given.display())))?;
    let shown = given.display().to_string();
    let refuse = |why: String| {
        Err(ApiError::invalid(format!(
            "refusing to mount `{shown}`: {why}; a container engine's or D-Bus's socket gives root \
             on the host (sessions have their own Docker inside)"
        )))
    };
    if meta.file_type().is_socket() {
        return refuse("it is a socket".into());
    }
    if !meta.is_dir() {
        return Ok(());
    }
    let found = found_sockets(sockets);
    let given = lexical(given);
    for socket in &found {
        if socket.canonical.starts_with(resolved)
            || socket.named.starts_with(&given)
            || socket.named.starts_with(resolved)
        {
            return refuse(format!("it holds {}", socket.named.display()));
        }
    }
    // Another name for a socket can only be on the socket's own filesystem.
    let devices: BTreeSet<u64> = found.iter().map(|s| s.dev).collect();
    if devices.contains(&meta.dev()) {
        let inodes: BTreeSet<(u64, u64)> = found.iter().map(|s| (s.dev, s.ino)).collect();
        match find_hard_link(resolved, meta.dev(), &inodes) {
            Search::Clean => {}
            Search::Found(path) => {
                let original = found
                    .iter()
                    .find(|s| std::fs::metadata(&path).is_ok_and(|m| m.ino() == s.ino))
                    .map_or_else(String::new, |s| {
                        format!(" (another name of {})", s.named.display())
                    });
                return refuse(format!("it holds {}{original}", path.display()));
            }
            // Engines keep their sockets on /run (a tmpfs), so a large folder here is a
            // workspace on a host whose engine socket sits on the same disk: refusing it
            // would refuse every large project.
            Search::TooLarge => tracing::warn!(
                "{shown} has over {HARD_LINK_SEARCH_LIMIT} entries on the filesystem of an \
                 engine socket; it was not fully searched for a hard link to that socket"
            ),
        }
    }
    Ok(())
}

/// Refuses the folder one stands in as a workspace nobody named: `/`, the user's home folder
/// and any folder holding it (a session would get every file the user has), and whatever
/// [`check_source`] refuses. Returns the folder resolved.
pub fn check_current_folder(
    folder: &Path,
    home: Option<&Path>,
    sockets: &[PathBuf],
) -> Result<PathBuf, ApiError> {
    let resolved = folder.canonicalize().map_err(|err| {
        ApiError::invalid(format!(
            "the current folder `{}` cannot be used: {err}",
            folder.display()
        ))
    })?;
    let refuse = |why: String| {
        Err(ApiError::invalid(format!(
            "refusing to mount the current folder `{}` as the workspace: {why}",
            folder.display()
        )))
    };
    if resolved == Path::new("/") {
        return refuse("it is the root of the filesystem".into());
    }
    if let Some(home) = home.filter(|home| home.is_absolute()) {
        let home_resolved = home.canonicalize().unwrap_or_else(|_| lexical(home));
        if resolved == home_resolved {
            return refuse(format!("it is your home folder ({})", home.display()));
        }
        if home_resolved.starts_with(&resolved) {
            return refuse(format!("it holds your home folder ({})", home.display()));
        }
    }
    check_source(folder, &resolved, sockets)?;
    Ok(resolved)
}

enum Search {
    Clean,
    Found(PathBuf),
    TooLarge,
}

/// Walks `root` on device `dev` (without following symlinks or crossing into other
/// filesystems) for an entry whose (device, inode) is in `inodes`.
fn find_hard_link(root: &Path, dev: u64, inodes: &BTreeSet<(u64, u64)>) -> Search {
    let mut pending = vec![root.to_path_buf()];
    let mut seen = 0usize;
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > HARD_LINK_SEARCH_LIMIT {
                return Search::TooLarge;
            }
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.file_type().is_socket() && inodes.contains(&(meta.dev(), meta.ino())) {
                return Search::Found(entry.path());
            }
            if meta.is_dir() && meta.dev() == dev {
                pending.push(entry.path());
            }
        }
    }
    Search::Clean
}

/// Makes `path` a normal absolute path for comparisons (no `..` left).
pub fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn normalizes_targets() {
        assert_eq!(normalize_container_path("/a//b/../c/").unwrap(), "/a/c");
        assert_eq!(normalize_container_path("/..").unwrap(), "/");
        assert_eq!(normalize_container_path("/./x/.").unwrap(), "/x");
        assert!(normalize_container_path("rel/x").is_none());
    }

    #[test]
    fn refuses_targets_at_or_above_what_cubbi_writes() {
        for bad in [
            "/",
            "//",
            "/home",
            "/home/",
            "/home/agent",
            "/home/agent/",
            "/home/agent/.ssh",
            "/home/agent/.ssh/authorized_keys",
            "/home/agent/x/../.ssh",
            "/etc",
            "/etc/ssh",
            "/etc/ssh/sshd_config",
            "/etc/cubbi",
            "/etc//cubbi/",
            "/var",
            "/var/lib",
            "/var/lib/cubbi",
            "/mnt",
            "/mnt/agent-data",
            "/mnt/agent-data/x",
            "/proc",
            "/proc/sys",
            "/sys",
            "/dev",
            "/dev/shm",
            "/run",
            "/run/docker.sock",
            "/var/run/docker.sock",
            "/tmp/../etc/ssh",
        ] {
            let err = check_target(bad).expect_err(bad);
            assert!(
                err.to_string().contains("refusing to mount over"),
                "{bad}: {err}"
            );
            assert_eq!(err.code(), crate::api::ErrorCode::Invalid);
        }
        for good in [
            "/home/agent/workspace",
            "/home/agent/data",
            "/srv/repo.git",
            "/opt/x",
            "/var/cache/x",
            "/etc/myapp",
            "/mnt/other",
            "/tmp",
        ] {
            assert!(check_target(good).is_ok(), "{good}");
        }
        assert_eq!(check_target("/srv//x/").unwrap(), "/srv/x");
        assert!(check_target("relative").is_err());
    }

    #[test]
    fn duplicate_targets_name_both_mounts() {
        let err = check_duplicates([
            ("/home/agent/workspace", "the workspace"),
            ("/srv/a", "-v /x:/srv/a"),
            ("/home/agent/workspace", "-v /y:/home/agent/workspace/"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("two mounts on `/home/agent/workspace`") && err.contains("the workspace"),
            "{err}"
        );
        assert!(check_duplicates([("/a", "x"), ("/b", "y")]).is_ok());
    }

    #[test]
    fn any_socket_is_refused_whatever_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("innocent.txt");
        let _listener = UnixListener::bind(&socket).unwrap();
        let err = check_source(&socket, &socket, &[]).unwrap_err().to_string();
        assert!(err.contains("it is a socket"), "{err}");
    }

    #[test]
    fn folders_holding_an_engine_socket_are_refused_at_any_depth() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("run/engine");
        std::fs::create_dir_all(&deep).unwrap();
        let socket = deep.join("engine.sock");
        let _listener = UnixListener::bind(&socket).unwrap();
        let known = vec![socket.clone(), PathBuf::from("/nonexistent/docker.sock")];
        for folder in [
            dir.path().to_path_buf(),
            dir.path().join("run"),
            deep.clone(),
        ] {
            let err = check_source(&folder, &folder, &known)
                .expect_err("holds the socket")
                .to_string();
            assert!(err.contains("engine.sock"), "{err}");
        }
        // A sibling folder is fine.
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        assert!(check_source(&other, &other, &known).is_ok());
        // A plain file is fine.
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(check_source(&file, &file, &known).is_ok());
    }

    #[test]
    fn a_symlinked_socket_folder_is_refused_by_either_name() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let socket = real.join("s.sock");
        let _listener = UnixListener::bind(&socket).unwrap();
        // The socket is known by a path through a symlinked folder (like /var/run → /run).
        let alias = dir.path().join("alias");
        std::os::unix::fs::symlink(&real, &alias).unwrap();
        let known = vec![alias.join("s.sock")];
        assert!(check_source(&real, &real, &known).is_err());
        assert!(check_source(&alias, &real, &known).is_err());
    }

    #[test]
    fn a_hard_link_to_an_engine_socket_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let engine = dir.path().join("engine");
        let user = dir.path().join("user/deeper");
        std::fs::create_dir_all(&engine).unwrap();
        std::fs::create_dir_all(&user).unwrap();
        let socket = engine.join("docker.sock");
        let _listener = UnixListener::bind(&socket).unwrap();
        std::fs::hard_link(&socket, user.join("notes")).unwrap();
        let folder = dir.path().join("user");
        let err = check_source(&folder, &folder, std::slice::from_ref(&socket))
            .expect_err("holds a hard link")
            .to_string();
        assert!(
            err.contains("notes") && err.contains("another name of"),
            "{err}"
        );
    }

    #[test]
    fn the_current_folder_is_refused_when_it_is_or_holds_home() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("users/me");
        let project = home.join("src/project");
        std::fs::create_dir_all(&project).unwrap();
        for (folder, why) in [
            (home.clone(), "it is your home folder"),
            (home.join("src/.."), "it is your home folder"),
            (dir.path().join("users"), "it holds your home folder"),
            (dir.path().to_path_buf(), "it holds your home folder"),
            (PathBuf::from("/"), "it is the root of the filesystem"),
        ] {
            let err = check_current_folder(&folder, Some(&home), &[])
                .expect_err(&folder.display().to_string())
                .to_string();
            assert!(
                err.contains("refusing to mount the current folder") && err.contains(why),
                "{}: {err}",
                folder.display()
            );
        }
        // A folder below home, or beside it, is a project.
        assert_eq!(
            check_current_folder(&project, Some(&home), &[]).unwrap(),
            project.canonicalize().unwrap()
        );
        let beside = dir.path().join("users/other");
        std::fs::create_dir(&beside).unwrap();
        assert!(check_current_folder(&beside, Some(&home), &[]).is_ok());
        // Without a home, only the root is refused by that rule.
        assert!(check_current_folder(&home, None, &[]).is_ok());
        assert!(check_current_folder(Path::new("/"), None, &[]).is_err());
    }

    #[test]
    fn the_current_folder_is_refused_when_it_holds_an_engine_socket() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        let project = dir.path().join("project");
        std::fs::create_dir(&project).unwrap();
        let socket = project.join("docker.sock");
        let _listener = UnixListener::bind(&socket).unwrap();
        let err = check_current_folder(&project, Some(&home), &[socket])
            .unwrap_err()
            .to_string();
        assert!(err.contains("it holds"), "{err}");
    }

    #[test]
    fn lexical_paths() {
        assert_eq!(lexical(Path::new("/a/b/../c")), PathBuf::from("/a/c"));
    }
}
