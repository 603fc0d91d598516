//! Repository URLs: the forms a user may give, the normalised id `host[:port]/org/repo`, and
//! the URLs git clones. Anything git could turn into a local read, a command or an option is
//! refused here, before it is stored or handed to git.

use super::ProjectError;

/// How a URL was written; decides the default clone URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlForm {
    /// `user@host:org/repo(.git)`
    Scp,
    /// `ssh://[user@]host[:port]/org/repo`
    Ssh,
    /// `https://host[:port]/org/repo(.git)`
    Https,
    /// `host[:port]/org/repo`, also the id itself.
    Short,
}

/// A parsed, checked repository URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoUrl {
    /// Lowercased host name or IPv4 address.
    pub host: String,
    /// A port that is not the form's default (22 for SSH, 443 for HTTPS).
    pub port: Option<u16>,
    /// `org/repo` (or `group/subgroup/repo`) without `.git` or slashes around it.
    pub path: String,
    /// The SSH user given in the URL (`git` when none was).
    pub user: Option<String>,
    pub form: UrlForm,
    /// Whether the path was written with `.git` (an scp-like URL is cloned as written).
    pub git_suffix: bool,
}

/// The SSH user when a URL names none; every big forge uses it.
pub const DEFAULT_SSH_USER: &str = "git";

impl RepoUrl {
    /// Parses any accepted form, refusing hostile or ambiguous values.
    pub fn parse(input: &str) -> Result<Self, ProjectError> {
        let refuse = |reason: &str| ProjectError::InvalidUrl {
            url: redacted(input),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(refuse("it is empty"));
        }
        if input.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(refuse("it contains whitespace or control characters"));
        }
        if input.starts_with('-') {
            return Err(refuse(
                "it starts with `-`, which git would take as an option",
            ));
        }
        if input.contains("::") {
            return Err(refuse(
                "`TRANSPORT::` remote helpers (ext::, fd::, ...) are not accepted",
            ));
        }
        if input.starts_with('/') || input.starts_with('.') || input.starts_with('~') {
            return Err(refuse(
                "local paths are not accepted; give a remote git URL",
            ));
        }
        if input.contains('?') || input.contains('#') || input.contains('%') || input.contains('\\')
        {
            return Err(refuse(
                "`?`, `#`, `%` and `\\` are not accepted in a repository URL",
            ));
        }
        if let Some((scheme, rest)) = input.split_once("://") {
            return match scheme.to_ascii_lowercase().as_str() {
                "ssh" | "git+ssh" | "ssh+git" => {
                    Self::parse_authority_path(input, rest, UrlForm::Ssh)
                }
                "https" => Self::parse_authority_path(input, rest, UrlForm::Https),
                "http" => Err(refuse(
                    "plain http:// would send the credential in clear text; use https://",
                )),
                "file" => Err(refuse(
                    "file:// URLs are not accepted; give a remote git URL",
                )),
                _ => Err(refuse(
                    "only ssh://, https://, git@host:org/repo and host/org/repo are accepted",
                )),
            };
        }
        // scp-like `user@host:path`: a `:` before the first `/`.
        let first_slash = input.find('/').unwrap_or(input.len());
        if let Some(colon) = input[..first_slash].find(':') {
            let (authority, path) = (&input[..colon], &input[colon + 1..]);
            if let Some((user, host)) = authority.split_once('@') {
                validate_user(input, user)?;
                let host = validate_host(input, host)?;
                let git_suffix = path.trim_end_matches('/').ends_with(".git");
                let path = validate_path(input, path)?;
                return Ok(Self {
                    host,
                    port: None,
                    path,
                    user: Some(user.to_string()),
                    form: UrlForm::Scp,
                    git_suffix,
                });
            }
            // `host:PORT/org/repo`: the id of a project on a non-default port.
            if input[colon + 1..first_slash]
                .chars()
                .all(|c| c.is_ascii_digit())
            {
                return Self::parse_authority_path(input, input, UrlForm::Short);
            }
            return Err(refuse("an scp-like URL needs a user: `git@host:org/repo`"));
        }
        if input.contains('@') {
            return Err(refuse(
                "put no user or credential in a short URL; give the token with --token-stdin",
            ));
        }
        Self::parse_authority_path(input, input, UrlForm::Short)
    }

    /// `[user@]host[:port]/path`, the part after `scheme://` (or a whole short form).
    fn parse_authority_path(input: &str, rest: &str, form: UrlForm) -> Result<Self, ProjectError> {
        let refuse = |reason: &str| ProjectError::InvalidUrl {
            url: redacted(input),
            reason: reason.to_string(),
        };
        let Some((authority, path)) = rest.split_once('/') else {
            return Err(refuse("it has no repository path (host/org/repo)"));
        };
        let (user, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => {
                if form != UrlForm::Ssh {
                    return Err(refuse(
                        "put no user or credential in the URL; give the token with --token-stdin",
                    ));
                }
                if userinfo.contains(':') {
                    return Err(refuse(
                        "put no password in the URL; give the SSH key with --ssh-key",
                    ));
                }
                validate_user(input, userinfo)?;
                (Some(userinfo.to_string()), host_port)
            }
            None => (None, authority),
        };
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) => {
                let port: u16 = port
                    .parse()
                    .ok()
                    .filter(|port| *port > 0)
                    .ok_or_else(|| refuse("the port is not a number from 1 to 65535"))?;
                (host, Some(port))
            }
            None => (host_port, None),
        };
        let host = validate_host(input, host)?;
        let default_port = match form {
            UrlForm::Https => 443,
            _ => 22,
        };
        Ok(Self {
            host,
            port: port.filter(|port| *port != default_port),
            git_suffix: path.trim_end_matches('/').ends_with(".git"),
            path: validate_path(input, path)?,
            user,
            form,
        })
    }

    /// The normalised `host[:port]/org/repo` a project is known by.
    pub fn id(&self) -> String {
        format!("{}/{}", self.host_port(), self.path)
    }

    fn host_port(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.clone(),
        }
    }

    /// Whether it was written as an SSH URL (scp-like or `ssh://`).
    pub fn is_ssh_form(&self) -> bool {
        matches!(self.form, UrlForm::Scp | UrlForm::Ssh)
    }

    /// The SSH URL git clones. An scp-like URL stays one, as written (`USER@host:org/repo`,
    /// `.git` only when it was given): its path is relative to the git user's home, which a
    /// plain git-over-SSH server (sshd + git-shell) needs, and `ssh://host/org/repo` would
    /// name `/org/repo`. Every other form: `ssh://USER@host[:port]/org/repo.git`.
    pub fn ssh_url(&self) -> String {
        let user = self.user.as_deref().unwrap_or(DEFAULT_SSH_USER);
        match self.form {
            UrlForm::Scp => format!(
                "{user}@{}:{}{}",
                self.host,
                self.path,
                if self.git_suffix { ".git" } else { "" }
            ),
            _ => format!("ssh://{user}@{}/{}.git", self.host_port(), self.path),
        }
    }

    /// `https://host[:port]/org/repo.git`.
    pub fn https_url(&self) -> String {
        format!("https://{}/{}.git", self.host_port(), self.path)
    }

    /// The host as a known_hosts line names it: `host`, or `[host]:port` off port 22.
    pub fn known_hosts_host(&self) -> String {
        known_hosts_host(&self.host, self.port)
    }
}

