//! The engine's daemon.json: what cubbi writes, merged into what is already there so keys a user
//! added by hand survive a re-run, and a file that is not JSON is refused with its location.

use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde_json::{Map, Value, json};

use super::EnginePaths;

/// The runtime Sysbox registers, and the engine's default.
pub const SYSBOX_RUNTIME: &str = "sysbox-runc";
pub const SYSBOX_RUNC_PATH: &str = "/usr/bin/sysbox-runc";

/// Keys cubbi owns; every other key belongs to the user and is kept. `runtimes` is shared: only
/// its `sysbox-runc` entry is cubbi's.
const MANAGED_KEYS: &[&str] = &[
    "hosts",
    "data-root",
    "exec-root",
    "pidfile",
    "bridge",
    "default-runtime",
    "group",
    "iptables",
    "default-address-pools",
];

/// What a Swarm node under `--unsafe-runc` runs every container with: a seccomp profile that
/// allows every syscall (docker 20.10 takes no `unconfined` here, only a profile file) and a
/// private cgroup namespace, which a session's systemd needs. Swarm has no per-service
/// privileged, security-opt or cgroupns.
pub const SECCOMP_PROFILE_KEY: &str = "seccomp-profile";
pub const CGROUPNS_KEY: &str = "default-cgroupns-mode";
/// The profile's whole contents: every syscall allowed.
pub const SECCOMP_ALLOW_ALL: &str = r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#;

/// Keys dockerd refuses next to `bridge`.
const CONFLICTING_KEYS: &[&str] = &["bip"];

#[derive(Debug, thiserror::Error)]
pub enum DaemonJsonError {
    #[error(
        "{path} is not valid JSON (line {line}, column {column}: {reason}); fix it, or run \
         setup with --force to replace it (the old file is kept as a backup)"
    )]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("{path} must hold a JSON object, found {found}; fix it or run setup with --force")]
    NotAnObject { path: PathBuf, found: &'static str },
    #[error(
        "{path} sets `{key}`, which dockerd refuses together with cubbi's `bridge`; remove `{key}` \
         (the subnet comes from --subnet)"
    )]
    Conflict { path: PathBuf, key: String },
}

/// What the engine's daemon.json must say.
#[derive(Debug, Clone)]
pub struct DaemonSettings<'a> {
    pub paths: &'a EnginePaths,
    pub bridge: &'a str,
    /// Where the engine's other networks take their /24s from.
    pub pool: Ipv4Net,
    /// sysbox-runc, or runc on a host without Sysbox after `setup --unsafe-runc`.
    pub default_runtime: &'a str,
    /// The socket's group; `None` leaves dockerd's default (and a missing group would stop it).
    pub socket_group: Option<&'a str>,
    /// A Swarm node under `--unsafe-runc`: a seccomp profile that allows every syscall and a
    /// private cgroup namespace for every container of the daemon.
    pub swarm_unsafe_runc: bool,
}

/// cubbi's part of daemon.json.
pub fn render(settings: &DaemonSettings<'_>) -> Map<String, Value> {
    let paths = settings.paths;
    let mut map = Map::new();
    map.insert("hosts".into(), json!([paths.endpoint()]));
    map.insert("data-root".into(), json!(paths.data_root));
    map.insert("exec-root".into(), json!(paths.exec_root));
    map.insert("pidfile".into(), json!(paths.pidfile));
    map.insert("bridge".into(), json!(settings.bridge));
    map.insert("default-runtime".into(), json!(settings.default_runtime));
    // A second dockerd with iptables on deletes and re-creates the shared DOCKER chains at start,
    // dropping the host Docker's port forwards; cubbi writes the engine's rules itself
    // (`engine::firewall`).
    map.insert("iptables".into(), json!(false));
    map.insert(
        "default-address-pools".into(),
        json!([{ "base": settings.pool.trunc().to_string(), "size": 24 }]),
    );
    map.insert(
        "runtimes".into(),
        json!({ SYSBOX_RUNTIME: { "path": SYSBOX_RUNC_PATH } }),
    );
    // An engine label, so a Swarm of engines can place sessions on nodes by their default
    // runtime (`engine.labels.io.cubbi.runtime`): a worker cannot label its own node.
    map.insert(
        "labels".into(),
        json!([format!(
            "{}={}",
            super::swarm::RUNTIME_LABEL,
            settings.default_runtime
        )]),
    );
    if let Some(group) = settings.socket_group {
        map.insert("group".into(), json!(group));
    }
    if settings.swarm_unsafe_runc {
        map.insert(SECCOMP_PROFILE_KEY.into(), json!(paths.seccomp_profile));
        map.insert(CGROUPNS_KEY.into(), json!("private"));
    }
    map
}

