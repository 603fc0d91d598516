//! `cubbi setup`: installs the dedicated endpoint as a plan of checked steps, printed as they
//! run; `--dry-run` prints the plan only, `--uninstall` takes it down again.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use ipnet::Ipv4Net;
use serde::Serialize;

use super::engine_cmd::{EngineLocation, refused, require_root};
use super::{CliError, OutputMode, output};
use crate::doctor::verify;
use crate::doctor::{Check, Status};
use crate::engine::apply::{self, Environment, Outcome, StepReport};
use crate::engine::host::{HostFacts, RealHost};
use crate::engine::plan::{self, EngineMode, SetupOptions, StepState};
use crate::engine::runner::SystemRunner;
use crate::engine::serve;
use crate::engine::settings;
use crate::engine::sysbox;
use crate::engine::systemd::{DbusSystemd, Systemd};

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replace a daemon.json that is not valid JSON (after a backup next to it).
    #[arg(long)]
    force: bool,
    /// Install Docker's upstream docker-ce packages (adding Docker's apt repository) instead of
    /// Debian's docker.io, when no dockerd is installed.
    #[arg(long)]
    docker_ce: bool,
    /// Install Sysbox from this sysbox-ce .deb instead of downloading the pinned release.
    #[arg(long, value_name = "PATH")]
    sysbox_deb: Option<PathBuf>,
    /// The SHA-256 the --sysbox-deb file must have [default: the pinned release's].
    #[arg(long, value_name = "HEX", requires = "sysbox_deb")]
    sysbox_sha256: Option<String>,
    /// Do not install Sysbox (doctor will report it missing).
    #[arg(long)]
    skip_sysbox: bool,
    /// Do not install the firewall rules that keep sessions off private networks.
    #[arg(long)]
    no_egress_guard: bool,
    /// Do not install cubbi-egress.service, the resolver that holds sessions created with an
    /// allow-list to it (they are then recorded but not held).
    #[arg(long, conflicts_with = "dns_upstreams")]
    no_egress_resolver: bool,
    /// An upstream resolver for the egress resolver (repeatable) [default: the host's].
    #[arg(long = "dns-upstream", value_name = "ADDR[:PORT]",
          value_parser = crate::egress::unit::parse_upstream)]
    dns_upstreams: Vec<std::net::SocketAddr>,
    /// Make the engine (never the host's own Docker) the first manager of a new Docker Swarm,
    /// labelled with its default runtime and cubbi's version; prints the join command.
    #[arg(long, conflicts_with_all = ["swarm_join", "uninstall"])]
    swarm_init: bool,
    /// Join the engine to the swarm whose manager listens at ADDR:PORT (2377).
    #[arg(
        long,
        value_name = "ADDR:PORT",
        requires = "swarm_token",
        conflicts_with = "uninstall"
    )]
    swarm_join: Option<std::net::SocketAddr>,
    /// The join token `--swarm-init` printed (better given as CUBBI_SWARM_TOKEN, out of ps).
    #[arg(long, env = "CUBBI_SWARM_TOKEN", value_name = "TOKEN", hide_env_values = true,
          value_parser = parse_token, requires = "swarm_join")]
    swarm_token: Option<crate::engine::swarm::JoinToken>,
    /// The address this node advertises to the swarm [default: Docker's choice].
    #[arg(long, value_name = "ADDR")]
    swarm_addr: Option<std::net::IpAddr>,
    /// Do not create the `cubbi` Docker CLI context.
    #[arg(long)]
    no_docker_context: bool,
    /// The bridge's subnet [default: the recorded one, else a free /24 in 10.214.0.0/16].
    #[arg(long, value_name = "CIDR")]
    subnet: Option<Ipv4Net>,
    /// Where the engine's other networks take their /24s [default: the recorded pool, else
    /// 10.214.0.0/16]; refused when it overlaps a host route.
    #[arg(long, value_name = "CIDR")]
    pool: Option<Ipv4Net>,
    /// The bridge interface for the engine (never docker0).
    #[arg(long, env = "CUBBI_ENGINE_BRIDGE", default_value = settings::DEFAULT_BRIDGE)]
    bridge: String,
    /// Run the engine supervised (`cubbi engine start`) even where systemd is PID 1.
    #[arg(long)]
    supervised: bool,
    /// On a host without Sysbox, make runc the engine's default runtime (so images build)
    /// instead of installing Sysbox. Sessions then need --unsafe-runc too and are NOT isolated
    /// from the host: for trials and CI only.
    #[arg(long, conflicts_with = "sysbox_deb")]
    unsafe_runc: bool,
    /// Also install `cubbi serve` as cubbi-serve.service (its own system user, a default
    /// /etc/cubbi/service.toml, a hardened unit running this binary), and wait for its /healthz.
    #[arg(long, conflicts_with = "uninstall")]
    service: bool,
    /// Stop and remove the engine, its unit, rules, context and config (the data-root stays).
    #[arg(long)]
    uninstall: bool,
    /// With --uninstall: delete the data-root too (images, containers, volumes).
    #[arg(long, requires = "uninstall")]
    purge: bool,
    #[command(flatten)]
    location: EngineLocation,
}

