//! The cubbi engine as a Docker Swarm node (`cubbi setup --swarm-init | --swarm-join`): never
//! the host's own Docker. Swarm's executor never sets a runtime, so every task runs under the
//! node daemon's default runtime, which a cubbi engine makes Sysbox; each node is labelled
//! with that runtime and cubbi's version, so placement can ask for them.
//!
//! Docker is reached through [`SwarmApi`], so the plan and the apply steps are unit-tested
//! against a fake; the real one is bollard on the engine's socket.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use async_trait::async_trait;

use super::plan::{Action, Step, StepState};

/// The node labels cubbi keeps: the default runtime and cubbi's version.
pub const RUNTIME_LABEL: &str = "io.cubbi.runtime";
pub const VERSION_LABEL: &str = "io.cubbi.version";
/// The port managers listen on for joins.
pub const MANAGER_PORT: u16 = 2377;

#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("the engine's Docker refused the swarm request: {0}")]
    Docker(String),
    #[error(
        "a swarm join token looks like SWMTKN-1-<digest>-<secret> (from the first node's \
         `cubbi setup --swarm-init`)"
    )]
    BadToken,
}

/// A swarm join token: a secret, never printed by `Debug` nor serialized into a plan.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken(String);

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinToken(…)")
    }
}

impl std::str::FromStr for JoinToken {
    type Err = SwarmError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = text.split('-').collect();
        let ok = parts.len() == 4
            && parts[0] == "SWMTKN"
            && parts[1] == "1"
            && parts[2..]
                .iter()
                .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()));
        if ok && text.len() <= 256 {
            Ok(Self(text.to_string()))
        } else {
            Err(SwarmError::BadToken)
        }
    }
}

impl JoinToken {
    pub fn secret(&self) -> &str {
        &self.0
    }
}

/// Where this engine stands in a swarm.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// `inactive`, `pending`, `active`, `error` or `locked`.
    pub state: String,
    pub node_id: String,
    pub manager: bool,
    /// The address the node advertises.
    pub node_addr: String,
    /// For a manager: the worker join token, to tell the next node.
    pub worker_token: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl Membership {
    pub fn active(&self) -> bool {
        self.state == "active"
    }
}

/// What setup was asked for.
#[derive(Debug, Clone)]
pub enum SwarmRequest {
    /// `--swarm-init [--swarm-addr ADDR]`.
    Init { advertise: Option<IpAddr> },
    /// `--swarm-join ADDR:2377 --swarm-token TOKEN [--swarm-addr ADDR]`.
    Join {
        manager: SocketAddr,
        token: JoinToken,
        advertise: Option<IpAddr>,
    },
}

/// The narrow part of Docker's swarm API that setup uses.
#[async_trait]
pub trait SwarmApi: Send + Sync {
    async fn membership(&self) -> Result<Membership, SwarmError>;
    async fn init(&self, advertise: Option<IpAddr>) -> Result<(), SwarmError>;
    async fn join(
        &self,
        manager: SocketAddr,
        token: &JoinToken,
        advertise: Option<IpAddr>,
    ) -> Result<(), SwarmError>;
    /// Leaves the swarm (forced: the last manager may leave too).
    async fn leave(&self) -> Result<(), SwarmError>;
    /// Puts `labels` on this node, keeping its other labels.
    async fn label(&self, labels: &BTreeMap<String, String>) -> Result<(), SwarmError>;
}

/// The labels a node of this engine carries.
pub fn node_labels(default_runtime: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (RUNTIME_LABEL.to_string(), default_runtime.to_string()),
        (
            VERSION_LABEL.to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ])
}

/// What `--swarm-init` tells the user to run on the next node.
pub fn join_command(membership: &Membership) -> Option<String> {
    let token = membership.worker_token.as_deref()?;
    let address: IpAddr = membership.node_addr.parse().ok()?;
    Some(format!(
        "sudo cubbi setup --swarm-join {} --swarm-token {token}",
        SocketAddr::new(address, MANAGER_PORT)
    ))
}

