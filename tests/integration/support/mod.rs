//! Shared test support: one real dockerd for the whole run, per-test cleanup of everything a
//! test creates, and a small fluent helper to run the `cubbi` binary in an isolated home.

pub mod apt_sources;
pub mod base_image;
pub mod cli;
pub mod dockerd;
pub mod images;
pub mod internet;
pub mod mcp_server;
pub mod model_server;
pub mod oidc_provider;
pub mod otlp_receiver;
pub mod pki;
pub mod postgres;
pub mod projects_host;
pub mod pty;
pub mod service;
pub mod stub;
pub mod swarm_cluster;
pub mod sysbox;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use bollard::Docker;
use libtest_mimic::Failed;

pub use cli::{Cubbi, TestHome};

/// Label on everything a test creates, so cleanup finds it even when the test fails.
pub const TEST_LABEL: &str = "io.cubbi.test";

static DOCKERD: Mutex<Option<Result<dockerd::Dockerd, String>>> = Mutex::new(None);

/// The run's dockerd endpoint, starting the daemon on first use. Without Docker the test fails
/// (it never passes silently); under `CI=true` the message says so explicitly.
pub fn docker_endpoint() -> Result<String, Failed> {
    let mut slot = DOCKERD
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let state = slot.get_or_insert_with(dockerd::Dockerd::obtain);
    match state {
        Ok(daemon) => Ok(daemon.endpoint.clone()),
        Err(reason) => {
            let ci = std::env::var("CI").is_ok_and(|value| value == "true");
            Err(if ci {
                format!("CI=true and no Docker could be had: {reason}").into()
            } else {
                format!("this test needs Docker: {reason}").into()
            })
        }
    }
}

/// Stops the dockerd the run started (a reused one stays up). Called once, after all tests.
pub fn teardown() {
    postgres::teardown();
    let mut slot = DOCKERD
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(Ok(daemon)) = slot.take() {
        daemon.stop();
    }
}

/// The port lock every cubbi of this run takes, the CLI's and the in-process service's alike.
/// A `LocalBackend` on this test's dockerd owning sessions as this test alone, with a key of
/// its own and, when given, the projects it resolves `--project` with.
pub fn local_backend(
    scope: &DockerScope,
    projects: Option<std::sync::Arc<dyn cubbi::projects::ProjectSource>>,
) -> Result<cubbi::local::backend::LocalBackend, Failed> {
    let key = std::sync::Arc::new(cubbi::ssh::keys::generate("test")?);
    local_backend_with_key(scope, projects, key)
}

/// [`local_backend`] whose sessions authorize `key` (what a run through it connects with).
pub fn local_backend_with_key(
    scope: &DockerScope,
    projects: Option<std::sync::Arc<dyn cubbi::projects::ProjectSource>>,
    key: std::sync::Arc<russh::keys::PrivateKey>,
) -> Result<cubbi::local::backend::LocalBackend, Failed> {
    Ok(cubbi::local::backend::LocalBackend::new(
        scope.docker.clone(),
        cubbi::local::backend::LocalOptions {
            owner: scope.id.clone(),
            all_owners: false,
            index: None,
            ports: Default::default(),
            default_network: None,
            client_key: key,
            ssh_files: None,
            port_lock: port_lock().ok_or("no run folder for the port lock")?,
            lock_timeout: std::time::Duration::from_secs(60),
            engine_socket: None,
            ready_timeout: std::time::Duration::from_secs(120),
            extra_labels: scope.labels(),
            projects,
            egress_store: cubbi::egress::store::EgressStore::from_env(),
            disk_limit: None,
            fluentd: None,
            langfuse: None,
            pool: None,
            runtime_advice: Default::default(),
        },
    ))
}

pub fn port_lock() -> Option<cubbi::local::ports::LockLocation> {
    run_dir().map(|dir| cubbi::local::ports::LockLocation::User(dir.join("cubbi/ports.lock")))
}

/// A 0700 folder for this run, used as the `XDG_RUNTIME_DIR` of every cubbi the tests start.
fn run_dir() -> Option<&'static std::path::Path> {
    static DIR: std::sync::OnceLock<Option<tempfile::TempDir>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("cubbi-test-run-")
            .tempdir()
            .ok()
    })
    .as_ref()
    .map(tempfile::TempDir::path)
}

/// A test's handle on Docker: the client plus the label marking what this test made.
#[derive(Clone)]
pub struct DockerScope {
    pub docker: Docker,
    pub endpoint: String,
    pub id: String,
}

impl DockerScope {
    /// Labels to put on every container, network or volume the test creates.
    pub fn labels(&self) -> HashMap<String, String> {
        HashMap::from([(TEST_LABEL.to_string(), self.id.clone())])
    }