fn parse_token(text: &str) -> Result<crate::engine::swarm::JoinToken, String> {
    text.parse()
        .map_err(|err: crate::engine::swarm::SwarmError| err.to_string())
}

#[derive(Serialize)]
struct JsonReport<'a, T: Serialize> {
    mode: EngineMode,
    dry_run: bool,
    changed: bool,
    steps: &'a [T],
}

pub async fn run(args: SetupArgs, mode: OutputMode) -> Result<ExitCode, CliError> {
    let command = if args.uninstall {
        "cubbi setup --uninstall"
    } else {
        "cubbi setup"
    };
    if !args.dry_run {
        require_root(command)?;
    }
    settings::validate_bridge_name(&args.bridge).map_err(refused)?;
    let paths = args.location.paths();
    let facts = HostFacts::gather(&RealHost);
    // Refuse a bad package before anything changes.
    if let Some(deb) = &args.sysbox_deb {
        let expected = match &args.sysbox_sha256 {
            Some(sha) => sha.clone(),
            None => sysbox::pinned_package(&facts.architecture)
                .map_err(|err| refused(err.into()))?
                .sha256
                .to_string(),
        };
        sysbox::verify_package(deb, &expected).map_err(|err| refused(err.into()))?;
    }
    let wants_systemd = facts.systemd_is_pid1 && paths.is_system() && !args.supervised;
    let dbus = if wants_systemd {
        Some(
            DbusSystemd::connect()
                .await
                .map_err(|err| refused(err.into()))?,
        )
    } else {
        None
    };
    let env = Environment {
        paths: &paths,
        facts: &facts,
        runner: &SystemRunner,
        systemd: dbus.as_ref().map(|d| d as &dyn Systemd),
        start_timeout: Duration::from_secs(120),
    };
    let invoking_user = apply::invoking_user();
    let state = apply::read_state(&env, invoking_user.as_deref())
        .await
        .map_err(refused)?;

    if args.uninstall {
        let engine_mode = if wants_systemd {
            EngineMode::Systemd
        } else {
            EngineMode::Supervised
        };
        let steps = plan::plan_uninstall(&state, &paths, engine_mode, args.purge);
        if args.dry_run {
            return print_plan_rows(
                mode,
                engine_mode,
                steps
                    .iter()
                    .map(|s| (s.id, s.state, s.finding.clone()))
                    .collect(),
                &steps,
            );
        }
        let reports = apply::uninstall(&steps, &state, engine_mode, &env, &mut |r| {
            print_progress(mode, r)
        })
        .await;
        return finish(mode, engine_mode, &reports);
    }

    let options = SetupOptions {
        docker_ce: args.docker_ce,
        sysbox_deb: args.sysbox_deb.clone(),
        skip_sysbox: args.skip_sysbox,
        egress_guard: !args.no_egress_guard,
        docker_context: !args.no_docker_context,
        force: args.force,
        subnet: args.subnet,
        pool: args.pool,
        bridge: args.bridge.clone(),
        invoking_user,
        supervised: args.supervised,
        unsafe_runc: args.unsafe_runc,
        service: if args.service {
            Some(plan::ServiceOptions {
                // The unit runs the binary that runs setup, so both are the same version.
                cubbi_binary: std::env::current_exe().map_err(|err| {
                    CliError::Refused(format!(
                        "--service: cannot tell where this cubbi binary is: {err}"
                    ))
                })?,
            })
        } else {
            None
        },
        swarm: match (args.swarm_init, &args.swarm_join, &args.swarm_token) {
            (true, _, _) => Some(crate::engine::swarm::SwarmRequest::Init {
                advertise: args.swarm_addr,
            }),
            (false, Some(manager), Some(token)) => Some(crate::engine::swarm::SwarmRequest::Join {
                manager: *manager,
                token: token.clone(),
                advertise: args.swarm_addr,
            }),
            _ => None,
        },
        egress_resolver: if args.no_egress_resolver {
            None
        } else {
            Some(crate::engine::egress_resolver::ResolverOptions {
                cubbi_binary: std::env::current_exe().map_err(|err| {
                    CliError::Refused(format!(
                        "cannot tell where this cubbi binary is (the egress resolver's unit \
                         runs it): {err}; or add --no-egress-resolver"
                    ))
                })?,
                upstreams: args.dns_upstreams.clone(),
            })
        },
    };
    let plan = plan::plan_setup(&facts, &state, &paths, &options).map_err(refused)?;
    if args.dry_run {
        let rows = plan
            .steps
            .iter()
            .map(|s| (s.id, s.state, s.finding.clone()))
            .collect();
        return print_plan_rows(mode, plan.mode, rows, &plan.steps);
    }
    if !mode.json {
        println!(
            "engine mode: {}",
            match plan.mode {
                EngineMode::Systemd => "systemd (cubbi-docker.service, over D-Bus)",
                EngineMode::Supervised =>
                    "supervised (systemd is not PID 1 here; `cubbi engine start|stop|status`)",
            }
        );
    }
    let mut reports = apply::apply(&plan, &env, &mut |r| print_progress(mode, r)).await;
    let engine_up = !reports
        .iter()
        .any(|r| r.id == "engine" && matches!(r.outcome, Outcome::Failed | Outcome::NotAttempted));
    if engine_up {
        for check in verify::verify_endpoint(
            &paths.endpoint(),
            &plan.settings.default_runtime,
            facts.has_sysbox(),
        )
        .await
        {
            let report = verification_report(check);
            print_progress(mode, &report);
            reports.push(report);
        }
    }
    let service_started = args.service
        && !reports.iter().any(|r| {
            r.id.starts_with("serve")
                && matches!(r.outcome, Outcome::Failed | Outcome::NotAttempted)
        });
    if service_started {
        let report = serve_health_report().await;
        print_progress(mode, &report);
        reports.push(report);
    }
    finish(mode, plan.mode, &reports)
}

