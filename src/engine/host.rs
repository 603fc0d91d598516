//! What the host is: kernel, distro, init system, cgroups, user namespaces, installed programs.
//! [`HostProbe`] is the boundary to the real machine; [`HostFacts`] is plain data the plan and
//! the doctor decide on, so both are tested against fixtures.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::subnet::{self, Route};

/// Reads the machine. The real one is [`RealHost`]; tests use a fixture.
pub trait HostProbe: Send + Sync {
    /// `uname -r`.
    fn kernel_release(&self) -> Option<String>;
    /// A text file such as `/etc/os-release` or `/proc/mounts`; `None` when unreadable.
    fn read_file(&self, path: &Path) -> Option<String>;
    /// The program's path on `PATH` (plus the sbin folders, which sudo may leave out).
    fn find_program(&self, name: &str) -> Option<PathBuf>;
    fn is_root(&self) -> bool;
}

/// The running machine.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealHost;

impl HostProbe for RealHost {
    fn kernel_release(&self) -> Option<String> {
        nix::sys::utsname::uname()
            .ok()
            .map(|name| name.release().to_string_lossy().into_owned())
    }

    fn read_file(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    fn find_program(&self, name: &str) -> Option<PathBuf> {
        let path = std::env::var("PATH").unwrap_or_default();
        path.split(':')
            .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
            .filter(|dir| !dir.is_empty())
            .map(|dir| Path::new(dir).join(name))
            .find(|candidate| is_executable(candidate))
    }

    fn is_root(&self) -> bool {
        nix::unistd::geteuid().is_root()
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// A kernel version as `major.minor.patch`, parsed from strings like `5.4.0-100-generic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KernelVersion {
    pub fn parse(release: &str) -> Option<Self> {
        let numeric: String = release
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut parts = numeric.split('.').filter(|part| !part.is_empty());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(Self {
            major,
            minor,
            patch,
        })
    }

    pub const fn new(major: u32, minor: u32) -> Self {
        Self {
            major,
            minor,
            patch: 0,
        }
    }
}

impl std::fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The first kernel with idmapped mounts, which Sysbox uses instead of shiftfs.
pub const IDMAPPED_MOUNTS_SINCE: KernelVersion = KernelVersion::new(5, 12);
/// The oldest kernel Sysbox supports at all (with shiftfs).
pub const SYSBOX_MINIMUM_KERNEL: KernelVersion = KernelVersion::new(5, 5);

/// The distro from `/etc/os-release`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Distro {
    pub id: String,
    pub id_like: Vec<String>,
    pub version_codename: String,
    pub pretty_name: String,
}

impl Distro {
    pub fn parse_os_release(text: &str) -> Self {
        let mut distro = Self::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value
                .trim()
                .trim_matches('"')
                .trim_matches('\'')
                .to_string();
            match key.trim() {
                "ID" => distro.id = value,
                "ID_LIKE" => distro.id_like = value.split_whitespace().map(String::from).collect(),
                "VERSION_CODENAME" => distro.version_codename = value,
                "PRETTY_NAME" => distro.pretty_name = value,
                _ => {}
            }
        }
        distro
    }

    /// Debian, Ubuntu and their derivatives: apt and .deb packages work.
    pub fn is_debian_family(&self) -> bool {
        ["debian", "ubuntu"]
            .iter()
            .any(|family| self.id == *family || self.id_like.iter().any(|like| like == family))
    }

    pub fn describe(&self) -> String {
        if !self.pretty_name.is_empty() {
            self.pretty_name.clone()
        } else if !self.id.is_empty() {
            self.id.clone()
        } else {
            "an unknown distribution".into()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    V1,
    /// v1 controllers with a v2 hierarchy mounted beside them (systemd's "hybrid" mode).
    Hybrid,
    V2,
    Unknown,
}

impl CgroupVersion {
    /// Decides from `/proc/mounts`: what is mounted at `/sys/fs/cgroup` and below it.
    pub fn from_mounts(mounts: &str) -> Self {
        let mut root_is_v2 = false;
        let mut any_v1 = false;
        let mut any_v2 = false;
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(mount_point), Some(fs_type)) = (fields.get(1), fields.get(2)) else {
                continue;
            };
            if !mount_point.starts_with("/sys/fs/cgroup") {
                continue;
            }
            match *fs_type {
                "cgroup2" if *mount_point == "/sys/fs/cgroup" => root_is_v2 = true,
                "cgroup2" => any_v2 = true,
                "cgroup" => any_v1 = true,
                _ => {}
            }
        }
        match (root_is_v2, any_v1, any_v2) {
            (true, _, _) => Self::V2,
            (false, true, true) => Self::Hybrid,
            (false, true, false) => Self::V1,
            _ => Self::Unknown,
        }
    }
}

