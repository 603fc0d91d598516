//! Carrying out the `--service` steps and their uninstall: the user, the config, the unit over
//! D-Bus. Reading the state they are planned from lives here too, beside what changes it.

use std::path::Path;
use std::time::Duration;

use super::config::write_if_absent;
use super::{SERVE_STATE_DIR, SERVE_UNIT_FILE, SERVE_UNIT_NAME, SERVE_USER, SERVICE_CONFIG};
use crate::engine::apply::remove_if_present;
use crate::engine::host_unit::HostUnit;
use crate::engine::plan::ServeState;
use crate::engine::runner::CommandRunner;
use crate::engine::systemd::Systemd;
use crate::engine::{EngineError, SOCKET_GROUP};

/// The service's unit; 40 s is its TimeoutStopSec and a margin.
const SERVE_UNIT: HostUnit = HostUnit {
    name: SERVE_UNIT_NAME,
    path: SERVE_UNIT_FILE,
    stop_timeout: Duration::from_secs(40),
};

/// The service as it is now; without systemd its unit reads as neither active nor enabled.
pub async fn read_state(systemd: Option<&dyn Systemd>) -> Result<ServeState, EngineError> {
    let user_exists = nix::unistd::User::from_name(SERVE_USER)
        .ok()
        .flatten()
        .is_some();
    let user_in_group = nix::unistd::Group::from_name(SOCKET_GROUP)
        .ok()
        .flatten()
        .is_some_and(|group| group.mem.iter().any(|member| member == SERVE_USER));
    let unit = SERVE_UNIT.read(systemd).await?;
    Ok(ServeState {
        user_exists,
        user_in_group,
        config: read_optional(Path::new(SERVICE_CONFIG))?,
        state_dir_exists: Path::new(SERVE_STATE_DIR).exists(),
        unit_file: unit.file,
        unit_active: unit.active,
        unit_enabled: unit.enabled,
    })
}

fn read_optional(path: &Path) -> Result<Option<String>, EngineError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(EngineError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The system user, with its own group, no home and no login, then added to `group`.
pub fn create_user(runner: &dyn CommandRunner, user: &str, group: &str) -> Result<(), EngineError> {
    if nix::unistd::User::from_name(user).ok().flatten().is_none() {
        runner.run(
            "useradd",
            &[
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                user,
            ],
        )?;
    }
    runner.run("usermod", &["--append", "--groups", group, user])?;
    Ok(())
}

/// The default config, root:cubbi-serve 0640, unless one exists by now. Returns a note for the
/// step when it found one.
pub fn write_config(contents: &str) -> Result<String, EngineError> {
    let gid = nix::unistd::Group::from_name(SERVE_USER)
        .ok()
        .flatten()
        .map(|group| group.gid.as_raw())
        .ok_or_else(|| {
            EngineError::Refused(format!(
                "group {SERVE_USER} is missing, so {SERVICE_CONFIG} cannot be given to it"
            ))
        })?;
    let path = Path::new(SERVICE_CONFIG);
    let wrote = write_if_absent(path, contents, gid).map_err(|source| EngineError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(if wrote {
        String::new()
    } else {
        format!("{SERVICE_CONFIG} appeared meanwhile and was kept")
    })
}

/// Writes the unit, reloads systemd, and (re)starts the service.
pub async fn install_unit(
    systemd: &dyn Systemd,
    unit: &str,
    restart: bool,
    start_timeout: Duration,
) -> Result<String, EngineError> {
    SERVE_UNIT
        .install(systemd, unit, restart, start_timeout)
        .await
}

pub async fn start_unit(
    systemd: &dyn Systemd,
    start_timeout: Duration,
) -> Result<String, EngineError> {
    SERVE_UNIT.start(systemd, start_timeout).await
}

/// `--uninstall`: stops and disables the service (where systemd runs) and removes its unit.
pub async fn remove_unit(systemd: Option<&dyn Systemd>) -> Result<(), EngineError> {
    SERVE_UNIT.remove(systemd).await
}

/// `--uninstall --purge`: the config, the state and the user (with its own group).
pub fn purge(runner: &dyn CommandRunner) -> Result<(), EngineError> {
    remove_if_present(Path::new(SERVICE_CONFIG))?;
    match std::fs::remove_dir_all(SERVE_STATE_DIR) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(EngineError::Write {
                path: SERVE_STATE_DIR.into(),
                source,
            });
        }
    }
    if nix::unistd::User::from_name(SERVE_USER)
        .ok()
        .flatten()
        .is_some()
    {
        runner.run("userdel", &[SERVE_USER])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::runner::fake::RecordingRunner;
    use crate::engine::systemd::fake::FakeSystemd;

    #[test]
    fn the_user_is_a_system_user_without_login_in_the_socket_group() {
        let runner = RecordingRunner::default();
        // A name no test machine has, so useradd is called.
        create_user(&runner, "cubbi-serve-test-nobody", "cubbi").unwrap();
        assert_eq!(
            runner.commands(),
            [
                "useradd --system --no-create-home --shell /usr/sbin/nologin --user-group \
                 cubbi-serve-test-nobody",
                "usermod --append --groups cubbi cubbi-serve-test-nobody"
            ]
        );
        // An existing user is only added to the group.
        let runner = RecordingRunner::default();
        create_user(&runner, "root", "cubbi").unwrap();
        assert_eq!(runner.commands(), ["usermod --append --groups cubbi root"]);
    }

    #[tokio::test]
    async fn starting_enables_and_waits_for_active() {
        let systemd = FakeSystemd::default();
        let note = start_unit(&systemd, Duration::from_secs(1)).await.unwrap();
        assert!(note.contains("active"), "{note}");
        assert_eq!(
            systemd.calls(),
            ["enable cubbi-serve.service", "start cubbi-serve.service"]
        );
    }
}
