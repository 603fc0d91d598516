//! Sessions on the local Docker endpoint: validate everything, reserve the name and a port
//! under the host lock by creating the container with its labels (a [`Reservation`]), copy
//! keys and env in, start it, and wait until sshd accepts the user's key. The reservation owns
//! the undo until the session is ready; a process killed before that leaves only a labelled
//! container, which `list` shows and `close` removes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, EndpointSettings, HealthConfig, HostConfig,
    NetworkCreateRequest, NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
    VolumeCreateRequest,
};
use bollard::query_parameters::LogsOptionsBuilder;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use russh::keys::PrivateKey;

use super::docker_api::DockerApi;
use super::index::SessionIndex;
use super::labels::{self, SessionLabels};
use super::pool::{self, POOL_INNER_NETWORK, POOL_NETWORK, PoolSettings};
use super::session_exec::{self, ExecBounds};
use super::{limits, mounts, naming, ports, project, runtime, state, upload};
use crate::api::{
    ApiError, Backend, CreateStep, ExecEvent, LogChunk, LogOptions, Progress, Resources, Session,
    SessionSpec, SessionState, Snapshot,
};
use crate::config::PortRange;
use crate::images::metadata::{CONFIG_VOLUME_PATH, DATA_VOLUME_PATH};
use crate::images::{ImageMetadata, METADATA_LABEL};
use crate::projects::{ProjectCheckout, ProjectSource};
use crate::ssh::client::{SshSession, SshTarget};
use crate::ssh::files::SshFiles;
use crate::ssh::keys;

mod boot;
mod create;
mod data;
mod egress;
mod idle;
mod lifecycle;
pub mod lookup;
mod networks;
mod pool_claim;
mod pool_fill;
mod status;
mod swarm_plan;
mod validate;
mod volumes;

#[cfg(test)]
pub(crate) mod fake_docker;
#[cfg(test)]
pub(crate) mod tests;

use create::{BootError, Reservation};
pub use idle::IdleStopped;
pub(super) use lookup::session_from;
pub use pool_fill::Filled;
use status::reports_failure;
pub use swarm_plan::ServicePlan;
use validate::Plan;

/// Where the workspace is mounted in every session.
pub const WORKSPACE_PATH: &str = "/home/agent/workspace";
/// Seconds systemd gets to shut down on close before Docker kills the container.
const STOP_TIMEOUT_SECS: i32 = 10;
/// How many ports a create tries when the one it reserved is taken before start.
const PORT_ATTEMPTS: u32 = 3;
/// Status reads `list` makes at once for sessions Docker calls unhealthy.
const STATUS_READS_AT_ONCE: usize = 8;

/// The one network every session joined before owners had networks of their own.
const LEGACY_SHARED_NETWORK: &str = "cubbi-network";

#[derive(Clone)]
pub struct LocalOptions {
    /// Recorded as `io.cubbi.owner`; `list` shows only this owner's sessions.
    pub owner: String,
    /// `list` (and so every lookup) sees the sessions of every owner: a service's admin.
    pub all_owners: bool,
    /// Where `list` reads sessions instead of asking Docker each time (the service keeps one).
    pub index: Option<Arc<SessionIndex>>,
    pub ports: PortRange,
    /// The network every session joins unless the spec says otherwise; the owner's own
    /// (`naming::owner_network_name`) when absent.
    pub default_network: Option<String>,
    /// The user's key, authorized in every session.
    pub client_key: Arc<PrivateKey>,
    /// The user's OpenSSH files; `None` where nobody's ~/.ssh should change (the service).
    pub ssh_files: Option<SshFiles>,
    /// The host-wide allocation lock (`ports::LockLocation::resolve`).
    pub port_lock: ports::LockLocation,
    /// How long a create waits for that lock before it gives up, naming the holder.
    pub lock_timeout: Duration,
    /// The endpoint's own socket (unix endpoints), never mountable into a session.
    pub engine_socket: Option<PathBuf>,
    pub ready_timeout: Duration,
    /// Extra labels for everything created (tests mark their containers this way).
    pub extra_labels: HashMap<String, String>,
    /// The owner's registered projects: a spec's `project` found here is cloned with its
    /// credential and runs its init.sh; anything else is an ad-hoc git URL.
    pub projects: Option<Arc<dyn ProjectSource>>,
    /// What each session may write to its root file system (`StorageOpt size`); only where
    /// the engine's storage enforces it (see `service::disk_quota`).
    pub disk_limit: Option<limits::DiskLimit>,
    /// Send sessions' console output to this Fluentd receiver too (Docker's fluentd driver).
    pub fluentd: Option<super::log_driver::FluentdAddress>,
    /// Export the agents' telemetry (OpenTelemetry) to this Langfuse.
    pub langfuse: Option<super::langfuse::LangfuseExport>,
    /// The egress resolver's folder: live policy changes, refused names, held marks.
    pub egress_store: crate::egress::store::EgressStore,
    /// The warm pool a create claims from when the request fits (`None`: always cold).
    pub pool: Option<PoolSettings>,
    /// Whom a runtime the engine lacks is explained to: the CLI's user, or a service's.
    pub runtime_advice: crate::local::runtime::RuntimeAdvice,
}

