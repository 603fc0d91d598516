//! Reserving a session: its name and port, held under the host lock by creating its labelled
//! container (the body Docker gets is built here). Every later failure is undone through the
//! [`Reservation`]; `Backend::create` (in `mod.rs`) retries on another port when one is taken.

use super::*;

/// Why a boot did not reach readiness.
#[derive(Debug, thiserror::Error)]
pub(super) enum BootError {
    /// Something outside cubbi's lock bound the reserved port before `start` did.
    #[error("port {0} was taken before the session could start")]
    PortTaken(u16),
    /// Docker could not publish the port (its NAT rules changed under it, e.g. another
    /// dockerd on the host re-creating its chains); another attempt usually succeeds.
    #[error("Docker could not publish port {port}: {reason}")]
    Publishing { port: u16, reason: String },
    #[error("{step} failed: {reason}")]
    Step { step: CreateStep, reason: String },
}

impl BootError {
    pub(super) fn at(step: CreateStep) -> impl Fn(String) -> Self {
        move |reason| Self::Step { step, reason }
    }
}

/// A session's name and port, held by its labelled container from the moment it is created
/// under the lock. Until [`Reservation::commit`] it owns the undo: [`Reservation::abort`]
/// removes the container (and the ssh files, once written). Dropped uncommitted (a cancelled
/// future), it leaves the container for `list` and `close`, and says so.
pub(super) struct Reservation {
    pub(super) id: String,
    pub(super) labels: SessionLabels,
    pub(super) ssh_files_written: bool,
    pub(super) settled: bool,
}

impl Reservation {
    pub(super) fn commit(mut self) -> (String, SessionLabels) {
        self.settled = true;
        (std::mem::take(&mut self.id), self.labels.clone())
    }

    pub(super) async fn abort(mut self, backend: &LocalBackend) {
        self.settled = true;
        if let Err(err) = backend.remove(&self.id).await {
            tracing::warn!(
                "could not remove the failed session's container: {err}; `cubbi session close {}` \
                 removes it",
                self.labels.name
            );
        }
        if self.ssh_files_written
            && let Some(files) = &backend.options.ssh_files
            && let Err(err) = files.remove_session(&self.labels.name)
        {
            tracing::warn!("could not remove the failed session's ssh files: {err}");
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            tracing::warn!(
                "session {} was interrupted while booting; `cubbi session close {}` removes it",
                self.labels.name,
                self.labels.name
            );
        }
    }
}

