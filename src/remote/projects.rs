//! The projects of a cubbi service (`/v1/projects`), for `cubbi -r NAME project ...`. A
//! credential goes up once, in the add or update body; what comes back never holds it.

use async_trait::async_trait;
use reqwest::Method;

use super::client::RemoteBackend;
use crate::api::{ApiError, ErrorCode};
use crate::projects::catalog::{ProjectCatalog, Shown, client_known_host};
use crate::projects::known_hosts::HostKey;
use crate::projects::store::ProjectSummary;
use crate::projects::wire::{
    AddProjectRequest, CredentialInput, UpdateProjectRequest, url_to_send,
};
use crate::projects::{Credential, NewProject, ProjectError, ProjectUpdate};

pub struct RemoteProjects {
    name: String,
    /// The HTTP client, token and error handling of the session client.
    client: RemoteBackend,
    /// The user's `projects.known_hosts`, sent with projects on those hosts.
    config_known_hosts: Vec<String>,
}

impl RemoteProjects {
    /// Projects through `client`, a client of the service `name` that authorizes no SSH key
    /// (no session is created through it).
    pub fn with_client(name: &str, client: RemoteBackend, config_known_hosts: Vec<String>) -> Self {
        Self {
            name: name.to_string(),
            client,
            config_known_hosts,
        }
    }

    /// `/v1/projects/{reference}`, the reference (an id has `/`) one percent-encoded segment.
    fn path(reference: &str) -> String {
        let mut path = String::from("/v1/projects/");
        for byte in reference.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                path.push(char::from(byte));
            } else {
                path.push_str(&format!("%{byte:02X}"));
            }
        }
        path
    }
}

fn host_key_texts(keys: &[HostKey]) -> Vec<String> {
    keys.iter().map(|key| key.key.clone()).collect()
}

#[async_trait]
impl ProjectCatalog for RemoteProjects {
    async fn list(&self) -> Result<Vec<ProjectSummary>, ProjectError> {
        self.client
            .json(self.client.request(Method::GET, "/v1/projects"))
            .await
            .map_err(ProjectError::Service)
    }

    async fn get(&self, reference: &str) -> Result<Option<Shown>, ProjectError> {
        let answer: Result<ProjectSummary, ApiError> = self
            .client
            .json(self.client.request(Method::GET, &Self::path(reference)))
            .await;
        match answer {
            Ok(summary) => Ok(Some(Shown {
                summary,
                file: None,
            })),
            Err(err) if err.code() == ErrorCode::NotFound => Ok(None),
            Err(err) => Err(ProjectError::Service(err)),
        }
    }

    async fn add(&self, project: NewProject) -> Result<ProjectSummary, ProjectError> {
        let token_user = match &project.credential {
            Some(Credential::Token { username, .. }) => Some(username.clone()),
            _ => None,
        };
        let body = AddProjectRequest {
            url: url_to_send(&project.url, project.credential.as_ref()),
            name: project.name,
            branch: project.branch,
            token_user,
            credential: project
                .credential
                .as_ref()
                .map(CredentialInput::from_credential),
            host_keys: host_key_texts(&project.host_keys),
        };
        self.client
            .json(
                self.client
                    .request(Method::POST, "/v1/projects")
                    .json(&body),
            )
            .await
            .map_err(ProjectError::Service)
    }

    async fn update(
        &self,
        reference: &str,
        change: ProjectUpdate,
    ) -> Result<ProjectSummary, ProjectError> {
        let body = UpdateProjectRequest {
            name: change.name,
            branch: change.branch,
            token_user: change.token_user,
            credential: change
                .credential
                .map(|credential| credential.as_ref().map(CredentialInput::from_credential)),
            host_keys: change.host_keys.as_deref().map(host_key_texts),
        };
        self.client
            .json(
                self.client
                    .request(Method::PUT, &Self::path(reference))
                    .json(&body),
            )
            .await
            .map_err(ProjectError::Service)
    }

    async fn remove(&self, reference: &str) -> Result<ProjectSummary, ProjectError> {
        self.client
            .json(self.client.request(Method::DELETE, &Self::path(reference)))
            .await
            .map_err(ProjectError::Service)
    }

    fn known_host(&self, host_pattern: &str) -> Option<Vec<HostKey>> {
        client_known_host(&self.config_known_hosts, host_pattern)
    }

    fn remote(&self) -> Option<&str> {
        Some(&self.name)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_id_is_one_path_segment() {
        assert_eq!(
            super::RemoteProjects::path("github.com:2222/Org/repo"),
            "/v1/projects/github.com%3A2222%2FOrg%2Frepo"
        );
        assert_eq!(super::RemoteProjects::path("repo"), "/v1/projects/repo");
    }
}
