//! A disk limit on what each session writes to its root file system, where the engine's
//! storage can enforce one.
//!
//! Docker honours `StorageOpt size` on two drivers of Linux: btrfs (a quota group on the
//! container's subvolume, which counts the image too) and overlay2 when its data root is on
//! XFS mounted with project quotas (`pquota`/`prjquota`; counts only what the container
//! wrote). Anywhere else it refuses the create. So the service finds out once, at start, and
//! either limits every session or says why it cannot. What the limit does not cover: named
//! volumes (the agent data volume, project config volumes) and, under runc, the inner
//! Docker's anonymous volume (under Sysbox that lives in sysbox-mgr's own folder on the host).

use std::path::Path;

use bollard::models::SystemInfo;

use crate::local::limits::DiskLimit as SessionDiskLimit;

/// What the service does about disk, decided at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskLimit {
    /// Every session may write this much to its root file system.
    PerSession(SessionDiskLimit),
    /// No limit, and why (shown at start and by `doctor`).
    Unavailable(String),
}

impl DiskLimit {
    pub fn per_session(&self) -> Option<SessionDiskLimit> {
        match self {
            Self::PerSession(limit) => Some(*limit),
            Self::Unavailable(_) => None,
        }
    }
}

/// How the engine's storage limits a container's size: `Ok(counts_image)`, or why it cannot.
/// `mounts` is `/proc/self/mounts` of the host the engine runs on (the service only talks to
/// a local socket, so it is this host's).
pub fn support(info: &SystemInfo, mounts: &str) -> Result<bool, String> {
    let driver = info.driver.as_deref().unwrap_or("unknown");
    if driver == "btrfs" {
        return Ok(true);
    }
    if driver != "overlay2" {
        return Err(format!(
            "the engine's storage driver is {driver}; disk limits need btrfs, or overlay2 on \
             XFS with project quotas"
        ));
    }
    let Some(root) = info.docker_root_dir.as_deref() else {
        return Err("the engine does not say where its data root is".to_string());
    };
    let Some((fstype, options)) = mount_of(Path::new(root), mounts) else {
        return Err(format!("no mount holds the engine's data root {root}"));
    };
    if fstype != "xfs" {
        return Err(format!(
            "the engine's data root {root} is on {fstype}; disk limits need XFS mounted with \
             pquota (or the btrfs storage driver)"
        ));
    }
    let quotas = options
        .split(',')
        .any(|option| matches!(option, "pquota" | "prjquota" | "pqnoenforce"));
    if !quotas {
        return Err(format!(
            "the engine's data root {root} is on XFS without project quotas; mount it with \
             -o pquota"
        ));
    }
    Ok(false)
}

/// The file system type and options of the mount holding `path`: the longest mount point
/// that is `path` or one of its parents (later mounts of the same point win).
fn mount_of<'a>(path: &Path, mounts: &'a str) -> Option<(&'a str, &'a str)> {
    let mut best: Option<(usize, &str, &str)> = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_device), Some(point), Some(fstype), Some(options)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let point = point.replace("\\040", " ");
        if path.starts_with(&point) && best.is_none_or(|(len, _, _)| point.len() >= len) {
            best = Some((point.len(), fstype, options));
        }
    }
    best.map(|(_, fstype, options)| (fstype, options))
}

/// The limit in effect: `configured` when set (refused where the engine cannot honour it, so a
/// limit the operator asked for is never silently missing), else a quarter of the data root's
/// file system where a limit is possible.
pub fn decide(
    configured: Option<i64>,
    info: &SystemInfo,
    mounts: &str,
    filesystem_bytes: impl FnOnce(&Path) -> Option<u64>,
) -> Result<DiskLimit, String> {
    let limit = |writable_bytes, counts_image| {
        DiskLimit::PerSession(SessionDiskLimit {
            writable_bytes,
            counts_image,
        })
    };
    match (support(info, mounts), configured) {
        (Err(why), Some(_)) => Err(format!("limits.disk is set, but {why}")),
        (Err(why), None) => Ok(DiskLimit::Unavailable(why)),
        (Ok(counts_image), Some(bytes)) => Ok(limit(bytes, counts_image)),
        (Ok(counts_image), None) => {
            let root = info.docker_root_dir.as_deref().unwrap_or("/");
            Ok(match filesystem_bytes(Path::new(root)) {
                Some(total) => limit(i64::try_from(total / 4).unwrap_or(i64::MAX), counts_image),
                None => DiskLimit::Unavailable(format!("cannot measure the file system of {root}")),
            })
        }
    }
}