    /// A bridge network of this test (labelled, so the run's teardown removes it); returns
    /// its gateway, the host's address on it (where sessions reach services of the host).
    pub async fn bridge_network(&self, name: &str) -> Result<String, Failed> {
        self.docker
            .create_network(bollard::models::NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("bridge".into()),
                labels: Some(self.labels()),
                ..Default::default()
            })
            .await?;
        self.docker
            .inspect_network(name, None)
            .await?
            .ipam
            .and_then(|ipam| ipam.config)
            .into_iter()
            .flatten()
            .find_map(|config| config.gateway)
            .ok_or_else(|| format!("network {name} has no gateway").into())
    }

    /// Builds `cubbi-base` once per run (through `cubbi image build`), for tests that boot it.
    pub async fn ensure_base(&self) -> Result<(), Failed> {
        self.ensure_image("base").await
    }

    /// Builds the cubbi image `name` once per run, for tests that boot it.
    pub async fn ensure_image(&self, name: &str) -> Result<(), Failed> {
        let (endpoint, name) = (self.endpoint.clone(), name.to_string());
        tokio::task::spawn_blocking(move || images::ensure_image(&endpoint, &name))
            .await
            .map_err(|err| Failed::from(err.to_string()))?
    }

    /// `cubbi` against this test's dockerd, owning sessions as this test alone, so parallel
    /// tests never see each other's sessions.
    /// The run's processes share one port lock (a private runtime folder of the run, since no
    /// `cubbi setup` made the system lock here), whatever HOME each test gives them.
    pub fn cubbi(&self, home: &TestHome) -> Cubbi {
        let cubbi = Cubbi::new(home)
            .env("CUBBI_DOCKER_HOST", &self.endpoint)
            .env("CUBBI_OWNER", &self.id);
        match run_dir() {
            Some(dir) => cubbi.env("XDG_RUNTIME_DIR", dir),
            None => cubbi,
        }
    }

    /// Removes every container, network and volume carrying this test's label.
    async fn cleanup(&self) {
        // Sessions a test made through the CLI are marked by their owner only, and may sit on
        // a network the test labelled: every container goes before any network.
        self.remove_labelled(&[
            format!("{TEST_LABEL}={}", self.id),
            format!("io.cubbi.owner={}", self.id),
        ])
        .await;
    }

    /// Removes what a test made as another owner (`CUBBI_OWNER`), which the scope's own
    /// cleanup does not see: containers, then networks and volumes.
    pub async fn remove_owner(&self, owner: &str) {
        self.remove_labelled(&[format!("io.cubbi.owner={owner}")])
            .await;
    }

    async fn remove_labelled(&self, labels: &[String]) {
        for label in labels {
            self.remove_labelled_containers(label).await;
        }
        for label in labels {
            self.remove_labelled_networks_and_volumes(label).await;
        }
    }

    async fn remove_labelled_containers(&self, label: &str) {
        use bollard::query_parameters::{
            ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
        };
        let filter = HashMap::from([("label", vec![label.to_string()])]);
        let containers = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filter)
                    .build(),
            ))
            .await
            .unwrap_or_default();
        for container in containers {
            if let Some(id) = container.id {
                let options = RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .v(true)
                    .build();
                let _ = self.docker.remove_container(&id, Some(options)).await;
            }
        }
    }

    async fn remove_labelled_networks_and_volumes(&self, label: &str) {
        use bollard::query_parameters::{
            ListNetworksOptionsBuilder, ListVolumesOptionsBuilder, RemoveVolumeOptionsBuilder,
        };
        let filter = HashMap::from([("label", vec![label.to_string()])]);
        let networks = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::new().filters(&filter).build(),
            ))
            .await
            .unwrap_or_default();
        for network in networks {
            if let Some(id) = network.id {
                let _ = self.docker.remove_network(&id).await;
            }
        }
        let volumes = self
            .docker
            .list_volumes(Some(
                ListVolumesOptionsBuilder::new().filters(&filter).build(),
            ))
            .await
            .ok()
            .and_then(|response| response.volumes)
            .unwrap_or_default();
        for volume in volumes {
            let options = RemoveVolumeOptionsBuilder::new().force(true).build();
            let _ = self.docker.remove_volume(&volume.name, Some(options)).await;
        }
    }
}

/// `session create` of `cubbi-base` named `name`, without connecting, plus `extra`; the
/// current folder is not mounted (a PATH in `extra` is).
pub fn create_args<'a>(name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    create_args_on(
        sysbox::SessionRuntime::of_this_run().create_flags(),
        name,
        extra,
    )
}

/// `create_args` with the runtime flags given (`&[]`: the endpoint's default runtime).
pub fn create_args_on<'a>(
    runtime_flags: &[&'a str],
    name: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "session",
        "create",
        "--image",
        "base",
        "--no-connect",
        "--no-mount",
        "--name",
        name,
    ];
    args.extend(runtime_flags);
    args.extend(extra);
    args
}

/// Every container (any state) carrying `label` (`key` or `key=value`).
pub async fn containers_labelled(
    docker: &Docker,
    label: &str,
) -> Result<Vec<bollard::models::ContainerSummary>, Failed> {
    let filter = HashMap::from([("label", vec![label.to_string()])]);
    Ok(docker
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filter)
                .build(),
        ))
        .await?)
}

/// Runs an async test body against the run's dockerd with `debian:bookworm` present, then
/// removes what the test labelled, whether it passed, failed or panicked.
pub fn docker_test<F, Fut>(name: &str, body: F) -> Result<(), Failed>
where
    F: FnOnce(DockerScope) -> Fut,
    Fut: Future<Output = Result<(), Failed>> + Send + 'static,
{
    let endpoint = docker_endpoint()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let docker = cubbi::docker::connect(&endpoint).await?;
        base_image::ensure(&docker).await?;
        let scope = DockerScope {
            docker,
            endpoint,
            id: format!("{name}-{}", std::process::id()),
        };
        let outcome = tokio::spawn(body(scope.clone())).await;
        scope.cleanup().await;
        match outcome {
            Ok(result) => result,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(join) => Err(join.to_string().into()),
        }
    })
}

/// Checks `check` every 200 ms until it passes or `within` is over; then its last complaint is
/// the test's failure. The one poll loop of the suite.
pub async fn eventually<F, Fut>(within: std::time::Duration, mut check: F) -> Result<(), Failed>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(()) => return Ok(()),
            Err(complaint) if std::time::Instant::now() >= deadline => {
                return Err(format!("still not so after {within:?}: {complaint}").into());
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}
