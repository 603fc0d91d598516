//! A spec checked against the endpoint and turned into a [`Plan`]: everything a create
//! refuses, it refuses here, before anything is made.

use super::*;

/// An image resolved on the endpoint, with the metadata it was built with (if a cubbi image).
pub(super) struct ResolvedImage {
    pub(super) reference: String,
    /// Docker's id of the image (`sha256:...`).
    pub(super) id: String,
    pub(super) metadata: Option<ImageMetadata>,
    /// Bytes of the image's file system (Docker's `Size`).
    pub(super) size: i64,
}

impl ResolvedImage {
    /// Whether the image keeps its tools' config in the owner's data volume.
    pub(super) fn persists_config(&self) -> bool {
        self.metadata
            .as_ref()
            .is_some_and(|m| !m.persistent_configs.is_empty())
    }
}

/// Everything validated, ready to create.
pub(super) struct Plan {
    pub(super) name: String,
    /// The spec's extra keys, one canonical line each (see [`keys::canonical_public`]).
    pub(super) authorized_keys: Vec<String>,
    pub(super) image: ResolvedImage,
    pub(super) workspace: Option<PathBuf>,
    pub(super) binds: Vec<String>,
    pub(super) networks: Vec<String>,
    pub(super) memory: i64,
    pub(super) nano_cpus: i64,
    pub(super) pids_limit: i64,
    /// `-v` targets Sysbox must not ID-map (see [`runtime::unshifted_binds`]).
    pub(super) unshifted: Vec<String>,
    /// The project to clone (registered, or an ad-hoc URL) and its credential's files.
    pub(super) project: Option<(ProjectCheckout, project::CredentialFiles)>,
    /// The egress policy recorded on the session (`None`: open, no label).
    pub(super) egress: Option<crate::egress::EgressPolicy>,
}

/// The limits a session's container gets, as Docker's `HostConfig` carries them: set at a
/// cold create, and compared with (and, when they differ, updated on) a claimed member's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ContainerLimits {
    pub memory: Option<i64>,
    pub memory_swap: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub pids_limit: Option<i64>,
}

impl ContainerLimits {
    /// Memory, CPUs (in billionths) and pids, with swap as large as the memory limit
    /// (Docker's MemorySwap counts both).
    pub fn new(memory: i64, nano_cpus: i64, pids_limit: i64) -> Self {
        Self {
            memory: Some(memory),
            memory_swap: Some(memory.saturating_mul(2)),
            nano_cpus: Some(nano_cpus),
            pids_limit: Some(pids_limit),
        }
    }

    /// What a create that asks for no limits gets (and what pool members boot with, so such a
    /// create's claim has nothing to update): half the host's memory and cores, the default
    /// pids limit.
    pub fn defaults() -> Result<Self, ApiError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Self::new(
            limits::default_memory(limits::host_memory()?),
            limits::nano_cpus(None, cores)?,
            limits::PidsLimit::default().get(),
        ))
    }

    /// The limits a container has now.
    pub fn of_container(host: &bollard::models::HostConfig) -> Self {
        Self {
            memory: host.memory,
            memory_swap: host.memory_swap,
            nano_cpus: host.nano_cpus,
            pids_limit: host.pids_limit,
        }
    }
}

impl Plan {
    /// The container's limits.
    pub(super) fn limits(&self) -> ContainerLimits {
        ContainerLimits::new(self.memory, self.nano_cpus, self.pids_limit)
    }

    /// What a login runs: the image's command, else a login shell.
    pub(super) fn command(&self) -> Vec<String> {
        self.image
            .metadata
            .as_ref()
            .map(|m| m.command.clone())
            .unwrap_or_else(|| vec!["bash".into(), "-l".into()])
    }

    pub(super) fn resources(&self) -> Resources {
        let limits = self.limits();
        Resources {
            memory: limits.memory,
            memory_swap: limits.memory_swap,
            cpus: Some(self.nano_cpus as f64 / 1e9),
            pids_limit: limits.pids_limit,
        }
    }
}

