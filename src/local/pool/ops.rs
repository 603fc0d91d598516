//! The pool operations that talk to Docker: reading the members, draining them, and the claim's
//! commit point, the rename that takes one member for one session (see "Warm pool" in
//! docs/architecture.md).

use std::collections::HashMap;

use bollard::models::ContainerSummary;

use super::inventory::{PoolRow, inventory};
use super::member::{MemberName, POOL};
use super::targets::PoolTargets;
use crate::local::docker_api::DockerApi;
use crate::local::labels;

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

/// Per image: ready members and the target (what `cubbi pool status` prints).
pub async fn status(
    docker_api: &dyn DockerApi,
    targets: &PoolTargets,
) -> Result<Vec<PoolRow>, PoolError> {
    Ok(inventory(targets, &labelled(docker_api).await?))
}

/// Removes every unclaimed member (of `image`, or of all images). Claimed members are
/// sessions and are left alone; a member claimed meanwhile is no longer found by its name.
pub async fn drain(docker_api: &dyn DockerApi, image: Option<&str>) -> Result<u32, PoolError> {
    let mut removed = 0;
    for container in labelled(docker_api).await? {
        let Some(member) = container
            .names
            .iter()
            .flatten()
            .find_map(|n| MemberName::parse(n))
        else {
            continue;
        };
        if image.is_some_and(|image| image != member.image) {
            continue;
        }
        // Addressed by name, not id: if a claim renamed it a moment ago, this is a 404 and the
        // new session survives.
        match docker_api.remove_container(&member.container_name()).await {
            Ok(()) => removed += 1,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(err) => return Err(docker("remove a pool member")(err)),
        }
    }
    Ok(removed)
}

/// The claim's commit point: renames one ready member of `image` to the booting name of
/// `session`, addressed by the member's own name. Docker renames atomically, so when two
/// processes race for one member the loser gets a 404 (the old name is gone) and tries the
/// next; `Ok(None)` when no member was left. Returns the container id taken.
pub async fn take_member(
    docker_api: &dyn DockerApi,
    image: &str,
    session: &str,
) -> Result<Option<String>, PoolError> {
    let rows = labelled(docker_api).await?;
    let ready = rows.iter().filter(|c| {
        c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
            && c.names
                .iter()
                .flatten()
                .filter_map(|n| MemberName::parse(n))
                .any(|m| m.image == image)
    });
    let booting = labels::booting_container_name(session);
    for container in ready {
        let (Some(id), Some(member)) = (
            container.id.clone(),
            container
                .names
                .iter()
                .flatten()
                .find_map(|n| MemberName::parse(n)),
        ) else {
            continue;
        };
        match docker_api
            .rename_container(&member.container_name(), &booting)
            .await
        {
            Ok(()) => return Ok(Some(id)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => continue,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => return Err(PoolError::NameTaken(booting)),
            Err(err) => return Err(docker("claim a pool member")(err)),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_claims_never_share_a_member() {
        let docker = with_members("base", 10);
        let claims = (0..20).map(|i| {
            let docker = Arc::clone(&docker);
            tokio::spawn(async move {
                take_member(docker.as_ref(), "base", &format!("s{i}"))
                    .await
                    .unwrap()
            })
        });
        let taken: Vec<String> = futures_util::future::join_all(claims)
            .await
            .into_iter()
            .filter_map(|joined| joined.unwrap())
            .collect();
        assert_eq!(
            taken.len(),
            10,
            "every member claimed once, the rest go cold"
        );
        assert_eq!(taken.iter().collect::<BTreeSet<_>>().len(), 10);
        let rows = status(docker.as_ref(), &PoolTargets::default())
            .await
            .unwrap();
        assert!(rows.iter().all(|row| row.ready == 0), "{rows:?}");
        let names: BTreeSet<String> = docker
            .state
            .lock()
            .unwrap()
            .containers
            .values()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(names.len(), 10);
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("cubbi-s") && n.ends_with(".booting"))
        );
    }

    #[tokio::test]
    async fn a_taken_session_name_refuses_without_touching_the_member() {
        let docker = with_members("base", 1);
        docker.add(FakeContainer {
            name: "cubbi-demo.booting".into(),
            labels: HashMap::new(),
            state: ContainerSummaryStateEnum::RUNNING,
            status: "Up".into(),
        });
        let err = take_member(docker.as_ref(), "base", "demo")
            .await
            .unwrap_err();
        assert!(matches!(err, PoolError::NameTaken(_)), "{err}");
        let rows = status(docker.as_ref(), &PoolTargets::default())
            .await
            .unwrap();
        assert_eq!(rows[0].ready, 1, "the member is still a member");
        assert_eq!(
            take_member(docker.as_ref(), "goose", "x").await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn drain_removes_members_and_spares_claimed_ones() {
        let docker = with_members("base", 3);
        take_member(docker.as_ref(), "base", "mine")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(drain(docker.as_ref(), Some("goose")).await.unwrap(), 0);
        assert_eq!(drain(docker.as_ref(), None).await.unwrap(), 2);
        let left: Vec<String> = docker
            .state
            .lock()
            .unwrap()
            .containers
            .values()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(left, vec!["cubbi-mine.booting".to_string()]);
    }
}
