//! Which host folders a service's sessions may mount: only below the roots the admin names in
//! `allow_host_volumes`, and never cubbi's own state, config or engine folders (the project
//! key and `cubbi.db` live in the state folder; a session that mounted it would read every
//! user's sealed credentials and tokens).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::api::{ApiError, VolumeMount};

/// `allow_host_volumes`: `false` (none, the default) or the folders below which sessions may
/// mount host paths.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostVolumeRoots(Vec<PathBuf>);

impl HostVolumeRoots {
    pub fn roots(&self) -> &[PathBuf] {
        &self.0
    }

    pub fn is_off(&self) -> bool {
        self.0.is_empty()
    }

    #[cfg(test)]
    pub fn from_roots(roots: Vec<PathBuf>) -> Self {
        Self(roots)
    }
}

impl<'de> Deserialize<'de> for HostVolumeRoots {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Switch(bool),
            Roots(Vec<PathBuf>),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Switch(false) => Ok(Self::default()),
            Raw::Switch(true) => Err(serde::de::Error::custom(
                "allow_host_volumes names the folders sessions may mount below, e.g. \
                 allow_host_volumes = [\"/srv/shared\"]; `true` (any folder the service can \
                 read) is not accepted",
            )),
            Raw::Roots(roots) => {
                for root in &roots {
                    if !root.is_absolute() || root == Path::new("/") {
                        return Err(serde::de::Error::custom(format!(
                            "allow_host_volumes: `{}` is not an absolute folder below /",
                            root.display()
                        )));
                    }
                }
                Ok(Self(roots))
            }
        }
    }
}

/// The host-mount rule of one service: the allowed roots and the folders that are never
/// mounted, all resolved (symlinks followed) when the service starts.
#[derive(Debug, Clone, Default)]
pub struct HostMountRule {
    roots: Vec<PathBuf>,
    forbidden: Vec<PathBuf>,
}

impl HostMountRule {
    /// `roots` from the config; `forbidden` are the service's state and config folders and
    /// the engine's, which no session mounts whatever the roots say.
    pub fn new(roots: &HostVolumeRoots, forbidden: &[&Path]) -> Self {
        let resolve = |path: &Path| std::fs::canonicalize(path).unwrap_or_else(|_| path.into());
        Self {
            roots: roots.roots().iter().map(|root| resolve(root)).collect(),
            forbidden: forbidden.iter().map(|path| resolve(path)).collect(),
        }
    }

    /// The volume with its host path resolved (what is bound is what was checked), or why not.
    pub fn check(&self, volume: VolumeMount) -> Result<VolumeMount, ApiError> {
        if self.roots.is_empty() {
            return Err(ApiError::invalid(
                "this service does not mount host paths (allow_host_volumes is off); use a \
                 --project git URL for your code",
            ));
        }
        let shown = volume.host.display().to_string();
        if !volume.host.is_absolute() {
            return Err(ApiError::invalid(format!(
                "host path `{shown}` is not absolute"
            )));
        }
        let resolved = std::fs::canonicalize(&volume.host).map_err(|_| {
            ApiError::invalid(format!(
                "host path `{shown}` does not exist on the service's host"
            ))
        })?;
        if !self.roots.iter().any(|root| resolved.starts_with(root)) {
            return Err(ApiError::invalid(format!(
                "host path `{shown}` is outside the folders this service mounts ({})",
                self.roots
                    .iter()
                    .map(|root| root.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if self
            .forbidden
            .iter()
            .any(|own| resolved.starts_with(own) || own.starts_with(&resolved))
        {
            return Err(ApiError::invalid(format!(
                "host path `{shown}` holds or is inside cubbi's own state, config or engine \
                 folders, which no session mounts"
            )));
        }
        Ok(VolumeMount {
            host: resolved,
            ..volume
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(host: &Path) -> VolumeMount {
        VolumeMount {
            host: host.to_path_buf(),
            container: "/mnt/x".into(),
            read_only: false,
        }
    }

    #[test]
    fn the_config_takes_false_or_roots_and_refuses_true() {
        #[derive(Deserialize)]
        struct Config {
            allow_host_volumes: HostVolumeRoots,
        }
        let parse = |text: &str| toml::from_str::<Config>(text).map(|c| c.allow_host_volumes);
        assert!(parse("allow_host_volumes = false").unwrap().is_off());
        assert_eq!(
            parse("allow_host_volumes = [\"/srv/shared\"]")
                .unwrap()
                .roots(),
            [PathBuf::from("/srv/shared")]
        );
        for bad in [
            "allow_host_volumes = true",
            "allow_host_volumes = [\"relative\"]",
            "allow_host_volumes = [\"/\"]",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_paths_below_a_root_and_never_cubbis_own() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("shared");
        let state = root.join("state");
        let work = root.join("work");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        // A link inside the root that points out of it is judged by where it points.
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        std::os::unix::fs::symlink(&state, work.join("to-state")).unwrap();
        let rule = HostMountRule::new(&HostVolumeRoots(vec![root.clone()]), &[state.as_path()]);

        let checked = rule.check(volume(&work)).unwrap();
        assert_eq!(checked.host, std::fs::canonicalize(&work).unwrap());
        for (bad, why) in [
            (outside.clone(), "outside"),
            (root.join("escape"), "outside"),
            (state.clone(), "cubbi's own"),
            (work.join("to-state"), "cubbi's own"),
            // A folder that holds the state folder would show it too.
            (root.clone(), "cubbi's own"),
            (root.join("missing"), "does not exist"),
            (PathBuf::from("relative"), "not absolute"),
        ] {
            let err = rule.check(volume(&bad)).unwrap_err();
            assert!(err.to_string().contains(why), "{}: {err}", bad.display());
        }
        let off = HostMountRule::new(&HostVolumeRoots::default(), &[]);
        assert!(
            off.check(volume(&work))
                .unwrap_err()
                .to_string()
                .contains("allow_host_volumes is off")
        );
    }
}
