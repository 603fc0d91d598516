//! `cubbi serve`: the session API over HTTP (or HTTPS, [`tls`]) for a shared Sysbox host. [`router`] holds the
//! routes (generic over the backend), [`auth`] the token extractor, [`store`] the service's own
//! state, [`docker_host`] the real sessions; this module starts and stops the server.

pub mod auth;
pub mod auth_tokens;
pub mod config;
pub mod connections;
mod data_routes;
pub mod disk_quota;
pub mod docker_host;
mod documented;
pub mod host_volumes;
pub mod http_error;
mod lifecycle_routes;
mod mcp_routes;
pub mod oidc;
pub mod openapi;
mod page;
pub mod pg_store;
pub mod policy;
pub mod project_routes;
pub mod projects;
pub mod router;
#[cfg(test)]
mod router_tests;
mod run_routes;
pub mod store;
pub mod store_conformance;
pub mod tickets;
pub mod tls;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::ApiError;
use crate::local::backend::LocalOptions;
use crate::local::index::SessionIndex;
use config::ServiceConfig;
use docker_host::DockerHost;
use policy::Policy;
use router::{AppState, SessionHost};
use store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Projects(#[from] projects::ProjectsSetupError),
    #[error("{0}")]
    Setup(String),
}

/// A running service: where it listens, and how to stop it.
pub struct RunningService {
    pub address: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl RunningService {
    /// Stops accepting, lets requests and streams end (streams are told to), and returns
    /// once the server is gone or the grace period is over.
    pub async fn stop(self) -> Result<(), ServeError> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Runs until [`Self::stop`] from elsewhere, or a failure.
    pub async fn wait(self) -> Result<(), ServeError> {
        match self.task.await {
            Ok(result) => result,
            Err(err) => Err(ServeError::Setup(format!("the server task failed: {err}"))),
        }
    }

    /// A handle that stops the service when sent `true` (signal handlers use it).
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Serves `host`'s sessions on `listener` until stopped: over TLS when the config names a
/// certificate and key (`server.tls_cert`, `server.tls_key`), plain HTTP otherwise.
pub fn start<H: SessionHost>(
    listener: TcpListener,
    host: H,
    store: Arc<dyn Store>,
    config: &ServiceConfig,
) -> Result<RunningService, ServeError> {
    let address = listener.local_addr().map_err(|source| ServeError::Listen {
        address: "the listener".into(),
        source,
    })?;
    // Before anything starts, so a bad certificate or key stops `cubbi serve` at once.
    let acceptor = tls::acceptor_from_settings(&config.server)?;
    let (stop, stopping) = watch::channel(false);
    let policy = Policy::from_config(config)?;
    let state = AppState::new(
        host,
        Arc::clone(&store),
        policy,
        stopping.clone(),
        router::Timing {
            request_timeout: Duration::from_secs(config.server.request_timeout),
            streams_per_user: config.server.streams_per_user,
            runs_per_user: config.runs.per_user,
            max_run_timeout: Duration::from_secs(config.runs.max_timeout),
        },
    );
    if let Some(limit) = config_idle_stop(config) {
        tokio::spawn(idle_watch(state.host_arc(), limit, stopping.clone()));
    }
    if !config.pool.is_empty() {
        tokio::spawn(pool_watch(state.host_arc(), stopping.clone()));
    }
    let oidc = config
        .auth
        .oidc
        .as_ref()
        .map(|settings| {
            let tls = config.server.tls_cert.is_some();
            let sealing = oidc::sealing_key(config)?;
            oidc::OidcService::new(settings, Arc::clone(&store), tls, sealing)
        })
        .transpose()
        .map_err(ServeError::Setup)?;
    let state = state.with_oidc(oidc);
    if !page::built() {
        tracing::warn!(
            "this cubbi was built without its web page; `/` says how to build it \
             (npm ci --prefix web && npm run build --prefix web, then cargo build)"
        );
    }
    let app = router::router(state, config.server.body_limit);
    let grace = Duration::from_secs(config.server.shutdown_grace);
    let header_timeout = Duration::from_secs(config.server.header_timeout);
    let gate = connections::ConnectionGate::new(config.server.max_connections);
    let task = match acceptor {
        Some(acceptor) => {
            let listener = tls::TlsListener::new(listener, acceptor, gate.clone());
            tokio::spawn(async move {
                connections::serve(listener, gate, app, header_timeout, stopping, grace).await;
                Ok(())
            })
        }
        None => {
            let listener = connections::PlainAcceptor::new(listener, gate.clone());
            tokio::spawn(async move {
                connections::serve(listener, gate, app, header_timeout, stopping, grace).await;
                Ok(())
            })
        }
    };
    Ok(RunningService {
        address,
        stop,
        task,
    })
}

/// What an embedding (the tests) may set beyond the config file.
#[derive(Debug, Clone, Default)]
pub struct ServiceOptions {
    /// Labels for everything the service creates.
    pub extra_labels: std::collections::HashMap<String, String>,
    /// The port allocation lock; [`crate::local::ports::LockLocation::resolve`] when absent.
    pub port_lock: Option<crate::local::ports::LockLocation>,
}

/// The real service: sessions on the configured Docker endpoint.
pub async fn start_on_docker(
    listener: TcpListener,
    config: &ServiceConfig,
    store: Arc<dyn Store>,
    options: ServiceOptions,
) -> Result<RunningService, ServeError> {
    let docker = crate::docker::connect(&config.docker.endpoint)
        .await
        .map_err(|err| ServeError::Setup(err.to_string()))?;
    let key_path = config.state_dir.join("id_cubbi");
    let client_key = crate::ssh::keys::load_or_create_client_key(&key_path)
        .map_err(|err| ServeError::Setup(err.to_string()))?;
    let index = SessionIndex::start(docker.clone()).await?;
    let disk = disk_limit(&docker, config).await?;
    let template = LocalOptions {
        egress_store: config.egress.store(),
        owner: String::new(),
        all_owners: false,
        index: Some(Arc::clone(&index)),
        ports: config.ports,
        default_network: config.docker.network.clone(),
        client_key: Arc::new(client_key),
        ssh_files: None,
        port_lock: match options.port_lock {
            Some(lock) => lock,
            None => crate::local::ports::LockLocation::resolve()?,
        },
        lock_timeout: crate::local::ports::DEFAULT_LOCK_TIMEOUT,
        engine_socket: config
            .docker
            .endpoint
            .strip_prefix("unix://")
            .map(std::path::PathBuf::from),
        ready_timeout: std::env::var("CUBBI_READY_TIMEOUT")
            .ok()
            .and_then(|value| value.parse().ok())
            .map_or(Duration::from_secs(60), Duration::from_secs),
        extra_labels: options.extra_labels,
        // Each caller's own, set by DockerHost::sessions_of.
        projects: None,
        disk_limit: disk.per_session(),
        fluentd: config.logging.fluentd().cloned(),
        langfuse: config.logging.langfuse().cloned(),
        pool: pool_settings(&docker, config).await,
        runtime_advice: crate::local::runtime::RuntimeAdvice::Service {
            allow_unsafe_runc: config.allow_unsafe_runc,
        },
    };
    // Projects live where the users and tokens do: with PostgreSQL, every service on the
    // database shares them.
    let projects = projects::ServiceProjects::open_with(config, store.postgres().cloned())?;
    let mut host = DockerHost::new(
        docker,
        template,
        index,
        config.images.clone(),
        projects,
        config.state_dir.join("mcp"),
    );
    if config.backend.kind == config::BackendKind::Swarm {
        host = host.on_swarm(docker_host::SwarmShared::default());
    }
    start(listener, host, store, config)
}

/// The pool's members boot with what a create gets by default: Sysbox where the engine has
/// it, else runc where the service allows it (`allow_unsafe_runc`); no pool otherwise.
async fn pool_settings(
    docker: &bollard::Docker,
    config: &ServiceConfig,
) -> Option<crate::local::pool::PoolSettings> {
    if config.pool.is_empty() {
        return None;
    }
    let runtimes = docker.info().await.ok()?.runtimes.unwrap_or_default();
    let runtime = if runtimes.contains_key(crate::local::runtime::SYSBOX) {
        crate::local::runtime::SYSBOX.to_string()
    } else if config.allow_unsafe_runc {
        "runc".to_string()
    } else {
        tracing::warn!(
            "the warm pool is off: the engine has no Sysbox and allow_unsafe_runc is off"
        );
        return None;
    };
    Some(crate::local::pool::PoolSettings {
        targets: config.pool.clone(),
        runtime,
        // Where the policy publishes every session's SSH.
        ssh_bind: config.ssh.bind,
        // The fill serves every owner: a tool image's members for each who uses it lately.
        owner_data: crate::local::pool::OwnerData::Demanded(Default::default()),
    })
}

/// The disk limit every session gets, decided once from the engine's storage.
async fn disk_limit(
    docker: &bollard::Docker,
    config: &ServiceConfig,
) -> Result<disk_quota::DiskLimit, ServeError> {
    let configured = config.limits.disk.map(|limit| limit.bytes());
    let info = docker.info().await.map_err(|err| {
        ServeError::Setup(format!("cannot ask the engine about its storage: {err}"))
    })?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let limit = disk_quota::decide(configured, &info, &mounts, disk_quota::filesystem_bytes)
        .map_err(ServeError::Setup)?;
    match &limit {
        disk_quota::DiskLimit::PerSession(limit) => tracing::info!(
            bytes = limit.writable_bytes,
            "what each session writes to its root file system is limited"
        ),
        disk_quota::DiskLimit::Unavailable(why) => {
            tracing::warn!("sessions have no disk limit: {why}")
        }
    }
    Ok(limit)
}

/// The service's idle stop limit, when it sets one.
fn config_idle_stop(config: &ServiceConfig) -> Option<Duration> {
    (config.limits.idle_stop > 0).then(|| Duration::from_secs(config.limits.idle_stop))
}

/// Keeps the warm pool at its targets until the service stops: a fill every 2 s (one that
/// finds the pool full costs one `docker ps`), 30 s after one that failed.
async fn pool_watch<H: router::SessionHost>(
    host: std::sync::Arc<H>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut pause = Duration::from_secs(2);
    loop {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stopping.changed() => return,
        }
        let filled = tokio::select! {
            filled = host.fill_pool() => filled,
            _ = stopping.changed() => return,
        };
        pause = Duration::from_secs(2);
        match filled {
            Ok(rows) => {
                for row in rows {
                    if row.started > 0 {
                        tracing::info!(
                            image = row.image,
                            holding_data_of = row.holding_data_of.as_deref().unwrap_or("-"),
                            started = row.started,
                            target = row.target,
                            "refilled the warm pool"
                        );
                    }
                    if let Some(why) = row.failed {
                        tracing::warn!(
                            image = row.image,
                            "the warm pool could not be filled: {why}"
                        );
                        pause = Duration::from_secs(30);
                    }
                }
            }
            Err(err) => {
                tracing::warn!("the warm pool could not be filled: {err}");
                pause = Duration::from_secs(30);
            }
        }
    }
}

/// Stops idle sessions (`limits.idle_stop`, or a shorter `idle_stop_secs` a create asked
/// for) until the service stops: every quarter of the limit, at least every minute.
async fn idle_watch<H: router::SessionHost>(
    host: std::sync::Arc<H>,
    limit: Duration,
    mut stopping: watch::Receiver<bool>,
) {
    let every = (limit / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let everyone = store::Caller {
        user: "cubbi-idle-stop".into(),
        admin: true,
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stopping.changed() => return,
        }
        match crate::api::Backend::stop_idle(&host.sessions_of(&everyone)).await {
            Ok(stopped) => {
                for session in stopped {
                    tracing::info!(
                        session = session.name,
                        idle_secs = session.idle_secs,
                        "stopped an idle session"
                    );
                    host.changed(&session.id).await;
                }
            }
            Err(err) => tracing::warn!("idle stop: {err}"),
        }
    }
}