/// The swarm step of a setup, after the engine's. `now` is `None` when the engine does not
/// answer yet (a first setup): the step is then planned as to do.
pub fn plan(now: Option<&Membership>, request: &SwarmRequest, default_runtime: &str) -> Step {
    let labels = node_labels(default_runtime);
    let step = |state, finding: String, action| Step::new("swarm", state, finding, action);
    let active = now.filter(|m| m.active());
    match (active, request) {
        (None, SwarmRequest::Init { advertise }) => step(
            StepState::ToDo,
            format!(
                "make the engine the first manager of a new swarm{}, label it {}",
                advertise.map_or(String::new(), |a| format!(" advertising {a}")),
                describe(&labels)
            ),
            Action::InitSwarm {
                advertise: *advertise,
                labels,
            },
        ),
        (
            None,
            SwarmRequest::Join {
                manager,
                token,
                advertise,
            },
        ) => step(
            StepState::ToDo,
            format!(
                "join the engine to the swarm of {manager}, label it {}",
                describe(&labels)
            ),
            Action::JoinSwarm {
                manager: *manager,
                token: token.clone(),
                advertise: *advertise,
                labels,
            },
        ),
        (Some(member), _)
            if member.manager && !labels.iter().all(|(k, v)| member.labels.get(k) == Some(v)) =>
        {
            step(
                StepState::ToDo,
                format!(
                    "the engine is in a swarm (node {}); label it {}",
                    member.node_id,
                    describe(&labels)
                ),
                Action::LabelSwarmNode { labels },
            )
        }
        (Some(member), _) => step(
            StepState::Done,
            match join_command(member) {
                Some(command) => format!(
                    "the engine is a swarm manager (node {}); join another node with: {command}",
                    member.node_id
                ),
                None => format!(
                    "the engine is a swarm {} (node {})",
                    if member.manager { "manager" } else { "worker" },
                    member.node_id
                ),
            },
            Action::Nothing,
        ),
    }
}

