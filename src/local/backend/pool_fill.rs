//! Filling the warm pool: booting members up to each image's target. A member is booted the
//! way a cold session is (same image, runtime, limits, health check, a host key of its own made
//! here) but owned by nobody, on the pool's network, and named `cubbi-pool-booting.*` until
//! sshd has accepted a throwaway probe key; then that key is removed (nobody can log in until a
//! claim writes the owner's) and the member is renamed `cubbi-pool.*`, which makes it claimable.

use super::*;
use crate::local::pool::MemberName;
use crate::local::pool::member::member_labels;

/// Members booted at once: each is a systemd boot, which is CPU-bound for a second or two.
const BOOTS_AT_ONCE: usize = 4;
/// A member still named booting after this long belongs to a filler that died: removed.
const STALE_BOOT_SECS: i64 = 300;

/// What one fill did for one image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Filled {
    pub image: String,
    /// Members there (ready or booting) before this fill.
    pub had: u32,
    /// Members this fill booted to readiness.
    pub started: u32,
    pub target: u32,
    /// The owner whose data volume these members hold (a tool image's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holding_data_of: Option<String>,
    /// Why the image got fewer than it lacked (a refusal, or the first failed boot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// Which members a fill makes.
#[derive(Debug, Clone, Copy)]
enum FillOf<'a> {
    /// Every image's; a tool image's hold this backend's owner's data (the CLI's pool).
    All,
    /// Only the members holding nobody's data (a service's fill for every owner).
    Unbound,
    /// Only these tool images' members, holding this backend's owner's data (a service's fill
    /// for one owner who uses them).
    OwnerData(&'a [String]),
}

/// The owner's data volume a member of an image that keeps its config there boots with.
struct HeldData {
    volume: String,
    owner: String,
}

/// The members one image's fill makes: of which image, and holding whose data, if any.
#[derive(Clone, Copy)]
struct MemberKind<'a> {
    image: &'a str,
    resolved: &'a validate::ResolvedImage,
    holds: Option<&'a HeldData>,
}

impl MemberKind<'_> {
    /// The owner whose data these members hold, which is the pool (target and count) they
    /// make up: every owner has their own of such an image.
    fn data_owner(&self) -> Option<&str> {
        self.holds.map(|data| data.owner.as_str())
    }
}

/// A member created (under the lock) and not yet booted.
struct MemberBoot {
    id: String,
    name: MemberName,
    port: u16,
    host_key: PrivateKey,
}

impl LocalBackend {
    /// Boots members until every image with a target has that many (ready or booting), at most
    /// [`BOOTS_AT_ONCE`] at a time, and waits for them. Members that died are removed first.
    /// A tool image's members hold an owner's data volume ([`pool::OwnerData`]): the CLI's
    /// own; a service's, for each owner who created a session of the image lately (the
    /// members of owners who have not are removed).
    pub async fn fill_pool(&self) -> Result<Vec<Filled>, ApiError> {
        let Some(pool) = &self.options.pool else {
            return Ok(Vec::new());
        };
        let pool::OwnerData::Demanded(demand) = &pool.owner_data else {
            return self.fill_pool_of(FillOf::All).await;
        };
        let mut filled = self.fill_pool_of(FillOf::Unbound).await?;
        let demand = Arc::clone(demand);
        let drained = pool::ops::drain_unwanted_owner_data(self.docker.as_ref(), |image, owner| {
            demand.keeps(image, owner)
        })
        .await;
        if let Err(err) = drained {
            tracing::warn!("could not remove the members of owners gone quiet: {err}");
        }
        // Creates note demand only for tool images with a target.
        let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (image, _) in pool.targets.iter() {
            for owner in demand.owners(image) {
                wanted.entry(owner).or_default().push(image.to_string());
            }
        }
        for (owner, images) in wanted {
            let owners = LocalBackend::with_api(
                Arc::clone(&self.docker),
                LocalOptions {
                    owner,
                    ..self.options.clone()
                },
            );
            filled.extend(owners.fill_pool_of(FillOf::OwnerData(&images)).await?);
        }
        Ok(filled)
    }

