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

/// The version command a built cubbi image declares in its metadata label.
pub fn metadata_of(endpoint: &str, name: &str) -> Result<Vec<String>, Failed> {
    let home = TestHome::new();
    let shown = Cubbi::new(&home)
        .args(["--endpoint", endpoint, "--json", "image", "inspect", name])
        .run()
        .success();
    let value: serde_json::Value = serde_json::from_str(&shown.stdout())?;
    let command = value["metadata"]["version_command"]
        .as_array()
        .ok_or_else(|| format!("no metadata.version_command in {value}"))?
        .iter()
        .filter_map(|word| word.as_str().map(str::to_string))
        .collect();
    Ok(command)
}
