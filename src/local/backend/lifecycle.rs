//! Stop and start: a session's container is shut down cleanly and kept (its file system, its
//! anonymous inner-Docker volume, its labels and so its SSH port reservation and pinned host
//! key), then booted again on the same port and recognised by the same key.
//!
//! `stop` sends systemd its halt signal (SIGRTMIN+3) through `docker stop`, so units stop in
//! order, and the session reads `stopped` (Docker's `Exited (0)`). Docker remembers a stop
//! asked for, so the `unless-stopped` restart policy leaves it stopped, even across a daemon
//! restart. The port label stays, and `taken_ports` counts every labelled container in any
//! state: no create takes a stopped session's port.
//!
//! `start` renames the container back to `cubbi-NAME.booting` before it boots it, so the
//! session reads `starting` until sshd proves the pinned key and the name returns to
//! `cubbi-NAME` (`ready`), as after a create.

use std::net::{IpAddr, SocketAddr};

use bollard::models::ContainerInspectResponse;

use super::LocalBackend;
use crate::api::{ApiError, CreateStep, Session, SessionState, Snapshot};
use crate::local::labels::{self, SessionLabels};
use crate::local::{ports, snapshot};
use crate::ssh::SshError;
use crate::ssh::client::{SshTarget, wait_until_ready};
use crate::ssh::keys;

/// systemd's "halt" signal: PID 1 stops every unit in order and exits 0.
pub(super) const HALT_SIGNAL: &str = "SIGRTMIN+3";
/// Seconds systemd gets to stop its units before Docker kills the container. Longer than a
/// close's: a stop keeps the session, so what its units write on the way down matters.
const STOP_GRACE_SECS: i32 = 30;

/// What a stop or start may do to a session in `state`.
pub(super) fn check_can_stop(session: &Session) -> Result<(), ApiError> {
    let name = &session.name;
    match session.state {
        SessionState::Stopped => Err(ApiError::Conflict(format!(
            "session {name} is stopped already; `cubbi session start {name}` boots it"
        ))),
        SessionState::Exited => Err(ApiError::Conflict(format!(
            "session {name} is not running: its container exited with a failure (`cubbi session \
             logs {name}` shows why); `cubbi session start {name}` boots it again, `cubbi session \
             close {name}` removes it"
        ))),
        SessionState::Creating => Err(ApiError::Conflict(format!(
            "session {name} is still being created; wait for it, or `cubbi session close {name}`"
        ))),
        SessionState::Starting | SessionState::Ready | SessionState::InitFailed => Ok(()),
    }
}

pub(super) fn check_can_start(session: &Session) -> Result<(), ApiError> {
    let name = &session.name;
    match session.state {
        SessionState::Stopped | SessionState::Exited => Ok(()),
        SessionState::Creating => Err(ApiError::Conflict(format!(
            "session {name} is still being created; wait for it, or `cubbi session close {name}`"
        ))),
        state @ (SessionState::Starting | SessionState::Ready | SessionState::InitFailed) => {
            Err(ApiError::Conflict(format!(
                "session {name} is running already ({state}); `cubbi session stop {name}` stops it"
            )))
        }
    }
}

impl LocalBackend {
    /// Shuts a running session down cleanly and keeps it (see the module's comment).
    pub(super) async fn stop_session(&self, id_or_name: &str) -> Result<Session, ApiError> {
        let session = self.find(id_or_name).await?;
        check_can_stop(&session)?;
        self.docker
            .halt_container(&session.id, HALT_SIGNAL, STOP_GRACE_SECS)
            .await
            .map_err(Self::docker_error("cannot stop the session's container"))?;
        let container = self.inspect(&session.id).await?;
        let state = container.state.unwrap_or_default();
        if state.running == Some(true) {
            return Err(ApiError::unavailable(format!(
                "session {} is still running after `docker stop`",
                session.name
            )));
        }
        let exit_code = state.exit_code.unwrap_or(-1);
        let mut stopped = session;
        if exit_code == 0 {
            stopped.state = SessionState::Stopped;
            Ok(stopped)
        } else {
            // Docker killed it after the grace period, or systemd failed on the way down: the
            // container is kept all the same, and `start` boots it again.
            Err(ApiError::Failed {
                step: "stop".into(),
                reason: format!(
                    "session {} did not shut down cleanly within {STOP_GRACE_SECS}s (exit code \
                     {exit_code}); it is not running and reads `exited`; `cubbi session start {}` \
                     boots it again",
                    stopped.name, stopped.name
                ),
                logs: self.console_tail(&stopped.id, 20).await,
            })
        }
    }

