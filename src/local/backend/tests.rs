//! The backend against an in-memory daemon ([`FakeDocker`]): a create undone at every step it
//! can fail, the retry on another port, and a session's state from what Docker reports.

use std::sync::Arc;
use std::time::Duration;

use bollard::models::ContainerSummaryStateEnum as Docker;

use super::fake_docker::{Failure, FakeContainer, FakeDocker};
use super::*;

struct Fixture {
    docker: Arc<FakeDocker>,
    backend: LocalBackend,
    lock: ports::LockLocation,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    fixture_with_pool(None)
}

fn fixture_with_pool(pool: Option<PoolSettings>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let lock = ports::LockLocation::User(dir.path().join("ports.lock"));
    let docker = Arc::new(FakeDocker::default());
    let options = LocalOptions {
        pool,
        ..test_options(dir.path(), "alice")
    };
    let backend = LocalBackend::with_api(docker.clone(), options);
    Fixture {
        docker,
        backend,
        lock,
        _dir: dir,
    }
}

/// Options for a backend on a fake engine whose files live in `dir`.
pub(crate) fn test_options(dir: &Path, owner: &str) -> LocalOptions {
    LocalOptions {
        owner: owner.into(),
        all_owners: false,
        index: None,
        ports: PortRange::default(),
        default_network: None,
        client_key: Arc::new(keys::generate("test").unwrap()),
        ssh_files: None,
        egress_store: crate::egress::store::EgressStore::new(dir.join("egress")),
        pool: None,
        port_lock: ports::LockLocation::User(dir.join("ports.lock")),
        lock_timeout: Duration::from_secs(5),
        engine_socket: None,
        ready_timeout: Duration::from_secs(1),
        extra_labels: HashMap::new(),
        projects: None,
        disk_limit: None,
        fluentd: None,
        langfuse: None,
        runtime_advice: Default::default(),
    }
}

fn spec() -> SessionSpec {
    serde_json::from_value(serde_json::json!({
        "name": "s1",
        "image": "cubbi-test",
        "runtime": "sysbox-runc",
        "ssh_bind": "127.0.0.1",
        "default_network": false,
        "memory": "512m",
    }))
    .unwrap()
}

/// The step and reason of a failed create.
fn failed_at(result: Result<Session, ApiError>) -> (String, String) {
    match result {
        Err(ApiError::Failed { step, reason, .. }) => (step, reason),
        other => panic!("expected a failed create, got {other:?}"),
    }
}

/// Nothing of a failed create is left: no container (which alone holds the name and the port),
/// every created one removed, and the host lock free.
fn assert_nothing_left(fixture: &Fixture) {
    let state = fixture.docker.state.lock().unwrap();
    assert!(state.containers.is_empty(), "a container was left behind");
    for (id, _) in &state.created {
        assert!(state.removed.contains(id), "container {id} was not removed");
    }
    ports::PortLock::acquire(&fixture.lock, Duration::from_secs(1)).expect("the lock is free");
}

#[tokio::test]
async fn a_failure_at_each_step_leaves_nothing() {
    // (the call that fails, its message, the step reported, containers it had created)
    let steps = [
        (
            "create_container",
            "no space left",
            CreateStep::CreatingContainer,
            0,
        ),
        ("upload_archive", "disk full", CreateStep::CopyingFiles, 1),
        (
            "start_container",
            "oci runtime error",
            CreateStep::Starting,
            1,
        ),
    ];
    for (call, message, expected, containers) in steps {
        let fixture = fixture();
        fixture.docker.fail(call, Failure::Message(message.into()));
        let (step, reason) = failed_at(fixture.backend.create(spec(), &crate::api::Quiet).await);
        assert_eq!(step, expected.to_string(), "{call}");
        assert!(reason.contains(message), "{call}: {reason}");
        assert_eq!(
            fixture.docker.state.lock().unwrap().created.len(),
            containers
        );
        assert_nothing_left(&fixture);
    }
}

#[tokio::test]
async fn a_session_never_answering_ssh_is_removed() {
    let fixture = fixture();
    let (step, _) = failed_at(fixture.backend.create(spec(), &crate::api::Quiet).await);
    assert_eq!(step, CreateStep::WaitingForSsh.to_string());
    assert_nothing_left(&fixture);
}