impl LocalBackend {
    /// Under the host-wide lock: checks the name is free, picks a port no session holds and
    /// nothing has bound, and creates the container, whose name and labels are from then on
    /// the reservation of both.
    pub(super) async fn reserve(
        &self,
        spec: &SessionSpec,
        plan: &Plan,
        host_public: &str,
        data_volume: &str,
        avoid: &BTreeSet<u16>,
        progress: &dyn Progress,
    ) -> Result<Reservation, ApiError> {
        let lock = self.lock().await?;
        self.check_name_free(&plan.name).await?;
        let mut taken = self.taken_ports().await?;
        taken.extend(avoid);
        let port =
            ports::pick_free_port(self.options.ports, &taken, spec.ssh_bind, ports::can_bind)?;
        let created_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let session_labels = SessionLabels {
            name: plan.name.clone(),
            owner: self.options.owner.clone(),
            image: plan.image.reference.clone(),
            ssh_port: port,
            ssh_bind: spec.ssh_bind.to_string(),
            host_key: host_public.to_string(),
            workspace: plan.workspace.as_ref().map(|p| p.display().to_string()),
            created: created_at,
            command: plan.command(),
        };
        progress.step(CreateStep::CreatingContainer);
        let body = self.container_body(spec, plan, &session_labels, data_volume);
        let created = self
            .docker
            .create_container(&labels::booting_container_name(&plan.name), body)
            .await;
        drop(lock);
        match created {
            Ok(created) => Ok(Reservation {
                id: created.id,
                labels: session_labels,
                ssh_files_written: false,
                settled: false,
            }),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                message,
            }) => Err(ApiError::Conflict(format!(
                "a container named cubbi-{} exists already: {message}",
                plan.name
            ))),
            Err(err) => Err(ApiError::Failed {
                step: CreateStep::CreatingContainer.to_string(),
                reason: err.to_string(),
                logs: Vec::new(),
            }),
        }
    }

    pub(super) fn container_body(
        &self,
        spec: &SessionSpec,
        plan: &Plan,
        session_labels: &SessionLabels,
        data_volume: &str,
    ) -> ContainerCreateBody {
        let mut all_labels = session_labels.to_map();
        all_labels.extend(self.options.extra_labels.clone());
        if let Some(secs) = spec.idle_stop_secs {
            all_labels.insert(labels::IDLE_STOP.into(), secs.to_string());
        }
        if let Some(egress) = &plan.egress {
            all_labels.insert(labels::EGRESS.into(), egress.to_label());
        }
        let mut binds = plan.binds.clone();
        // A project session keeps its configs per project, never in the owner's data volume
        // (which other projects' sessions see).
        let data_path = if plan.project.is_some() {
            CONFIG_VOLUME_PATH
        } else {
            DATA_VOLUME_PATH
        };
        binds.push(format!("{data_volume}:{data_path}"));
        let port_bindings = HashMap::from([(
            "22/tcp".to_string(),
            Some(vec![PortBinding {
                host_ip: Some(spec.ssh_bind.to_string()),
                host_port: Some(session_labels.ssh_port.to_string()),
            }]),
        )]);
        let limits = plan.limits();
        let mut host = HostConfig {
            binds: Some(binds),
            port_bindings: Some(port_bindings),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            runtime: Some(spec.runtime.clone()),
            memory: limits.memory,
            memory_swap: limits.memory_swap,
            nano_cpus: limits.nano_cpus,
            pids_limit: limits.pids_limit,
            network_mode: plan.networks.first().cloned(),
            log_config: self
                .options
                .fluentd
                .as_ref()
                .map(|fluentd| fluentd.log_config(&self.options.owner, &plan.name)),
            storage_opt: self.options.disk_limit.map(|limit| {
                HashMap::from([(
                    "size".to_string(),
                    limit.storage_size(plan.image.size).to_string(),
                )])
            }),
            ..Default::default()
        };
        let mut volumes = Vec::new();
        if runtime::is_plain_runc(&spec.runtime) {
            runtime::apply_unsafe_runc(&mut host);
            volumes.push(runtime::INNER_DOCKER_ROOT.to_string());
        }
        // The owner's sessions reach each other by session name, not only by the container's
        // (`cubbi-NAME`). Only on the owner's own network: on a shared one, the name could
        // shadow something other users' sessions reach by that name.
        let owners_network = spec.default_network && self.options.default_network.is_none();
        let networking_config = owners_network.then(|| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                self.default_network(),
                EndpointSettings {
                    aliases: Some(vec![plan.name.clone()]),
                    ..Default::default()
                },
            )])),
        });
        ContainerCreateBody {
            env: runtime::skip_uid_shift_env(&plan.unshifted).map(|var| vec![var]),
            hostname: Some(plan.name.clone()),
            networking_config,
            image: Some(plan.image.reference.clone()),
            labels: Some(all_labels),
            exposed_ports: Some(vec!["22/tcp".to_string()]),
            volumes: Some(volumes),
            host_config: Some(host),
            healthcheck: Some(status_healthcheck()),
            ..Default::default()
        }
    }
}

/// Docker's health check of a session: unhealthy once cubbi-init or the project clone (or its
/// init.sh) wrote a `failed` status, so `docker ps`, and so `session list`, shows
/// `init-failed` without an exec per session (see [`state::session_state`]).
pub(super) fn status_healthcheck() -> HealthConfig {
    const SECOND: i64 = 1_000_000_000;
    HealthConfig {
        test: Some(vec![
            "CMD".into(),
            "/bin/sh".into(),
            "-c".into(),
            "! grep -qs '^failed' /var/lib/cubbi/init-status /var/lib/cubbi/project-status".into(),
        ]),
        // Each check is an exec in the session: every 15 s keeps 50 sessions near 3 a second,
        // and `show` reads the status directly, without waiting for a check.
        interval: Some(15 * SECOND),
        // A busy host can take seconds to start an exec; a slow check is not a failed boot
        // (and `list` confirms an unhealthy session from its status files anyway).
        timeout: Some(30 * SECOND),
        retries: Some(2),
        ..Default::default()
    }
}