fn describe(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Carries out a swarm action; the note says what to do next.
pub async fn apply(api: &dyn SwarmApi, action: &Action) -> Result<String, SwarmError> {
    match action {
        Action::InitSwarm { advertise, labels } => {
            api.init(*advertise).await?;
            api.label(labels).await?;
            let member = api.membership().await?;
            Ok(join_command(&member).map_or_else(
                || "the swarm is up".to_string(),
                |command| format!("join another node with: {command}"),
            ))
        }
        Action::JoinSwarm {
            manager,
            token,
            advertise,
            labels,
        } => {
            api.join(*manager, token, *advertise).await?;
            // A worker cannot label its own node; its engine label (daemon.json) says its
            // runtime, which is what placement needs.
            if api.membership().await?.manager {
                api.label(labels).await?;
                Ok(String::new())
            } else {
                Ok("joined as a worker; its engine label io.cubbi.runtime places sessions".into())
            }
        }
        Action::LabelSwarmNode { labels } => {
            api.label(labels).await?;
            Ok(String::new())
        }
        _ => Ok(String::new()),
    }
}

/// The real swarm API: bollard on the engine's socket.
pub struct DockerSwarm(pub bollard::Docker);

fn docker_error(err: bollard::errors::Error) -> SwarmError {
    SwarmError::Docker(err.to_string())
}

#[async_trait]
impl SwarmApi for DockerSwarm {
    async fn membership(&self) -> Result<Membership, SwarmError> {
        let info = self.0.info().await.map_err(docker_error)?;
        let swarm = info.swarm.unwrap_or_default();
        let state = swarm
            .local_node_state
            .map(|state| state.to_string())
            .unwrap_or_default();
        let manager = swarm.control_available.unwrap_or(false);
        let node_id = swarm.node_id.unwrap_or_default();
        let mut membership = Membership {
            state,
            node_id: node_id.clone(),
            manager,
            node_addr: swarm.node_addr.unwrap_or_default(),
            ..Membership::default()
        };
        // Only a manager may read nodes and tokens; a worker's placement label is its engine's.
        if membership.active() && manager && !node_id.is_empty() {
            let node = self.0.inspect_node(&node_id).await.map_err(docker_error)?;
            membership.labels = node
                .spec
                .and_then(|spec| spec.labels)
                .unwrap_or_default()
                .into_iter()
                .collect();
            if manager {
                membership.worker_token = self
                    .0
                    .inspect_swarm()
                    .await
                    .map_err(docker_error)?
                    .join_tokens
                    .and_then(|tokens| tokens.worker);
            }
        }
        Ok(membership)
    }

    async fn init(&self, advertise: Option<IpAddr>) -> Result<(), SwarmError> {
        let request = bollard::models::SwarmInitRequest {
            listen_addr: Some(format!(
                "{}:{MANAGER_PORT}",
                advertise.map_or("0.0.0.0".to_string(), |a| a.to_string())
            )),
            advertise_addr: advertise.map(|a| a.to_string()),
            ..Default::default()
        };
        self.0.init_swarm(request).await.map_err(docker_error)?;
        Ok(())
    }

    async fn join(
        &self,
        manager: SocketAddr,
        token: &JoinToken,
        advertise: Option<IpAddr>,
    ) -> Result<(), SwarmError> {
        let request = bollard::models::SwarmJoinRequest {
            listen_addr: Some(format!(
                "{}:{MANAGER_PORT}",
                advertise.map_or("0.0.0.0".to_string(), |a| a.to_string())
            )),
            advertise_addr: advertise.map(|a| a.to_string()),
            remote_addrs: Some(vec![manager.to_string()]),
            join_token: Some(token.secret().to_string()),
            ..Default::default()
        };
        // Docker's error could quote the request; it never quotes the token, but be sure.
        self.0
            .join_swarm(request)
            .await
            .map_err(|err| SwarmError::Docker(err.to_string().replace(token.secret(), "…")))
    }

    async fn leave(&self) -> Result<(), SwarmError> {
        let options = bollard::query_parameters::LeaveSwarmOptionsBuilder::new()
            .force(true)
            .build();
        self.0
            .leave_swarm(Some(options))
            .await
            .map_err(docker_error)
    }

    async fn label(&self, labels: &BTreeMap<String, String>) -> Result<(), SwarmError> {
        let info = self.0.info().await.map_err(docker_error)?;
        let node_id = info
            .swarm
            .and_then(|swarm| swarm.node_id)
            .ok_or_else(|| SwarmError::Docker("the engine is in no swarm".into()))?;
        let node = self.0.inspect_node(&node_id).await.map_err(docker_error)?;
        let version = node
            .version
            .and_then(|version| version.index)
            .unwrap_or_default();
        let mut spec = node.spec.unwrap_or_default();
        let mut all = spec.labels.take().unwrap_or_default();
        all.extend(labels.clone());
        spec.labels = Some(all);
        let options = bollard::query_parameters::UpdateNodeOptionsBuilder::new()
            .version(version as i64)
            .build();
        self.0
            .update_node(&node_id, spec, options)
            .await
            .map_err(docker_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinToken {
        "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdbx"
            .parse()
            .unwrap()
    }

    fn manager() -> Membership {
        Membership {
            state: "active".into(),
            node_id: "n1".into(),
            manager: true,
            node_addr: "10.0.0.1".into(),
            worker_token: Some(token().secret().to_string()),
            labels: node_labels("sysbox-runc"),
        }
    }

    #[test]
    fn tokens_are_checked_and_never_shown_by_debug() {
        assert!("SWMTKN-1-abc".parse::<JoinToken>().is_err());
        assert!("nonsense".parse::<JoinToken>().is_err());
        assert!("SWMTKN-1-a b-c".parse::<JoinToken>().is_err());
        let token = token();
        assert!(!format!("{token:?}").contains("SWMTKN"));
        let action = Action::JoinSwarm {
            manager: "10.0.0.1:2377".parse().unwrap(),
            token,
            advertise: None,
            labels: BTreeMap::new(),
        };
        let json = serde_json::to_string(&action).unwrap();
        assert!(!json.contains("SWMTKN"), "{json}");
        assert!(!format!("{action:?}").contains("SWMTKN"));
    }

    #[test]
    fn init_then_a_rerun_is_done_and_tells_the_join_command() {
        let init = SwarmRequest::Init {
            advertise: Some("10.0.0.1".parse().unwrap()),
        };
        let first = plan(None, &init, "sysbox-runc");
        assert_eq!(first.state, StepState::ToDo);
        assert!(matches!(first.action, Action::InitSwarm { .. }));
        let again = plan(Some(&manager()), &init, "sysbox-runc");
        assert_eq!(again.state, StepState::Done);
        assert!(
            again
                .finding
                .contains("cubbi setup --swarm-join 10.0.0.1:2377 --swarm-token SWMTKN-1-"),
            "{}",
            again.finding
        );
        // Another default runtime since: the node's label follows.
        let relabel = plan(Some(&manager()), &init, "runc");
        assert!(matches!(relabel.action, Action::LabelSwarmNode { .. }));
    }

    #[test]
    fn a_join_is_planned_once() {
        let join = SwarmRequest::Join {
            manager: "10.0.0.1:2377".parse().unwrap(),
            token: token(),
            advertise: None,
        };
        let inactive = Membership {
            state: "inactive".into(),
            ..Membership::default()
        };
        assert!(matches!(
            plan(Some(&inactive), &join, "sysbox-runc").action,
            Action::JoinSwarm { .. }
        ));
        let worker = Membership {
            manager: false,
            worker_token: None,
            ..manager()
        };
        let done = plan(Some(&worker), &join, "sysbox-runc");
        assert_eq!(done.state, StepState::Done);
        assert!(done.finding.contains("worker"), "{}", done.finding);
    }
}
