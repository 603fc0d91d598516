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
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, EndpointSettings, HealthConfig, HostConfig,
    NetworkConnectRequest, NetworkCreateRequest, NetworkingConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder, StopContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use russh::keys::PrivateKey;

mod lifecycle;

use super::index::SessionIndex;
use super::labels::{self, SessionLabels};
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
}

pub struct LocalBackend {
    docker: Docker,
    options: LocalOptions,
}

/// An image resolved on the endpoint, with the metadata it was built with (if a cubbi image).
struct ResolvedImage {
    reference: String,
    metadata: Option<ImageMetadata>,
    /// Bytes of the image's file system (Docker's `Size`).
    size: i64,
}

/// Everything validated, ready to create.
struct Plan {
    name: String,
    /// The spec's extra keys, one canonical line each (see [`keys::canonical_public`]).
    authorized_keys: Vec<String>,
    image: ResolvedImage,
    workspace: Option<PathBuf>,
    binds: Vec<String>,
    networks: Vec<String>,
    memory: i64,
    nano_cpus: i64,
    pids_limit: i64,
    /// `-v` targets Sysbox must not ID-map (see [`runtime::unshifted_binds`]).
    unshifted: Vec<String>,
    /// The project to clone (registered, or an ad-hoc URL) and its credential's files.
    project: Option<(ProjectCheckout, project::CredentialFiles)>,
}

/// Why a boot did not reach readiness.
#[derive(Debug, thiserror::Error)]
enum BootError {
    /// Something outside cubbi's lock bound the reserved port before `start` did.
    #[error("port {0} was taken before the session could start")]
    PortTaken(u16),
    /// Docker could not publish the port (its NAT rules changed under it, e.g. another
    /// dockerd on the host re-creating its chains); another attempt usually succeeds.
    #[error("Docker could not publish port {port}: {reason}")]
    Publishing { port: u16, reason: String },
    #[error("{step} failed: {reason}")]
    Step { step: CreateStep, reason: String },
}

impl BootError {
    fn at(step: CreateStep) -> impl Fn(String) -> Self {
        move |reason| Self::Step { step, reason }
    }
}

/// A session's name and port, held by its labelled container from the moment it is created
/// under the lock. Until [`Reservation::commit`] it owns the undo: [`Reservation::abort`]
/// removes the container (and the ssh files, once written). Dropped uncommitted (a cancelled
/// future), it leaves the container for `list` and `close`, and says so.
struct Reservation {
    id: String,
    labels: SessionLabels,
    ssh_files_written: bool,
    settled: bool,
}

impl Reservation {
    fn commit(mut self) -> (String, SessionLabels) {
        self.settled = true;
        (std::mem::take(&mut self.id), self.labels.clone())
    }

    async fn abort(mut self, backend: &LocalBackend) {
        self.settled = true;
        if let Err(err) = backend.remove(&self.id).await {
            tracing::warn!(
                "could not remove the failed session's container: {err}; `cubbi session close {}` \
                 removes it",
                self.labels.name
            );
        }
        if self.ssh_files_written
            && let Some(files) = &backend.options.ssh_files
            && let Err(err) = files.remove_session(&self.labels.name)
        {
            tracing::warn!("could not remove the failed session's ssh files: {err}");
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            tracing::warn!(
                "session {} was interrupted while booting; `cubbi session close {}` removes it",
                self.labels.name,
                self.labels.name
            );
        }
    }
}

impl Plan {
    fn resources(&self) -> Resources {
        Resources {
            memory: Some(self.memory),
            memory_swap: Some(self.memory.saturating_mul(2)),
            cpus: Some(self.nano_cpus as f64 / 1e9),
            pids_limit: Some(self.pids_limit),
        }
    }
}

impl LocalBackend {
    pub fn new(docker: Docker, options: LocalOptions) -> Self {
        Self { docker, options }
    }

