//! The pool operations that talk to Docker besides the claim (`claim.rs`): reading the members
//! and draining them (see "Warm pool" in docs/architecture.md).

use std::collections::HashMap;

use bollard::models::ContainerSummary;

use super::inventory::{PoolRow, inventory};
use super::member::{MemberName, POOL, data_owner, serves};
use super::targets::PoolTargets;
use crate::local::docker_api::DockerApi;

/// What went wrong talking to Docker about the pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot {doing}: {source}")]
    Docker {
        doing: &'static str,
        source: bollard::errors::Error,
    },
    #[error("a container named {0} exists already")]
    NameTaken(String),
}

fn docker(doing: &'static str) -> impl Fn(bollard::errors::Error) -> PoolError {
    move |source| PoolError::Docker { doing, source }
}

/// Every container labelled as a member (claimed ones included: callers parse the name).
async fn labelled(docker_api: &dyn DockerApi) -> Result<Vec<ContainerSummary>, PoolError> {
    let filters = HashMap::from([("label".to_string(), vec![POOL.to_string()])]);
    docker_api
        .list_containers(&filters)
        .await
        .map_err(docker("list the pool's containers"))
}

/// Per image: ready members and the target (what `cubbi pool status` prints), as `owner`
/// sees them: members holding another owner's data volume are that owner's pool.
pub async fn status(
    docker_api: &dyn DockerApi,
    targets: &PoolTargets,
    owner: &str,
) -> Result<Vec<PoolRow>, PoolError> {
    let held = docker_api
        .list_volumes(super::record::CLAIM_OF)
        .await
        .map_err(docker("list claim records"))?
        .iter()
        .filter_map(|volume| super::record::ClaimRecord::from_labels(&volume.labels))
        .map(|record| record.container)
        .collect();
    let members: Vec<ContainerSummary> = labelled(docker_api)
        .await?
        .into_iter()
        .filter(|c| serves(c.labels.as_ref(), owner))
        .collect();
    Ok(inventory(targets, &members, &held))
}

/// Removes every unclaimed member (of `image`, or of all images) that `owner` sees (one
/// holding another owner's data volume is left to that owner). Claimed members are sessions
/// and are left alone; a member claimed meanwhile is no longer found by its name.
pub async fn drain(
    docker_api: &dyn DockerApi,
    image: Option<&str>,
    owner: &str,
) -> Result<u32, PoolError> {
    remove_members(docker_api, |member, labels| {
        serves(labels, owner) && image.is_none_or(|image| image == member.image)
    })
    .await
}

/// Removes the members holding an owner's data that `keeps(image, owner)` no longer wants (a
/// service's, of owners who created no session of the image lately). Returns how many.
pub async fn drain_unwanted_owner_data(
    docker_api: &dyn DockerApi,
    keeps: impl Fn(&str, &str) -> bool,
) -> Result<u32, PoolError> {
    remove_members(docker_api, |member, labels| {
        data_owner(labels).is_some_and(|owner| !keeps(&member.image, owner))
    })
    .await
}

/// Removes every unclaimed member (ready or booting) that `select` picks.
async fn remove_members(
    docker_api: &dyn DockerApi,
    select: impl Fn(&MemberName, Option<&HashMap<String, String>>) -> bool,
) -> Result<u32, PoolError> {
    let mut removed = 0;
    for container in labelled(docker_api).await? {
        let Some((member, booting)) = MemberName::of_container(&container) else {
            continue;
        };
        if !select(&member, container.labels.as_ref()) {
            continue;
        }
        let name = if booting {
            member.booting_container_name()
        } else {
            member.container_name()
        };
        // Addressed by name, not id: if a claim renamed it a moment ago, this is a 404 and the
        // new session survives.
        match docker_api.remove_container(&name).await {
            Ok(()) => removed += 1,
            // Gone, or being removed by another drain or fill meanwhile.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => {}
            Err(err) => return Err(docker("remove a pool member")(err)),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bollard::models::ContainerSummaryStateEnum;

    use super::*;
    use crate::local::backend::fake_docker::{FakeContainer, FakeDocker};
    use crate::local::pool::member::member_labels;

    fn with_members(image: &str, count: usize) -> Arc<FakeDocker> {
        let docker = Arc::new(FakeDocker::default());
        for i in 0..count {
            docker.add(FakeContainer {
                name: MemberName::fresh(image).container_name(),
                labels: member_labels(image, "cubbi-base", 2300 + i as u16, "127.0.0.1", "k", &[]),
                state: ContainerSummaryStateEnum::RUNNING,
                status: "Up".into(),
            });
        }
        docker
    }

    /// A running member of `image` holding `owner`'s data volume.
    fn add_holding(docker: &FakeDocker, image: &str, owner: &str) {
        let mut labels = member_labels(image, "cubbi-x", 2310, "127.0.0.1", "k", &[]);
        labels.insert(crate::local::pool::member::DATA_OWNER.into(), owner.into());
        docker.add(FakeContainer {
            name: MemberName::fresh(image).container_name(),
            labels,
            state: ContainerSummaryStateEnum::RUNNING,
            status: "Up".into(),
        });
    }

    fn names(docker: &FakeDocker) -> Vec<String> {
        let state = docker.state.lock().unwrap();
        state.containers.values().map(|c| c.name.clone()).collect()
    }

    #[tokio::test]
    async fn drain_removes_members_and_spares_claimed_ones() {
        let docker = with_members("base", 3);
        let record = crate::local::pool::ClaimRecord {
            container: String::new(),
            name: "mine".into(),
            owner: "alice".into(),
            created: 0,
            idle_stop_secs: None,
        };
        crate::local::pool::claim::claim(docker.as_ref(), "base", record)
            .await
            .unwrap()
            .unwrap();
        add_holding(&docker, "base", "bob");
        let ready = |rows: Vec<PoolRow>| rows.iter().map(|r| r.ready).sum::<u32>();
        let targets = PoolTargets::default();
        let alices = status(docker.as_ref(), &targets, "alice").await.unwrap();
        assert_eq!(ready(alices), 2, "bob's member is not alice's");
        let bobs = status(docker.as_ref(), &targets, "bob").await.unwrap();
        assert_eq!(ready(bobs), 3);
        assert_eq!(
            drain(docker.as_ref(), Some("goose"), "alice")
                .await
                .unwrap(),
            0
        );
        assert_eq!(drain(docker.as_ref(), None, "alice").await.unwrap(), 2);
        assert_eq!(drain(docker.as_ref(), None, "bob").await.unwrap(), 1);
        assert_eq!(names(&docker), vec!["cubbi-mine.booting".to_string()]);
    }

    #[tokio::test]
    async fn members_of_owners_no_longer_wanted_are_removed_and_no_others() {
        let docker = with_members("base", 1);
        for (image, owner) in [
            ("claude-code", "alice"),
            ("claude-code", "bob"),
            ("codex", "bob"),
        ] {
            add_holding(&docker, image, owner);
        }
        let keeps = |image: &str, owner: &str| (image, owner) != ("claude-code", "bob");
        let removed = drain_unwanted_owner_data(docker.as_ref(), keeps)
            .await
            .unwrap();
        assert_eq!(removed, 1);
        let left = names(&docker);
        assert_eq!(
            left.len(),
            3,
            "base's, alice's and bob's codex member stay: {left:?}"
        );
        assert!(left.iter().all(|name| name.starts_with("cubbi-pool.")));
    }
}
