//! The engine's desired configuration, derived once: what `cubbi setup` plans and what
//! `cubbi engine start` writes come from [`desired`], so the two cannot drift apart.

use ipnet::Ipv4Net;
use serde_json::{Map, Value};

use super::daemon_json::{self, DaemonSettings};
use super::host::HostFacts;
use super::settings::{DEFAULT_POOL, EngineSettings};
use super::{EngineError, EnginePaths, subnet};

/// What the caller asks for; `None` keeps what engine.json records (or the default).
#[derive(Debug, Clone, Default)]
pub struct Wanted<'a> {
    /// The bridge for a new engine (a recorded one is kept unless another subnet is asked for).
    pub bridge: &'a str,
    pub subnet: Option<Ipv4Net>,
    pub pool: Option<Ipv4Net>,
    pub egress_guard: Option<bool>,
    /// `Some(true)`: runc as the default runtime where Sysbox is missing; `Some(false)`: Sysbox;
    /// `None`: as recorded.
    pub unsafe_runc: Option<bool>,
    /// The socket's group; `None` leaves dockerd's default.
    pub socket_group: Option<&'a str>,
    /// `Some(true)`: a Swarm node under `--unsafe-runc` (every container without a seccomp
    /// filter, in a private cgroup namespace), where runc is the default runtime; `None`: as
    /// recorded.
    pub swarm_unsafe_runc: Option<bool>,
}

/// engine.json and cubbi's part of daemon.json.
#[derive(Debug, Clone)]
pub struct Desired {
    pub settings: EngineSettings,
    pub daemon_json: Map<String, Value>,
}

