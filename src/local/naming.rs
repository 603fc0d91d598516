//! Session names: an RFC 1123 hostname made from what the user gave or from the workspace.

use std::path::Path;

/// Docker's bridge-driver option naming a network's Linux bridge.
pub const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

/// The Linux bridge for `cubbi-network` on an engine whose default bridge is `engine_bridge`:
/// on cubbi's engine (`cubbi0`, or whatever `setup --bridge` named) it is `cubbi0n`, so the
/// engine's firewall, which matches `cubbi0+`, covers sessions too. The host Docker's `docker0`
/// keeps Docker's own naming (its bridges are not cubbi's to name).
pub fn network_bridge_name(engine_bridge: &str) -> Option<String> {
    (engine_bridge != "docker0" && !engine_bridge.is_empty() && engine_bridge.len() < 15)
        .then(|| format!("{engine_bridge}n"))
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

/// The owner's data volume: the owner made readable plus a hash of the exact owner, so
/// `john.doe` and `john_doe` (or `Alice` and `alice`) never share one.
pub fn data_volume_name(owner: &str) -> String {
    use sha2::{Digest, Sha256};
    let readable: String = sanitize_hostname(owner)
        .unwrap_or_else(|| "user".into())
        .chars()
        .take(40)
        .collect();
    let digest = Sha256::digest(owner.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("cubbi-data-{}-{hash}", readable.trim_end_matches('-'))
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
        assert_eq!(network_bridge_name("cubbi0").as_deref(), Some("cubbi0n"));
        assert_eq!(network_bridge_name("docker0"), None);
        assert_eq!(network_bridge_name("br0").as_deref(), Some("br0n"));
        assert_eq!(
            network_bridge_name("cubbi-123456789"),
            None,
            "15 characters at most"
        );
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
