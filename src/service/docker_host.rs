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
use crate::api::{ApiError, Session};
use crate::images::Catalog;
use crate::local::backend::{LocalBackend, LocalOptions};
use crate::local::index::SessionIndex;

const OWNER_PREFIX: &str = "serve:";

pub struct DockerHost {
    docker: Docker,
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
            template,
            index,
            images,
            projects,
            mcp_dir,
        }
    }

    /// The owner label of a service user's sessions.
    pub fn owner_label(user: &str) -> String {
        format!("{OWNER_PREFIX}{user}")
    }
}

#[async_trait]
impl SessionHost for DockerHost {
    type Sessions = LocalBackend;

    fn sessions_of(&self, caller: &Caller) -> LocalBackend {
        let options = LocalOptions {
            owner: Self::owner_label(&caller.user),
            all_owners: caller.admin,
            index: Some(Arc::clone(&self.index)),
            // `--project NAME` clones with the caller's own registered credentials (an
            // admin's too: projects are never shared).
            projects: Some(Arc::new(self.projects.of_user(&caller.user))),
            ..self.template.clone()
        };
        LocalBackend::new(self.docker.clone(), options)
    }

    async fn changed(&self, id: &str) {
        self.index.refresh(id).await;
    }

    async fn fill_pool(&self) -> Result<Vec<crate::local::backend::Filled>, ApiError> {
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

    fn present(&self, mut session: Session) -> Session {
        if let Some(user) = session.owner.strip_prefix(OWNER_PREFIX) {
            session.owner = user.to_string();
        }
        session
    }
}
