//! How a session container runs: under Sysbox (the default, isolated) or, only when the user
//! explicitly asks, under plain runc with what systemd and the inner dockerd need.

use bollard::models::{HostConfig, HostConfigCgroupnsModeEnum};

use crate::api::ApiError;

pub const SYSBOX: &str = "sysbox-runc";

/// Printed on every unsafe create, so nobody mistakes such a session for a sandbox.
pub const UNSAFE_WARNING: &str = "warning: this session runs under plain runc with extra \
privileges (--unsafe-runc): it is NOT isolated from the host; use sysbox-runc for real isolation";

/// Whom a refused runtime is explained to: the local CLI's user (its flags), or a user of a
/// service (`cubbi serve`), who has no flags for the engine and needs the service's options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RuntimeAdvice {
    #[default]
    Cli,
    /// A service; `allow_unsafe_runc` is its config's.
    Service { allow_unsafe_runc: bool },
}

/// Refuses runc unless the user opted in, and runtimes the endpoint does not have.
pub fn check_runtime(
    runtime: &str,
    unsafe_runc: bool,
    available: &[String],
    advice: RuntimeAdvice,
) -> Result<(), ApiError> {
    check_opt_in(runtime, unsafe_runc)?;
    if available.iter().any(|name| name == runtime) {
        return Ok(());
    }
    let has = available.join(", ");
    let message = match advice {
        RuntimeAdvice::Cli => {
            let remedy = if runtime == SYSBOX {
                "install Sysbox with `cubbi setup`, or run without isolation with --runtime runc --unsafe-runc"
            } else {
                "pick one the endpoint has (`docker info` lists them)"
            };
            format!("the Docker endpoint has no `{runtime}` runtime (it has: {has}); {remedy}")
        }
        RuntimeAdvice::Service { allow_unsafe_runc } => {
            let remedy = if runtime != SYSBOX {
                "choose one this service offers (GET /v1/runtimes lists them)"
            } else if allow_unsafe_runc && available.iter().any(|name| name == "runc") {
                "this service allows plain runc: choose the runtime `runc` instead (the session \
                 is then NOT isolated from the host), or ask the service's administrator to \
                 install Sysbox"
            } else {
                "ask the service's administrator to install Sysbox (`sudo cubbi setup` on the \
                 service's host), or, on a host where isolation does not matter, to set \
                 allow_unsafe_runc = true in service.toml so sessions may run under plain runc"
            };
            format!(
                "this service's Docker engine has no `{runtime}` runtime (it has: {has}); {remedy}"
            )
        }
    };
    Err(ApiError::Unavailable(message))
}

/// Refuses plain runc unless the user opted in (`--unsafe-runc`), locally and before a request
/// to a service alike.
pub fn check_opt_in(runtime: &str, unsafe_runc: bool) -> Result<(), ApiError> {
    if is_plain_runc(runtime) && !unsafe_runc {
        return Err(ApiError::invalid(format!(
            "runtime `{runtime}` gives no isolation from the host; sessions use sysbox-runc. To run \
             without Sysbox anyway, add --unsafe-runc (or set defaults.allow_unsafe_runc = true)"
        )));
    }
    Ok(())
}

pub fn is_plain_runc(runtime: &str) -> bool {
    matches!(runtime, "runc" | "io.containerd.runc.v2")
}

/// What systemd as PID 1 and a nested dockerd need under plain runc (see
/// runtime/UNSAFE-RUNC.md for each field's reason): SYS_ADMIN for mounts, namespaces and
/// remounting the container's own cgroup tree read-write (the image's PID 1 wrapper does it),
/// NET_ADMIN for the inner dockerd's bridge and iptables, no seccomp filter (inner runc needs
/// keyctl), no AppArmor profile (it denies mount), and a private cgroup namespace on v1 and v2
/// alike, so the container can touch only its own cgroups. Not `Privileged`: it is not needed,
/// exposes every host device, and fails where the daemon's bounding set lacks a capability.
pub fn apply_unsafe_runc(host: &mut HostConfig) {
    host.privileged = Some(false);
    host.cap_add = Some(vec!["SYS_ADMIN".into(), "NET_ADMIN".into()]);
    host.security_opt = Some(vec![
        "seccomp=unconfined".into(),
        "apparmor=unconfined".into(),
    ]);
    host.cgroupns_mode = Some(HostConfigCgroupnsModeEnum::PRIVATE);
}

/// The inner dockerd's storage: overlay2 cannot stack on the container's own overlayfs, so
/// under runc /var/lib/docker is a volume (a real filesystem); Sysbox arranges this itself.
pub const INNER_DOCKER_ROOT: &str = "/var/lib/docker";

pub fn is_sysbox(runtime: &str) -> bool {
    runtime == SYSBOX
}

/// Whether a bind source belongs to host root.
pub fn owned_by_host_root(path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.uid() == 0)
}

