//! `cubbi serve`: runs the session API over HTTP or HTTPS until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{CliError, Context};
use crate::service::config::ServiceConfig;
use crate::service::{ServiceOptions, start_on_docker};

#[derive(Debug, Default, Args)]
pub struct ServeRunArgs {
    /// The service config [default: /etc/cubbi/service.toml; its defaults when absent].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address and port to listen on, over server.host and server.port.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Where the service keeps its database and SSH key [default: state_dir, /var/lib/cubbi].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Let requests ask for plain runc (NOT isolated from the host), over allow_unsafe_runc.
    #[arg(long)]
    pub unsafe_runc: bool,
}

/// The config file with the command line over it.
pub fn effective_config(args: &ServeRunArgs, context: &Context) -> Result<ServiceConfig, CliError> {
    let mut config = ServiceConfig::load_given(args.config.as_deref())
        .map_err(|err| CliError::Refused(err.to_string()))?;
    if let Some(listen) = args.listen {
        config.server.host = listen.ip();
        config.server.port = listen.port();
    }
    if let Some(dir) = &args.state_dir {
        config.state_dir = dir.clone();
    }
    if args.unsafe_runc {
        config.allow_unsafe_runc = true;
    }
    if let Some(endpoint) = &context.endpoint {
        config.docker.endpoint = endpoint.clone();
    }
    config
        .validate()
        .map_err(|err| CliError::Refused(err.to_string()))?;
    Ok(config)
}

pub async fn run(args: ServeRunArgs, context: &Context) -> Result<ExitCode, CliError> {
    let config = effective_config(&args, context)?;
    if config.allow_unsafe_runc {
        tracing::warn!(
            "allow_unsafe_runc is on: users may ask for sessions NOT isolated from this host"
        );
    }
    // The connection cap (server.max_connections), not the descriptor table, bounds clients.
    if let Some(limit) = crate::service::connections::raise_open_files_limit()
        && limit < config.server.max_connections as u64 + 256
    {
        tracing::warn!(
            "this process may open only {limit} files, fewer than server.max_connections ({}) \
             needs: raise LimitNOFILE (the unit sets 65536) or lower server.max_connections",
            config.server.max_connections
        );
    }
    let store = crate::service::store::open_configured(&config)
        .await
        .map_err(|err| CliError::Refused(err.to_string()))?;
    let address = config.listen_address();
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|err| CliError::Refused(format!("cannot listen on {address}: {err}")))?;
    let running = start_on_docker(listener, &config, store, ServiceOptions::default())
        .await
        .map_err(|err| CliError::Refused(err.to_string()))?;
    // The config's validation guarantees the key comes with the certificate.
    let scheme = if config.server.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(address = %running.address, scheme, endpoint = %config.docker.endpoint, "cubbi serve is listening");
    let stopper = running.stopper();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot listen for SIGTERM; stop the service with SIGKILL");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
        let _ = stopper.send(true);
    });
    running
        .wait()
        .await
        .map_err(|err| CliError::Refused(err.to_string()))?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