/// Waits for the service's /healthz on the address its config names (the default when the
/// config cannot be read): a started unit only means the process runs.
async fn serve_health_report() -> StepReport {
    let config = std::fs::read_to_string(serve::SERVICE_CONFIG).ok();
    let address = serve::config::health_address(config.as_deref());
    match serve::health::wait_healthy(address, serve::health::SETUP_WAIT).await {
        Ok(()) => StepReport {
            id: "serve-health",
            outcome: Outcome::AlreadyDone,
            message: format!("http://{address}/healthz answers ok"),
        },
        Err(err) => StepReport {
            id: "serve-health",
            outcome: Outcome::Failed,
            message: format!(
                "{err} (waited {} s); see `systemctl status cubbi-serve` and \
                 `journalctl -u cubbi-serve`",
                serve::health::SETUP_WAIT.as_secs()
            ),
        },
    }
}

/// A verification as a setup step: it changes nothing, so it is `ok`, `cannot` or `FAILED`.
fn verification_report(check: Check) -> StepReport {
    let outcome = match check.status {
        Status::Ok => Outcome::AlreadyDone,
        Status::Warn => Outcome::Cannot,
        Status::Fail => Outcome::Failed,
    };
    let mut message = format!("{}: {}", check.id, check.finding);
    if check.status != Status::Ok && !check.remedy.is_empty() {
        message.push_str(&format!(" (next: {})", check.remedy));
    }
    StepReport {
        id: "verify",
        outcome,
        message,
    }
}

fn label(state: StepState) -> &'static str {
    match state {
        StepState::Done => "done",
        StepState::ToDo => "to do",
        StepState::Cannot => "cannot",
        StepState::Skipped => "skipped",
    }
}

fn print_plan_rows<T: Serialize>(
    mode: OutputMode,
    engine_mode: EngineMode,
    rows: Vec<(&'static str, StepState, String)>,
    steps: &[T],
) -> Result<ExitCode, CliError> {
    let changed = rows.iter().any(|(_, state, _)| *state == StepState::ToDo);
    if mode.json {
        output::print_json(&JsonReport {
            mode: engine_mode,
            dry_run: true,
            changed,
            steps,
        })?;
    } else {
        println!("plan (dry run, nothing changes):");
        for (id, state, finding) in rows {
            println!("  [{:<7}] {id}: {finding}", label(state));
        }
        if !changed {
            println!("everything is already in place");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_progress(mode: OutputMode, report: &StepReport) {
    if mode.json {
        return;
    }
    let tag = match report.outcome {
        Outcome::AlreadyDone => "ok",
        Outcome::Applied => "changed",
        Outcome::Skipped => "skipped",
        Outcome::Cannot => "cannot",
        Outcome::Failed => "FAILED",
        Outcome::NotAttempted => "blocked",
    };
    println!("  [{tag:<7}] {}: {}", report.id, report.message);
}

fn finish(
    mode: OutputMode,
    engine_mode: EngineMode,
    reports: &[StepReport],
) -> Result<ExitCode, CliError> {
    let changed = reports.iter().any(|r| r.outcome == Outcome::Applied);
    let failed = reports
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Failed | Outcome::NotAttempted));
    if mode.json {
        output::print_json(&JsonReport {
            mode: engine_mode,
            dry_run: false,
            changed,
            steps: reports,
        })?;
    } else if failed {
        eprintln!("setup did not finish; fix the failed step and run it again");
    } else if changed {
        println!("done; check it with `cubbi doctor`");
    } else {
        println!("nothing changed: everything was already in place");
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
