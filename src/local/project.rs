//! A session's project as files and variables: the checkout a [`ProjectSource`] gave (or an
//! ad-hoc URL made into one), turned into what the pre-start upload carries. Secrets only ever
//! go into files of the upload (runtime/CONTRACT.md), never into env, labels or arguments.
//!
//! [`ProjectSource`]: crate::projects::ProjectSource

use std::collections::BTreeMap;

use crate::api::ApiError;
use crate::images::metadata::{CONFIG_VOLUME_PATH, DATA_VOLUME_PATH, PersistentConfig};
use crate::projects::{Credential, ProjectCheckout};

/// The folder holding the project's credential files in the session (agent, 0700). One folder,
/// so cubbi-project can cut every credential at once when the clone or init.sh fails.
pub const CREDENTIAL_DIR: &str = "/home/agent/.ssh/cubbi-project";
/// The SSH private key git uses for the project's host.
pub const SSH_KEY_FILE: &str = "/home/agent/.ssh/cubbi-project/id_key";
/// The only host keys that SSH connection trusts.
pub const KNOWN_HOSTS_FILE: &str = "/home/agent/.ssh/cubbi-project/known_hosts";
/// A git credential store file (`https://USER:TOKEN@host`) for a token.
pub const GIT_CREDENTIALS_FILE: &str = "/home/agent/.ssh/cubbi-project/git-credentials";

/// The files of a project's credential, by absolute path in the session, each `agent`-owned
/// and `0600` in [`CREDENTIAL_DIR`].
#[derive(Default, PartialEq, Eq)]
pub struct CredentialFiles {
    pub files: BTreeMap<&'static str, String>,
}

impl std::fmt::Debug for CredentialFiles {
    /// Names only: the contents are secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.files.keys()).finish()
    }
}

/// A git URL (optionally `#branch`), as opposed to a folder.
pub fn looks_like_git_url(target: &str) -> bool {
    let url = target.rsplit_once('#').map_or(target, |(url, _)| url);
    ["https://", "http://", "ssh://", "git://", "file://", "git@"]
        .iter()
        .any(|scheme| target.starts_with(scheme))
        || (url.ends_with(".git") && url.contains(':'))
}

/// A reference the project source does not know: a git URL cloned as it is (`URL#branch`
/// picks a branch), with no credential and no pinned host key; its init.sh runs only when
/// asked.
pub fn ad_hoc(reference: &str) -> ProjectCheckout {
    let (url, branch) = match reference.rsplit_once('#') {
        Some((url, branch)) if !branch.is_empty() => (url.to_string(), Some(branch.to_string())),
        _ => (reference.trim_end_matches('#').to_string(), None),
    };
    // The store's id where the store takes the URL, so a repository keeps its config volume
    // whether it is registered or not.
    let id = crate::projects::url::RepoUrl::parse(&url)
        .map(|parsed| parsed.id())
        .unwrap_or_else(|_| project_id(&url));
    ProjectCheckout {
        id,
        url,
        branch,
        credential: None,
        known_hosts: Vec::new(),
        registered: false,
    }
}

/// `host/org/repo` from a git URL of any usual form (`https://`, `ssh://user@host:port/`,
/// `user@host:path`, `file://`), without user info, port, `.git` or trailing `/`, so the same
/// repository reached two ways gets the same config volume.
pub fn project_id(url: &str) -> String {
    let rest = match url.split_once("://") {
        Some((_, rest)) => rest.to_string(),
        // scp-like `user@host:path`
        None => url.replacen(':', "/", 1),
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest.as_str(), ""));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let id = if host.is_empty() {
        path.to_string()
    } else if path.is_empty() {
        host.to_string()
    } else {
        format!("{host}/{path}")
    };
    id.to_ascii_lowercase()
}

