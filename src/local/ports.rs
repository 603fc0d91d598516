//! SSH port allocation, race-free across processes: under a host-wide `flock`, skip ports held
//! by cubbi containers in any state and ports anything else has bound; the container's label is
//! the reservation, so the lock is held until the container exists.
//!
//! The lock is `/run/cubbi/ports.lock`, made by `cubbi setup` (root:cubbi 0660 in a root:cubbi
//! 0770 folder, re-made at boot by tmpfiles.d). cubbi opens it without `O_CREAT` and with
//! `O_NOFOLLOW`, and gives up after a bounded wait naming the holder. Where setup never ran
//! (tests, a bare `--endpoint`), each user has a private lock instead.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::api::ApiError;
use crate::config::PortRange;

/// The folder `cubbi setup` makes for the system lock: root-owned, group `cubbi`, 0770.
pub const SYSTEM_LOCK_DIR: &str = "/run/cubbi";
/// The system-wide allocation lock: root-owned, group `cubbi`, 0660; never created by cubbi
/// outside setup.
pub const SYSTEM_LOCK_FILE: &str = "/run/cubbi/ports.lock";
/// The tmpfiles.d lines that re-create the lock at boot where systemd runs
/// (`/etc/tmpfiles.d/cubbi.conf`; /run is a tmpfs).
pub const TMPFILES_LINES: &str =
    "d /run/cubbi 0770 root cubbi -\nf /run/cubbi/ports.lock 0660 root cubbi -\n";
/// How long a create waits for another process's allocation before it gives up.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Which allocation lock a process uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockLocation {
    /// Made by `cubbi setup`; opened, never created.
    System(PathBuf),
    /// Only where no system lock exists (no setup, tests): private to this user, created
    /// 0600 in a 0700 folder the user owns.
    User(PathBuf),
}

impl LockLocation {
    /// The system lock when it exists, else the user's own.
    pub fn resolve() -> Result<Self, ApiError> {
        let system = Path::new(SYSTEM_LOCK_FILE);
        if system.symlink_metadata().is_ok() {
            return Ok(Self::System(system.to_path_buf()));
        }
        let dir = match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
            Some(runtime) if runtime.is_absolute() && runtime.is_dir() => runtime.join("cubbi"),
            _ => dirs::cache_dir()
                .ok_or_else(|| {
                    ApiError::unavailable(
                        "no system port lock (run `cubbi setup`) and no home folder for a \
                         private one: set HOME or XDG_RUNTIME_DIR",
                    )
                })?
                .join("cubbi"),
        };
        Ok(Self::User(dir.join("ports.lock")))
    }

    pub fn path(&self) -> &Path {
        match self {
            Self::System(path) | Self::User(path) => path,
        }
    }
}

const SYSTEM_LOCK_DIR_MODE: u32 = 0o770;
const SYSTEM_LOCK_FILE_MODE: u32 = 0o660;

/// Creates the system lock for `cubbi setup` (run as root): `dir` root-owned, group
/// `group_gid`, mode 0770, and `dir/ports.lock` root:`group_gid` 0660. Idempotent; refuses a
/// symlink or a non-folder at `dir` and a non-regular file at the lock. Returns the lock's
/// path.
pub fn prepare_system_lock(dir: &Path, group_gid: u32) -> std::io::Result<PathBuf> {
    use nix::unistd::{Gid, Uid, fchown};
    match dir.symlink_metadata() {
        Ok(meta) if meta.file_type().is_dir() => {}
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} exists and is not a folder (a symlink?); remove it and run setup again",
                dir.display()
            )));
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(SYSTEM_LOCK_DIR_MODE)
                .create(dir)?;
        }
        Err(err) => return Err(err),
    }
    let dir_handle = File::open(dir)?;
    fchown(
        &dir_handle,
        Some(Uid::from_raw(0)),
        Some(Gid::from_raw(group_gid)),
    )
    .map_err(std::io::Error::from)?;
    nix::sys::stat::fchmod(
        &dir_handle,
        nix::sys::stat::Mode::from_bits_truncate(SYSTEM_LOCK_DIR_MODE),
    )
    .map_err(std::io::Error::from)?;
    let path = dir.join("ports.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(SYSTEM_LOCK_FILE_MODE)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file; remove it and run setup again",
            path.display()
        )));
    }
    fchown(
        &file,
        Some(Uid::from_raw(0)),
        Some(Gid::from_raw(group_gid)),
    )
    .map_err(std::io::Error::from)?;
    nix::sys::stat::fchmod(
        &file,
        nix::sys::stat::Mode::from_bits_truncate(SYSTEM_LOCK_FILE_MODE),
    )
    .map_err(std::io::Error::from)?;
    Ok(path)
}

