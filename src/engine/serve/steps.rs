//! The `--service` part of the setup plan and of `--uninstall`: pure functions of the
//! [`ServeState`] read before planning, like the rest of [`crate::engine::plan`].

use super::config::{DEFAULT_SERVICE_CONFIG, health_address};
use super::health::SETUP_WAIT;
use super::{SERVE_STATE_DIR, SERVE_UNIT_FILE, SERVE_UNIT_NAME, SERVE_USER, SERVICE_CONFIG, unit};
use crate::engine::plan::{
    Action, EngineMode, ServeState, ServiceOptions, Step, StepState, UninstallStep,
};
use crate::engine::{EngineError, EnginePaths, SOCKET_GROUP};

/// The service's setup steps, after the engine's: it needs the engine, its group and the port
/// lock. Refused (before anything changes) where the service cannot run: it is a systemd unit
/// beside the system engine, and the unit must be able to see the binary it runs.
pub fn plan_service(
    state: &ServeState,
    paths: &EnginePaths,
    mode: EngineMode,
    service: &ServiceOptions,
) -> Result<Vec<Step>, EngineError> {
    if !paths.is_system() || mode != EngineMode::Systemd {
        return Err(EngineError::Refused(
            "--service installs cubbi-serve.service beside the system engine, so it needs \
             systemd as PID 1 and neither --engine-root nor --supervised"
                .into(),
        ));
    }
    if let Some(why) = unit::binary_unreachable(&service.cubbi_binary) {
        return Err(EngineError::Refused(format!("--service: {why}")));
    }

    let user = if state.user_exists && state.user_in_group {
        Step::new(
            "serve-user",
            StepState::Done,
            format!("system user {SERVE_USER} exists and is in group {SOCKET_GROUP}"),
            Action::Nothing,
        )
    } else {
        Step::new(
            "serve-user",
            StepState::ToDo,
            if state.user_exists {
                format!("add {SERVE_USER} to group {SOCKET_GROUP}")
            } else {
                format!(
                    "create system user {SERVE_USER} (no home, no login shell) and add it to \
                     group {SOCKET_GROUP}"
                )
            },
            Action::CreateServiceUser {
                user: SERVE_USER.into(),
                group: SOCKET_GROUP.into(),
            },
        )
    };

    let config = if state.config.is_some() {
        Step::new(
            "serve-config",
            StepState::Done,
            format!("{SERVICE_CONFIG} exists and is kept as it is"),
            Action::Nothing,
        )
    } else {
        Step::new(
            "serve-config",
            StepState::ToDo,
            format!("write the default {SERVICE_CONFIG} (root:{SERVE_USER} 0640)"),
            Action::WriteServiceConfig {
                contents: DEFAULT_SERVICE_CONFIG.into(),
            },
        )
    };

    let address = health_address(Some(
        state.config.as_deref().unwrap_or(DEFAULT_SERVICE_CONFIG),
    ));
    let health = format!(
        "then wait up to {} s for http://{address}/healthz",
        SETUP_WAIT.as_secs()
    );
    let unit_text = unit::render(&service.cubbi_binary);
    let unit_changed = state.unit_file.as_deref() != Some(unit_text.as_str());
    // A running service reads its config and groups at start: new ones need a restart.
    let prerequisites_changed = user.state == StepState::ToDo || config.state == StepState::ToDo;
    let unit = if unit_changed || (prerequisites_changed && state.unit_active) {
        Step::new(
            "serve-unit",
            StepState::ToDo,
            format!(
                "write {SERVE_UNIT_FILE} (runs {} serve), daemon-reload, enable and {} it over \
                 D-Bus; {health}",
                service.cubbi_binary.display(),
                if state.unit_active {
                    "restart"
                } else {
                    "start"
                }
            ),
            Action::InstallServeUnit {
                unit: unit_text,
                restart: state.unit_active,
            },
        )
    } else if state.unit_active && state.unit_enabled {
        Step::new(
            "serve-unit",
            StepState::Done,
            format!("{SERVE_UNIT_NAME} is enabled and active"),
            Action::Nothing,
        )
    } else {
        Step::new(
            "serve-unit",
            StepState::ToDo,
            format!("enable and start {SERVE_UNIT_NAME}; {health}"),
            Action::StartServeUnit,
        )
    };
    Ok(vec![user, config, unit])
}