/// `input` as an error message may show it: a password or token in `scheme://USERINFO@` is
/// replaced by `***` (a plain SSH user name stays).
fn redacted(input: &str) -> String {
    let Some((scheme, rest)) = input.split_once("://") else {
        return input.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return input.to_string();
    };
    let userinfo = &rest[..at];
    let ssh = matches!(
        scheme.to_ascii_lowercase().as_str(),
        "ssh" | "git+ssh" | "ssh+git"
    );
    if ssh && !userinfo.contains(':') {
        return input.to_string();
    }
    format!("{scheme}://***{}", &rest[at..])
}

/// `host`, or `[host]:port` for a port other than 22.
pub fn known_hosts_host(host: &str, port: Option<u16>) -> String {
    match port {
        Some(port) if port != 22 => format!("[{host}]:{port}"),
        _ => host.to_string(),
    }
}

/// Splits `reference#branch`; the branch is checked.
pub fn split_branch(reference: &str) -> Result<(&str, Option<&str>), ProjectError> {
    match reference.split_once('#') {
        Some((base, branch)) => {
            validate_branch(branch)?;
            Ok((base, Some(branch)))
        }
        None => Ok((reference, None)),
    }
}

fn validate_user(input: &str, user: &str) -> Result<(), ProjectError> {
    let valid = !user.is_empty()
        && user.len() <= 64
        && !user.starts_with('-')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(ProjectError::InvalidUrl {
            url: redacted(input),
            reason: format!("`{user}` is not a valid SSH user"),
        })
    }
}

