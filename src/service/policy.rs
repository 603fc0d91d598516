//! What a service lets its users ask for: a request body becomes a [`SessionSpec`] only
//! through here, so the host-facing parts of a spec (bind address, runtime, host paths,
//! networks, limits) are the service's decisions, never the caller's.

use std::net::IpAddr;
use std::path::Path;

use crate::api::wire::CreateRequest;
use crate::api::{ApiError, SessionSpec};
use crate::local::limits::{CpuLimit, MemoryLimit, PidsLimit};
use crate::local::{limits, runtime};

use super::config::ServiceConfig;
use super::host_volumes::HostMountRule;
use crate::engine::paths::EnginePaths;

#[derive(Debug, Clone)]
pub struct Policy {
    pub images: Vec<String>,
    pub host_mounts: HostMountRule,
    pub allow_unsafe_runc: bool,
    pub networks_allowed: Vec<String>,
    pub ssh_bind: IpAddr,
    pub public_host: Option<String>,
    /// `ssh.mode = "proxy"`: sessions are published with `ssh.proxy` set.
    pub ssh_proxy: bool,
    pub sessions_per_user: usize,
    pub max_memory: Option<MemoryLimit>,
    pub max_cpus: Option<CpuLimit>,
    pub max_pids: PidsLimit,
    pub projects_per_user: usize,
    pub snapshots_per_user: usize,
    /// Seconds without an SSH connection after which sessions stop: the default and the
    /// most a create may ask for (limits.idle_stop; `None`: sessions run until stopped).
    pub idle_stop_secs: Option<u64>,
    /// `[egress]`: what a create may ask sessions to reach.
    pub egress: crate::egress::service_rules::ServiceEgress,
}

impl Policy {
    pub fn from_config(config: &ServiceConfig) -> Result<Self, ApiError> {
        Ok(Self {
            images: config.images.clone(),
            host_mounts: HostMountRule::new(
                &config.allow_host_volumes,
                &[
                    config.state_dir.as_path(),
                    Path::new(super::config::DEFAULT_CONFIG_PATH)
                        .parent()
                        .unwrap_or(Path::new("/etc/cubbi")),
                    Path::new("/run/cubbi"),
                    &EnginePaths::system().data_root,
                    &EnginePaths::system().exec_root,
                ],
            ),
            allow_unsafe_runc: config.allow_unsafe_runc,
            networks_allowed: config.networks.allowed.clone(),
            ssh_bind: config.ssh.bind,
            public_host: config.ssh.public_host.clone(),
            ssh_proxy: config.ssh.mode == super::config::SshMode::Proxy,
            sessions_per_user: config.limits.sessions_per_user,
            max_memory: config.limits.memory.or_else(host_share_of_memory),
            max_cpus: config.limits.cpus.or_else(host_share_of_cpus),
            max_pids: config.limits.pids_limit,
            projects_per_user: config.limits.projects_per_user,
            snapshots_per_user: config.limits.snapshots_per_user,
            idle_stop_secs: (config.limits.idle_stop > 0).then_some(config.limits.idle_stop),
            egress: config.egress.clone(),
        })
    }

    /// The runtimes a create may ask for, the default first: Sysbox where the engine has it
    /// (or where the host cannot tell), plain runc only where `allow_unsafe_runc` is on.
    pub fn runtimes_offered(&self, available: Option<&[String]>) -> Vec<String> {
        let has = |wanted: fn(&str) -> bool| {
            available.is_none_or(|names| names.iter().any(|name| wanted(name)))
        };
        let mut offered = Vec::new();
        if has(runtime::is_sysbox) {
            offered.push(runtime::SYSBOX.to_string());
        }
        if self.allow_unsafe_runc && has(|name| name == "runc") {
            offered.push("runc".to_string());
        }
        offered
    }

