//! `cubbi doctor`: every check has an id, a status, a one-line finding and a concrete remedy.
//! The checks are pure functions over [`DoctorFacts`] (see [`checks`]); [`probe`] gathers the
//! facts from the real machine, without root where it can and saying so where it cannot.

pub mod checks;
pub mod probe;
pub mod uid_probe;
pub mod verify;

use serde::Serialize;

pub use probe::DoctorFacts;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub id: &'static str,
    pub status: Status,
    pub finding: String,
    /// A command to run, or empty when there is nothing to do.
    pub remedy: String,
}

impl Check {
    pub fn ok(id: &'static str, finding: impl Into<String>) -> Self {
        Self {
            id,
            status: Status::Ok,
            finding: finding.into(),
            remedy: String::new(),
        }
    }

    pub fn warn(id: &'static str, finding: impl Into<String>, remedy: impl Into<String>) -> Self {
        Self {
            id,
            status: Status::Warn,
            finding: finding.into(),
            remedy: remedy.into(),
        }
    }

    pub fn fail(id: &'static str, finding: impl Into<String>, remedy: impl Into<String>) -> Self {
        Self {
            id,
            status: Status::Fail,
            finding: finding.into(),
            remedy: remedy.into(),
        }
    }
}

/// Whether the run passed: no check failed.
pub fn passed(checks: &[Check]) -> bool {
    checks.iter().all(|check| check.status != Status::Fail)
}

/// The one thing to do next: the remedy of the first failure, else of the first warning, else
/// how to start.
pub fn next_step(checks: &[Check]) -> String {
    for status in [Status::Fail, Status::Warn] {
        if let Some(check) = checks
            .iter()
            .find(|check| check.status == status && !check.remedy.is_empty())
        {
            return format!("next: {} ({} {status})", check.remedy, check.id);
        }
    }
    "next: all is well; run `cubbi` in a project folder to start a session there".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_step_is_the_first_failure_then_warning() {
        let ok = Check::ok("kernel", "6.1");
        let warn = Check::warn("disk", "low", "free some space");
        let fail = Check::fail("socket", "missing", "sudo cubbi setup");
        assert_eq!(
            next_step(&[ok.clone(), warn.clone(), fail.clone()]),
            "next: sudo cubbi setup (socket fail)"
        );
        assert_eq!(
            next_step(&[ok.clone(), warn]),
            "next: free some space (disk warn)"
        );
        assert!(next_step(&[ok]).contains("run `cubbi` in a project folder"));
    }
}