    /// Boots a stopped session again on its port and waits until sshd proves its pinned key
    /// (see the module's comment).
    pub(super) async fn start_session(&self, id_or_name: &str) -> Result<Session, ApiError> {
        let session = self.find(id_or_name).await?;
        check_can_start(&session)?;
        let container = self.inspect(&session.id).await?;
        let session_labels = container
            .config
            .as_ref()
            .and_then(|config| config.labels.as_ref())
            .and_then(SessionLabels::from_map)
            .ok_or_else(|| {
                ApiError::unavailable(format!(
                    "the container of session {} lost its labels",
                    session.name
                ))
            })?;
        let port = session_labels.ssh_port;
        let bind: IpAddr = session_labels.ssh_bind.parse().map_err(|err| {
            ApiError::unavailable(format!(
                "the session's SSH address `{}` is unreadable: {err}",
                session_labels.ssh_bind
            ))
        })?;
        // The label keeps the port from other sessions; something outside cubbi may have
        // bound it meanwhile. Said plainly, and nothing changed.
        if !ports::can_bind(SocketAddr::new(bind, port)) {
            return Err(ApiError::Conflict(format!(
                "port {port}, which session {} keeps, is taken by another program on this host; \
                 free it and start the session again (nothing was changed)",
                session.name
            )));
        }
        let host_key = keys::parse_public(&session.ssh.host_key).map_err(|err| {
            ApiError::unavailable(format!(
                "the session's pinned host key is unreadable: {err}"
            ))
        })?;
        let current_name = container
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/');
        let booting = labels::booting_container_name(&session.name);
        if current_name != booting {
            self.rename(&session.id, &booting).await?;
        }
        let restarts_before = container.restart_count.unwrap_or(0);
        if let Err(err) = self.docker.start_container(&session.id).await {
            // Not started: the session reads `stopped` again under its own name.
            let _ = self
                .rename(&session.id, &labels::container_name(&session.name))
                .await;
            return Err(ApiError::Failed {
                step: CreateStep::Starting.to_string(),
                reason: err.to_string(),
                logs: Vec::new(),
            });
        }
        let target = SshTarget {
            address: format!("{}:{port}", session_labels.connect_host()),
            user: labels::AGENT_USER.to_string(),
            client_key: self.options.client_key.clone(),
            host_key,
        };
        let ready = self
            .wait_for_sshd(&target, &session.id, restarts_before)
            .await;
        if let Err(err) = ready {
            // Left as it is (`starting` or `exited`) for `logs`, `stop` and `close`: a session
            // that does not come back is still the user's.
            return Err(ApiError::Failed {
                step: CreateStep::WaitingForSsh.to_string(),
                reason: format!(
                    "{}; the session is left as it is: `cubbi session logs {}` shows its console, \
                     `cubbi session stop` or `close` end it",
                    self.explain_boot_failure(&session.id, err.to_string())
                        .await,
                    session.name
                ),
                logs: self.console_tail(&session.id, 20).await,
            });
        }
        self.rename(&session.id, &labels::container_name(&session.name))
            .await?;
        if let Some(files) = &self.options.ssh_files {
            // The same pin and port as before; written again only in case they went missing.
            files
                .write_session(&session.name, &session.ssh)
                .map_err(|err| ApiError::unavailable(err.to_string()))?;
        }
        let mut started = session;
        started.state = SessionState::Ready;
        Ok(started)
    }

    /// Waits until sshd at `target` proves the pinned key, giving up early when the container
    /// stops, or restarts under its restart policy (more than `restarts` times: it died
    /// booting), rather than at the ready timeout.
    pub(super) async fn wait_for_sshd(
        &self,
        target: &SshTarget,
        id: &str,
        restarts: i64,
    ) -> Result<(), SshError> {
        let docker = self.docker.clone();
        let id = id.to_string();
        wait_until_ready(target, self.options.ready_timeout, || {
            let docker = docker.clone();
            let id = id.clone();
            async move {
                docker.inspect_container(&id).await.ok().is_some_and(|c| {
                    let state = c.state.unwrap_or_default();
                    state.running == Some(true)
                        && state.restarting != Some(true)
                        && c.restart_count.unwrap_or(0) == restarts
                })
            }
        })
        .await
    }

