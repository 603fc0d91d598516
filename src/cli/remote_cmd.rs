//! `cubbi remote ...` and `cubbi -r NAME auth`: the cubbi services this CLI knows and the
//! tokens for them. Tokens are never taken as arguments (they would land in shell history and
//! in `ps`) and never printed.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::{print_json, table};
use super::{CliError, OutputMode};
use crate::config::ConfigFile;
use crate::config::keys::{self, LOCAL_REMOTE_NAME};
use crate::remote::remotes::{self, RemoteError};

#[derive(Debug, Args)]
pub struct RemoteArgs {
    #[command(subcommand)]
    command: RemoteCommand,
}

#[derive(Debug, Subcommand)]
enum RemoteCommand {
    /// Add a cubbi service by name; store its token next with `cubbi -r NAME auth`.
    Add {
        /// Short name to use with `-r NAME`.
        name: String,
        /// Base URL of the service, http:// or https://.
        url: String,
        /// Also make it remote.default.
        #[arg(long)]
        default: bool,
        /// Replace a remote of the same name.
        #[arg(long)]
        force: bool,
    },
    /// List the remotes and whether a token is stored for each (never the token).
    List,
    /// Remove a remote and its stored token.
    Remove { name: String },
}

/// One row of `remote list`.
#[derive(Debug, Serialize)]
struct RemoteRow {
    name: String,
    url: String,
    default: bool,
    /// Whether a token is stored, never the token.
    token: bool,
}

