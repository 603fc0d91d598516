//! What a service lets its users ask for: a request body becomes a [`SessionSpec`] only
//! through here, so the host-facing parts of a spec (bind address, runtime, host paths,
//! networks, limits) are the service's decisions, never the caller's.

use std::net::IpAddr;

use crate::api::wire::CreateRequest;
use crate::api::{ApiError, SessionSpec};
use crate::local::{limits, runtime};

use super::config::ServiceConfig;

#[derive(Debug, Clone)]
pub struct Policy {
    pub images: Vec<String>,
    pub allow_host_volumes: bool,
    pub allow_unsafe_runc: bool,
    pub networks_allowed: Vec<String>,
    pub ssh_bind: IpAddr,
    pub public_host: Option<String>,
    pub sessions_per_user: usize,
    /// Bytes.
    pub max_memory: Option<i64>,
    pub max_cpus: Option<f64>,
}

impl Policy {
    pub fn from_config(config: &ServiceConfig) -> Result<Self, ApiError> {
        Ok(Self {
            images: config.images.clone(),
            allow_host_volumes: config.allow_host_volumes,
            allow_unsafe_runc: config.allow_unsafe_runc,
            networks_allowed: config.networks.allowed.clone(),
            ssh_bind: config.ssh.bind,
            public_host: config.ssh.public_host.clone(),
            sessions_per_user: config.limits.sessions_per_user,
            max_memory: config
                .limits
                .memory
                .as_deref()
                .map(limits::parse_memory)
                .transpose()?,
            max_cpus: config.limits.cpus,
        })
    }

    /// The spec a request may have, or why not.
    pub fn spec(&self, request: CreateRequest) -> Result<SessionSpec, ApiError> {
        if !crate::images::metadata::is_image_name(&request.image) {
            return Err(ApiError::invalid(format!(
                "`{}` is not a cubbi image name; `GET /v1/images` lists them",
                request.image
            )));
        }
        if !self.images.is_empty() && !self.images.contains(&request.image) {
            return Err(ApiError::invalid(format!(
                "this service does not offer image `{}`; it offers {}",
                request.image,
                self.images.join(", ")
            )));
        }
        if !request.volumes.is_empty() && !self.allow_host_volumes {
            return Err(ApiError::invalid(
                "this service does not mount host paths (allow_host_volumes is off); use a \
                 --project git URL for your code",
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
            (Some(raw), Some(max)) => {
                if limits::parse_memory(&raw)? > max {
                    return Err(ApiError::invalid(format!(
                        "memory {raw} is over this service's limit ({} MiB, limits.memory)",
                        max / (1024 * 1024)
                    )));
                }
                Some(raw)
            }
            (Some(raw), None) => Some(raw),
            (None, Some(max)) => Some(max.to_string()),
            (None, None) => None,
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
        let unsafe_runc = runtime::is_plain_runc(&runtime);
        Ok(SessionSpec {
            name: request.name,
            image: request.image,
            workspace: None,
            project: request.project,
            run_init: request.run_init,
            env: request.env,
            volumes: request.volumes,
            networks: request.networks,
            default_network: request.default_network,
            memory,
            cpus,
            pids_limit: request.pids_limit,
            runtime,
            unsafe_runc,
            ssh_bind: self.ssh_bind,
            authorized_keys: request.public_key.into_iter().collect(),
        })
    }
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
    fn limits_cap_and_default() {
        let mut config = ServiceConfig::default();
        config.limits.memory = Some("2g".into());
        config.limits.cpus = Some(1.0);
        let policy = Policy::from_config(&config).unwrap();
        let spec = policy.spec(request()).unwrap();
        assert_eq!(spec.memory.as_deref(), Some("2147483648"));
        assert_eq!(spec.cpus, Some(1.0));
        let big = CreateRequest {
            memory: Some("4g".into()),
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
            cpus: Some(2.0),
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
