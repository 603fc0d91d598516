//! SSH host keys for git hosts, never trusted on first use: the published keys of the big
//! forges ship in the binary, `projects.known_hosts` in the user config adds more, and a
//! project on any other host carries the key its owner confirmed at `project add`.

use russh::keys::PublicKey;
use russh::keys::ssh_key::HashAlg;

use super::ProjectError;

/// The published host keys of github.com, gitlab.com and bitbucket.org (port 22), as
/// `HOST KEYTYPE BASE64`. Each one's SHA256 fingerprint is checked against the forge's
/// published fingerprint in the tests below.
pub const BUILTIN: &[&str] = &[
    "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
    "github.com ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEmKSENjQEezOmxkZMy7opKgwFB9nkt5YRrYMjNuG5N87uRgg6CLrbo5wAdT/y6v0mKV0U2w0WZ2YB/++Tpockg=",
    "github.com ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQCj7ndNxQowgcQnjshcLrqPEiiphnt+VTTvDP6mHBL9j1aNUkY4Ue1gvwnGLVlOhGeYrnZaMgRK6+PKCUXaDbC7qtbW8gIkhL7aGCsOr/C56SJMy/BCZfxd1nWzAOxSDPgVsmerOBYfNqltV9/hWCqBywINIR+5dIg6JTJ72pcEpEjcYgXkE2YEFXV1JHnsKgbLWNlhScqb2UmyRkQyytRLtL+38TGxkxCflmO+5Z8CSSNY7GidjMIZ7Q4zMjA2n1nGrlTDkzwDCsw+wqFPGQA179cnfGWOWRVruj16z6XyvxvjJwbz0wQZ75XK5tKSb7FNyeIEs4TT4jk+S4dhPeAUC5y+bDYirYgM4GC7uEnztnZyaVWQ7B381AK4Qdrwt51ZqExKbQpTUNn+EjqoTwvqNj4kqx5QUCI0ThS/YkOxJCXmPUWZbhjpCg56i+2aB6CmK2JGhn57K5mj0MNdBXA4/WnwH6XoPWJzK5Nyu2zB3nAZp+S5hpQs+p1vN1/wsjk=",
    "gitlab.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAfuCHKVTjquxvt6CM6tdG4SLp1Btn/nOeHHE5UOzRdf",
    "gitlab.com ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBFSMqzJeV9rUzU4kWitGjeR4PWSa29SPqJ1fVkhtj3Hw9xjLVXVYrU9QlYWrOLXBpQ6KWjbjTDTdDkoohFzgbEY=",
    "gitlab.com ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCsj2bNKTBSpIYDEGk9KxsGh3mySTRgMtXL583qmBpzeQ+jqCMRgBqB98u3z++J1sKlXHWfM9dyhSevkMwSbhoR8XIq/U0tCNyokEi/ueaBMCvbcTHhO7FcwzY92WK4Yt0aGROY5qX2UKSeOvuP4D6TPqKF1onrSzH9bx9XUf2lEdWT/ia1NEKjunUqu1xOB/StKDHMoX4/OKyIzuS0q/T1zOATthvasJFoPrAjkohTyaDUz2LN5JoH839hViyEG82yB+MjcFV5MU3N1l1QL3cVUCh93xSaua1N85qivl+siMkPGbO5xR/En4iEY6K2XPASUEMaieWVNTRCtJ4S8H+9",
    "bitbucket.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIazEu89wgQZ4bqs3d63QSMzYVa0MuJ2e2gKTKqu+UUO",
    "bitbucket.org ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBPIQmuzMBuKdWeF4+a2sjSSpBK0iqitSQ+5BM9KhpexuGt20JpTVM7u5BDZngncgrqDMbWdxMWWOGtZ9UgbqgZE=",
    "bitbucket.org ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQDQeJzhupRu0u0cdegZIa8e86EG2qOCsIsD1Xw0xSeiPDlCr7kq97NLmMbpKTX6Esc30NuoqEEHCuc7yWtwp8dI76EEEB1VqY9QJq6vk+aySyboD5QF61I/1WeTwu+deCbgKMGbUijeXhtfbxSxm6JwGrXrhBdofTsbKRUsrN1WoNgUa8uqN1Vx6WAJw1JHPhglEGGHea6QICwJOAr/6mrui/oB7pkaWKHj3z7d1IC4KWLtY47elvjbaTlkN04Kc/5LFEirorGYVbt15kAUlqGM65pk6ZBxtaO3+30LVlORZkxOh+LKL/BvbZ/iRNhItLqNyieoQj/uh/7Iv4uyH/cV/0b4WDSd3DptigWq84lJubb9t/DnZlrJazxyDCulTmKdOR7vs9gMTo+uoIrPSb8ScTtvw65+odKAlBj59dhnVp9zd7QUojOpXlL62Aw56U4oO+FALuevvMjiWeavKhJqlR7i5n9srYcrNV7ttmDw7kf/97P5zauIhxcjX+xHv4M=",
];