/// Takes a node-wide unsafe runc that `desired` no longer asks for out of `merged`: only cubbi's
/// own profile (the file beside daemon.json), and the cgroupns mode that came with it; a
/// profile of the user's stays.
fn drop_retired_unsafe_runc(
    path: &Path,
    merged: &mut Map<String, Value>,
    desired: &Map<String, Value>,
) {
    let ours = json!(path.with_file_name(super::paths::SECCOMP_PROFILE_FILE));
    if desired.contains_key(SECCOMP_PROFILE_KEY) || merged.get(SECCOMP_PROFILE_KEY) != Some(&ours) {
        return;
    }
    merged.remove(SECCOMP_PROFILE_KEY);
    if !desired.contains_key(CGROUPNS_KEY) && merged.get(CGROUPNS_KEY) == Some(&json!("private")) {
        merged.remove(CGROUPNS_KEY);
    }
}

/// The file to write and whether it differs from what is there.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub text: String,
    pub changed: bool,
    /// Keys the user added that were kept.
    pub kept_user_keys: Vec<String>,
}

/// Parses an existing daemon.json into an object, or says exactly where it is broken.
pub fn parse(path: &Path, text: &str) -> Result<Map<String, Value>, DaemonJsonError> {
    let value: Value = serde_json::from_str(text).map_err(|err| DaemonJsonError::Invalid {
        path: path.to_path_buf(),
        line: err.line(),
        column: err.column(),
        reason: err.to_string(),
    })?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(DaemonJsonError::NotAnObject {
            path: path.to_path_buf(),
            found: kind_of(&other),
        }),
    }
}

/// cubbi's keys over the existing file (`None`: no file yet), keeping the user's keys and other
/// runtimes.
pub fn merge(
    path: &Path,
    existing: Option<&str>,
    desired: &Map<String, Value>,
) -> Result<Merged, DaemonJsonError> {
    let before = match existing {
        Some(text) => Some(parse(path, text)?),
        None => None,
    };
    let mut merged = before.clone().unwrap_or_default();
    if let Some(key) = CONFLICTING_KEYS
        .iter()
        .find(|key| merged.contains_key(**key))
    {
        return Err(DaemonJsonError::Conflict {
            path: path.to_path_buf(),
            key: (*key).to_string(),
        });
    }
    for (key, value) in desired {
        if key == "runtimes" {
            let runtimes = merged
                .entry("runtimes")
                .or_insert_with(|| Value::Object(Map::new()));
            if !runtimes.is_object() {
                *runtimes = Value::Object(Map::new());
            }
            if let (Value::Object(target), Value::Object(ours)) = (runtimes, value) {
                for (name, runtime) in ours {
                    target.insert(name.clone(), runtime.clone());
                }
            }
        } else if key == "labels" {
            // The user's labels stay; cubbi's (`io.cubbi.*`) are replaced.
            let mut labels: Vec<Value> = merged
                .get("labels")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|label| !label.as_str().is_some_and(is_cubbi_label))
                .cloned()
                .collect();
            labels.extend(value.as_array().into_iter().flatten().cloned());
            merged.insert(key.clone(), Value::Array(labels));
        } else {
            merged.insert(key.clone(), value.clone());
        }
    }
    drop_retired_unsafe_runc(path, &mut merged, desired);
    let kept_user_keys = merged
        .keys()
        .filter(|key| {
            !MANAGED_KEYS.contains(&key.as_str())
                && !desired.contains_key(key.as_str())
                && !matches!(key.as_str(), "runtimes" | "labels")
        })
        .cloned()
        .collect();
    let changed = before.as_ref() != Some(&merged);
    let mut text = serde_json::to_string_pretty(&Value::Object(merged)).unwrap_or_default();
    text.push('\n');
    Ok(Merged {
        text,
        changed,
        kept_user_keys,
    })
}