/// The size of the file system holding `path`.
pub fn filesystem_bytes(path: &Path) -> Option<u64> {
    let stats = nix::sys::statvfs::statvfs(path).ok()?;
    Some(stats.blocks() * stats.fragment_size())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(driver: &str, root: &str) -> SystemInfo {
        SystemInfo {
            driver: Some(driver.to_string()),
            docker_root_dir: Some(root.to_string()),
            ..Default::default()
        }
    }

    const MOUNTS: &str = "\
/dev/vda / ext4 rw,relatime 0 0
/dev/vdb /var/lib/cubbi-docker xfs rw,relatime,attr2,inode64,prjquota 0 0
/dev/vdc /srv/plain xfs rw,relatime,attr2,inode64,noquota 0 0
";

    fn per_session(writable_bytes: i64, counts_image: bool) -> DiskLimit {
        DiskLimit::PerSession(SessionDiskLimit {
            writable_bytes,
            counts_image,
        })
    }

    #[test]
    fn overlay2_on_xfs_with_project_quotas_can_limit() {
        let on = info("overlay2", "/var/lib/cubbi-docker");
        assert_eq!(support(&on, MOUNTS), Ok(false));
        assert_eq!(
            decide(Some(10 << 30), &on, MOUNTS, |_| None),
            Ok(per_session(10 << 30, false))
        );
        assert_eq!(
            decide(None, &on, MOUNTS, |_| Some(400 << 30)),
            Ok(per_session(100 << 30, false))
        );
    }

    /// btrfs limits the whole root file system, image included, on any mount.
    #[test]
    fn btrfs_can_limit_counting_the_image() {
        let on = info("btrfs", "/var/lib/docker");
        assert_eq!(support(&on, MOUNTS), Ok(true));
        let decided = decide(Some(1 << 30), &on, MOUNTS, |_| None).unwrap();
        assert_eq!(decided, per_session(1 << 30, true));
        let limit = decided.per_session().unwrap();
        assert_eq!(limit.storage_size(700 << 20), (1 << 30) + (700 << 20));
        let overlay = SessionDiskLimit {
            counts_image: false,
            ..limit
        };
        assert_eq!(overlay.storage_size(700 << 20), 1 << 30);
    }

    #[test]
    fn anything_else_says_why_and_a_configured_limit_is_refused() {
        let cases = [
            (
                info("vfs", "/var/lib/cubbi-docker"),
                "storage driver is vfs",
            ),
            (info("overlay2", "/var/lib/docker"), "is on ext4"),
            (
                info("overlay2", "/srv/plain/docker"),
                "without project quotas",
            ),
        ];
        for (engine, why) in cases {
            let reason = support(&engine, MOUNTS).unwrap_err();
            assert!(reason.contains(why), "{reason}");
            match decide(None, &engine, MOUNTS, |_| Some(1 << 40)).unwrap() {
                DiskLimit::Unavailable(text) => assert_eq!(text, reason),
                other => panic!("{other:?}"),
            }
            let refused = decide(Some(1 << 30), &engine, MOUNTS, |_| None).unwrap_err();
            assert!(refused.starts_with("limits.disk is set, but"), "{refused}");
        }
    }

    #[test]
    fn the_longest_mount_point_wins() {
        assert_eq!(
            mount_of(Path::new("/var/lib/cubbi-docker/overlay2"), MOUNTS),
            Some(("xfs", "rw,relatime,attr2,inode64,prjquota"))
        );
        assert_eq!(
            mount_of(Path::new("/var/lib/cubbi-dockerx"), MOUNTS).map(|m| m.0),
            Some("ext4")
        );
    }
}
