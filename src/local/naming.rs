//! Session names: an RFC 1123 hostname made from what the user gave or from the workspace.

use std::path::Path;

/// Docker's bridge-driver option naming a network's Linux bridge.
pub const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

/// Linux's longest interface name.
const MAX_INTERFACE_NAME: usize = 15;

/// Fewest hash characters a network's bridge name gets: 24 bits, and a clash is refused, never
/// shared (see `LocalBackend::ensure_network`).
pub const MIN_BRIDGE_HASH: usize = 6;

/// The longest engine bridge that leaves [`MIN_BRIDGE_HASH`] characters for its networks.
pub const MAX_ENGINE_BRIDGE: usize = MAX_INTERFACE_NAME - MIN_BRIDGE_HASH;

/// The Linux bridge of `network` on an engine whose default bridge is `engine_bridge`: the
/// engine bridge's name plus a hash of the network's, filling Linux's 15 characters. On cubbi's
/// engine (`cubbi0`, or whatever `setup --bridge` named) the firewall matches `cubbi0+`, so it
/// covers every network's sessions, and isolates each such bridge from the others. The host
/// Docker's `docker0` keeps Docker's own naming (its bridges are not cubbi's to name).
pub fn network_bridge_name(engine_bridge: &str, network: &str) -> Option<String> {
    use sha2::{Digest, Sha256};
    if engine_bridge == "docker0"
        || engine_bridge.is_empty()
        || engine_bridge.len() > MAX_ENGINE_BRIDGE
    {
        return None;
    }
    let digest = Sha256::digest(network.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!(
        "{engine_bridge}{}",
        &hex[..MAX_INTERFACE_NAME - engine_bridge.len()]
    ))
}

/// The bridge of the shared `cubbi-network` of releases before owners had networks of their
/// own: still removed with the engine.
pub fn legacy_network_bridge_name(engine_bridge: &str) -> String {
    format!("{engine_bridge}n")
}

/// The network an owner's sessions join: `cubbi-` plus the owner made readable and a hash of
/// the exact owner, so two owners never share one (as with data volumes).
pub fn owner_network_name(owner: &str) -> String {
    format!("cubbi-{}", owner_suffix(owner))
}

/// `NAME-HASH` for an owner: readable, at most 40 characters of name, and injective.
fn owner_suffix(owner: &str) -> String {
    use sha2::{Digest, Sha256};
    let readable: String = sanitize_hostname(owner)
        .unwrap_or_else(|| "user".into())
        .chars()
        .take(40)
        .collect();
    let digest = Sha256::digest(owner.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{hash}", readable.trim_end_matches('-'))
}

/// Lowercase, `_` → `-`, other invalid characters dropped, `--` collapsed, `-` trimmed from
/// both ends, at most 63 characters. `None` when nothing usable is left.
pub fn sanitize_hostname(raw: &str) -> Option<String> {
    let mut name = String::with_capacity(raw.len());
    for c in raw.chars() {
        let c = match c {
            '_' | ' ' | '.' => '-',
            c if c.is_ascii_alphanumeric() || c == '-' => c.to_ascii_lowercase(),
            _ => continue,
        };
        if c == '-' && name.ends_with('-') {
            continue;
        }
        name.push(c);
    }
    let trimmed = name.trim_matches('-');
    let mut name: String = trimmed.chars().take(63).collect();
    while name.ends_with('-') {
        name.pop();
    }
    (!name.is_empty()).then_some(name)
}

/// A session name as the naming rules above make them: what [`sanitize_hostname`] leaves
/// unchanged (lowercase letters, digits and single inner `-`, at most 63 characters). A name
/// from elsewhere (a service's answer) becomes one only through [`SessionName::parse`], so it
/// can be used in a file name or an OpenSSH `Host` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a session name (lowercase letters, digits and single inner `-`, at most 63 \
     characters)"
)]
pub struct NotASessionName(pub String);