/// Whether unprivileged user namespaces can be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UserNamespaces {
    /// `/proc/sys/user/max_user_namespaces`; 0 disables them.
    pub max: Option<u64>,
    /// Debian/Ubuntu's `kernel.unprivileged_userns_clone`, where the kernel has it.
    pub unprivileged_clone: Option<bool>,
}

impl UserNamespaces {
    pub fn enabled(&self) -> bool {
        self.max.is_some_and(|max| max > 0) && self.unprivileged_clone != Some(false)
    }
}

/// Programs setup and doctor care about.
pub const PROGRAMS: &[&str] = &[
    "dockerd",
    "containerd",
    "docker",
    "sysbox-runc",
    "sysbox-mgr",
    "sysbox-fs",
    "ip",
    "iptables",
    "nft",
    "ip6tables",
    "groupadd",
    "usermod",
    "apt-get",
    "dpkg",
    "curl",
];

/// Everything the plan decides on, read once.
#[derive(Debug, Clone, Serialize)]
pub struct HostFacts {
    pub kernel_release: String,
    pub kernel: Option<KernelVersion>,
    pub distro: Distro,
    pub systemd_is_pid1: bool,
    pub cgroup: CgroupVersion,
    pub user_namespaces: UserNamespaces,
    pub programs: std::collections::BTreeMap<String, PathBuf>,
    pub routes: Vec<Route>,
    pub is_root: bool,
    pub architecture: String,
    /// `fs.inotify.max_user_instances`.
    pub inotify_instances: Option<u64>,
    /// `kernel.keys.maxkeys`.
    pub keys_maxkeys: Option<u64>,
    /// `kernel.keys.maxbytes`.
    pub keys_maxbytes: Option<u64>,
    /// `net.ipv4.ip_forward`; `None` when unreadable.
    pub ip_forward: Option<bool>,
}

/// A host-wide sysctl that many system containers on one host exhaust: setup raises it to
/// `wanted` (never lowers it) and doctor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SysctlLimit {
    /// As `sysctl` and sysctl.d spell it.
    pub name: &'static str,
    /// Its file under /proc/sys.
    #[serde(skip)]
    pub path: &'static str,
    pub wanted: u64,
}

/// Enough inotify instances for many systemd containers. Every systemd, journald and dbus
/// holds some; without user namespaces (runc) they all count against root's limit, and at
/// Debian's default of 128 the 27th session's systemd cannot start (seen on this project's CI
/// machine). Sysbox's installer raises the same limit.
pub const INOTIFY_INSTANCES: SysctlLimit = SysctlLimit {
    name: "fs.inotify.max_user_instances",
    path: "/proc/sys/fs/inotify/max_user_instances",
    wanted: 8192,
};
/// Under Sysbox every session's root maps to the same unprivileged host user, so all sessions
/// share that user's kernel key quota; each session's runc takes a session keyring, and at the
/// kernel's defaults (200 keys, 20000 bytes) creates past about 24 sessions fail with "create
/// session key: disk quota exceeded". The values are the ones the sysbox-ce package sets.
pub const KEYS_MAXKEYS: SysctlLimit = SysctlLimit {
    name: "kernel.keys.maxkeys",
    path: "/proc/sys/kernel/keys/maxkeys",
    wanted: 20000,
};
pub const KEYS_MAXBYTES: SysctlLimit = SysctlLimit {
    name: "kernel.keys.maxbytes",
    path: "/proc/sys/kernel/keys/maxbytes",
    wanted: 1400000,
};
pub const IP_FORWARD_SYSCTL: &str = "/proc/sys/net/ipv4/ip_forward";
/// Where setup makes the inotify limit last across reboots.
pub const SYSCTL_CONF: &str = "/etc/sysctl.d/90-cubbi.conf";
/// Where setup makes the key quota last across reboots: a file of its own, so each step writes
/// only what it owns (uninstall removes both).
pub const KEY_QUOTA_CONF: &str = "/etc/sysctl.d/90-cubbi-keys.conf";

