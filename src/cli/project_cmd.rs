//! `cubbi project ...`: git repositories registered once with their credential, then cloned
//! into sessions. Secrets are never printed; a token is best given on stdin (`--token-stdin`),
//! since `--token VALUE` lands in shell history and `ps`.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::output::{print_json, table};
use super::{CliError, OutputMode};
use crate::config::Config;
use crate::projects::catalog::ProjectCatalog;
use crate::projects::credential::{self, CredentialSummary};
use crate::projects::known_hosts::{self, HostKey};
use crate::projects::store::{self, ProjectSummary};
use crate::projects::url::RepoUrl;
use crate::projects::{
    Credential, NewProject, ProjectError, ProjectStore, ProjectUpdate, host_scan,
};
use crate::remote::projects::RemoteProjects;

#[derive(Debug, Args)]
pub struct ProjectArgs {
    #[command(subcommand)]
    command: ProjectCommand,
}

#[derive(Debug, Subcommand)]
enum ProjectCommand {
    /// Register a git repository and its credential (none for a public repository).
    ///
    /// URL: git@host:org/repo, ssh://[user@]host[:port]/org/repo, https://host/org/repo or
    /// host/org/repo. An SSH key clones over SSH, a token over HTTPS.
    Add {
        url: String,
        /// Short name for the project (default: the repository's name).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        #[command(flatten)]
        credential: CredentialArgs,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// List the registered projects (never their secrets).
    List,
    /// Show one project: URL, branch, public key or `token: set`, host keys.
    Show {
        /// The project's name, id (host/org/repo) or any URL of it.
        project: String,
    },
    /// Change a project's name, credential, branch or host key.
    Update {
        /// The project's name, id (host/org/repo) or any URL of it.
        project: String,
        /// New name.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        #[command(flatten)]
        credential: CredentialArgs,
        /// Drop the credential (a public repository).
        #[arg(long, conflicts_with_all = ["ssh_key", "token_stdin", "token", "token_user"])]
        no_credential: bool,
        /// Go back to the remote's default branch.
        #[arg(long, conflicts_with = "branch")]
        no_branch: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Forget a project and its credential.
    Remove {
        /// The project's name, id (host/org/repo) or any URL of it.
        project: String,
    },
}

#[derive(Debug, Args)]
struct CredentialArgs {
    /// An unencrypted OpenSSH private key (a deploy key) to clone with over SSH.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["token_stdin", "token"])]
    ssh_key: Option<PathBuf>,
    /// Read an HTTPS token from stdin (typed hidden on a terminal). Recommended.
    #[arg(long, conflicts_with = "token")]
    token_stdin: bool,
    /// An HTTPS token as an argument: it lands in shell history; prefer --token-stdin.
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// The HTTPS user the token goes with [default: x-access-token; GitLab wants oauth2].
    #[arg(long, value_name = "USER", conflicts_with = "ssh_key")]
    token_user: Option<String>,
}

#[derive(Debug, Args)]
struct SettingsArgs {
    /// The branch sessions check out (default: the remote's default branch).
    #[arg(long, value_name = "BRANCH")]
    branch: Option<String>,
    /// The SSH host key, `KEYTYPE BASE64` or a known_hosts line, instead of scanning it.
    #[arg(long, value_name = "KEY")]
    host_key: Option<String>,
    /// Accept the scanned host key without asking (for scripts that checked it otherwise).
    #[arg(long, short = 'y')]
    yes: bool,
}

/// The projects of this machine, or of the cubbi service `remote`.
fn catalog(remote: Option<&str>, config: &Config) -> Result<Box<dyn ProjectCatalog>, CliError> {
    let Some(name) = remote else {
        return Ok(Box::new(ProjectStore::for_config(config)?));
    };
    Ok(Box::new(RemoteProjects::with_client(
        name,
        super::remote_cmd::client(config, name)?,
        config.projects.known_hosts.clone(),
    )))
}

pub async fn run(
    args: ProjectArgs,
    mode: OutputMode,
    remote: Option<&str>,
    config: &Config,
) -> Result<ExitCode, CliError> {
    let catalog = catalog(remote, config)?;
    let store = catalog.as_ref();
    match args.command {
        ProjectCommand::Add {
            url,
            name,
            credential,
            settings,
        } => add(store, &url, name, credential, settings).await?,
        ProjectCommand::List => list(store, mode, config.ui.table_format).await?,
        ProjectCommand::Show { project } => show(store, &project, mode).await?,
        ProjectCommand::Update {
            project,
            name,
            credential,
            no_credential,
            no_branch,
            settings,
        } => {
            let change = Change {
                name,
                credential,
                no_credential,
                no_branch,
                settings,
            };
            update(store, &project, change).await?
        }
        ProjectCommand::Remove { project } => {
            let removed = store.remove(&project).await?;
            eprintln!(
                "removed project {} ({}) and its credential",
                removed.name, removed.id
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn add(
    store: &dyn ProjectCatalog,
    url: &str,
    name: Option<String>,
    credential_args: CredentialArgs,
    settings: SettingsArgs,
) -> Result<(), CliError> {
    let url = RepoUrl::parse(url)?;
    if let Some(name) = &name {
        crate::projects::url::validate_name(name)?;
    }
    if let Some(branch) = &settings.branch {
        crate::projects::url::validate_branch(branch)?;
    }
    if let Some(existing) = store.get(&url.id()).await? {
        return Err(ProjectError::AlreadyExists {
            id: existing.summary.id,
            name: existing.summary.name,
        }
        .into());
    }
    let credential = read_credential(&credential_args)?;
    if credential_args.token_user.is_some() && !matches!(credential, Some(Credential::Token { .. }))
    {
        return Err(CliError::Refused(
            "--token-user goes with a token (--token-stdin or --token)".into(),
        ));
    }
    let clone_url = store::clone_url(&url, credential.as_ref());
    let host_keys = host_keys_for(store, &clone_url, &[], &settings).await?;
    let project = store
        .add(NewProject {
            url,
            name,
            branch: settings.branch,
            credential,
            host_keys,
        })
        .await?;
    eprintln!(
        "added project {} ({}); it clones {}",
        project.name, project.id, project.url
    );
    Ok(())
}

/// What `project update` was told.
struct Change {
    name: Option<String>,
    credential: CredentialArgs,
    no_credential: bool,
    no_branch: bool,
    settings: SettingsArgs,
}

async fn update(
    store: &dyn ProjectCatalog,
    reference: &str,
    change: Change,
) -> Result<(), CliError> {
    let current = store
        .get(reference)
        .await?
        .ok_or_else(|| ProjectError::NotFound {
            reference: reference.to_string(),
        })?
        .summary;
    // The keys confirmed for this project itself (not the shipped or configured ones).
    let own_keys = current
        .host_keys
        .iter()
        .filter(|key| key.source == store::HostKeySource::Project)
        .map(|key| HostKey::parse(&key.key))
        .collect::<Result<Vec<_>, _>>()?;
    let credential = if change.no_credential {
        Some(None)
    } else {
        read_credential(&change.credential)?.map(Some)
    };
    // The clone URL after the change, to know whether it needs a host key.
    let clone_url = match &credential {
        Some(Some(new)) => store::clone_url(&RepoUrl::parse(&current.url)?, Some(new)),
        _ => current.url.clone(),
    };
    let host_keys = if change.settings.host_key.is_some() {
        Some(host_keys_for(store, &clone_url, &[], &change.settings).await?)
    } else if clone_url != current.url {
        // Moving from HTTPS to SSH may need a host key.
        let keys = host_keys_for(store, &clone_url, &own_keys, &change.settings).await?;
        (keys != own_keys).then_some(keys)
    } else {
        None
    };
    let branch = match (change.no_branch, change.settings.branch) {
        (true, _) => Some(None),
        (false, Some(branch)) => Some(Some(branch)),
        (false, None) => None,
    };
    let nothing = change.name.is_none()
        && credential.is_none()
        && change.credential.token_user.is_none()
        && branch.is_none()
        && host_keys.is_none();
    if nothing {
        return Err(CliError::Refused(
            "nothing to change; give --name, --ssh-key, --token-stdin, --token, --token-user, \
             --no-credential, --branch, --no-branch or --host-key"
                .into(),
        ));
    }
    let updated = store
        .update(
            &current.id,
            ProjectUpdate {
                name: change.name,
                credential,
                token_user: change.credential.token_user,
                branch,
                host_keys,
            },
        )
        .await?;
    eprintln!(
        "updated project {} ({}); it clones {}",
        updated.name, updated.id, updated.url
    );
    Ok(())
}

/// The credential the flags give: a checked SSH key, a token (stdin or argument), or none.
fn read_credential(args: &CredentialArgs) -> Result<Option<Credential>, CliError> {
    let username = args
        .token_user
        .clone()
        .unwrap_or_else(|| credential::DEFAULT_TOKEN_USER.to_string());
    credential::validate_token_user(&username)?;
    if let Some(path) = &args.ssh_key {
        return Ok(Some(credential::read_ssh_key(path)?));
    }
    let token = if args.token_stdin {
        read_token()?
    } else if let Some(token) = &args.token {
        eprintln!(
            "warning: a token given with --token lands in your shell history and is visible to \
             other users in `ps`; prefer --token-stdin"
        );
        token.clone()
    } else {
        return Ok(None);
    };
    credential::validate_token(&token)?;
    Ok(Some(Credential::Token { username, token }))
}

/// The token from the terminal without echo, else the first line of stdin.
fn read_token() -> Result<String, CliError> {
    let token = if std::io::stdin().is_terminal() {
        eprint!("token (input hidden): ");
        std::io::stderr().flush()?;
        let typed = super::remote_cmd::read_hidden_line();
        eprintln!();
        typed?
    } else {
        let mut line = String::new();
        let limit = u64::try_from(credential::MAX_TOKEN_BYTES * 2).unwrap_or(u64::MAX);
        std::io::stdin().lock().take(limit).read_line(&mut line)?;
        line
    };
    Ok(token.trim().to_string())
}

/// The project's own host keys for `clone_url`: none for HTTPS or a host whose key cubbi
/// knows; `--host-key` when given; else the scanned key, once its owner confirmed it (on a
/// terminal, or `--yes`). `existing` are keys the project already has.
async fn host_keys_for(
    store: &dyn ProjectCatalog,
    clone_url: &str,
    existing: &[HostKey],
    settings: &SettingsArgs,
) -> Result<Vec<HostKey>, CliError> {
    let Some(pattern) = store::ssh_host_pattern(clone_url) else {
        if settings.host_key.is_some() {
            return Err(CliError::Refused(format!(
                "--host-key is for SSH projects; {clone_url} is cloned over HTTPS"
            )));
        }
        return Ok(existing.to_vec());
    };
    if let Some(given) = &settings.host_key {
        return Ok(vec![known_hosts::parse_given(given, &pattern)?]);
    }
    if !existing.is_empty() {
        return Ok(existing.to_vec());
    }
    if let Some(known) = store.known_host(&pattern) {
        return Ok(known);
    }
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !settings.yes && !interactive {
        return Err(CliError::Refused(format!(
            "no SSH host key is known for {pattern}, and cubbi never trusts a key on first use: \
             give it with --host-key \"KEYTYPE BASE64\" (check it against the host's published \
             fingerprint), add it to projects.known_hosts, run this on a terminal to confirm \
             the scanned key, or pass --yes to accept it; nothing was saved"
        )));
    }
    let url = RepoUrl::parse(clone_url)?;
    let port = url.port.unwrap_or(22);
    eprintln!("scanning the SSH host key of {}:{port} ...", url.host);
    let key = host_scan::scan(&url.host, port, host_scan::SCAN_TIMEOUT).await?;
    eprintln!(
        "{pattern} presents a {} key with fingerprint {}",
        key.kind(),
        key.fingerprint
    );
    if settings.yes {
        eprintln!("accepted (--yes)");
        return Ok(vec![key]);
    }
    eprint!(
        "Trust this key for {pattern}? Compare it with the fingerprint the host publishes [y/N] "
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().take(64).read_line(&mut answer)?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(vec![key])
    } else {
        Err(CliError::Refused(
            "host key not confirmed; nothing was saved".into(),
        ))
    }
}

async fn list(
    store: &dyn ProjectCatalog,
    mode: OutputMode,
    format: crate::config::TableFormat,
) -> Result<(), CliError> {
    let summaries: Vec<ProjectSummary> = store.list().await?;
    if mode.json {
        print_json(&summaries)?;
        return Ok(());
    }
    if summaries.is_empty() {
        eprintln!("no projects; register one with `cubbi project add URL`");
        return Ok(());
    }
    let text = table(
        format,
        &["NAME", "ID", "BRANCH", "CREDENTIAL"],
        summaries.iter().map(|summary| {
            vec![
                summary.name.clone(),
                summary.id.clone(),
                summary.branch.clone().unwrap_or_else(|| "-".into()),
                summary.credential.short(),
            ]
        }),
    );
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

async fn show(
    store: &dyn ProjectCatalog,
    reference: &str,
    mode: OutputMode,
) -> Result<(), CliError> {
    let shown = store
        .get(reference)
        .await?
        .ok_or_else(|| ProjectError::NotFound {
            reference: reference.to_string(),
        })?;
    let summary = shown.summary;
    if mode.json {
        print_json(&summary)?;
        return Ok(());
    }
    let mut out = String::new();
    out += &format!("id:          {}\n", summary.id);
    out += &format!("name:        {}\n", summary.name);
    out += &format!("url:         {}\n", summary.url);
    out += &format!(
        "branch:      {}\n",
        summary
            .branch
            .as_deref()
            .unwrap_or("(the remote's default)")
    );
    match &summary.credential {
        CredentialSummary::None => out += "credential:  none\n",
        CredentialSummary::SshKey {
            public_key,
            fingerprint,
        } => {
            out += "credential:  ssh key\n";
            out += &format!("public key:  {public_key}\n");
            out += &format!("fingerprint: {fingerprint}\n");
        }
        CredentialSummary::Token { username, token } => {
            out += &format!("credential:  token for user {username}\n");
            out += &format!("token:       {token}\n");
        }
    }
    if crate::projects::store::is_ssh_clone_url(&summary.url) {
        for (i, key) in summary.host_keys.iter().enumerate() {
            out += &format!(
                "{}{} {} {} ({})\n",
                if i == 0 {
                    "host keys:   "
                } else {
                    "             "
                },
                key.host,
                key.key.split(' ').next().unwrap_or_default(),
                key.fingerprint,
                match key.source {
                    store::HostKeySource::Builtin => "shipped with cubbi",
                    store::HostKeySource::Config => "projects.known_hosts",
                    store::HostKeySource::Project => "confirmed for this project",
                }
            );
        }
    }
    match (&shown.file, store.remote()) {
        (Some(file), _) => out += &format!("file:        {}\n", file.display()),
        (None, Some(remote)) => out += &format!("stored on:   the cubbi service `{remote}`\n"),
        (None, None) => {}
    }
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}
