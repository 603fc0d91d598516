//! What `cubbi project ...` drives: the local store or a cubbi service (`-r NAME`), through
//! one trait, so both behave the same and print the same [`ProjectSummary`].

use std::path::PathBuf;

use async_trait::async_trait;

use super::known_hosts::{self, HostKey};
use super::store::{ProjectStore, ProjectSummary};
use super::{NewProject, ProjectError, ProjectUpdate};

/// A project as `show` prints it: the summary, and where it is stored when that is a file
/// on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub summary: ProjectSummary,
    pub file: Option<PathBuf>,
}

/// A place projects are registered.
#[async_trait]
pub trait ProjectCatalog: Send + Sync {
    /// Every project, by name.
    async fn list(&self) -> Result<Vec<ProjectSummary>, ProjectError>;
    /// The project `reference` (name, id or URL) names; `None` when there is none.
    async fn get(&self, reference: &str) -> Result<Option<Shown>, ProjectError>;
    async fn add(&self, project: NewProject) -> Result<ProjectSummary, ProjectError>;
    async fn update(
        &self,
        reference: &str,
        change: ProjectUpdate,
    ) -> Result<ProjectSummary, ProjectError>;
    /// Forgets a project; returns what it was.
    async fn remove(&self, reference: &str) -> Result<ProjectSummary, ProjectError>;
    /// For an SSH host (`host` or `[host]:port`) this catalog knows keys of without asking
    /// the user: the keys a new project must carry itself (often none). `None` when the
    /// host is unknown, so its key must be given or scanned and confirmed.
    fn known_host(&self, host_pattern: &str) -> Option<Vec<HostKey>>;
    /// Whether it is a cubbi service (so messages can say where things happened).
    fn remote(&self) -> Option<&str> {
        None
    }
}

#[async_trait]
impl ProjectCatalog for ProjectStore {
    async fn list(&self) -> Result<Vec<ProjectSummary>, ProjectError> {
        Ok(ProjectStore::list(self)?
            .iter()
            .map(|project| self.summary(project))
            .collect())
    }

    async fn get(&self, reference: &str) -> Result<Option<Shown>, ProjectError> {
        Ok(ProjectStore::get(self, reference)?.map(|project| Shown {
            summary: self.summary(&project),
            file: Some(project.file),
        }))
    }

    async fn add(&self, project: NewProject) -> Result<ProjectSummary, ProjectError> {
        let added = ProjectStore::add(self, project)?;
        Ok(self.summary(&added))
    }

    async fn update(
        &self,
        reference: &str,
        change: ProjectUpdate,
    ) -> Result<ProjectSummary, ProjectError> {
        let updated = ProjectStore::update(self, reference, change)?;
        Ok(self.summary(&updated))
    }

    async fn remove(&self, reference: &str) -> Result<ProjectSummary, ProjectError> {
        let removed = ProjectStore::remove(self, reference)?;
        Ok(self.summary(&removed))
    }

    fn known_host(&self, host_pattern: &str) -> Option<Vec<HostKey>> {
        // The store adds the shipped and configured keys itself.
        (!self.known_host_keys(host_pattern).is_empty()).then(Vec::new)
    }
}

/// The keys a client knows for `host_pattern` without asking: shipped ones (the service has
/// them too, so none need sending) or the user's `projects.known_hosts` (sent with the
/// project, since the service does not read the user's config).
pub fn client_known_host(config_lines: &[String], host_pattern: &str) -> Option<Vec<HostKey>> {
    if !known_hosts::builtin_for(host_pattern).is_empty() {
        return Some(Vec::new());
    }
    let configured = known_hosts::lines_for(config_lines.iter().map(String::as_str), host_pattern);
    (!configured.is_empty()).then_some(configured)
}
