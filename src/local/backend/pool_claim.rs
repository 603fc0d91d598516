//! A create served by the warm pool: when the request fits (see [`pool::PoolRequest`]), a
//! booted member is claimed (`pool::claim`: the record volume, then the rename to
//! `cubbi-NAME.booting`, after which it is a session) and everything personal is applied to
//! the running container. A failure after the claim removes the container and its record and
//! the create goes on cold; a crash leaves a `.booting` session that `close` removes.

use super::*;
use crate::local::pool::{ClaimRecord, PoolRequest, WhyCold};

/// How long the claim's early SSH key exchange, and then its login, may take before it falls
/// back to the readiness poll of a cold create.
const SSH_KEY_EXCHANGE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// What the claim runs as root in the member: the session's files from stdin (`$2` bytes of
/// concatenated tars, as a cold create uploads them), the name, then cubbi-init's pass over the
/// files (modes, env file, persistent configs), then the project clone, which runs at boot in a
/// cold session. `$1` is the session name.
const APPLY_SCRIPT: &str = r#"set -e
head -c "$2" | tar -x -i -p --same-owner --numeric-owner -C / -f -
hostname "$1"
printf '%s\n' "$1" > /etc/hostname 2>/dev/null || true
rm -f /var/lib/cubbi/project-status
/usr/local/lib/cubbi/cubbi-init >/dev/null
if grep -q '^CUBBI_PROJECT_URL=' /etc/cubbi/init.env 2>/dev/null; then
    systemctl restart cubbi-project.service
else
    printf 'skipped\n' > /var/lib/cubbi/project-status
fi
"#;

/// The member a claim holds, as the claim found it.
#[derive(Clone, Copy)]
pub(super) struct ClaimedMember<'a> {
    id: &'a str,
    /// The limits it booted with (`None`: unknown, so the claim sets them).
    limits: Option<validate::ContainerLimits>,
}

/// A step of applying a claim, for the failure message.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {reason}")]
struct ApplyError {
    step: &'static str,
    reason: String,
}

fn at(step: &'static str) -> impl Fn(String) -> ApplyError {
    move |reason| ApplyError { step, reason }
}

impl LocalBackend {
    /// The pool image this create may claim from, or why it boots cold.
    pub(super) fn pool_image(&self, spec: &SessionSpec, plan: &Plan) -> Result<String, WhyCold> {
        let image = plan.image.metadata.as_ref().map(|m| m.name.clone());
        let Some(pool) = &self.options.pool else {
            return Err(match image {
                Some(image) => WhyCold::NoPool(image),
                None => WhyCold::NotACubbiImage,
            });
        };
        let request = PoolRequest {
            image: image.as_deref(),
            target: image.as_deref().map_or(0, |i| pool.targets.target(i)),
            runtime: &spec.runtime,
            member_runtime: &pool.runtime,
            ssh_bind: &spec.ssh_bind.to_string(),
            member_ssh_bind: &pool.ssh_bind.to_string(),
            host_mounts: plan.binds.len(),
            persists_config: plan.image.persists_config(),
            project: plan.project.is_some(),
            per_session_log_tag: self.options.fluentd.is_some(),
            restricted_egress: plan.egress.is_some(),
        };
        request.fits()?;
        Ok(image.unwrap_or_default())
    }