pub fn run(args: RemoteArgs, mode: OutputMode) -> Result<ExitCode, CliError> {
    match args.command {
        RemoteCommand::Add {
            name,
            url,
            default,
            force,
        } => add(&name, &url, default, force)?,
        RemoteCommand::List => list(mode)?,
        RemoteCommand::Remove { name } => remove(&name)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn add(name: &str, url: &str, make_default: bool, force: bool) -> Result<(), CliError> {
    keys::validate_remote_name(name)?;
    let url = remotes::normalize_url(url)?;
    let mut file = ConfigFile::open_default()?;
    let previous = file.config()?.remote.endpoints.get(name).cloned();
    if let Some(previous) = &previous
        && !force
    {
        return Err(CliError::Refused(format!(
            "remote `{name}` already exists ({}); pass --force to replace it",
            previous.url
        )));
    }
    let spec = keys::remote_endpoint_key(name);
    file.set(&spec, keys::parse_value(&spec, &url)?)?;
    if make_default {
        let spec = keys::lookup("remote.default")?;
        file.set(&spec, keys::parse_value(&spec, name)?)?;
    }
    file.save()?;
    eprintln!("added remote {name} ({url})");
    if make_default {
        eprintln!("{name} is now remote.default");
    }
    // A token issued by one service must not be sent to another one that took its name.
    let moved = previous.is_some_and(|previous| previous.url.trim_end_matches('/') != url);
    if moved && remotes::remove_token(name)? {
        eprintln!("removed the token stored for {name}'s previous URL");
    }
    if remotes::sends_token_in_clear(&url) {
        eprintln!(
            "warning: {url} is plain http to another machine: the token travels in clear text; \
             prefer https://"
        );
    }
    // Only a hint: the remote is saved, so a token file in a bad state must not fail `add`.
    if matches!(remotes::load_token(name), Ok(None)) {
        eprintln!("store its token with `cubbi -r {name} auth`");
    }
    Ok(())
}

fn list(mode: OutputMode) -> Result<(), CliError> {
    let config = ConfigFile::open_default()?.config()?;
    let mut rows = Vec::new();
    for (name, endpoint) in &config.remote.endpoints {
        rows.push(RemoteRow {
            name: name.clone(),
            url: endpoint.url.trim_end_matches('/').to_string(),
            default: config.remote.default.as_deref() == Some(name.as_str()),
            token: remotes::load_token(name)?.is_some(),
        });
    }
    if mode.json {
        print_json(&rows)?;
        return Ok(());
    }
    if rows.is_empty() {
        eprintln!("no remotes; add one with `cubbi remote add NAME URL`");
        return Ok(());
    }
    let yes_no = |flag: bool| if flag { "yes" } else { "no" }.to_string();
    let text = table(
        config.ui.table_format,
        &["NAME", "URL", "DEFAULT", "TOKEN"],
        rows.iter().map(|row| {
            vec![
                row.name.clone(),
                row.url.clone(),
                yes_no(row.default),
                yes_no(row.token),
            ]
        }),
    );
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

fn remove(name: &str) -> Result<(), CliError> {
    let mut file = ConfigFile::open_default()?;
    let config = file.config()?;
    if !config.remote.endpoints.contains_key(name) {
        return Err(RemoteError::Unknown {
            name: name.to_string(),
            known: config.remote.endpoints.keys().cloned().collect(),
        }
        .into());
    }
    // remote.default must go first: the config is refused while it names a missing endpoint.
    let was_default = config.remote.default.as_deref() == Some(name);
    if was_default {
        file.unset(&keys::lookup("remote.default")?)?;
    }
    file.unset(&keys::remote_endpoint_key(name))?;
    file.save()?;
    let had_token = remotes::remove_token(name)?;
    eprintln!(
        "removed remote {name}{}{}",
        if had_token { " and its token" } else { "" },
        if was_default {
            "; remote.default is unset"
        } else {
            ""
        }
    );
    Ok(())
}

/// `cubbi -r NAME auth`: reads a token, checks it against the service unless `no_verify`,
/// and stores it.
pub async fn auth(remote: Option<&str>, no_verify: bool) -> Result<ExitCode, CliError> {
    let Some(name) = remote else {
        return Err(CliError::Refused(
            "say which remote the token is for: `cubbi -r NAME auth`".into(),
        ));
    };
    if name == LOCAL_REMOTE_NAME {
        return Err(CliError::Refused(
            "the local endpoint needs no token; `cubbi -r NAME auth` is for remotes".into(),
        ));
    }
    let config = ConfigFile::open_default()?.config()?;
    let url = remotes::endpoint_url(&config, name)?;
    let token = read_token(name)?;
    remotes::validate_token(&token)?;
    if no_verify {
        remotes::save_token(name, &token)?;
        eprintln!("token for {name} saved without checking it; try cubbi -r {name} session list");
        return Ok(ExitCode::SUCCESS);
    }
    match remotes::check_token(&url, &token).await {
        Ok(()) => {}
        Err(
            err @ (RemoteError::TokenRefused { .. }
            | RemoteError::UnexpectedStatus { .. }
            | RemoteError::Unreachable { .. }),
        ) => return Err(CliError::Refused(format!("{err}; nothing was saved"))),
        Err(err) => return Err(err.into()),
    }
    remotes::save_token(name, &token)?;
    eprintln!("token for {name} saved; try cubbi -r {name} session list");
    Ok(ExitCode::SUCCESS)
}

/// The token from the terminal without echo, or else the first line of stdin. Surrounding
/// whitespace is dropped: a token never holds any, and pasting often adds some.
fn read_token(name: &str) -> Result<String, CliError> {
    let token = if std::io::stdin().is_terminal() {
        eprint!("token for {name} (input hidden): ");
        std::io::stderr().flush()?;
        let typed = read_hidden_line();
        // Raw mode swallowed the Enter's newline; end the prompt's line for what follows.
        eprintln!();
        typed?
    } else {
        let mut line = String::new();
        // A cap on the read: stdin may be a file or a stream that never sends a newline.
        let limit = u64::try_from(remotes::MAX_TOKEN_BYTES * 2).unwrap_or(u64::MAX);
        std::io::stdin().lock().take(limit).read_line(&mut line)?;
        line
    };
    Ok(token.trim().to_string())
}

/// Reads one line in raw mode, so nothing typed is echoed; Ctrl-C, Ctrl-D and Esc cancel.
pub(super) fn read_hidden_line() -> Result<String, CliError> {
    use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

    let terminal_error = |err: std::io::Error| {
        CliError::Refused(format!("cannot read the token from the terminal: {err}"))
    };
    crossterm::terminal::enable_raw_mode().map_err(terminal_error)?;
    let _restore = RawModeGuard;
    let mut line = String::new();
    loop {
        let Event::Key(key) = event::read().map_err(terminal_error)? else {
            continue;
        };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        let control = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Enter => return Ok(line),
            KeyCode::Esc => return Err(cancelled()),
            KeyCode::Char('c' | 'd') if control => return Err(cancelled()),
            KeyCode::Char('u') if control => line.clear(),
            KeyCode::Backspace => {
                line.pop();
            }
            KeyCode::Char(c) if !control => line.push(c),
            _ => {}
        }
    }
}

/// A client of the cubbi service `name` that authorizes no SSH key (for what creates no
/// session: projects, images).
pub(super) fn client(
    config: &crate::config::Config,
    name: &str,
) -> Result<crate::remote::client::RemoteBackend, CliError> {
    let remote = remotes::resolve(config, name)?;
    let token = remote.token.ok_or_else(|| RemoteError::NoToken {
        name: name.to_string(),
    })?;
    crate::remote::client::RemoteBackend::new(name, &remote.url, token, String::new(), None)
        .map_err(CliError::Api)
}

fn cancelled() -> CliError {
    CliError::Refused("cancelled; nothing was saved".into())
}

/// Leaves raw mode however reading ends, so the shell gets its echo back.
struct RawModeGuard;

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}
