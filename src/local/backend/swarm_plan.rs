//! A spec checked for a Swarm session (`crate::swarm`): the same validation as a local create
//! (name, image, keys, env, limits, runtime, project), what a service cannot have refused by
//! name, and the session's files (host key, authorized keys, env, project credential, MCP
//! configs) as one tar, which travels as a Swarm secret and the image's PID 1 unpacks at boot.

use super::*;

/// Everything a Swarm backend needs to make a session's service.
pub struct ServicePlan {
    pub name: String,
    pub owner: String,
    /// The image reference every node must have (`cubbi-base:latest`).
    pub image: String,
    pub command: Vec<String>,
    pub memory: i64,
    pub nano_cpus: i64,
    pub pids_limit: i64,
    /// The owner's own network first (made attachable overlay by the caller), then the spec's.
    pub networks: Vec<String>,
    /// The owner's data volume or the project's config volume, and where it is mounted.
    pub data_volume: String,
    pub data_path: &'static str,
    /// The session's pinned host key (its private half is inside `files`).
    pub host_key: PrivateKey,
    pub host_public: String,
    /// Concatenated tars (unpacked with `tar -x -i`): secret, so only ever a Swarm secret.
    pub files: Vec<u8>,
    /// Extra labels the session carries (idle stop, the service's own).
    pub extra_labels: HashMap<String, String>,
    pub resources: Resources,
}

impl std::fmt::Debug for ServicePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServicePlan")
            .field("name", &self.name)
            .field("image", &self.image)
            .field("files", &format_args!("{} secret bytes", self.files.len()))
            .finish_non_exhaustive()
    }
}

impl LocalBackend {
    /// Validates `spec` for a session that runs as a Swarm service, refusing what such a
    /// session cannot have yet, and prepares its files.
    pub async fn plan_service(&self, spec: &SessionSpec) -> Result<ServicePlan, ApiError> {
        if spec.workspace.is_some() || !spec.volumes.is_empty() {
            return Err(ApiError::invalid(
                "a session on a Swarm cannot mount host folders (a workspace or -v): its node is \
                 chosen by the service, and folders are per host; clone a project instead \
                 (--project)",
            ));
        }
        let plan = self.validate(spec).await?;
        if plan
            .egress
            .as_ref()
            .is_some_and(|policy| policy.mode() != crate::egress::EgressMode::Open)
        {
            return Err(ApiError::invalid(
                "egress by name is not available for sessions on a Swarm yet (each node would \
                 need its own resolver); create the session without an egress policy, from an \
                 image that does not restrict it",
            ));
        }
        let (data_volume, data_path) = match &plan.project {
            Some((checkout, _)) => (
                naming::config_volume_name(&self.options.owner, &checkout.id),
                CONFIG_VOLUME_PATH,
            ),
            None => (
                naming::data_volume_name(&self.options.owner),
                DATA_VOLUME_PATH,
            ),
        };
        let host_key = keys::generate(&format!("cubbi-{}", plan.name))
            .map_err(|err| ApiError::unavailable(err.to_string()))?;
        let host_public = keys::public_openssh(host_key.public_key())
            .map_err(|err| ApiError::unavailable(err.to_string()))?;
        let host_private = keys::private_openssh(&host_key)
            .map_err(|err| ApiError::unavailable(err.to_string()))?;
        let files = self
            .session_archives(spec, &plan, Some((&host_private, &host_public)))
            .map_err(|err| ApiError::unavailable(err.to_string()))?
            .concat();
        let mut extra_labels = self.options.extra_labels.clone();
        if let Some(secs) = spec.idle_stop_secs {
            extra_labels.insert(labels::IDLE_STOP.into(), secs.to_string());
        }
        let resources = plan.resources();
        Ok(ServicePlan {
            command: plan.command(),
            name: plan.name,
            owner: self.options.owner.clone(),
            image: plan.image.reference,
            memory: plan.memory,
            nano_cpus: plan.nano_cpus,
            pids_limit: plan.pids_limit,
            networks: plan.networks,
            data_volume,
            data_path,
            host_key,
            host_public,
            files,
            extra_labels,
            resources,
        })
    }
}
