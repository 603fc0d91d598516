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
    let dir = tempfile::tempdir().unwrap();
    let lock = ports::LockLocation::User(dir.path().join("ports.lock"));
    let docker = Arc::new(FakeDocker::default());
    let options = LocalOptions {
        owner: "alice".into(),
        all_owners: false,
        index: None,
        ports: PortRange::default(),
        default_network: None,
        client_key: Arc::new(keys::generate("test").unwrap()),
        ssh_files: None,
        egress_store: crate::egress::store::EgressStore::new(dir.path().join("egress")),
        port_lock: lock.clone(),
        lock_timeout: Duration::from_secs(5),
        engine_socket: None,
        ready_timeout: Duration::from_secs(1),
        extra_labels: HashMap::new(),
        projects: None,
        disk_limit: None,
        fluentd: None,
        langfuse: None,
    };
    let backend = LocalBackend::with_api(docker.clone(), options);
    Fixture {
        docker,
        backend,
        lock,
        _dir: dir,
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
