//! `cubbi serve` started in-process on 127.0.0.1:0 against the run's dockerd, with a real
//! token store in a temporary state folder, and the clients that drive it: the remote
//! backend, the `cubbi -r` binary, and plain HTTP for what a client must never send.

use std::sync::Arc;

use cubbi::remote::client::RemoteBackend;
use cubbi::service::config::ServiceConfig;
use cubbi::service::store::{SqliteStore, Store};
use cubbi::service::{RunningService, ServiceOptions};
use libtest_mimic::Failed;
use sha2::Digest;

use super::DockerScope;

pub struct TestService {
    pub url: String,
    pub store: Arc<SqliteStore>,
    pub running: Option<RunningService>,
    pub config: ServiceConfig,
    _state: tempfile::TempDir,
}

/// A user name of this test alone (service owners are global on the endpoint).
pub fn user(scope: &DockerScope, who: &str) -> String {
    let digest = sha2::Sha256::digest(scope.id.as_bytes());
    let tag: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{who}-{tag}")
}

impl TestService {
    pub async fn start(
        scope: &DockerScope,
        tune: impl FnOnce(&mut ServiceConfig),
    ) -> Result<Self, Failed> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(scope, listener, tune).await
    }

    /// [`TestService::start`] on a listener the test bound first (to name the service's URL
    /// in what it starts before, such as an OpenID provider's redirect URL).
    pub async fn start_on(
        scope: &DockerScope,
        listener: tokio::net::TcpListener,
        tune: impl FnOnce(&mut ServiceConfig),
    ) -> Result<Self, Failed> {
        let state = tempfile::tempdir()?;
        let mut config = ServiceConfig::default();
        config.docker.endpoint = scope.endpoint.clone();
        config.ssh.bind = "127.0.0.1".parse()?;
        config.state_dir = state.path().to_path_buf();
        config.server.shutdown_grace = 5;
        // Without Sysbox, sessions run the same scenarios under runc, which the service
        // refuses unless allowed.
        config.allow_unsafe_runc = super::sysbox::SessionRuntime::of_this_run().unsafe_runc();
        tune(&mut config);
        let store = Arc::new(SqliteStore::open(state.path())?);
        Self::launch(scope, listener, config, store, state).await
    }

    /// Another service on the same state folder and config (a restart): the service's key
    /// and tokens carry over.
    pub async fn restart(scope: &DockerScope, before: &TestService) -> Result<Self, Failed> {
        let unused = tempfile::tempdir()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::launch(
            scope,
            listener,
            before.config.clone(),
            Arc::clone(&before.store),
            unused,
        )
        .await
    }

    async fn launch(
        scope: &DockerScope,
        listener: tokio::net::TcpListener,
        config: ServiceConfig,
        store: Arc<SqliteStore>,
        state: tempfile::TempDir,
    ) -> Result<Self, Failed> {
        let options = ServiceOptions {
            extra_labels: scope.labels(),
            port_lock: super::port_lock(),
        };
        let running = cubbi::service::start_on_docker(
            listener,
            &config,
            Arc::clone(&store) as Arc<dyn Store>,
            options,
        )
        .await?;
        // The service serves TLS exactly when the config names a certificate.
        let scheme = if config.server.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        Ok(Self {
            url: format!("{scheme}://{}", running.address),
            store,
            running: Some(running),
            config,
            _state: state,
        })
    }

    /// A token for `user`, as `cubbi serve token create` would print it.
    pub fn token(&self, user: &str, admin: bool) -> Result<String, Failed> {
        Ok(self.store.issue_token(user, Some(admin))?.1)
    }

    /// The remote backend as `cubbi -r` builds it, with a fresh client key.
    pub fn client(&self, token: &str) -> Result<RemoteBackend, Failed> {
        let key = cubbi::ssh::keys::generate("test")?;
        let public = cubbi::ssh::keys::public_openssh(key.public_key())?;
        Ok(RemoteBackend::new(
            "test",
            &self.url,
            token.to_string(),
            public,
            None,
        )?)
    }

    pub async fn stop(&mut self) -> Result<(), Failed> {
        if let Some(running) = self.running.take() {
            running.stop().await?;
        }
        Ok(())
    }
}

/// The real `cubbi serve` binary on 127.0.0.1:0 against the run's dockerd, logging JSON.
pub struct ServeProcess {
    /// `HOST:PORT` it listens on, from its log.
    pub address: String,
    child: std::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl ServeProcess {
    /// Starts `cubbi serve --config CONFIG --state-dir STATE` and waits (30 s at most) until
    /// its log says where it listens.
    pub async fn start(
        scope: &DockerScope,
        config: &std::path::Path,
        state: &std::path::Path,
    ) -> Result<Self, Failed> {
        use std::io::{BufRead, BufReader};
        let home = super::TestHome::new();
        let mut child = super::Cubbi::new(&home)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .arg("--state-dir")
            .arg(state)
            .env("CUBBI_DOCKER_HOST", &scope.endpoint)
            .into_command()
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let mut seen = Vec::new();
        let address = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while let Some(line) = lines.recv().await {
                seen.push(line.clone());
                let record: serde_json::Value = serde_json::from_str(&line)
                    .map_err(|err| format!("not a JSON log line: {line}: {err}"))?;
                if let Some(address) = record["fields"]["address"].as_str() {
                    return Ok::<String, Failed>(address.to_string());
                }
            }
            Err("the service exited before listening".into())
        })
        .await
        .map_err(|_| "the service did not say where it listens")??;
        Ok(Self {
            address,
            child,
            lines,
            seen,
        })
    }

    /// SIGTERM; fails unless it exits successfully within `within`. Returns its whole log.
    pub async fn stop_within(mut self, within: std::time::Duration) -> Result<String, Failed> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        let stopping = std::time::Instant::now();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let mut child = self.child;
        let status = tokio::task::spawn_blocking(move || child.wait()).await??;
        assert!(status.success(), "cubbi serve exited with {status}");
        assert!(
            stopping.elapsed() < within,
            "SIGTERM took {:?}",
            stopping.elapsed()
        );
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        Ok(self.seen.join("\n"))
    }

    /// [`ServeProcess::stop_within`] 10 s.
    pub async fn stop(self) -> Result<String, Failed> {
        self.stop_within(std::time::Duration::from_secs(10)).await
    }
}