    async fn fill_pool_of(&self, which: FillOf<'_>) -> Result<Vec<Filled>, ApiError> {
        let Some(pool) = self.options.pool.clone() else {
            return Ok(Vec::new());
        };
        if pool.targets.is_empty() {
            return Ok(Vec::new());
        }
        if !matches!(which, FillOf::OwnerData(_)) {
            // Once per round: an owner's fill follows the one for every owner.
            self.ensure_pool_network().await?;
            self.remove_dead_members().await?;
            // Records of claims that died before their rename hold their member (and keep it
            // out of the count of ready ones) until swept, once old enough to be no live claim's.
            if let Err(err) = pool::claim::sweep_records(self.docker.as_ref(), unix_now()).await {
                tracing::warn!("could not sweep stale claim records: {err}");
            }
        }
        let mut filled = Vec::new();
        for (image, target) in pool.targets.iter() {
            if let FillOf::OwnerData(images) = which
                && !images.iter().any(|wanted| wanted == image)
            {
                continue;
            }
            let mut row = Filled {
                image: image.to_string(),
                had: 0,
                started: 0,
                target,
                holding_data_of: None,
                failed: None,
            };
            let resolved = match self.resolve_image(image).await {
                Ok(resolved) => resolved,
                Err(err) => {
                    row.failed = Some(err.to_string());
                    filled.push(row);
                    continue;
                }
            };
            // Members of an older build go first, once per round: every owner's fill of the
            // round follows the one for every owner (`fill_pool`), which did it.
            if !matches!(which, FillOf::OwnerData(_)) {
                self.remove_outdated_members(image, &resolved.id).await?;
            }
            let data_owner = match (resolved.persists_config(), which) {
                (false, FillOf::OwnerData(_)) => continue,
                (false, _) => None,
                // Filled per owner who uses it (`fill_pool`), not for every owner.
                (true, FillOf::Unbound) => continue,
                (true, _) => Some(self.options.owner.as_str()),
            };
            row.holding_data_of = data_owner.map(str::to_string);
            // The common case (the service looks every 2 s): full, found without the lock
            // and, for a tool image, without the data volume's calls.
            let present = self.member_count(image, data_owner).await?;
            if present >= target {
                row.had = present;
                filled.push(row);
                continue;
            }
            let holds = match data_owner {
                None => None,
                Some(owner) => match self.ensure_data_volume().await {
                    Ok(volume) => Some(HeldData {
                        volume,
                        owner: owner.to_string(),
                    }),
                    Err(err) => {
                        row.failed = Some(err.to_string());
                        filled.push(row);
                        continue;
                    }
                },
            };
            let kind = MemberKind {
                image,
                resolved: &resolved,
                holds: holds.as_ref(),
            };
            let (had, members) = self.reserve_members(&pool, kind, target).await?;
            row.had = had;
            let booted: Vec<Result<(), String>> = futures_util::stream::iter(members)
                .map(|member| self.boot_member(&pool, member))
                .buffer_unordered(BOOTS_AT_ONCE)
                .collect()
                .await;
            for outcome in booted {
                match outcome {
                    Ok(()) => row.started += 1,
                    Err(err) => {
                        row.failed.get_or_insert(err);
                    }
                }
            }
            filled.push(row);
        }
        Ok(filled)
    }

    /// Members that can never serve: a ready-named one that exited, and a booting one
    /// whose filler is gone. A claimed member has another name and is never touched here.
    async fn remove_dead_members(&self) -> Result<(), ApiError> {
        let now = unix_now();
        for container in self
            .containers("label", &[pool::member::POOL.to_string()])
            .await?
        {
            let Some((member, booting)) = MemberName::of_container(&container) else {
                continue;
            };
            // Only a member that ran and stopped: a `created` one may be another filler's
            // (or a test's) on its way to `start`.
            let stopped = matches!(
                container.state,
                Some(
                    bollard::models::ContainerSummaryStateEnum::EXITED
                        | bollard::models::ContainerSummaryStateEnum::DEAD
                )
            );
            let dead = if booting {
                now - container.created.unwrap_or(now) > STALE_BOOT_SECS
            } else {
                stopped
            };
            if dead {
                // By name: a member claimed meanwhile has another one and is spared.
                let name = if booting {
                    member.booting_container_name()
                } else {
                    member.container_name()
                };
                let _ = self.docker.remove_container(&name).await;
            }
        }
        Ok(())
    }