#[tokio::test]
async fn a_port_taken_before_start_is_retried_on_another() {
    let fixture = fixture();
    fixture.docker.fail("start_container", Failure::TakePort);
    fixture.docker.fail(
        "start_container",
        Failure::Message("second attempt fails".into()),
    );
    let (step, reason) = failed_at(fixture.backend.create(spec(), &crate::api::Quiet).await);
    // The second attempt's failure is the one reported: the first was retried.
    assert_eq!(step, CreateStep::Starting.to_string());
    assert!(reason.contains("second attempt fails"), "{reason}");
    let created = fixture.docker.state.lock().unwrap().created.clone();
    assert_eq!(created.len(), 2, "one retry: {created:?}");
    assert_ne!(created[0].1, created[1].1, "the retry used the taken port");
    assert_nothing_left(&fixture);
}

#[tokio::test]
async fn ports_taken_on_every_attempt_exhaust_the_create() {
    let fixture = fixture();
    for _ in 0..PORT_ATTEMPTS {
        fixture.docker.fail("start_container", Failure::TakePort);
    }
    let result = fixture.backend.create(spec(), &crate::api::Quiet).await;
    assert!(matches!(result, Err(ApiError::Exhausted(_))), "{result:?}");
    let created = fixture.docker.state.lock().unwrap().created.clone();
    assert_eq!(created.len(), PORT_ATTEMPTS as usize);
    let ports: BTreeSet<u16> = created.iter().map(|(_, port)| *port).collect();
    assert_eq!(ports.len(), created.len(), "a port was tried twice");
    assert_nothing_left(&fixture);
}

/// A session container as a create leaves it: `booted` once it was renamed ready.
fn session(name: &str, booted: bool, state: Docker, status: &str) -> FakeContainer {
    let labels = SessionLabels {
        name: name.into(),
        owner: "alice".into(),
        image: "cubbi-test".into(),
        ssh_port: 2300,
        ssh_bind: "127.0.0.1".into(),
        host_key: "ssh-ed25519 AAAA".into(),
        workspace: None,
        created: 0,
        command: vec!["bash".into()],
    };
    FakeContainer {
        name: if booted {
            labels::container_name(name)
        } else {
            labels::booting_container_name(name)
        },
        labels: labels.to_map(),
        state,
        status: status.into(),
    }
}

async fn state_of(fixture: &Fixture, name: &str) -> SessionState {
    fixture.backend.find(name).await.unwrap().state
}

#[tokio::test]
async fn session_state_follows_what_docker_reports() {
    let fixture = fixture();
    let cases = [
        (
            "up",
            true,
            Docker::RUNNING,
            "Up 5 minutes",
            SessionState::Ready,
        ),
        (
            "healthy",
            true,
            Docker::RUNNING,
            "Up 5 minutes (healthy)",
            SessionState::Ready,
        ),
        (
            "booting",
            false,
            Docker::RUNNING,
            "Up 2 seconds",
            SessionState::Starting,
        ),
        (
            "fresh",
            false,
            Docker::CREATED,
            "Created",
            SessionState::Creating,
        ),
        (
            "stopped",
            true,
            Docker::EXITED,
            "Exited (0) 1 minute ago",
            SessionState::Stopped,
        ),
        (
            "killed",
            true,
            Docker::EXITED,
            "Exited (137) 1 minute ago",
            SessionState::Exited,
        ),
    ];
    for (name, booted, state, status, _) in &cases {
        fixture.docker.add(session(name, *booted, *state, status));
    }
    for (name, _, _, status, expected) in &cases {
        assert_eq!(
            state_of(&fixture, name).await,
            *expected,
            "{name}: {status}"
        );
    }
}

#[tokio::test]
async fn an_unhealthy_session_is_init_failed_only_when_its_status_says_so() {
    let fixture = fixture();
    let unhealthy = "Up 5 minutes (unhealthy)";
    fixture
        .docker
        .add(session("sick", true, Docker::RUNNING, unhealthy));
    fixture.docker.state.lock().unwrap().status_output =
        "init-status=failed: apt\nproject-status=\n".into();
    let listed = fixture.backend.list().await.unwrap();
    assert_eq!(listed[0].state, SessionState::InitFailed);

    // A health check that timed out (the files report no failure) is not a failed init.
    fixture.docker.state.lock().unwrap().status_output =
        "init-status=done\nproject-status=\n".into();
    let listed = fixture.backend.list().await.unwrap();
    assert_eq!(listed[0].state, SessionState::Ready);
}

