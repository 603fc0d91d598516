//! Images the run builds once and shares: `cubbi-base` and the tool images a test asks for
//! (through the real `cubbi image build`).

use std::sync::Mutex;

use libtest_mimic::Failed;

use super::{Cubbi, TestHome};

static BUILT: Mutex<Vec<(String, Result<(), String>)>> = Mutex::new(Vec::new());

/// Builds the cubbi image `name` (and base first) once per run, through `cubbi image build`;
/// a failed build is reported to every later test without trying again.
pub fn ensure_image(endpoint: &str, name: &str) -> Result<(), Failed> {
    if name != "base" {
        ensure_image(endpoint, "base")?;
    }
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, outcome)) = built.iter().find(|(image, _)| image == name) {
        return outcome.clone().map_err(Failed::from);
    }
    let home = TestHome::new();
    let ran = Cubbi::new(&home)
        .args(["--endpoint", endpoint, "image", "build", name])
        .run();
    let outcome = if ran.output.status.success() {
        Ok(())
    } else {
        Err(format!("building cubbi-{name} failed:\n{}", ran.stderr()))
    };
    built.push((name.to_string(), outcome.clone()));
    outcome.map_err(Failed::from)
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