    /// Members of `image` booted from another build of it than `image_id` (it was rebuilt
    /// since): never claimed, so replaced here. By name, so a claimed one is spared.
    async fn remove_outdated_members(&self, image: &str, image_id: &str) -> Result<(), ApiError> {
        for container in self
            .containers("label", &[format!("{}={image}", pool::member::POOL)])
            .await?
        {
            let outdated = container
                .labels
                .as_ref()
                .and_then(|labels| labels.get(pool::member::IMAGE_ID))
                .is_none_or(|id| id != image_id);
            if !outdated {
                continue;
            }
            for name in container.names.iter().flatten() {
                if MemberName::parse_any(name).is_some() {
                    let _ = self
                        .docker
                        .remove_container(name.trim_start_matches('/'))
                        .await;
                }
            }
        }
        Ok(())
    }

    /// Creates the image's missing members, each under one short hold of the host lock
    /// (count, pick a port, create the container), so two fillers never overfill or share a
    /// port, and a claim waiting for the lock waits for one member's create, not a whole fill.
    /// Returns how many members there were before, and the ones created here.
    async fn reserve_members(
        &self,
        pool: &PoolSettings,
        kind: MemberKind<'_>,
        target: u32,
    ) -> Result<(u32, Vec<MemberBoot>), ApiError> {
        let image = kind.image;
        let mut had = None;
        let mut members = Vec::new();
        loop {
            // The key outside the lock: on a loaded host it is the slow part.
            let name = MemberName::fresh(image);
            let host_key = keys::generate(&name.container_name())
                .map_err(|err| ApiError::unavailable(err.to_string()))?;
            let host_public = keys::public_openssh(host_key.public_key())
                .map_err(|err| ApiError::unavailable(err.to_string()))?;
            let lock = self.lock().await?;
            let present = self.member_count(image, kind.data_owner()).await?;
            had.get_or_insert(present);
            if present >= target {
                break;
            }
            let taken = self.taken_ports().await?;
            let port = match ports::pick_free_port(
                self.options.ports,
                &taken,
                pool.ssh_bind,
                ports::can_bind,
            ) {
                Ok(port) => port,
                // A full port range leaves the pool short; sessions come first.
                Err(_) if !members.is_empty() => break,
                Err(err) => return Err(err),
            };
            let body = self.member_body(pool, kind, port, &host_public)?;
            let created = self
                .docker
                .create_container(&name.booting_container_name(), body)
                .await
                .map_err(Self::docker_error("cannot create a pool member"))?;
            drop(lock);
            members.push(MemberBoot {
                id: created.id,
                name,
                port,
                host_key,
            });
        }
        Ok((had.unwrap_or(0), members))
    }

    /// The image's members holding `data_owner`'s data (`None`: nobody's), ready or booting
    /// (a claimed one is a session).
    async fn member_count(&self, image: &str, data_owner: Option<&str>) -> Result<u32, ApiError> {
        Ok(self
            .containers("label", &[format!("{}={image}", pool::member::POOL)])
            .await?
            .iter()
            .filter(|c| MemberName::of_container(c).is_some())
            .filter(|c| pool::member::data_owner(c.labels.as_ref()) == data_owner)
            .count() as u32)
    }

    /// The container a member is: a cold session's body without anything personal (no
    /// workspace, owner label, per-session log tag or egress label), and no data volume but
    /// the owner's for an image that keeps its config there ([`OwnerData`]).
    fn member_body(
        &self,
        pool: &PoolSettings,
        kind: MemberKind<'_>,
        port: u16,
        host_public: &str,
    ) -> Result<ContainerCreateBody, ApiError> {
        let MemberKind {
            image,
            resolved,
            holds,
        } = kind;
        let command = resolved
            .metadata
            .as_ref()
            .map(|m| m.command.clone())
            .unwrap_or_else(|| vec!["bash".into(), "-l".into()]);
        let mut member_labels = member_labels(
            image,
            &resolved.reference,
            port,
            &pool.ssh_bind.to_string(),
            host_public,
            &command,
        );
        member_labels.extend(self.options.extra_labels.clone());
        member_labels.insert(pool::member::IMAGE_ID.to_string(), resolved.id.clone());
        if let Some(data) = holds {
            member_labels.insert(pool::member::DATA_OWNER.to_string(), data.owner.clone());
        }
        let limits = validate::ContainerLimits::defaults()?;
        let mut host = HostConfig {
            binds: holds.map(|data| vec![format!("{}:{DATA_VOLUME_PATH}", data.volume)]),
            port_bindings: Some(HashMap::from([(
                "22/tcp".to_string(),
                Some(vec![PortBinding {
                    host_ip: Some(pool.ssh_bind.to_string()),
                    host_port: Some(port.to_string()),
                }]),
            )])),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            runtime: Some(pool.runtime.clone()),
            memory: limits.memory,
            memory_swap: limits.memory_swap,
            nano_cpus: limits.nano_cpus,
            pids_limit: limits.pids_limit,
            network_mode: Some(POOL_NETWORK.to_string()),
            storage_opt: self.options.disk_limit.map(|limit| {
                HashMap::from([(
                    "size".to_string(),
                    limit.storage_size(resolved.size).to_string(),
                )])
            }),
            ..Default::default()
        };
        let mut volumes = Vec::new();
        if runtime::is_plain_runc(&pool.runtime) {
            runtime::apply_unsafe_runc(&mut host);
            volumes.push(runtime::INNER_DOCKER_ROOT.to_string());
        }
        Ok(ContainerCreateBody {
            hostname: Some("cubbi-pool".into()),
            image: Some(resolved.reference.clone()),
            labels: Some(member_labels),
            exposed_ports: Some(vec!["22/tcp".to_string()]),
            volumes: Some(volumes),
            host_config: Some(host),
            healthcheck: Some(create::status_healthcheck()),
            ..Default::default()
        })
    }