/// A fake endpoint whose images are the cubbi image `base`, with a pool of it (target 1) under
/// sysbox-runc on 127.0.0.1, and one ready member. Returns the member's id.
fn pool_fixture() -> (Fixture, String) {
    let fixture = fixture_with_image_pool(
        serde_json::json!({
            "name": "base", "description": "d", "version": "1",
            "command": ["bash"], "version_command": ["true"],
        }),
        pool::OwnerData::Filler,
    );
    let member = add_member(&fixture, "base", None);
    (fixture, member)
}

/// A fake endpoint whose images are the cubbi image `metadata` describes, with a pool of it
/// (target 1) under sysbox-runc on 127.0.0.1, and no member.
fn fixture_with_image_pool(metadata: serde_json::Value, owner_data: pool::OwnerData) -> Fixture {
    let image = metadata["name"].as_str().unwrap().to_string();
    let targets: pool::PoolTargets =
        serde_json::from_value(serde_json::json!({ image: 1 })).unwrap();
    let fixture = fixture_with_pool(Some(PoolSettings {
        targets,
        runtime: "sysbox-runc".into(),
        ssh_bind: "127.0.0.1".parse().unwrap(),
        owner_data,
    }));
    fixture.docker.state.lock().unwrap().image_labels = HashMap::from([(
        crate::images::METADATA_LABEL.to_string(),
        metadata.to_string(),
    )]);
    fixture
}

/// A ready member of `image` (holding `data_owner`'s data volume); returns its id.
fn add_member(fixture: &Fixture, image: &str, data_owner: Option<&str>) -> String {
    let mut labels = pool::member::member_labels(
        image,
        "cubbi-base",
        2399,
        "127.0.0.1",
        // A real host key, so a claim gets past pinning it to its parallel parts.
        &keys::public_openssh(keys::generate("member").unwrap().public_key()).unwrap(),
        &[],
    );
    if let Some(owner) = data_owner {
        labels.insert(pool::member::DATA_OWNER.into(), owner.into());
    }
    // Booted from the image as it is now (not one a fill replaces).
    labels.insert(
        pool::member::IMAGE_ID.into(),
        super::fake_docker::FAKE_IMAGE_ID.into(),
    );
    fixture.docker.add(FakeContainer {
        name: pool::MemberName::fresh(image).container_name(),
        labels,
        state: Docker::RUNNING,
        status: "Up".into(),
    })
}

/// An image that keeps its tools' config in the owner's data volume.
fn tool_image() -> serde_json::Value {
    serde_json::json!({
        "name": "tool", "description": "d", "version": "1",
        "command": ["bash"], "version_command": ["true"],
        "persistent_configs": [{
            "source": "/home/agent/.tool", "target": "/mnt/agent-data/tool/.tool",
            "type": "directory",
        }],
    })
}

#[tokio::test]
async fn a_tool_images_members_hold_the_filling_owners_data_volume() {
    let fixture = fixture_with_image_pool(tool_image(), pool::OwnerData::Filler);
    // The fake has no sshd: the member is made, then fails its boot and is removed.
    let filled = fixture.backend.fill_pool().await.unwrap();
    assert!(filled[0].failed.is_some(), "{filled:?}");
    let state = fixture.docker.state.lock().unwrap();
    let (_, body) = state
        .created_bodies
        .iter()
        .next()
        .expect("a member was made");
    let labels = body.labels.clone().unwrap();
    assert_eq!(labels[pool::member::DATA_OWNER], "alice");
    assert!(
        !labels.contains_key(labels::OWNER),
        "the member is nobody's session"
    );
    let volume = crate::local::naming::data_volume_name("alice");
    assert_eq!(
        body.host_config.as_ref().unwrap().binds,
        Some(vec![format!("{volume}:{DATA_VOLUME_PATH}")])
    );
    assert_eq!(state.volumes[&volume].labels[labels::OWNER], "alice");
}

