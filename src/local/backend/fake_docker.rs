//! An in-memory Docker daemon for the backend's unit tests: containers live in a map, and a
//! test scripts which calls fail (and how) to drive the backend down each path.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::TcpListener;
use std::sync::Mutex;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error;
use bollard::exec::{CreateExecOptions, CreateExecResults, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerCreateResponse, ContainerInspectResponse, ContainerState,
    ContainerSummary, ContainerSummaryStateEnum, ExecInspectResponse, ImageInspect, ImageSummary,
    Network, NetworkCreateRequest, NetworkInspect, SystemInfo, Volume, VolumeCreateRequest,
};
use bollard::query_parameters::LogsOptions;
use futures_util::stream::BoxStream;

use super::labels;
use crate::local::docker_api::{DockerApi, Filters};

/// The id every image of the fake has.
pub const FAKE_IMAGE_ID: &str = "sha256:fake";

/// What a scripted call does instead of succeeding.
pub enum Failure {
    /// Fails with this daemon message (status 500).
    Message(String),
    /// `start`: something outside cubbi binds the container's SSH port, then the start fails
    /// as Docker's does when the port is allocated.
    TakePort,
}

/// One container as the fake daemon keeps it.
pub struct FakeContainer {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub state: ContainerSummaryStateEnum,
    pub status: String,
}

#[derive(Default)]
pub struct FakeState {
    pub containers: BTreeMap<String, FakeContainer>,
    /// What `inspect` says of a container's HostConfig (its limits), by id; none when absent.
    pub host_configs: BTreeMap<String, bollard::models::HostConfig>,
    /// Every container ever created, by id, with its SSH port label.
    pub created: Vec<(String, u16)>,
    /// What each create asked for, by id (kept after the container is removed).
    pub created_bodies: BTreeMap<String, ContainerCreateBody>,
    pub removed: Vec<String>,
    /// Network and update calls, in order, as one line each (`connect NET ID as ALIAS`).
    pub calls: Vec<String>,
    /// Scripted failures per call (`create_container`, `upload_archive`, `start_container`),
    /// used in order; a call with none left succeeds.
    pub failures: HashMap<&'static str, VecDeque<Failure>>,
    /// What the status exec prints (`init-status=…`), for every container.
    pub status_output: String,
    /// Ports a [`Failure::TakePort`] bound, held for the rest of the test.
    pub taken: Vec<TcpListener>,
    /// Volumes made through `create_volume`, by name.
    pub volumes: BTreeMap<String, Volume>,
    /// The labels every image reports (a cubbi image's metadata label, say).
    pub image_labels: HashMap<String, String>,
    next_id: u64,
}

#[derive(Default)]
pub struct FakeDocker {
    pub state: Mutex<FakeState>,
}

fn daemon_error(status_code: u16, message: impl Into<String>) -> Error {
    Error::DockerResponseServerError {
        status_code,
        message: message.into(),
    }
}

fn matches(container: &FakeContainer, filters: &Filters) -> bool {
    filters.iter().all(|(key, values)| {
        values.iter().all(|value| match key.as_str() {
            "label" => match value.split_once('=') {
                Some((k, v)) => container.labels.get(k).map(String::as_str) == Some(v),
                None => container.labels.contains_key(value),
            },
            "name" => container.name.contains(value.as_str()),
            _ => false,
        })
    })
}

impl FakeDocker {
    pub fn fail(&self, call: &'static str, failure: Failure) {
        let mut state = self.state.lock().unwrap();
        state.failures.entry(call).or_default().push_back(failure);
    }

    /// A container as if made by an earlier create; returns its id.
    pub fn add(&self, container: FakeContainer) -> String {
        let mut state = self.state.lock().unwrap();
        state.next_id += 1;
        let id = format!("{:064x}", state.next_id);
        state.containers.insert(id.clone(), container);
        id
    }

    fn record(&self, call: String) {
        self.state.lock().unwrap().calls.push(call);
    }

    fn scripted(&self, call: &'static str, id: &str) -> Result<(), Error> {
        let mut state = self.state.lock().unwrap();
        match state.failures.get_mut(call).and_then(VecDeque::pop_front) {
            None => Ok(()),
            Some(Failure::Message(message)) => Err(daemon_error(500, message)),
            Some(Failure::TakePort) => {
                let port: u16 = state.containers[id].labels[labels::SSH_PORT]
                    .parse()
                    .unwrap();
                let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
                state.taken.push(listener);
                Err(daemon_error(
                    500,
                    format!(
                        "driver failed programming external connectivity on endpoint: Bind for \
                         127.0.0.1:{port} failed: port is already allocated"
                    ),
                ))
            }
        }
    }
}

