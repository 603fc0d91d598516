//! Snapshots: a session's system container committed as an image of the owner's
//! (`cubbi-snapshot:OWNERHASH-NAME`), labelled with the owner, the source session, the time and
//! how it was taken, so `list` is one `docker images` filtered by labels and another owner's
//! snapshot is simply not there.
//!
//! A stopped session is committed as it is. A running one is committed with Docker's pause
//! (the cgroup freezer holds every process of the session for the length of the commit), so
//! no process writes while its file system is read: a short freeze rather than a stop, because
//! a stop would end the user's shells and agents. Volumes are not part of an image: the
//! workspace (a host folder), the owner's data volume and, under `--unsafe-runc`, the inner
//! Docker's storage volume stay out of the snapshot; under Sysbox the inner Docker's storage
//! is in the container's file system, which Sysbox documents `docker commit` to include (not
//! tested on this host, which has no Sysbox).

use std::collections::HashMap;

use bollard::models::ImageSummary;

use super::docker_api::DockerApi;

use super::labels::{self, SessionLabels};
use super::naming;
use crate::api::{ApiError, Snapshot};

pub const SNAPSHOT: &str = "io.cubbi.snapshot";
pub const SNAPSHOT_NAME: &str = "io.cubbi.snapshot-name";
pub const SNAPSHOT_SOURCE: &str = "io.cubbi.snapshot-source";
pub const SNAPSHOT_CREATED: &str = "io.cubbi.snapshot-created";
pub const SNAPSHOT_TAKEN: &str = "io.cubbi.snapshot-taken";
/// The repository every snapshot is a tag of.
pub const REPOSITORY: &str = "cubbi-snapshot";

/// `NAME` as given, when it is a valid snapshot name (what session names allow).
pub fn check_name(raw: &str) -> Result<String, ApiError> {
    match naming::sanitize_hostname(raw) {
        Some(name) if name == raw && name.len() <= 63 => Ok(name),
        _ => Err(ApiError::invalid(format!(
            "`{raw}` is not a snapshot name: use lowercase letters, digits and `-` (at most 63)"
        ))),
    }
}

/// The tag of `owner`'s snapshot `name`: the owner's readable name and hash keep two owners'
/// snapshots of one name apart.
pub fn tag(owner: &str, name: &str) -> String {
    let owner_part = naming::data_volume_name(owner);
    let owner_part = owner_part.trim_start_matches("cubbi-data-");
    format!("{REPOSITORY}:{owner_part}-{name}")
}

/// The labels a snapshot image gets. A commit merges the container's labels into the image,
/// so every session label is overridden with an empty value: a session made from the
/// snapshot must not inherit the source's workspace, port or host key labels.
pub fn image_labels(
    owner: &str,
    name: &str,
    source: &str,
    created: i64,
    taken: &str,
    extra: &HashMap<String, String>,
) -> HashMap<String, String> {
    let blank = SessionLabels {
        name: String::new(),
        owner: String::new(),
        image: String::new(),
        ssh_port: 0,
        ssh_bind: String::new(),
        host_key: String::new(),
        workspace: Some(String::new()),
        created: 0,
        command: Vec::new(),
    };
    let mut map: HashMap<String, String> = blank
        .to_map()
        .into_keys()
        .map(|key| (key, String::new()))
        .collect();
    map.extend(extra.clone());
    map.insert(SNAPSHOT.into(), "true".into());
    map.insert(labels::MANAGED.into(), "true".into());
    map.insert(labels::OWNER.into(), owner.into());
    map.insert(SNAPSHOT_NAME.into(), name.into());
    map.insert(SNAPSHOT_SOURCE.into(), source.into());
    map.insert(SNAPSHOT_CREATED.into(), created.to_string());
    map.insert(SNAPSHOT_TAKEN.into(), taken.into());
    map
}

/// A snapshot from one `docker images` row; `None` for anything else.
pub fn from_summary(summary: &ImageSummary) -> Option<Snapshot> {
    let labels = &summary.labels;
    if labels.get(SNAPSHOT).map(String::as_str) != Some("true") {
        return None;
    }
    let owner = labels.get(labels::OWNER)?.clone();
    let name = labels.get(SNAPSHOT_NAME)?.clone();
    Some(Snapshot {
        image: tag(&owner, &name),
        id: summary.id.clone(),
        name,
        owner,
        source: labels.get(SNAPSHOT_SOURCE).cloned().unwrap_or_default(),
        created: labels
            .get(SNAPSHOT_CREATED)
            .and_then(|v| v.parse().ok())
            .unwrap_or(summary.created),
        taken: labels.get(SNAPSHOT_TAKEN).cloned().unwrap_or_default(),
        size: summary.size,
    })
}

