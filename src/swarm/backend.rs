//! Sessions on a Docker Swarm of cubbi engines, behind the same [`Backend`] as the local
//! engine: a session is a one-replica service pinned to the node it was placed on, its SSH
//! port published on that node, its files a secret. Exec and connect go over SSH to the
//! node's address; logs come from `service logs`; the services' labels are the record.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::LogsOptions;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use russh::keys::PrivateKey;

use super::api::ManagerApi;
use super::placement::{self, Want};
use super::record::{self, SessionService};
use super::service_spec::{self, ServiceNames};
use crate::api::{
    ApiError, Backend, CreateStep, DataSummary, EgressView, ExecEvent, LogChunk, LogOptions,
    Progress, Session, SessionSpec, SessionState, Snapshot,
};
use crate::config::PortRange;
use crate::local::backend::LocalBackend;
use crate::local::backend::lookup::{AUTHORIZE_SCRIPT, is_own_key, pick, ssh_target};
use crate::local::labels;
use crate::ssh::client::{SshSession, wait_until_ready};
use crate::ssh::keys;

/// What every caller's backend shares.
#[derive(Clone)]
pub struct SwarmOptions {
    /// Whose sessions these are (the service's `serve:USER`).
    pub owner: String,
    /// An admin sees and acts on every owner's sessions.
    pub all_owners: bool,
    pub ports: PortRange,
    /// The key the service logs in to sessions with.
    pub client_key: Arc<PrivateKey>,
    /// How long a create waits for the task to run and then for sshd.
    pub ready_timeout: Duration,
    /// Held from reading the nodes to creating the service, so two creates never pick one
    /// node's port (ports are checked by no one else until the task starts).
    pub placement: Arc<tokio::sync::Mutex<()>>,
    /// The last read of every session, shared by every caller's backend.
    pub cache: Arc<SessionsCache>,
}

/// Every session on the Swarm as last read. Swarm sends no task events to a manager's event
/// stream, so instead of an event-fed index the read is kept [`Self::FRESH`] long: however
/// many lists arrive, the manager answers at most one read (three calls) per period, and
/// callers arriving during a read wait for it instead of starting their own. A create or
/// close empties it, so its own caller's next read sees the change.
#[derive(Default)]
pub struct SessionsCache {
    last: tokio::sync::Mutex<Option<(Instant, Arc<Vec<SessionService>>)>>,
    /// The running tasks whose sshd accepted the service's key. A running task is not yet a
    /// ready session: Swarm replaces a task (a node restarted) and says `running` while
    /// systemd boots, so each task's sshd is proven once before it reads `ready`.
    proven: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl SessionsCache {
    pub const FRESH: Duration = Duration::from_secs(1);

    async fn read<F, Fut>(&self, fetch: F) -> Result<Arc<Vec<SessionService>>, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<SessionService>, ApiError>>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, sessions)) = last.as_ref()
            && at.elapsed() < Self::FRESH
        {
            return Ok(Arc::clone(sessions));
        }
        let sessions = Arc::new(fetch().await?);
        *last = Some((Instant::now(), Arc::clone(&sessions)));
        Ok(sessions)
    }

    async fn forget(&self) {
        *self.last.lock().await = None;
    }
}

pub struct SwarmBackend {
    api: Arc<dyn ManagerApi>,
    /// Validates specs against the manager's engine as a local create would.
    planner: LocalBackend,
    options: SwarmOptions,
}

fn docker_error(what: &'static str) -> impl Fn(bollard::errors::Error) -> ApiError {
    move |err| ApiError::unavailable(format!("{what}: {err}"))
}

fn not_on_swarm(what: &str) -> ApiError {
    ApiError::invalid(format!(
        "{what} is not available for sessions on a Swarm yet; close the session and create a \
         new one instead"
    ))
}

impl SwarmBackend {
    pub fn new(api: Arc<dyn ManagerApi>, planner: LocalBackend, options: SwarmOptions) -> Self {
        Self {
            api,
            planner,
            options,
        }
    }

    #[cfg(test)]
    pub(crate) fn planner(&self) -> &LocalBackend {
        &self.planner
    }