/// The settings for this host and what is recorded, refusing a subnet or pool that overlaps a
/// host route (naming it).
pub fn desired(
    facts: &HostFacts,
    paths: &EnginePaths,
    recorded: Option<&EngineSettings>,
    wanted: &Wanted<'_>,
) -> Result<Desired, EngineError> {
    let bridge = recorded
        .filter(|recorded| wanted.subnet.is_none() || Some(recorded.subnet) == wanted.subnet)
        .map(|recorded| recorded.bridge.clone())
        .unwrap_or_else(|| wanted.bridge.to_string());
    let wanted_subnet = wanted.subnet.or(recorded.map(|recorded| recorded.subnet));
    let chosen = subnet::choose_subnet(&facts.routes, &bridge, wanted_subnet)?;
    let pool = wanted
        .pool
        .or(recorded.map(|recorded| recorded.pool))
        .unwrap_or(DEFAULT_POOL)
        .trunc();
    subnet::check_pool(&facts.routes, &bridge, pool)?;
    let egress_guard = wanted
        .egress_guard
        .or(recorded.map(|recorded| recorded.egress_guard))
        .unwrap_or(true);
    let mut settings = EngineSettings::new(bridge, chosen, egress_guard);
    settings.pool = pool;
    settings.default_runtime = match (wanted.unsafe_runc, recorded) {
        (Some(true), _) if !facts.has_sysbox() => "runc".into(),
        (None, Some(recorded)) => recorded.default_runtime.clone(),
        _ => daemon_json::SYSBOX_RUNTIME.into(),
    };
    // Only where runc is the default: a Sysbox node needs none of it, and a setup without
    // --unsafe-runc (Sysbox again) takes it away.
    settings.swarm_unsafe_runc = settings.default_runtime == "runc"
        && wanted
            .swarm_unsafe_runc
            .or(recorded.map(|recorded| recorded.swarm_unsafe_runc))
            .unwrap_or(false);
    // The value before cubbi's engine first ran, kept across re-runs.
    settings.ip_forward_before = recorded
        .and_then(|recorded| recorded.ip_forward_before)
        .or(facts.ip_forward);
    let daemon_json = daemon_json::render(&DaemonSettings {
        paths,
        bridge: &settings.bridge,
        pool: settings.pool,
        default_runtime: &settings.default_runtime,
        socket_group: wanted.socket_group,
        swarm_unsafe_runc: settings.swarm_unsafe_runc,
    });
    Ok(Desired {
        settings,
        daemon_json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::host::fixture::FixtureHost;

    fn facts(route: Option<&str>) -> HostFacts {
        let mut host = FixtureHost::debian_with_systemd();
        if let Some(route) = route {
            host.file(
                "/proc/net/route",
                &format!(
                    "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n{route}\n"
                ),
            );
        }
        HostFacts::gather(&host)
    }

    fn wanted() -> Wanted<'static> {
        Wanted {
            bridge: "cubbi0",
            socket_group: Some("cubbi"),
            ..Default::default()
        }
    }

    #[test]
    fn a_fresh_engine_gets_the_first_free_subnet_the_default_pool_and_the_guard() {
        let paths = EnginePaths::system();
        let got = desired(&facts(None), &paths, None, &wanted()).unwrap();
        assert_eq!(got.settings.subnet.to_string(), "10.214.0.0/24");
        assert_eq!(got.settings.pool, DEFAULT_POOL);
        assert!(got.settings.egress_guard);
        assert_eq!(got.settings.default_runtime, "sysbox-runc");
        assert_eq!(got.settings.ip_forward_before, Some(false));
        assert_eq!(got.daemon_json["group"], "cubbi");
    }

    #[test]
    fn what_is_recorded_is_kept_unless_asked_otherwise() {
        let paths = EnginePaths::system();
        let mut recorded =
            EngineSettings::new("cubbi7".into(), "10.214.7.0/24".parse().unwrap(), false);
        recorded.default_runtime = "runc".into();
        recorded.ip_forward_before = Some(false);
        let mut on = facts(None);
        on.ip_forward = Some(true);
        let got = desired(&on, &paths, Some(&recorded), &wanted()).unwrap();
        assert_eq!(
            got.settings, recorded,
            "engine start keeps everything recorded"
        );
        let setup = Wanted {
            egress_guard: Some(true),
            unsafe_runc: Some(false),
            ..wanted()
        };
        let got = desired(&on, &paths, Some(&recorded), &setup).unwrap();
        assert!(got.settings.egress_guard);
        assert_eq!(got.settings.default_runtime, "sysbox-runc");
        assert_eq!(
            got.settings.ip_forward_before,
            Some(false),
            "the first value stays"
        );
    }

    #[test]
    fn a_pool_overlapping_a_host_route_is_refused() {
        // tailscale0 routes 100.64.0.0/10; a LAN routes 10.214.5.0/24 via eth1.
        let paths = EnginePaths::system();
        let lan = facts(Some("eth1\t0005D60A\t00000000\t0001\t0\t0\t0\t00FFFFFF"));
        let err = desired(&lan, &paths, None, &wanted()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("10.214.5.0/24") && text.contains("eth1"),
            "{text}"
        );
        let elsewhere = Wanted {
            pool: Some("10.215.0.0/16".parse().unwrap()),
            ..wanted()
        };
        let got = desired(&lan, &paths, None, &elsewhere).unwrap();
        assert_eq!(got.settings.pool.to_string(), "10.215.0.0/16");
        assert_eq!(
            got.daemon_json["default-address-pools"],
            serde_json::json!([{"base": "10.215.0.0/16", "size": 24}])
        );
    }

    #[test]
    fn a_swarm_node_under_unsafe_runc_is_recorded_and_kept_only_with_runc() {
        let paths = EnginePaths::system();
        let node = Wanted {
            unsafe_runc: Some(true),
            swarm_unsafe_runc: Some(true),
            ..wanted()
        };
        let got = desired(&facts(None), &paths, None, &node).unwrap();
        assert!(got.settings.swarm_unsafe_runc);
        assert_eq!(
            got.daemon_json["seccomp-profile"],
            "/etc/cubbi/docker/seccomp-allow-all.json"
        );
        assert_eq!(got.daemon_json["default-cgroupns-mode"], "private");
        // `engine start` (nothing asked) keeps what setup recorded.
        let got = desired(&facts(None), &paths, Some(&got.settings), &wanted()).unwrap();
        assert!(got.settings.swarm_unsafe_runc);
        assert!(got.daemon_json.contains_key("seccomp-profile"));
        // A setup without --unsafe-runc goes back to Sysbox and takes it away.
        let safe = Wanted {
            unsafe_runc: Some(false),
            ..wanted()
        };
        let back = desired(&facts(None), &paths, Some(&got.settings), &safe).unwrap();
        assert!(!back.settings.swarm_unsafe_runc);
        assert!(!back.daemon_json.contains_key("seccomp-profile"));
        assert!(!back.daemon_json.contains_key("default-cgroupns-mode"));
        // Where Sysbox is installed --unsafe-runc keeps it the default: nothing node-wide.
        let mut sysbox = FixtureHost::debian_with_systemd();
        sysbox
            .programs
            .extend(["sysbox-runc", "sysbox-mgr", "sysbox-fs"].map(String::from));
        let got = desired(&HostFacts::gather(&sysbox), &paths, None, &node).unwrap();
        assert_eq!(got.settings.default_runtime, "sysbox-runc");
        assert!(!got.settings.swarm_unsafe_runc);
        assert!(!got.daemon_json.contains_key("seccomp-profile"));
    }
}