/// Every snapshot of `owner` (of every owner with `all_owners`), oldest first.
pub async fn list(
    docker: &dyn DockerApi,
    owner: &str,
    all_owners: bool,
) -> Result<Vec<Snapshot>, ApiError> {
    let mut filter = vec![format!("{SNAPSHOT}=true")];
    if !all_owners {
        filter.push(format!("{}={owner}", labels::OWNER));
    }
    let filters = HashMap::from([("label".to_string(), filter)]);
    let images = docker
        .list_images(&filters)
        .await
        .map_err(|err| ApiError::unavailable(format!("cannot list the snapshots: {err}")))?;
    let mut snapshots: Vec<Snapshot> = images.iter().filter_map(from_summary).collect();
    snapshots.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.name.cmp(&b.name)));
    Ok(snapshots)
}

/// The one snapshot named `name` among `snapshots`.
pub fn pick(snapshots: Vec<Snapshot>, name: &str) -> Result<Snapshot, ApiError> {
    let mut found: Vec<Snapshot> = snapshots.into_iter().filter(|s| s.name == name).collect();
    match found.len() {
        0 => Err(ApiError::Service {
            code: crate::api::ErrorCode::NotFound,
            message: format!("no snapshot is named `{name}`; `cubbi snapshot list` shows them"),
        }),
        1 => Ok(found.remove(0)),
        _ => Err(ApiError::Ambiguous {
            prefix: name.to_string(),
            candidates: found
                .iter()
                .map(|s| format!("{} ({})", s.name, s.owner))
                .collect(),
        }),
    }
}

/// Commits container `id` as `owner`'s snapshot `name`, paused when `freeze`.
pub async fn commit(
    docker: &dyn DockerApi,
    id: &str,
    image_tag: &str,
    freeze: bool,
    labels: HashMap<String, String>,
) -> Result<(), ApiError> {
    let (repo, tag) = image_tag.split_once(':').unwrap_or((image_tag, "latest"));
    docker
        .commit_container(id, repo, tag, freeze, labels)
        .await
        .map_err(|err| ApiError::unavailable(format!("cannot commit the session: {err}")))
}

/// Removes a snapshot's image; one a session still runs from is refused by Docker, and said.
pub async fn remove(docker: &dyn DockerApi, snapshot: &Snapshot) -> Result<(), ApiError> {
    match docker.remove_image(&snapshot.image).await {
        Ok(_) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            message,
        }) => Err(ApiError::Conflict(format!(
            "snapshot {} is in use by a session made from it; close that first ({message})",
            snapshot.name
        ))),
        Err(err) => Err(ApiError::unavailable(format!(
            "cannot remove snapshot {}: {err}",
            snapshot.name
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags() {
        assert_eq!(check_name("before-upgrade").unwrap(), "before-upgrade");
        for bad in ["", "Bad", "../x", "a b", "a:b", "-x"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let (a, b) = (tag("alice", "x"), tag("Alice", "x"));
        assert_ne!(a, b, "two owners never share a tag");
        assert!(a.starts_with("cubbi-snapshot:alice-"), "{a}");
        assert!(a.ends_with("-x"), "{a}");
    }

    #[test]
    fn image_labels_blank_every_session_label() {
        let labels = image_labels("me", "snap", "web", 7, "stopped", &HashMap::new());
        assert_eq!(
            labels.get(labels::SSH_HOST_KEY).map(String::as_str),
            Some("")
        );
        assert_eq!(labels.get(labels::WORKSPACE).map(String::as_str), Some(""));
        assert_eq!(labels.get(labels::SESSION).map(String::as_str), Some(""));
        assert_eq!(labels.get(labels::OWNER).map(String::as_str), Some("me"));
        assert_eq!(labels.get(SNAPSHOT_SOURCE).map(String::as_str), Some("web"));
    }
}
