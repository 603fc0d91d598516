//! SSH port allocation, race-free across processes: under a host-wide `flock`, skip ports held
//! by cubbi containers in any state and ports anything else has bound; the container's label is
//! the reservation, so the lock is held until the container exists.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::api::ApiError;
use crate::config::PortRange;

/// The host-wide lock file. `/run/lock` is shared by every user on Debian and Ubuntu.
pub fn default_lock_path() -> PathBuf {
    for dir in ["/run/lock", "/var/lock"] {
        if Path::new(dir).is_dir() {
            return Path::new(dir).join("cubbi-ports.lock");
        }
    }
    std::env::temp_dir().join("cubbi-ports.lock")
}

/// Holds the allocation lock; dropping it releases the lock.
pub struct PortLock {
    _lock: Flock<File>,
}

impl PortLock {
    /// Blocks until this process holds the lock (run it on a blocking thread).
    pub fn acquire(path: &Path) -> Result<Self, ApiError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|err| {
                ApiError::unavailable(format!("cannot open {}: {err}", path.display()))
            })?;
        // Everyone who allocates must be able to take the lock, whoever created the file.
        let _ = nix::sys::stat::fchmod(&file, nix::sys::stat::Mode::from_bits_truncate(0o666));
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, err)| {
            ApiError::unavailable(format!("cannot lock {}: {err}", path.display()))
        })?;
        Ok(Self { _lock: lock })
    }
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
        let path = dir.path().join("ports.lock");
        let held = PortLock::acquire(&path).unwrap();
        let file = File::options().write(true).open(&path).unwrap();
        assert!(Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err());
        drop(held);
        let file = File::options().write(true).open(&path).unwrap();
        assert!(Flock::lock(file, FlockArg::LockExclusiveNonblock).is_ok());
    }
}