    /// The spec a request may have, or why not.
    pub fn spec(&self, request: CreateRequest) -> Result<SessionSpec, ApiError> {
        match (&request.snapshot, request.image.is_empty()) {
            (Some(_), false) => {
                return Err(ApiError::invalid(
                    "give `image` or `snapshot`, not both: a snapshot boots the image it was \
                     committed as",
                ));
            }
            (None, true) => {
                return Err(ApiError::invalid(
                    "a session needs an `image` (`GET /v1/images`) or a `snapshot` \
                     (`GET /v1/snapshots`)",
                ));
            }
            // The caller's snapshot is looked up, and becomes the image, by the handler.
            (Some(_), true) => {}
            (None, false) => self.check_image(&request.image)?,
        }
        self.spec_for(request)
    }

    fn check_image(&self, image: &str) -> Result<(), ApiError> {
        if !crate::images::metadata::is_image_name(image) {
            return Err(ApiError::invalid(format!(
                "`{image}` is not a cubbi image name; `GET /v1/images` lists them"
            )));
        }
        if !self.images.is_empty() && !self.images.iter().any(|offered| offered == image) {
            return Err(ApiError::invalid(format!(
                "this service does not offer image `{image}`; it offers {}",
                self.images.join(", ")
            )));
        }
        Ok(())
    }

    fn spec_for(&self, request: CreateRequest) -> Result<SessionSpec, ApiError> {
        let volumes = request
            .volumes
            .into_iter()
            .map(|volume| self.host_mounts.check(volume))
            .collect::<Result<Vec<_>, _>>()?;
        // Docker's default bridge is one segment every such session would share, whoever
        // owns it: a session here is on its owner's network or on networks the service allows.
        if !request.default_network && request.networks.is_empty() {
            return Err(ApiError::invalid(
                "a session without its owner's network (`default_network: false`) must name a \
                 network it may join (`networks`, from the service's networks.allowed)",
            ));
        }
        for network in &request.networks {
            if !self.networks_allowed.contains(network) {
                return Err(ApiError::invalid(format!(
                    "network `{network}` is not one this service lets sessions join{}",
                    if self.networks_allowed.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", self.networks_allowed.join(", "))
                    }
                )));
            }
        }
        let runtime = request
            .runtime
            .unwrap_or_else(|| runtime::SYSBOX.to_string());
        if runtime::is_plain_runc(&runtime) && !self.allow_unsafe_runc {
            return Err(ApiError::invalid(
                "this service runs sessions under Sysbox only (allow_unsafe_runc is off)",
            ));
        }
        if !runtime::is_sysbox(&runtime) && !runtime::is_plain_runc(&runtime) {
            return Err(ApiError::invalid(format!(
                "runtime `{runtime}` is not sysbox-runc or runc"
            )));
        }
        let memory = match (request.memory, self.max_memory) {
            (Some(asked), Some(max)) if asked > max => {
                return Err(ApiError::invalid(format!(
                    "memory {asked} is over this service's limit ({} MiB, limits.memory)",
                    max.bytes() / (1024 * 1024)
                )));
            }
            (Some(asked), _) => Some(asked),
            (None, max) => max,
        };
        let pids_limit = match request.pids_limit {
            Some(pids) if pids > self.max_pids => {
                return Err(ApiError::invalid(format!(
                    "pids limit {pids} is over this service's limit ({}, limits.pids_limit)",
                    self.max_pids
                )));
            }
            Some(pids) => pids,
            None => self.max_pids,
        };
        let cpus = match (request.cpus, self.max_cpus) {
            (Some(cpus), Some(max)) if cpus > max => {
                return Err(ApiError::invalid(format!(
                    "{cpus} CPUs is over this service's limit ({max}, limits.cpus)"
                )));
            }
            (Some(cpus), _) => Some(cpus),
            (None, max) => max,
        };
        let idle_stop_secs = match (request.idle_stop_secs, self.idle_stop_secs) {
            (Some(0), _) => {
                return Err(ApiError::invalid("idle_stop_secs must be at least 1"));
            }
            (Some(asked), Some(max)) if asked > max => {
                return Err(ApiError::invalid(format!(
                    "idle_stop_secs {asked} is over this service's limit ({max} s, limits.idle_stop)"
                )));
            }
            (asked, max) => asked.or(max),
        };
        let unsafe_runc = runtime::is_plain_runc(&runtime);
        let egress = self.egress.apply(request.egress)?;
        Ok(SessionSpec {
            name: request.name,
            image: request.image,
            workspace: None,
            project: request.project,
            run_init: request.run_init,
            env: request.env,
            volumes,
            networks: request.networks,
            default_network: request.default_network,
            memory,
            cpus,
            pids_limit: Some(pids_limit),
            runtime,
            unsafe_runc,
            ssh_bind: self.ssh_bind,
            authorized_keys: request.public_key.into_iter().collect(),
            idle_stop_secs,
            mcp: Vec::new(),
            // Resolved in the caller's registry by the route (`mcp_routes::give`).
            mcp_names: request.mcp,
            egress,
        })
    }
}