    /// Every session's service, whoever owns it, each running one's sshd proven (for reads).
    async fn all_sessions(&self) -> Result<Vec<SessionService>, ApiError> {
        let sessions = self.read_swarm().await?;
        let mut sessions = self.prove_running(sessions).await;
        sessions.sort_by_key(|s| (s.session.created, s.session.name.clone()));
        Ok(sessions)
    }

    async fn node_views(&self) -> Result<Vec<placement::NodeView>, ApiError> {
        Ok(self
            .api
            .nodes()
            .await
            .map_err(docker_error("cannot list the Swarm's nodes"))?
            .iter()
            .filter_map(record::node_view)
            .collect())
    }

    /// The sessions this caller may see, from a read of the Swarm at most
    /// [`SessionsCache::FRESH`] old that every caller shares.
    async fn own_sessions(&self) -> Result<Vec<SessionService>, ApiError> {
        let everyone = self.options.cache.read(|| self.all_sessions()).await?;
        Ok(everyone
            .iter()
            .filter(|s| self.options.all_owners || s.session.owner == self.options.owner)
            .cloned()
            .collect())
    }

    /// Every session's service as Swarm says, whoever owns it: what placement weighs.
    async fn read_swarm(&self) -> Result<Vec<SessionService>, ApiError> {
        let filter = vec![format!("{}=true", labels::SESSION)];
        let services = self
            .api
            .services(&filter)
            .await
            .map_err(docker_error("cannot list the Swarm's services"))?;
        let ids: Vec<String> = services.iter().filter_map(|s| s.id.clone()).collect();
        let tasks = self
            .api
            .tasks_of(&ids)
            .await
            .map_err(docker_error("cannot list the Swarm's tasks"))?;
        let nodes = self.node_views().await?;
        let sessions: Vec<SessionService> = services
            .iter()
            .filter_map(|service| record::session_service(service, &tasks, &nodes))
            .collect();
        Ok(sessions)
    }

    /// Whether the session's sshd proves its pinned key and accepts the service's, now.
    async fn answers(&self, session: &Session) -> bool {
        const TRY_FOR: Duration = Duration::from_secs(2);
        let Ok(target) = ssh_target(session, &self.options.client_key) else {
            return false;
        };
        match SshSession::key_exchange(&target, TRY_FOR).await {
            Ok(exchanged) => exchanged.log_in_once(&target, TRY_FOR).await.is_ok(),
            Err(_) => false,
        }
    }

    /// Marks `starting` every session whose running task's sshd has not yet accepted the
    /// key (each task is tried once per read, a few at a time, briefly), and forgets tasks
    /// that are gone.
    async fn prove_running(&self, sessions: Vec<SessionService>) -> Vec<SessionService> {
        const AT_ONCE: usize = 8;
        let proven = &self.options.cache.proven;
        let probes = sessions.into_iter().map(|mut service| async move {
            let Some(task) = service.running_task.clone() else {
                return service;
            };
            if proven.lock().is_ok_and(|set| set.contains(&task)) {
                return service;
            }
            if self.answers(&service.session).await {
                if let Ok(mut set) = proven.lock() {
                    set.insert(task);
                }
            } else {
                service.session.state = SessionState::Starting;
            }
            service
        });
        let sessions: Vec<SessionService> = futures_util::stream::iter(probes)
            .buffer_unordered(AT_ONCE)
            .collect()
            .await;
        if let Ok(mut set) = proven.lock() {
            set.retain(|task| {
                sessions
                    .iter()
                    .any(|s| s.running_task.as_deref() == Some(task))
            });
        }
        sessions
    }

    async fn find(&self, id_or_name: &str) -> Result<SessionService, ApiError> {
        if id_or_name.is_empty() {
            return Err(ApiError::invalid("give a session id or name"));
        }
        let sessions = self.own_sessions().await?;
        let found = pick(
            sessions.iter().map(|s| s.session.clone()).collect(),
            id_or_name,
        )?;
        sessions
            .into_iter()
            .find(|s| s.session.id == found.id)
            .ok_or_else(|| ApiError::NotFound(id_or_name.to_string()))
    }