    /// Claims a member for this create and makes it the session. `Ok(None)`: no member could
    /// be used (none ready, or the one claimed failed and was removed); the caller boots cold.
    pub(super) async fn create_from_pool(
        &self,
        spec: &SessionSpec,
        plan: &Plan,
        image: &str,
        progress: &dyn Progress,
    ) -> Result<Option<Session>, ApiError> {
        progress.step(CreateStep::AllocatingPort);
        let persists_config = plan.image.persists_config();
        if persists_config
            && let Some(pool) = &self.options.pool
            && let pool::OwnerData::Demanded(demand) = &pool.owner_data
        {
            // The service's next fill boots this owner's members of the image (this create
            // claims one if any is ready, else boots cold).
            demand.note(image, &self.options.owner);
        }
        let record = ClaimRecord {
            container: String::new(),
            name: plan.name.clone(),
            owner: self.options.owner.clone(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            idle_stop_secs: spec.idle_stop_secs,
        };
        // Without the host lock: Docker's names are the lock here. Only one container can
        // be `cubbi-NAME.booting` (a cold reservation or a claim's rename), and a member's
        // record volume is made once. What that leaves open, a create of the same name that
        // finished between `validate`'s name check and the rename, is checked after it.
        let wanted = pool::claim::Wanted {
            image,
            image_id: (!plan.image.id.is_empty()).then_some(plan.image.id.as_str()),
            // A member holding the owner's data volume, for an image that keeps its config
            // there (a project session of such an image went cold in `pool_image`).
            data_owner: persists_config.then_some(self.options.owner.as_str()),
        };
        let claimed = pool::claim::claim_wanted(self.docker.as_ref(), wanted, record)
            .await
            .map_err(|err| match err {
                pool::ops::PoolError::NameTaken(name) => ApiError::Conflict(format!(
                    "a container named {name} exists already on this endpoint; pick another --name"
                )),
                other => ApiError::unavailable(other.to_string()),
            })?;
        let Some(record) = claimed else {
            tracing::info!(
                "not from the warm pool: {}",
                WhyCold::Empty(image.to_string())
            );
            return Ok(None);
        };
        let id = record.container.clone();
        if self.ready_name_taken(&plan.name).await {
            self.unclaim(&id).await;
            return Err(ApiError::Conflict(format!(
                "a session named `{}` was created meanwhile; pick another --name",
                plan.name
            )));
        }
        let member = self.docker.inspect_container(&id).await.ok();
        let member_limits = member
            .as_ref()
            .and_then(|c| c.host_config.as_ref())
            .map(validate::ContainerLimits::of_container);
        let member_labels = member
            .and_then(|c| c.config)
            .and_then(|c| c.labels)
            .unwrap_or_default();
        let Some(session_labels) = record.session_labels(&id, &member_labels) else {
            self.unclaim(&id).await;
            return Ok(None);
        };
        progress.reserved(
            &session_labels
                .clone()
                .into_session(id.clone(), SessionState::Creating),
        );
        let mut ssh_files_written = false;
        match self
            .apply_claim(
                spec,
                plan,
                ClaimedMember {
                    id: &id,
                    limits: member_limits,
                },
                &session_labels,
                &mut ssh_files_written,
                progress,
            )
            .await
        {
            Ok(()) => {
                let mut session = session_labels.into_session(id, SessionState::Ready);
                session.resources = Some(plan.resources());
                session.pool = true;
                tracing::info!("session {} is a member of the warm pool", plan.name);
                Ok(Some(session))
            }
            Err(err) => {
                tracing::warn!(
                    "the warm pool's member for {} failed ({err}); booting a new session instead",
                    plan.name
                );
                self.unclaim(&id).await;
                if ssh_files_written && let Some(files) = &self.options.ssh_files {
                    let _ = files.remove_session(&plan.name);
                }
                Ok(None)
            }
        }
    }

    /// Everything personal, applied to the claimed running member, then the rename that marks
    /// the session ready. The parts that do not depend on each other run at once: joining the
    /// owner's networks, the new limits, the files with the apply script (one exec that reads
    /// them on stdin), and the SSH key exchange, so that only the login is left at the end.
    async fn apply_claim(
        &self,
        spec: &SessionSpec,
        plan: &Plan,
        member: ClaimedMember<'_>,
        session_labels: &SessionLabels,
        ssh_files_written: &mut bool,
        progress: &dyn Progress,
    ) -> Result<(), ApplyError> {
        let ClaimedMember {
            id,
            limits: member_limits,
        } = member;
        pool::claim::crash_point("applying");
        progress.step(CreateStep::CreatingContainer);
        let session = session_labels
            .clone()
            .into_session(id.to_string(), SessionState::Ready);
        let target = self
            .ssh_target(&session)
            .map_err(|err| at("reading the host key")(err.to_string()))?;
        let archive = self
            .session_archives(spec, plan, None)
            .map_err(|err| at("preparing the files")(err.to_string()))?
            .concat();
        let timed = |part: &'static str| {
            let started = std::time::Instant::now();
            move || {
                tracing::debug!(
                    took_ms = started.elapsed().as_millis() as u64,
                    "claim: {part}"
                )
            }
        };
        let networks = async {
            let done = timed("networks joined");
            self.join_networks(spec, plan, id).await?;
            done();
            Ok::<_, ApplyError>(())
        };
        let wanted = plan.limits();
        let limits = async {
            // Most creates ask for the image's defaults, which the member booted with: then
            // there is nothing to update (and one `runc update` fewer per claim).
            if member_limits == Some(wanted) {
                return Ok(());
            }
            let done = timed("limits set");
            self.docker
                .update_container(
                    id,
                    bollard::models::ContainerUpdateBody {
                        memory: wanted.memory,
                        memory_swap: wanted.memory_swap,
                        nano_cpus: wanted.nano_cpus,
                        pids_limit: wanted.pids_limit,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|err| at("setting the limits")(err.to_string()))?;
            done();
            Ok(())
        };
        let files = async {
            let done = timed("files in and applied");
            self.apply_files(id, &plan.name, archive).await?;
            done();
            Ok(())
        };
        let key_exchange = async {
            let done = timed("SSH key exchange");
            let exchanged = SshSession::key_exchange(&target, SSH_KEY_EXCHANGE_WITHIN).await;
            done();
            exchanged
        };
        let (networks, limits, files, exchanged) =
            tokio::join!(networks, limits, files, key_exchange);
        networks?;
        limits?;
        files?;
        pool::claim::crash_point("applied");
        progress.step(CreateStep::WaitingForSsh);
        // The login on the connection opened meanwhile; the readiness poll of a cold create
        // only when that connection failed.
        let logged_in = match exchanged {
            Ok(exchanged) => exchanged
                .log_in_once(&target, SSH_KEY_EXCHANGE_WITHIN)
                .await
                .inspect_err(|err| tracing::debug!("claim: the first login failed: {err}"))
                .is_ok(),
            Err(err) => {
                tracing::debug!("claim: the early key exchange failed: {err}");
                false
            }
        };
        if !logged_in {
            self.wait_for_sshd(&target, id, 0)
                .await
                .map_err(|err| at("waiting for sshd")(err.to_string()))?;
        }
        if let Some(files) = &self.options.ssh_files {
            progress.step(CreateStep::WritingSshConfig);
            *ssh_files_written = true;
            files
                .write_session(&plan.name, &session.ssh)
                .map_err(|err| at("writing the SSH config")(err.to_string()))?;
        }
        self.mark_ready(id, &plan.name)
            .await
            .map_err(|err| at("marking it ready")(err.to_string()))
    }

    /// The owner's network (aliased with the session's name) and any others asked for.
    async fn join_networks(
        &self,
        spec: &SessionSpec,
        plan: &Plan,
        id: &str,
    ) -> Result<(), ApplyError> {
        let owners_network = spec.default_network && self.options.default_network.is_none();
        for (index, network) in plan.networks.iter().enumerate() {
            let joined = if index == 0 && owners_network {
                self.docker
                    .connect_network_aliased(network, id, vec![plan.name.clone()])
                    .await
            } else {
                self.docker.connect_network(network, id).await
            };
            joined.map_err(|err| at("joining a network")(format!("{network}: {err}")))?;
        }
        Ok(())
    }

    /// The session's files (`archive`, the tars a cold boot uploads, concatenated), unpacked
    /// as root by the apply script in one exec, which then runs cubbi-init over them.
    async fn apply_files(&self, id: &str, name: &str, archive: Vec<u8>) -> Result<(), ApplyError> {
        let size = archive.len().to_string();
        let applied = session_exec::run_bounded_with_input(
            self.docker.as_ref(),
            id,
            vec!["sh", "-c", APPLY_SCRIPT, "sh", name, &size],
            Some("0"),
            Some(archive),
            ExecBounds::CLAIM,
        )
        .await
        .map_err(|err| at("applying the session")(err.to_string()))?;
        pool::claim::crash_point("files");
        if applied.exit_code != Some(0) {
            let (init, _) = self.reported_status(id).await;
            return Err(at("applying the session")(format!(
                "exit {:?}{}",
                applied.exit_code,
                init.map(|status| format!(" ({status})"))
                    .unwrap_or_default()
            )));
        }
        Ok(())
    }

    /// Whether a container holds the ready name `cubbi-NAME` (a claim holds only the booting
    /// name until it is done). An engine that cannot answer counts as taken.
    /// One inspect by exact name (Docker's name index), not a `docker ps` over every
    /// container: `cubbi-` is never a prefix of a container id, so it cannot match one.
    pub(super) async fn ready_name_taken(&self, name: &str) -> bool {
        match self
            .docker
            .inspect_container(&labels::container_name(name))
            .await
        {
            Ok(_) => true,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => false,
            Err(_) => true,
        }
    }

    /// Removes a claimed member that did not become a session, and its claim record.
    async fn unclaim(&self, id: &str) {
        if let Err(err) = self.remove(id).await {
            tracing::warn!("could not remove a failed pool member: {err}");
        }
        self.remove_claim_record(id).await;
    }

    /// Removes the claim record of container `id`, if it has one (a claimed session's close).
    pub(super) async fn remove_claim_record(&self, id: &str) {
        let Ok(volumes) = self.docker.list_volumes(pool::record::CLAIM_OF).await else {
            return;
        };
        for volume in volumes {
            if ClaimRecord::from_labels(&volume.labels).is_some_and(|r| r.container == id) {
                let _ = self.docker.remove_volume(&volume.name).await;
            }
        }
    }
}
