//! The Swarm backend against an in-memory manager: what a create refuses makes nothing, and
//! what a failed create made (its secret, its service) is removed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error;
use bollard::models::{
    EngineDescription, NetworkCreateRequest, Node, NodeDescription, NodeSpec,
    NodeSpecAvailabilityEnum, NodeState, NodeStatus, ObjectVersion, ResourceObject, SecretSpec,
    Service, ServiceSpec, Task, TaskState, TaskStatus,
};
use bollard::query_parameters::LogsOptions;
use futures_util::stream::BoxStream;

use super::api::ManagerApi;
use super::backend::{SwarmBackend, SwarmOptions};
use crate::api::{ApiError, Backend, ErrorCode, Quiet, SessionSpec};
use crate::config::PortRange;
use crate::local::backend::LocalBackend;
use crate::local::backend::fake_docker::FakeDocker;
use crate::ssh::keys;

#[derive(Default)]
struct Manager {
    nodes: Vec<Node>,
    services: Vec<Service>,
    secrets: Vec<String>,
    networks: Vec<String>,
    refuse_services: bool,
    /// Every service spec ever created, removed ones too.
    created: Vec<ServiceSpec>,
    /// The state every task reports, with its error.
    task: Option<(TaskState, String)>,
}

#[derive(Default)]
struct FakeManager(Mutex<Manager>);

fn server_error(status_code: u16, message: &str) -> Error {
    Error::DockerResponseServerError {
        status_code,
        message: message.to_string(),
    }
}