    async fn ready(&self, id_or_name: &str) -> Result<Session, ApiError> {
        let found = self.find(id_or_name).await?;
        if let Some(why) = &found.node_unavailable {
            return Err(ApiError::Conflict(format!(
                "session {} cannot run: {why}",
                found.session.name
            )));
        }
        let session = found.session;
        if session.state != SessionState::Ready {
            return Err(ApiError::Conflict(format!(
                "session {} is {}, not ready; `cubbi session logs {}` shows why",
                session.name, session.state, session.name
            )));
        }
        Ok(session)
    }

    async fn ssh(&self, session: &Session) -> Result<SshSession, ApiError> {
        let target = ssh_target(session, &self.options.client_key)?;
        SshSession::connect(&target, Duration::from_secs(10))
            .await
            .map_err(|err| ApiError::unavailable(err.to_string()))
    }

    /// The owner's network as an attachable overlay, made once (under the placement lock:
    /// Docker accepts duplicate network names).
    async fn ensure_overlay(&self, name: &str) -> Result<(), ApiError> {
        let exists = self
            .api
            .has_network(name)
            .await
            .map_err(docker_error("cannot look up the owner's network"))?;
        if exists {
            return Ok(());
        }
        let labels = HashMap::from([
            (labels::MANAGED.to_string(), "true".to_string()),
            (labels::OWNER.to_string(), self.options.owner.clone()),
        ]);
        self.api
            .create_network(NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("overlay".to_string()),
                attachable: Some(true),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map_err(docker_error("cannot create the owner's overlay network"))
    }

    /// Removes what a failed create made; each removal is tried whatever the other did.
    async fn undo(&self, service: Option<&str>, secret: &str) {
        if let Some(service) = service
            && let Err(err) = self.api.delete_service(service).await
        {
            tracing::warn!(service, "cannot remove a failed session's service: {err}");
        }
        self.delete_secret(secret).await;
    }

    /// A secret is removed once no service refers to it; right after the service's removal
    /// the manager may still count it, so a few tries.
    async fn delete_secret(&self, secret: &str) {
        for attempt in 0..10u32 {
            match self.api.delete_secret(secret).await {
                Ok(()) => return,
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => return,
                Err(err) if attempt == 9 => {
                    tracing::warn!(secret, "cannot remove a session's secret: {err}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Waits until the service's task runs; a task that failed or was rejected, or one Swarm
    /// cannot place, fails the create with Swarm's reason.
    async fn wait_for_task(&self, id: &str, deadline: Instant) -> Result<(), String> {
        loop {
            let tasks = self
                .api
                .tasks_of(&[id.to_string()])
                .await
                .map_err(|err| format!("cannot list the session's task: {err}"))?;
            match record::state(id, &tasks) {
                SessionState::Ready => return Ok(()),
                SessionState::Exited => {
                    return Err(record::task_problem(id, &tasks)
                        .unwrap_or_else(|| "the session's task failed".to_string()));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "its task did not start within {}s: {}",
                    self.options.ready_timeout.as_secs(),
                    record::task_problem(id, &tasks).unwrap_or_else(|| "no reason given".into())
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[async_trait]
impl Backend for SwarmBackend {
    async fn create(
        &self,
        spec: SessionSpec,
        progress: &dyn Progress,
    ) -> Result<Session, ApiError> {
        progress.step(CreateStep::Validating);
        let plan = self.planner.plan_service(&spec).await?;
        if plan.files.len() > service_spec::SECRET_LIMIT {
            return Err(ApiError::invalid(format!(
                "the session's files (env, keys, MCP configs) come to {} bytes; a Swarm secret \
                 holds at most {}: send less",
                plan.files.len(),
                service_spec::SECRET_LIMIT
            )));
        }
        progress.step(CreateStep::AllocatingPort);
        let placement = Arc::clone(&self.options.placement);
        let lock = placement.lock().await;
        // Everyone's, unproven: a port or a name is taken whoever holds it, ready or not.
        let everyone = self.read_swarm().await?;
        if everyone.iter().any(|s| s.session.name == plan.name) {
            return Err(ApiError::Conflict(format!(
                "a session named {} exists already; pick another --name",
                plan.name
            )));
        }
        if spec.default_network
            && let Some(network) = plan.networks.first()
        {
            self.ensure_overlay(network).await?;
        }
        let nodes = self.node_views().await?;
        let loads: Vec<_> = everyone.iter().map(record::load).collect();
        let want = Want {
            runtime: &spec.runtime,
            memory: plan.memory,
            ports: self.options.ports,
        };
        let placed = placement::place(&nodes, &loads, want)
            .map_err(|no_node| ApiError::Exhausted(no_node.to_string()))?;
        let unique: String = rand::random::<[u8; 4]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let names = ServiceNames::new(&plan.name, &unique);
        progress.step(CreateStep::CreatingContainer);
        let secret_id = self
            .api
            .create_secret(service_spec::secret_spec(&plan, &names))
            .await
            .map_err(docker_error("cannot create the session's secret"))?;
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let record = service_spec::session_labels(&plan, &placed, created);
        let service =
            service_spec::service_spec(&plan, &placed, &names, &secret_id, &record, &spec.runtime);
        let id = match self.api.create_service(service).await {
            Ok(id) => id,
            Err(err) => {
                self.undo(None, &names.secret).await;
                return Err(match err {
                    bollard::errors::Error::DockerResponseServerError {
                        status_code: 409, ..
                    } => ApiError::Conflict(format!(
                        "a service named {} exists already on the Swarm; pick another --name",
                        names.service
                    )),
                    other => ApiError::unavailable(format!(
                        "cannot create the session's service: {other}"
                    )),
                });
            }
        };
        drop(lock);
        self.options.cache.forget().await;
        progress.reserved(
            &record
                .clone()
                .into_session(id.clone(), SessionState::Creating),
        );

        progress.step(CreateStep::Starting);
        let deadline = Instant::now() + self.options.ready_timeout;
        let booted = match self.wait_for_task(&id, deadline).await {
            Err(reason) => Err((CreateStep::Starting, reason)),
            Ok(()) => {
                progress.step(CreateStep::WaitingForSsh);
                let target = crate::ssh::client::SshTarget {
                    address: format!("{}:{}", placed.address, placed.port),
                    user: labels::AGENT_USER.to_string(),
                    client_key: Arc::clone(&self.options.client_key),
                    host_key: plan.host_key.public_key().clone(),
                };
                let remaining = deadline.saturating_duration_since(Instant::now());
                wait_until_ready(&target, remaining.max(Duration::from_secs(5)), || async {
                    true
                })
                .await
                .map_err(|err| (CreateStep::WaitingForSsh, err.to_string()))
            }
        };
        if let Err((step, reason)) = booted {
            let logs = self.console_tail(&id).await;
            self.undo(Some(&id), &names.secret).await;
            self.options.cache.forget().await;
            return Err(ApiError::Failed {
                step: step.to_string(),
                reason,
                logs,
            });
        }
        let mut session = record.into_session(id, SessionState::Ready);
        session.resources = Some(plan.resources.clone());
        Ok(session)
    }

    async fn list(&self) -> Result<Vec<Session>, ApiError> {
        Ok(self
            .own_sessions()
            .await?
            .into_iter()
            .map(|s| s.session)
            .collect())
    }

    async fn get(&self, id_or_name: &str) -> Result<Session, ApiError> {
        let mut session = self.find(id_or_name).await?.session;
        // The manager learns of a node's restart late and keeps saying the old task runs:
        // one session's `ready` is checked where it counts, at its sshd.
        if session.state == SessionState::Ready && !self.answers(&session).await {
            session.state = SessionState::Starting;
        }
        Ok(session)
    }

    async fn stop(&self, _id_or_name: &str) -> Result<Session, ApiError> {
        Err(not_on_swarm("stopping a session"))
    }

    async fn start(&self, _id_or_name: &str) -> Result<Session, ApiError> {
        Err(not_on_swarm("starting a stopped session"))
    }

    async fn snapshot(
        &self,
        _id_or_name: &str,
        _name: Option<String>,
    ) -> Result<Snapshot, ApiError> {
        Err(not_on_swarm("a snapshot"))
    }

    async fn snapshots(&self) -> Result<Vec<Snapshot>, ApiError> {
        // None can be made on a Swarm, so there are none to list.
        Ok(Vec::new())
    }

    async fn remove_snapshot(&self, name: &str) -> Result<Snapshot, ApiError> {
        Err(ApiError::NotFound(format!("snapshot {name}")))
    }

    async fn export_data(&self, _image: Option<&str>) -> Result<(Vec<u8>, DataSummary), ApiError> {
        Err(not_on_swarm(
            "exporting agent data (each node keeps its own data volume)",
        ))
    }

    async fn import_data(&self, _archive: Vec<u8>) -> Result<DataSummary, ApiError> {
        Err(not_on_swarm(
            "importing agent data (each node keeps its own data volume)",
        ))
    }

    async fn change_egress(
        &self,
        _id_or_name: &str,
        _change: crate::egress::EgressChange,
    ) -> Result<EgressView, ApiError> {
        Err(not_on_swarm("egress by name"))
    }

    async fn close(&self, id_or_name: &str) -> Result<Session, ApiError> {
        let found = self.find(id_or_name).await?;
        self.api
            .delete_service(&found.session.id)
            .await
            .map_err(docker_error("cannot remove the session's service"))?;
        self.options.cache.forget().await;
        if let Some(secret) = &found.secret {
            self.delete_secret(secret).await;
        }
        Ok(found.session)
    }

    async fn logs(
        &self,
        id_or_name: &str,
        options: LogOptions,
    ) -> Result<BoxStream<'static, Result<LogChunk, ApiError>>, ApiError> {
        let session = self.find(id_or_name).await?.session;
        let docker_options = LogsOptions {
            stdout: true,
            stderr: true,
            follow: options.follow,
            tail: options
                .tail
                .map_or_else(|| "all".to_string(), |n| n.to_string()),
            ..Default::default()
        };
        Ok(crate::docker::log_chunks(
            self.api.service_logs(&session.id, docker_options),
        ))
    }

    async fn connect(&self, id_or_name: &str, public_key: &str) -> Result<Session, ApiError> {
        let key =
            keys::canonical_public(public_key).map_err(|err| ApiError::invalid(err.to_string()))?;
        let session = self.ready(id_or_name).await?;
        if !is_own_key(&self.options.client_key, &key)? {
            // Into the home volume, so the key lasts as long as the session's home.
            let command = ["sh", "-c", AUTHORIZE_SCRIPT, "sh", key.as_str()].map(String::from);
            let mut events = self
                .ssh(&session)
                .await?
                .exec(&command, None)
                .await
                .map_err(|err| ApiError::unavailable(format!("cannot authorize the key: {err}")))?;
            let mut code = None;
            while let Some(event) = events.next().await {
                if let ExecEvent::Exit(exit) = event {
                    code = Some(exit);
                }
            }
            if code != Some(0) {
                return Err(ApiError::unavailable(format!(
                    "cannot authorize the key: the session's shell exited with {code:?}"
                )));
            }
        }
        Ok(session)
    }

    async fn exec(
        &self,
        id_or_name: &str,
        command: Vec<String>,
    ) -> Result<BoxStream<'static, Result<ExecEvent, ApiError>>, ApiError> {
        crate::api::require_command(&command)?;
        let session = self.ready(id_or_name).await?;
        let stream = self
            .ssh(&session)
            .await?
            .exec(&command, None)
            .await
            .map_err(|err| ApiError::unavailable(err.to_string()))?;
        Ok(Box::pin(stream.map(Ok)))
    }
}

impl SwarmBackend {
    /// The last lines the session's service printed, for a failed create's report.
    async fn console_tail(&self, id: &str) -> Vec<String> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: "20".to_string(),
            ..Default::default()
        };
        let read = self
            .api
            .service_logs(id, options)
            .take(200)
            .collect::<Vec<_>>();
        match tokio::time::timeout(Duration::from_secs(3), read).await {
            Ok(chunks) => chunks
                .into_iter()
                .flatten()
                .map(|chunk| {
                    chunk
                        .to_string()
                        .chars()
                        .filter(|c| !c.is_control() || *c == '\t')
                        .take(300)
                        .collect()
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}
