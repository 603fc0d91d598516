//! Whether this run has Sysbox, and what follows from it.
//!
//! A host has Sysbox the way the sysbox-ce package installs it: `sysbox-runc` on PATH (or at
//! its package path) with sysbox-mgr and sysbox-fs answering on `/run/sysbox/*.sock`.
//! install/test.sh may bring it up through `CUBBI_TEST_SYSBOX_WRAPPER`; the suite sees it the
//! same way either way.
//!
//! - With Sysbox, sessions run under the default runtime, sysbox-runc, as they do for users.
//! - Without it, every session test runs the same scenario under the explicit insecure mode
//!   (`--runtime runc --unsafe-runc`). Only the tests that prove a property of Sysbox itself
//!   (the Sysbox group, registered with `sysbox_trials!`) do not run; the run ends with a line
//!   naming them, and `CUBBI_TEST_REQUIRE_SYSBOX=1` makes their absence a failure.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use libtest_mimic::{Arguments, Failed, Trial};

pub const RUNTIME: &str = "sysbox-runc";
/// Where the package puts it, and what `cubbi setup` registers.
pub const RUNC_PATH: &str = "/usr/bin/sysbox-runc";
const MGR_SOCKET: &str = "/run/sysbox/sysmgr.sock";
const FS_SOCKET: &str = "/run/sysbox/sysfs.sock";

/// The flags that put a session under runc on a host without Sysbox.
pub const UNSAFE_RUNC_FLAGS: [&str; 3] = ["--runtime", "runc", "--unsafe-runc"];

/// The `sysbox-runc` a dockerd of this run registers: on PATH, else the package's path.
pub fn runc_path() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(RUNTIME))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from(RUNC_PATH)).filter(|path| path.is_file()))
}

/// sysbox-runc is there and sysbox-mgr and sysbox-fs answer on their sockets.
pub fn installed() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        runc_path().is_some() && answers(Path::new(MGR_SOCKET)) && answers(Path::new(FS_SOCKET))
    })
}

/// A daemon listens on `socket` (sysbox-mgr and sysbox-fs serve gRPC on unix sockets).
fn answers(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

/// Why the Sysbox group does not run here, for the not-run line and the failure under
/// `CUBBI_TEST_REQUIRE_SYSBOX=1`.
fn absence() -> String {
    match runc_path() {
        None => "this host has no sysbox-runc".to_string(),
        Some(path) => format!(
            "{} is there but sysbox-mgr and sysbox-fs do not answer on {MGR_SOCKET} and {FS_SOCKET}",
            path.display()
        ),
    }
}

fn required_by_environment() -> bool {
    std::env::var("CUBBI_TEST_REQUIRE_SYSBOX").is_ok_and(|value| value == "1")
}

/// How this run's sessions run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionRuntime {
    /// The default runtime, sysbox-runc, as on a user's Sysbox host.
    Sysbox,
    /// `--runtime runc --unsafe-runc`: the same scenarios, without Sysbox's isolation.
    UnsafeRunc,
}

impl SessionRuntime {
    /// What the session tests of this run use.
    pub fn of_this_run() -> Self {
        if installed() {
            Self::Sysbox
        } else {
            Self::UnsafeRunc
        }
    }

    /// The `session create` flags that select it (none for the default runtime).
    pub fn create_flags(self) -> &'static [&'static str] {
        match self {
            Self::Sysbox => &[],
            Self::UnsafeRunc => &UNSAFE_RUNC_FLAGS,
        }
    }

    /// The OCI runtime name a `CreateRequest` or a service config carries.
    pub fn runtime_name(self) -> &'static str {
        match self {
            Self::Sysbox => RUNTIME,
            Self::UnsafeRunc => "runc",
        }
    }

    /// Whether the insecure runc mode is on (the create warning says "NOT isolated").
    pub fn unsafe_runc(self) -> bool {
        self == Self::UnsafeRunc
    }
}

/// For a test in the Sysbox group: an explanation of what is missing and how to get it.
pub fn require() -> Result<(), Failed> {
    if installed() {
        return Ok(());
    }
    Err(format!(
        "this test proves a property of Sysbox and needs it ({RUNTIME} on PATH with sysbox-mgr \
         and sysbox-fs running), but {}: run it on a Sysbox host, or through install/test.sh \
         with CUBBI_TEST_SYSBOX_WRAPPER set to a command that provides Sysbox",
        absence()
    )
    .into())
}

/// For a test of the host-without-Sysbox path (`*_without_sysbox`): install/test.sh runs those
/// outside `CUBBI_TEST_SYSBOX_WRAPPER`, which may make Sysbox visible to everything inside it.
pub fn require_absent() -> Result<(), Failed> {
    if let Some(path) = runc_path() {
        return Err(format!(
            "this test covers a host without Sysbox, but {} exists here: run it outside the \
             Sysbox wrapper (install/test.sh does)",
            path.display()
        )
        .into());
    }
    Ok(())
}

/// The Sysbox group's tests registered in this run, by full name.
static GROUP: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Registers tests of the Sysbox group. Without Sysbox they are listed as ignored and named in
/// the not-run line; with `CUBBI_TEST_REQUIRE_SYSBOX=1` they run regardless, and fail on
/// `require()` when Sysbox is missing.
pub fn group(trials: Vec<Trial>) -> Vec<Trial> {
    let run_them = installed() || required_by_environment();
    let mut group = GROUP
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    trials
        .into_iter()
        .map(|trial| {
            group.push(trial.name().to_string());
            if run_them {
                trial
            } else {
                trial.with_ignored_flag(true)
            }
        })
        .collect()
}

/// Whether `args` (the harness's filter and skips) select the test named `name`.
fn selected(args: &Arguments, name: &str) -> bool {
    let matches = |pattern: &str| {
        if args.exact {
            name == pattern
        } else {
            name.contains(pattern)
        }
    };
    args.filter.as_deref().is_none_or(matches) && !args.skip.iter().any(|skip| matches(skip))
}

/// The run's closing word on the Sysbox group: the not-run line when the selected part of the
/// group was left out. Printed after the harness's own summary.
pub fn not_run_line(args: &Arguments) -> Option<String> {
    if installed() || required_by_environment() || args.ignored || args.include_ignored {
        return None;
    }
    let group = GROUP
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let names: Vec<&str> = group
        .iter()
        .map(String::as_str)
        .filter(|name| selected(args, name))
        .collect();
    if names.is_empty() {
        return None;
    }
    Some(format!(
        "not run (needs Sysbox, {}): {} tests: {}",
        absence(),
        names.len(),
        names.join(", ")
    ))
}