    fn docker_error(context: &str) -> impl Fn(bollard::errors::Error) -> ApiError + '_ {
        move |err| ApiError::unavailable(format!("{context}: {err}"))
    }

    async fn validate(&self, spec: &SessionSpec) -> Result<Plan, ApiError> {
        let project = match &spec.project {
            Some(reference) => {
                let checkout = self.checkout(reference).await?;
                let files = project::credential_files(&checkout)?;
                Some((checkout, files))
            }
            None => None,
        };
        let name = match &spec.name {
            Some(raw) => naming::sanitize_hostname(raw).ok_or_else(|| {
                ApiError::invalid(format!(
                    "`{raw}` has nothing usable as a session name; use letters, digits and `-`"
                ))
            })?,
            None => naming::default_name(spec.workspace.as_deref(), spec.project.as_deref()),
        };
        for (key, value) in &spec.env {
            upload::validate_env(key, value)?;
        }
        let authorized_keys = spec
            .authorized_keys
            .iter()
            .map(|key| {
                keys::canonical_public(key).map_err(|err| ApiError::invalid(err.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sockets = mounts::known_sockets(self.options.engine_socket.as_deref());
        let workspace = match &spec.workspace {
            Some(path) => Some(host_path(path, "workspace", true, &sockets)?),
            None => None,
        };
        let mut binds = Vec::new();
        let mut unshifted = Vec::new();
        let mut targets: Vec<(String, String)> = Vec::new();
        if let Some(workspace) = &workspace {
            binds.push(format!("{}:{WORKSPACE_PATH}", workspace.display()));
            targets.push((WORKSPACE_PATH.into(), "the workspace".into()));
        }
        if runtime::is_plain_runc(&spec.runtime) {
            targets.push((
                runtime::INNER_DOCKER_ROOT.into(),
                "the inner Docker's storage (under --unsafe-runc)".into(),
            ));
        }
        for volume in &spec.volumes {
            let target = mounts::check_target(&volume.container)?;
            let host = host_path(&volume.host, "volume", false, &sockets)?;
            let mode = if volume.read_only { ":ro" } else { "" };
            if runtime::is_sysbox(&spec.runtime) && runtime::owned_by_host_root(&host) {
                unshifted.push(target.clone());
            }
            binds.push(format!("{}:{target}{mode}", host.display()));
            targets.push((
                target,
                format!("-v {}:{}", volume.host.display(), volume.container),
            ));
        }
        mounts::check_duplicates(targets.iter().map(|(t, what)| (t.as_str(), what.as_str())))?;
        let memory = match spec.memory.as_deref() {
            Some(raw) => limits::parse_memory(raw)?,
            None => limits::default_memory(limits::host_memory()?),
        };
        let pids_limit = limits::pids_limit(spec.pids_limit)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let nano_cpus = limits::nano_cpus(spec.cpus, cores)?;

        let info = self
            .docker
            .info()
            .await
            .map_err(Self::docker_error("cannot query the Docker endpoint"))?;
        let available: Vec<String> = info
            .runtimes
            .map(|runtimes| runtimes.into_keys().collect())
            .unwrap_or_default();
        runtime::check_runtime(&spec.runtime, spec.unsafe_runc, &available)?;

        let image = self.resolve_image(&spec.image).await?;
        let mut networks = Vec::new();
        if spec.default_network {
            networks.push(self.default_network());
        }
        for network in &spec.networks {
            crate::config::keys::validate_network_name(network)
                .map_err(|err| ApiError::invalid(err.to_string()))?;
            if self.docker.inspect_network(network, None).await.is_err() {
                return Err(ApiError::invalid(format!(
                    "network `{network}` does not exist; create it with `docker network create {network}`"
                )));
            }
            if !networks.contains(network) {
                networks.push(network.clone());
            }
        }
        // Early, for a quick refusal; the check that counts is under the lock (`reserve`).
        self.check_name_free(&name).await?;
        Ok(Plan {
            name,
            authorized_keys,
            image,
            workspace,
            binds,
            networks,
            memory,
            nano_cpus,
            pids_limit,
            unshifted: runtime::unshifted_binds(unshifted)?,
            project,
        })
    }

    /// The registered project `reference` names, else `reference` as an ad-hoc git URL.
    async fn checkout(&self, reference: &str) -> Result<ProjectCheckout, ApiError> {
        if let Some(source) = &self.options.projects
            && let Some(checkout) = source.checkout(reference).await?
        {
            return Ok(checkout);
        }
        if project::looks_like_git_url(reference) {
            return Ok(project::ad_hoc(reference));
        }
        // `host/org/repo[#branch]`, not registered: cloned over HTTPS without a credential.
        let (base, branch) = match reference.split_once('#') {
            Some((base, branch)) => (base, Some(branch)),
            None => (reference, None),
        };
        match crate::projects::url::RepoUrl::parse(base) {
            Ok(url) => Ok(project::ad_hoc(&match branch {
                Some(branch) => format!("{}#{branch}", url.https_url()),
                None => url.https_url(),
            })),
            Err(_) => Err(ApiError::invalid(format!(
                "no project `{reference}` is registered (`cubbi project list` shows yours); give \
                 a git URL to clone a repository that is not"
            ))),
        }
    }

    /// The owner's config volume for one project (`naming::config_volume_name`), made on first
    /// use and labelled with both; one labelled for another owner or project is refused.
    async fn ensure_config_volume(&self, project_id: &str) -> Result<String, ApiError> {
        let owner = &self.options.owner;
        let name = naming::config_volume_name(owner, project_id);
        let found = self
            .labelled_volume(
                &name,
                &[(labels::PROJECT, project_id)],
                "cannot create the project's config volume",
            )
            .await?;
        let found_owner = found.get(labels::OWNER);
        let found_project = found.get(labels::PROJECT);
        if found_owner == Some(owner) && found_project.map(String::as_str) == Some(project_id) {
            return Ok(name);
        }
        Err(ApiError::Conflict(format!(
            "the config volume {name} is labelled for owner {:?} and project {:?}, not for {owner} \
             and {project_id}; cubbi will not share it. Remove it (`docker volume rm {name}`) if \
             it is stale",
            found_owner, found_project
        )))
    }

    /// `claude-code` means the cubbi image `cubbi-claude-code`; anything else is a Docker
    /// image reference that must exist on the endpoint.
    async fn resolve_image(&self, image: &str) -> Result<ResolvedImage, ApiError> {
        let mut candidates = Vec::new();
        if crate::images::metadata::is_image_name(image) {
            candidates.push(crate::images::metadata::tag_for(image));
        }
        candidates.push(image.to_string());
        for reference in candidates {
            if let Ok(found) = self.docker.inspect_image(&reference).await {
                let metadata = found
                    .config
                    .and_then(|config| config.labels)
                    .and_then(|labels| labels.get(METADATA_LABEL).cloned())
                    .and_then(|json| serde_json::from_str(&json).ok());
                return Ok(ResolvedImage {
                    reference,
                    metadata,
                    size: found.size.unwrap_or(0),
                });
            }
        }
        Err(ApiError::invalid(format!(
            "unknown image `{image}`: it is not built on this endpoint; build it with `cubbi image \
             build {image}` (`cubbi image list` shows the images)"
        )))
    }

    /// The network sessions join unless told otherwise: the configured one, or the owner's own,
    /// which other owners' sessions cannot reach.
    fn default_network(&self) -> String {
        self.options
            .default_network
            .clone()
            .unwrap_or_else(|| naming::owner_network_name(&self.options.owner))
    }

    /// Creates the default network when missing. Docker accepts duplicate network names, so
    /// concurrent creates would each make one; the host lock makes it happen once.
    async fn ensure_network(&self, name: &str, progress: &dyn Progress) -> Result<(), ApiError> {
        if self.docker.inspect_network(name, None).await.is_ok() {
            return Ok(());
        }
        let _lock = self.lock().await?;
        if self.docker.inspect_network(name, None).await.is_ok() {
            return Ok(());
        }
        let mut labels = self.options.extra_labels.clone();
        labels.insert(labels::MANAGED.into(), "true".into());
        if self.options.default_network.is_none() {
            labels.insert(labels::OWNER.into(), self.options.owner.clone());
        }
        let options = self
            .network_bridge(name)
            .await?
            .map(|bridge| HashMap::from([(naming::BRIDGE_NAME_OPTION.to_string(), bridge)]));
        if self.options.default_network.is_none()
            && self
                .docker
                .inspect_network(LEGACY_SHARED_NETWORK, None)
                .await
                .is_ok()
        {
            progress.notice(&format!(
                "Your sessions now join {name}, a network of your own that other users' sessions \
                 cannot reach. Sessions still on the shared {LEGACY_SHARED_NETWORK} keep it until \
                 they are closed."
            ));
        }
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            labels: Some(labels),
            options,
            ..Default::default()
        };
        self.docker
            .create_network(request)
            .await
            .map(|_| ())
            .map_err(|err| ApiError::unavailable(format!("cannot create network {name}: {err}")))
    }

    /// The Linux bridge a new network gets on cubbi's engine: the engine bridge's name plus a
    /// hash of the network's, so the firewall covers it and isolates it from the other networks.
    /// `None` on an engine cubbi does not own (the host Docker's `docker0`), where Docker names
    /// it. Two networks never share a bridge: a clash of hashes is refused.
    async fn network_bridge(&self, network: &str) -> Result<Option<String>, ApiError> {
        let engine_bridge = self
            .docker
            .inspect_network("bridge", None)
            .await
            .ok()
            .and_then(|found| found.options)
            .and_then(|options| options.get(naming::BRIDGE_NAME_OPTION).cloned());
        let Some(engine_bridge) = engine_bridge.filter(|bridge| bridge != "docker0") else {
            return Ok(None);
        };
        let Some(bridge) = naming::network_bridge_name(&engine_bridge, network) else {
            return Err(ApiError::unavailable(format!(
                "the engine's bridge `{engine_bridge}` is longer than {} characters, which leaves \
                 no room to name network bridges its firewall covers; re-run `sudo cubbi setup \
                 --bridge cubbi0`",
                naming::MAX_ENGINE_BRIDGE
            )));
        };
        let existing = self
            .docker
            .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
            .await
            .map_err(Self::docker_error("cannot list the networks"))?;
        if let Some(holder) = existing.iter().find(|other| {
            other
                .options
                .as_ref()
                .and_then(|options| options.get(naming::BRIDGE_NAME_OPTION))
                == Some(&bridge)
        }) {
            return Err(ApiError::Conflict(format!(
                "network {network} would use the bridge {bridge}, which network {} has already",
                holder.name.as_deref().unwrap_or("?")
            )));
        }
        Ok(Some(bridge))
    }

    /// A session Docker calls unhealthy whose status files report no failure: the check's
    /// exec timed out (a host busy booting many sessions), so its state is what Docker's state
    /// and the container's name say, as if it had no health check.
    async fn state_despite_health(&self, id: &str, name: &str) -> SessionState {
        let Ok(container) = self.docker.inspect_container(id, None).await else {
            return SessionState::Exited;
        };
        let running = container
            .state
            .as_ref()
            .and_then(|state| state.running)
            .unwrap_or(false);
        let booted = container.name.as_deref().map(|n| n.trim_start_matches('/'))
            == Some(labels::container_name(name).as_str());
        match (running, booted) {
            (true, true) => SessionState::Ready,
            (true, false) => SessionState::Starting,
            (false, _) => SessionState::Exited,
        }
    }

    /// Takes the host-wide allocation lock (bounded wait, see [`ports::PortLock`]).
    async fn lock(&self) -> Result<ports::PortLock, ApiError> {
        let location = self.options.port_lock.clone();
        let timeout = self.options.lock_timeout;
        tokio::task::spawn_blocking(move || ports::PortLock::acquire(&location, timeout))
            .await
            .map_err(|err| ApiError::unavailable(err.to_string()))?
    }

    /// The owner's data volume: `cubbi-data-NAME-HASH` (one per exact owner), or the volume of
    /// the old scheme (`cubbi-data-NAME`) when it exists and is labelled with exactly this
    /// owner, so data made before the change stays. A volume of that name owned by someone
    /// else is refused, never shared.
    async fn ensure_data_volume(&self) -> Result<String, ApiError> {
        let owner = &self.options.owner;
        let legacy = naming::legacy_data_volume_name(owner);
        if let Ok(existing) = self.docker.inspect_volume(&legacy).await
            && existing.labels.get(labels::OWNER) == Some(owner)
        {
            return Ok(legacy);
        }
        let name = naming::data_volume_name(owner);
        let found = self
            .labelled_volume(&name, &[], "cannot create the data volume")
            .await?;
        match found.get(labels::OWNER) {
            Some(found) if found == owner => Ok(name),
            found => Err(ApiError::Conflict(format!(
                "the data volume {name} belongs to {}, not to {owner}; cubbi will not share it. \
                 Remove or rename it (`docker volume rm {name}`) if it is stale",
                found.map_or_else(
                    || "nobody cubbi knows (it has no owner label)".to_string(),
                    |o| format!("`{o}`")
                )
            ))),
        }
    }

    /// Creates the volume `name` labelled managed, with this owner and `extra`, and returns the
    /// labels it has: creating an existing volume returns it as it is, so the caller checks
    /// whose it is before using it.
    async fn labelled_volume(
        &self,
        name: &str,
        extra: &[(&str, &str)],
        failure: &'static str,
    ) -> Result<HashMap<String, String>, ApiError> {
        let mut labels = self.options.extra_labels.clone();
        labels.insert(labels::MANAGED.into(), "true".into());
        labels.insert(labels::OWNER.into(), self.options.owner.clone());
        for (key, value) in extra {
            labels.insert(key.to_string(), value.to_string());
        }
        let request = VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..Default::default()
        };
        let volume = self
            .docker
            .create_volume(request)
            .await
            .map_err(Self::docker_error(failure))?;
        Ok(volume.labels)
    }

    /// Containers in any state matching every `key` (`label`, `name`) filter in `values`.
    async fn containers(
        &self,
        key: &str,
        values: &[String],
    ) -> Result<Vec<ContainerSummary>, ApiError> {
        let filter = HashMap::from([(key, values.to_vec())]);
        self.docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filter)
                    .build(),
            ))
            .await
            .map_err(Self::docker_error("cannot list containers"))
    }

    /// Refuses a name a session of any owner has, or a container Docker knows as
    /// `cubbi-NAME` or `cubbi-NAME.booting` (cubbi's or not).
    async fn check_name_free(&self, name: &str) -> Result<(), ApiError> {
        let by_label = self
            .containers(
                "label",
                &[
                    format!("{}={name}", labels::NAME),
                    format!("{}=true", labels::SESSION),
                ],
            )
            .await?;
        if !by_label.is_empty() {
            return Err(ApiError::Conflict(format!(
                "a session named `{name}` exists already; pick another --name or close it first"
            )));
        }
        let wanted = [
            format!("/{}", labels::container_name(name)),
            format!("/{}", labels::booting_container_name(name)),
        ];
        // Docker's name filter is a substring/regex match; compare exactly here.
        let by_name = self
            .containers("name", &[labels::container_name(name)])
            .await?;
        if let Some(taken) = by_name
            .iter()
            .flat_map(|c| c.names.iter().flatten())
            .find(|n| wanted.contains(n))
        {
            return Err(ApiError::Conflict(format!(
                "a container named {} exists already on this endpoint; pick another --name, or \
                 remove that container",
                taken.trim_start_matches('/')
            )));
        }
        Ok(())
    }

    /// Ports held by any cubbi session, in any state and of any owner.
    async fn taken_ports(&self) -> Result<BTreeSet<u16>, ApiError> {
        Ok(self
            .containers("label", &[labels::SSH_PORT.to_string()])
            .await?
            .iter()
            .filter_map(|c| c.labels.as_ref()?.get(labels::SSH_PORT)?.parse().ok())
            .collect())
    }

    fn container_body(
        &self,
        spec: &SessionSpec,
        plan: &Plan,
        session_labels: &SessionLabels,
        data_volume: &str,
    ) -> ContainerCreateBody {
        let mut all_labels = session_labels.to_map();
        all_labels.extend(self.options.extra_labels.clone());
        let mut binds = plan.binds.clone();
        // A project session keeps its configs per project, never in the owner's data volume
        // (which other projects' sessions see).
        let data_path = if plan.project.is_some() {
            CONFIG_VOLUME_PATH
        } else {
            DATA_VOLUME_PATH
        };
        binds.push(format!("{data_volume}:{data_path}"));
        let port_bindings = HashMap::from([(
            "22/tcp".to_string(),
            Some(vec![PortBinding {
                host_ip: Some(spec.ssh_bind.to_string()),
                host_port: Some(session_labels.ssh_port.to_string()),
            }]),
        )]);
        let mut host = HostConfig {
            binds: Some(binds),
            port_bindings: Some(port_bindings),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            runtime: Some(spec.runtime.clone()),
            memory: Some(plan.memory),
            // Swap as large as the memory limit (Docker's MemorySwap counts both).
            memory_swap: Some(plan.memory.saturating_mul(2)),
            nano_cpus: Some(plan.nano_cpus),
            pids_limit: Some(plan.pids_limit),
            network_mode: plan.networks.first().cloned(),
            storage_opt: self.options.disk_limit.map(|limit| {
                HashMap::from([(
                    "size".to_string(),
                    limit.storage_size(plan.image.size).to_string(),
                )])
            }),
            ..Default::default()
        };
        let mut volumes = Vec::new();
        if runtime::is_plain_runc(&spec.runtime) {
            runtime::apply_unsafe_runc(&mut host);
            volumes.push(runtime::INNER_DOCKER_ROOT.to_string());
        }
        // The owner's sessions reach each other by session name, not only by the container's
        // (`cubbi-NAME`). Only on the owner's own network: on a shared one, the name could
        // shadow something other users' sessions reach by that name.
        let owners_network = spec.default_network && self.options.default_network.is_none();
        let networking_config = owners_network.then(|| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                self.default_network(),
                EndpointSettings {
                    aliases: Some(vec![plan.name.clone()]),
                    ..Default::default()
                },
            )])),
        });
        ContainerCreateBody {
            env: runtime::skip_uid_shift_env(&plan.unshifted).map(|var| vec![var]),
            hostname: Some(plan.name.clone()),
            networking_config,
            image: Some(plan.image.reference.clone()),
            labels: Some(all_labels),
            exposed_ports: Some(vec!["22/tcp".to_string()]),
            volumes: Some(volumes),
            host_config: Some(host),
            healthcheck: Some(status_healthcheck()),
            ..Default::default()
        }
    }

    /// Under the host-wide lock: checks the name is free, picks a port no session holds and
    /// nothing has bound, and creates the container, whose name and labels are from then on
    /// the reservation of both.
    async fn reserve(
        &self,
        spec: &SessionSpec,
        plan: &Plan,
        host_public: &str,
        data_volume: &str,
        avoid: &BTreeSet<u16>,
        progress: &dyn Progress,
    ) -> Result<Reservation, ApiError> {
        let lock = self.lock().await?;
        self.check_name_free(&plan.name).await?;
        let mut taken = self.taken_ports().await?;
        taken.extend(avoid);
        let port =
            ports::pick_free_port(self.options.ports, &taken, spec.ssh_bind, ports::can_bind)?;
        let created_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let session_labels = SessionLabels {
            name: plan.name.clone(),
            owner: self.options.owner.clone(),
            image: plan.image.reference.clone(),
            ssh_port: port,
            ssh_bind: spec.ssh_bind.to_string(),
            host_key: host_public.to_string(),
            workspace: plan.workspace.as_ref().map(|p| p.display().to_string()),
            created: created_at,
            command: plan
                .image
                .metadata
                .as_ref()
                .map(|m| m.command.clone())
                .unwrap_or_else(|| vec!["bash".into(), "-l".into()]),
        };
        progress.step(CreateStep::CreatingContainer);
        let body = self.container_body(spec, plan, &session_labels, data_volume);
        let options = CreateContainerOptionsBuilder::new()
            .name(&labels::booting_container_name(&plan.name))
            .build();
        let created = self.docker.create_container(Some(options), body).await;
        drop(lock);
        match created {
            Ok(created) => Ok(Reservation {
                id: created.id,
                labels: session_labels,
                ssh_files_written: false,
                settled: false,
            }),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                message,
            }) => Err(ApiError::Conflict(format!(
                "a container named cubbi-{} exists already: {message}",
                plan.name
            ))),
            Err(err) => Err(ApiError::Failed {
                step: CreateStep::CreatingContainer.to_string(),
                reason: err.to_string(),
                logs: Vec::new(),
            }),
        }
    }

    /// Steps 4-8 of a create, after the reservation: anything failing here is undone by the
    /// caller through the reservation.
    async fn boot(
        &self,
        reservation: &mut Reservation,
        spec: &SessionSpec,
        plan: &Plan,
        host_key: &PrivateKey,
        progress: &dyn Progress,
    ) -> Result<(), BootError> {
        let id = reservation.id.clone();
        let id = id.as_str();
        let session_labels = &reservation.labels.clone();
        progress.step(CreateStep::CopyingFiles);
        for network in plan.networks.iter().skip(1) {
            let request = NetworkConnectRequest {
                container: id.to_string(),
                ..Default::default()
            };
            self.docker
                .connect_network(network, request)
                .await
                .map_err(|err| BootError::Step {
                    step: CreateStep::CreatingContainer,
                    reason: format!("joining {network}: {err}"),
                })?;
        }
        let metadata = plan.image.metadata.clone();
        let mut env = BTreeMap::new();
        for declaration in metadata.iter().flat_map(|m| m.environment.iter()) {
            if let Some(default) = &declaration.default {
                env.insert(declaration.name.clone(), default.clone());
            }
        }
        env.extend(spec.env.clone());
        let mut init = BTreeMap::new();
        let mut persistent = metadata
            .as_ref()
            .map(|m| m.persistent_configs.clone())
            .unwrap_or_default();
        let no_credentials = project::CredentialFiles::default();
        let mut credentials = &no_credentials;
        if let Some((checkout, files)) = &plan.project {
            credentials = files;
            init.insert("CUBBI_PROJECT_URL".to_string(), checkout.url.clone());
            if let Some(branch) = &checkout.branch {
                init.insert("CUBBI_PROJECT_BRANCH".to_string(), branch.clone());
            }
            // A registered project's init.sh was vouched for when it was registered; an
            // ad-hoc URL's is anyone's code, run only when asked.
            if checkout.registered || spec.run_init {
                init.insert("CUBBI_PROJECT_RUN_INIT".to_string(), "1".to_string());
            }
            if checkout.registered {
                init.insert("CUBBI_PROJECT_REGISTERED".to_string(), "1".to_string());
            }
            // What the agent sees: the URL without any secret, and where its configs persist.
            let image_name = metadata.as_ref().map_or_else(
                || {
                    naming::sanitize_hostname(&plan.image.reference)
                        .unwrap_or_else(|| "image".into())
                },
                |m| m.name.clone(),
            );
            env.insert(
                "CUBBI_PROJECT_URL".to_string(),
                project::public_url(&checkout.url),
            );
            env.insert("CUBBI_PROJECT_TYPE".to_string(), "git".to_string());
            env.insert(
                "CUBBI_CONFIG_DIR".to_string(),
                CONFIG_VOLUME_PATH.to_string(),
            );
            env.insert(
                "CUBBI_IMAGE_CONFIG_DIR".to_string(),
                format!("{CONFIG_VOLUME_PATH}/{image_name}"),
            );
            persistent = project::retarget(&persistent, &image_name);
        }
        init.insert("CUBBI_SESSION_NAME".to_string(), plan.name.clone());
        let host_private = keys::private_openssh(host_key)
            .map_err(|e| BootError::at(CreateStep::PreparingKeys)(e.to_string()))?;
        let own = keys::public_openssh(self.options.client_key.public_key())
            .map_err(|e| BootError::at(CreateStep::PreparingKeys)(e.to_string()))?;
        let authorized = std::iter::once(own)
            .chain(plan.authorized_keys.iter().cloned())
            .collect::<Vec<_>>()
            .join("\n");
        let archive = upload::archive(&upload::SessionFiles {
            host_private_key: &host_private,
            host_public_key: &session_labels.host_key,
            authorized_key: &authorized,
            env: &env,
            init: &init,
            persistent_configs: &persistent,
            project_credentials: credentials,
        })
        .map_err(|e| BootError::at(CreateStep::CopyingFiles)(e.to_string()))?;
        self.docker
            .upload_to_container(
                id,
                Some(UploadToContainerOptionsBuilder::new().path("/").build()),
                bollard::body_full(archive.into()),
            )
            .await
            .map_err(|e| BootError::at(CreateStep::CopyingFiles)(e.to_string()))?;

        progress.step(CreateStep::Starting);
        if let Err(err) = self.docker.start_container(id, None).await {
            // Our container failed to start, so it holds no port: if the port cannot be bound
            // now, something outside the lock took it.
            let address = std::net::SocketAddr::new(spec.ssh_bind, session_labels.ssh_port);
            if !ports::can_bind(address) {
                return Err(BootError::PortTaken(session_labels.ssh_port));
            }
            let reason = err.to_string();
            if reason.contains("programming external connectivity") {
                return Err(BootError::Publishing {
                    port: session_labels.ssh_port,
                    reason,
                });
            }
            return Err(BootError::at(CreateStep::Starting)(reason));
        }

        progress.step(CreateStep::WaitingForSsh);
        let target = SshTarget {
            address: format!(
                "{}:{}",
                session_labels.connect_host(),
                session_labels.ssh_port
            ),
            user: labels::AGENT_USER.to_string(),
            client_key: self.options.client_key.clone(),
            host_key: host_key.public_key().clone(),
        };
        // A container restarting under its restart policy is not booting: it died.
        let ready = self.wait_for_sshd(&target, id, 0).await;
        if let Err(err) = ready {
            return Err(BootError::Step {
                step: CreateStep::WaitingForSsh,
                reason: self.explain_boot_failure(id, err.to_string()).await,
            });
        }

        if let Some(files) = &self.options.ssh_files {
            progress.step(CreateStep::WritingSshConfig);
            let endpoint = session_labels
                .clone()
                .into_session(id.to_string(), SessionState::Ready)
                .ssh;
            // Set first: a write that fails half-way is undone too.
            reservation.ssh_files_written = true;
            files
                .write_session(&plan.name, &endpoint)
                .map_err(|e| BootError::at(CreateStep::WritingSshConfig)(e.to_string()))?;
        }
        Ok(())
    }

    /// Records in Docker itself that the session became ready, by renaming its container from
    /// `cubbi-NAME.booting` to `cubbi-NAME`: `list` then reads readiness from one `docker ps`
    /// instead of probing every session, and a create that died half-way stays recognisable.
    async fn mark_ready(&self, id: &str, name: &str) -> Result<(), BootError> {
        let options = RenameContainerOptionsBuilder::new()
            .name(&labels::container_name(name))
            .build();
        self.docker
            .rename_container(id, options)
            .await
            .map_err(|err| BootError::Step {
                step: CreateStep::WaitingForSsh,
                reason: format!(
                    "session {name} became ready but its container could not take the name {}: {err}",
                    labels::container_name(name)
                ),
            })
    }

    /// Says why a session never answered when its container died while booting.
    async fn explain_boot_failure(&self, id: &str, reason: String) -> String {
        let Ok(container) = self.docker.inspect_container(id, None).await else {
            return reason;
        };
        let restarts = container.restart_count.unwrap_or(0);
        let state = container.state.unwrap_or_default();
        if restarts == 0 && state.running == Some(true) {
            return reason;
        }
        format!(
            "the container exited (code {}) before sshd was up{}; `cubbi doctor` checks the host \
             limits systemd needs",
            state.exit_code.unwrap_or(-1),
            if restarts > 0 {
                format!(" and was restarted {restarts} times")
            } else {
                String::new()
            }
        )
    }

    /// The last lines of a container's console, for failure messages.
    async fn console_tail(&self, id: &str, lines: u64) -> Vec<String> {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let chunks: Vec<_> = self
            .docker
            .logs(id, Some(options))
            .take(500)
            .collect()
            .await;
        chunks
            .into_iter()
            .filter_map(Result::ok)
            .map(|chunk| chunk.to_string())
            .collect::<String>()
            .lines()
            .map(|line| line.trim_end().to_string())
            .filter(|line| !line.is_empty())
            .collect()
    }

    async fn remove(&self, id: &str) -> Result<(), ApiError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(err) => Err(ApiError::unavailable(format!(
                "cannot remove container {id}: {err}"
            ))),
        }
    }

    /// What the container reported back (runtime/CONTRACT.md): cubbi-init's and the project
    /// clone's status lines, read with one exec; `None` for a file not written yet.
    async fn reported_status(&self, id: &str) -> (Option<String>, Option<String>) {
        let script = "for f in init-status project-status; do \
                      s=$(head -n 1 \"/var/lib/cubbi/$f\" 2>/dev/null); printf '%s=%s\\n' \"$f\" \"$s\"; \
                      done";
        // The session's root controls what this runs: bounded, and unknown when it misbehaves.
        match session_exec::run_bounded(
            &self.docker,
            id,
            vec!["sh", "-c", script],
            None,
            ExecBounds::STATUS,
        )
        .await
        {
            Ok(captured) => parse_reported_status(&captured.stdout),
            Err(err) => {
                tracing::debug!(session = id, "reading the session's status: {err}");
                (None, None)
            }
        }
    }

    /// One session by exact name or id, else by a unique prefix of either: one `docker ps`,
    /// without the exec `get` spends on the init status (connect, exec, logs and close do not
    /// need it).
    async fn find(&self, id_or_name: &str) -> Result<Session, ApiError> {
        if id_or_name.is_empty() {
            return Err(ApiError::invalid("give a session id or name"));
        }
        let sessions = self.list().await?;
        let exact: Vec<&Session> = sessions
            .iter()
            .filter(|s| s.name == id_or_name || s.id == id_or_name)
            .collect();
        let matches: Vec<&Session> = if exact.is_empty() {
            sessions
                .iter()
                .filter(|s| s.id.starts_with(id_or_name) || s.name.starts_with(id_or_name))
                .collect()
        } else {
            exact
        };
        match matches.as_slice() {
            [] => Err(ApiError::NotFound(id_or_name.to_string())),
            [one] => Ok((*one).clone()),
            many => Err(ApiError::Ambiguous {
                prefix: id_or_name.to_string(),
                candidates: many
                    .iter()
                    .map(|s| format!("{} ({})", &s.id[..s.id.len().min(12)], s.name))
                    .collect(),
            }),
        }
    }

    fn ssh_target(&self, session: &Session) -> Result<SshTarget, ApiError> {
        let host_key = keys::parse_public(&session.ssh.host_key).map_err(|err| {
            ApiError::unavailable(format!(
                "the session's pinned host key is unreadable: {err}"
            ))
        })?;
        Ok(SshTarget {
            address: format!("{}:{}", session.ssh.host, session.ssh.port),
            user: session.ssh.user.clone(),
            client_key: self.options.client_key.clone(),
            host_key,
        })
    }

    /// A session one can log in to (ready, or ready with a failed init).
    async fn ready(&self, id_or_name: &str) -> Result<Session, ApiError> {
        let session = self.find(id_or_name).await?;
        if !matches!(
            session.state,
            SessionState::Ready | SessionState::InitFailed
        ) {
            return Err(ApiError::Conflict(format!(
                "session {} is {}, not ready; `cubbi session logs {}` shows why",
                session.name, session.state, session.name
            )));
        }
        Ok(session)
    }

    /// Appends a canonical key line to the agent's authorized_keys, once. The key is an
    /// argument of the script, never part of its text.
    async fn authorize(&self, id: &str, key: &str) -> Result<(), ApiError> {
        let script = "f=/home/agent/.ssh/authorized_keys; grep -qxF -- \"$1\" \"$f\" 2>/dev/null \
                      || printf '%s\\n' \"$1\" >> \"$f\"";
        let failed =
            |err: String| ApiError::unavailable(format!("cannot authorize the key: {err}"));
        let captured = session_exec::run_bounded(
            &self.docker,
            id,
            vec!["sh", "-c", script, "sh", key],
            Some("1000:1000"),
            ExecBounds::AUTHORIZE,
        )
        .await
        .map_err(|err| failed(format!("the session's shell: {err}")))?;
        match captured.exit_code {
            Some(0) => Ok(()),
            other => Err(failed(format!("the session's shell exited with {other:?}"))),
        }
    }

    /// Connects to a ready session over SSH (for `exec`).
    pub async fn ssh(&self, id_or_name: &str) -> Result<(Session, SshSession), ApiError> {
        let session = self.ready(id_or_name).await?;
        let target = self.ssh_target(&session)?;
        let connected = SshSession::connect(&target, Duration::from_secs(10))
            .await
            .map_err(|err| ApiError::unavailable(err.to_string()))?;
        Ok((session, connected))
    }
}