/// Sysbox ID-maps bind mounts so files keep their host owners inside (the workspace shows as
/// the agent's): through such a mount the session's root acts as host root on root-owned
/// files. `-v` sources owned by host root are therefore not ID-mapped (Sysbox's
/// `SYSBOX_SKIP_UID_SHIFT`): they show as `nobody`, and the session's root gets only what
/// the file grants to others. Sysbox splits the list on `,` and refuses spaces, so such
/// targets cannot be listed and are refused.
pub fn unshifted_binds(targets: Vec<String>) -> Result<Vec<String>, ApiError> {
    if let Some(bad) = targets
        .iter()
        .find(|t| t.contains([',', '=']) || t.chars().any(char::is_whitespace))
    {
        return Err(ApiError::invalid(format!(
            "cannot mount a source owned by host root at `{bad}` under Sysbox: the target may not \
             contain `,`, `=` or spaces; pick another target"
        )));
    }
    Ok(targets)
}

/// The container variable that asks Sysbox not to ID-map `targets`, when there are any.
pub fn skip_uid_shift_env(targets: &[String]) -> Option<String> {
    (!targets.is_empty()).then(|| format!("SYSBOX_SKIP_UID_SHIFT={}", targets.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtimes() -> Vec<String> {
        vec!["runc".into(), "io.containerd.runc.v2".into()]
    }

    /// A service's user is told what they can do through the service, never the local CLI's
    /// `--runtime runc --unsafe-runc`, which the local message keeps.
    #[test]
    fn a_missing_sysbox_is_explained_to_service_users() {
        let local = check_runtime(SYSBOX, false, &runtimes(), RuntimeAdvice::Cli)
            .unwrap_err()
            .to_string();
        assert!(local.contains("--runtime runc --unsafe-runc"), "{local}");

        let sysbox_only = RuntimeAdvice::Service {
            allow_unsafe_runc: false,
        };
        let refused = check_runtime(SYSBOX, false, &runtimes(), sysbox_only).unwrap_err();
        assert_eq!(refused.code(), crate::api::ErrorCode::Unavailable);
        let message = refused.to_string();
        assert!(
            !message.contains("--"),
            "CLI flags for a service user: {message}"
        );
        assert!(!message.contains("  "), "{message}");
        assert!(message.contains("no `sysbox-runc` runtime"), "{message}");
        assert!(
            message.contains("administrator to install Sysbox"),
            "{message}"
        );
        assert!(message.contains("allow_unsafe_runc = true"), "{message}");

        let runc_allowed = RuntimeAdvice::Service {
            allow_unsafe_runc: true,
        };
        let message = check_runtime(SYSBOX, false, &runtimes(), runc_allowed)
            .unwrap_err()
            .to_string();
        assert!(!message.contains("--"), "{message}");
        assert!(!message.contains("  "), "{message}");
        assert!(message.contains("choose the runtime `runc`"), "{message}");
        assert!(message.contains("NOT isolated"), "{message}");
        assert!(check_runtime(SYSBOX, false, &[SYSBOX.to_string()], sysbox_only).is_ok());
    }

    #[test]
    fn root_owned_binds_are_listed_for_sysbox() {
        assert_eq!(skip_uid_shift_env(&[]), None);
        assert_eq!(
            skip_uid_shift_env(&["/mnt/a".into(), "/srv/b".into()]).as_deref(),
            Some("SYSBOX_SKIP_UID_SHIFT=/mnt/a,/srv/b")
        );
        for bad in ["/mnt/a,b", "/mnt/a b", "/mnt/a=b"] {
            assert!(unshifted_binds(vec![bad.into()]).is_err(), "{bad}");
        }
        // `/` belongs to root on every Linux host; a fresh temp file belongs to whoever runs.
        assert!(owned_by_host_root(std::path::Path::new("/")));
        let mine = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(
            owned_by_host_root(mine.path()),
            nix::unistd::geteuid().is_root()
        );
    }

    #[test]
    fn runc_needs_explicit_opt_in() {
        let err = check_runtime("runc", false, &runtimes(), RuntimeAdvice::Cli).unwrap_err();
        assert!(err.to_string().contains("--unsafe-runc"), "{err}");
        assert!(check_runtime("runc", true, &runtimes(), RuntimeAdvice::Cli).is_ok());
    }

    #[test]
    fn missing_sysbox_says_how_to_get_it() {
        let err = check_runtime(SYSBOX, false, &runtimes(), RuntimeAdvice::Cli).unwrap_err();
        assert_eq!(err.code(), crate::api::ErrorCode::Unavailable);
        assert!(err.to_string().contains("cubbi setup"), "{err}");
        assert!(check_runtime(SYSBOX, false, &[SYSBOX.to_string()], RuntimeAdvice::Cli).is_ok());
    }

    #[test]
    fn unsafe_settings_grant_only_what_systemd_and_dockerd_need() {
        let mut host = HostConfig::default();
        apply_unsafe_runc(&mut host);
        assert_eq!(host.privileged, Some(false));
        assert_eq!(
            host.cap_add.as_deref(),
            Some(&["SYS_ADMIN".to_string(), "NET_ADMIN".to_string()][..])
        );
        assert!(
            host.security_opt
                .as_ref()
                .unwrap()
                .contains(&"seccomp=unconfined".to_string())
        );
        assert_eq!(
            host.cgroupns_mode,
            Some(HostConfigCgroupnsModeEnum::PRIVATE)
        );
    }
}
