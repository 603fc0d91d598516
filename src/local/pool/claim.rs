//! The claim's commit: a record volume naming the chosen member, then the rename of that member
//! (by its name) to the session's booting name. Before the rename the container is a member and
//! the record is stale (swept); after it, the container is a session (see docs/architecture.md).

use std::collections::HashMap;

use bollard::models::{ContainerSummaryStateEnum, VolumeCreateRequest};
use rand::seq::SliceRandom;

use super::member::{MemberName, POOL, data_owner};
use super::ops::PoolError;
use super::record::{CLAIM_OF, ClaimRecord};
use crate::local::docker_api::DockerApi;
use crate::local::labels::{self, SessionLabels};

/// A stale record (its container still a member, or gone) is removed only once it is this old:
/// a younger one may belong to a claim between its two steps.
pub const STALE_RECORD_SECS: i64 = 300;

/// Test-only crash injection, compiled in so the integration tests can kill a real claim at a
/// step: `CUBBI_TEST_CRASH_AT=claim:record` or `claim:rename` aborts the process right after
/// that step.
pub(crate) fn crash_point(step: &str) {
    if std::env::var("CUBBI_TEST_CRASH_AT").is_ok_and(|at| at == format!("claim:{step}")) {
        std::process::abort();
    }
}

fn docker(doing: &'static str) -> impl Fn(bollard::errors::Error) -> PoolError {
    move |source| PoolError::Docker { doing, source }
}

fn is_status(err: &bollard::errors::Error, code: u16) -> bool {
    matches!(err, bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == code)
}

/// Claims one ready member of `image` for `record` (whose `container` is filled in here).
/// `Ok(None)`: no member left, the create goes cold. Step 1 takes the member's record volume
/// (the lock, see [`ClaimRecord::volume_name`]); step 2 renames the member to
/// `cubbi-NAME.booting`, the commit. The caller applies the personal state and renames it to
/// `cubbi-NAME`.
pub async fn claim(
    docker_api: &dyn DockerApi,
    image: &str,
    record: ClaimRecord,
) -> Result<Option<ClaimRecord>, PoolError> {
    let wanted = Wanted {
        image,
        image_id: None,
        data_owner: None,
    };
    claim_wanted(docker_api, wanted, record).await
}

/// Which members a claim may take.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    /// The cubbi image they boot.
    pub image: &'a str,
    /// Only members booted from this build of it (members booted before the image was
    /// rebuilt are left for the next fill to replace).
    pub image_id: Option<&'a str>,
    /// Only members holding this owner's data volume (an image that keeps its config there);
    /// `None`: only members holding nobody's.
    pub data_owner: Option<&'a str>,
}

/// [`claim`] of a member that is [`Wanted`].
pub async fn claim_wanted(
    docker_api: &dyn DockerApi,
    wanted: Wanted<'_>,
    mut record: ClaimRecord,
) -> Result<Option<ClaimRecord>, PoolError> {
    let mut selectors = vec![format!("{POOL}={}", wanted.image)];
    if let Some(id) = wanted.image_id {
        selectors.push(format!("{}={id}", super::member::IMAGE_ID));
    }
    if let Some(owner) = wanted.data_owner {
        selectors.push(format!("{}={owner}", super::member::DATA_OWNER));
    }
    let filters = HashMap::from([("label".to_string(), selectors)]);
    let listed = docker_api
        .list_containers(&filters)
        .await
        .map_err(docker("list the pool's containers"))?;
    let booting = labels::booting_container_name(&record.name);
    let mut members: Vec<(String, MemberName)> = listed
        .into_iter()
        .filter(|c| c.state == Some(ContainerSummaryStateEnum::RUNNING))
        // Exactly, whatever the filter matched: a member holding another owner's data, or
        // any owner's when none is wanted, is never taken.
        .filter(|c| data_owner(c.labels.as_ref()) == wanted.data_owner)
        .filter_map(|c| {
            let member = c
                .names
                .iter()
                .flatten()
                .find_map(|n| MemberName::parse(n))?;
            Some((c.id?, member))
        })
        .collect();
    // Concurrent claims that all tried the members in one order would each lose to every
    // claim before it, a record volume per loss (20 at once: about 200 volume calls). Each
    // in its own random order, most win at their first or second try.
    members.shuffle(&mut rand::rng());
    for (id, member) in members {
        record.container = id.clone();
        let volume = ClaimRecord::volume_name(&member.container_name());
        let made = docker_api
            .create_volume(VolumeCreateRequest {
                name: Some(volume.clone()),
                labels: Some(record.to_labels()),
                ..Default::default()
            })
            .await
            .map_err(docker("record the claim"))?;
        if !record.held_by(&made.labels) {
            // Another claim holds this member (or a crashed one did, until the sweep).
            continue;
        }
        crash_point("record");
        match docker_api.rename_container(&id, &booting).await {
            Ok(()) => {
                crash_point("rename");
                return Ok(Some(record));
            }
            Err(err) => {
                // Releases the member: it was never renamed, so it is still a member.
                let _ = docker_api.remove_volume(&volume).await;
                if is_status(&err, 404) {
                    continue;
                }
                if is_status(&err, 409) {
                    return Err(PoolError::NameTaken(booting));
                }
                return Err(docker("claim a pool member")(err));
            }
        }
    }
    Ok(None)
}

/// Every session made from a member: pool-labelled containers renamed away from
/// `cubbi-pool.*` whose record names them (what `list` adds to the labelled sessions).
pub async fn claimed_sessions(
    docker_api: &dyn DockerApi,
) -> Result<Vec<(String, SessionLabels)>, PoolError> {
    let records: Vec<ClaimRecord> = docker_api
        .list_volumes(CLAIM_OF)
        .await
        .map_err(docker("list claim records"))?
        .iter()
        .filter_map(|v| ClaimRecord::from_labels(&v.labels))
        .collect();
    let filters = HashMap::from([("label".to_string(), vec![POOL.to_string()])]);
    let containers = docker_api
        .list_containers(&filters)
        .await
        .map_err(docker("list the pool's containers"))?;
    let mut sessions = Vec::new();
    for container in containers {
        let (Some(id), Some(container_labels)) = (&container.id, &container.labels) else {
            continue;
        };
        let names: Vec<&String> = container.names.iter().flatten().collect();
        if names.iter().any(|n| MemberName::parse(n).is_some()) {
            continue;
        }
        let found = records
            .iter()
            .find(|r| &r.container == id)
            .and_then(|r| r.session_labels(id, container_labels));
        if let Some(session) = found {
            sessions.push((id.clone(), session));
        }
    }
    Ok(sessions)
}

/// Removes records older than [`STALE_RECORD_SECS`] whose container is still a member or
/// gone (a claim that crashed between its two steps). Returns how many.
pub async fn sweep_records(docker_api: &dyn DockerApi, now: i64) -> Result<u32, PoolError> {
    let claimed: Vec<String> = claimed_sessions(docker_api)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let mut removed = 0;
    for volume in docker_api
        .list_volumes(CLAIM_OF)
        .await
        .map_err(docker("list claim records"))?
    {
        let stale = match ClaimRecord::from_labels(&volume.labels) {
            Some(record) => {
                !claimed.contains(&record.container) && now - record.created > STALE_RECORD_SECS
            }
            None => false,
        };
        if stale && docker_api.remove_volume(&volume.name).await.is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}