/// A session's state from one `docker ps` row: the container name says whether its create
/// saw sshd accept the key (see [`Self::mark_ready`]).
pub(super) fn session_from(summary: &ContainerSummary) -> Option<Session> {
    let labels = SessionLabels::from_map(summary.labels.as_ref()?)?;
    let booted = summary
        .names
        .iter()
        .flatten()
        .any(|name| name.trim_start_matches('/') == labels::container_name(&labels.name));
    let docker_state = state::docker_state(
        &summary
            .state
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        summary.status.as_deref().unwrap_or_default(),
    );
    let session_state = state::session_state(docker_state, booted);
    Some(labels.into_session(summary.id.clone()?, session_state))
}

/// Whether cubbi-init or the project clone wrote a `failed` status.
fn reports_failure(init: &Option<String>, project: &Option<String>) -> bool {
    [init, project]
        .iter()
        .any(|status| status.as_deref().is_some_and(|s| s.starts_with("failed")))
}

/// Docker's health check of a session: unhealthy once cubbi-init or the project clone (or its
/// init.sh) wrote a `failed` status, so `docker ps`, and so `session list`, shows
/// `init-failed` without an exec per session (see [`state::session_state`]).
fn status_healthcheck() -> HealthConfig {
    const SECOND: i64 = 1_000_000_000;
    HealthConfig {
        test: Some(vec![
            "CMD".into(),
            "/bin/sh".into(),
            "-c".into(),
            "! grep -qs '^failed' /var/lib/cubbi/init-status /var/lib/cubbi/project-status".into(),
        ]),
        // Each check is an exec in the session: every 15 s keeps 50 sessions near 3 a second,
        // and `show` reads the status directly, without waiting for a check.
        interval: Some(15 * SECOND),
        // A busy host can take seconds to start an exec; a slow check is not a failed boot
        // (and `list` confirms an unhealthy session from its status files anyway).
        timeout: Some(30 * SECOND),
        retries: Some(2),
        ..Default::default()
    }
}