/// A DNS name or IPv4 address, lowercased.
fn validate_host(input: &str, host: &str) -> Result<String, ProjectError> {
    let refuse = |reason: &str| ProjectError::InvalidUrl {
        url: redacted(input),
        reason: reason.to_string(),
    };
    if host.is_empty() {
        return Err(refuse("it has no host"));
    }
    if host.len() > 253 {
        return Err(refuse("the host name is too long"));
    }
    if host.starts_with('[') {
        return Err(refuse(
            "IPv6 literal hosts are not supported; use a host name",
        ));
    }
    let host = host.to_ascii_lowercase();
    let labels_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    if !labels_ok {
        return Err(refuse(&format!("`{host}` is not a valid host name")));
    }
    if !host.contains('.') && host != "localhost" {
        return Err(refuse(&format!(
            "`{host}` is not a full host name (e.g. github.com)"
        )));
    }
    Ok(host)
}

/// `org/repo` (two or more segments), without a trailing `/` or `.git`.
fn validate_path(input: &str, path: &str) -> Result<String, ProjectError> {
    let refuse = |reason: &str| ProjectError::InvalidUrl {
        url: redacted(input),
        reason: reason.to_string(),
    };
    let path = path.strip_suffix('/').unwrap_or(path);
    let path = path.strip_suffix(".git").unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    if segments.len() < 2 {
        return Err(refuse("the path must be org/repo"));
    }
    for segment in &segments {
        if segment.is_empty() {
            return Err(refuse("the path has an empty part (`//`)"));
        }
        if *segment == "." || *segment == ".." {
            return Err(refuse("`.` and `..` are not accepted in the path"));
        }
        if segment.starts_with('-') {
            return Err(refuse("a path part may not start with `-`"));
        }
        if !segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '~' | '+'))
        {
            return Err(refuse(&format!(
                "`{segment}` may hold only letters, digits, `.`, `_`, `-`, `~` and `+`"
            )));
        }
    }
    if segments.last().is_some_and(|last| last.ends_with(".git")) {
        return Err(refuse("the repository name ends in `.git` twice"));
    }
    Ok(segments.join("/"))
}

/// A git branch name that is safe as a clone argument: git's ref rules, plus no leading `-`.
pub fn validate_branch(branch: &str) -> Result<(), ProjectError> {
    let refuse = |reason: &str| ProjectError::InvalidBranch {
        branch: branch.to_string(),
        reason: reason.to_string(),
    };
    if branch.is_empty() {
        return Err(refuse("it is empty"));
    }
    if branch.len() > 255 {
        return Err(refuse("it is longer than 255 bytes"));
    }
    if branch.starts_with('-') {
        return Err(refuse("it starts with `-`"));
    }
    if branch
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c))
    {
        return Err(refuse(
            "it contains whitespace, a control character or one of ~^:?*[\\",
        ));
    }
    if branch.contains("..")
        || branch.contains("@{")
        || branch.contains("//")
        || branch.starts_with('/')
        || branch.ends_with('/')
        || branch.ends_with('.')
        || branch.ends_with(".lock")
        || branch.split('/').any(|part| part.starts_with('.'))
        || branch == "@"
    {
        return Err(refuse("it is not a valid git branch name"));
    }
    Ok(())
}

/// Project names: `^[a-z0-9][a-z0-9._-]{0,62}$`.
pub fn validate_name(name: &str) -> Result<(), ProjectError> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 63
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(ProjectError::InvalidName {
            name: name.to_string(),
        })
    }
}

