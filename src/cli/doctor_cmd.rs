//! `cubbi doctor`: checks the host and the dedicated endpoint; a table for people, `--json` for
//! machines; exit 1 when any check fails.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;

use super::engine_cmd::EngineLocation;
use super::{CliError, Context, output};
use crate::config::ConfigFile;
use crate::doctor::probe::{self, Probes};
use crate::doctor::{self, Status, checks};
use crate::engine::host::RealHost;
use crate::engine::runner::SystemRunner;
use crate::engine::systemd::{DbusSystemd, Systemd};

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    location: EngineLocation,
}

pub async fn run(args: DoctorArgs, context: &Context) -> Result<ExitCode, CliError> {
    let config = ConfigFile::open_default()?.config()?;
    let paths = args.location.paths();
    // --endpoint wins; a private engine root names its own socket; then the config and default.
    let endpoint = match (&context.endpoint, &args.location.engine_root) {
        (Some(endpoint), _) => endpoint.clone(),
        (None, Some(_)) => paths.endpoint(),
        (None, None) => crate::docker::resolve_endpoint(None, &config),
    };
    let systemd_is_pid1 =
        std::fs::read_to_string("/proc/1/comm").is_ok_and(|comm| comm.trim() == "systemd");
    let dbus = if systemd_is_pid1 {
        DbusSystemd::connect().await.ok()
    } else {
        None
    };
    let probes = Probes {
        host: &RealHost,
        runner: &SystemRunner,
        systemd: dbus.as_ref().map(|d| d as &dyn Systemd),
    };
    let facts = probe::gather(&probes, &paths, &endpoint, config.ports).await;
    let mut results = checks::run_all(&facts);
    if let Some(address) = &config.logging.fluentd {
        results.push(checks::fluentd(
            address,
            fluentd_reachable(address, PROBE_WAIT).await,
        ));
    }
    if config.services.langfuse.url.is_some() {
        // A config that names a Langfuse but cannot be used is a refusal at create already;
        // here only whether it answers.
        if let Ok(Some(export)) = super::session_cmd::langfuse_export(&config) {
            let reachable = langfuse_reachable(&export, PROBE_WAIT).await;
            results.push(checks::langfuse(export.endpoint(), reachable));
        }
    }
    if !config.pool.is_empty() {
        results.push(pool_check(&endpoint, &config.pool).await);
    }
    if let Some(check) = swarm_check(&endpoint).await {
        results.push(check);
        if let Some(check) = pinned_sessions_check(&endpoint).await {
            results.push(check);
        }
    }
    if context.mode.json {
        output::print_json(&serde_json::json!({
            "endpoint": endpoint,
            "status": checks::overall(&results),
            "checks": results,
        }))?;
    } else {
        // What needs action first: failures, then warnings, then what is fine.
        let mut ordered: Vec<&doctor::Check> = results.iter().collect();
        ordered.sort_by_key(|check| std::cmp::Reverse(check.status));
        let rows = ordered.iter().map(|check| {
            vec![
                check.status.to_string(),
                check.id.to_string(),
                check.finding.clone(),
                check.remedy.clone(),
            ]
        });
        let width = output::terminal_width();
        let failed = results.iter().filter(|c| c.status == Status::Fail).count();
        let warned = results.iter().filter(|c| c.status == Status::Warn).count();
        let text = [
            output::table_within(
                config.ui.table_format,
                &["STATUS", "CHECK", "FINDING", "REMEDY"],
                rows,
                width,
            ),
            output::paragraph(
                &format!("{failed} failed, {warned} warnings, endpoint {endpoint}"),
                width,
            ),
            output::paragraph(&doctor::next_step(&results), width),
        ]
        .concat();
        std::io::stdout().write_all(text.as_bytes())?;
    }
    Ok(if doctor::passed(&results) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The engine's swarm node, when it is in a swarm (nothing otherwise).
async fn swarm_check(endpoint: &str) -> Option<crate::doctor::Check> {
    use crate::engine::swarm::{DockerSwarm, MANAGER_PORT, SwarmApi};
    let docker = crate::docker::connect(endpoint).await.ok()?;
    let info = docker.info().await.ok()?;
    let default_runtime = info.default_runtime?;
    let mut membership = DockerSwarm(docker).membership().await.ok()?;
    if !membership.manager {
        // A worker's node labels are a manager's to read; its engine labels say the same.
        membership.labels = info
            .labels
            .unwrap_or_default()
            .iter()
            .filter_map(|label| label.split_once('='))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
    }
    if membership.state.is_empty() || membership.state == "inactive" {
        return None;
    }
    let manager_port = match membership.node_addr.parse::<std::net::IpAddr>() {
        Ok(address) if membership.manager => Some(
            connects(
                tokio::net::TcpStream::connect((address, MANAGER_PORT)),
                PROBE_WAIT,
            )
            .await,
        ),
        _ => None,
    };
    Some(checks::swarm(&membership, &default_runtime, manager_port))
}

/// On a manager: the nodes that cannot run the sessions pinned to them (nothing on a
/// worker, which cannot list nodes).
async fn pinned_sessions_check(endpoint: &str) -> Option<crate::doctor::Check> {
    use crate::swarm::api::ManagerApi;
    let docker = crate::docker::connect(endpoint).await.ok()?;
    let nodes = ManagerApi::nodes(&docker).await.ok()?;
    let services = docker
        .services(&[format!("{}=true", crate::local::labels::SESSION)])
        .await
        .ok()?;
    let mut pinned = std::collections::BTreeMap::<String, usize>::new();
    for service in &services {
        if let Some(node) = service
            .spec
            .as_ref()
            .and_then(|spec| spec.labels.as_ref())
            .and_then(|labels| labels.get(crate::swarm::service_spec::NODE))
        {
            *pinned.entry(node.clone()).or_default() += 1;
        }
    }
    let nodes: Vec<_> = nodes
        .iter()
        .filter_map(crate::swarm::record::node_view)
        .collect();
    Some(checks::pinned_sessions(&nodes, &pinned))
}

/// How long doctor waits for a telemetry receiver.
const PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether Langfuse's host takes a TCP connection within `wait`.
pub(super) async fn langfuse_reachable(
    export: &crate::local::langfuse::LangfuseExport,
    wait: std::time::Duration,
) -> Result<(), String> {
    let (host, port) = export
        .socket_address()
        .ok_or_else(|| "the URL names no host and port".to_string())?;
    connects(tokio::net::TcpStream::connect((host.as_str(), port)), wait).await
}

/// Whether the Fluentd receiver of `logging.fluentd` takes a TCP connection within `wait`.
pub(super) async fn fluentd_reachable(
    address: &str,
    wait: std::time::Duration,
) -> Result<(), String> {
    let parsed: crate::local::log_driver::FluentdAddress = address
        .parse()
        .map_err(|err: crate::local::log_driver::FluentdAddressError| err.to_string())?;
    connects(
        tokio::net::TcpStream::connect(parsed.socket_address()),
        wait,
    )
    .await
}

async fn connects(
    connect: impl std::future::Future<Output = std::io::Result<tokio::net::TcpStream>>,
    wait: std::time::Duration,
) -> Result<(), String> {
    match tokio::time::timeout(wait, connect).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(format!("cannot connect: {err}")),
        Err(_) => Err(format!("no answer within {} s", wait.as_secs_f32())),
    }
}

/// The pool line: members ready per image against `[pool]`, read within 5 s.
async fn pool_check(endpoint: &str, targets: &crate::local::pool::PoolTargets) -> doctor::Check {
    let read = async {
        let docker = crate::docker::connect(endpoint)
            .await
            .map_err(|err| err.to_string())?;
        crate::local::pool::ops::status(&docker, targets, &super::session_cmd::owner())
            .await
            .map_err(|err| err.to_string())
    };
    let rows = match tokio::time::timeout(std::time::Duration::from_secs(5), read).await {
        Ok(rows) => rows,
        Err(_) => Err("Docker did not answer within 5 s".into()),
    };
    crate::local::pool::inventory::doctor_check(rows)
}
