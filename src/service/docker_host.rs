//! The real [`SessionHost`]: sessions on the service's Docker endpoint through the local
//! backend, one per caller, reading from a shared [`SessionIndex`]. Service users own their
//! sessions under `serve:USER`, a namespace no local account can have (`:` is not allowed in
//! user names), so a service user named like a local account never sees that account's
//! sessions or data volume.

use std::sync::Arc;

use async_trait::async_trait;
use bollard::Docker;

use super::projects::ServiceProjects;
use super::router::SessionHost;
use super::store::Caller;
use crate::api::wire::ImageInfo;
use crate::api::{
    ApiError, Backend, DataSummary, EgressView, ExecEvent, IdleStopped, LogChunk, LogOptions,
    Progress, Session, SessionSpec, Snapshot,
};
use crate::images::Catalog;
use crate::local::backend::{LocalBackend, LocalOptions};
use crate::local::index::SessionIndex;
use crate::swarm::{SwarmBackend, SwarmOptions};
use futures_util::stream::BoxStream;

const OWNER_PREFIX: &str = "serve:";

pub struct DockerHost {
    docker: Docker,
    /// Set when sessions are services of a Swarm managed through `docker`.
    swarm: Option<SwarmShared>,
    /// Everything but the owner, which each caller sets.
    template: LocalOptions,
    index: Arc<SessionIndex>,
    /// Images offered; empty offers every cubbi image.
    images: Vec<String>,
    /// Every user's registered projects.
    projects: ServiceProjects,
    /// Where each user's MCP registry lives (a file per user, 0600).
    mcp_dir: std::path::PathBuf,
}

impl DockerHost {
    pub fn new(
        docker: Docker,
        template: LocalOptions,
        index: Arc<SessionIndex>,
        images: Vec<String>,
        projects: ServiceProjects,
        mcp_dir: std::path::PathBuf,
    ) -> Self {
        Self {
            docker,
            swarm: None,
            template,
            index,
            images,
            projects,
            mcp_dir,
        }
    }

    /// Sessions become services of the Swarm `self.docker` manages, placed over its nodes.
    pub fn on_swarm(mut self, shared: SwarmShared) -> Self {
        self.swarm = Some(shared);
        self
    }

    /// The owner label of a service user's sessions.
    pub fn owner_label(user: &str) -> String {
        format!("{OWNER_PREFIX}{user}")
    }
}

#[async_trait]
impl SessionHost for DockerHost {
    type Sessions = EngineSessions;

    fn sessions_of(&self, caller: &Caller) -> EngineSessions {
        let options = LocalOptions {
            owner: Self::owner_label(&caller.user),
            all_owners: caller.admin,
            index: Some(Arc::clone(&self.index)),
            // `--project NAME` clones with the caller's own registered credentials (an
            // admin's too: projects are never shared).
            projects: Some(Arc::new(self.projects.of_user(&caller.user))),
            ..self.template.clone()
        };
        let local = LocalBackend::new(self.docker.clone(), options);
        match &self.swarm {
            None => EngineSessions::Local(local),
            Some(shared) => EngineSessions::Swarm(SwarmBackend::new(
                Arc::new(self.docker.clone()),
                local,
                SwarmOptions {
                    owner: Self::owner_label(&caller.user),
                    all_owners: caller.admin,
                    ports: self.template.ports,
                    client_key: Arc::clone(&self.template.client_key),
                    ready_timeout: self.template.ready_timeout,
                    placement: Arc::clone(&shared.placement),
                    cache: Arc::clone(&shared.sessions),
                },
            )),
        }
    }

    async fn changed(&self, id: &str) {
        self.index.refresh(id).await;
    }

    async fn fill_pool(&self) -> Result<Vec<crate::local::backend::Filled>, ApiError> {
        if self.swarm.is_some() {
            // Refused at config time; a pool on a Swarm is not built.
            return Ok(Vec::new());
        }
        // Members have no owner; the backend's own is never used by a fill.
        LocalBackend::new(self.docker.clone(), self.template.clone())
            .fill_pool()
            .await
    }

    async fn images(&self) -> Result<Vec<ImageInfo>, ApiError> {
        let catalog = Catalog::embedded().map_err(|err| ApiError::unavailable(err.to_string()))?;
        let mut offered = Vec::new();
        for image in catalog.all() {
            let metadata = &image.metadata;
            if !self.images.is_empty() && !self.images.contains(&metadata.name) {
                continue;
            }
            let tag = metadata.default_tag();
            let built = self.docker.inspect_image(&tag).await.is_ok();
            offered.push(ImageInfo {
                name: metadata.name.clone(),
                description: metadata.description.clone(),
                tag,
                built,
                tool_version: metadata.tool_version.clone(),
                metadata: serde_json::to_value(metadata).ok(),
            });
        }
        Ok(offered)
    }

