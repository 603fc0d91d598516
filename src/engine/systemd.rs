//! systemd as cubbi needs it: reload, enable, start, stop, disable and unit states, behind the
//! [`Systemd`] trait; [`DbusSystemd`] talks to `org.freedesktop.systemd1` over the system bus.

use std::time::Duration;

use async_trait::async_trait;
use zbus::OwnedObjectPath;

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("cannot reach systemd over D-Bus: {0} (is systemd PID 1 and the system bus running?)")]
    Connect(String),
    #[error("systemd refused `{action}` for {unit}: {reason}")]
    Call {
        action: &'static str,
        unit: String,
        reason: String,
    },
    #[error(
        "{unit} did not become active within {seconds} s (state {state}); see `journalctl -u {unit}`"
    )]
    NotActive {
        unit: String,
        state: String,
        seconds: u64,
    },
    #[error("{unit} did not stop within {seconds} s (state {state}); see `journalctl -u {unit}`")]
    NotStopped {
        unit: String,
        state: String,
        seconds: u64,
    },
}

/// The systemd operations cubbi uses.
#[async_trait]
pub trait Systemd: Send + Sync {
    async fn daemon_reload(&self) -> Result<(), SystemdError>;
    async fn enable(&self, unit: &str) -> Result<(), SystemdError>;
    async fn disable(&self, unit: &str) -> Result<(), SystemdError>;
    /// Queues a start job; systemd answers before the job has run (see [`wait_until_active`]).
    async fn start(&self, unit: &str) -> Result<(), SystemdError>;
    /// Queues a stop job; systemd answers before the job has run (see [`wait_until_stopped`]).
    async fn stop(&self, unit: &str) -> Result<(), SystemdError>;
    /// Asks the unit to re-read its configuration (ExecReload).
    async fn reload(&self, unit: &str) -> Result<(), SystemdError>;
    /// `ActiveState`: active, activating, inactive, failed…
    async fn active_state(&self, unit: &str) -> Result<String, SystemdError>;
    /// `UnitFileState`: enabled, disabled, static… (empty when the unit file does not exist)
    async fn unit_file_state(&self, unit: &str) -> Result<String, SystemdError>;
}

/// Polls until `unit` is active; a `failed` unit ends the wait early.
/// Whether `unit` is active and enabled; both false without systemd or on a D-Bus error
/// (setup then plans to start and enable it, which reports a real failure).
pub async fn active_and_enabled(systemd: Option<&dyn Systemd>, unit: &str) -> (bool, bool) {
    match systemd {
        Some(systemd) => (
            systemd
                .active_state(unit)
                .await
                .is_ok_and(|state| state == "active"),
            systemd
                .unit_file_state(unit)
                .await
                .is_ok_and(|state| state == "enabled"),
        ),
        None => (false, false),
    }
}

