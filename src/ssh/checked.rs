//! What may go into an OpenSSH file cubbi writes. Every value of a `.conf` or `.known_hosts`
//! line passes through here, whoever supplied it (a service's answer, a local container's
//! labels): a host, user or name with a newline, a space or a quote would add directives
//! (`Match exec`, `ProxyCommand`) that every later `ssh` or `git` runs, and a name with `/`
//! would put the files outside `~/.ssh/cubbi.d`. Such values are refused, never mended.

use std::net::IpAddr;

use russh::keys::PublicKey;

use crate::api::SshEndpoint;
use crate::local::naming::{NotASessionName, SessionName};

/// The longest user name accepted (Linux's `useradd` limit).
const MAX_USER: usize = 32;
/// The longest DNS name.
const MAX_HOST: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsafeValue {
    #[error("the session name {0}")]
    Name(#[from] NotASessionName),
    #[error("the SSH host {0:?} is neither an IP address nor a DNS name")]
    Host(String),
    #[error(
        "the SSH user {0:?} is not a user name (letters, digits, `_`, `.`, `-`, not starting \
         with `-`, at most 32)"
    )]
    User(String),
    #[error("the SSH host key is not one OpenSSH public key on one line ({0})")]
    HostKey(String),
    #[error("the SSH port is 0")]
    Port,
    #[error(
        "{0:?} cannot go into a ProxyCommand (letters, digits, `.`, `_`, `-`, not starting with          `-`, at most 128)"
    )]
    ProxyWord(String),
}

/// A remote name or session id that goes into a `ProxyCommand` line, which OpenSSH hands to
/// a shell: only characters no shell or `%` token gives a meaning.
pub fn check_proxy_word(word: &str) -> Result<&str, UnsafeValue> {
    let plain = !word.is_empty()
        && word.len() <= 128
        && !word.starts_with('-')
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if plain {
        Ok(word)
    } else {
        Err(UnsafeValue::ProxyWord(word.to_string()))
    }
}

/// An [`SshEndpoint`] whose every part was checked: the host an IP address or DNS name, the
/// user a plain user name, the host key parsed and rewritten as `TYPE BASE64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedEndpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// `TYPE BASE64`, no comment.
    pub host_key: String,
}

impl CheckedEndpoint {
    pub fn parse(endpoint: &SshEndpoint) -> Result<Self, UnsafeValue> {
        if endpoint.port == 0 {
            return Err(UnsafeValue::Port);
        }
        Ok(Self {
            host: check_host(&endpoint.host)?.to_string(),
            port: endpoint.port,
            user: check_user(&endpoint.user)?.to_string(),
            host_key: canonical_host_key(&endpoint.host_key)?,
        })
    }
}

/// A session name fit for a file name and a `Host` line.
pub fn check_name(name: &str) -> Result<SessionName, UnsafeValue> {
    Ok(SessionName::parse(name)?)
}

/// An IP address or an RFC 1123 DNS name (labels of letters, digits and inner `-`).
pub fn check_host(host: &str) -> Result<&str, UnsafeValue> {
    let refuse = || UnsafeValue::Host(host.to_string());
    if host.parse::<IpAddr>().is_ok() {
        return Ok(host);
    }
    if host.is_empty() || host.len() > MAX_HOST {
        return Err(refuse());
    }
    let host_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if host.trim_end_matches('.').split('.').all(host_label) {
        Ok(host)
    } else {
        Err(refuse())
    }
}

/// A user name: ASCII letters, digits, `_`, `.` and `-`, not starting with `-`.
pub fn check_user(user: &str) -> Result<&str, UnsafeValue> {
    let ok = !user.is_empty()
        && user.len() <= MAX_USER
        && !user.starts_with(['-', '.'])
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(user)
    } else {
        Err(UnsafeValue::User(user.to_string()))
    }
}

/// The host key parsed as an OpenSSH public key and written back as `TYPE BASE64`.
pub fn canonical_host_key(key: &str) -> Result<String, UnsafeValue> {
    if key.contains(['\n', '\r']) {
        return Err(UnsafeValue::HostKey("it holds a line break".into()));
    }
    let mut parsed =
        PublicKey::from_openssh(key.trim()).map_err(|err| UnsafeValue::HostKey(err.to_string()))?;
    parsed.set_comment("");
    parsed
        .to_openssh()
        .map(|text| text.trim().to_string())
        .map_err(|err| UnsafeValue::HostKey(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAv6DsKRDHwOfHjfUK0cw6GU8eYuf7ZEu6h7mU/A+NFp";

    #[test]
    fn hosts_are_addresses_or_dns_names() {
        for good in [
            "127.0.0.1",
            "::1",
            "fe80::1",
            "cubbi.example.org",
            "host-1",
            "a.b.",
        ] {
            assert_eq!(check_host(good), Ok(good));
        }
        for bad in [
            "",
            "host\nMatch exec \"touch /tmp/x\"",
            "host ProxyCommand x",
            "-oProxyCommand=x",
            "a..b",
            "host\"",
            "h%h",
            "[::1]",
            "a_b",
        ] {
            let err = check_host(bad).unwrap_err();
            assert!(err.to_string().contains("SSH host"), "{err}");
        }
    }

    #[test]
    fn users_are_plain_names() {
        for good in ["agent", "cubbi_user", "a.b-c", "u1"] {
            assert_eq!(check_user(good), Ok(good));
        }
        for bad in [
            "",
            "root\nProxyCommand x",
            "a b",
            "-x",
            "a@b",
            "a\"",
            &"u".repeat(33),
        ] {
            assert!(check_user(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_keys_are_parsed_and_lose_their_comment() {
        assert_eq!(
            canonical_host_key(&format!("{KEY} some comment")).unwrap(),
            KEY
        );
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-ed25519 notbase64!",
            &format!("{KEY}\nHost *\n  ProxyCommand x"),
            &format!("{KEY} c\rx"),
        ] {
            let err = canonical_host_key(bad).unwrap_err();
            assert!(err.to_string().contains("host key"), "{err}");
        }
    }

    #[test]
    fn endpoints_are_checked_whole() {
        let endpoint = SshEndpoint {
            host: "127.0.0.1".into(),
            port: 2200,
            user: "agent".into(),
            host_key: format!("{KEY} x@y"),
            proxy: false,
        };
        let checked = CheckedEndpoint::parse(&endpoint).unwrap();
        assert_eq!(checked.host_key, KEY);
        let bad = SshEndpoint {
            user: "agent\n  ProxyCommand sh".into(),
            ..endpoint.clone()
        };
        assert!(matches!(
            CheckedEndpoint::parse(&bad),
            Err(UnsafeValue::User(_))
        ));
        let bad = SshEndpoint {
            port: 0,
            ..endpoint
        };
        assert_eq!(CheckedEndpoint::parse(&bad), Err(UnsafeValue::Port));
    }
}