    async fn engine_runtimes(&self) -> Result<Option<Vec<String>>, ApiError> {
        if self.swarm.is_some() {
            // A node's default runtime is every session's there: the nodes' labels say which.
            let nodes = self.docker.list_nodes(None).await.map_err(|err| {
                ApiError::unavailable(format!("cannot list the Swarm's nodes: {err}"))
            })?;
            let mut runtimes: Vec<String> = nodes
                .iter()
                .filter_map(crate::swarm::record::node_view)
                .filter(|node| node.ready && node.active)
                .filter_map(|node| node.runtime)
                .collect();
            runtimes.sort();
            runtimes.dedup();
            return Ok(Some(runtimes));
        }
        let info = self.docker.info().await.map_err(|err| {
            ApiError::unavailable(format!("cannot query the Docker endpoint: {err}"))
        })?;
        Ok(Some(
            info.runtimes
                .map(|runtimes| runtimes.into_keys().collect())
                .unwrap_or_default(),
        ))
    }

    fn run_key(&self) -> Option<Arc<russh::keys::PrivateKey>> {
        Some(Arc::clone(&self.template.client_key))
    }

    fn projects_of(&self, caller: &Caller) -> Result<crate::projects::ProjectStore, ApiError> {
        Ok(self.projects.of_user(&caller.user))
    }

    fn mcp_of(&self, caller: &Caller) -> Result<crate::mcp::registry::McpRegistry, ApiError> {
        Ok(super::mcp_routes::registry_of(&self.mcp_dir, &caller.user))
    }

    fn present_snapshot(&self, mut snapshot: crate::api::Snapshot) -> crate::api::Snapshot {
        if let Some(user) = snapshot.owner.strip_prefix(OWNER_PREFIX) {
            snapshot.owner = user.to_string();
        }
        snapshot
    }

    fn sessions_on_many_hosts(&self) -> bool {
        self.swarm.is_some()
    }

    fn present(&self, mut session: Session) -> Session {
        if let Some(user) = session.owner.strip_prefix(OWNER_PREFIX) {
            session.owner = user.to_string();
        }
        session
    }
}

/// What every caller's Swarm backend shares.
#[derive(Clone, Default)]
pub struct SwarmShared {
    /// One create at a time from reading the nodes to making the service.
    pub placement: Arc<tokio::sync::Mutex<()>>,
    /// The last read of every session on the Swarm.
    pub sessions: Arc<crate::swarm::SessionsCache>,
}

/// A caller's sessions: on the one engine, or on the Swarm it manages.
pub enum EngineSessions {
    Local(LocalBackend),
    Swarm(SwarmBackend),
}

/// Forwards a [`Backend`] call to whichever backend this is.
macro_rules! forward {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            EngineSessions::Local(backend) => backend.$method($($arg),*).await,
            EngineSessions::Swarm(backend) => backend.$method($($arg),*).await,
        }
    };
}

#[async_trait]
impl Backend for EngineSessions {
    async fn create(
        &self,
        spec: SessionSpec,
        progress: &dyn Progress,
    ) -> Result<Session, ApiError> {
        forward!(self.create(spec, progress))
    }
    async fn list(&self) -> Result<Vec<Session>, ApiError> {
        forward!(self.list())
    }
    async fn get(&self, id_or_name: &str) -> Result<Session, ApiError> {
        forward!(self.get(id_or_name))
    }
    async fn stop(&self, id_or_name: &str) -> Result<Session, ApiError> {
        forward!(self.stop(id_or_name))
    }
    async fn start(&self, id_or_name: &str) -> Result<Session, ApiError> {
        forward!(self.start(id_or_name))
    }
    async fn snapshot(&self, id_or_name: &str, name: Option<String>) -> Result<Snapshot, ApiError> {
        forward!(self.snapshot(id_or_name, name))
    }
    async fn snapshots(&self) -> Result<Vec<Snapshot>, ApiError> {
        forward!(self.snapshots())
    }
    async fn remove_snapshot(&self, name: &str) -> Result<Snapshot, ApiError> {
        forward!(self.remove_snapshot(name))
    }
    async fn export_data(&self, image: Option<&str>) -> Result<(Vec<u8>, DataSummary), ApiError> {
        forward!(self.export_data(image))
    }
    async fn import_data(&self, archive: Vec<u8>) -> Result<DataSummary, ApiError> {
        forward!(self.import_data(archive))
    }
    async fn stop_idle(&self) -> Result<Vec<IdleStopped>, ApiError> {
        forward!(self.stop_idle())
    }
    async fn change_egress(
        &self,
        id_or_name: &str,
        change: crate::egress::EgressChange,
    ) -> Result<EgressView, ApiError> {
        forward!(self.change_egress(id_or_name, change))
    }
    async fn close(&self, id_or_name: &str) -> Result<Session, ApiError> {
        forward!(self.close(id_or_name))
    }
    async fn logs(
        &self,
        id_or_name: &str,
        options: LogOptions,
    ) -> Result<BoxStream<'static, Result<LogChunk, ApiError>>, ApiError> {
        forward!(self.logs(id_or_name, options))
    }
    async fn connect(&self, id_or_name: &str, public_key: &str) -> Result<Session, ApiError> {
        forward!(self.connect(id_or_name, public_key))
    }
    async fn exec(
        &self,
        id_or_name: &str,
        command: Vec<String>,
    ) -> Result<BoxStream<'static, Result<ExecEvent, ApiError>>, ApiError> {
        forward!(self.exec(id_or_name, command))
    }
}