pub async fn wait_until_active(
    systemd: &dyn Systemd,
    unit: &str,
    timeout: Duration,
) -> Result<(), SystemdError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let state = systemd.active_state(unit).await?;
        if state == "active" {
            return Ok(());
        }
        if state == "failed" || tokio::time::Instant::now() >= deadline {
            return Err(SystemdError::NotActive {
                unit: unit.to_string(),
                state,
                seconds: timeout.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Polls until `unit` is no longer running (`inactive` or `failed`): StopUnit returns as soon as
/// the job is queued, while ExecStop/ExecStopPost may still be running.
pub async fn wait_until_stopped(
    systemd: &dyn Systemd,
    unit: &str,
    timeout: Duration,
) -> Result<(), SystemdError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let state = systemd.active_state(unit).await?;
        if state == "inactive" || state == "failed" {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(SystemdError::NotStopped {
                unit: unit.to_string(),
                state,
                seconds: timeout.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    async fn reload(&self) -> zbus::Result<()>;
    async fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    async fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    async fn reload_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    async fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    async fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;
    async fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn unit_file_state(&self) -> zbus::Result<String>;
}

/// systemd over the system bus.
pub struct DbusSystemd {
    connection: zbus::Connection,
}

impl DbusSystemd {
    pub async fn connect() -> Result<Self, SystemdError> {
        let connection = zbus::Connection::system()
            .await
            .map_err(|err| SystemdError::Connect(err.to_string()))?;
        Ok(Self { connection })
    }

    async fn manager(&self) -> Result<ManagerProxy<'_>, SystemdError> {
        ManagerProxy::new(&self.connection)
            .await
            .map_err(|err| SystemdError::Connect(err.to_string()))
    }

    async fn unit(&self, unit: &str) -> Result<UnitProxy<'_>, SystemdError> {
        let path = self
            .manager()
            .await?
            .load_unit(unit)
            .await
            .map_err(call_error("load", unit))?;
        UnitProxy::builder(&self.connection)
            .path(path)
            .build()
            .await
            .map_err(call_error("load", unit))
    }
}

fn call_error<'a>(
    action: &'static str,
    unit: &'a str,
) -> impl Fn(zbus::Error) -> SystemdError + 'a {
    move |err| SystemdError::Call {
        action,
        unit: unit.to_string(),
        reason: err.to_string(),
    }
}

#[async_trait]
impl Systemd for DbusSystemd {
    async fn daemon_reload(&self) -> Result<(), SystemdError> {
        self.manager()
            .await?
            .reload()
            .await
            .map_err(call_error("daemon-reload", "systemd"))
    }

    async fn enable(&self, unit: &str) -> Result<(), SystemdError> {
        self.manager()
            .await?
            .enable_unit_files(&[unit], false, true)
            .await
            .map(|_| ())
            .map_err(call_error("enable", unit))
    }

    async fn disable(&self, unit: &str) -> Result<(), SystemdError> {
        self.manager()
            .await?
            .disable_unit_files(&[unit], false)
            .await
            .map(|_| ())
            .map_err(call_error("disable", unit))
    }

    async fn start(&self, unit: &str) -> Result<(), SystemdError> {
        self.manager()
            .await?
            .start_unit(unit, "replace")
            .await
            .map(|_| ())
            .map_err(call_error("start", unit))
    }

    async fn stop(&self, unit: &str) -> Result<(), SystemdError> {
        self.manager()
            .await?
            .stop_unit(unit, "replace")
            .await
            .map(|_| ())
            .map_err(call_error("stop", unit))
    }

    async fn reload(&self, unit: &str) -> Result<(), SystemdError> {
        self.manager()
            .await?
            .reload_unit(unit, "replace")
            .await
            .map(|_| ())
            .map_err(call_error("reload", unit))
    }

    async fn active_state(&self, unit: &str) -> Result<String, SystemdError> {
        self.unit(unit)
            .await?
            .active_state()
            .await
            .map_err(call_error("read ActiveState", unit))
    }

    async fn unit_file_state(&self, unit: &str) -> Result<String, SystemdError> {
        self.unit(unit)
            .await?
            .unit_file_state()
            .await
            .map_err(call_error("read UnitFileState", unit))
    }
}

#[cfg(test)]
pub mod fake {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;

    /// Records calls; `start` makes a unit active, `enable` enabled.
    #[derive(Default)]
    pub struct FakeSystemd {
        pub calls: Mutex<Vec<String>>,
        pub active: Mutex<BTreeMap<String, String>>,
        pub enabled: Mutex<BTreeMap<String, String>>,
    }

    impl FakeSystemd {
        fn record(&self, call: String) {
            if let Ok(mut calls) = self.calls.lock() {
                calls.push(call);
            }
        }
        pub fn calls(&self) -> Vec<String> {
            self.calls.lock().map(|c| c.clone()).unwrap_or_default()
        }
        fn set(map: &Mutex<BTreeMap<String, String>>, unit: &str, state: &str) {
            if let Ok(mut map) = map.lock() {
                map.insert(unit.to_string(), state.to_string());
            }
        }
        fn get(map: &Mutex<BTreeMap<String, String>>, unit: &str, default: &str) -> String {
            map.lock()
                .ok()
                .and_then(|map| map.get(unit).cloned())
                .unwrap_or_else(|| default.to_string())
        }
    }

    #[async_trait]
    impl Systemd for FakeSystemd {
        async fn daemon_reload(&self) -> Result<(), SystemdError> {
            self.record("daemon-reload".into());
            Ok(())
        }
        async fn enable(&self, unit: &str) -> Result<(), SystemdError> {
            self.record(format!("enable {unit}"));
            Self::set(&self.enabled, unit, "enabled");
            Ok(())
        }
        async fn disable(&self, unit: &str) -> Result<(), SystemdError> {
            self.record(format!("disable {unit}"));
            Self::set(&self.enabled, unit, "disabled");
            Ok(())
        }
        async fn start(&self, unit: &str) -> Result<(), SystemdError> {
            self.record(format!("start {unit}"));
            Self::set(&self.active, unit, "active");
            Ok(())
        }
        async fn stop(&self, unit: &str) -> Result<(), SystemdError> {
            self.record(format!("stop {unit}"));
            Self::set(&self.active, unit, "inactive");
            Ok(())
        }
        async fn reload(&self, unit: &str) -> Result<(), SystemdError> {
            self.record(format!("reload {unit}"));
            Ok(())
        }
        async fn active_state(&self, unit: &str) -> Result<String, SystemdError> {
            Ok(Self::get(&self.active, unit, "inactive"))
        }
        async fn unit_file_state(&self, unit: &str) -> Result<String, SystemdError> {
            Ok(Self::get(&self.enabled, unit, ""))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeSystemd;
    use super::*;

    #[tokio::test]
    async fn waiting_ends_when_active_and_fails_on_failed() {
        let systemd = FakeSystemd::default();
        systemd.start("a.service").await.unwrap();
        wait_until_active(&systemd, "a.service", Duration::from_secs(1))
            .await
            .unwrap();
        systemd
            .active
            .lock()
            .unwrap()
            .insert("b.service".into(), "failed".into());
        let err = wait_until_active(&systemd, "b.service", Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("journalctl -u b.service"), "{err}");
    }

    #[tokio::test]
    async fn waiting_for_a_stop_ends_on_inactive_or_failed_and_times_out_otherwise() {
        let systemd = FakeSystemd::default();
        systemd.start("a.service").await.unwrap();
        systemd.stop("a.service").await.unwrap();
        wait_until_stopped(&systemd, "a.service", Duration::from_secs(1))
            .await
            .unwrap();
        for (unit, state) in [("b.service", "failed"), ("c.service", "deactivating")] {
            systemd
                .active
                .lock()
                .unwrap()
                .insert(unit.into(), state.into());
        }
        wait_until_stopped(&systemd, "b.service", Duration::from_secs(1))
            .await
            .unwrap();
        let err = wait_until_stopped(&systemd, "c.service", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("deactivating"), "{err}");
    }
}
