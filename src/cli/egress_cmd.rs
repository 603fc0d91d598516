//! `cubbi egress resolver` (the engine's resolver process) and `cubbi session egress` (live
//! changes of a running session's policy).

use std::net::{SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};

use super::{CliError, Context};
use crate::api::Backend;
use crate::egress::daemon::{self, DaemonSettings};
use crate::egress::nft::{DEFAULT_GRACE_SECS, DEFAULT_PORTS, NftSettings};
use crate::egress::store::EgressStore;
use crate::egress::{DomainRule, EgressChange};

#[derive(Debug, Args)]
pub struct EgressArgs {
    #[command(subcommand)]
    command: EgressCommand,
}

#[derive(Debug, Subcommand)]
enum EgressCommand {
    /// Run the resolver restricted sessions are held to (needs root: it changes nftables).
    /// The engine runs it as a unit; it answers sessions only for the names they may reach.
    Resolver(ResolverArgs),
    /// Print cubbi-egress.service for the recorded engine (its bridge and gateway), to
    /// install as /etc/systemd/system/cubbi-egress.service.
    Unit {
        /// An upstream resolver (repeatable); the unit uses the host's resolv.conf servers
        /// when none is given.
        #[arg(long = "dns-upstream", value_name = "ADDR[:PORT]", value_parser = crate::egress::unit::parse_upstream)]
        upstreams: Vec<SocketAddr>,
        /// The engine's folder (`--engine-root` of setup); the system engine when absent.
        #[arg(long, env = "CUBBI_ENGINE_ROOT", value_name = "DIR")]
        engine_root: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct ResolverArgs {
    /// Address and port to answer on: an address of this host on the engine's bridge.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: SocketAddrV4,
    /// The engine's bridge (every network bridge of the engine starts with it).
    #[arg(long, value_name = "NAME")]
    bridge: String,
    /// An upstream resolver (repeatable); the host's resolv.conf servers when none is given.
    #[arg(long = "upstream", value_name = "ADDR[:PORT]", value_parser = crate::egress::unit::parse_upstream)]
    upstreams: Vec<SocketAddr>,
    /// A TCP port restricted sessions may connect to on allowed addresses (repeatable;
    /// default 80 and 443).
    #[arg(long = "port", value_name = "PORT")]
    ports: Vec<u16>,
    /// Seconds an answer's addresses stay allowed past its TTL.
    #[arg(long, default_value_t = DEFAULT_GRACE_SECS)]
    grace: u32,
}

pub async fn run(args: EgressArgs, context: &Context) -> Result<ExitCode, CliError> {
    match args.command {
        EgressCommand::Resolver(args) => resolver(args, context).await,
        EgressCommand::Unit {
            upstreams,
            engine_root,
        } => unit(&upstreams, engine_root.as_deref()),
    }
}

fn unit(
    upstreams: &[SocketAddr],
    engine_root: Option<&std::path::Path>,
) -> Result<ExitCode, CliError> {
    let paths = crate::engine::EnginePaths::resolve(engine_root);
    let settings = crate::engine::settings::EngineSettings::load(&paths.engine_json)
        .map_err(|err| CliError::Refused(err.to_string()))?
        .ok_or_else(|| {
            CliError::Refused(format!(
                "no engine is recorded in {}; run `sudo cubbi setup` first",
                paths.engine_json.display()
            ))
        })?;
    let listen = crate::egress::unit::listen_address(settings.subnet).ok_or_else(|| {
        CliError::Refused(format!(
            "the engine's subnet {} has no address",
            settings.subnet
        ))
    })?;
    let cubbi = std::env::current_exe()?;
    print!(
        "{}",
        crate::egress::unit::render(&cubbi, listen, &settings.bridge, upstreams)
    );
    Ok(ExitCode::SUCCESS)
}

async fn resolver(args: ResolverArgs, context: &Context) -> Result<ExitCode, CliError> {
    crate::engine::settings::validate_bridge_name(&args.bridge)
        .map_err(|err| CliError::Refused(format!("--bridge {}: {err}", args.bridge)))?;
    let upstreams = if args.upstreams.is_empty() {
        crate::engine::firewall::host_nameservers()
            .into_iter()
            .filter(|address| !address.is_loopback())
            .map(|address| SocketAddr::from((address, 53)))
            .collect()
    } else {
        args.upstreams
    };
    let config = crate::config::ConfigFile::open_default()?.config()?;
    let endpoint = crate::docker::resolve_endpoint(context.endpoint.as_deref(), &config);
    let docker = crate::docker::connect(&endpoint).await?;
    let settings = DaemonSettings {
        nft: NftSettings {
            bridge: args.bridge,
            resolver: args.listen,
            ports: if args.ports.is_empty() {
                DEFAULT_PORTS.to_vec()
            } else {
                args.ports
            },
        },
        upstreams,
        grace_secs: args.grace,
        store: EgressStore::from_env(),
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    daemon::follow_events(docker.clone(), wake.clone());
    daemon::run(
        Arc::new(docker),
        settings,
        Arc::new(crate::engine::runner::SystemRunner),
        wake,
    )
    .await
    .map_err(|err| CliError::Refused(err.to_string()))?;
    Ok(ExitCode::SUCCESS)
}

/// `cubbi session egress ID --allow NAME --deny NAME`: the new policy is written where the
/// resolver reads it (on this host, or by the service with `-r`); it takes effect within a
/// second, without a restart.
pub async fn change(
    backend: &dyn Backend,
    id: &str,
    allow: Vec<DomainRule>,
    deny: Vec<DomainRule>,
    mode: super::OutputMode,
) -> Result<ExitCode, CliError> {
    let session = backend.get(id).await?;
    let view = backend
        .change_egress(&session.id, EgressChange { allow, deny })
        .await?;
    if mode.json {
        super::output::print_json(&view)?;
    } else {
        println!(
            "{}: {}",
            super::output::terminal_safe_lines(&session.name),
            crate::egress::describe(Some(&view))
        );
    }
    Ok(ExitCode::SUCCESS)
}
