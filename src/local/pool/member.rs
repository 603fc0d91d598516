//! How a pool member is named and labelled. A member carries the labels a session's SSH
//! needs (port, bind, host key, command) but NOT `io.cubbi.session` and no owner: `list`,
//! quotas and every per-owner query, which all select on the session label, never see it.

use std::collections::HashMap;

use crate::local::labels;

/// Marks a pool member (and, after a claim, the session made from one); the value is the
/// cubbi image it boots.
pub const POOL: &str = "io.cubbi.pool";

/// The id of the image a member booted from: a member of an image rebuilt since is never
/// claimed, and the next fill replaces it.
pub const IMAGE_ID: &str = "io.cubbi.pool.image-id";

/// The owner whose data volume a member of an image that keeps its config there was booted
/// with (Docker cannot add a volume to a running container). Only that owner's creates claim
/// it, and only that owner's `pool status` and `drain` see it. Not [`labels::OWNER`]: the
/// member is nobody's session, in no quota and no list.
pub const DATA_OWNER: &str = "io.cubbi.pool.data-owner";

/// The owner whose data volume a member holds (from its labels), `None` for one that holds
/// nobody's.
pub fn data_owner(labels: Option<&HashMap<String, String>>) -> Option<&str> {
    labels?.get(DATA_OWNER).map(String::as_str)
}

/// Whether `owner` may see (claim, count, drain) a member with these labels: one holding
/// nobody's data, or this owner's.
pub fn serves(labels: Option<&HashMap<String, String>>, owner: &str) -> bool {
    data_owner(labels).is_none_or(|holder| holder == owner)
}

/// The name prefix of every unclaimed member. A claim renames the member away from it, so
/// "named `cubbi-pool.*`" is what being a member means (see docs/architecture.md).
pub const PREFIX: &str = "cubbi-pool.";

/// The name prefix of a member still booting (`pool fill` renames it to [`PREFIX`] once sshd
/// answers), so a claim never takes a member that cannot serve yet.
pub const BOOTING_PREFIX: &str = "cubbi-pool-booting.";

/// A member's container name, `cubbi-pool.IMAGE.SUFFIX`. Session names cannot hold `.`, so
/// no session's `cubbi-NAME` can ever collide with a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberName {
    pub image: String,
    pub suffix: String,
}

impl MemberName {
    /// A fresh name for a new member of `image`.
    pub fn fresh(image: &str) -> Self {
        let bytes: [u8; 6] = rand::random();
        Self {
            image: image.to_string(),
            suffix: bytes.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// Reads a container name back (Docker reports it with a leading `/`); `None` for
    /// anything that is not an unclaimed member.
    pub fn parse(name: &str) -> Option<Self> {
        Self::parse_after(name.trim_start_matches('/').strip_prefix(PREFIX)?)
    }

    /// A member's name, ready or still booting: `(name, booting)`.
    pub fn parse_any(name: &str) -> Option<(Self, bool)> {
        let name = name.trim_start_matches('/');
        match name.strip_prefix(BOOTING_PREFIX) {
            Some(rest) => Self::parse_after(rest).map(|member| (member, true)),
            None => Self::parse(name).map(|member| (member, false)),
        }
    }

    /// The member a `docker ps` row is, by any of its names: `(name, booting)`; `None` for a
    /// session (a claimed member included) or anything else.
    pub fn of_container(container: &bollard::models::ContainerSummary) -> Option<(Self, bool)> {
        container
            .names
            .iter()
            .flatten()
            .find_map(|name| Self::parse_any(name))
    }

    fn parse_after(rest: &str) -> Option<Self> {
        let (image, suffix) = rest.rsplit_once('.')?;
        let hex = suffix.len() == 12 && suffix.bytes().all(|b| b.is_ascii_hexdigit());
        (hex && super::targets::valid_image_name(image)).then(|| Self {
            image: image.to_string(),
            suffix: suffix.to_string(),
        })
    }

    pub fn container_name(&self) -> String {
        format!("{PREFIX}{}.{}", self.image, self.suffix)
    }

    /// The name the member has while it boots.
    pub fn booting_container_name(&self) -> String {
        format!("{BOOTING_PREFIX}{}.{}", self.image, self.suffix)
    }
}

/// The labels a member is created with: the SSH endpoint it keeps through its claim.
pub fn member_labels(
    image: &str,
    image_reference: &str,
    ssh_port: u16,
    ssh_bind: &str,
    host_key: &str,
    command: &[String],
) -> HashMap<String, String> {
    HashMap::from([
        (POOL.to_string(), image.to_string()),
        (labels::IMAGE.to_string(), image_reference.to_string()),
        (labels::SSH_PORT.to_string(), ssh_port.to_string()),
        (labels::SSH_BIND.to_string(), ssh_bind.to_string()),
        (labels::SSH_HOST_KEY.to_string(), host_key.to_string()),
        (
            labels::COMMAND.to_string(),
            serde_json::to_string(command).unwrap_or_else(|_| "[]".into()),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_round_trip_and_never_look_like_sessions() {
        let name = MemberName::fresh("claude-code");
        let container = name.container_name();
        assert!(container.starts_with("cubbi-pool.claude-code."));
        assert_eq!(
            MemberName::parse(&format!("/{container}")),
            Some(name.clone())
        );
        assert_ne!(MemberName::fresh("base"), MemberName::fresh("base"));
        assert_eq!(MemberName::parse("/cubbi-demo"), None);
        let booting = name.booting_container_name();
        assert_eq!(
            MemberName::parse(&booting),
            None,
            "a booting member is not claimable"
        );
        assert_eq!(MemberName::parse_any(&booting), Some((name.clone(), true)));
        assert_eq!(
            MemberName::parse_any(&container),
            Some((name.clone(), false))
        );
        assert_eq!(MemberName::parse("/cubbi-pool.base.zz"), None);
        assert_eq!(MemberName::parse("/cubbi-pool.Base.0123456789ab"), None);
    }

    #[test]
    fn members_are_not_sessions() {
        let map = member_labels(
            "base",
            "cubbi-base",
            2301,
            "127.0.0.1",
            "ssh-ed25519 A",
            &[],
        );
        assert!(labels::SessionLabels::from_map(&map).is_none());
        assert_eq!(map.get(POOL).map(String::as_str), Some("base"));
        assert!(!map.contains_key(labels::OWNER));
    }
}
