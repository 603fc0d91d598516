//! Where live changes and refused names live on the host, outside every session: one folder
//! (root's, group `cubbi`; `CUBBI_EGRESS_DIR` moves it) with, per session container,
//! `ID.policy` (the policy a `session egress` set, over the label the session was created
//! with) and `ID.denied` (the last names the resolver refused, written by the resolver).
//!
//! Both are read as hostile input all the same: bounded, parsed, and a policy file that does
//! not parse holds the session to `none` (the safe reading), never `open`.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::table::DENIED_KEPT;
use super::{DomainRule, EgressMode, EgressPolicy};

pub const DIR_ENV: &str = "CUBBI_EGRESS_DIR";
pub const DEFAULT_DIR: &str = "/var/lib/cubbi/egress";
/// More than a full policy of 256 names of 253 characters.
const MAX_FILE: u64 = 128 * 1024;
/// The file a running resolver writes its pid into.
const RESOLVER_MARK: &str = "resolver.pid";

/// What the resolver refused a session: the last names, and how many lookups and
/// connections in all.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeniedRecord {
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub lookups: u64,
    #[serde(default)]
    pub connections: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressStore {
    dir: PathBuf,
}

impl EgressStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `CUBBI_EGRESS_DIR`, else the system folder.
    pub fn from_env() -> Self {
        Self::new(
            std::env::var_os(DIR_ENV).map_or_else(|| PathBuf::from(DEFAULT_DIR), PathBuf::from),
        )
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Container ids are hex; anything else never becomes a path.
    fn path(&self, id: &str, kind: &str) -> Option<PathBuf> {
        (!id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| self.dir.join(format!("{id}.{kind}")))
    }

    /// The policy a live change set, if any.
    pub fn policy(&self, id: &str) -> Option<EgressPolicy> {
        let text = read_bounded(&self.path(id, "policy")?)?;
        Some(
            EgressPolicy::from_label(&text)
                .unwrap_or_else(|_| EgressPolicy::new(EgressMode::None, []).unwrap_or_default()),
        )
    }

    /// The policy in force: a live change's, else the label's (a label that does not read
    /// back holds the session to `none`).
    pub fn in_force(&self, id: &str, label: &str) -> EgressPolicy {
        self.policy(id).unwrap_or_else(|| {
            EgressPolicy::from_label(label)
                .unwrap_or_else(|_| EgressPolicy::new(EgressMode::None, []).unwrap_or_default())
        })
    }

    pub fn write_policy(&self, id: &str, policy: &EgressPolicy) -> std::io::Result<()> {
        let path = self
            .path(id, "policy")
            .ok_or_else(|| std::io::Error::other(format!("{id:?} is not a container id")))?;
        crate::atomic_file::write(&path, policy.to_label().as_bytes(), 0o640, 0o750)
    }

    /// What was refused, each name checked as a DNS name.
    pub fn denied(&self, id: &str) -> DeniedRecord {
        let Some(text) = self.path(id, "denied").and_then(|path| read_bounded(&path)) else {
            return DeniedRecord::default();
        };
        let mut record: DeniedRecord = serde_json::from_str(&text).unwrap_or_default();
        record.names = record
            .names
            .into_iter()
            .filter(|name| name.parse::<DomainRule>().is_ok())
            .take(DENIED_KEPT)
            .collect();
        record
    }

    pub fn write_denied(&self, id: &str, record: &DeniedRecord) -> std::io::Result<()> {
        let path = self
            .path(id, "denied")
            .ok_or_else(|| std::io::Error::other(format!("{id:?} is not a container id")))?;
        let text = serde_json::to_string(record).unwrap_or_else(|_| "{}".into());
        crate::atomic_file::write(&path, text.as_bytes(), 0o640, 0o750)
    }

    /// Says that the kernel holds this session to its policy now (the resolver writes it once
    /// the session's address is in the table), so a create can wait for it before it hands
    /// the session over.
    pub fn mark_held(&self, id: &str) -> std::io::Result<()> {
        let path = self
            .path(id, "held")
            .ok_or_else(|| std::io::Error::other(format!("{id:?} is not a container id")))?;
        crate::atomic_file::write(&path, b"held\n", 0o644, 0o750)
    }

    pub fn is_held(&self, id: &str) -> bool {
        self.path(id, "held")
            .is_some_and(|path| read_bounded(&path).is_some())
    }

    /// Forgets a session that is gone.
    pub fn remove(&self, id: &str) {
        for kind in ["policy", "denied", "held"] {
            if let Some(path) = self.path(id, kind) {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// Says that a resolver serves this folder's sessions (its pid), for creates to check.
    pub fn mark_resolver_running(&self) -> std::io::Result<()> {
        let pid = std::process::id().to_string();
        crate::atomic_file::write(&self.dir.join(RESOLVER_MARK), pid.as_bytes(), 0o644, 0o750)
    }

    /// Removes the mark of [`Self::mark_resolver_running`] (a resolver that stops cleanly).
    pub fn clear_resolver_mark(&self) {
        let _ = std::fs::remove_file(self.dir.join(RESOLVER_MARK));
    }

    /// Whether a resolver marked this folder and its process still runs. Without one, a
    /// session's policy is recorded but nothing enforces it.
    pub fn resolver_running(&self) -> bool {
        read_bounded(&self.dir.join(RESOLVER_MARK))
            .and_then(|text| text.trim().parse::<u32>().ok())
            .is_some_and(|pid| pid > 0 && Path::new(&format!("/proc/{pid}")).exists())
    }

    /// The container ids that have files here.
    pub fn ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let (id, _) = name.split_once('.')?;
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit())
                    .then(|| id.to_string())
            })
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// A regular file's text, at most [`MAX_FILE`] bytes, links not followed.
fn read_bounded(path: &Path) -> Option<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(MAX_FILE).read_to_string(&mut text).ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_change_wins_over_the_label_and_a_bad_file_closes() {
        let dir = tempfile::tempdir().unwrap();
        let store = EgressStore::new(dir.path());
        let label = r#"{"mode":"allow-list","domains":["a.test"]}"#;
        assert!(store.in_force("abc123", label).allows("a.test"));
        let wider = store
            .in_force("abc123", label)
            .allow("b.test".parse().unwrap())
            .unwrap();
        store.write_policy("abc123", &wider).unwrap();
        assert!(store.in_force("abc123", label).allows("b.test"));
        std::fs::write(dir.path().join("abc123.policy"), "{").unwrap();
        assert_eq!(store.in_force("abc123", label).mode(), EgressMode::None);
        assert!(store.write_policy("../etc", &wider).is_err());
        assert_eq!(store.ids(), ["abc123"]);
        assert!(!store.is_held("abc123"));
        store.mark_held("abc123").unwrap();
        assert!(store.is_held("abc123"));
        assert!(store.mark_held("../x").is_err() && !store.is_held("../x"));
        store.remove("abc123");
        assert!(store.ids().is_empty());
        assert!(!store.is_held("abc123"));
    }

    #[test]
    fn a_resolver_is_running_only_while_its_mark_names_a_live_process() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = EgressStore::new(dir.path());
        assert!(!store.resolver_running(), "no mark");
        store.mark_resolver_running().expect("mark");
        assert!(store.resolver_running(), "this process marked it");
        assert!(
            store.ids().is_empty(),
            "the mark is no session: {:?}",
            store.ids()
        );
        std::fs::write(dir.path().join(RESOLVER_MARK), "not a pid").expect("write");
        assert!(!store.resolver_running(), "garbage is no resolver");
        std::fs::write(dir.path().join(RESOLVER_MARK), "4294967295").expect("write");
        assert!(!store.resolver_running(), "a process that does not exist");
        store.mark_resolver_running().expect("mark");
        store.clear_resolver_mark();
        assert!(!store.resolver_running(), "cleared");
    }

    #[test]
    fn refused_names_are_read_back_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = EgressStore::new(dir.path());
        let record = DeniedRecord {
            names: vec!["other.test".into()],
            lookups: 2,
            connections: 5,
        };
        store.write_denied("abc", &record).unwrap();
        assert_eq!(store.denied("abc"), record);
        std::fs::write(
            dir.path().join("abc.denied"),
            r#"{"names":["ok.test","\u001b[31mx"],"lookups":1}"#,
        )
        .unwrap();
        assert_eq!(store.denied("abc").names, ["ok.test"]);
        assert_eq!(store.denied("abc").lookups, 1);
    }
}
