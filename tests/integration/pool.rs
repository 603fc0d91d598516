//! The warm pool against the run's real dockerd. Members here are plain `debian:bookworm`
//! containers (`sleep infinity`) carrying member names and labels: these tests prove the claim's
//! commit (record volume, then Docker's rename by name as the lock) and `cubbi pool status|
//! drain` on real Docker. Booted system-container members and the conformance of a claimed
//! session need `pool fill` and the claim in `create`, which are not built yet.

use std::collections::BTreeSet;

use bollard::models::ContainerCreateBody;
use cubbi::local::pool::claim::{claim, claimed_sessions};
use cubbi::local::pool::member::{MemberName, member_labels};
use cubbi::local::pool::{ClaimRecord, PoolTargets};
use libtest_mimic::{Failed, Trial};

use crate::support::base_image::BASE_IMAGE;
use crate::support::{DockerScope, TestHome, docker_test};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        twenty_racing_claims_on_ten_members_take_each_once,
        pool_status_and_drain_read_real_members,
    ]
}

/// A pool image name of this test alone, so parallel tests never drain or claim each other's.
fn image_of(scope: &DockerScope) -> String {
    scope.id.clone()
}

/// Starts `count` members of `image` (a real container each, labelled for the scope's cleanup).
async fn start_members(scope: &DockerScope, image: &str, count: u16) -> Result<(), Failed> {
    for i in 0..count {
        let mut labels = member_labels(image, BASE_IMAGE, 2300 + i, "127.0.0.1", "k", &[]);
        labels.extend(scope.labels());
        let name = MemberName::fresh(image).container_name();
        scope
            .docker
            .create_container(
                Some(
                    bollard::query_parameters::CreateContainerOptionsBuilder::new()
                        .name(&name)
                        .build(),
                ),
                ContainerCreateBody {
                    image: Some(BASE_IMAGE.into()),
                    cmd: Some(vec!["sleep".into(), "infinity".into()]),
                    labels: Some(labels),
                    ..Default::default()
                },
            )
            .await?;
        scope
            .docker
            .start_container(
                &name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await?;
    }
    Ok(())
}

fn twenty_racing_claims_on_ten_members_take_each_once() -> Result<(), Failed> {
    docker_test("pool-race", |scope| async move {
        let image = image_of(&scope);
        start_members(&scope, &image, 10).await?;
        let claims = (0..20).map(|i| {
            let (docker, image) = (scope.docker.clone(), image.clone());
            let record = ClaimRecord {
                container: String::new(),
                name: format!("pool-race-{}-{i}", std::process::id()),
                owner: scope.id.clone(),
                created: 0,
                idle_stop_secs: None,
            };
            tokio::spawn(async move { claim(&docker, &image, record).await })
        });
        let outcomes = futures_util::future::join_all(claims).await;
        let mut taken = Vec::new();
        for outcome in outcomes {
            if let Some(record) = outcome?? {
                taken.push(record);
            }
        }
        let sessions = claimed_sessions(&scope.docker).await?;
        // The records are volumes without the scope's label: removed here, before asserting.
        let records = scope
            .docker
            .list_volumes(Some(
                bollard::query_parameters::ListVolumesOptionsBuilder::new()
                    .filters(&std::collections::HashMap::from([(
                        "label",
                        vec![format!("io.cubbi.owner={}", scope.id)],
                    )]))
                    .build(),
            ))
            .await?
            .volumes
            .unwrap_or_default();
        for volume in &records {
            let _ = scope
                .docker
                .remove_volume(
                    &volume.name,
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await;
        }
        assert_eq!(
            records.len(),
            10,
            "one record per claim, none left by the losers"
        );
        assert_eq!(taken.len(), 10, "each member claimed once, ten go cold");
        let members: BTreeSet<&String> = taken.iter().map(|r| &r.container).collect();
        assert_eq!(members.len(), 10, "no member claimed twice");
        let ours: Vec<_> = sessions
            .iter()
            .filter(|(_, labels)| labels.owner == scope.id)
            .collect();
        assert_eq!(
            ours.len(),
            10,
            "every claim reads back as a session of its owner"
        );
        for (id, labels) in ours {
            let inspected = scope.docker.inspect_container(id, None).await?;
            let name = inspected.name.unwrap_or_default();
            assert_eq!(name, format!("/cubbi-{}.booting", labels.name));
        }
        Ok(())
    })
}

fn pool_status_and_drain_read_real_members() -> Result<(), Failed> {
    docker_test("pool-cli", |scope| async move {
        let image = image_of(&scope);
        start_members(&scope, &image, 1).await?;
        let home = TestHome::new();
        scope
            .cubbi(&home)
            .args(["config", "set", &format!("pool.{image}"), "2"])
            .run()
            .success();
        let shown = scope
            .cubbi(&home)
            .args(["--json", "pool", "status"])
            .run()
            .success();
        let rows: serde_json::Value = serde_json::from_str(&shown.stdout())?;
        let row = rows
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["image"] == image.as_str()))
            .ok_or_else(|| format!("no row for {image} in {rows}"))?;
        assert_eq!(row["ready"], 1, "{row}");
        assert_eq!(row["target"], 2, "{row}");
        let refused = scope
            .cubbi(&home)
            .args(["config", "set", &format!("pool.{image}"), "many"])
            .run();
        assert!(!refused.output.status.success(), "a non-number is refused");
        let drained = scope
            .cubbi(&home)
            .args(["--json", "pool", "drain", "--image", &image])
            .run()
            .success();
        let drained: serde_json::Value = serde_json::from_str(&drained.stdout())?;
        assert_eq!(drained["removed"], 1, "{drained}");
        let targets = PoolTargets::default();
        let rows = cubbi::local::pool::ops::status(&scope.docker, &targets).await?;
        assert!(rows.iter().all(|r| r.image != image), "{rows:?}");
        Ok(())
    })
}