impl HostFacts {
    pub fn gather(host: &dyn HostProbe) -> Self {
        let kernel_release = host.kernel_release().unwrap_or_default();
        let read = |path: &str| host.read_file(Path::new(path));
        let number = |path: &str| read(path).and_then(|text| text.trim().parse::<u64>().ok());
        Self {
            kernel: KernelVersion::parse(&kernel_release),
            kernel_release,
            distro: Distro::parse_os_release(&read("/etc/os-release").unwrap_or_default()),
            // /proc/1/comm is "systemd" when systemd is init, also inside a system container.
            systemd_is_pid1: read("/proc/1/comm").is_some_and(|comm| comm.trim() == "systemd"),
            cgroup: CgroupVersion::from_mounts(&read("/proc/mounts").unwrap_or_default()),
            user_namespaces: UserNamespaces {
                max: number("/proc/sys/user/max_user_namespaces"),
                unprivileged_clone: number("/proc/sys/kernel/unprivileged_userns_clone")
                    .map(|value| value != 0),
            },
            programs: PROGRAMS
                .iter()
                .filter_map(|name| Some((name.to_string(), host.find_program(name)?)))
                .collect(),
            routes: read("/proc/net/route")
                .and_then(|text| subnet::parse_proc_net_route(&text).ok())
                .unwrap_or_default(),
            is_root: host.is_root(),
            architecture: std::env::consts::ARCH.to_string(),
            inotify_instances: number(INOTIFY_INSTANCES.path),
            keys_maxkeys: number(KEYS_MAXKEYS.path),
            keys_maxbytes: number(KEYS_MAXBYTES.path),
            ip_forward: number(IP_FORWARD_SYSCTL).map(|value| value != 0),
        }
    }

    pub fn has(&self, program: &str) -> bool {
        self.programs.contains_key(program)
    }

    /// Whether the three Sysbox programs are installed.
    pub fn has_sysbox(&self) -> bool {
        ["sysbox-runc", "sysbox-mgr", "sysbox-fs"]
            .iter()
            .all(|name| self.has(name))
    }
}

#[cfg(test)]
pub mod fixture {
    use std::collections::BTreeMap;

    use super::*;

    /// A made-up host: files by path, programs by name.
    #[derive(Default, Clone)]
    pub struct FixtureHost {
        pub release: String,
        pub files: BTreeMap<PathBuf, String>,
        pub programs: Vec<String>,
        pub root: bool,
    }

    impl FixtureHost {
        /// A Debian bookworm machine with systemd, cgroup v2, docker.io and no Sysbox.
        pub fn debian_with_systemd() -> Self {
            let mut host = Self {
                release: "6.1.0-18-amd64".into(),
                root: true,
                ..Default::default()
            };
            host.file("/etc/os-release", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_CODENAME=bookworm\n")
                .file("/proc/1/comm", "systemd\n")
                .file("/proc/mounts", "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n")
                .file("/proc/sys/user/max_user_namespaces", "63000\n")
                .file("/proc/sys/fs/inotify/max_user_instances", "128\n")
                .file("/proc/sys/kernel/keys/maxkeys", "200\n")
                .file("/proc/sys/kernel/keys/maxbytes", "20000\n")
                .file("/proc/sys/net/ipv4/ip_forward", "0\n")
                .file("/proc/net/route", "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\neth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n");
            host.programs = [
                "dockerd",
                "containerd",
                "docker",
                "ip",
                "iptables",
                "groupadd",
                "usermod",
                "apt-get",
                "dpkg",
            ]
            .map(String::from)
            .to_vec();
            host
        }

        pub fn file(&mut self, path: &str, text: &str) -> &mut Self {
            self.files.insert(PathBuf::from(path), text.to_string());
            self
        }
    }