    /// Commits a session as a snapshot of this owner's (see `local::snapshot`).
    pub(super) async fn snapshot_session(
        &self,
        id_or_name: &str,
        name: Option<String>,
    ) -> Result<Snapshot, ApiError> {
        let session = self.find(id_or_name).await?;
        let freeze = match session.state {
            SessionState::Stopped | SessionState::Exited => false,
            SessionState::Starting | SessionState::Ready | SessionState::InitFailed => true,
            SessionState::Creating => {
                return Err(ApiError::Conflict(format!(
                    "session {} is still being created; snapshot it once it is ready",
                    session.name
                )));
            }
        };
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let owner = &self.options.owner;
        let mine = snapshot::list(self.docker.as_ref(), owner, false).await?;
        let taken_name = |candidate: &str| mine.iter().any(|s| s.name == candidate);
        let name = match name {
            Some(raw) => snapshot::check_name(&raw)?,
            // A default name is never refused: two snapshots of one session in the same second
            // (a fork right after a snapshot) get `-2`, `-3`, ...
            None => {
                let stem = format!("{}-{created}", session.name);
                let free = (1..=mine.len() + 1)
                    .map(|n| match n {
                        1 => stem.clone(),
                        n => format!("{stem}-{n}"),
                    })
                    .find(|candidate| !taken_name(candidate))
                    .unwrap_or(stem);
                snapshot::check_name(&free)?
            }
        };
        if taken_name(&name) {
            return Err(ApiError::Conflict(format!(
                "a snapshot named `{name}` exists already; pick another --name, or remove it \
                 with `cubbi snapshot rm {name}`"
            )));
        }
        let taken = if freeze { "frozen" } else { "stopped" };
        let image_labels = snapshot::image_labels(
            owner,
            &name,
            &session.name,
            created,
            taken,
            &self.options.extra_labels,
        );
        let image_tag = snapshot::tag(owner, &name);
        snapshot::commit(
            self.docker.as_ref(),
            &session.id,
            &image_tag,
            freeze,
            image_labels,
        )
        .await?;
        let made = snapshot::list(self.docker.as_ref(), owner, false).await?;
        snapshot::pick(made, &name)
    }

    pub(super) async fn list_snapshots(&self) -> Result<Vec<Snapshot>, ApiError> {
        snapshot::list(
            self.docker.as_ref(),
            &self.options.owner,
            self.options.all_owners,
        )
        .await
    }

    pub(super) async fn remove_snapshot_named(&self, name: &str) -> Result<Snapshot, ApiError> {
        let found = snapshot::pick(self.list_snapshots().await?, name)?;
        snapshot::remove(self.docker.as_ref(), &found).await?;
        Ok(found)
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInspectResponse, ApiError> {
        self.docker
            .inspect_container(id)
            .await
            .map_err(Self::docker_error("cannot inspect the session's container"))
    }

    async fn rename(&self, id: &str, name: &str) -> Result<(), ApiError> {
        self.docker.rename_container(id, name).await.map_err(|err| {
            ApiError::unavailable(format!("cannot rename the container to {name}: {err}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SshEndpoint;

    fn in_state(state: SessionState) -> Session {
        Session {
            id: "0123456789abcdef".into(),
            name: "demo".into(),
            image: "cubbi-base".into(),
            owner: "me".into(),
            state,
            created: 0,
            workspace: None,
            command: Vec::new(),
            init_status: None,
            project_status: None,
            resources: None,
            networks: Vec::new(),
            egress: None,
            pool: false,
            ssh: SshEndpoint {
                host: "127.0.0.1".into(),
                port: 2300,
                user: "agent".into(),
                host_key: String::new(),
                proxy: false,
            },
        }
    }

    #[test]
    fn stop_takes_running_sessions_only() {
        for state in [
            SessionState::Starting,
            SessionState::Ready,
            SessionState::InitFailed,
        ] {
            assert!(check_can_stop(&in_state(state)).is_ok(), "{state}");
            let refused = check_can_start(&in_state(state)).unwrap_err().to_string();
            assert!(refused.contains("running already"), "{refused}");
        }
        let refused = check_can_stop(&in_state(SessionState::Stopped))
            .unwrap_err()
            .to_string();
        assert!(refused.contains("stopped already"), "{refused}");
        assert!(check_can_stop(&in_state(SessionState::Exited)).is_err());
        assert!(check_can_stop(&in_state(SessionState::Creating)).is_err());
    }

    #[test]
    fn start_takes_stopped_and_exited_sessions() {
        assert!(check_can_start(&in_state(SessionState::Stopped)).is_ok());
        assert!(check_can_start(&in_state(SessionState::Exited)).is_ok());
        assert!(check_can_start(&in_state(SessionState::Creating)).is_err());
    }
}