/// Whether `dir` and its lock are as [`prepare_system_lock`] leaves them (no symlinks).
pub fn system_lock_ready(dir: &Path, group_gid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let as_prepared = |path: &Path, is_kind: fn(&std::fs::FileType) -> bool, mode: u32| {
        path.symlink_metadata().is_ok_and(|meta| {
            is_kind(&meta.file_type())
                && meta.uid() == 0
                && meta.gid() == group_gid
                && meta.mode() & 0o7777 == mode
        })
    };
    as_prepared(dir, std::fs::FileType::is_dir, SYSTEM_LOCK_DIR_MODE)
        && as_prepared(
            &dir.join("ports.lock"),
            std::fs::FileType::is_file,
            SYSTEM_LOCK_FILE_MODE,
        )
}

/// Holds the allocation lock; dropping it releases the lock.
pub struct PortLock {
    _lock: Flock<File>,
}

impl PortLock {
    /// Takes the lock, polling for up to `timeout` (run it on a blocking thread). Never
    /// follows a symlink; creates only the user's own lock.
    pub fn acquire(location: &LockLocation, timeout: Duration) -> Result<Self, ApiError> {
        let file = open_lock(location)?;
        let path = location.path();
        let deadline = Instant::now() + timeout;
        let mut file = file;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(Self { _lock: lock }),
                Err((back, nix::errno::Errno::EWOULDBLOCK)) => {
                    if Instant::now() >= deadline {
                        return Err(ApiError::unavailable(format!(
                            "gave up after {} s waiting for the SSH port lock {}: {}; if that \
                             process is stuck, stop it and try again",
                            timeout.as_secs(),
                            path.display(),
                            describe_holder(&back)
                        )));
                    }
                    file = back;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err((_, nix::errno::Errno::EINTR)) => {
                    file = open_lock(location)?;
                }
                Err((_, err)) => {
                    return Err(ApiError::unavailable(format!(
                        "cannot lock {}: {err}",
                        path.display()
                    )));
                }
            }
        }
    }
}

fn open_lock(location: &LockLocation) -> Result<File, ApiError> {
    let path = location.path();
    let mut options = std::fs::OpenOptions::new();
    options.read(true).custom_flags(nix::libc::O_NOFOLLOW);
    let opened = match location {
        LockLocation::System(_) => options.open(path),
        LockLocation::User(_) => {
            if let Some(dir) = path.parent() {
                private_dir(dir)?;
            }
            options
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
        }
    };
    let file = opened.map_err(|err| {
        let hint = match (location, err.raw_os_error()) {
            (_, Some(nix::libc::ELOOP)) => " (it is a symlink; cubbi does not follow one here)",
            (LockLocation::System(_), Some(nix::libc::EACCES)) => {
                " (join the `cubbi` group: `sudo usermod -aG cubbi $USER`, then log in again)"
            }
            _ => "",
        };
        ApiError::unavailable(format!(
            "cannot open the SSH port lock {}: {err}{hint}",
            path.display()
        ))
    })?;
    let meta = file
        .metadata()
        .map_err(|err| ApiError::unavailable(format!("cannot stat {}: {err}", path.display())))?;
    if !meta.file_type().is_file() {
        return Err(ApiError::unavailable(format!(
            "the SSH port lock {} is not a regular file",
            path.display()
        )));
    }
    Ok(file)
}

/// Makes (or checks) the user's lock folder: a real folder, owned by this user, 0700.
fn private_dir(dir: &Path) -> Result<(), ApiError> {
    let refuse = |why: String| {
        ApiError::unavailable(format!(
            "cannot use {} for the SSH port lock: {why}",
            dir.display()
        ))
    };
    match dir.symlink_metadata() {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(|err| refuse(err.to_string()))?;
            }
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => Ok(()),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => private_dir(dir),
                Err(err) => Err(refuse(err.to_string())),
            }
        }
        Err(err) => Err(refuse(err.to_string())),
        Ok(meta) if !meta.file_type().is_dir() => Err(refuse("it is not a folder".into())),
        Ok(meta) if meta.uid() != nix::unistd::getuid().as_raw() => {
            Err(refuse(format!("it belongs to uid {}", meta.uid())))
        }
        Ok(meta) if meta.mode() & 0o022 != 0 => Err(refuse("others can write to it".into())),
        Ok(_) => Ok(()),
    }
}

