//! Whether this run has Sysbox: a host with the sysbox-ce package, or the test kit
//! (`with-sysbox.sh`, which install/test.sh runs the suite under). Session tests use the
//! default runtime, sysbox-runc, and fail (never fall back to runc silently) without it.

use std::path::Path;

use libtest_mimic::Failed;

pub const RUNTIME: &str = "sysbox-runc";
/// Where the package (and the kit) puts it, and what `cubbi setup` registers.
pub const RUNC_PATH: &str = "/usr/bin/sysbox-runc";

/// sysbox-runc is there and sysbox-mgr and sysbox-fs answer on their sockets.
pub fn installed() -> bool {
    Path::new(RUNC_PATH).is_file()
        && Path::new("/run/sysbox/sysmgr.sock").exists()
        && Path::new("/run/sysbox/sysfs.sock").exists()
}

/// For a test that needs Sysbox: an explanation of what is missing and how to get it.
pub fn require() -> Result<(), Failed> {
    if installed() {
        return Ok(());
    }
    Err(format!(
        "this test needs Sysbox ({RUNC_PATH} with sysbox-mgr and sysbox-fs running): run the \
         suite through install/test.sh, which uses the Sysbox test kit (CUBBI_SYSBOX_KIT) or an \
         installed Sysbox{}",
        if std::env::var("CUBBI_TEST_SYSBOX").is_ok_and(|v| v == "required") {
            "; CUBBI_TEST_SYSBOX=required was set, so the kit did not come up"
        } else {
            ""
        }
    )
    .into())
}

/// For a test of the host-without-Sysbox path (`*_without_sysbox`): install/test.sh runs those
/// outside the Sysbox kit, whose namespace makes Sysbox visible to everything inside it.
pub fn require_absent() -> Result<(), Failed> {
    if Path::new(RUNC_PATH).exists() {
        return Err(format!(
            "this test covers a host without Sysbox, but {RUNC_PATH} exists here: run it \
             outside the Sysbox kit (install/test.sh does)"
        )
        .into());
    }
    Ok(())
}