/// A host path given by the user: absolute, existing, never a socket, and never a folder
/// holding a container engine's or D-Bus's socket (see [`mounts::check_source`]).
fn host_path(
    path: &Path,
    what: &str,
    must_be_dir: bool,
    sockets: &[PathBuf],
) -> Result<PathBuf, ApiError> {
    if !path.is_absolute() {
        return Err(ApiError::invalid(format!(
            "{what} path `{}` must be absolute (try `$PWD/{}`)",
            path.display(),
            path.display()
        )));
    }
    let resolved = path.canonicalize().map_err(|err| {
        ApiError::invalid(format!(
            "{what} path `{}` cannot be used: {err}",
            path.display()
        ))
    })?;
    if must_be_dir && !resolved.is_dir() {
        return Err(ApiError::invalid(format!(
            "{what} `{}` is not a folder",
            path.display()
        )));
    }
    mounts::check_source(path, &resolved, sockets)?;
    Ok(resolved)
}

/// `init-status=LINE` and `project-status=LINE`, as [`LocalBackend::reported_status`] prints
/// them; an empty line is a file not written yet.
fn parse_reported_status(text: &str) -> (Option<String>, Option<String>) {
    let mut init = None;
    let mut project = None;
    for line in text.lines() {
        let Some((file, status)) = line.split_once('=') else {
            continue;
        };
        let status = status.trim();
        let status = (!status.is_empty()).then(|| status.to_string());
        match file {
            "init-status" => init = status,
            "project-status" => project = status,
            _ => {}
        }
    }
    (init, project)
}