pub struct LocalBackend {
    docker: Arc<dyn DockerApi>,
    options: LocalOptions,
}

impl LocalBackend {
    pub fn new(docker: impl DockerApi + 'static, options: LocalOptions) -> Self {
        Self::with_api(Arc::new(docker), options)
    }

    /// A backend over any [`DockerApi`] (a shared one, or a test's in-memory daemon).
    pub fn with_api(docker: Arc<dyn DockerApi>, options: LocalOptions) -> Self {
        Self { docker, options }
    }

    fn docker_error(context: &str) -> impl Fn(bollard::errors::Error) -> ApiError + '_ {
        move |err| ApiError::unavailable(format!("{context}: {err}"))
    }

    /// Takes the host-wide allocation lock (bounded wait, see [`ports::PortLock`]).
    async fn lock(&self) -> Result<ports::PortLock, ApiError> {
        let location = self.options.port_lock.clone();
        let timeout = self.options.lock_timeout;
        tokio::task::spawn_blocking(move || ports::PortLock::acquire(&location, timeout))
            .await
            .map_err(|err| ApiError::unavailable(err.to_string()))?
    }

    async fn remove(&self, id: &str) -> Result<(), ApiError> {
        match self.docker.remove_container(id).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(err) => Err(ApiError::unavailable(format!(
                "cannot remove container {id}: {err}"
            ))),
        }
    }
}

#[async_trait]
impl Backend for LocalBackend {
    async fn change_egress(
        &self,
        id_or_name: &str,
        change: crate::egress::EgressChange,
    ) -> Result<crate::api::EgressView, ApiError> {
        let session = self.get(id_or_name).await?;
        egress::change(&self.options.egress_store, &session, &change)
    }

    async fn create(
        &self,
        spec: SessionSpec,
        progress: &dyn Progress,
    ) -> Result<Session, ApiError> {
        progress.step(CreateStep::Validating);
        let plan = self.validate(&spec).await?;
        if spec.default_network
            && let Some(network) = plan.networks.first()
        {
            self.ensure_network(network, progress).await?;
        }
        match self.pool_image(&spec, &plan) {
            Ok(image) => {
                if let Some(session) = self
                    .create_from_pool(&spec, &plan, &image, progress)
                    .await?
                {
                    return Ok(session);
                }
            }
            Err(why) => tracing::info!("not from the warm pool: {why}"),
        }
        let data_volume = match &plan.project {
            Some((checkout, _)) => self.ensure_config_volume(&checkout.id).await?,
            None => self.ensure_data_volume().await?,
        };

        progress.step(CreateStep::PreparingKeys);
        let host_key = keys::generate(&format!("cubbi-{}", plan.name))
            .map_err(|err| ApiError::unavailable(err.to_string()))?;
        let host_public = keys::public_openssh(host_key.public_key())
            .map_err(|err| ApiError::unavailable(err.to_string()))?;

        // A port free under our lock can still be taken before `start` binds it by something
        // that does not know our lock (another Docker endpoint on this host): then the
        // attempt is undone and the next free port tried.
        let mut avoid = BTreeSet::new();
        for attempt in 1..=PORT_ATTEMPTS {
            progress.step(CreateStep::AllocatingPort);
            let mut reservation = self
                .reserve(&spec, &plan, &host_public, &data_volume, &avoid, progress)
                .await?;
            progress.reserved(
                &reservation
                    .labels
                    .clone()
                    .into_session(reservation.id.clone(), SessionState::Creating),
            );
            let booted = match self
                .boot(&mut reservation, &spec, &plan, &host_key, progress)
                .await
            {
                Ok(()) => self.mark_ready(&reservation.id, &plan.name).await,
                Err(err) => Err(err),
            };
            match booted {
                Ok(()) => {
                    let (id, session_labels) = reservation.commit();
                    let mut session = session_labels.into_session(id, SessionState::Ready);
                    session.resources = Some(plan.resources());
                    return Ok(session);
                }
                Err(BootError::PortTaken(port)) if attempt < PORT_ATTEMPTS => {
                    tracing::info!(port, "port taken meanwhile; trying another");
                    reservation.abort(self).await;
                    avoid.insert(port);
                }
                Err(BootError::Publishing { port, reason }) if attempt < PORT_ATTEMPTS => {
                    tracing::info!(port, "{reason}; trying again");
                    reservation.abort(self).await;
                    avoid.insert(port);
                }
                Err(BootError::Publishing { reason, .. }) => {
                    let logs = self.console_tail(&reservation.id, 20).await;
                    reservation.abort(self).await;
                    return Err(ApiError::Failed {
                        step: CreateStep::Starting.to_string(),
                        reason,
                        logs,
                    });
                }
                Err(BootError::PortTaken(port)) => {
                    reservation.abort(self).await;
                    return Err(ApiError::Exhausted(format!(
                        "every SSH port tried was taken before the session could start \
                         ({PORT_ATTEMPTS} attempts, the last {port})"
                    )));
                }
                Err(BootError::Step { step, reason }) => {
                    let logs = self.console_tail(&reservation.id, 20).await;
                    reservation.abort(self).await;
                    return Err(ApiError::Failed {
                        step: step.to_string(),
                        reason,
                        logs,
                    });
                }
            }
        }
        Err(ApiError::Exhausted(format!(
            "every SSH port tried was taken before the session could start ({PORT_ATTEMPTS} attempts)"
        )))
    }