/// The name a project gets without `--name`: its repository name, lowercased, with anything
/// a name may not hold turned into `-`.
pub fn default_name(url: &RepoUrl) -> String {
    let last = url.path.rsplit('/').next().unwrap_or(&url.path);
    let mut name: String = last
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    while name
        .chars()
        .next()
        .is_some_and(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
    {
        name.remove(0);
    }
    if name.is_empty() {
        name = "project".into();
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(input: &str) -> String {
        RepoUrl::parse(input)
            .unwrap_or_else(|err| panic!("{input}: {err}"))
            .id()
    }

    #[test]
    fn every_form_of_one_repo_has_the_same_id() {
        for form in [
            "git@github.com:org/repo.git",
            "git@github.com:org/repo",
            "ssh://git@github.com/org/repo.git",
            "ssh://github.com/org/repo",
            "ssh://git@GitHub.com:22/org/repo/",
            "https://github.com/org/repo.git",
            "https://github.com/org/repo",
            "https://github.com:443/org/repo",
            "HTTPS://GITHUB.COM/org/repo",
            "github.com/org/repo",
            "github.com/org/repo.git",
        ] {
            assert_eq!(id(form), "github.com/org/repo", "{form}");
        }
        assert_eq!(
            id("git@GitLab.com:Group/Sub/Repo.git"),
            "gitlab.com/Group/Sub/Repo"
        );
    }

    #[test]
    fn a_non_default_port_is_kept() {
        assert_eq!(
            id("ssh://git@git.example.com:2222/org/repo.git"),
            "git.example.com:2222/org/repo"
        );
        assert_eq!(
            id("git.example.com:2222/org/repo"),
            "git.example.com:2222/org/repo"
        );
        let url = RepoUrl::parse("ssh://deploy@git.example.com:2222/org/repo").unwrap();
        assert_eq!(
            url.ssh_url(),
            "ssh://deploy@git.example.com:2222/org/repo.git"
        );
        assert_eq!(url.known_hosts_host(), "[git.example.com]:2222");
        let url = RepoUrl::parse("git@github.com:org/repo").unwrap();
        assert_eq!(url.ssh_url(), "git@github.com:org/repo");
        assert_eq!(url.https_url(), "https://github.com/org/repo.git");
        assert_eq!(url.known_hosts_host(), "github.com");
    }

    /// `git@host:org/repo` names `~git/org/repo`; `ssh://git@host/org/repo` names `/org/repo`.
    #[test]
    fn scp_like_urls_are_cloned_as_written() {
        for (given, clone) in [
            (
                "git@git.example.com:org/repo.git",
                "git@git.example.com:org/repo.git",
            ),
            (
                "git@git.example.com:org/repo",
                "git@git.example.com:org/repo",
            ),
            (
                "deploy@git.lan.example:srv/repo.git/",
                "deploy@git.lan.example:srv/repo.git",
            ),
        ] {
            let url = RepoUrl::parse(given).unwrap();
            assert_eq!(url.ssh_url(), clone, "{given}");
            let again = RepoUrl::parse(&url.ssh_url()).unwrap();
            assert_eq!((again.id(), again.form), (url.id(), UrlForm::Scp));
        }
    }

    #[test]
    fn hostile_urls_are_refused() {
        for bad in [
            "",
            "file:///etc/passwd",
            "file://host/org/repo",
            "ext::sh -c touch% /tmp/pwned",
            "ext::ssh",
            "fd::17",
            "/srv/git/repo",
            "./repo",
            "../repo",
            "~/repo",
            "https://user:token@github.com/org/repo",
            "https://token@github.com/org/repo",
            "ssh://git:password@github.com/org/repo",
            "-uhttps://github.com/org/repo",
            "--upload-pack=touch /tmp/x",
            "github.com/org/repo\n",
            "github.com/org/re po",
            "github.com/org/\u{7}repo",
            "github.com/org/../repo",
            "github.com/../../etc",
            "github.com/org/./repo",
            "github.com//repo",
            "github.com/org//repo",
            "/org/repo",
            "https:///org/repo",
            "github.com/repo",
            "github.com",
            "git@:org/repo",
            "git@github.com:",
            "http://github.com/org/repo",
            "git://github.com/org/repo",
            "ftp://github.com/org/repo",
            "github.com/org/repo?x=1",
            "github.com/org/repo#main",
            "github.com/org/%2e%2e",
            "github.com/org/-repo",
            "-oProxyCommand=x@github.com:org/repo",
            "github.com:org/repo",
            "ssh://git@github.com:0/org/repo",
            "ssh://git@github.com:99999/org/repo",
            "ssh://git@[::1]/org/repo",
            "ssh://-oProxyCommand=x@github.com/org/repo",
            "ssh://git@-github.com/org/repo",
            "intranet/org/repo",
        ] {
            assert!(RepoUrl::parse(bad).is_err(), "accepted {bad:?}");
        }
        let err = RepoUrl::parse("https://user:tok@github.com/org/repo")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--token-stdin"), "{err}");
        assert!(!err.contains("tok@"), "{err}");
        let err = RepoUrl::parse("ssh://git:s3cret@github.com/org/repo")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn names_follow_the_rule() {
        for good in ["a", "repo", "my-repo.v2_x", "0", &"a".repeat(63)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            ".a",
            "_a",
            "A",
            "a b",
            "a/b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        let url = RepoUrl::parse("github.com/Org/My_Repo.Rs").unwrap();
        assert_eq!(default_name(&url), "my_repo.rs");
        let url = RepoUrl::parse("github.com/org/__x").unwrap();
        assert_eq!(default_name(&url), "x");
    }

    #[test]
    fn branches_are_checked() {
        for good in ["main", "feature/x-1", "v1.2", "release_2"] {
            assert!(validate_branch(good).is_ok(), "{good}");
        }
        for bad in [
            "", "-x", "a..b", "a b", "a:b", "x.lock", "/x", "x/", ".x", "a/.b", "@",
        ] {
            assert!(validate_branch(bad).is_err(), "{bad}");
        }
        assert_eq!(split_branch("repo#dev").unwrap(), ("repo", Some("dev")));
        assert_eq!(split_branch("repo").unwrap(), ("repo", None));
        assert!(split_branch("repo#-x").is_err());
    }
}