/// One host key for one host: where it is known from decides nothing but what `show` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    /// `KEYTYPE BASE64`, no comment.
    pub key: String,
    /// `SHA256:...`
    pub fingerprint: String,
}

impl HostKey {
    /// Checks and canonicalises `KEYTYPE BASE64 [comment]`.
    pub fn parse(text: &str) -> Result<Self, ProjectError> {
        let refuse = |reason: String| ProjectError::InvalidHostKey {
            key: text.chars().take(80).collect(),
            reason,
        };
        if text.chars().any(|c| c.is_control() && c != '\t') {
            return Err(refuse("give one key on one line".into()));
        }
        let mut fields = text.split_whitespace();
        let (Some(kind), Some(base64)) = (fields.next(), fields.next()) else {
            return Err(refuse(
                "expected `KEYTYPE BASE64`, e.g. `ssh-ed25519 AAAA...`".into(),
            ));
        };
        let key = PublicKey::from_openssh(&format!("{kind} {base64}"))
            .map_err(|err| refuse(format!("not an SSH public key ({err})")))?;
        Ok(Self::from_public(&key))
    }

    pub fn from_public(key: &PublicKey) -> Self {
        let mut bare = key.clone();
        bare.set_comment("");
        let text = bare
            .to_openssh()
            .map(|line| line.trim().to_string())
            .unwrap_or_default();
        Self {
            key: text,
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        }
    }

    /// The key type, e.g. `ssh-ed25519`.
    pub fn kind(&self) -> &str {
        self.key.split(' ').next().unwrap_or_default()
    }
}

/// A known_hosts line (`HOSTS KEYTYPE BASE64 [comment]`), parsed. Markers (`@cert-authority`,
/// `@revoked`), hashed host names and wildcards are not supported and are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownHostsLine {
    /// Host patterns as written: `host` or `[host]:port`, lowercased.
    pub hosts: Vec<String>,
    pub key: HostKey,
}

impl KnownHostsLine {
    pub fn parse(line: &str) -> Result<Self, ProjectError> {
        let refuse = |reason: &str| ProjectError::InvalidHostKey {
            key: line.chars().take(80).collect(),
            reason: reason.to_string(),
        };
        let line = line.trim();
        let Some((hosts, rest)) = line.split_once(char::is_whitespace) else {
            return Err(refuse("expected `HOST KEYTYPE BASE64`"));
        };
        if hosts.starts_with('@') {
            return Err(refuse(
                "@cert-authority and @revoked lines are not supported",
            ));
        }
        if hosts.starts_with('|') || hosts.contains(['*', '?', '!']) {
            return Err(refuse("hashed host names and wildcards are not supported"));
        }
        let hosts: Vec<String> = hosts.split(',').map(str::to_ascii_lowercase).collect();
        if hosts.iter().any(String::is_empty) {
            return Err(refuse("a host name is empty"));
        }
        Ok(Self {
            hosts,
            key: HostKey::parse(rest.trim())?,
        })
    }

    /// Whether it applies to `host_pattern` (`host` or `[host]:port`).
    pub fn names(&self, host_pattern: &str) -> bool {
        self.hosts.iter().any(|host| host == host_pattern)
    }
}

/// `--host-key` as given: `KEYTYPE BASE64`, or a whole known_hosts line, which must then name
/// `host_pattern`.
pub fn parse_given(text: &str, host_pattern: &str) -> Result<HostKey, ProjectError> {
    let first = text.split_whitespace().next().unwrap_or_default();
    let looks_like_type = first.starts_with("ssh-")
        || first.starts_with("ecdsa-")
        || first.starts_with("sk-")
        || first.starts_with("rsa-");
    if looks_like_type {
        return HostKey::parse(text);
    }
    let line = KnownHostsLine::parse(text)?;
    if !line.names(host_pattern) {
        return Err(ProjectError::InvalidHostKey {
            key: text.chars().take(80).collect(),
            reason: format!(
                "the line is for {}, not {host_pattern}",
                line.hosts.join(",")
            ),
        });
    }
    Ok(line.key)
}

/// The keys shipped in the binary for `host_pattern`.
pub fn builtin_for(host_pattern: &str) -> Vec<HostKey> {
    lines_for(BUILTIN.iter().copied(), host_pattern)
}

