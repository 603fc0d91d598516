//! Reading the Swarm back: services into sessions (their labels are the record, their newest
//! task the state), and nodes and sessions into what placement weighs.

use bollard::models::{Node, NodeSpecAvailabilityEnum, NodeState, Service, Task, TaskState};

use super::placement::{NodeView, SessionLoad};
use super::service_spec::{NODE, RUNTIME_LABEL};
use crate::api::{Resources, Session, SessionState};
use crate::local::labels::SessionLabels;

/// A session's service as read back, with what only the backend needs.
#[derive(Debug, Clone)]
pub struct SessionService {
    pub session: Session,
    pub node: String,
    pub secret: Option<String>,
    pub memory: i64,
    /// Why the session's node cannot run it now (down, drained, paused): Swarm will not move
    /// it, since its volumes are on that node.
    pub node_unavailable: Option<String>,
    /// The newest task, when it runs: its sshd is proven once per task (see the backend).
    pub running_task: Option<String>,
}

pub fn node_view(node: &Node) -> Option<NodeView> {
    let id = node.id.clone()?;
    let status = node.status.as_ref();
    let description = node.description.as_ref();
    Some(NodeView {
        hostname: description
            .and_then(|d| d.hostname.clone())
            .unwrap_or_else(|| id.chars().take(12).collect()),
        address: status.and_then(|s| s.addr.clone()).unwrap_or_default(),
        ready: status.and_then(|s| s.state) == Some(NodeState::READY),
        active: node.spec.as_ref().and_then(|s| s.availability)
            == Some(NodeSpecAvailabilityEnum::ACTIVE),
        runtime: description
            .and_then(|d| d.engine.as_ref())
            .and_then(|e| e.labels.as_ref())
            .and_then(|labels| labels.get(RUNTIME_LABEL).cloned()),
        memory: description
            .and_then(|d| d.resources.as_ref())
            .and_then(|r| r.memory_bytes)
            .unwrap_or(0),
        id,
    })
}

pub fn load(service: &SessionService) -> SessionLoad {
    SessionLoad {
        node: service.node.clone(),
        port: service.session.ssh.port,
        memory: service.memory,
    }
}

/// A service's session, `None` for services that are not (whole) sessions. `tasks` may hold
/// other services' tasks.
pub fn session_service(
    service: &Service,
    tasks: &[Task],
    nodes: &[NodeView],
) -> Option<SessionService> {
    let id = service.id.clone()?;
    let spec = service.spec.as_ref()?;
    let labels = spec.labels.as_ref()?;
    let record = SessionLabels::from_map(labels)?;
    let node = labels.get(NODE)?.clone();
    let limits = spec
        .task_template
        .as_ref()
        .and_then(|t| t.resources.as_ref())
        .and_then(|r| r.limits.as_ref());
    let memory = limits.and_then(|l| l.memory_bytes).unwrap_or(0);
    let node_unavailable = nodes
        .iter()
        .find(|n| n.id == node)
        .and_then(unavailable)
        .or_else(|| {
            (!nodes.is_empty() && !nodes.iter().any(|n| n.id == node))
                .then(|| "its node left the Swarm".to_string())
        });
    let mut state = state(&id, tasks);
    if node_unavailable.is_some() {
        // Not on its way up, whatever its last task says: it waits for its node.
        state = SessionState::Stopped;
    }
    let mut session = record.into_session(id.clone(), state);
    session.resources = limits.map(|l| Resources {
        memory: l.memory_bytes,
        memory_swap: None,
        cpus: l.nano_cpus.map(|n| n as f64 / 1e9),
        pids_limit: l.pids,
    });
    Some(SessionService {
        session,
        node,
        secret: labels.get(super::service_spec::SECRET).cloned(),
        memory,
        running_task: (state == SessionState::Ready)
            .then(|| newest(&id, tasks).and_then(|task| task.id.clone()))
            .flatten(),
        node_unavailable,
    })
}

/// Why `node` cannot run its sessions now, if it cannot.
pub fn unavailable(node: &NodeView) -> Option<String> {
    let name = format!("{} ({})", node.hostname, node.address);
    if !node.ready {
        Some(format!(
            "its node {name} is down; it comes back when the node does (its volumes are there)"
        ))
    } else if !node.active {
        Some(format!(
            "its node {name} is drained or paused, and Swarm does not move a session (its \
             volumes are on that node); make the node active again with `docker node update \
             --availability active {}`",
            node.hostname
        ))
    } else {
        None
    }
}

/// The state of the service's newest task: a running one is ready (sshd is up within a
/// second of it); one on its way is starting; an ended one tells how it ended.
pub fn state(service_id: &str, tasks: &[Task]) -> SessionState {
    let Some(task) = newest(service_id, tasks) else {
        return SessionState::Creating;
    };
    match task.status.as_ref().and_then(|s| s.state) {
        Some(TaskState::RUNNING) => SessionState::Ready,
        Some(TaskState::COMPLETE | TaskState::SHUTDOWN) => SessionState::Stopped,
        Some(TaskState::FAILED | TaskState::REJECTED | TaskState::ORPHANED | TaskState::REMOVE) => {
            SessionState::Exited
        }
        Some(_) => SessionState::Starting,
        None => SessionState::Creating,
    }
}

/// The service's newest task (Swarm keeps a few ended ones besides).
fn newest<'a>(service_id: &str, tasks: &'a [Task]) -> Option<&'a Task> {
    tasks
        .iter()
        .filter(|task| task.service_id.as_deref() == Some(service_id))
        .max_by_key(|task| task.version.as_ref().and_then(|v| v.index).unwrap_or(0))
}

/// Why the service's newest task is not running, from Swarm's own words.
pub fn task_problem(service_id: &str, tasks: &[Task]) -> Option<String> {
    newest(service_id, tasks)
        .and_then(|task| task.status.as_ref())
        .and_then(|status| {
            let err = status.err.clone().filter(|e| !e.is_empty());
            err.or_else(|| status.message.clone())
                .map(|text| text.chars().filter(|c| !c.is_control()).take(300).collect())
        })
}
