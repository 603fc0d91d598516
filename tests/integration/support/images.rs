//! Images the run builds once and shares: `cubbi-base` (through the real `cubbi image build`).

use std::sync::Mutex;

use libtest_mimic::Failed;

use super::{Cubbi, TestHome};

static BASE_BUILT: Mutex<Option<Result<(), String>>> = Mutex::new(None);

/// Builds `cubbi-base` on the run's dockerd the first time a test needs it.
pub fn ensure_base(endpoint: &str) -> Result<(), Failed> {
    let mut slot = BASE_BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let outcome = slot.get_or_insert_with(|| {
        let home = TestHome::new();
        let ran = Cubbi::new(&home)
            .args(["--endpoint", endpoint, "image", "build", "base"])
            .run();
        if ran.output.status.success() {
            Ok(())
        } else {
            Err(format!("building cubbi-base failed:\n{}", ran.stderr()))
        }
    });
    outcome.clone().map_err(Failed::from)
}
