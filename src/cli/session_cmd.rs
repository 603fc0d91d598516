//! `cubbi session ...` and the `cubbi [PATH|GIT_URL]` shorthand: sessions through the backend
//! trait, with progress, tables and `--json`.

use std::io::{IsTerminal, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use futures_util::StreamExt;

use super::output::{print_json, table, terminal_safe as safe, terminal_safe_lines};
use super::{CliError, Context};
use crate::api::{
    ApiError, Backend, CreateStep, ExecEvent, LogOptions, Progress, Resources, Session,
    SessionSpec, VolumeMount,
};
use crate::config::{Config, ConfigFile};
use crate::local::backend::{LocalBackend, LocalOptions, WORKSPACE_PATH};
use crate::local::limits::{CpuLimit, MemoryLimit, PidsLimit};
use crate::remote::client::RemoteBackend;
use crate::ssh::client::{SshSession, SshTarget};
use crate::ssh::files::SshFiles;
use russh::keys::PrivateKey;

#[derive(Debug, Args)]
pub struct SessionArgs {
    #[command(subcommand)]
    command: SessionCommand,
}

#[derive(Debug, Subcommand)]
enum SessionCommand {
    /// Create a session and connect to it.
    Create(Box<CreateCommandArgs>),
    /// List your sessions.
    List,
    /// Change what a running session may reach, without a restart.
    Egress {
        /// Session id (a unique prefix works) or name.
        id: String,
        /// Let it reach NAME and its subdomains (`=NAME`: the name alone). Repeatable.
        #[arg(long, value_name = "NAME")]
        allow: Vec<crate::egress::DomainRule>,
        /// Take NAME away (and what it was handed for it). Repeatable.
        #[arg(long, value_name = "NAME")]
        deny: Vec<crate::egress::DomainRule>,
    },
    /// Show everything about one session, including how to SSH in.
    Show {
        /// Session id (a unique prefix works) or name.
        id: String,
    },
    /// Open an interactive shell in a session.
    Connect {
        /// Session id (a unique prefix works) or name.
        id: String,
    },
    /// Run a command in a session as `agent`; its exit code becomes cubbi's.
    Exec {
        /// Session id (a unique prefix works) or name.
        id: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Print what the session's units and agent print.
    Logs {
        /// Session id (a unique prefix works) or name.
        id: String,
        /// Keep printing as new lines arrive.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<u64>,
    },
    /// Shut sessions down cleanly and keep them (files, port, host key) for `start`.
    Stop {
        /// Session ids (unique prefixes work) or names.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Boot stopped sessions again, on the same port with the same host key.
    Start {
        /// Session ids (unique prefixes work) or names.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Commit a session as a snapshot of yours: a stopped one as it is, a running one frozen
    /// for the commit.
    Snapshot {
        /// Session id (a unique prefix works) or name.
        id: String,
        /// The snapshot's name [default: SESSION-UNIXTIME].
        #[arg(long, value_name = "SNAP")]
        name: Option<String>,
    },
    /// Snapshot a session and create a new one from it (new name, port and host key); takes
    /// the options of `create`.
    Fork(Box<ForkArgs>),
    /// Stop and remove sessions; their data volume stays.
    Close {
        /// Session ids (unique prefixes work) or names.
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
        /// Close every session you own.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

/// Options of `cubbi session create` (and of plain `cubbi`).
#[derive(Debug, Default, Args)]
pub struct CreateArgs {
    /// Workspace folder to mount at /home/agent/workspace, or a git URL to clone there.
    #[arg(value_name = "PATH|GIT_URL")]
    pub target: Option<String>,
    /// Image to boot [default: defaults.image from the config].
    #[arg(long)]
    pub image: Option<String>,
    /// Session name [default: from the workspace folder, or the repository and branch].
    #[arg(long)]
    pub name: Option<String>,
    /// Git URL to clone into the workspace (`URL#branch` picks a branch).
    #[arg(long, value_name = "URL")]
    pub project: Option<String>,
    /// Run the project's `.cubbi/init.sh` after the clone even for an ad-hoc git URL (a
    /// registered project always runs it).
    #[arg(long)]
    pub run_init: bool,
    /// Environment for the agent, KEY=VALUE (or KEY to pass this shell's value). Repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read KEY=VALUE lines from a file. Repeatable.
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Mount a host path, HOST:CONTAINER[:ro]. Repeatable.
    #[arg(long = "volume", value_name = "HOST:CONTAINER[:ro]")]
    pub volumes: Vec<String>,
    /// Join an existing Docker network. Repeatable.
    #[arg(long = "network", value_name = "NAME")]
    pub networks: Vec<String>,
    /// Do not join the default network (docker.network).
    #[arg(long)]
    pub no_default_network: bool,
    /// Memory limit, e.g. 4g [default: defaults.memory, else half the host's memory]. The
    /// session gets as much swap again.
    #[arg(long)]
    pub memory: Option<MemoryLimit>,
    /// Most processes the session may run at once [default: defaults.pids_limit, 4096].
    #[arg(long, value_name = "N")]
    pub pids_limit: Option<PidsLimit>,
    /// CPU limit, at least 0.01 [default: half the host's cores].
    #[arg(long)]
    pub cpus: Option<CpuLimit>,
    /// OCI runtime [default: sysbox-runc].
    #[arg(long)]
    pub runtime: Option<String>,
    /// Allow --runtime runc without Sysbox. The session is then NOT isolated from the host.
    #[arg(long)]
    pub unsafe_runc: bool,
    /// Stop the session (keeping it, like `session stop`) once nobody has been connected over
    /// SSH for this long (`30m`, `2h`). cubbi checks on `session list` and `session create`;
    /// a service checks every minute.
    #[arg(long, value_name = "DURATION", value_parser = super::duration::parse_duration)]
    pub idle_stop: Option<std::time::Duration>,
    /// Let the session reach this name and its subdomains (`=NAME`: the name alone); makes
    /// the egress an allow-list. Repeatable, on top of `defaults.allowed_domains`.
    #[arg(long = "allow-domain", value_name = "NAME")]
    pub allow_domains: Vec<crate::egress::DomainRule>,
    /// What the session reaches: allow-list (only the allowed names), open, or none.
    #[arg(long, value_name = "MODE")]
    pub egress: Option<crate::egress::EgressMode>,
    /// Do not add the domains the image's tool needs to an allow-list.
    #[arg(long)]
    pub no_image_domains: bool,
    /// Boot a snapshot of yours (`cubbi snapshot list`) instead of an image: its files, with
    /// a new host key, port and name.
    #[arg(long, value_name = "SNAP", conflicts_with = "image")]
    pub from_snapshot: Option<String>,
    /// Run this command in the session (through bash -lc) and exit with its code.
    #[arg(long, value_name = "CMD")]
    pub run: Option<String>,
    /// Do not connect once the session is ready.
    #[arg(long)]
    pub no_connect: bool,
    /// Without a PATH, mount no folder (instead of the current one, defaults.mount_local).
    #[arg(long)]
    pub no_mount: bool,
    /// Address the SSH port is published on (default 127.0.0.1; a service decides its own).
    #[arg(long, value_name = "ADDR")]
    pub ssh_bind: Option<IpAddr>,
    /// Give the session's tools this registered MCP server (`cubbi mcp add`), besides
    /// defaults.mcp. Repeatable.
    #[arg(long = "mcp", value_name = "NAME")]
    pub mcp: Vec<String>,
}

/// `session fork ID [create options]`.
#[derive(Debug, Args)]
pub struct ForkArgs {
    /// The session to fork: id (a unique prefix works) or name.
    id: String,
    #[command(flatten)]
    create: CreateArgs,
}

/// `session create` accepts `-v` like docker run; plain `cubbi` cannot, since there `-v` is
/// --verbose. This wrapper adds the short flag.
#[derive(Debug, Args)]
pub struct CreateCommandArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Mount a host path, HOST:CONTAINER[:ro] (same as --volume). Repeatable.
    #[arg(short = 'v', value_name = "HOST:CONTAINER[:ro]")]
    pub short_volumes: Vec<String>,
}

/// What session commands act on: the local endpoint or a cubbi service (`-r NAME`), with the
/// user's SSH files and client key either way.
pub(super) struct Target {
    pub(super) backend: Box<dyn Backend>,
    files: SshFiles,
    pub(super) client_key: Arc<PrivateKey>,
    /// The remote's name, `None` for the local endpoint.
    remote: Option<String>,
    /// The remote's client, for the SSH tunnel of a service in `ssh.mode = "proxy"`.
    tunnels: Option<RemoteBackend>,
}

impl Target {
    pub(super) async fn open(context: &Context, config: &Config) -> Result<Self, CliError> {
        let (files, client_key) = user_ssh()?;
        let mut tunnels = None;
        let backend: Box<dyn Backend> = match &context.remote {
            None => Box::new(local_backend(context, config, &files, &client_key).await?),
            Some(name) => {
                tunnels = Some(remote_backend(name, config, &files, &client_key)?);
                Box::new(remote_backend(name, config, &files, &client_key)?)
            }
        };
        Ok(Self {
            backend,
            files,
            client_key,
            remote: context.remote.clone(),
            tunnels,
        })
    }
}

/// The user's OpenSSH files and cubbi client key (made on first use).
pub(super) fn user_ssh() -> Result<(SshFiles, Arc<PrivateKey>), CliError> {
    let files = SshFiles::for_user().map_err(|err| CliError::Refused(err.to_string()))?;
    let client_key = Arc::new(
        crate::ssh::keys::load_or_create_client_key(&files.client_key())
            .map_err(|err| CliError::Refused(err.to_string()))?,
    );
    Ok((files, client_key))
}

/// The backend of the cubbi service `name` (`-r NAME`), with the user's token and key.
pub(super) fn remote_backend(
    name: &str,
    config: &Config,
    files: &SshFiles,
    client_key: &PrivateKey,
) -> Result<RemoteBackend, CliError> {
    let remote = crate::remote::remotes::resolve(config, name)?;
    let token = remote
        .token
        .ok_or_else(|| crate::remote::remotes::RemoteError::NoToken {
            name: name.to_string(),
        })?;
    let public_key = crate::ssh::keys::public_openssh(client_key.public_key())
        .map_err(|err| CliError::Refused(err.to_string()))?;
    Ok(RemoteBackend::new(
        name,
        &remote.url,
        token,
        public_key,
        Some(files.clone()),
    )?)
}

/// The local backend, configured from the user's config and environment.
pub(super) async fn local_backend(
    context: &Context,
    config: &Config,
    files: &SshFiles,
    client_key: &Arc<PrivateKey>,
) -> Result<LocalBackend, CliError> {
    let endpoint = crate::docker::resolve_endpoint(context.endpoint.as_deref(), config);
    let docker = crate::docker::connect(&endpoint).await?;
    let ready_timeout = std::env::var("CUBBI_READY_TIMEOUT")
        .ok()
        .and_then(|value| value.parse().ok())
        .map_or(Duration::from_secs(60), Duration::from_secs);
    let options = LocalOptions {
        egress_store: crate::egress::store::EgressStore::from_env(),
        owner: owner(),
        all_owners: false,
        index: None,
        ports: config.ports,
        default_network: config.docker.network.clone(),
        client_key: Arc::clone(client_key),
        ssh_files: Some(files.clone()),
        port_lock: crate::local::ports::LockLocation::resolve()?,
        lock_timeout: std::env::var("CUBBI_LOCK_TIMEOUT")
            .ok()
            .and_then(|value| value.parse().ok())
            .map_or(
                crate::local::ports::DEFAULT_LOCK_TIMEOUT,
                Duration::from_secs,
            ),
        engine_socket: endpoint.strip_prefix("unix://").map(PathBuf::from),
        ready_timeout,
        extra_labels: Default::default(),
        // `--project NAME|URL` finds the projects `cubbi project add` registered; anything else
        // is an ad-hoc URL.
        projects: Some(Arc::new(crate::projects::ProjectStore::for_config(config)?)),
        // A disk limit is the service's (`limits.disk`); local sessions are the user's own.
        disk_limit: None,
        fluentd: config
            .logging
            .fluentd
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|err| CliError::Refused(format!("logging.fluentd: {err}")))?,
        langfuse: langfuse_export(config)?,
        pool: pool_settings(config),
        runtime_advice: crate::local::runtime::RuntimeAdvice::Cli,
    };
    Ok(LocalBackend::new(docker, options))
}

/// After a create took a pool member: starts the refill and says so (not under --json).
pub(super) fn refill_after_claim(context: &Context, config: &Config) {
    if config.defaults.pool_refill == crate::local::pool::PoolRefill::Manual {
        if !context.mode.json {
            eprintln!(
                "from the warm pool; not refilled (defaults.pool_refill = manual): run `cubbi \
                 pool fill`"
            );
        }
        return;
    }
    let refill = refill_in_background(context);
    if context.mode.json {
        return;
    }
    match refill {
        Ok(pid) => eprintln!(
            "from the warm pool; refilling it in the background (pid {pid}, `cubbi pool \
             status` shows it)"
        ),
        Err(err) => eprintln!(
            "from the warm pool; it could not be refilled in the background ({err}): run \
             `cubbi pool fill`"
        ),
    }
}

/// Starts `cubbi pool fill --quiet` detached (its own process group, no terminal), so the
/// member a create took is replaced without holding the create up. Returns its pid.
fn refill_in_background(context: &Context) -> std::io::Result<u32> {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(std::env::current_exe()?);
    if let Some(endpoint) = &context.endpoint {
        command.env("CUBBI_DOCKER_HOST", endpoint);
    }
    command
        .args(["pool", "fill", "--quiet"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    Ok(command.spawn()?.id())
}

/// The local pool (`[pool]`): members boot with `defaults.runtime` and publish on 127.0.0.1,
/// what a create gets without flags. None when that runtime is runc and runc is not allowed.
pub(super) fn pool_settings(config: &Config) -> Option<crate::local::pool::PoolSettings> {
    let runtime = config.defaults.runtime.clone();
    let allowed =
        !crate::local::runtime::is_plain_runc(&runtime) || config.defaults.allow_unsafe_runc;
    (!config.pool.is_empty() && allowed).then(|| crate::local::pool::PoolSettings {
        targets: config.pool.clone(),
        runtime,
        ssh_bind: IpAddr::from([127, 0, 0, 1]),
        owner_data: crate::local::pool::OwnerData::Filler,
    })
}

/// Sessions belong to the local user; `CUBBI_OWNER` overrides it (the service sets it per
/// authenticated user, tests per test).
pub(super) fn owner() -> String {
    std::env::var("CUBBI_OWNER")
        .ok()
        .filter(|o| !o.is_empty())
        .unwrap_or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|user| user.name)
                .unwrap_or_else(|| nix::unistd::getuid().to_string())
        })
}

pub async fn run(args: SessionArgs, context: &Context) -> Result<ExitCode, CliError> {
    let config = ConfigFile::open_default()?.config()?;
    let command = match args.command {
        SessionCommand::Create(args) => {
            let CreateCommandArgs {
                mut create,
                short_volumes,
            } = *args;
            create.volumes.extend(short_volumes);
            return create_session(create, context, &config).await;
        }
        SessionCommand::Fork(args) => return fork(*args, context, &config).await,
        other => other,
    };
    let target = Target::open(context, &config).await?;
    let backend = target.backend.as_ref();
    match command {
        SessionCommand::Create(_) | SessionCommand::Fork(_) => Err(CliError::Refused(
            "create and fork are handled above".into(),
        )),
        SessionCommand::Snapshot { id, name } => {
            let made = backend.snapshot(&id, name).await?;
            super::snapshot_cmd::print_snapshot(&made, context)?;
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::List => {
            stop_idle(backend).await;
            let sessions = backend.list().await?;
            print_sessions(&sessions, context, &config)?;
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::Egress { id, allow, deny } => {
            super::egress_cmd::change(backend, &id, allow, deny, context.mode).await
        }
        SessionCommand::Show { id } => {
            let session = backend.get(&id).await?;
            show(&session, &target.files, context)?;
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::Connect { id } => connect(&target, &id, None).await,
        SessionCommand::Exec { id, command } => exec(backend, &id, command).await,
        SessionCommand::Logs { id, follow, tail } => {
            let mut stream = backend.logs(&id, LogOptions { follow, tail }).await?;
            let mut stdout = std::io::stdout();
            while let Some(chunk) = stream.next().await {
                stdout.write_all(chunk?.text.as_bytes())?;
                stdout.flush()?;
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::Stop { ids } => {
            each_session(ids, "stopped", |id| async move { backend.stop(&id).await }).await
        }
        SessionCommand::Start { ids } => {
            each_session(ids, "started", |id| async move { backend.start(&id).await }).await
        }
        SessionCommand::Close { ids, all } => {
            let targets: Vec<String> = if all {
                backend.list().await?.into_iter().map(|s| s.id).collect()
            } else {
                ids
            };
            each_session(
                targets,
                "closed",
                |id| async move { backend.close(&id).await },
            )
            .await
        }
    }
}

/// Applies `change` to each session in turn, says what became of each, and fails when any did.
async fn each_session<F, Fut>(ids: Vec<String>, done: &str, change: F) -> Result<ExitCode, CliError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<Session, ApiError>>,
{
    let mut failed = false;
    for id in ids {
        match change(id).await {
            Ok(session) => eprintln!("{done} {} ({})", session.name, short(&session.id)),
            Err(err) => {
                eprintln!("error: {}", terminal_safe_lines(&err.to_string()));
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// A git URL, or a short `host/org/repo` that is no folder here (`cubbi github.com/org/repo`).
fn names_a_repository(target: &str) -> bool {
    use crate::local::project::looks_like_git_url;
    let base = target.rsplit_once('#').map_or(target, |(base, _)| base);
    looks_like_git_url(target)
        || (!std::path::Path::new(target).exists()
            && crate::projects::url::RepoUrl::parse(base).is_ok())
}

/// Turns flags and config into a spec: `-e` over the config's services over image defaults.
pub(super) fn spec_from(
    args: &CreateArgs,
    config: &Config,
    context: &Context,
) -> Result<SessionSpec, CliError> {
    if context.remote.is_some()
        && let Some(bind) = args.ssh_bind
    {
        return Err(CliError::Refused(format!(
            "--ssh-bind {bind}: a service publishes session ports on the address its config \
             names (ssh.bind), not one the client picks"
        )));
    }
    let mut workspace = None;
    let mut mount_current = false;
    let mut project = args.project.clone();
    match args.target.as_deref() {
        Some(target) if names_a_repository(target) => {
            if project.is_some() {
                return Err(CliError::Refused(
                    "give the git URL either as PATH or with --project, not both".into(),
                ));
            }
            project = Some(target.to_string());
        }
        Some(path) => {
            let path = PathBuf::from(path);
            if !path.exists() {
                return Err(CliError::Refused(format!(
                    "`{}` is neither a cubbi command nor an existing folder; `cubbi --help` lists \
                     the commands",
                    path.display()
                )));
            }
            let absolute = if path.is_absolute() {
                path
            } else {
                std::env::current_dir()?.join(path)
            };
            workspace = Some(absolute);
        }
        // The folder one stands in is on this machine, not the service's.
        None => {
            mount_current = config.defaults.mount_local
                && !args.no_mount
                && project.is_none()
                && context.remote.is_none();
        }
    }
    let mut env = crate::config::env::service_env(config, |name| std::env::var(name).ok())?;
    for file in &args.env_file {
        let text = std::fs::read_to_string(file).map_err(|err| {
            CliError::Refused(format!("cannot read --env-file {}: {err}", file.display()))
        })?;
        let entries = crate::config::env_file::parse_file(&text)
            .map_err(|err| CliError::Refused(format!("--env-file {}: {err}", file.display())))?;
        env.extend(entries);
    }
    for item in &args.env {
        let (key, value) =
            crate::config::env_file::parse_assignment(item, |name| std::env::var(name).ok())
                .map_err(|err| CliError::Refused(format!("-e: {err}")))?;
        env.insert(key, value);
    }
    let volumes = args
        .volumes
        .iter()
        .map(|raw| parse_volume(raw))
        .collect::<Result<Vec<_>, _>>()?;
    let mut networks = config.defaults.networks.clone();
    networks.extend(args.networks.iter().cloned());
    // Checked after the flags, so a mistyped flag is reported as such wherever one stands.
    if mount_current {
        workspace = Some(current_folder(context, config)?);
    }
    Ok(SessionSpec {
        name: args.name.clone(),
        image: args
            .image
            .clone()
            .unwrap_or_else(|| config.defaults.image.clone()),
        workspace,
        project,
        run_init: args.run_init,
        env,
        volumes,
        networks,
        default_network: !args.no_default_network,
        memory: match args.memory {
            Some(limit) => Some(limit),
            None => config
                .defaults
                .memory
                .as_deref()
                .map(str::parse)
                .transpose()?,
        },
        cpus: match args.cpus {
            Some(limit) => Some(limit),
            None => config.defaults.cpus.map(CpuLimit::new).transpose()?,
        },
        pids_limit: Some(match args.pids_limit {
            Some(limit) => limit,
            None => PidsLimit::new(config.defaults.pids_limit)?,
        }),
        runtime: args
            .runtime
            .clone()
            .unwrap_or_else(|| config.defaults.runtime.clone()),
        unsafe_runc: args.unsafe_runc || config.defaults.allow_unsafe_runc,
        ssh_bind: args.ssh_bind.unwrap_or(IpAddr::from([127, 0, 0, 1])),
        authorized_keys: Vec::new(),
        idle_stop_secs: args.idle_stop.map(|idle| idle.as_secs().max(1)),
        mcp: if context.remote.is_none() {
            mcp_servers(args, config)?
        } else {
            Vec::new()
        },
        // A service resolves them in the caller's registry there (`cubbi -r NAME mcp add`).
        mcp_names: if context.remote.is_some() {
            args.mcp.clone()
        } else {
            Vec::new()
        },
        egress: egress_request(args, config),
    })
    .inspect(|spec| {
        if context.remote.is_none() {
            warn_unless_egress_is_enforced(spec.egress.as_ref());
        }
    })
}

/// A telemetry receiver that does not answer never holds a session back (Docker's fluentd
/// driver runs async, and the agents' exporters drop what they cannot send), but what it
/// misses is lost: say so before the create.
pub(super) async fn warn_unless_telemetry_answers(config: &Config) {
    const WAIT: Duration = Duration::from_millis(800);
    if let Some(address) = config.logging.fluentd.as_deref()
        && let Err(err) = super::doctor_cmd::fluentd_reachable(address, WAIT).await
    {
        eprintln!(
            "warning: the Fluentd receiver {address} (logging.fluentd) does not answer ({err}); \
             the session starts anyway; `session logs` keeps its console lines, the receiver may miss them"
        );
    }
    let langfuse = &config.services.langfuse;
    // Only a complete setting: an incomplete one was warned about already.
    let complete =
        langfuse.url.is_some() && langfuse.public_key.is_some() && langfuse.secret_key.is_some();
    if complete
        && let Ok(Some(export)) = langfuse_export(config)
        && let Err(err) = super::doctor_cmd::langfuse_reachable(&export, WAIT).await
    {
        eprintln!(
            "warning: Langfuse at {} (services.langfuse.url) does not answer ({err}); the \
             session starts anyway, and its agents' traces are lost until it does",
            export.endpoint()
        );
    }
}

/// A restricted policy on an endpoint where no egress resolver runs is recorded but holds
/// nothing back: say so, and how to start one.
fn warn_unless_egress_is_enforced(request: Option<&crate::egress::EgressRequest>) {
    let restricted =
        request.is_some_and(|request| request.mode() != crate::egress::EgressMode::Open);
    if restricted && !crate::egress::store::EgressStore::from_env().resolver_running() {
        eprintln!(
            "warning: no cubbi egress resolver runs on this host, so this session's egress \
             policy is recorded but NOT enforced; `sudo cubbi setup` installs one \
             (cubbi-egress.service), or see `cubbi egress unit`"
        );
    }
}

/// The egress the flags and `defaults.egress`/`defaults.allowed_domains` ask for; `None` when
/// neither says anything (an open session).
fn egress_request(args: &CreateArgs, config: &Config) -> Option<crate::egress::EgressRequest> {
    let mut domains = config.defaults.allowed_domains.clone();
    domains.extend(args.allow_domains.iter().cloned());
    let mode = args.egress.or(config.defaults.egress);
    (mode.is_some() || !domains.is_empty()).then_some(crate::egress::EgressRequest {
        mode,
        domains,
        image_domains: !args.no_image_domains,
    })
}

/// `services.langfuse.*`: all three keys make sessions export their telemetry there; a
/// partial or unusable setting is a warning (a `${VAR}` that is not set is still refused, as
/// for every key).
pub(super) fn langfuse_export(
    config: &Config,
) -> Result<Option<crate::local::langfuse::LangfuseExport>, CliError> {
    let langfuse = &config.services.langfuse;
    let lookup = |name: &str| std::env::var(name).ok();
    let value = |key: &str, raw: &Option<String>| -> Result<Option<String>, CliError> {
        raw.as_deref()
            .map(|raw| crate::config::env::expand(key, raw, lookup))
            .transpose()
            .map_err(CliError::from)
    };
    let url = value("services.langfuse.url", &langfuse.url)?;
    let public = value("services.langfuse.public_key", &langfuse.public_key)?;
    let secret = value("services.langfuse.secret_key", &langfuse.secret_key)?;
    match (url, public, secret) {
        (None, None, None) => Ok(None),
        // Telemetry is never worth a session: an unusable setting is a warning.
        (Some(url), Some(public), Some(secret)) => {
            match crate::local::langfuse::LangfuseExport::new(&url, &public, &secret) {
                Ok(export) => Ok(Some(export)),
                Err(err) => {
                    eprintln!("warning: services.langfuse: {err}; sessions export no telemetry");
                    Ok(None)
                }
            }
        }
        _ => {
            eprintln!(
                "warning: services.langfuse needs url, public_key and secret_key together, so \
                 sessions export no telemetry; `cubbi config set services.langfuse.KEY VALUE` \
                 sets the missing one"
            );
            Ok(None)
        }
    }
}

/// The MCP servers a local session gets: `defaults.mcp` and `--mcp`, by name from this
/// machine's registry (`cubbi mcp add`).
fn mcp_servers(args: &CreateArgs, config: &Config) -> Result<Vec<crate::mcp::McpServer>, CliError> {
    let mut names: Vec<String> = config.defaults.mcp.clone();
    for name in &args.mcp {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let refused = |err: crate::mcp::McpError| CliError::Refused(err.to_string());
    let known = crate::mcp::registry::McpRegistry::open_default()
        .and_then(|registry| registry.list())
        .map_err(refused)?;
    crate::mcp::pick(&known, &names).map_err(refused)
}

/// The folder one stands in, as the workspace nobody named: refused (saying what to do
/// instead) when it is `/`, the home folder, a folder holding it, or holds an engine socket.
fn current_folder(context: &Context, config: &Config) -> Result<PathBuf, CliError> {
    let folder = std::env::current_dir()?;
    let endpoint = crate::docker::resolve_endpoint(context.endpoint.as_deref(), config);
    let sockets = crate::local::mounts::known_sockets(
        endpoint.strip_prefix("unix://").map(std::path::Path::new),
    );
    crate::local::mounts::check_current_folder(&folder, dirs::home_dir().as_deref(), &sockets)
        .map_err(|err| {
            CliError::Refused(format!(
                "{err}; cd into a project folder, or give the folder to mount (`cubbi PATH`), \
                 or pass --no-mount for a session without one"
            ))
        })
}

fn parse_volume(raw: &str) -> Result<VolumeMount, CliError> {
    let parts: Vec<&str> = raw.split(':').collect();
    let (host, container, read_only) = match parts.as_slice() {
        [host, container] => (*host, *container, false),
        [host, container, "ro"] => (*host, *container, true),
        [host, container, "rw"] => (*host, *container, false),
        _ => {
            return Err(CliError::Refused(format!(
                "-v {raw}: expected HOST:CONTAINER or HOST:CONTAINER:ro"
            )));
        }
    };
    Ok(VolumeMount {
        host: PathBuf::from(host),
        container: container.to_string(),
        read_only,
    })
}

/// A spinner on stderr naming the current step; plain lines when stderr is not a terminal.
struct Spinner {
    bar: indicatif::ProgressBar,
    interactive: bool,
}

impl Spinner {
    fn new() -> Self {
        let interactive = std::io::stderr().is_terminal();
        let bar = indicatif::ProgressBar::new_spinner();
        if interactive {
            bar.enable_steady_tick(Duration::from_millis(100));
        }
        Self { bar, interactive }
    }
}

impl Progress for Spinner {
    fn step(&self, step: CreateStep) {
        if self.interactive {
            self.bar.set_message(step.to_string());
        } else {
            tracing::info!("{step}");
        }
    }

    fn notice(&self, message: &str) {
        self.bar.suspend(|| eprintln!("{message}"));
    }
}

pub async fn create_session(
    args: CreateArgs,
    context: &Context,
    config: &Config,
) -> Result<ExitCode, CliError> {
    let mut spec = spec_from(&args, config, context)?;
    if crate::local::runtime::is_plain_runc(&spec.runtime) && spec.unsafe_runc {
        eprintln!("{}", crate::local::runtime::UNSAFE_WARNING);
    }
    let target = Target::open(context, config).await?;
    let backend = target.backend.as_ref();
    if context.remote.is_none() {
        warn_unless_telemetry_answers(config).await;
    }
    // A service looks the snapshot up among the caller's own; locally it is picked here.
    let on_service = match (&args.from_snapshot, &context.remote) {
        (Some(name), Some(remote)) => Some((
            remote_backend(remote, config, &target.files, &target.client_key)?,
            name.clone(),
        )),
        (Some(name), None) => {
            spec.image = crate::local::snapshot::pick(backend.snapshots().await?, name)?.image;
            None
        }
        (None, _) => None,
    };
    // An idle session gives its port and memory back before a new one takes more.
    stop_idle(backend).await;
    let started = std::time::Instant::now();
    let spinner = Spinner::new();
    let created = match on_service {
        Some((remote, snapshot)) => remote.create_with(spec, Some(snapshot), &spinner).await,
        None => backend.create(spec, &spinner).await,
    };
    spinner.bar.finish_and_clear();
    let session = created?;
    if session.pool && context.remote.is_none() {
        refill_after_claim(context, config);
    }
    if context.mode.json {
        print_json(&session)?;
    } else {
        eprintln!(
            "session {} ready in {:.1}s: ssh {} (port {})",
            safe(&session.name),
            started.elapsed().as_secs_f64(),
            SshFiles::host_alias(&session.name),
            session.ssh.port
        );
        if let Some(folder) = &session.workspace {
            eprintln!("workspace: {folder} mounted at {WORKSPACE_PATH}");
        }
    }
    offer_ssh_include(&target.files);
    if let Some(command) = args.run {
        return exec(
            backend,
            &session.id,
            vec!["bash".into(), "-lc".into(), command],
        )
        .await;
    }
    if args.no_connect || !config.defaults.connect || context.mode.json {
        return Ok(ExitCode::SUCCESS);
    }
    let tool = (!session.command.is_empty()).then(|| session.command.clone());
    connect(&target, &session.id, tool).await
}

/// `session fork`: a snapshot of the session, then a create from it (named after the
/// snapshot unless `--name` says otherwise).
async fn fork(args: ForkArgs, context: &Context, config: &Config) -> Result<ExitCode, CliError> {
    let ForkArgs { id, mut create } = args;
    if create.from_snapshot.is_some() || create.image.is_some() {
        return Err(CliError::Refused(
            "a fork boots the snapshot it takes; --image and --from-snapshot do not apply".into(),
        ));
    }
    let target = Target::open(context, config).await?;
    let snapshot = target.backend.snapshot(&id, None).await?;
    eprintln!(
        "snapshot {} of {} taken ({}); `cubbi snapshot rm {}` removes it once no session runs \
         from it",
        safe(&snapshot.name),
        safe(&snapshot.source),
        safe(&snapshot.taken),
        safe(&snapshot.name)
    );
    create.name = create.name.or_else(|| Some(snapshot.name.clone()));
    create.from_snapshot = Some(snapshot.name);
    create_session(create, context, config).await
}

/// `--idle-stop`: the local endpoint has no daemon to watch sessions, so `list` and `create`
/// stop the idle ones, and say so. A failure here is a note, never the command's failure.
async fn stop_idle(backend: &dyn Backend) {
    match backend.stop_idle().await {
        Ok(stopped) => {
            for session in stopped {
                eprintln!(
                    "stopped idle session {} (no SSH connection for {}s; `cubbi session start {}` \
                     boots it again)",
                    safe(&session.name),
                    session.idle_secs,
                    safe(&session.name)
                );
            }
        }
        Err(err) => tracing::debug!("idle stop: {err}"),
    }
}

/// Once per user, on a terminal: add `Include ~/.ssh/cubbi.d/*.conf` to ~/.ssh/config.
fn offer_ssh_include(files: &SshFiles) {
    let marker = files.config_dir.join("ssh-include-offered");
    if files.include_present()
        || marker.exists()
        || !std::io::stdin().is_terminal()
        || !std::io::stderr().is_terminal()
    {
        return;
    }
    let _ = std::fs::write(&marker, "");
    eprint!(
        "Add `{}` to ~/.ssh/config so `ssh cubbi-NAME`, scp, rsync and VS Code reach sessions? [y/N] ",
        crate::ssh::files::INCLUDE_LINE
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().read_line(&mut answer).is_ok() && matches!(answer.trim(), "y" | "Y" | "yes")
    {
        match files.add_include() {
            Ok(()) => eprintln!("added; try `ssh cubbi-NAME`"),
            Err(err) => eprintln!("could not change ~/.ssh/config: {err}"),
        }
    }
}

async fn connect(
    target: &Target,
    id: &str,
    command: Option<Vec<String>>,
) -> Result<ExitCode, CliError> {
    if !std::io::stdin().is_terminal() {
        let remote = target
            .remote
            .as_ref()
            .map(|name| format!("-r {name} "))
            .unwrap_or_default();
        return Err(CliError::Refused(format!(
            "stdin is not a terminal, so there is nothing to connect; run commands with \
             `cubbi {remote}session exec {id} -- CMD`"
        )));
    }
    let public_key = crate::ssh::keys::public_openssh(target.client_key.public_key())
        .map_err(|err| CliError::Refused(err.to_string()))?;
    let session = target.backend.connect(id, &public_key).await?;
    let host_key = crate::ssh::keys::parse_public(&session.ssh.host_key).map_err(|err| {
        CliError::Refused(format!(
            "the session's pinned host key is unreadable: {err}"
        ))
    })?;
    let address = match session.ssh.host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]:{}", session.ssh.port),
        _ => format!("{}:{}", session.ssh.host, session.ssh.port),
    };
    let ssh_target = SshTarget {
        address,
        user: session.ssh.user.clone(),
        client_key: Arc::clone(&target.client_key),
        host_key,
    };
    let ssh = match (&target.tunnels, session.ssh.proxy) {
        // The service says its SSH ports are not reachable: through its tunnel.
        (Some(remote), true) => {
            let tunnel = remote.open_ssh_tunnel(&session.id).await?;
            let (near, far) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let (read, write) = tokio::io::split(far);
                if let Err(err) = crate::remote::tunnel::relay(tunnel, read, write).await {
                    tracing::warn!("{err}");
                }
            });
            SshSession::connect_stream(&ssh_target, near, Duration::from_secs(20)).await
        }
        _ => SshSession::connect(&ssh_target, Duration::from_secs(10)).await,
    }
    .map_err(|err| CliError::Refused(err.to_string()))?;
    let code = ssh
        .interactive(
            command.as_deref(),
            session.workspace.is_some().then_some(WORKSPACE_PATH),
        )
        .await
        .map_err(|err| CliError::Refused(err.to_string()))?;
    Ok(exit_code(code))
}

async fn exec(backend: &dyn Backend, id: &str, command: Vec<String>) -> Result<ExitCode, CliError> {
    let mut stream = backend.exec(id, command).await?;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let mut code = 255;
    while let Some(event) = stream.next().await {
        match event? {
            ExecEvent::Stdout(data) => {
                stdout.write_all(&data)?;
                stdout.flush()?;
            }
            ExecEvent::Stderr(data) => {
                stderr.write_all(&data)?;
                stderr.flush()?;
            }
            ExecEvent::Exit(exit) => code = exit,
        }
    }
    Ok(exit_code(code))
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(255))
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

pub(super) fn age(created: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let seconds = (now - created).max(0);
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn print_sessions(
    sessions: &[Session],
    context: &Context,
    config: &Config,
) -> Result<(), CliError> {
    if context.mode.json {
        print_json(&sessions)?;
        return Ok(());
    }
    if sessions.is_empty() {
        eprintln!("no sessions; create one with `cubbi session create` (or just `cubbi`)");
        return Ok(());
    }
    let text = table(
        config.ui.table_format,
        &["ID", "NAME", "IMAGE", "STATE", "SSH", "AGE", "WORKSPACE"],
        sessions.iter().map(|s| {
            // Every cell may come from a service: printed without control characters.
            vec![
                safe(short(&s.id)).into_owned(),
                safe(&s.name).into_owned(),
                safe(&s.image).into_owned(),
                s.state.to_string(),
                safe(&format!("{}:{}", s.ssh.host, s.ssh.port)).into_owned(),
                age(s.created),
                safe(s.workspace.as_deref().unwrap_or_default()).into_owned(),
            ]
        }),
    );
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

fn show(session: &Session, files: &SshFiles, context: &Context) -> Result<(), CliError> {
    let ssh_command = if session.ssh.proxy {
        // The service's SSH ports are not reachable: through `cubbi ssh-proxy`, with the pin
        // filed under the alias.
        let alias = SshFiles::host_alias(&session.name);
        format!(
            "ssh -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o ForwardAgent=no \
             -o HostKeyAlias={alias} -o 'ProxyCommand=cubbi -r {} ssh-proxy {}' {}@{alias}",
            files.client_key().display(),
            files.session_known_hosts(&session.name).display(),
            context.remote.as_deref().unwrap_or("NAME"),
            session.id,
            session.ssh.user,
        )
    } else {
        format!(
            "ssh -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o ForwardAgent=no -p {} {}@{}",
            files.client_key().display(),
            files.session_known_hosts(&session.name).display(),
            session.ssh.port,
            session.ssh.user,
            session.ssh.host
        )
    };
    if context.mode.json {
        #[derive(serde::Serialize)]
        struct Shown<'a> {
            #[serde(flatten)]
            session: &'a Session,
            ssh_command: String,
            ssh_host_alias: String,
        }
        print_json(&Shown {
            session,
            ssh_command,
            ssh_host_alias: SshFiles::host_alias(&session.name),
        })?;
        return Ok(());
    }
    // Every value may come from a service: printed without control characters, so none can
    // add a line of its own or steer the terminal.
    let mut out = String::new();
    out += &format!("id:         {}\n", safe(&session.id));
    out += &format!("name:       {}\n", safe(&session.name));
    out += &format!("image:      {}\n", safe(&session.image));
    out += &format!("state:      {}\n", session.state);
    out += &format!(
        "init:       {}\n",
        safe(session.init_status.as_deref().unwrap_or("unknown"))
    );
    out += &format!(
        "project:    {}\n",
        safe(session.project_status.as_deref().unwrap_or("unknown"))
    );
    out += &format!("owner:      {}\n", safe(&session.owner));
    out += &format!("created:    {} ago\n", age(session.created));
    out += &format!(
        "workspace:  {}\n",
        safe(session.workspace.as_deref().unwrap_or("-"))
    );
    out += &format!("command:    {}\n", safe(&session.command.join(" ")));
    if let Some(resources) = &session.resources {
        out += &format!("limits:     {}\n", describe_resources(resources));
    }
    if !session.networks.is_empty() {
        out += &format!("networks:   {}\n", safe(&session.networks.join(", ")));
    }
    out += &format!(
        "egress:     {}\n",
        safe(&crate::egress::describe(session.egress.as_ref()))
    );
    if let Some(view) = &session.egress {
        if !view.denied.is_empty() {
            out += &format!("denied:     {}\n", safe(&view.denied.join(", ")));
        }
        if view.denied_lookups + view.denied_connections > 0 {
            out += &format!(
                "refused:    {} lookups, {} connections\n",
                view.denied_lookups, view.denied_connections
            );
        }
    }
    out += &format!(
        "ssh:        {}\n",
        safe(&format!(
            "{}@{}:{}",
            session.ssh.user, session.ssh.host, session.ssh.port
        ))
    );
    out += &format!("host key:   {}\n", safe(&session.ssh.host_key));
    out += &format!(
        "connect:    cubbi session connect {}\n",
        safe(&session.name)
    );
    out += &format!(
        "            ssh -F {} {}\n",
        files.session_config(&session.name).display(),
        safe(&SshFiles::host_alias(&session.name))
    );
    out += &format!("            {}\n", safe(&ssh_command));
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

/// `memory 4.0 GiB (+4.0 GiB swap), 2 CPUs, 4096 processes`; `-` for what has no limit.
fn describe_resources(resources: &Resources) -> String {
    let gib = |bytes: i64| format!("{:.1} GiB", bytes as f64 / (1024.0 * 1024.0 * 1024.0));
    let memory = match (resources.memory, resources.memory_swap) {
        (Some(memory), Some(total)) if total > memory => {
            format!("memory {} (+{} swap)", gib(memory), gib(total - memory))
        }
        (Some(memory), _) => format!("memory {}", gib(memory)),
        (None, _) => "memory -".to_string(),
    };
    let cpus = resources
        .cpus
        .map_or_else(|| "CPUs -".to_string(), |c| format!("{c} CPUs"));
    let pids = resources
        .pids_limit
        .map_or_else(|| "processes -".to_string(), |p| format!("{p} processes"));
    format!("{memory}, {cpus}, {pids}")
}

impl From<ApiError> for CliError {
    fn from(err: ApiError) -> Self {
        CliError::Api(err)
    }
}

#[cfg(test)]
mod tests {
    use super::{Resources, describe_resources};
    use crate::local::project::looks_like_git_url;

    #[test]
    fn resources_read_as_people_say_them() {
        let shown = describe_resources(&Resources {
            memory: Some(4 * 1024 * 1024 * 1024),
            memory_swap: Some(8 * 1024 * 1024 * 1024),
            cpus: Some(1.0),
            pids_limit: Some(4096),
        });
        assert_eq!(
            shown,
            "memory 4.0 GiB (+4.0 GiB swap), 1 CPUs, 4096 processes"
        );
        let none = describe_resources(&Resources {
            memory: None,
            memory_swap: None,
            cpus: None,
            pids_limit: None,
        });
        assert_eq!(none, "memory -, CPUs -, processes -");
    }

    #[test]
    fn git_urls_and_folders() {
        for url in [
            "https://example.com/a/b.git",
            "https://example.com/a/b#dev",
            "git@example.com:a/b.git",
            "git@example.com:a/b.git#feature/x",
            "file:///srv/repo.git",
            "file:///srv/repo#main",
            "host:path/repo.git#dev",
        ] {
            assert!(looks_like_git_url(url), "{url}");
        }
        for path in [".", "/home/me/project", "repo.git", "./a:b", "my#folder"] {
            assert!(!looks_like_git_url(path), "{path}");
        }
        // The short form, when no such folder is here.
        assert!(super::names_a_repository("github.com/org/repo"));
        assert!(super::names_a_repository("github.com/org/repo#dev"));
        for not_one in [".", "/", "org/repo", "no-such-folder"] {
            assert!(!super::names_a_repository(not_one), "{not_one}");
        }
    }
}
