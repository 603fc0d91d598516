//! Which create requests a pool member can serve. Everything a member cannot be given on a
//! running container sends the create cold, with the reason `-v` prints.

/// The facts of one create that decide whether a member fits (built from the request and the
/// resolved plan, so this stays free of Docker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRequest<'a> {
    /// The cubbi image name, `None` for an arbitrary Docker image.
    pub image: Option<&'a str>,
    pub target: u32,
    /// The runtime the request resolved to, and the one members boot with.
    pub runtime: &'a str,
    pub member_runtime: &'a str,
    /// Where SSH is published: a member's port binding is fixed at its create.
    pub ssh_bind: &'a str,
    pub member_ssh_bind: &'a str,
    /// A workspace folder or another host volume.
    pub host_mounts: usize,
    /// The image keeps its tools' config in the owner's data volume (members of such an image
    /// hold their owner's, see [`super::OwnerData`]).
    pub persists_config: bool,
    /// A project session, whose configs live in the project's volume instead.
    pub project: bool,
    /// Sessions log to Fluentd with a per-session tag, fixed at create.
    pub per_session_log_tag: bool,
    /// The session's egress is restricted (recorded in a label, fixed at create).
    pub restricted_egress: bool,
}

/// Why a create booted a new container instead of claiming a member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WhyCold {
    #[error("the image is not a cubbi image, and only cubbi images have pools")]
    NotACubbiImage,
    #[error("no pool is configured for `{0}` (set pool.{0} in the config)")]
    NoPool(String),
    #[error("the pool for `{0}` has no ready member")]
    Empty(String),
    #[error("runtime `{wanted}` was asked for; members run `{members}` (fixed at boot)")]
    Runtime { wanted: String, members: String },
    #[error("SSH on {wanted} was asked for; members publish on {members} (fixed at boot)")]
    SshBind { wanted: String, members: String },
    #[error(
        "the session mounts a host folder, which a running container cannot be given (use \
         --project or no workspace to claim from the pool)"
    )]
    HostMount,
    #[error(
        "the image keeps a project session's config in the project's volume, which a running \
         container cannot be given"
    )]
    ProjectConfig,
    #[error("sessions log to Fluentd with a per-session tag, fixed when a container is made")]
    LogTag,
    #[error("the session's egress policy is a label, fixed when a container is made")]
    Egress,
}

impl PoolRequest<'_> {
    /// `Ok` when a member can serve the request (if one is ready), otherwise the first reason
    /// it cannot, in the order a user can most easily change.
    pub fn fits(&self) -> Result<(), WhyCold> {
        let Some(image) = self.image else {
            return Err(WhyCold::NotACubbiImage);
        };
        if self.target == 0 {
            return Err(WhyCold::NoPool(image.to_string()));
        }
        if self.host_mounts > 0 {
            return Err(WhyCold::HostMount);
        }
        if self.runtime != self.member_runtime {
            return Err(WhyCold::Runtime {
                wanted: self.runtime.to_string(),
                members: self.member_runtime.to_string(),
            });
        }
        if self.ssh_bind != self.member_ssh_bind {
            return Err(WhyCold::SshBind {
                wanted: self.ssh_bind.to_string(),
                members: self.member_ssh_bind.to_string(),
            });
        }
        if self.persists_config && self.project {
            return Err(WhyCold::ProjectConfig);
        }
        if self.per_session_log_tag {
            return Err(WhyCold::LogTag);
        }
        if self.restricted_egress {
            return Err(WhyCold::Egress);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> PoolRequest<'static> {
        PoolRequest {
            image: Some("base"),
            target: 2,
            runtime: "sysbox-runc",
            member_runtime: "sysbox-runc",
            ssh_bind: "127.0.0.1",
            member_ssh_bind: "127.0.0.1",
            host_mounts: 0,
            persists_config: false,
            project: false,
            per_session_log_tag: false,
            restricted_egress: false,
        }
    }

    #[test]
    fn a_plain_request_fits() {
        assert_eq!(plain().fits(), Ok(()));
    }

    #[test]
    fn a_tool_image_fits_unless_it_is_a_project_session() {
        let tool = PoolRequest {
            persists_config: true,
            ..plain()
        };
        assert_eq!(tool.fits(), Ok(()));
        // Without persisted config, a project session fits: its volume holds nothing used.
        let project = PoolRequest {
            project: true,
            ..plain()
        };
        assert_eq!(project.fits(), Ok(()));
    }

    #[test]
    fn each_unfit_request_says_why() {
        let cases = [
            (
                PoolRequest {
                    image: None,
                    ..plain()
                },
                "not a cubbi image",
            ),
            (
                PoolRequest {
                    target: 0,
                    ..plain()
                },
                "set pool.base",
            ),
            (
                PoolRequest {
                    host_mounts: 1,
                    ..plain()
                },
                "host folder",
            ),
            (
                PoolRequest {
                    runtime: "runc",
                    ..plain()
                },
                "members run `sysbox-runc`",
            ),
            (
                PoolRequest {
                    ssh_bind: "0.0.0.0",
                    ..plain()
                },
                "members publish on 127.0.0.1",
            ),
            (
                PoolRequest {
                    persists_config: true,
                    project: true,
                    ..plain()
                },
                "project's volume",
            ),
            (
                PoolRequest {
                    per_session_log_tag: true,
                    ..plain()
                },
                "Fluentd",
            ),
            (
                PoolRequest {
                    restricted_egress: true,
                    ..plain()
                },
                "egress",
            ),
        ];
        for (request, says) in cases {
            let why = request.fits().unwrap_err().to_string();
            assert!(why.contains(says), "{why:?} should say {says:?}");
        }
    }
}