/// cubbi's keys whose value in `existing` differs from `desired` (for `doctor`).
pub fn mismatched_keys(existing: &Map<String, Value>, desired: &Map<String, Value>) -> Vec<String> {
    desired
        .iter()
        .filter(|(key, value)| match (key.as_str(), existing.get(*key)) {
            ("runtimes", Some(Value::Object(present))) => value
                .as_object()
                .is_some_and(|ours| ours.iter().any(|(name, rt)| present.get(name) != Some(rt))),
            ("labels", Some(Value::Array(present))) => value
                .as_array()
                .is_some_and(|ours| ours.iter().any(|label| !present.contains(label))),
            (_, present) => present != Some(*value),
        })
        .map(|(key, _)| key.clone())
        .collect()
}

fn is_cubbi_label(label: &str) -> bool {
    label.starts_with("io.cubbi.")
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> Map<String, Value> {
        let paths = EnginePaths::system();
        render(&DaemonSettings {
            paths: &paths,
            bridge: "cubbi0",
            pool: "10.214.0.0/16".parse().unwrap(),
            default_runtime: SYSBOX_RUNTIME,
            socket_group: Some("cubbi"),
            swarm_unsafe_runc: false,
        })
    }

    /// A Swarm node set up with `--unsafe-runc`.
    fn unsafe_swarm_node() -> Map<String, Value> {
        let paths = EnginePaths::system();
        render(&DaemonSettings {
            paths: &paths,
            bridge: "cubbi0",
            pool: "10.214.0.0/16".parse().unwrap(),
            default_runtime: "runc",
            socket_group: Some("cubbi"),
            swarm_unsafe_runc: true,
        })
    }

    const PATH: &str = "/etc/cubbi/docker/daemon.json";

    #[test]
    fn renders_the_dedicated_endpoint() {
        let map = desired();
        assert_eq!(map["hosts"], json!(["unix:///var/run/cubbi-docker.sock"]));
        assert_eq!(map["data-root"], json!("/var/lib/cubbi-docker"));
        assert_eq!(map["exec-root"], json!("/var/run/cubbi-docker"));
        assert_eq!(map["pidfile"], json!("/var/run/cubbi-docker.pid"));
        assert_eq!(map["bridge"], json!("cubbi0"));
        assert_eq!(map["default-runtime"], json!("sysbox-runc"));
        assert_eq!(
            map["runtimes"]["sysbox-runc"]["path"],
            json!("/usr/bin/sysbox-runc")
        );
        assert_eq!(map["group"], json!("cubbi"));
        assert!(!map.contains_key("bip"));
        assert_eq!(
            map["iptables"],
            json!(false),
            "dockerd must leave the shared chains alone"
        );
        assert_eq!(
            map["default-address-pools"],
            json!([{"base": "10.214.0.0/16", "size": 24}])
        );
    }

    #[test]
    fn a_fresh_file_is_written_and_a_rerun_changes_nothing() {
        let first = merge(Path::new(PATH), None, &desired()).unwrap();
        assert!(first.changed);
        let second = merge(Path::new(PATH), Some(&first.text), &desired()).unwrap();
        assert!(!second.changed);
        assert_eq!(first.text, second.text);
    }

    #[test]
    fn user_keys_and_other_runtimes_survive() {
        let existing = r#"{
            "log-level": "debug",
            "data-root": "/somewhere/else",
            "runtimes": {"crun": {"path": "/usr/bin/crun"}}
        }"#;
        let merged = merge(Path::new(PATH), Some(existing), &desired()).unwrap();
        assert!(merged.changed);
        assert_eq!(merged.kept_user_keys, ["log-level"]);
        let value: Value = serde_json::from_str(&merged.text).unwrap();
        assert_eq!(value["log-level"], json!("debug"));
        assert_eq!(value["data-root"], json!("/var/lib/cubbi-docker"));
        assert_eq!(value["runtimes"]["crun"]["path"], json!("/usr/bin/crun"));
        assert_eq!(
            value["runtimes"]["sysbox-runc"]["path"],
            json!("/usr/bin/sysbox-runc")
        );
    }

    #[test]
    fn invalid_json_is_refused_with_its_location() {
        let err = merge(
            Path::new(PATH),
            Some("{\n  \"a\": 1,\n  oops\n}"),
            &desired(),
        )
        .unwrap_err();
        let DaemonJsonError::Invalid { line, column, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!((*line, *column), (3, 3));
        let text = err.to_string();
        assert!(text.contains(PATH) && text.contains("--force"), "{text}");
    }

    #[test]
    fn a_non_object_and_a_conflicting_bip_are_refused() {
        let err = merge(Path::new(PATH), Some("[1]"), &desired()).unwrap_err();
        assert!(err.to_string().contains("an array"), "{err}");
        let err = merge(
            Path::new(PATH),
            Some(r#"{"bip":"10.1.0.1/24"}"#),
            &desired(),
        )
        .unwrap_err();
        assert!(matches!(err, DaemonJsonError::Conflict { .. }), "{err}");
    }

    #[test]
    fn mismatches_name_the_drifted_keys_only() {
        let mut existing = desired();
        existing.insert("log-level".into(), json!("debug"));
        assert!(mismatched_keys(&existing, &desired()).is_empty());
        existing.insert("default-runtime".into(), json!("runc"));
        existing.insert("runtimes".into(), json!({"crun": {"path": "/x"}}));
        assert_eq!(
            mismatched_keys(&existing, &desired()),
            ["default-runtime", "runtimes"]
        );
    }

    #[test]
    fn an_unsafe_swarm_node_gets_no_seccomp_filter_and_a_private_cgroupns() {
        let map = unsafe_swarm_node();
        assert_eq!(
            map["seccomp-profile"],
            json!("/etc/cubbi/docker/seccomp-allow-all.json")
        );
        assert_eq!(map["default-cgroupns-mode"], json!("private"));
        assert_eq!(map["default-runtime"], json!("runc"));
        let profile: Value = serde_json::from_str(SECCOMP_ALLOW_ALL).unwrap();
        assert_eq!(profile, json!({"defaultAction": "SCMP_ACT_ALLOW"}));
        // Neither key without the node-wide setting.
        let plain = desired();
        assert!(
            !plain.contains_key("seccomp-profile") && !plain.contains_key("default-cgroupns-mode")
        );
        // Written, then a re-run keeps it, and neither counts as the user's key.
        let on = merge(Path::new(PATH), None, &map).unwrap();
        assert!(on.kept_user_keys.is_empty(), "{:?}", on.kept_user_keys);
        assert!(
            !merge(Path::new(PATH), Some(&on.text), &map)
                .unwrap()
                .changed
        );
    }

    #[test]
    fn turning_the_unsafe_node_off_takes_only_cubbis_keys_away() {
        let on = merge(Path::new(PATH), None, &unsafe_swarm_node()).unwrap();
        let off = merge(Path::new(PATH), Some(&on.text), &desired()).unwrap();
        assert!(off.changed);
        let value: Value = serde_json::from_str(&off.text).unwrap();
        assert!(value.get("seccomp-profile").is_none(), "{value}");
        assert!(value.get("default-cgroupns-mode").is_none(), "{value}");
        // A profile of the user's own (and their cgroupns mode) stay.
        let theirs =
            r#"{"seccomp-profile": "/etc/docker/mine.json", "default-cgroupns-mode": "private"}"#;
        let kept = merge(Path::new(PATH), Some(theirs), &desired()).unwrap();
        let value: Value = serde_json::from_str(&kept.text).unwrap();
        assert_eq!(value["seccomp-profile"], json!("/etc/docker/mine.json"));
        assert_eq!(value["default-cgroupns-mode"], json!("private"));
        assert_eq!(
            kept.kept_user_keys,
            ["default-cgroupns-mode", "seccomp-profile"]
        );
    }
}