/// The URL as the agent may see it (`CUBBI_PROJECT_URL` in the session env): a password in the
/// user info is cut, and over HTTP(S) the whole user info, which is often a token alone
/// (`https://TOKEN@host/...`).
pub fn public_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let Some((user_info, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    let http = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    match user_info.split_once(':') {
        _ if http => format!("{scheme}://{host}{path}"),
        Some((user, _)) => format!("{scheme}://{user}@{host}{path}"),
        None => url.to_string(),
    }
}

/// The credential files a checkout needs in the session (none for an ad-hoc URL).
pub fn credential_files(checkout: &ProjectCheckout) -> Result<CredentialFiles, ApiError> {
    let mut files = BTreeMap::new();
    match &checkout.credential {
        Some(Credential::SshKey { private_key }) => {
            let mut key = private_key.clone();
            if !key.ends_with('\n') {
                key.push('\n');
            }
            files.insert(SSH_KEY_FILE, key);
        }
        Some(Credential::Token { username, token }) => {
            files.insert(
                GIT_CREDENTIALS_FILE,
                git_credentials_line(&checkout.url, username, token)?,
            );
        }
        None => {}
    }
    // With a key the file exists even when empty: ssh then refuses every host key rather than
    // trusting the first one (StrictHostKeyChecking=yes).
    if !checkout.known_hosts.is_empty() || files.contains_key(SSH_KEY_FILE) {
        let mut text = String::new();
        for line in &checkout.known_hosts {
            let line = line.trim();
            if line.contains(['\n', '\r', '\0']) {
                return Err(ApiError::invalid("a known_hosts line holds a line break"));
            }
            if !line.is_empty() {
                text.push_str(line);
                text.push('\n');
            }
        }
        files.insert(KNOWN_HOSTS_FILE, text);
    }
    Ok(CredentialFiles { files })
}

/// One line of a git credential store file for the URL's scheme and host:
/// `https://USER:TOKEN@host[:port]`, user and token percent-encoded as git-credential-store
/// reads them.
fn git_credentials_line(url: &str, username: &str, token: &str) -> Result<String, ApiError> {
    let refuse = || {
        ApiError::invalid(format!(
            "a token authenticates only over https:// or http://, and the project's URL is `{}`",
            public_url(url)
        ))
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(refuse)?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return Err(refuse());
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.is_empty() {
        return Err(refuse());
    }
    Ok(format!(
        "{scheme}://{}:{}@{host}\n",
        percent_encode(username),
        percent_encode(token)
    ))
}

/// Everything but RFC 3986's unreserved characters as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The image's persistent configs moved from the owner's data volume to the project's config
/// volume: `/mnt/agent-data/IMAGE/REST` (or `/mnt/agent-data/REST`) becomes
/// `/cubbi-config/IMAGE/REST`, so an agent's memory and login follow the project.
pub fn retarget(configs: &[PersistentConfig], image: &str) -> Vec<PersistentConfig> {
    configs
        .iter()
        .map(|config| {
            let rest = config
                .target
                .strip_prefix(DATA_VOLUME_PATH)
                .unwrap_or(&config.target)
                .trim_start_matches('/');
            let rest = rest
                .strip_prefix(image)
                .and_then(|r| r.strip_prefix('/'))
                .unwrap_or(rest);
            PersistentConfig {
                target: format!("{CONFIG_VOLUME_PATH}/{image}/{rest}"),
                ..config.clone()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::metadata::PersistentKind;

    #[test]
    fn ad_hoc_urls_and_branches() {
        let checkout = ad_hoc("git@github.com:Org/Repo.git#feature/x");
        assert_eq!(checkout.url, "git@github.com:Org/Repo.git");
        assert_eq!(checkout.branch.as_deref(), Some("feature/x"));
        // The store's id: the host lowercased, the path as given (paths are case-sensitive
        // on some hosts).
        assert_eq!(checkout.id, "github.com/Org/Repo");
        assert_eq!(
            ad_hoc("https://github.com/Org/Repo").id,
            checkout.id,
            "one id for the SSH and HTTPS forms"
        );
        assert!(!checkout.registered && checkout.credential.is_none());
        assert_eq!(ad_hoc("https://h/o/r").branch, None);
    }

    #[test]
    fn one_id_for_every_form_of_a_url() {
        for url in [
            "https://github.com/org/repo",
            "https://user:tok@github.com/org/repo.git/",
            "ssh://git@github.com:22/org/repo.git",
            "git@github.com:org/repo.git",
        ] {
            assert_eq!(project_id(url), "github.com/org/repo", "{url}");
        }
        assert_eq!(project_id("file:///srv/repo.git"), "srv/repo");
    }

    #[test]
    fn public_urls_carry_no_secret() {
        assert_eq!(
            public_url("https://user:tok@host/o/r.git"),
            "https://host/o/r.git"
        );
        assert_eq!(public_url("https://ghp_x@host/o/r"), "https://host/o/r");
        assert_eq!(public_url("ssh://git:pw@host/o/r"), "ssh://git@host/o/r");
        assert_eq!(public_url("ssh://git@host/o/r"), "ssh://git@host/o/r");
        assert_eq!(public_url("git@host:o/r.git"), "git@host:o/r.git");
    }

    #[test]
    fn credential_files_per_kind() {
        let mut checkout = ad_hoc("ssh://git@host/srv/repo.git");
        assert!(credential_files(&checkout).unwrap().files.is_empty());
        checkout.credential = Some(Credential::SshKey {
            private_key: "KEY".into(),
        });
        let files = credential_files(&checkout).unwrap();
        assert_eq!(files.files[SSH_KEY_FILE], "KEY\n");
        assert_eq!(files.files[KNOWN_HOSTS_FILE], "", "strict even when empty");
        assert!(!format!("{files:?}").contains("KEY\n"));
        checkout.known_hosts = vec!["host ssh-ed25519 AAAA".into()];
        assert_eq!(
            credential_files(&checkout).unwrap().files[KNOWN_HOSTS_FILE],
            "host ssh-ed25519 AAAA\n"
        );

        let mut checkout = ad_hoc("https://git.example:8443/o/r.git");
        checkout.credential = Some(Credential::Token {
            username: "me@x".into(),
            token: "t:k/n".into(),
        });
        assert_eq!(
            credential_files(&checkout).unwrap().files[GIT_CREDENTIALS_FILE],
            "https://me%40x:t%3Ak%2Fn@git.example:8443\n"
        );
        checkout.url = "git@host:o/r".into();
        assert!(credential_files(&checkout).is_err(), "a token over ssh");
    }

    #[test]
    fn persistent_configs_move_to_the_project_volume() {
        let configs = [
            PersistentConfig {
                source: "/home/agent/.claude".into(),
                target: "/mnt/agent-data/claude-code/.claude".into(),
                kind: PersistentKind::Directory,
            },
            PersistentConfig {
                source: "/home/agent/.x".into(),
                target: "/mnt/agent-data/x".into(),
                kind: PersistentKind::File,
            },
        ];
        let moved = retarget(&configs, "claude-code");
        assert_eq!(moved[0].target, "/cubbi-config/claude-code/.claude");
        assert_eq!(moved[1].target, "/cubbi-config/claude-code/x");
        assert_eq!(moved[0].source, "/home/agent/.claude");
    }
}