#[async_trait]
impl Backend for LocalBackend {
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
                    self.containers("label", &filters)
                        .await?
                        .iter()
                        .filter_map(session_from)
                        .collect()
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
        let inspected = self.docker.inspect_container(&session.id, None).await.ok();
        session.resources = inspected
            .as_ref()
            .and_then(|container| container.host_config.as_ref())
            .map(|host| Resources {
                memory: host.memory.filter(|m| *m > 0),
                memory_swap: host.memory_swap.filter(|m| *m > 0),
                cpus: host.nano_cpus.filter(|n| *n > 0).map(|n| n as f64 / 1e9),
                pids_limit: host.pids_limit.filter(|p| *p > 0),
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

    async fn close(&self, id_or_name: &str) -> Result<Session, ApiError> {
        let session = self.find(id_or_name).await?;
        let options = StopContainerOptionsBuilder::new()
            .t(STOP_TIMEOUT_SECS)
            .build();
        // A container that is not running needs no stop; a failing stop is followed by a
        // forced removal anyway.
        let _ = self.docker.stop_container(&session.id, Some(options)).await;
        self.remove(&session.id).await?;
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
        let stream = self
            .docker
            .logs(&session.id, Some(docker_options))
            .map_ok(|chunk| LogChunk {
                text: chunk.to_string(),
            })
            .map_err(|err| ApiError::unavailable(format!("reading logs: {err}")));
        Ok(Box::pin(stream))
    }

    async fn connect(&self, id_or_name: &str, public_key: &str) -> Result<Session, ApiError> {
        let key =
            keys::canonical_public(public_key).map_err(|err| ApiError::invalid(err.to_string()))?;
        let session = self.ready(id_or_name).await?;
        let own = keys::canonical_public(
            &keys::public_openssh(self.options.client_key.public_key())
                .map_err(|err| ApiError::unavailable(err.to_string()))?,
        )
        .map_err(|err| ApiError::unavailable(err.to_string()))?;
        if key != own {
            self.authorize(&session.id, &key).await?;
        }
        Ok(session)
    }

    async fn exec(
        &self,
        id_or_name: &str,
        command: Vec<String>,
    ) -> Result<BoxStream<'static, Result<ExecEvent, ApiError>>, ApiError> {
        if command.is_empty() {
            return Err(ApiError::invalid(
                "give a command to run, e.g. `cubbi session exec NAME -- ls`",
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::parse_reported_status;

    #[test]
    fn reported_status_lines() {
        assert_eq!(
            parse_reported_status(
                "init-status=done\nproject-status=failed: git clone (exit 128): fatal: x=y\n"
            ),
            (
                Some("done".into()),
                Some("failed: git clone (exit 128): fatal: x=y".into())
            )
        );
        assert_eq!(
            parse_reported_status("init-status=done\nproject-status=\n"),
            (Some("done".into()), None)
        );
        assert_eq!(parse_reported_status(""), (None, None));
    }
}