#[async_trait]
impl DockerApi for FakeDocker {
    async fn info(&self) -> Result<SystemInfo, Error> {
        Ok(SystemInfo {
            runtimes: Some(HashMap::from([("sysbox-runc".into(), Default::default())])),
            ..Default::default()
        })
    }

    async fn inspect_image(&self, _reference: &str) -> Result<ImageInspect, Error> {
        let labels = self.state.lock().unwrap().image_labels.clone();
        Ok(ImageInspect {
            id: Some(FAKE_IMAGE_ID.into()),
            config: Some(bollard::models::ImageConfig {
                labels: Some(labels),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn inspect_network(&self, name: &str) -> Result<NetworkInspect, Error> {
        Err(daemon_error(404, format!("network {name} not found")))
    }

    async fn list_networks(&self) -> Result<Vec<Network>, Error> {
        Ok(Vec::new())
    }

    async fn create_network(&self, _request: NetworkCreateRequest) -> Result<(), Error> {
        Ok(())
    }

    async fn connect_network(&self, network: &str, id: &str) -> Result<(), Error> {
        self.record(format!("connect {network} {id}"));
        Ok(())
    }

    async fn connect_network_aliased(
        &self,
        network: &str,
        id: &str,
        aliases: Vec<String>,
    ) -> Result<(), Error> {
        self.scripted("connect_network", "")?;
        self.record(format!("connect {network} {id} as {}", aliases.join(",")));
        Ok(())
    }

    async fn update_container(
        &self,
        id: &str,
        update: bollard::models::ContainerUpdateBody,
    ) -> Result<(), Error> {
        self.scripted("update_container", "")?;
        self.record(format!(
            "update {id} memory={:?} cpus={:?} pids={:?}",
            update.memory, update.nano_cpus, update.pids_limit
        ));
        Ok(())
    }

    async fn inspect_volume(&self, name: &str) -> Result<Volume, Error> {
        Err(daemon_error(404, format!("volume {name} not found")))
    }

    async fn create_volume(&self, request: VolumeCreateRequest) -> Result<Volume, Error> {
        self.scripted("create_volume", "")?;
        let volume = Volume {
            name: request.name.unwrap_or_default(),
            labels: request.labels.unwrap_or_default(),
            ..Default::default()
        };
        // As Docker: an existing volume of that name is returned as it is.
        let mut state = self.state.lock().unwrap();
        Ok(state
            .volumes
            .entry(volume.name.clone())
            .or_insert(volume)
            .clone())
    }

    async fn list_volumes(&self, label: &str) -> Result<Vec<Volume>, Error> {
        let state = self.state.lock().unwrap();
        let wanted = |v: &Volume| match label.split_once('=') {
            Some((k, value)) => v.labels.get(k).map(String::as_str) == Some(value),
            None => v.labels.contains_key(label),
        };
        Ok(state
            .volumes
            .values()
            .filter(|v| wanted(v))
            .cloned()
            .collect())
    }

    async fn remove_volume(&self, name: &str) -> Result<(), Error> {
        match self.state.lock().unwrap().volumes.remove(name) {
            Some(_) => Ok(()),
            None => Err(daemon_error(404, format!("no volume {name}"))),
        }
    }

    async fn list_containers(&self, filters: &Filters) -> Result<Vec<ContainerSummary>, Error> {
        let state = self.state.lock().unwrap();
        Ok(state
            .containers
            .iter()
            .filter(|(_, c)| matches(c, filters))
            .map(|(id, c)| ContainerSummary {
                id: Some(id.clone()),
                names: Some(vec![format!("/{}", c.name)]),
                labels: Some(c.labels.clone()),
                state: Some(c.state),
                status: Some(c.status.clone()),
                ..Default::default()
            })
            .collect())
    }

    async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<ContainerCreateResponse, Error> {
        self.scripted("create_container", "")?;
        let labels = body.labels.clone().unwrap_or_default();
        let port = labels[labels::SSH_PORT].parse().unwrap();
        let id = self.add(FakeContainer {
            name: name.to_string(),
            labels,
            state: ContainerSummaryStateEnum::CREATED,
            status: "Created".into(),
        });
        let mut state = self.state.lock().unwrap();
        state.created.push((id.clone(), port));
        state.created_bodies.insert(id.clone(), body);
        Ok(ContainerCreateResponse {
            id,
            warnings: Vec::new(),
        })
    }

    async fn upload_archive(&self, id: &str, _archive: Vec<u8>) -> Result<(), Error> {
        self.scripted("upload_archive", id)
    }

    async fn download_archive(
        &self,
        id: &str,
        _path: &str,
        _limit: usize,
    ) -> Result<Option<Vec<u8>>, Error> {
        self.scripted("download_archive", id)?;
        Ok(Some(Vec::new()))
    }

    async fn start_container(&self, id: &str) -> Result<(), Error> {
        self.scripted("start_container", id)
    }

    async fn inspect_container(&self, id: &str) -> Result<ContainerInspectResponse, Error> {
        let state = self.state.lock().unwrap();
        // As Docker: by id, else by exact name.
        let (id, container) = state
            .containers
            .get_key_value(id)
            .or_else(|| state.containers.iter().find(|(_, c)| c.name == id))
            .ok_or_else(|| daemon_error(404, format!("no container {id}")))?;
        Ok(ContainerInspectResponse {
            id: Some(id.to_string()),
            name: Some(format!("/{}", container.name)),
            state: Some(ContainerState {
                running: Some(container.state == ContainerSummaryStateEnum::RUNNING),
                ..Default::default()
            }),
            config: Some(bollard::models::ContainerConfig {
                labels: Some(container.labels.clone()),
                ..Default::default()
            }),
            host_config: state.host_configs.get(id).cloned(),
            ..Default::default()
        })
    }

    async fn rename_container(&self, id: &str, name: &str) -> Result<(), Error> {
        self.scripted("rename_container", "")?;
        let mut state = self.state.lock().unwrap();
        // As Docker: the container is found by id or by its current name, and a name another
        // container holds is refused.
        if state
            .containers
            .iter()
            .any(|(other, c)| c.name == name && other != id)
        {
            return Err(daemon_error(409, format!("the name {name} is in use")));
        }
        let key = if state.containers.contains_key(id) {
            id.to_string()
        } else {
            state
                .containers
                .iter()
                .find(|(_, c)| c.name == id)
                .map(|(key, _)| key.clone())
                .ok_or_else(|| daemon_error(404, format!("no container {id}")))?
        };
        if let Some(container) = state.containers.get_mut(&key) {
            container.name = name.to_string();
        }
        Ok(())
    }

    async fn stop_container(&self, _id: &str, _timeout_secs: i32) -> Result<(), Error> {
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), Error> {
        let mut state = self.state.lock().unwrap();
        state.removed.push(id.to_string());
        // Docker takes a name as well as an id.
        let key = state
            .containers
            .iter()
            .find(|(_, c)| c.name == id)
            .map_or_else(|| id.to_string(), |(key, _)| key.clone());
        match state.containers.remove(&key) {
            Some(_) => Ok(()),
            None => Err(daemon_error(404, format!("no container {id}"))),
        }
    }

    fn logs(
        &self,
        _id: &str,
        _options: LogsOptions,
    ) -> BoxStream<'static, Result<LogOutput, Error>> {
        Box::pin(futures_util::stream::empty())
    }

    async fn create_exec(
        &self,
        id: &str,
        _options: CreateExecOptions<String>,
    ) -> Result<CreateExecResults, Error> {
        Ok(CreateExecResults {
            id: format!("exec-{id}"),
        })
    }

    async fn start_exec(&self, _exec_id: &str) -> Result<StartExecResults, Error> {
        let output = self.state.lock().unwrap().status_output.clone();
        let chunk = LogOutput::StdOut {
            message: output.into_bytes().into(),
        };
        Ok(StartExecResults::Attached {
            output: Box::pin(futures_util::stream::iter([Ok(chunk)])),
            input: Box::pin(tokio::io::sink()),
        })
    }

    async fn inspect_exec(&self, _exec_id: &str) -> Result<ExecInspectResponse, Error> {
        Ok(ExecInspectResponse {
            exit_code: Some(0),
            ..Default::default()
        })
    }

    // Lifecycle and snapshot calls: this fake holds no images, and stops and commits nothing
    // the backend's unit tests look at.
    async fn halt_container(
        &self,
        id: &str,
        _signal: &str,
        timeout_secs: i32,
    ) -> Result<(), Error> {
        self.stop_container(id, timeout_secs).await
    }

    async fn list_images(&self, _filters: &Filters) -> Result<Vec<ImageSummary>, Error> {
        Ok(Vec::new())
    }

    async fn commit_container(
        &self,
        _id: &str,
        _repo: &str,
        _tag: &str,
        _pause: bool,
        _labels: HashMap<String, String>,
    ) -> Result<(), Error> {
        Ok(())
    }

    async fn remove_image(&self, _reference: &str) -> Result<(), Error> {
        Ok(())
    }
}