/// A session's memory when the config sets none: a quarter of the host's (at least 512 MiB),
/// so a few sessions of one user cannot take all of it.
fn host_share_of_memory() -> Option<MemoryLimit> {
    let total = limits::host_memory().ok()?;
    MemoryLimit::from_bytes((total / 4).max(512 * 1024 * 1024)).ok()
}

/// A session's CPUs when the config sets none: half the host's cores, at least one.
fn host_share_of_cpus() -> Option<CpuLimit> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    CpuLimit::new((cores as f64 / 2.0).max(1.0)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::VolumeMount;

    fn policy() -> Policy {
        Policy::from_config(&ServiceConfig::default()).unwrap()
    }

    fn request() -> CreateRequest {
        CreateRequest {
            image: "base".into(),
            default_network: true,
            ..Default::default()
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn only_runtimes_the_engine_has_and_the_service_allows_are_offered() {
        let sysbox_only = policy();
        let with_runc = Policy {
            allow_unsafe_runc: true,
            ..policy()
        };
        let both = names(&["io.containerd.runc.v2", "runc", "sysbox-runc"]);
        let no_sysbox = names(&["io.containerd.runc.v2", "runc"]);
        assert_eq!(sysbox_only.runtimes_offered(Some(&both)), ["sysbox-runc"]);
        assert!(sysbox_only.runtimes_offered(Some(&no_sysbox)).is_empty());
        assert_eq!(
            with_runc.runtimes_offered(Some(&both)),
            ["sysbox-runc", "runc"]
        );
        assert_eq!(with_runc.runtimes_offered(Some(&no_sysbox)), ["runc"]);
        assert_eq!(with_runc.runtimes_offered(None), ["sysbox-runc", "runc"]);
    }

    #[test]
    fn the_service_decides_bind_runtime_and_keys() {
        let spec = policy()
            .spec(CreateRequest {
                public_key: Some("ssh-ed25519 AAAA".into()),
                ..request()
            })
            .unwrap();
        assert_eq!(spec.ssh_bind.to_string(), "0.0.0.0");
        assert_eq!(spec.runtime, "sysbox-runc");
        assert!(!spec.unsafe_runc);
        assert!(spec.workspace.is_none());
        assert_eq!(spec.authorized_keys, vec!["ssh-ed25519 AAAA".to_string()]);
        assert!(!spec.run_init);
        let asked = policy()
            .spec(CreateRequest {
                project: Some("https://h/o/r".into()),
                run_init: true,
                ..request()
            })
            .unwrap();
        assert!(asked.run_init, "the caller's --run-init reaches the spec");
    }

    #[test]
    fn host_paths_runc_and_foreign_networks_are_refused() {
        let volume = CreateRequest {
            volumes: vec![VolumeMount {
                host: "/etc".into(),
                container: "/mnt".into(),
                read_only: true,
            }],
            ..request()
        };
        assert!(
            policy()
                .spec(volume)
                .unwrap_err()
                .to_string()
                .contains("host paths")
        );
        let runc = CreateRequest {
            runtime: Some("runc".into()),
            ..request()
        };
        assert!(
            policy()
                .spec(runc)
                .unwrap_err()
                .to_string()
                .contains("Sysbox only")
        );
        // Another user's own network is a network like any other: not joinable unless listed.
        let alices = crate::local::naming::owner_network_name("serve:alice");
        let network = CreateRequest {
            networks: vec![alices.clone()],
            ..request()
        };
        assert!(
            policy()
                .spec(network)
                .unwrap_err()
                .to_string()
                .contains(&alices)
        );
        let image = CreateRequest {
            image: "../../etc".into(),
            ..request()
        };
        assert_eq!(
            policy().spec(image).unwrap_err().code(),
            crate::api::ErrorCode::Invalid
        );
    }

    #[test]
    fn slipped_limits_and_the_shared_bridge_are_refused() {
        let policy = policy();
        // 1e-10 CPUs would become NanoCpus 0, which is no limit at all: the body is refused
        // as it is read.
        let tiny = serde_json::from_value::<CreateRequest>(
            serde_json::json!({"image": "base", "cpus": 1e-10}),
        );
        assert!(tiny.unwrap_err().to_string().contains("at least"));
        // The service's pids cap (default 4096) bounds requests and is the default.
        let many = CreateRequest {
            pids_limit: Some(PidsLimit::new(4_194_304).unwrap()),
            ..request()
        };
        assert!(
            policy
                .spec(many)
                .unwrap_err()
                .to_string()
                .contains("limits.pids_limit")
        );
        assert_eq!(
            policy.spec(request()).unwrap().pids_limit,
            Some(PidsLimit::default())
        );
        // Without limits in the config, a session still gets a share of the host, not all.
        let defaults = policy.spec(request()).unwrap();
        assert!(
            defaults.memory.is_some() && defaults.cpus.is_some(),
            "{defaults:?}"
        );
        // No owner's network and no other: Docker's default bridge, shared by everyone.
        let bridge = CreateRequest {
            default_network: false,
            ..request()
        };
        assert!(
            policy
                .spec(bridge)
                .unwrap_err()
                .to_string()
                .contains("default_network")
        );
    }

    #[test]
    fn host_volumes_only_below_the_roots_never_the_state_folder() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir_all(shared.join("data")).unwrap();
        let mut config = ServiceConfig {
            state_dir: shared.join("state"),
            ..Default::default()
        };
        std::fs::create_dir_all(&config.state_dir).unwrap();
        config.allow_host_volumes =
            toml::from_str::<toml::Table>(&format!("v = [{:?}]", shared.display().to_string()))
                .unwrap()["v"]
                .clone()
                .try_into()
                .unwrap();
        let policy = Policy::from_config(&config).unwrap();
        let mount = |host: std::path::PathBuf| CreateRequest {
            volumes: vec![VolumeMount {
                host,
                container: "/mnt/x".into(),
                read_only: false,
            }],
            ..request()
        };
        let spec = policy.spec(mount(shared.join("data"))).unwrap();
        assert_eq!(
            spec.volumes[0].host,
            std::fs::canonicalize(shared.join("data")).unwrap()
        );
        for (bad, why) in [
            (config.state_dir.clone(), "cubbi's own"),
            (shared.clone(), "cubbi's own"),
            ("/etc".into(), "outside"),
        ] {
            let err = policy.spec(mount(bad)).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn limits_cap_and_default() {
        let mut config = ServiceConfig::default();
        config.limits.memory = Some("2g".parse().unwrap());
        config.limits.cpus = Some(CpuLimit::new(1.0).unwrap());
        let policy = Policy::from_config(&config).unwrap();
        let spec = policy.spec(request()).unwrap();
        assert_eq!(spec.memory.map(MemoryLimit::bytes), Some(2147483648));
        assert_eq!(spec.cpus.map(CpuLimit::cpus), Some(1.0));
        let big = CreateRequest {
            memory: Some("4g".parse().unwrap()),
            ..request()
        };
        assert!(
            policy
                .spec(big)
                .unwrap_err()
                .to_string()
                .contains("limits.memory")
        );
        let cpus = CreateRequest {
            cpus: Some(CpuLimit::new(2.0).unwrap()),
            ..request()
        };
        assert!(
            policy
                .spec(cpus)
                .unwrap_err()
                .to_string()
                .contains("limits.cpus")
        );
    }
}