impl LocalBackend {
    pub(super) async fn validate(&self, spec: &SessionSpec) -> Result<Plan, ApiError> {
        let project = match &spec.project {
            Some(reference) => {
                let checkout = self.checkout(reference).await?;
                let files = project::credential_files(&checkout)?;
                Some((checkout, files))
            }
            None => None,
        };
        let name = match &spec.name {
            Some(raw) => naming::sanitize_hostname(raw).ok_or_else(|| {
                ApiError::invalid(format!(
                    "`{raw}` has nothing usable as a session name; use letters, digits and `-`"
                ))
            })?,
            None => naming::default_name(spec.workspace.as_deref(), spec.project.as_deref()),
        };
        for (key, value) in &spec.env {
            upload::validate_env(key, value)?;
        }
        for server in &spec.mcp {
            server
                .check()
                .map_err(|err| ApiError::invalid(err.to_string()))?;
        }
        let authorized_keys = spec
            .authorized_keys
            .iter()
            .map(|key| {
                keys::canonical_public(key).map_err(|err| ApiError::invalid(err.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sockets = mounts::known_sockets(self.options.engine_socket.as_deref());
        let workspace = match &spec.workspace {
            Some(path) => Some(host_path(path, "workspace", true, &sockets)?),
            None => None,
        };
        let mut binds = Vec::new();
        let mut unshifted = Vec::new();
        let mut targets: Vec<(String, String)> = Vec::new();
        if let Some(workspace) = &workspace {
            binds.push(format!("{}:{WORKSPACE_PATH}", workspace.display()));
            targets.push((WORKSPACE_PATH.into(), "the workspace".into()));
        }
        if runtime::is_plain_runc(&spec.runtime) {
            targets.push((
                runtime::INNER_DOCKER_ROOT.into(),
                "the inner Docker's storage (under --unsafe-runc)".into(),
            ));
        }
        for volume in &spec.volumes {
            let target = mounts::check_target(&volume.container)?;
            let host = host_path(&volume.host, "volume", false, &sockets)?;
            let mode = if volume.read_only { ":ro" } else { "" };
            if runtime::is_sysbox(&spec.runtime) && runtime::owned_by_host_root(&host) {
                unshifted.push(target.clone());
            }
            binds.push(format!("{}:{target}{mode}", host.display()));
            targets.push((
                target,
                format!("-v {}:{}", volume.host.display(), volume.container),
            ));
        }
        mounts::check_duplicates(targets.iter().map(|(t, what)| (t.as_str(), what.as_str())))?;
        let memory = match spec.memory {
            Some(limit) => limit.bytes(),
            None => limits::default_memory(limits::host_memory()?),
        };
        let pids_limit = spec.pids_limit.unwrap_or_default().get();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let nano_cpus = limits::nano_cpus(spec.cpus, cores)?;

        let info = self
            .docker
            .info()
            .await
            .map_err(Self::docker_error("cannot query the Docker endpoint"))?;
        let available: Vec<String> = info
            .runtimes
            .map(|runtimes| runtimes.into_keys().collect())
            .unwrap_or_default();
        runtime::check_runtime(
            &spec.runtime,
            spec.unsafe_runc,
            &available,
            self.options.runtime_advice,
        )?;

        let image = self.resolve_image(&spec.image).await?;
        if let Some(name) = spec.mcp_names.first() {
            return Err(ApiError::invalid(format!(
                "MCP server `{name}` is named, not given: the local engine takes servers from \
                 this machine's registry (`cubbi mcp add`)"
            )));
        }
        let mut networks = Vec::new();
        if spec.default_network {
            networks.push(self.default_network());
        }
        for network in &spec.networks {
            crate::config::keys::validate_network_name(network)
                .map_err(|err| ApiError::invalid(err.to_string()))?;
            if self.docker.inspect_network(network).await.is_err() {
                return Err(ApiError::invalid(format!(
                    "network `{network}` does not exist; create it with `docker network create {network}`"
                )));
            }
            if !networks.contains(network) {
                networks.push(network.clone());
            }
        }
        // Early, for a quick refusal; the check that counts is under the lock (`reserve`).
        self.check_name_free(&name).await?;
        let egress = crate::egress::session_policy(spec.egress.as_ref(), image.metadata.as_ref())
            .map_err(|err| ApiError::invalid(err.to_string()))?;
        Ok(Plan {
            egress,
            name,
            authorized_keys,
            image,
            workspace,
            binds,
            networks,
            memory,
            nano_cpus,
            pids_limit,
            unshifted: runtime::unshifted_binds(unshifted)?,
            project,
        })
    }

    /// The registered project `reference` names, else `reference` as an ad-hoc git URL.
    pub(super) async fn checkout(&self, reference: &str) -> Result<ProjectCheckout, ApiError> {
        if let Some(source) = &self.options.projects
            && let Some(checkout) = source.checkout(reference).await?
        {
            return Ok(checkout);
        }
        if project::looks_like_git_url(reference) {
            return Ok(project::ad_hoc(reference));
        }
        // `host/org/repo[#branch]`, not registered: cloned over HTTPS without a credential.
        let (base, branch) = match reference.split_once('#') {
            Some((base, branch)) => (base, Some(branch)),
            None => (reference, None),
        };
        match crate::projects::url::RepoUrl::parse(base) {
            Ok(url) => Ok(project::ad_hoc(&match branch {
                Some(branch) => format!("{}#{branch}", url.https_url()),
                None => url.https_url(),
            })),
            Err(_) => Err(ApiError::invalid(format!(
                "no project `{reference}` is registered (`cubbi project list` shows yours); give \
                 a git URL to clone a repository that is not"
            ))),
        }
    }

    /// `claude-code` means the cubbi image `cubbi-claude-code`; anything else is a Docker
    /// image reference that must exist on the endpoint.
    pub(super) async fn resolve_image(&self, image: &str) -> Result<ResolvedImage, ApiError> {
        let mut candidates = Vec::new();
        if crate::images::metadata::is_image_name(image) {
            candidates.push(crate::images::metadata::tag_for(image));
        }
        candidates.push(image.to_string());
        for reference in candidates {
            if let Ok(found) = self.docker.inspect_image(&reference).await {
                let metadata = found
                    .config
                    .and_then(|config| config.labels)
                    .and_then(|labels| labels.get(METADATA_LABEL).cloned())
                    .and_then(|json| serde_json::from_str(&json).ok());
                return Ok(ResolvedImage {
                    id: found.id.clone().unwrap_or_default(),
                    reference,
                    metadata,
                    size: found.size.unwrap_or(0),
                });
            }
        }
        Err(ApiError::invalid(format!(
            "unknown image `{image}`: it is not built on this endpoint; build it with `cubbi image \
             build {image}` (`cubbi image list` shows the images)"
        )))
    }
}

/// A host path given by the user: absolute, existing, never a socket, and never a folder
/// holding a container engine's or D-Bus's socket (see [`mounts::check_source`]).
pub(super) fn host_path(
    path: &Path,
    what: &str,
    must_be_dir: bool,
    sockets: &[PathBuf],
) -> Result<PathBuf, ApiError> {
    if !path.is_absolute() {
        return Err(ApiError::invalid(format!(
            "{what} path `{}` must be absolute (try `$PWD/{}`)",
            path.display(),
            path.display()
        )));
    }
    let resolved = path.canonicalize().map_err(|err| {
        ApiError::invalid(format!(
            "{what} path `{}` cannot be used: {err}",
            path.display()
        ))
    })?;
    if must_be_dir && !resolved.is_dir() {
        return Err(ApiError::invalid(format!(
            "{what} `{}` is not a folder",
            path.display()
        )));
    }
    mounts::check_source(path, &resolved, sockets)?;
    Ok(resolved)
}