#[tokio::test]
async fn a_services_fill_boots_a_tool_images_members_for_the_owners_who_use_it() {
    let demand = Arc::new(pool::PoolDemand::default());
    let fixture =
        fixture_with_image_pool(tool_image(), pool::OwnerData::Demanded(Arc::clone(&demand)));
    let created = |fixture: &Fixture| fixture.docker.state.lock().unwrap().created.len();
    // Nobody used it: no member for every owner, none for anyone.
    let filled = fixture.backend.fill_pool().await.unwrap();
    assert!(filled.is_empty(), "{filled:?}");
    assert_eq!(created(&fixture), 0);
    // Bob's member from before a restart stays (bob was not seen since).
    let bobs = add_member(&fixture, "tool", Some("bob"));
    // Alice's create of it (through a backend on another fake engine, so its cold boot is
    // not among this one's creates) notes her; the fill boots her member.
    let mut spec = pool_spec("sysbox-runc");
    spec.image = "tool".into();
    let alices =
        fixture_with_image_pool(tool_image(), pool::OwnerData::Demanded(Arc::clone(&demand)));
    let _ = alices.backend.create(spec, &crate::api::Quiet).await;
    assert_eq!(demand.owners("tool"), vec!["alice".to_string()]);
    let filled = fixture.backend.fill_pool().await.unwrap();
    assert_eq!(filled.len(), 1, "{filled:?}");
    assert_eq!(filled[0].holding_data_of.as_deref(), Some("alice"));
    let state = fixture.docker.state.lock().unwrap();
    let (_, body) = state.created_bodies.iter().next().expect("alice's member");
    assert_eq!(
        body.labels.as_ref().unwrap()[pool::member::DATA_OWNER],
        "alice"
    );
    assert!(state.containers.contains_key(&bobs), "bob's member stays");
}

#[tokio::test]
async fn a_tool_images_create_claims_only_a_member_holding_its_owners_data() {
    let fixture = fixture_with_image_pool(tool_image(), pool::OwnerData::Filler);
    let bobs = add_member(&fixture, "tool", Some("bob"));
    let unbound = add_member(&fixture, "tool", None);
    let mut spec = pool_spec("sysbox-runc");
    spec.image = "tool".into();
    // The fake has no sshd: whatever the create does, it fails at the end.
    let _ = fixture
        .backend
        .create(spec.clone(), &crate::api::Quiet)
        .await;
    {
        let state = fixture.docker.state.lock().unwrap();
        for member in [&bobs, &unbound] {
            assert!(!state.removed.contains(member), "{member} was claimed");
            assert!(
                state.containers[member]
                    .name
                    .starts_with(pool::member::PREFIX)
            );
        }
    }
    let alices = add_member(&fixture, "tool", Some("alice"));
    let _ = fixture.backend.create(spec, &crate::api::Quiet).await;
    let state = fixture.docker.state.lock().unwrap();
    assert!(
        state.removed.contains(&alices),
        "alice's member was claimed (and removed when the fake's sshd did not answer)"
    );
}

fn pool_spec(runtime: &str) -> SessionSpec {
    serde_json::from_value(serde_json::json!({
        "name": "s1",
        "image": "base",
        "runtime": runtime,
        "unsafe_runc": true,
        "ssh_bind": "127.0.0.1",
        "default_network": false,
    }))
    .unwrap()
}

fn claim_records(fixture: &Fixture) -> Vec<String> {
    let state = fixture.docker.state.lock().unwrap();
    state
        .volumes
        .values()
        .filter(|v| v.labels.contains_key(pool::record::CLAIM_OF))
        .map(|v| v.name.clone())
        .collect()
}

#[tokio::test]
async fn a_claim_whose_apply_fails_removes_the_member_and_its_record_then_goes_cold() {
    let (fixture, member) = pool_fixture();
    fixture.docker.fail(
        "update_container",
        Failure::Message("no memory cgroup".into()),
    );
    let result = fixture
        .backend
        .create(pool_spec("sysbox-runc"), &crate::api::Quiet)
        .await;
    // The cold create that follows cannot reach sshd in the fake: it fails and is undone too.
    let (step, _) = failed_at(result);
    assert_eq!(step, CreateStep::WaitingForSsh.to_string());
    let state = fixture.docker.state.lock().unwrap();
    assert!(
        state.removed.contains(&member),
        "the failed member is removed"
    );
    assert!(
        state.calls.iter().all(|call| !call.starts_with("update")),
        "the failed update changed nothing: {:?}",
        state.calls
    );
    drop(state);
    assert!(claim_records(&fixture).is_empty(), "its record is removed");
    assert_nothing_left(&fixture);
}