/// Who holds the lock on `file`: from /proc/locks (pid, command, user), else the file's owner.
fn describe_holder(file: &File) -> String {
    let Ok(meta) = file.metadata() else {
        return "another process holds it".into();
    };
    let dev = meta.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let holder = locks
        .lines()
        .filter(|line| !line.contains("->"))
        .find_map(|line| lock_holder(line, major, minor, meta.ino()));
    match holder {
        Some(pid) => {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_else(|_| "?".into());
            let user = std::fs::metadata(format!("/proc/{pid}"))
                .map(|m| user_name(m.uid()))
                .unwrap_or_else(|_| "?".into());
            format!("held by pid {pid} ({comm}, user {user})")
        }
        None => format!(
            "another process holds it (the file belongs to {})",
            user_name(meta.uid())
        ),
    }
}

/// The pid in a /proc/locks line (`1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`) when it
/// locks the inode `ino` on device `major:minor` (hex).
fn lock_holder(line: &str, major: u64, minor: u64, ino: u64) -> Option<u32> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (pid, file) = (fields.get(4)?, fields.get(5)?);
    let mut parts = file.split(':');
    let (maj, min, node) = (parts.next()?, parts.next()?, parts.next()?);
    let matches = u64::from_str_radix(maj, 16).ok()? == major
        && u64::from_str_radix(min, 16).ok()? == minor
        && node.parse::<u64>().ok()? == ino;
    matches.then(|| pid.parse().ok()).flatten()
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |user| user.name)
}

/// The first port in `range` not in `taken` that nothing on this host has bound on `bind`.
pub fn pick_free_port(
    range: PortRange,
    taken: &BTreeSet<u16>,
    bind: IpAddr,
    is_bindable: impl Fn(SocketAddr) -> bool,
) -> Result<u16, ApiError> {
    (range.start..=range.end)
        .filter(|port| !taken.contains(port))
        .find(|port| is_bindable(SocketAddr::new(bind, *port)))
        .ok_or_else(|| {
            ApiError::Exhausted(format!(
                "no free SSH port left in {}-{}; close sessions (`cubbi session close`) or widen the \
                 range with `cubbi config set ports.end N`",
                range.start, range.end
            ))
        })
}

