//! The claim over the in-memory Docker: each step's crash leaves a member or a session, racing
//! claims never share a member, and a failed rename undoes its record.

use std::collections::BTreeSet;
use std::sync::Arc;

use bollard::models::{ContainerSummaryStateEnum, VolumeCreateRequest};

use super::claim::{
    STALE_RECORD_SECS, Wanted, claim, claim_wanted, claimed_sessions, sweep_records,
};
use super::member::{MemberName, member_labels};
use super::ops::{self, PoolError};
use super::record::ClaimRecord;
use super::targets::PoolTargets;
use crate::local::backend::fake_docker::{Failure, FakeContainer, FakeDocker};
use crate::local::docker_api::DockerApi;

const NOW: i64 = 1_800_000_000;

fn with_members(count: usize) -> Arc<FakeDocker> {
    let docker = Arc::new(FakeDocker::default());
    for i in 0..count {
        docker.add(FakeContainer {
            name: MemberName::fresh("base").container_name(),
            labels: member_labels("base", "cubbi-base", 2300 + i as u16, "127.0.0.1", "k", &[]),
            state: ContainerSummaryStateEnum::RUNNING,
            status: "Up".into(),
        });
    }
    docker
}

fn record(name: &str) -> ClaimRecord {
    ClaimRecord {
        container: String::new(),
        name: name.into(),
        owner: "alice".into(),
        created: NOW,
        idle_stop_secs: None,
    }
}

async fn ready(docker: &FakeDocker) -> u32 {
    let rows = ops::status(docker, &PoolTargets::default(), "alice")
        .await
        .unwrap();
    rows.iter().map(|row| row.ready).sum()
}

fn names(docker: &FakeDocker) -> BTreeSet<String> {
    let state = docker.state.lock().unwrap();
    state.containers.values().map(|c| c.name.clone()).collect()
}

#[tokio::test]
async fn a_claim_makes_one_member_a_session_of_its_owner() {
    let docker = with_members(2);
    let claimed = claim(docker.as_ref(), "base", record("demo"))
        .await
        .unwrap()
        .unwrap();
    assert!(names(&docker).contains("cubbi-demo.booting"));
    let sessions = claimed_sessions(docker.as_ref()).await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].0, claimed.container);
    assert_eq!(sessions[0].1.owner, "alice");
    assert_eq!(sessions[0].1.name, "demo");
    assert_eq!(ready(&docker).await, 1);
    // The same name again: refused, and the other member stays a member.
    let again = claim(docker.as_ref(), "base", record("demo"))
        .await
        .unwrap_err();
    assert!(matches!(again, PoolError::NameTaken(_)), "{again}");
    assert_eq!(ready(&docker).await, 1);
}