impl SessionName {
    pub fn parse(raw: &str) -> Result<Self, NotASessionName> {
        if sanitize_hostname(raw).as_deref() == Some(raw) {
            Ok(Self(raw.to_string()))
        } else {
            Err(NotASessionName(raw.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SessionName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The owner's data volume: the owner made readable plus a hash of the exact owner, so
/// `john.doe` and `john_doe` (or `Alice` and `alice`) never share one.
pub fn data_volume_name(owner: &str) -> String {
    format!("cubbi-data-{}", owner_suffix(owner))
}

/// A project's persistent config volume for one owner: `cubbi-config-REPO-HASH`, the readable
/// part from the project id's last component, the hash over the exact owner and project id
/// (length-prefixed, so no two pairs give the same input), so no two owners or projects share
/// one.
pub fn config_volume_name(owner: &str, project_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let last = project_id
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let readable: String = sanitize_hostname(last)
        .unwrap_or_else(|| "project".into())
        .chars()
        .take(30)
        .collect();
    let mut hasher = Sha256::new();
    hasher.update((owner.len() as u64).to_le_bytes());
    hasher.update(owner.as_bytes());
    hasher.update(project_id.as_bytes());
    let digest = hasher.finalize();
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("cubbi-config-{}-{hash}", readable.trim_end_matches('-'))
}

/// The data volume's name before owners were hashed in (`cubbi-data-john-doe`): several
/// owners can map to it, so it is used only when its owner label is exactly the owner.
pub fn legacy_data_volume_name(owner: &str) -> String {
    let owner = sanitize_hostname(owner).unwrap_or_else(|| "user".into());
    format!("cubbi-data-{owner}")
}

/// The default name: the workspace folder's name, the repository (and branch) of a project,
/// or `session`.
pub fn default_name(workspace: Option<&Path>, project: Option<&str>) -> String {
    let from_project = project.and_then(|url| {
        let (url, branch) = match url.rsplit_once('#') {
            Some((url, branch)) => (url, Some(branch)),
            None => (url, None),
        };
        let repo = url
            .trim_end_matches('/')
            .rsplit(['/', ':'])
            .next()?
            .trim_end_matches(".git");
        let raw = match branch {
            Some(branch) => format!("{repo}-{branch}"),
            None => repo.to_string(),
        };
        sanitize_hostname(&raw)
    });
    from_project
        .or_else(|| {
            workspace
                .and_then(|path| path.file_name())
                .and_then(|name| sanitize_hostname(&name.to_string_lossy()))
        })
        .unwrap_or_else(|| "session".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_networks_share_the_engine_bridge_prefix() {
        let bridge = network_bridge_name("cubbi0", "cubbi-alice-12345678").unwrap();
        assert_eq!(bridge.len(), 15);
        assert!(bridge.starts_with("cubbi0"), "{bridge}");
        assert!(bridge[6..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(
            network_bridge_name("cubbi0", "cubbi-bob-12345678").unwrap(),
            bridge
        );
        assert_eq!(
            network_bridge_name("cubbi0", "cubbi-alice-12345678").unwrap(),
            bridge,
            "stable"
        );
        assert_eq!(network_bridge_name("docker0", "x"), None);
        assert_eq!(network_bridge_name("cbt123456", "x").unwrap().len(), 15);
        assert_eq!(network_bridge_name("cubbi-1234", "x"), None, "too long");
        assert_eq!(legacy_network_bridge_name("cubbi0"), "cubbi0n");
    }

    #[test]
    fn owner_networks_are_one_per_exact_owner() {
        let names: std::collections::BTreeSet<String> =
            ["john.doe", "john_doe", "Alice", "alice", "serve:alice", ""]
                .iter()
                .map(|owner| owner_network_name(owner))
                .collect();
        assert_eq!(names.len(), 6, "{names:?}");
        assert!(owner_network_name("serve:alice").starts_with("cubbi-servealice-"));
        assert!(owner_network_name(&"x".repeat(200)).len() < 64);
    }

    #[test]
    fn session_names_are_what_the_naming_rules_make() {
        for good in ["web", "web2", "a-b-c", "x", &"a".repeat(63)] {
            assert_eq!(SessionName::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "../../.config/x/cubbi",
            "a/b",
            "Web",
            "-a",
            "a-",
            "a--b",
            "a.b",
            "a b",
            "a\nHost *",
            &"a".repeat(64),
        ] {
            let err = SessionName::parse(bad).unwrap_err();
            assert!(err.to_string().contains("not a session name"), "{err}");
        }
    }

    #[test]
    fn sanitizes_to_rfc1123() {
        assert_eq!(
            sanitize_hostname("My_Project").as_deref(),
            Some("my-project")
        );
        assert_eq!(sanitize_hostname("--a--b__c--").as_deref(), Some("a-b-c"));
        assert_eq!(
            sanitize_hostname("héllo wörld!").as_deref(),
            Some("hllo-wrld")
        );
        assert_eq!(sanitize_hostname("!!!"), None);
        assert_eq!(sanitize_hostname(""), None);
        let long = "a".repeat(80);
        assert_eq!(sanitize_hostname(&long).unwrap().len(), 63);
        let edge = format!("{}-b", "a".repeat(62));
        assert_eq!(sanitize_hostname(&edge).unwrap(), "a".repeat(62));
    }

    #[test]
    fn data_volumes_are_one_per_exact_owner() {
        let names: std::collections::BTreeSet<String> = [
            "john.doe", "john_doe", "John.Doe", "Alice", "alice", "", "!!!", "ü",
        ]
        .iter()
        .map(|owner| data_volume_name(owner))
        .collect();
        assert_eq!(names.len(), 8, "{names:?}");
        let name = data_volume_name("john.doe");
        assert!(name.starts_with("cubbi-data-john-doe-"), "{name}");
        assert_eq!(name.len(), "cubbi-data-john-doe-".len() + 8);
        assert_eq!(data_volume_name("john.doe"), name, "stable");
        assert_eq!(legacy_data_volume_name("john.doe"), "cubbi-data-john-doe");
        assert!(data_volume_name(&"x".repeat(200)).len() < 64);
    }

    #[test]
    fn config_volumes_are_one_per_owner_and_project() {
        let pairs = [
            ("alice", "github.com/org/repo"),
            ("bob", "github.com/org/repo"),
            ("alice", "github.com/org/other"),
            ("alice", "gitlab.com/org/repo"),
            ("ali", "cegithub.com/org/repo"),
            ("", ""),
        ];
        let names: std::collections::BTreeSet<String> = pairs
            .iter()
            .map(|(owner, project)| config_volume_name(owner, project))
            .collect();
        assert_eq!(names.len(), pairs.len(), "{names:?}");
        let name = config_volume_name("alice", "github.com/org/My_Repo");
        assert!(name.starts_with("cubbi-config-my-repo-"), "{name}");
        assert_eq!(config_volume_name("alice", "github.com/org/My_Repo"), name);
        assert!(config_volume_name("x", &"y".repeat(300)).len() < 64);
    }

    #[test]
    fn default_names() {
        assert_eq!(
            default_name(Some(Path::new("/home/me/Cool_App")), None),
            "cool-app"
        );
        assert_eq!(
            default_name(None, Some("https://github.com/org/repo.git#feature/x")),
            "repo-featurex"
        );
        assert_eq!(default_name(None, Some("git@host:org/thing.git")), "thing");
        assert_eq!(default_name(None, None), "session");
        assert_eq!(default_name(Some(Path::new("/")), None), "session");
    }
}
