//! `[pool]` in the user config and in service.toml: how many booted members to keep per
//! image (`pool.base = 2`, `pool.claude-code = 4`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most members one image may ask for: each is a booted system container, so a typo
/// (`pool.base = 2000`) must not boot the host to death.
pub const MAX_PER_IMAGE: u32 = 64;

/// Why a `[pool]` table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetsError {
    #[error(
        "pool.{0}: not a cubbi image name (lowercase letters, digits, `-`, `_`, `.`; at most 64)"
    )]
    BadImage(String),
    #[error("pool.{image}: {count} is more than the {MAX_PER_IMAGE} members an image may keep")]
    TooMany { image: String, count: u32 },
}

/// The configured target per image; an image not named keeps no members.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, u32>", into = "BTreeMap<String, u32>")]
pub struct PoolTargets(BTreeMap<String, u32>);

impl PoolTargets {
    /// The target for `image` (0 when not configured).
    pub fn target(&self, image: &str) -> u32 {
        self.0.get(image).copied().unwrap_or(0)
    }

    /// Images with a target above zero, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> {
        self.0
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(image, n)| (image.as_str(), *n))
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

/// The image names a member's container name and label can carry without escaping.
pub fn valid_image_name(image: &str) -> bool {
    let mut chars = image.chars();
    image.len() <= 64
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

impl TryFrom<BTreeMap<String, u32>> for PoolTargets {
    type Error = TargetsError;

    fn try_from(map: BTreeMap<String, u32>) -> Result<Self, Self::Error> {
        for (image, count) in &map {
            if !valid_image_name(image) {
                return Err(TargetsError::BadImage(image.clone()));
            }
            if *count > MAX_PER_IMAGE {
                return Err(TargetsError::TooMany {
                    image: image.clone(),
                    count: *count,
                });
            }
        }
        Ok(Self(map))
    }
}

impl From<PoolTargets> for BTreeMap<String, u32> {
    fn from(targets: PoolTargets) -> Self {
        targets.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct File {
        #[serde(default)]
        pool: PoolTargets,
    }

    #[test]
    fn targets_parse_from_toml() {
        let file: File = toml::from_str("[pool]\nbase = 2\nclaude-code = 4\nidle = 0\n").unwrap();
        assert_eq!(file.pool.target("base"), 2);
        assert_eq!(file.pool.target("claude-code"), 4);
        assert_eq!(file.pool.target("goose"), 0);
        let listed: Vec<_> = file.pool.iter().collect();
        assert_eq!(listed, vec![("base", 2), ("claude-code", 4)]);
        let empty: File = toml::from_str("").unwrap();
        assert!(empty.pool.is_empty());
    }

    #[test]
    fn bad_targets_are_refused_readably() {
        let err = toml::from_str::<File>("[pool]\nbase = 2000\n").unwrap_err();
        assert!(err.to_string().contains("more than the 64"), "{err}");
        let err = toml::from_str::<File>("[pool]\n\"Base/x\" = 1\n").unwrap_err();
        assert!(err.to_string().contains("not a cubbi image name"), "{err}");
        assert!(toml::from_str::<File>("[pool]\nbase = -1\n").is_err());
        assert!(toml::from_str::<File>("[pool]\nbase = \"two\"\n").is_err());
    }
}