    async fn list(&self) -> Result<Vec<Session>, ApiError> {
        let visible =
            |session: &Session| self.options.all_owners || session.owner == self.options.owner;
        let mut sessions: Vec<Session> =
            match self.options.index.as_ref().and_then(|i| i.sessions()) {
                Some(indexed) => indexed.into_iter().filter(visible).collect(),
                None => {
                    let mut filters = vec![format!("{}=true", labels::SESSION)];
                    if !self.options.all_owners {
                        filters.push(format!("{}={}", labels::OWNER, self.options.owner));
                    }
                    let mut found: Vec<Session> = self
                        .containers("label", &filters)
                        .await?
                        .iter()
                        .filter_map(session_from)
                        .collect();
                    found.extend(self.claimed_sessions().await?.into_iter().filter(visible));
                    found
                }
            };
        // Sessions Docker calls unhealthy are checked against their status files, a few at a
        // time: each read is bounded, and one hostile session cannot hold up the list.
        let unhealthy: Vec<(usize, String, String)> = sessions
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state == SessionState::InitFailed)
            .map(|(index, s)| (index, s.id.clone(), s.name.clone()))
            .collect();
        let rechecked: Vec<(usize, SessionState)> = futures_util::stream::iter(unhealthy)
            .map(|(index, id, name)| async move {
                let (init, project) = self.reported_status(&id).await;
                let state = if reports_failure(&init, &project) {
                    SessionState::InitFailed
                } else {
                    self.state_despite_health(&id, &name).await
                };
                (index, state)
            })
            .buffer_unordered(STATUS_READS_AT_ONCE)
            .collect()
            .await;
        for (index, state) in rechecked {
            sessions[index].state = state;
        }
        sessions.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.name.cmp(&b.name)));
        Ok(sessions)
    }

    async fn get(&self, id_or_name: &str) -> Result<Session, ApiError> {
        let mut session = self.find(id_or_name).await?;
        if !matches!(
            session.state,
            SessionState::Creating | SessionState::Stopped | SessionState::Exited
        ) {
            (session.init_status, session.project_status) = self.reported_status(&session.id).await;
            // A failed clone or init.sh fails the session as a failed boot does: the user
            // would otherwise work in an empty or half-prepared workspace.
            if reports_failure(&session.init_status, &session.project_status) {
                session.state = SessionState::InitFailed;
            } else if session.state == SessionState::InitFailed {
                session.state = self.state_despite_health(&session.id, &session.name).await;
            }
        }
        let inspected = self.docker.inspect_container(&session.id).await.ok();
        session.resources = inspected
            .as_ref()
            .and_then(|container| container.host_config.as_ref())
            .map(|host| Resources {
                memory: host.memory.filter(|m| *m > 0),
                memory_swap: host.memory_swap.filter(|m| *m > 0),
                cpus: host.nano_cpus.filter(|n| *n > 0).map(|n| n as f64 / 1e9),
                pids_limit: host.pids_limit.filter(|p| *p > 0),
            });
        session.egress = inspected
            .as_ref()
            .and_then(|container| container.config.as_ref())
            .and_then(|config| config.labels.as_ref())
            .and_then(|labels| labels.get(crate::local::labels::EGRESS))
            .map(|label| {
                crate::egress::view_of_session(&self.options.egress_store, &session.id, label)
            });
        let mut networks: Vec<String> = inspected
            .and_then(|container| container.network_settings)
            .and_then(|settings| settings.networks)
            .map(|networks| networks.into_keys().collect())
            .unwrap_or_default();
        networks.sort();
        session.networks = networks;
        Ok(session)
    }

    async fn stop(&self, id_or_name: &str) -> Result<Session, ApiError> {
        self.stop_session(id_or_name).await
    }

    async fn start(&self, id_or_name: &str) -> Result<Session, ApiError> {
        self.start_session(id_or_name).await
    }

    async fn snapshot(&self, id_or_name: &str, name: Option<String>) -> Result<Snapshot, ApiError> {
        self.snapshot_session(id_or_name, name).await
    }

    async fn snapshots(&self) -> Result<Vec<Snapshot>, ApiError> {
        self.list_snapshots().await
    }

    async fn remove_snapshot(&self, name: &str) -> Result<Snapshot, ApiError> {
        self.remove_snapshot_named(name).await
    }

    async fn export_data(
        &self,
        image: Option<&str>,
    ) -> Result<(Vec<u8>, crate::api::DataSummary), ApiError> {
        self.export_agent_data(image).await
    }

    async fn import_data(&self, archive: Vec<u8>) -> Result<crate::api::DataSummary, ApiError> {
        self.import_agent_data(archive).await
    }

    async fn stop_idle(&self) -> Result<Vec<crate::api::IdleStopped>, ApiError> {
        self.stop_idle_sessions().await
    }

    async fn close(&self, id_or_name: &str) -> Result<Session, ApiError> {
        let session = self.find(id_or_name).await?;
        // A container that is not running needs no stop; a failing stop is followed by a
        // forced removal anyway.
        let _ = self
            .docker
            .stop_container(&session.id, STOP_TIMEOUT_SECS)
            .await;
        self.remove(&session.id).await?;
        // A session made from a pool member has a claim record; nothing else has one.
        self.remove_claim_record(&session.id).await;
        if let Some(files) = &self.options.ssh_files {
            files
                .remove_session(&session.name)
                .map_err(|err| ApiError::unavailable(err.to_string()))?;
        }
        Ok(session)
    }

    async fn logs(
        &self,
        id_or_name: &str,
        options: LogOptions,
    ) -> Result<BoxStream<'static, Result<LogChunk, ApiError>>, ApiError> {
        let session = self.find(id_or_name).await?;
        let tail = options
            .tail
            .map_or_else(|| "all".to_string(), |n| n.to_string());
        let docker_options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .follow(options.follow)
            .tail(&tail)
            .build();
        Ok(crate::docker::log_chunks(
            self.docker.logs(&session.id, docker_options),
        ))
    }

    async fn connect(&self, id_or_name: &str, public_key: &str) -> Result<Session, ApiError> {
        let key =
            keys::canonical_public(public_key).map_err(|err| ApiError::invalid(err.to_string()))?;
        let session = self.ready(id_or_name).await?;
        if !lookup::is_own_key(&self.options.client_key, &key)? {
            self.authorize(&session.id, &key).await?;
        }
        Ok(session)
    }

    async fn exec(
        &self,
        id_or_name: &str,
        command: Vec<String>,
    ) -> Result<BoxStream<'static, Result<ExecEvent, ApiError>>, ApiError> {
        crate::api::require_command(&command)?;
        let (session, connected) = self.ssh(id_or_name).await?;
        // A session with a workspace starts there, as `connect` does.
        let dir = session.workspace.is_some().then_some(WORKSPACE_PATH);
        let stream = connected
            .exec(&command, dir)
            .await
            .map_err(|err| ApiError::unavailable(err.to_string()))?;
        Ok(Box::pin(stream.map(Ok)))
    }
}