/// The keys `lines` (known_hosts lines) give for `host_pattern`; lines that do not parse are
/// skipped (the config's are checked when it is loaded).
pub fn lines_for<'a>(lines: impl IntoIterator<Item = &'a str>, host_pattern: &str) -> Vec<HostKey> {
    lines
        .into_iter()
        .filter_map(|line| KnownHostsLine::parse(line).ok())
        .filter(|line| line.names(host_pattern))
        .map(|line| line.key)
        .collect()
}

/// Checks every `projects.known_hosts` line of the user config.
pub fn validate_config_lines(lines: &[String]) -> Result<(), ProjectError> {
    for line in lines {
        KnownHostsLine::parse(line)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fingerprints the forges publish (their SSH key fingerprint docs).
    const PUBLISHED: &[(&str, &str, &str)] = &[
        (
            "github.com",
            "ssh-ed25519",
            "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU",
        ),
        (
            "github.com",
            "ecdsa-sha2-nistp256",
            "SHA256:p2QAMXNIC1TJYWeIOttrVc98/R1BUFWu3/LiyKgUfQM",
        ),
        (
            "github.com",
            "ssh-rsa",
            "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s",
        ),
        (
            "gitlab.com",
            "ssh-ed25519",
            "SHA256:eUXGGm1YGsMAS7vkcx6JOJdOGHPem5gQp4taiCfCLB8",
        ),
        (
            "gitlab.com",
            "ecdsa-sha2-nistp256",
            "SHA256:HbW3g8zUjNSksFbqTiUWPWg2Bq1x8xdGUrliXFzSnUw",
        ),
        (
            "gitlab.com",
            "ssh-rsa",
            "SHA256:ROQFvPThGrW4RuWLoL9tq9I9zJ42fK4XywyRtbOz/EQ",
        ),
        (
            "bitbucket.org",
            "ssh-ed25519",
            "SHA256:ybgmFkzwOSotHTHLJgHO0QN8L0xErw6vd0VhFA9m3SM",
        ),
        (
            "bitbucket.org",
            "ecdsa-sha2-nistp256",
            "SHA256:FC73VB6C4OQLSCrjEayhMp9UMxS97caD/Yyi2bhW/J0",
        ),
        (
            "bitbucket.org",
            "ssh-rsa",
            "SHA256:46OSHA1Rmj8E8ERTC6xkNcmGOw9oFxYr0WF6zWW8l1E",
        ),
    ];

    #[test]
    fn shipped_keys_match_the_published_fingerprints() {
        assert_eq!(BUILTIN.len(), PUBLISHED.len());
        for (host, kind, fingerprint) in PUBLISHED {
            let keys = builtin_for(host);
            let key = keys
                .iter()
                .find(|key| key.kind() == *kind)
                .unwrap_or_else(|| panic!("no {kind} key for {host}"));
            assert_eq!(key.fingerprint, *fingerprint, "{host} {kind}");
        }
        assert!(builtin_for("[github.com]:2222").is_empty());
        assert!(builtin_for("example.com").is_empty());
    }

    #[test]
    fn config_lines_are_checked_when_the_config_is() {
        let mut config = crate::config::Config::default();
        config.projects.known_hosts = vec![format!(
            "git.example.com,[git.example.com]:2222 {}",
            BUILTIN[0].split_once(' ').unwrap().1
        )];
        config.validate().unwrap();
        let keys = lines_for(
            config.projects.known_hosts.iter().map(String::as_str),
            "[git.example.com]:2222",
        );
        assert_eq!(keys.len(), 1);
        config
            .projects
            .known_hosts
            .push("git.example.com ssh-ed25519 AAAAbroken".into());
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("projects.known_hosts"), "{err}");
    }

    #[test]
    fn given_host_keys_are_checked() {
        let github = BUILTIN[0].split_once(' ').unwrap().1;
        let key = parse_given(github, "git.example.com").unwrap();
        assert_eq!(key.kind(), "ssh-ed25519");
        assert_eq!(
            parse_given(&format!("{github} a comment"), "x.example").unwrap(),
            key
        );
        let line = format!("[git.example.com]:2222,other.example {github}");
        assert_eq!(parse_given(&line, "[git.example.com]:2222").unwrap(), key);
        assert!(parse_given(&line, "git.example.com").is_err());
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-ed25519 AAAAnotakey",
            "@cert-authority * ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
            "|1|abc|def ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
            "*.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
        ] {
            assert!(parse_given(bad, "x.example").is_err(), "{bad}");
        }
    }
}