#[async_trait]
impl ManagerApi for FakeManager {
    async fn nodes(&self) -> Result<Vec<Node>, Error> {
        Ok(self.0.lock().unwrap().nodes.clone())
    }
    async fn services(&self, labels: &[String]) -> Result<Vec<Service>, Error> {
        let state = self.0.lock().unwrap();
        Ok(state
            .services
            .iter()
            .filter(|service| {
                let have = service.spec.as_ref().and_then(|s| s.labels.clone());
                labels.iter().all(|label| {
                    let (key, value) = label.split_once('=').unwrap();
                    have.as_ref().and_then(|h| h.get(key)).map(String::as_str) == Some(value)
                })
            })
            .cloned()
            .collect())
    }
    async fn tasks_of(&self, ids: &[String]) -> Result<Vec<Task>, Error> {
        let state = self.0.lock().unwrap();
        let (task_state, err) = state
            .task
            .clone()
            .unwrap_or((TaskState::RUNNING, String::new()));
        Ok(ids
            .iter()
            .map(|id| Task {
                service_id: Some(id.clone()),
                version: Some(ObjectVersion { index: Some(1) }),
                status: Some(TaskStatus {
                    state: Some(task_state),
                    err: Some(err.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect())
    }
    async fn create_secret(&self, spec: SecretSpec) -> Result<String, Error> {
        let name = spec.name.unwrap();
        self.0.lock().unwrap().secrets.push(name.clone());
        Ok(format!("id-{name}"))
    }
    async fn delete_secret(&self, id_or_name: &str) -> Result<(), Error> {
        let mut state = self.0.lock().unwrap();
        let before = state.secrets.len();
        state.secrets.retain(|s| s != id_or_name);
        if state.secrets.len() == before {
            return Err(server_error(404, "no such secret"));
        }
        Ok(())
    }
    async fn create_service(&self, spec: ServiceSpec) -> Result<String, Error> {
        let mut state = self.0.lock().unwrap();
        if state.refuse_services {
            return Err(server_error(500, "the manager lost its quorum"));
        }
        state.created.push(spec.clone());
        let id = format!("svc{}", state.created.len());
        state.services.push(Service {
            id: Some(id.clone()),
            spec: Some(spec),
            ..Default::default()
        });
        Ok(id)
    }
    async fn delete_service(&self, id_or_name: &str) -> Result<(), Error> {
        self.0
            .lock()
            .unwrap()
            .services
            .retain(|s| s.id.as_deref() != Some(id_or_name));
        Ok(())
    }
    async fn has_network(&self, name: &str) -> Result<bool, Error> {
        Ok(self.0.lock().unwrap().networks.iter().any(|n| n == name))
    }
    async fn create_network(&self, request: NetworkCreateRequest) -> Result<(), Error> {
        self.0.lock().unwrap().networks.push(request.name);
        Ok(())
    }
    fn service_logs(
        &self,
        _id: &str,
        _options: LogsOptions,
    ) -> BoxStream<'static, Result<LogOutput, Error>> {
        Box::pin(futures_util::stream::empty())
    }
}

fn node(id: &str, runtime: &str) -> Node {
    Node {
        id: Some(id.into()),
        spec: Some(NodeSpec {
            availability: Some(NodeSpecAvailabilityEnum::ACTIVE),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: Some(NodeState::READY),
            // Nothing listens here, so a create that gets as far as sshd fails fast.
            addr: Some("127.0.0.1".into()),
            ..Default::default()
        }),
        description: Some(NodeDescription {
            hostname: Some(format!("host-{id}")),
            resources: Some(ResourceObject {
                memory_bytes: Some(8 << 30),
                ..Default::default()
            }),
            engine: Some(EngineDescription {
                labels: Some(HashMap::from([(
                    super::service_spec::RUNTIME_LABEL.to_string(),
                    runtime.to_string(),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Fixture {
    manager: Arc<FakeManager>,
    backend: SwarmBackend,
    _dir: tempfile::TempDir,
}

fn fixture(nodes: Vec<Node>) -> Fixture {
    let manager = Arc::new(FakeManager::default());
    manager.0.lock().unwrap().nodes = nodes;
    fixture_of("serve:alice", manager)
}

/// `owner`'s backend on `manager` (which other owners' backends may share).
fn fixture_of(owner: &str, manager: Arc<FakeManager>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let options = crate::local::backend::tests::test_options(dir.path(), owner);
    let client_key = Arc::clone(&options.client_key);
    let planner = LocalBackend::with_api(Arc::new(FakeDocker::default()), options);
    let backend = SwarmBackend::new(
        manager.clone(),
        planner,
        SwarmOptions {
            owner: owner.into(),
            all_owners: false,
            ports: PortRange::default(),
            client_key,
            ready_timeout: Duration::from_millis(600),
            placement: Default::default(),
            cache: Default::default(),
        },
    );
    Fixture {
        manager,
        backend,
        _dir: dir,
    }
}

fn spec(name: &str) -> SessionSpec {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "image": "cubbi-test",
        "runtime": "sysbox-runc",
        "ssh_bind": "127.0.0.1",
        "memory": "512m",
    }))
    .unwrap()
}

fn assert_nothing_left(fixture: &Fixture) {
    let state = fixture.manager.0.lock().unwrap();
    assert!(state.services.is_empty(), "services left");
    assert!(
        state.secrets.is_empty(),
        "secrets left: {:?}",
        state.secrets
    );
}

#[tokio::test]
async fn no_node_of_the_runtime_is_a_503_naming_each_node_and_makes_nothing() {
    let fixture = fixture(vec![node("a", "runc"), node("b", "runc")]);
    let refused = fixture
        .backend
        .create(spec("s1"), &Quiet)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::Exhausted);
    let text = refused.to_string();
    assert!(text.contains("host-a") && text.contains("host-b"), "{text}");
    assert!(text.contains("runs runc, not sysbox-runc"), "{text}");
    assert_nothing_left(&fixture);
}

#[tokio::test]
async fn a_refused_service_takes_its_secret_with_it() {
    let fixture = fixture(vec![node("a", "sysbox-runc")]);
    fixture.manager.0.lock().unwrap().refuse_services = true;
    let refused = fixture
        .backend
        .create(spec("s1"), &Quiet)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::Unavailable, "{refused}");
    assert_nothing_left(&fixture);
}

#[tokio::test]
async fn a_rejected_task_fails_the_create_with_swarms_reason_and_leaves_nothing() {
    let fixture = fixture(vec![node("a", "sysbox-runc")]);
    fixture.manager.0.lock().unwrap().task = Some((
        TaskState::REJECTED,
        "invalid mount config\u{1b}[31m".to_string(),
    ));
    let failed = fixture.backend.create(spec("s1"), &Quiet).await;
    match failed {
        Err(ApiError::Failed { step, reason, .. }) => {
            assert_eq!(
                step,
                crate::api::CreateStep::Starting.to_string(),
                "{reason}"
            );
            assert!(reason.contains("invalid mount config"), "{reason}");
            assert!(
                !reason.contains('\u{1b}'),
                "a server's escape reached the client"
            );
        }
        other => panic!("expected a failed create, got {other:?}"),
    }
    assert_nothing_left(&fixture);
}

#[tokio::test]
async fn a_task_that_never_runs_times_out_and_leaves_nothing() {
    let fixture = fixture(vec![node("a", "sysbox-runc")]);
    fixture.manager.0.lock().unwrap().task = Some((
        TaskState::PENDING,
        "no suitable node (host-mode port already in use on 1 node)".to_string(),
    ));
    let failed = fixture.backend.create(spec("s1"), &Quiet).await;
    let Err(ApiError::Failed { reason, .. }) = failed else {
        panic!("expected a failed create, got {failed:?}");
    };
    assert!(reason.contains("did not start"), "{reason}");
    assert!(reason.contains("host-mode port"), "{reason}");
    assert_nothing_left(&fixture);
}

#[tokio::test]
async fn a_taken_name_is_a_conflict_and_the_owner_gets_an_overlay_once() {
    let fixture = fixture(vec![node("a", "sysbox-runc")]);
    fixture.make_session("s1").await;
    let refused = fixture
        .backend
        .create(spec("s1"), &Quiet)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::Conflict, "{refused}");
    assert!(fixture.manager.0.lock().unwrap().secrets.is_empty());
    // A create that gets as far as placement makes the owner's overlay network, once (these
    // fail at their task, fast).
    fixture.manager.0.lock().unwrap().task = Some((TaskState::REJECTED, "no".to_string()));
    let _ = fixture.backend.create(spec("s2"), &Quiet).await;
    let _ = fixture.backend.create(spec("s3"), &Quiet).await;
    let networks = fixture.manager.0.lock().unwrap().networks.clone();
    assert_eq!(networks.len(), 1, "{networks:?}");
    assert!(networks[0].starts_with("cubbi-servealice"), "{networks:?}");
}

#[tokio::test]
async fn a_session_on_a_drained_node_reads_stopped_and_says_why() {
    let fixture = fixture(vec![node("a", "sysbox-runc")]);
    fixture.make_session("s1").await;
    // Its task runs, but nothing answers SSH at its address: not ready yet.
    let session = fixture.backend.get("s1").await.unwrap();
    assert_eq!(session.state, crate::api::SessionState::Starting);
    fixture.manager.0.lock().unwrap().nodes[0]
        .spec
        .as_mut()
        .unwrap()
        .availability = Some(NodeSpecAvailabilityEnum::DRAIN);
    // Reads are shared for a second: the drain shows once that read is stale.
    let cached = fixture.backend.get("s1").await.unwrap();
    assert_eq!(cached.state, crate::api::SessionState::Starting);
    tokio::time::sleep(super::SessionsCache::FRESH + Duration::from_millis(50)).await;
    let session = fixture.backend.get("s1").await.unwrap();
    assert_eq!(session.state, crate::api::SessionState::Stopped);
    let Err(refused) = fixture.backend.exec("s1", vec!["true".into()]).await else {
        panic!("exec on a drained node's session");
    };
    let text = refused.to_string();
    assert_eq!(refused.code(), ErrorCode::Conflict, "{text}");
    assert!(text.contains("drained"), "{text}");
    assert!(text.contains("--availability active host-a"), "{text}");
}

#[tokio::test]
async fn another_owners_sessions_count_for_placement() {
    let alice = fixture(vec![node("a", "sysbox-runc"), node("b", "sysbox-runc")]);
    alice.make_session("s1").await;
    let bob = fixture_of("serve:bob", alice.manager.clone());
    bob.manager.0.lock().unwrap().task = Some((TaskState::REJECTED, "no".to_string()));
    let _ = bob.backend.create(spec("s2"), &Quiet).await;
    let created = bob.manager.0.lock().unwrap().created.clone();
    let constraints = created
        .last()
        .and_then(|spec| spec.task_template.as_ref())
        .and_then(|task| task.placement.as_ref())
        .and_then(|placement| placement.constraints.clone())
        .unwrap_or_default();
    assert!(
        constraints.contains(&"node.id==b".to_string()),
        "bob's session went beside alice's: {constraints:?}"
    );
    // Bob sees only his own sessions.
    assert!(bob.backend.list().await.unwrap().is_empty());
    assert!(matches!(
        bob.backend.get("s1").await,
        Err(ApiError::NotFound(_))
    ));
}

impl Fixture {
    /// A session as a create makes it, on node `a`, without booting anything.
    async fn make_session(&self, name: &str) {
        let plan = self.backend_plan(name).await;
        let placed = super::placement::Placed {
            node: "a".into(),
            address: "127.0.0.1".into(),
            port: 2300,
        };
        let names = super::service_spec::ServiceNames::new(name, "0000");
        let record = super::service_spec::session_labels(&plan, &placed, 1);
        let service = super::service_spec::service_spec(
            &plan,
            &placed,
            &names,
            "secret-id",
            &record,
            "sysbox-runc",
        );
        self.manager.create_service(service).await.unwrap();
    }

    async fn backend_plan(&self, name: &str) -> crate::local::backend::ServicePlan {
        self.backend
            .planner()
            .plan_service(&spec(name))
            .await
            .unwrap()
    }
}

#[test]
fn the_service_carries_no_secret_and_stays_on_its_node() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fixture = fixture(vec![node("a", "sysbox-runc")]);
    let plan = runtime.block_on(fixture.backend_plan("s1"));
    let placed = super::placement::Placed {
        node: "node-a".into(),
        address: "10.0.0.5".into(),
        port: 2345,
    };
    let names = super::service_spec::ServiceNames::new("s1", "abcd");
    let labels = super::service_spec::session_labels(&plan, &placed, 1);
    let service =
        super::service_spec::service_spec(&plan, &placed, &names, "sid", &labels, "sysbox-runc");
    let json = serde_json::to_string(&service).unwrap();
    let private = keys::private_openssh(&plan.host_key).unwrap();
    let private_body = private.lines().nth(1).unwrap();
    assert!(
        !json.contains(private_body),
        "the host key is in the service spec"
    );
    let container = service
        .task_template
        .as_ref()
        .unwrap()
        .container_spec
        .as_ref()
        .unwrap();
    assert!(
        container.env.is_none(),
        "env in the spec: {:?}",
        container.env
    );
    let secret = &container.secrets.as_ref().unwrap()[0];
    assert_eq!(secret.file.as_ref().unwrap().mode, Some(0o400));
    assert_eq!(
        container.capability_add, None,
        "Sysbox needs no capabilities"
    );
    let constraints = service
        .task_template
        .as_ref()
        .unwrap()
        .placement
        .as_ref()
        .unwrap()
        .constraints
        .clone()
        .unwrap();
    assert!(
        constraints.contains(&"node.id==node-a".to_string()),
        "{constraints:?}"
    );
    assert!(
        constraints.contains(&"engine.labels.io.cubbi.runtime==sysbox-runc".to_string()),
        "{constraints:?}"
    );
    let port = &service
        .endpoint_spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()[0];
    assert_eq!(port.published_port, Some(2345));
    assert_eq!(
        port.publish_mode,
        Some(bollard::models::EndpointPortConfigPublishModeEnum::HOST)
    );
    // The secret holds the key, and the record says where the session is.
    let secret_spec = super::service_spec::secret_spec(&plan, &names);
    assert!(secret_spec.data.is_some());
    let record = service.labels.unwrap();
    assert_eq!(
        record.get("io.cubbi.ssh-bind").map(String::as_str),
        Some("10.0.0.5")
    );
    assert_eq!(
        record.get("io.cubbi.node").map(String::as_str),
        Some("node-a")
    );
}