#[tokio::test]
async fn a_crash_after_the_record_leaves_a_member_and_a_record_the_sweep_removes() {
    let docker = with_members(1);
    let (id, member) = {
        let state = docker.state.lock().unwrap();
        let (id, container) = state.containers.iter().next().unwrap();
        (id.clone(), container.name.clone())
    };
    let mut stale = record("demo");
    stale.container = id;
    docker
        .create_volume(VolumeCreateRequest {
            name: Some(ClaimRecord::volume_name(&member)),
            labels: Some(stale.to_labels()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ready(&docker).await, 0, "a member, held until the sweep");
    assert!(
        claim(docker.as_ref(), "base", record("y"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        claimed_sessions(docker.as_ref()).await.unwrap().is_empty(),
        "not a session"
    );
    assert_eq!(
        sweep_records(docker.as_ref(), NOW + 10).await.unwrap(),
        0,
        "may be in flight"
    );
    let later = NOW + STALE_RECORD_SECS + 1;
    assert_eq!(sweep_records(docker.as_ref(), later).await.unwrap(), 1);
    assert!(docker.state.lock().unwrap().volumes.is_empty());
    // The member is claimable as before.
    assert!(
        claim(docker.as_ref(), "base", record("x"))
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn a_crash_after_the_rename_leaves_a_session_that_drain_and_sweep_keep() {
    let docker = with_members(1);
    claim(docker.as_ref(), "base", record("demo"))
        .await
        .unwrap()
        .unwrap();
    let later = NOW + STALE_RECORD_SECS + 1;
    assert_eq!(sweep_records(docker.as_ref(), later).await.unwrap(), 0);
    assert_eq!(ops::drain(docker.as_ref(), None, "alice").await.unwrap(), 0);
    assert_eq!(claimed_sessions(docker.as_ref()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_failed_rename_removes_its_record_and_keeps_the_member() {
    let docker = with_members(1);
    docker.fail("rename_container", Failure::Message("daemon busy".into()));
    let err = claim(docker.as_ref(), "base", record("demo"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("daemon busy"), "{err}");
    assert!(docker.state.lock().unwrap().volumes.is_empty());
    assert_eq!(ready(&docker).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_racing_claims_on_ten_members_take_each_once() {
    let docker = with_members(10);
    let claims = (0..20).map(|i| {
        let docker = Arc::clone(&docker);
        tokio::spawn(async move { claim(docker.as_ref(), "base", record(&format!("s{i}"))).await })
    });
    let taken: Vec<ClaimRecord> = futures_util::future::join_all(claims)
        .await
        .into_iter()
        .filter_map(|joined| joined.unwrap().unwrap())
        .collect();
    assert_eq!(taken.len(), 10);
    let members: BTreeSet<&String> = taken.iter().map(|r| &r.container).collect();
    assert_eq!(members.len(), 10, "no member claimed twice");
    assert_eq!(claimed_sessions(docker.as_ref()).await.unwrap().len(), 10);
    assert_eq!(
        docker.state.lock().unwrap().volumes.len(),
        10,
        "no stray record"
    );
    assert_eq!(ready(&docker).await, 0);
}

#[tokio::test]
async fn a_member_of_an_older_build_of_the_image_is_never_claimed() {
    let docker = Arc::new(FakeDocker::default());
    let mut labels = member_labels("base", "cubbi-base", 2300, "127.0.0.1", "k", &[]);
    labels.insert(super::member::IMAGE_ID.into(), "sha256:old".into());
    docker.add(FakeContainer {
        name: MemberName::fresh("base").container_name(),
        labels,
        state: ContainerSummaryStateEnum::RUNNING,
        status: "Up".into(),
    });
    let built_from = |id| Wanted {
        image: "base",
        image_id: Some(id),
        data_owner: None,
    };
    let newer = claim_wanted(docker.as_ref(), built_from("sha256:new"), record("demo"))
        .await
        .unwrap();
    assert_eq!(newer, None, "the rebuilt image's create goes cold");
    let same = claim_wanted(docker.as_ref(), built_from("sha256:old"), record("demo"))
        .await
        .unwrap();
    assert!(
        same.is_some(),
        "a create of the build the member runs claims it"
    );
}

/// A member of `image` holding `data_owner`'s data volume.
fn add_holding(docker: &FakeDocker, image: &str, data_owner: Option<&str>) {
    let mut labels = member_labels(image, "cubbi-x", 2300, "127.0.0.1", "k", &[]);
    if let Some(owner) = data_owner {
        labels.insert(super::member::DATA_OWNER.into(), owner.into());
    }
    docker.add(FakeContainer {
        name: MemberName::fresh(image).container_name(),
        labels,
        state: ContainerSummaryStateEnum::RUNNING,
        status: "Up".into(),
    });
}

#[tokio::test]
async fn a_member_holding_an_owners_data_serves_that_owner_only() {
    let docker = Arc::new(FakeDocker::default());
    add_holding(&docker, "claude-code", Some("bob"));
    let for_owner = |owner| Wanted {
        image: "claude-code",
        image_id: None,
        data_owner: owner,
    };
    for wanted in [
        for_owner(Some("alice")),
        for_owner(Some("bo")),
        for_owner(None),
    ] {
        let taken = claim_wanted(docker.as_ref(), wanted, record("demo"))
            .await
            .unwrap();
        assert_eq!(taken, None, "{wanted:?} takes bob's member");
    }
    assert!(docker.state.lock().unwrap().volumes.is_empty(), "no record");
    let bobs = claim_wanted(docker.as_ref(), for_owner(Some("bob")), record("demo"))
        .await
        .unwrap();
    assert!(bobs.is_some(), "bob's create claims it");

    // And one holding nobody's data is no owner's data-holding member.
    add_holding(&docker, "claude-code", None);
    let taken = claim_wanted(docker.as_ref(), for_owner(Some("alice")), record("other"))
        .await
        .unwrap();
    assert_eq!(
        taken, None,
        "a member without the data volume serves no such create"
    );
}