#[tokio::test]
async fn a_create_that_does_not_fit_leaves_the_pool_alone() {
    let (fixture, member) = pool_fixture();
    // Members run sysbox-runc; this create wants runc.
    let result = fixture
        .backend
        .create(pool_spec("runc"), &crate::api::Quiet)
        .await;
    assert!(result.is_err(), "the cold create fails at sshd in the fake");
    let state = fixture.docker.state.lock().unwrap();
    let still = state
        .containers
        .get(&member)
        .expect("the member is still there");
    assert!(
        still.name.starts_with(pool::member::PREFIX),
        "{}",
        still.name
    );
    drop(state);
    assert!(claim_records(&fixture).is_empty());
}

#[tokio::test]
async fn a_claimed_session_with_an_idle_limit_is_an_idle_stop_candidate() {
    let (fixture, member) = pool_fixture();
    // As a claim leaves it: renamed to the session's name, with a record carrying the limit.
    fixture
        .docker
        .state
        .lock()
        .unwrap()
        .containers
        .get_mut(&member)
        .unwrap()
        .name = "cubbi-s1".into();
    let record = pool::ClaimRecord {
        container: member.clone(),
        name: "s1".into(),
        owner: "alice".into(),
        created: 0,
        idle_stop_secs: Some(600),
    };
    fixture
        .docker
        .create_volume(VolumeCreateRequest {
            name: Some("cubbi-claim.x".into()),
            labels: Some(record.to_labels()),
            ..Default::default()
        })
        .await
        .unwrap();
    let candidates = fixture.backend.claimed_idle_candidates().await.unwrap();
    assert_eq!(candidates, vec![(member.clone(), "s1".to_string(), 600)]);
    // Another owner's backend does not see it.
    let (other, _) = pool_fixture();
    assert!(
        other
            .backend
            .claimed_idle_candidates()
            .await
            .unwrap()
            .is_empty()
    );
    // And it lists as alice's session made from the pool.
    let listed = fixture.backend.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].pool && listed[0].name == "s1" && listed[0].state == SessionState::Ready);
}

#[tokio::test]
async fn a_claim_sees_the_ready_name_by_its_exact_name_only() {
    let (fixture, _member) = pool_fixture();
    let add = |name: &str| {
        fixture.docker.add(FakeContainer {
            name: name.into(),
            labels: HashMap::new(),
            state: Docker::RUNNING,
            status: "Up".into(),
        })
    };
    assert!(!fixture.backend.ready_name_taken("s1").await);
    add("cubbi-s1.booting");
    add("cubbi-s10");
    assert!(
        !fixture.backend.ready_name_taken("s1").await,
        "a booting name or a longer name is not the ready name"
    );
    add("cubbi-s1");
    assert!(fixture.backend.ready_name_taken("s1").await);
}

#[tokio::test]
async fn a_claim_with_the_members_limits_updates_nothing_and_other_limits_are_set() {
    let defaults = validate::ContainerLimits::defaults().unwrap();
    // Claims a member booted with `memory` (the rest the defaults) for a create that asks for
    // no limits; returns how many `docker update`s the claim made.
    let updates_for_a_member_with = |memory: Option<i64>| async move {
        let (fixture, member) = pool_fixture();
        fixture.docker.state.lock().unwrap().host_configs.insert(
            member,
            bollard::models::HostConfig {
                memory,
                memory_swap: defaults.memory_swap,
                nano_cpus: defaults.nano_cpus,
                pids_limit: defaults.pids_limit,
                ..Default::default()
            },
        );
        // The fake has no sshd: the claim, then the cold create after it, fail past this.
        let _ = fixture
            .backend
            .create(pool_spec("sysbox-runc"), &crate::api::Quiet)
            .await;
        let state = fixture.docker.state.lock().unwrap();
        state
            .calls
            .iter()
            .filter(|call| call.starts_with("update"))
            .count()
    };
    // As `pool fill` boots members: nothing to update.
    assert_eq!(updates_for_a_member_with(defaults.memory).await, 0);
    // A member booted with other limits gets the create's.
    assert_eq!(updates_for_a_member_with(Some(1 << 30)).await, 1);
}
