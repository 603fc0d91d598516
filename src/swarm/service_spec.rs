//! A session as a Swarm service: one replica pinned to its node, the SSH port published in
//! host mode, labels as the record (on the service and its container), the session's files as
//! one secret file, and everything that must outlive a container in volumes.

use std::collections::HashMap;

use base64::Engine as _;
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, EndpointSpecModeEnum, Limit, Mount, MountType, MountVolumeOptions,
    NetworkAttachmentConfig, SecretSpec, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated,
    TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecFile, TaskSpecContainerSpecSecrets,
    TaskSpecPlacement, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum,
};

use super::placement::Placed;
use crate::local::backend::ServicePlan;
use crate::local::labels::{self, SessionLabels};
use crate::local::runtime;

/// The node a session is pinned to (its volumes are there).
pub const NODE: &str = "io.cubbi.node";
/// The secret holding the session's files.
pub const SECRET: &str = "io.cubbi.secret";
/// The file the secret appears as (`/run/secrets/...`), which the image's PID 1 unpacks.
pub const FILES_SECRET_TARGET: &str = "cubbi-session.tar";
/// Swarm keeps secrets in its Raft log and refuses larger ones.
pub const SECRET_LIMIT: usize = 500 * 1024;
/// The engine label saying a node's default runtime (`crate::engine::swarm::RUNTIME_LABEL`).
pub use crate::engine::swarm::RUNTIME_LABEL;

const SECOND_NS: i64 = 1_000_000_000;

/// The names a session's service, secret and volumes get; `unique` tells apart sessions that
/// reuse a closed one's name, whose volumes may still be on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceNames {
    pub service: String,
    pub secret: String,
    pub home_volume: String,
    pub docker_volume: String,
}

impl ServiceNames {
    pub fn new(session: &str, unique: &str) -> Self {
        Self {
            service: labels::container_name(session),
            secret: format!("cubbi-{session}-{unique}-files"),
            home_volume: format!("cubbi-{session}-{unique}-home"),
            docker_volume: format!("cubbi-{session}-{unique}-docker"),
        }
    }
}

/// The session's labels: those a local session carries (its SSH address being the node's),
/// plus its node and its secret.
pub fn session_labels(plan: &ServicePlan, placed: &Placed, created: i64) -> SessionLabels {
    SessionLabels {
        name: plan.name.clone(),
        owner: plan.owner.clone(),
        image: plan.image.clone(),
        ssh_port: placed.port,
        ssh_bind: placed.address.clone(),
        host_key: plan.host_public.clone(),
        workspace: None,
        created,
        command: plan.command.clone(),
    }
}

pub fn secret_spec(plan: &ServicePlan, names: &ServiceNames) -> SecretSpec {
    SecretSpec {
        name: Some(names.secret.clone()),
        labels: Some(HashMap::from([
            (labels::MANAGED.to_string(), "true".to_string()),
            (labels::OWNER.to_string(), plan.owner.clone()),
            (labels::NAME.to_string(), plan.name.clone()),
        ])),
        data: Some(base64::engine::general_purpose::STANDARD.encode(&plan.files)),
        ..Default::default()
    }
}

pub fn service_spec(
    plan: &ServicePlan,
    placed: &Placed,
    names: &ServiceNames,
    secret_id: &str,
    record: &SessionLabels,
    runtime_name: &str,
) -> ServiceSpec {
    let mut all_labels = record.to_map();
    all_labels.extend(plan.extra_labels.clone());
    all_labels.insert(NODE.to_string(), placed.node.clone());
    all_labels.insert(SECRET.to_string(), names.secret.clone());
    let volume = |source: &str, target: &str| Mount {
        target: Some(target.to_string()),
        source: Some(source.to_string()),
        typ: Some(MountType::VOLUME),
        volume_options: Some(MountVolumeOptions {
            labels: Some(HashMap::from([
                (labels::MANAGED.to_string(), "true".to_string()),
                (labels::OWNER.to_string(), plan.owner.clone()),
            ])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mounts = vec![
        volume(&names.home_volume, "/home/agent"),
        volume(&names.docker_volume, runtime::INNER_DOCKER_ROOT),
        volume(&plan.data_volume, plan.data_path),
    ];
    // Under runc the node daemon carries the rest of the unsafe settings (no seccomp filter,
    // a private cgroup namespace): a service can ask for capabilities only.
    let capabilities = runtime::is_plain_runc(runtime_name)
        .then(|| vec!["CAP_SYS_ADMIN".to_string(), "CAP_NET_ADMIN".to_string()]);
    let networks = plan
        .networks
        .iter()
        .enumerate()
        .map(|(index, network)| NetworkAttachmentConfig {
            target: Some(network.clone()),
            // The owner's sessions reach each other by session name on their own network.
            aliases: (index == 0).then(|| vec![plan.name.clone()]),
            ..Default::default()
        })
        .collect();
    ServiceSpec {
        name: Some(names.service.clone()),
        labels: Some(all_labels.clone()),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(plan.image.clone()),
                labels: Some(all_labels),
                hostname: Some(plan.name.clone()),
                mounts: Some(mounts),
                stop_signal: Some("SIGRTMIN+3".to_string()),
                stop_grace_period: Some(30 * SECOND_NS),
                secrets: Some(vec![TaskSpecContainerSpecSecrets {
                    file: Some(TaskSpecContainerSpecFile {
                        name: Some(FILES_SECRET_TARGET.to_string()),
                        uid: Some("0".to_string()),
                        gid: Some("0".to_string()),
                        mode: Some(0o400),
                    }),
                    secret_id: Some(secret_id.to_string()),
                    secret_name: Some(names.secret.clone()),
                }]),
                capability_add: capabilities,
                // Sysbox recognises systemd only as the image's own PID 1.
                init: Some(false),
                ..Default::default()
            }),
            resources: Some(TaskSpecResources {
                limits: Some(Limit {
                    nano_cpus: Some(plan.nano_cpus),
                    memory_bytes: Some(plan.memory),
                    pids: Some(plan.pids_limit),
                }),
                ..Default::default()
            }),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                delay: Some(SECOND_NS),
                ..Default::default()
            }),
            placement: Some(TaskSpecPlacement {
                constraints: Some(vec![
                    format!("node.id=={}", placed.node),
                    format!("engine.labels.{RUNTIME_LABEL}=={runtime_name}"),
                ]),
                ..Default::default()
            }),
            networks: Some(networks),
            ..Default::default()
        }),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
            ..Default::default()
        }),
        // No IPVS on many kernels, and a session is one container: DNS round robin, and the
        // SSH port on the node itself.
        endpoint_spec: Some(EndpointSpec {
            mode: Some(EndpointSpecModeEnum::DNSRR),
            ports: Some(vec![EndpointPortConfig {
                protocol: Some(EndpointPortConfigProtocolEnum::TCP),
                target_port: Some(22),
                published_port: Some(i64::from(placed.port)),
                publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    }
}