    impl HostProbe for FixtureHost {
        fn kernel_release(&self) -> Option<String> {
            Some(self.release.clone())
        }
        fn read_file(&self, path: &Path) -> Option<String> {
            self.files.get(path).cloned()
        }
        fn find_program(&self, name: &str) -> Option<PathBuf> {
            self.programs
                .iter()
                .any(|program| program == name)
                .then(|| PathBuf::from("/usr/bin").join(name))
        }
        fn is_root(&self) -> bool {
            self.root
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::FixtureHost;
    use super::*;

    #[test]
    fn kernel_strings_parse() {
        assert_eq!(
            KernelVersion::parse("5.4.0-100-generic"),
            Some(KernelVersion {
                major: 5,
                minor: 4,
                patch: 0
            })
        );
        assert_eq!(
            KernelVersion::parse("6.18.44"),
            Some(KernelVersion {
                major: 6,
                minor: 18,
                patch: 44
            })
        );
        assert_eq!(
            KernelVersion::parse("6.1"),
            Some(KernelVersion {
                major: 6,
                minor: 1,
                patch: 0
            })
        );
        assert_eq!(
            KernelVersion::parse("5.15.153.1-microsoft-standard-WSL2").map(|k| k.minor),
            Some(15)
        );
        assert_eq!(KernelVersion::parse("garbage"), None);
        assert!(KernelVersion::parse("5.4.0-100-generic").unwrap() < IDMAPPED_MOUNTS_SINCE);
        assert!(KernelVersion::parse("6.18.44").unwrap() >= IDMAPPED_MOUNTS_SINCE);
    }

    #[test]
    fn os_release_families() {
        let ubuntu = Distro::parse_os_release(
            "ID=ubuntu\nID_LIKE=debian\nPRETTY_NAME=\"Ubuntu 24.04 LTS\"\n",
        );
        assert!(ubuntu.is_debian_family());
        let mint = Distro::parse_os_release("ID=linuxmint\nID_LIKE=\"ubuntu debian\"\n");
        assert!(mint.is_debian_family());
        let fedora = Distro::parse_os_release("ID=fedora\n");
        assert!(!fedora.is_debian_family());
        assert_eq!(Distro::default().describe(), "an unknown distribution");
    }

    #[test]
    fn cgroup_versions_from_mounts() {
        let v2 = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        let v1 = "tmpfs /sys/fs/cgroup tmpfs ro 0 0\ncgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n";
        let hybrid = format!("{v1}cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n");
        assert_eq!(CgroupVersion::from_mounts(v2), CgroupVersion::V2);
        assert_eq!(CgroupVersion::from_mounts(v1), CgroupVersion::V1);
        assert_eq!(CgroupVersion::from_mounts(&hybrid), CgroupVersion::Hybrid);
        assert_eq!(CgroupVersion::from_mounts(""), CgroupVersion::Unknown);
    }

    #[test]
    fn user_namespaces_need_both_knobs() {
        let on = UserNamespaces {
            max: Some(100),
            unprivileged_clone: None,
        };
        assert!(on.enabled());
        assert!(!UserNamespaces { max: Some(0), ..on }.enabled());
        assert!(
            !UserNamespaces {
                unprivileged_clone: Some(false),
                ..on
            }
            .enabled()
        );
    }

    #[test]
    fn gathers_a_fixture_host() {
        let facts = HostFacts::gather(&FixtureHost::debian_with_systemd());
        assert!(facts.systemd_is_pid1);
        assert_eq!(facts.cgroup, CgroupVersion::V2);
        assert!(facts.distro.is_debian_family());
        assert!(facts.has("dockerd") && !facts.has_sysbox());
        assert_eq!(facts.routes.len(), 1);
        assert!(facts.user_namespaces.enabled());
        assert_eq!(facts.inotify_instances, Some(128));
        assert_eq!(
            (facts.keys_maxkeys, facts.keys_maxbytes),
            (Some(200), Some(20000))
        );
    }

    #[test]
    fn sysctl_paths_match_their_names() {
        for limit in [INOTIFY_INSTANCES, KEYS_MAXKEYS, KEYS_MAXBYTES] {
            assert_eq!(
                limit.path,
                format!("/proc/sys/{}", limit.name.replace('.', "/")),
                "{}",
                limit.name
            );
        }
    }

    #[test]
    fn the_real_host_answers_without_panicking() {
        let facts = HostFacts::gather(&RealHost);
        assert!(!facts.kernel_release.is_empty());
    }
}
