//! The Swarm manager as the backend sees it: a narrow trait in front of bollard, so placement,
//! create and rollback can run against a fake in unit tests.

use std::collections::HashMap;

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error;
use bollard::models::{NetworkCreateRequest, Node, SecretSpec, Service, ServiceSpec, Task};
use bollard::query_parameters::{
    InspectNetworkOptions, ListNodesOptions, ListServicesOptionsBuilder, ListTasksOptionsBuilder,
    LogsOptions,
};
use futures_util::stream::BoxStream;

#[async_trait]
pub trait ManagerApi: Send + Sync {
    async fn nodes(&self) -> Result<Vec<Node>, Error>;
    /// Services carrying every one of `labels` (`KEY=VALUE`).
    async fn services(&self, labels: &[String]) -> Result<Vec<Service>, Error>;
    /// The tasks of the services `ids` (none asked: none listed).
    async fn tasks_of(&self, ids: &[String]) -> Result<Vec<Task>, Error>;
    /// Returns the secret's id.
    async fn create_secret(&self, spec: SecretSpec) -> Result<String, Error>;
    async fn delete_secret(&self, id_or_name: &str) -> Result<(), Error>;
    /// Returns the service's id.
    async fn create_service(&self, spec: ServiceSpec) -> Result<String, Error>;
    async fn delete_service(&self, id_or_name: &str) -> Result<(), Error>;
    /// Whether a network of that name exists (any scope).
    async fn has_network(&self, name: &str) -> Result<bool, Error>;
    async fn create_network(&self, request: NetworkCreateRequest) -> Result<(), Error>;
    fn service_logs(
        &self,
        id: &str,
        options: LogsOptions,
    ) -> BoxStream<'static, Result<LogOutput, Error>>;
}

#[async_trait]
impl ManagerApi for Docker {
    async fn nodes(&self) -> Result<Vec<Node>, Error> {
        self.list_nodes(None::<ListNodesOptions>).await
    }

    async fn services(&self, labels: &[String]) -> Result<Vec<Service>, Error> {
        let filters = HashMap::from([("label".to_string(), labels.to_vec())]);
        let options = ListServicesOptionsBuilder::default()
            .filters(&filters)
            .build();
        self.list_services(Some(options)).await
    }

    async fn tasks_of(&self, ids: &[String]) -> Result<Vec<Task>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let filters = HashMap::from([("service".to_string(), ids.to_vec())]);
        let options = ListTasksOptionsBuilder::default().filters(&filters).build();
        self.list_tasks(Some(options)).await
    }

    async fn create_secret(&self, spec: SecretSpec) -> Result<String, Error> {
        Ok(Docker::create_secret(self, spec).await?.id)
    }

    async fn delete_secret(&self, id_or_name: &str) -> Result<(), Error> {
        Docker::delete_secret(self, id_or_name).await
    }

    async fn create_service(&self, spec: ServiceSpec) -> Result<String, Error> {
        Ok(Docker::create_service(self, spec, None)
            .await?
            .id
            .unwrap_or_default())
    }

    async fn delete_service(&self, id_or_name: &str) -> Result<(), Error> {
        Docker::delete_service(self, id_or_name).await
    }

    async fn has_network(&self, name: &str) -> Result<bool, Error> {
        match self
            .inspect_network(name, None::<InspectNetworkOptions>)
            .await
        {
            Ok(_) => Ok(true),
            Err(Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(err) => Err(err),
        }
    }

    async fn create_network(&self, request: NetworkCreateRequest) -> Result<(), Error> {
        Docker::create_network(self, request).await.map(|_| ())
    }

    fn service_logs(
        &self,
        id: &str,
        options: LogsOptions,
    ) -> BoxStream<'static, Result<LogOutput, Error>> {
        Box::pin(Docker::service_logs(self, id, Some(options)))
    }
}
