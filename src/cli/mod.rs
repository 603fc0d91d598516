//! The command-line front end: clap definitions and presentation (tables, `--json`). Domain
//! logic lives in the library modules the commands call.

mod config_cmd;
mod data_cmd;
mod doctor_cmd;
mod duration;
mod egress_cmd;
mod engine_cmd;
mod image_cmd;
mod mcp_cmd;
pub mod output;
mod pool_cmd;
mod project_cmd;
mod remote_cmd;
mod run_cmd;
mod serve_cmd;
mod session_cmd;
mod setup_cmd;
mod snapshot_cmd;
mod ssh_proxy_cmd;
mod token_cmd;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::api::ApiError;
use crate::config::ConfigError;
use crate::docker::DockerError;
use crate::images::ImageError;
use crate::projects::ProjectError;
use crate::remote::remotes::RemoteError;
use crate::service::store::StoreError;

/// Everything a command can fail with; `main` prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Api(ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Project(#[from] ProjectError),
    #[error("{0}")]
    Refused(String),
    #[error("cannot write to the terminal: {0}")]
    Output(#[from] std::io::Error),
}

/// Run AI coding agents in isolated system containers.
///
/// cubbi launches sessions: containers with systemd as PID 1, their own Docker daemon and an
/// OpenSSH server that accepts only your key, on a dedicated Docker endpoint.
#[derive(Debug, Parser)]
#[command(
    name = "cubbi",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Act on the cubbi service NAME (from `remote.endpoints`) instead of the local endpoint.
    #[arg(short = 'r', long, global = true, value_name = "NAME")]
    pub remote: Option<String>,

    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    /// Log more: -v info, -vv debug, -vvv trace (RUST_LOG also works). Give it before the
    /// command: `-v` after `session create` mounts a volume, as with docker run.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Docker endpoint to use [default: unix:///var/run/cubbi-docker.sock].
    #[arg(
        long,
        global = true,
        env = "CUBBI_DOCKER_HOST",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub endpoint: Option<String>,

    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub create: session_cmd::CreateArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show and change the user config (~/.config/cubbi/config.toml).
    Config(config_cmd::ConfigArgs),
    /// Create, list, connect to and close sessions.
    Session(session_cmd::SessionArgs),
    /// List, show and remove the snapshots `cubbi session snapshot` and `fork` take.
    Snapshot(snapshot_cmd::SnapshotArgs),
    /// Export or import your agent data volume (the tools' logins and settings).
    Data(data_cmd::DataArgs),
    /// Run one prompt headless with the session's tool and print its result.
    Run(Box<run_cmd::RunArgs>),
    /// List, inspect and build the system container images sessions boot.
    Image(image_cmd::ImageArgs),
    /// Install the dedicated Docker endpoint with Sysbox (needs root; --dry-run shows the plan).
    Setup(setup_cmd::SetupArgs),
    /// Check the host and the dedicated endpoint; exit 1 when a check fails.
    Doctor(doctor_cmd::DoctorArgs),
    /// Start, stop or show the supervised engine (where systemd is not PID 1).
    Engine(engine_cmd::EngineArgs),
    /// Serve the session API over HTTP on a shared host, and manage its API tokens.
    Serve(ServeArgs),
    /// The engine's resolver that holds sessions to the names they may reach.
    Egress(egress_cmd::EgressArgs),
    /// Add, list and remove the cubbi services `-r NAME` can act on.
    Remote(remote_cmd::RemoteArgs),
    /// Register git repositories and their credentials once, to clone into sessions.
    Project(project_cmd::ProjectArgs),
    /// Register MCP servers once, to give sessions' tools with --mcp NAME.
    Mcp(mcp_cmd::McpArgs),
    /// Show or drain the warm pool of booted sessions-to-be (`[pool]` in the config).
    Pool(pool_cmd::PoolArgs),
    /// Log in to a remote: `cubbi -r NAME auth`. A service with an OpenID Connect login gets
    /// a device login (a URL and a code to approve in the browser); otherwise, or with
    /// --token-stdin, an API token is read from stdin or typed hidden.
    Auth {
        /// Store the token without checking it against the service.
        #[arg(long)]
        no_verify: bool,
        /// Read an API token (from stdin, or typed hidden) even when the service offers a
        /// login.
        #[arg(long, conflicts_with = "logout")]
        token_stdin: bool,
        /// Log out: revoke the login at the service and forget it (an API token is only
        /// forgotten here).
        #[arg(long, conflicts_with = "no_verify")]
        logout: bool,
    },
    /// OpenSSH's `ProxyCommand` for a session of a service whose SSH ports are not reachable:
    /// relays stdin/stdout through the service's HTTPS port (`cubbi -r NAME ssh-proxy ID`).
    SshProxy(ssh_proxy_cmd::SshProxyArgs),
    /// Print the man page (roff), e.g. `cubbi man > /usr/local/share/man/man1/cubbi.1`.
    Man,
    /// Print a shell completion script, e.g. `cubbi completions bash > /etc/bash_completion.d/cubbi`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServeArgs {
    #[command(subcommand)]
    command: Option<ServeCommand>,
    #[command(flatten)]
    run: serve_cmd::ServeRunArgs,
}

