//! The Docker daemon as the session backend sees it: only the calls it makes, one trait, so the
//! backend can be driven without a daemon (its unit tests use an in-memory one). Parameters and
//! results keep bollard's models; options the backend always sets the same way (`all` on a
//! container list, `force` and `v` on a removal, `/` for an upload) live in the real
//! implementation, not at every call.

use std::collections::HashMap;

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error;
use bollard::exec::{CreateExecOptions, CreateExecResults, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerCreateResponse, ContainerInspectResponse, ContainerSummary,
    ContainerUpdateBody, ExecInspectResponse, ImageInspect, ImageSummary, Network,
    NetworkConnectRequest, NetworkCreateRequest, NetworkInspect, SystemInfo, Volume,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptions, RemoveContainerOptionsBuilder,
    RenameContainerOptionsBuilder, StopContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

/// Label or name filters of a container list, as Docker's API takes them.
pub type Filters = HashMap<String, Vec<String>>;

#[async_trait]
pub trait DockerApi: Send + Sync {
    async fn info(&self) -> Result<SystemInfo, Error>;

    async fn inspect_image(&self, reference: &str) -> Result<ImageInspect, Error>;

    async fn inspect_network(&self, name: &str) -> Result<NetworkInspect, Error>;
    async fn list_networks(&self) -> Result<Vec<Network>, Error>;
    async fn create_network(&self, request: NetworkCreateRequest) -> Result<(), Error>;
    /// Connects container `id` to `network` (with no endpoint settings).
    async fn connect_network(&self, network: &str, id: &str) -> Result<(), Error>;
    /// Connects container `id` to `network`, reachable there by `aliases` too.
    async fn connect_network_aliased(
        &self,
        network: &str,
        id: &str,
        aliases: Vec<String>,
    ) -> Result<(), Error>;

    async fn inspect_volume(&self, name: &str) -> Result<Volume, Error>;
    /// Creates the volume, or returns the existing one of that name as it is.
    async fn create_volume(&self, request: VolumeCreateRequest) -> Result<Volume, Error>;
    /// Volumes carrying `label` (a key, or `key=value`).
    async fn list_volumes(&self, label: &str) -> Result<Vec<Volume>, Error>;
    async fn remove_volume(&self, name: &str) -> Result<(), Error>;

    /// Containers in any state (running or not) matching every filter.
    async fn list_containers(&self, filters: &Filters) -> Result<Vec<ContainerSummary>, Error>;
    async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<ContainerCreateResponse, Error>;
    /// Extracts the tar `archive` at `/` in container `id`.
    async fn upload_archive(&self, id: &str, archive: Vec<u8>) -> Result<(), Error>;
    /// The tar Docker makes of `path` in a container (created or running); `Ok(None)` when it
    /// passes `limit` bytes.
    async fn download_archive(
        &self,
        id: &str,
        path: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, Error>;
    async fn start_container(&self, id: &str) -> Result<(), Error>;
    async fn inspect_container(&self, id: &str) -> Result<ContainerInspectResponse, Error>;
    async fn rename_container(&self, id: &str, name: &str) -> Result<(), Error>;
    /// Changes a running container's resource limits (`docker update`).
    async fn update_container(&self, id: &str, update: ContainerUpdateBody) -> Result<(), Error>;
    /// Stops container `id`, killing it after `timeout_secs`.
    async fn stop_container(&self, id: &str, timeout_secs: i32) -> Result<(), Error>;
    /// Removes container `id` whatever its state, with its anonymous volumes.
    async fn remove_container(&self, id: &str) -> Result<(), Error>;
    fn logs(&self, id: &str, options: LogsOptions) -> BoxStream<'static, Result<LogOutput, Error>>;

    async fn create_exec(
        &self,
        id: &str,
        options: CreateExecOptions<String>,
    ) -> Result<CreateExecResults, Error>;
    /// Starts exec `exec_id` attached.
    async fn start_exec(&self, exec_id: &str) -> Result<StartExecResults, Error>;
    async fn inspect_exec(&self, exec_id: &str) -> Result<ExecInspectResponse, Error>;

    /// Stops container `id` with `signal` (a session's systemd halts on SIGRTMIN+3), killing it
    /// after `timeout_secs`.
    async fn halt_container(&self, id: &str, signal: &str, timeout_secs: i32) -> Result<(), Error>;
    /// Images matching every filter.
    async fn list_images(&self, filters: &Filters) -> Result<Vec<ImageSummary>, Error>;
    /// Commits container `id` as `repo:tag` with `labels`, paused meanwhile when `pause`.
    async fn commit_container(
        &self,
        id: &str,
        repo: &str,
        tag: &str,
        pause: bool,
        labels: HashMap<String, String>,
    ) -> Result<(), Error>;
    /// Removes an image (never forced: one a container uses is refused).
    async fn remove_image(&self, reference: &str) -> Result<(), Error>;
}

#[async_trait]
impl DockerApi for Docker {
    async fn info(&self) -> Result<SystemInfo, Error> {
        Docker::info(self).await
    }

    async fn inspect_image(&self, reference: &str) -> Result<ImageInspect, Error> {
        Docker::inspect_image(self, reference).await
    }

    async fn inspect_network(&self, name: &str) -> Result<NetworkInspect, Error> {
        Docker::inspect_network(self, name, None).await
    }

    async fn list_networks(&self) -> Result<Vec<Network>, Error> {
        Docker::list_networks(self, None::<bollard::query_parameters::ListNetworksOptions>).await
    }

    async fn create_network(&self, request: NetworkCreateRequest) -> Result<(), Error> {
        Docker::create_network(self, request).await.map(|_| ())
    }

    async fn connect_network(&self, network: &str, id: &str) -> Result<(), Error> {
        let request = NetworkConnectRequest {
            container: id.to_string(),
            ..Default::default()
        };
        Docker::connect_network(self, network, request).await
    }

    async fn connect_network_aliased(
        &self,
        network: &str,
        id: &str,
        aliases: Vec<String>,
    ) -> Result<(), Error> {
        let request = NetworkConnectRequest {
            container: id.to_string(),
            endpoint_config: Some(bollard::models::EndpointSettings {
                aliases: Some(aliases),
                ..Default::default()
            }),
        };
        Docker::connect_network(self, network, request).await
    }

    async fn inspect_volume(&self, name: &str) -> Result<Volume, Error> {
        Docker::inspect_volume(self, name).await
    }

    async fn create_volume(&self, request: VolumeCreateRequest) -> Result<Volume, Error> {
        Docker::create_volume(self, request).await
    }

    async fn list_volumes(&self, label: &str) -> Result<Vec<Volume>, Error> {
        let filters = HashMap::from([("label".to_string(), vec![label.to_string()])]);
        let options = bollard::query_parameters::ListVolumesOptionsBuilder::new()
            .filters(&filters)
            .build();
        Ok(Docker::list_volumes(self, Some(options))
            .await?
            .volumes
            .unwrap_or_default())
    }

    async fn remove_volume(&self, name: &str) -> Result<(), Error> {
        Docker::remove_volume(
            self,
            name,
            None::<bollard::query_parameters::RemoveVolumeOptions>,
        )
        .await
    }

    async fn list_containers(&self, filters: &Filters) -> Result<Vec<ContainerSummary>, Error> {
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(filters)
            .build();
        Docker::list_containers(self, Some(options)).await
    }

    async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<ContainerCreateResponse, Error> {
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        Docker::create_container(self, Some(options), body).await
    }

    async fn upload_archive(&self, id: &str, archive: Vec<u8>) -> Result<(), Error> {
        let options = UploadToContainerOptionsBuilder::new().path("/").build();
        Docker::upload_to_container(self, id, Some(options), bollard::body_full(archive.into()))
            .await
    }

    async fn download_archive(
        &self,
        id: &str,
        path: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, Error> {
        let options = DownloadFromContainerOptionsBuilder::new()
            .path(path)
            .build();
        let mut chunks = Docker::download_from_container(self, id, Some(options));
        let mut archive = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            if archive.len() + chunk.len() > limit {
                return Ok(None);
            }
            archive.extend_from_slice(&chunk);
        }
        Ok(Some(archive))
    }

    async fn start_container(&self, id: &str) -> Result<(), Error> {
        Docker::start_container(self, id, None).await
    }

    async fn inspect_container(&self, id: &str) -> Result<ContainerInspectResponse, Error> {
        Docker::inspect_container(self, id, None).await
    }

    async fn rename_container(&self, id: &str, name: &str) -> Result<(), Error> {
        let options = RenameContainerOptionsBuilder::new().name(name).build();
        Docker::rename_container(self, id, options).await
    }

    async fn update_container(&self, id: &str, update: ContainerUpdateBody) -> Result<(), Error> {
        Docker::update_container(self, id, update).await
    }

    async fn stop_container(&self, id: &str, timeout_secs: i32) -> Result<(), Error> {
        let options = StopContainerOptionsBuilder::new().t(timeout_secs).build();
        Docker::stop_container(self, id, Some(options)).await
    }

    async fn remove_container(&self, id: &str) -> Result<(), Error> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        Docker::remove_container(self, id, Some(options)).await
    }

    fn logs(&self, id: &str, options: LogsOptions) -> BoxStream<'static, Result<LogOutput, Error>> {
        Docker::logs(self, id, Some(options)).boxed()
    }

    async fn create_exec(
        &self,
        id: &str,
        options: CreateExecOptions<String>,
    ) -> Result<CreateExecResults, Error> {
        Docker::create_exec(self, id, options).await
    }

    async fn start_exec(&self, exec_id: &str) -> Result<StartExecResults, Error> {
        Docker::start_exec(self, exec_id, None).await
    }

    async fn inspect_exec(&self, exec_id: &str) -> Result<ExecInspectResponse, Error> {
        Docker::inspect_exec(self, exec_id).await
    }

    async fn halt_container(&self, id: &str, signal: &str, timeout_secs: i32) -> Result<(), Error> {
        let options = StopContainerOptionsBuilder::new()
            .signal(signal)
            .t(timeout_secs)
            .build();
        Docker::stop_container(self, id, Some(options)).await
    }

    async fn list_images(&self, filters: &Filters) -> Result<Vec<ImageSummary>, Error> {
        let options = bollard::query_parameters::ListImagesOptionsBuilder::new()
            .filters(filters)
            .build();
        Docker::list_images(self, Some(options)).await
    }

    async fn commit_container(
        &self,
        id: &str,
        repo: &str,
        tag: &str,
        pause: bool,
        labels: HashMap<String, String>,
    ) -> Result<(), Error> {
        let options = bollard::query_parameters::CommitContainerOptions {
            container: Some(id.to_string()),
            repo: Some(repo.to_string()),
            tag: Some(tag.to_string()),
            comment: Some("cubbi session snapshot".into()),
            author: None,
            pause,
            changes: None,
        };
        let config = bollard::models::ContainerConfig {
            labels: Some(labels),
            ..Default::default()
        };
        Docker::commit_container(self, options, config)
            .await
            .map(|_| ())
    }

    async fn remove_image(&self, reference: &str) -> Result<(), Error> {
        let options = bollard::query_parameters::RemoveImageOptionsBuilder::new()
            .force(false)
            .build();
        Docker::remove_image(self, reference, Some(options), None)
            .await
            .map(|_| ())
    }
}
