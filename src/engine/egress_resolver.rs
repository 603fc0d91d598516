//! The egress resolver as part of `cubbi setup`: `cubbi-egress.service` beside the system
//! engine, so a session created with an allow-list is held to it from the first create.
//! Planning is a pure function of the state read before, like the rest of [`super::plan`].

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::host::HostFacts;
use super::host_unit::{HostUnit, UnitState};
use super::plan::{Action, EngineMode, Step, StepState};
use super::settings::EngineSettings;
use super::{EnginePaths, serve};

/// The resolver's unit; 20 s is systemd's default stop timeout and a margin.
pub const EGRESS_UNIT: HostUnit = HostUnit {
    name: "cubbi-egress.service",
    path: "/etc/systemd/system/cubbi-egress.service",
    stop_timeout: Duration::from_secs(20),
};

/// What setup was asked for (`--no-egress-resolver` gives none).
#[derive(Debug, Clone)]
pub struct ResolverOptions {
    /// The cubbi binary the unit runs (the one running setup).
    pub cubbi_binary: PathBuf,
    /// `--dns-upstream`: where the resolver forwards; the host's resolvers when empty.
    pub upstreams: Vec<SocketAddr>,
}

pub fn plan(
    facts: &HostFacts,
    state: &UnitState,
    host_nameservers: &[Ipv4Addr],
    paths: &EnginePaths,
    mode: EngineMode,
    settings: &EngineSettings,
    options: Option<&ResolverOptions>,
) -> Step {
    let step =
        |state, finding: String, action| Step::new("egress-resolver", state, finding, action);
    let Some(options) = options else {
        return step(
            StepState::Skipped,
            "skipped (--no-egress-resolver): sessions created with an allow-list are recorded \
             but not held to it"
                .into(),
            Action::Nothing,
        );
    };
    let Some(listen) = crate::egress::unit::listen_address(settings.subnet) else {
        return step(
            StepState::Cannot,
            format!("the engine's subnet {} has no address", settings.subnet),
            Action::Nothing,
        );
    };
    if !paths.is_system() || mode != EngineMode::Systemd {
        return step(
            StepState::Skipped,
            format!(
                "the resolver is a unit beside the system engine under systemd; for this \
                 engine run `cubbi egress resolver --listen {listen} --bridge {}` as root",
                settings.bridge
            ),
            Action::Nothing,
        );
    }
    if let Some(why) = serve::unit::binary_unreachable(&options.cubbi_binary) {
        return step(StepState::Cannot, why, Action::Nothing);
    }
    if options.upstreams.is_empty() && host_nameservers.iter().all(Ipv4Addr::is_loopback) {
        return step(
            StepState::Cannot,
            "the host names no resolver the egress resolver can forward to (only loopback \
             ones): run setup again with --dns-upstream ADDR"
                .into(),
            Action::Nothing,
        );
    }
    let packages: Vec<String> = if facts.has("nft") {
        Vec::new()
    } else if facts.distro.is_debian_family() && facts.has("apt-get") {
        vec!["nftables".into()]
    } else {
        return step(
            StepState::Cannot,
            "nft is not installed: install nftables with your package manager, then run setup \
             again"
                .into(),
            Action::Nothing,
        );
    };
    let unit = crate::egress::unit::render(
        &options.cubbi_binary,
        listen,
        &settings.bridge,
        &options.upstreams,
    );
    let upstreams = if options.upstreams.is_empty() {
        "the host's resolvers".to_string()
    } else {
        options
            .upstreams
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if state.file.as_deref() != Some(unit.as_str()) || !packages.is_empty() {
        step(
            StepState::ToDo,
            format!(
                "{}write {} (answers restricted sessions on {listen}, forwards to {upstreams}), \
                 enable and {} it",
                if packages.is_empty() {
                    String::new()
                } else {
                    format!("install {}, ", packages.join(" "))
                },
                EGRESS_UNIT.path,
                if state.active { "restart" } else { "start" }
            ),
            Action::InstallEgressResolver {
                unit,
                restart: state.active,
                packages,
            },
        )
    } else if state.active && state.enabled {
        step(
            StepState::Done,
            format!(
                "{} is enabled and active (on {listen}, forwarding to {upstreams})",
                EGRESS_UNIT.name
            ),
            Action::Nothing,
        )
    } else {
        step(
            StepState::ToDo,
            format!("enable and start {}", EGRESS_UNIT.name),
            Action::StartEgressResolver,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::host::fixture::FixtureHost;

    fn settings() -> EngineSettings {
        EngineSettings {
            bridge: "cubbi0".into(),
            subnet: "10.214.3.0/24".parse().unwrap(),
            pool: "10.214.0.0/16".parse().unwrap(),
            egress_guard: true,
            default_runtime: "sysbox-runc".into(),
            ip_forward_before: None,
            swarm_unsafe_runc: false,
        }
    }

    fn facts(programs: &[&str]) -> HostFacts {
        let mut host = FixtureHost::debian_with_systemd();
        host.programs.extend(programs.iter().map(|p| p.to_string()));
        HostFacts::gather(&host)
    }

    fn options(upstreams: &[&str]) -> ResolverOptions {
        ResolverOptions {
            cubbi_binary: "/usr/local/bin/cubbi".into(),
            upstreams: upstreams
                .iter()
                .map(|u| crate::egress::unit::parse_upstream(u).unwrap())
                .collect(),
        }
    }

    fn plan_with(state: &UnitState, facts: &HostFacts, options: &ResolverOptions) -> Step {
        plan(
            facts,
            state,
            &["192.0.2.53".parse().unwrap()],
            &EnginePaths::system(),
            EngineMode::Systemd,
            &settings(),
            Some(options),
        )
    }

    #[test]
    fn a_fresh_host_gets_the_unit_on_the_gateway_and_nftables_when_missing() {
        let step = plan_with(&UnitState::default(), &facts(&[]), &options(&["9.9.9.9"]));
        assert_eq!(step.state, StepState::ToDo);
        let Action::InstallEgressResolver {
            unit,
            restart,
            packages,
        } = &step.action
        else {
            panic!("{step:?}")
        };
        assert!(!restart);
        assert_eq!(packages, &["nftables".to_string()]);
        assert!(
            unit.contains("--listen 10.214.3.1:5301 --bridge cubbi0 --upstream 9.9.9.9:53\n"),
            "{unit}"
        );
        assert!(step.finding.contains("9.9.9.9:53"), "{}", step.finding);
    }

    #[test]
    fn a_rerun_is_done_and_new_upstreams_restart_it() {
        let nft = facts(&["nft"]);
        let first = plan_with(&UnitState::default(), &nft, &options(&[]));
        let Action::InstallEgressResolver { unit, packages, .. } = first.action else {
            panic!("{first:?}")
        };
        assert!(packages.is_empty());
        let installed = UnitState {
            file: Some(unit),
            active: true,
            enabled: true,
        };
        assert_eq!(
            plan_with(&installed, &nft, &options(&[])).state,
            StepState::Done
        );
        let changed = plan_with(&installed, &nft, &options(&["192.0.2.1:5353"]));
        assert!(
            matches!(
                changed.action,
                Action::InstallEgressResolver { restart: true, .. }
            ),
            "{changed:?}"
        );
        let stopped = UnitState {
            active: false,
            ..installed
        };
        assert_eq!(
            plan_with(&stopped, &nft, &options(&[])).action,
            Action::StartEgressResolver
        );
    }

    #[test]
    fn not_installed_where_it_cannot_run() {
        let nft = facts(&["nft"]);
        // Only a local stub resolver and no --dns-upstream: nothing to forward to.
        let stub = plan(
            &nft,
            &UnitState::default(),
            &["127.0.0.53".parse().unwrap()],
            &EnginePaths::system(),
            EngineMode::Systemd,
            &settings(),
            Some(&options(&[])),
        );
        assert_eq!(stub.state, StepState::Cannot);
        assert!(stub.finding.contains("--dns-upstream"), "{}", stub.finding);
        // A binary the hardened unit cannot see.
        let home = ResolverOptions {
            cubbi_binary: "/root/cubbi".into(),
            upstreams: Vec::new(),
        };
        assert_eq!(
            plan_with(&UnitState::default(), &nft, &home).state,
            StepState::Cannot
        );
        // A private or supervised engine: the user runs it, and is told how.
        let private = plan(
            &nft,
            &UnitState::default(),
            &[],
            &EnginePaths::under_root(std::path::Path::new("/tmp/x")),
            EngineMode::Supervised,
            &settings(),
            Some(&options(&[])),
        );
        assert_eq!(private.state, StepState::Skipped);
        assert!(
            private
                .finding
                .contains("cubbi egress resolver --listen 10.214.3.1:5301"),
            "{}",
            private.finding
        );
        // Asked not to.
        let off = plan(
            &nft,
            &UnitState::default(),
            &[],
            &EnginePaths::system(),
            EngineMode::Systemd,
            &settings(),
            None,
        );
        assert_eq!(off.state, StepState::Skipped);
    }
}