    /// Boots one created member to readiness, or removes it.
    async fn boot_member(&self, pool: &PoolSettings, member: MemberBoot) -> Result<(), String> {
        let id = member.id.clone();
        let outcome = self.boot_member_steps(pool, &member).await;
        if outcome.is_err() {
            let _ = self.remove(&id).await;
        }
        outcome
    }

    async fn boot_member_steps(
        &self,
        pool: &PoolSettings,
        member: &MemberBoot,
    ) -> Result<(), String> {
        let id = member.id.as_str();
        let host_private = keys::private_openssh(&member.host_key).map_err(|e| e.to_string())?;
        let host_public =
            keys::public_openssh(member.host_key.public_key()).map_err(|e| e.to_string())?;
        // A key only this fill knows, to see sshd accept a login as a session's create does.
        let probe = Arc::new(keys::generate("cubbi-pool-probe").map_err(|e| e.to_string())?);
        let probe_public = keys::public_openssh(probe.public_key()).map_err(|e| e.to_string())?;
        // Where the member's inner dockerd puts its bridge: no network a claim joins overlaps.
        let inner_bridge = self
            .inner_docker_bridge()
            .await
            .map_err(|e| format!("reserving the inner Docker's subnet: {e}"))?;
        let archive = upload::archive(&upload::SessionFiles {
            host_key: Some((&host_private, &host_public)),
            authorized_key: &probe_public,
            env: &BTreeMap::new(),
            init: &BTreeMap::new(),
            persistent_configs: &[],
            project_credentials: &project::CredentialFiles::default(),
            inner_docker_bridge: Some(&inner_bridge),
        })
        .map_err(|e| e.to_string())?;
        self.docker
            .upload_archive(id, archive)
            .await
            .map_err(|e| format!("copying the member's files: {e}"))?;
        self.docker
            .start_container(id)
            .await
            .map_err(|e| format!("starting a member: {e}"))?;
        let connect_host = match pool.ssh_bind.to_string().as_str() {
            "0.0.0.0" | "::" => "127.0.0.1".to_string(),
            other => other.to_string(),
        };
        let target = SshTarget {
            address: format!("{connect_host}:{}", member.port),
            user: labels::AGENT_USER.to_string(),
            client_key: probe,
            host_key: member.host_key.public_key().clone(),
        };
        if let Err(err) = self.wait_for_sshd(&target, id, 0).await {
            return Err(self.explain_boot_failure(id, err.to_string()).await);
        }
        let emptied = session_exec::run_bounded(
            self.docker.as_ref(),
            id,
            vec!["sh", "-c", ": > /home/agent/.ssh/authorized_keys"],
            Some("0"),
            ExecBounds::AUTHORIZE,
        )
        .await
        .map_err(|e| format!("removing the probe key: {e}"))?;
        if emptied.exit_code != Some(0) {
            return Err(format!(
                "removing the probe key exited with {:?}",
                emptied.exit_code
            ));
        }
        self.docker
            .rename_container(id, &member.name.container_name())
            .await
            .map_err(|e| format!("marking a member ready: {e}"))
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