/// `--uninstall` takes the unit away; the user, its config and its state stay unless purged
/// (the state is the service's sessions db, and the config may be hand-edited).
pub fn plan_serve_uninstall(state: &ServeState, purge: bool) -> Vec<UninstallStep> {
    let unit_present = state.unit_file.is_some() || state.unit_active || state.unit_enabled;
    let unit = UninstallStep {
        id: "serve",
        state: if unit_present {
            StepState::ToDo
        } else {
            StepState::Done
        },
        finding: if unit_present {
            format!("stop and disable {SERVE_UNIT_NAME} and remove {SERVE_UNIT_FILE}")
        } else {
            format!("nothing to do (already gone): {SERVE_UNIT_NAME}")
        },
    };
    let data_present = state.user_exists || state.config.is_some() || state.state_dir_exists;
    let data = UninstallStep {
        id: "serve-data",
        state: match (purge, data_present) {
            (false, true) => StepState::Skipped,
            (true, true) => StepState::ToDo,
            (_, false) => StepState::Done,
        },
        finding: match (purge, data_present) {
            (false, true) => format!(
                "keep {SERVICE_CONFIG}, {SERVE_STATE_DIR} and user {SERVE_USER} (add --purge to \
                 delete them)"
            ),
            (true, true) => format!(
                "delete {SERVICE_CONFIG}, {SERVE_STATE_DIR} (the service's state) and user \
                 {SERVE_USER}"
            ),
            (_, false) => format!("nothing to do (already gone): {SERVE_USER}'s files"),
        },
    };
    vec![unit, data]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> ServiceOptions {
        ServiceOptions {
            cubbi_binary: "/usr/local/bin/cubbi".into(),
        }
    }

    fn plan(state: &ServeState) -> Vec<Step> {
        plan_service(
            state,
            &EnginePaths::system(),
            EngineMode::Systemd,
            &service(),
        )
        .unwrap()
    }

    fn by_id<'a>(steps: &'a [Step], id: &str) -> &'a Step {
        steps.iter().find(|step| step.id == id).unwrap()
    }

    /// What a completed `--service` leaves.
    fn installed() -> ServeState {
        ServeState {
            user_exists: true,
            user_in_group: true,
            config: Some(DEFAULT_SERVICE_CONFIG.into()),
            state_dir_exists: true,
            unit_file: Some(unit::render(&service().cubbi_binary)),
            unit_active: true,
            unit_enabled: true,
        }
    }

    #[test]
    fn a_fresh_host_gets_user_config_and_unit() {
        let steps = plan(&ServeState::default());
        let ids: Vec<_> = steps.iter().map(|s| (s.id, s.state)).collect();
        assert_eq!(
            ids,
            [
                ("serve-user", StepState::ToDo),
                ("serve-config", StepState::ToDo),
                ("serve-unit", StepState::ToDo),
            ]
        );
        assert_eq!(
            by_id(&steps, "serve-user").action,
            Action::CreateServiceUser {
                user: "cubbi-serve".into(),
                group: "cubbi".into()
            }
        );
        let unit = by_id(&steps, "serve-unit");
        let Action::InstallServeUnit {
            unit: text,
            restart,
        } = &unit.action
        else {
            panic!("{unit:?}")
        };
        assert!(!restart);
        assert!(text.contains("ExecStart=/usr/local/bin/cubbi serve --config"));
        assert!(
            unit.finding.contains("http://127.0.0.1:3000/healthz"),
            "{}",
            unit.finding
        );
    }

    #[test]
    fn a_rerun_changes_nothing_and_an_existing_config_is_kept() {
        let steps = plan(&installed());
        assert!(
            steps.iter().all(|step| step.state == StepState::Done),
            "{steps:#?}"
        );
        // A hand-made config is kept, and its address is the one waited for.
        let mine = ServeState {
            config: Some("[server]\nport = 4000\n".into()),
            unit_file: None,
            unit_active: false,
            ..installed()
        };
        let steps = plan(&mine);
        assert_eq!(by_id(&steps, "serve-config").state, StepState::Done);
        assert!(
            by_id(&steps, "serve-unit")
                .finding
                .contains("127.0.0.1:4000"),
            "{steps:#?}"
        );
    }

    #[test]
    fn a_stopped_service_is_started_and_a_changed_one_restarted() {
        let stopped = ServeState {
            unit_active: false,
            ..installed()
        };
        assert_eq!(
            by_id(&plan(&stopped), "serve-unit").action,
            Action::StartServeUnit
        );
        // Another binary path: the unit is rewritten and the running service restarted.
        let moved = ServeState {
            unit_file: Some(unit::render(std::path::Path::new("/usr/bin/cubbi"))),
            ..installed()
        };
        assert!(matches!(
            by_id(&plan(&moved), "serve-unit").action,
            Action::InstallServeUnit { restart: true, .. }
        ));
        // The user just joined the group: the running service restarts to get it.
        let outside = ServeState {
            user_in_group: false,
            ..installed()
        };
        assert!(matches!(
            by_id(&plan(&outside), "serve-unit").action,
            Action::InstallServeUnit { restart: true, .. }
        ));
    }

    #[test]
    fn refused_where_the_service_cannot_run() {
        let private = EnginePaths::under_root(std::path::Path::new("/tmp/x"));
        for (paths, mode) in [
            (&private, EngineMode::Supervised),
            (&EnginePaths::system(), EngineMode::Supervised),
        ] {
            let err = plan_service(&ServeState::default(), paths, mode, &service()).unwrap_err();
            assert!(err.to_string().contains("systemd"), "{err}");
        }
        let in_home = ServiceOptions {
            cubbi_binary: "/home/alice/.cargo/bin/cubbi".into(),
        };
        let err = plan_service(
            &ServeState::default(),
            &EnginePaths::system(),
            EngineMode::Systemd,
            &in_home,
        )
        .unwrap_err();
        assert!(err.to_string().contains("/usr/local/bin"), "{err}");
    }

    #[test]
    fn uninstall_removes_the_unit_and_purge_the_rest() {
        let steps = plan_serve_uninstall(&installed(), false);
        assert_eq!(steps[0].id, "serve");
        assert_eq!(steps[0].state, StepState::ToDo);
        assert_eq!(steps[1].state, StepState::Skipped);
        assert!(steps[1].finding.contains("--purge"));
        let purged = plan_serve_uninstall(&installed(), true);
        assert_eq!(purged[1].state, StepState::ToDo);
        let never = plan_serve_uninstall(&ServeState::default(), true);
        assert!(never.iter().all(|step| step.state == StepState::Done));
    }
}
