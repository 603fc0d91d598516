//! A unit file of cubbi's own under /etc/systemd/system (the service's, the egress
//! resolver's), driven over D-Bus: read what is there, write it and (re)start it, take it away.

use std::path::Path;
use std::time::Duration;

use super::EngineError;
use super::apply::{remove_if_present, write_atomically};
use super::systemd::{self, Systemd};

/// One of cubbi's host units.
#[derive(Debug, Clone, Copy)]
pub struct HostUnit {
    /// The unit's name, e.g. `cubbi-serve.service`.
    pub name: &'static str,
    /// Where its file lives.
    pub path: &'static str,
    /// Its TimeoutStopSec and a margin.
    pub stop_timeout: Duration,
}

/// What is installed of a unit now; without systemd it reads as neither active nor enabled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitState {
    pub file: Option<String>,
    pub active: bool,
    pub enabled: bool,
}

impl UnitState {
    /// Anything of the unit is there (for uninstall).
    pub fn present(&self) -> bool {
        self.file.is_some() || self.active || self.enabled
    }
}

impl HostUnit {
    pub async fn read(&self, systemd: Option<&dyn Systemd>) -> Result<UnitState, EngineError> {
        let (active, enabled) = systemd::active_and_enabled(systemd, self.name).await;
        let file = match std::fs::read_to_string(self.path) {
            Ok(text) => Some(text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(EngineError::Read {
                    path: self.path.into(),
                    source,
                });
            }
        };
        Ok(UnitState {
            file,
            active,
            enabled,
        })
    }

    /// Writes the unit, reloads systemd, and (re)starts it.
    pub async fn install(
        &self,
        systemd: &dyn Systemd,
        text: &str,
        restart: bool,
        start_timeout: Duration,
    ) -> Result<String, EngineError> {
        write_atomically(Path::new(self.path), text, 0o644)?;
        systemd.daemon_reload().await?;
        if restart {
            // A start queued while the stop job is pending would replace it: no restart.
            systemd.stop(self.name).await?;
            systemd::wait_until_stopped(systemd, self.name, self.stop_timeout).await?;
        }
        self.start(systemd, start_timeout).await
    }

    /// Enables and starts the unit, and waits until systemd calls it active.
    pub async fn start(
        &self,
        systemd: &dyn Systemd,
        start_timeout: Duration,
    ) -> Result<String, EngineError> {
        systemd.enable(self.name).await?;
        systemd.start(self.name).await?;
        systemd::wait_until_active(systemd, self.name, start_timeout).await?;
        Ok(format!("{} is active", self.name))
    }

    /// Stops and disables the unit (where systemd runs) and removes its file.
    pub async fn remove(&self, systemd: Option<&dyn Systemd>) -> Result<(), EngineError> {
        if let Some(systemd) = systemd {
            systemd.stop(self.name).await?;
            systemd::wait_until_stopped(systemd, self.name, self.stop_timeout).await?;
            systemd.disable(self.name).await?;
        }
        remove_if_present(Path::new(self.path))?;
        if let Some(systemd) = systemd {
            systemd.daemon_reload().await?;
        }
        Ok(())
    }
}