#[derive(Debug, Subcommand)]
enum ServeCommand {
    /// Manage the service's API tokens.
    Token(token_cmd::TokenArgs),
}

/// Options every command's output honours.
#[derive(Debug, Clone, Copy)]
pub struct OutputMode {
    pub json: bool,
}

/// What the global flags tell every command.
#[derive(Debug, Clone)]
pub struct Context {
    pub mode: OutputMode,
    /// `--endpoint` or `CUBBI_DOCKER_HOST`, before the config's `docker.endpoint`.
    pub endpoint: Option<String>,
    /// The cubbi service session commands act on (`-r NAME`, else `remote.default`); `None`
    /// for the local endpoint.
    pub remote: Option<String>,
}

pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let mode = OutputMode { json: cli.json };
    let mut context = Context {
        mode,
        endpoint: cli.endpoint.clone(),
        remote: None,
    };
    let Some(command) = cli.command else {
        let config = crate::config::ConfigFile::open_default()?.config()?;
        context.remote = session_remote(cli.remote.as_deref(), &config);
        return session_cmd::create_session(cli.create, &context, &config).await;
    };
    match command {
        Command::Session(args) => {
            let config = crate::config::ConfigFile::open_default()?.config()?;
            context.remote = session_remote(cli.remote.as_deref(), &config);
            session_cmd::run(args, &context).await
        }
        Command::Snapshot(args) => {
            let config = crate::config::ConfigFile::open_default()?.config()?;
            context.remote = session_remote(cli.remote.as_deref(), &config);
            snapshot_cmd::run(args, &context).await
        }
        Command::Data(args) => {
            let config = crate::config::ConfigFile::open_default()?.config()?;
            context.remote = session_remote(cli.remote.as_deref(), &config);
            data_cmd::run(args, &context).await
        }
        Command::Run(args) => {
            let config = crate::config::ConfigFile::open_default()?.config()?;
            context.remote = session_remote(cli.remote.as_deref(), &config);
            run_cmd::run(*args, &context, &config).await
        }
        Command::Pool(args) => {
            refuse_remote(cli.remote.as_deref(), "pool")?;
            pool_cmd::run(args, &context).await
        }
        Command::Config(args) => {
            refuse_remote(cli.remote.as_deref(), "config")?;
            config_cmd::run(args, mode)
        }
        Command::Image(args) => {
            // `-r NAME` lists and inspects the images of that service; building is local.
            context.remote = cli.remote.filter(|name| name != "local");
            image_cmd::run(args, &context).await
        }
        Command::Setup(args) => {
            refuse_remote(cli.remote.as_deref(), "setup")?;
            setup_cmd::run(args, mode).await
        }
        Command::Doctor(args) => {
            refuse_remote(cli.remote.as_deref(), "doctor")?;
            doctor_cmd::run(args, &context).await
        }
        Command::Engine(args) => {
            refuse_remote(cli.remote.as_deref(), "engine")?;
            engine_cmd::run(args, mode).await
        }
        Command::Serve(args) => {
            refuse_remote(cli.remote.as_deref(), "serve")?;
            match args.command {
                Some(ServeCommand::Token(token)) => token_cmd::run(token, &context).await,
                None => serve_cmd::run(args.run, &context).await,
            }
        }
        Command::Egress(args) => {
            refuse_remote(cli.remote.as_deref(), "egress")?;
            egress_cmd::run(args, &context).await
        }
        Command::Remote(args) => {
            refuse_remote(cli.remote.as_deref(), "remote")?;
            remote_cmd::run(args, mode)
        }
        Command::Project(args) => {
            // Projects live where sessions are created: `-r NAME`, else `remote.default`.
            let config = crate::config::ConfigFile::open_default()?.config()?;
            let remote = session_remote(cli.remote.as_deref(), &config);
            project_cmd::run(args, mode, remote.as_deref(), &config).await
        }
        Command::Mcp(args) => {
            // Like projects, MCP servers live where sessions are created.
            let config = crate::config::ConfigFile::open_default()?.config()?;
            let remote = session_remote(cli.remote.as_deref(), &config);
            mcp_cmd::run(args, mode, remote.as_deref(), &config).await
        }
        Command::Auth {
            no_verify,
            token_stdin,
            logout,
        } => {
            let options = remote_cmd::AuthOptions {
                no_verify,
                token_stdin,
                logout,
            };
            remote_cmd::auth(cli.remote.as_deref(), options).await
        }
        Command::SshProxy(args) => {
            let config = crate::config::ConfigFile::open_default()?.config()?;
            context.remote = session_remote(cli.remote.as_deref(), &config);
            ssh_proxy_cmd::run(args, &context, &config).await
        }
        Command::Man => {
            refuse_remote(cli.remote.as_deref(), "man")?;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "cubbi", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The remote session commands go to: `-r NAME`, else `remote.default`; `-r local` (or no
/// default) is the local endpoint.
fn session_remote(flag: Option<&str>, config: &crate::config::Config) -> Option<String> {
    match flag {
        Some("local") => None,
        Some(name) => Some(name.to_string()),
        None => config.remote.default.clone(),
    }
}

/// Commands that only ever act on this machine say so instead of ignoring `-r`.
fn refuse_remote(remote: Option<&str>, command: &str) -> Result<(), CliError> {
    match remote {
        Some(name) => Err(CliError::Refused(format!(
            "`cubbi {command}` acts on this machine only; drop `-r {name}`"
        ))),
        None => Ok(()),
    }
}

impl Cli {
    /// `cubbi serve` itself (not its token subcommands): a daemon, which logs differently.
    pub fn is_service(&self) -> bool {
        matches!(&self.command, Some(Command::Serve(serve)) if serve.command.is_none())
    }
}

/// Sets up logging: for commands, to stderr, `RUST_LOG` when set, otherwise the level from
/// `-v`; for the service, to stdout at info, one JSON object a line when stdout is not a
/// terminal (journald, a log collector).
pub fn init_tracing(verbosity: u8, service: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(match (verbosity, service) {
            (0, true) => "warn,cubbi=info,tower_http=info",
            (0, false) => "warn",
            (1, _) => "warn,cubbi=info",
            (2, _) => "info,cubbi=debug",
            _ => "trace",
        })
    });
    if service {
        let no_request_bodies = tracing_subscriber::filter::filter_fn(|metadata| {
            !(*metadata.level() == tracing::Level::TRACE
                && metadata.target().starts_with("bollard"))
        });
        let json = (!std::io::stdout().is_terminal()).then(|| {
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_writer(std::io::stdout)
                .with_filter(no_request_bodies.clone())
        });
        let text = std::io::stdout().is_terminal().then(|| {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stdout)
                .with_filter(no_request_bodies)
        });
        tracing_subscriber::registry()
            .with(filter)
            .with(json)
            .with(text)
            .init();
        return;
    }
    // bollard traces whole request bodies, and the archive put into a session holds its host
    // key and secrets: its trace events are dropped whatever -v or RUST_LOG ask for.
    let no_request_bodies = tracing_subscriber::filter::filter_fn(|metadata| {
        !(*metadata.level() == tracing::Level::TRACE && metadata.target().starts_with("bollard"))
    });
    // -vv and RUST_LOG show the time since start, which is what one reads a slow step by.
    let timed = verbosity >= 2 || std::env::var_os("RUST_LOG").is_some();
    let plain = (!timed).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .without_time()
            .with_filter(no_request_bodies.clone())
    });
    let with_uptime = timed.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_timer(tracing_subscriber::fmt::time::uptime())
            .with_filter(no_request_bodies)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(plain)
        .with(with_uptime)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_man_page_is_made_from_the_clap_definitions() {
        let mut page = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut page)
            .expect("renders");
        let page = String::from_utf8(page).expect("roff is text");
        assert!(page.contains(".TH cubbi"), "no title line");
        for command in ["session", "image", "doctor", "completions", "man"] {
            assert!(page.contains(command), "{command} is missing");
        }
    }
}