/// Whether a TCP listener could bind the address right now.
pub fn can_bind(address: SocketAddr) -> bool {
    TcpListener::bind(address).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_taken_and_bound_ports() {
        let range = PortRange {
            start: 2300,
            end: 2304,
        };
        let taken = BTreeSet::from([2300, 2301]);
        let local = IpAddr::from([127, 0, 0, 1]);
        let port = pick_free_port(range, &taken, local, |addr| addr.port() != 2302).unwrap();
        assert_eq!(port, 2303);
    }

    #[test]
    fn exhausted_range_names_range_and_remedy() {
        let range = PortRange {
            start: 2300,
            end: 2301,
        };
        let taken = BTreeSet::from([2300, 2301]);
        let err =
            pick_free_port(range, &taken, IpAddr::from([127, 0, 0, 1]), |_| true).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("2300-2301") && text.contains("ports.end"),
            "{text}"
        );
        assert_eq!(err.code(), crate::api::ErrorCode::Exhausted);
    }

    #[test]
    fn a_bound_port_is_not_bindable() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!can_bind(listener.local_addr().unwrap()));
    }

    #[test]
    fn lock_is_exclusive_across_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let location = LockLocation::User(dir.path().join("cubbi/ports.lock"));
        let held = PortLock::acquire(&location, Duration::from_secs(1)).unwrap();
        let file = File::open(location.path()).unwrap();
        assert!(Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err());
        drop(held);
        let file = File::open(location.path()).unwrap();
        assert!(Flock::lock(file, FlockArg::LockExclusiveNonblock).is_ok());
        let mode = std::fs::metadata(location.path()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(dir.path().join("cubbi")).unwrap().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
    }

    #[test]
    fn timeout_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let location = LockLocation::User(dir.path().join("cubbi/ports.lock"));
        let _held = PortLock::acquire(&location, Duration::from_secs(1)).unwrap();
        let started = Instant::now();
        let err = match PortLock::acquire(&location, Duration::from_millis(300)) {
            Ok(_) => panic!("a second holder got the lock"),
            Err(err) => err.to_string(),
        };
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid = std::process::id();
        assert!(
            err.contains(&format!("held by pid {pid}")) && err.contains("gave up after"),
            "{err}"
        );
        assert!(
            err.contains(&user_name(nix::unistd::getuid().as_raw())),
            "{err}"
        );
    }

    #[test]
    fn a_symlinked_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "").unwrap();
        let link = dir.path().join("ports.lock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for location in [
            LockLocation::System(link.clone()),
            LockLocation::User(link.clone()),
        ] {
            let err = match PortLock::acquire(&location, Duration::from_millis(100)) {
                Ok(_) => panic!("followed a symlink: {location:?}"),
                Err(err) => err.to_string(),
            };
            assert!(err.contains("symlink"), "{err}");
        }
    }

    #[test]
    fn the_system_lock_is_never_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ports.lock");
        assert!(PortLock::acquire(&LockLocation::System(path.clone()), Duration::ZERO).is_err());
        assert!(!path.exists());
    }

    #[test]
    fn a_shared_user_lock_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("cubbi");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let location = LockLocation::User(shared.join("ports.lock"));
        let err = match PortLock::acquire(&location, Duration::ZERO) {
            Ok(_) => panic!("used a world-writable folder"),
            Err(err) => err.to_string(),
        };
        assert!(err.contains("others can write"), "{err}");
    }

    #[test]
    fn without_a_system_lock_the_user_lock_is_used() {
        // This host has no `cubbi setup` lock in the test environment unless setup ran here.
        if Path::new(SYSTEM_LOCK_FILE).symlink_metadata().is_ok() {
            assert_eq!(
                LockLocation::resolve().unwrap(),
                LockLocation::System(SYSTEM_LOCK_FILE.into())
            );
        } else {
            assert!(matches!(
                LockLocation::resolve().unwrap(),
                LockLocation::User(_)
            ));
        }
    }

    #[test]
    fn prepared_system_lock_has_its_modes() {
        let dir = tempfile::tempdir().unwrap();
        let lock_dir = dir.path().join("cubbi");
        let gid = nix::unistd::getgid().as_raw();
        let prepared = match prepare_system_lock(&lock_dir, gid) {
            Ok(path) => path,
            // chown to root needs root; unprivileged runs say so, CI (root) never skips.
            Err(err)
                if err.kind() == std::io::ErrorKind::PermissionDenied
                    && std::env::var("CI").as_deref() != Ok("true") =>
            {
                eprintln!("not checked without root: {err}");
                return;
            }
            Err(err) => panic!("{err}"),
        };
        assert_eq!(prepared, lock_dir.join("ports.lock"));
        let dir_meta = std::fs::metadata(&lock_dir).unwrap();
        assert_eq!(
            (dir_meta.mode() & 0o777, dir_meta.uid(), dir_meta.gid()),
            (0o770, 0, gid)
        );
        let file_meta = std::fs::metadata(&prepared).unwrap();
        assert_eq!(
            (file_meta.mode() & 0o777, file_meta.uid(), file_meta.gid()),
            (0o660, 0, gid)
        );
        assert!(system_lock_ready(&lock_dir, gid));
        assert!(!system_lock_ready(&lock_dir, gid.wrapping_add(1)));
        std::fs::set_permissions(
            &prepared,
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )
        .unwrap();
        assert!(
            !system_lock_ready(&lock_dir, gid),
            "a world-writable lock is not ready"
        );
        // Twice is fine (and mends the mode), and the lock then opens as a system lock.
        prepare_system_lock(&lock_dir, gid).unwrap();
        assert!(system_lock_ready(&lock_dir, gid));
        PortLock::acquire(&LockLocation::System(prepared), Duration::ZERO).unwrap();
        // A symlink in place of the folder is refused.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        assert!(prepare_system_lock(&link, gid).is_err());
    }

    #[test]
    fn proc_locks_lines() {
        let line = "1: FLOCK  ADVISORY  WRITE 4242 08:01:5678 0 EOF";
        assert_eq!(lock_holder(line, 8, 1, 5678), Some(4242));
        assert_eq!(lock_holder(line, 8, 1, 5679), None);
        let line = "2: FLOCK  ADVISORY  WRITE 77 00:1a:12 0 EOF";
        assert_eq!(lock_holder(line, 0, 26, 12), Some(77));
    }
}
