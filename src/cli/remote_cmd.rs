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
use crate::remote::login::{self, LoginClient};
use crate::remote::remotes::{self, RemoteError};
use crate::service::oidc::wire::AuthConfig;

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
    /// Whether a token (or a login) is stored, never the token.
    token: bool,
    /// `login` (OpenID Connect, refreshed as needed) or `api-token`, when one is stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    /// `keyring` (the system keyring, the Secret Service) or the 0600 file it is stored in.
    #[serde(skip_serializing_if = "Option::is_none")]
    stored_in: Option<String>,
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
    if moved && login::remove_login(name)? {
        eprintln!("forgot the login of {name}'s previous URL");
    }
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
        let (kind, stored_in) = if let Some((_, stored)) = login::load_login_stored(name)? {
            (Some("login"), Some(stored))
        } else if let Some((_, stored)) = remotes::load_token_stored(name)? {
            (Some("api-token"), Some(stored))
        } else {
            (None, None)
        };
        rows.push(RemoteRow {
            name: name.clone(),
            url: endpoint.url.trim_end_matches('/').to_string(),
            default: config.remote.default.as_deref() == Some(name.as_str()),
            token: kind.is_some(),
            kind,
            stored_in: stored_in.map(|stored| stored.to_string()),
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
        &["NAME", "URL", "DEFAULT", "STORED IN", "TOKEN"],
        rows.iter().map(|row| {
            vec![
                row.name.clone(),
                row.url.clone(),
                yes_no(row.default),
                row.stored_in.clone().unwrap_or_default(),
                match row.kind {
                    Some("login") => "login".to_string(),
                    _ => yes_no(row.token),
                },
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
    let had_token = remotes::remove_token(name)? | login::remove_login(name)?;
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

/// The flags of `cubbi -r NAME auth`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthOptions {
    pub no_verify: bool,
    pub token_stdin: bool,
    pub logout: bool,
}

/// `cubbi -r NAME auth`: a device login when the service offers OpenID Connect (and no
/// token is asked for); else reads a token, checks it against the service unless
/// `no_verify`, and stores it. `--logout` ends the login.
pub async fn auth(remote: Option<&str>, options: AuthOptions) -> Result<ExitCode, CliError> {
    let no_verify = options.no_verify;
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
    if options.logout {
        return logout(name, &url).await;
    }
    if !options.token_stdin && !no_verify {
        let client = LoginClient::new(&url).map_err(|err| CliError::Refused(err.to_string()))?;
        // A service that cannot be asked (down, older) gets the token path, which says why.
        if let Ok(Some(AuthConfig {
            oidc: Some(offer), ..
        })) = client.config().await
            && offer.flows.iter().any(|flow| flow == "device")
        {
            return device_login(name, &client).await;
        }
    }
    let token = read_token(name)?;
    remotes::validate_token(&token)?;
    if no_verify {
        let stored = remotes::save_token(name, &token)?;
        login::remove_login(name)?;
        eprintln!(
            "token for {name} saved without checking it in {}; try cubbi -r {name} session list",
            where_kept(&stored)
        );
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
    let stored = remotes::save_token(name, &token)?;
    login::remove_login(name)?;
    eprintln!(
        "token for {name} saved in {}; try cubbi -r {name} session list",
        where_kept(&stored)
    );
    Ok(ExitCode::SUCCESS)
}

/// The device login: show where to approve it (and open a browser there when one is
/// configured), wait for the approval, store the service's tokens.
async fn device_login(name: &str, client: &LoginClient) -> Result<ExitCode, CliError> {
    let refused = |err: login::LoginError| CliError::Refused(format!("login to {name}: {err}"));
    let started = client.start_device().await.map_err(refused)?;
    eprintln!(
        "To log in to {name}, open {}\nand enter the code {}",
        super::output::terminal_safe(&started.verification_uri),
        super::output::terminal_safe(&started.user_code)
    );
    let target = started
        .verification_uri_complete
        .as_deref()
        .unwrap_or(&started.verification_uri);
    if open_browser(target) {
        eprintln!("(a browser was opened there)");
    }
    eprintln!("waiting for the login to be approved...");
    let tokens = client.wait_device(&started).await.map_err(refused)?;
    // A login made before is ended at the service, not left to live out its lifetime.
    if let Ok(Some(previous)) = login::load_login(name)
        && let Err(err) = client.logout(&previous).await
        && !err.is_refusal()
    {
        eprintln!("warning: the previous login to {name} could not be revoked: {err}");
    }
    let stored = login::StoredLogin::from_tokens(&tokens);
    let stored_in = login::save_login(name, &stored)?;
    // One credential per remote: the login replaces an API token stored before.
    remotes::remove_token(name)?;
    eprintln!(
        "logged in to {name} as {}{}; the login is kept in {}",
        super::output::terminal_safe(&tokens.user),
        if tokens.admin { " (admin)" } else { "" },
        where_kept(&stored_in)
    );
    Ok(ExitCode::SUCCESS)
}

/// Opens `url` with `$BROWSER` (empty or `none`: never), else `xdg-open` when there is one.
/// Only http(s) URLs are opened.
fn open_browser(url: &str) -> bool {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return false;
    }
    let command = match std::env::var("BROWSER") {
        Ok(browser) => {
            let first = browser
                .split(':')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            if first.is_empty() || first == "none" {
                return false;
            }
            first
        }
        Err(_) => "xdg-open".to_string(),
    };
    std::process::Command::new(command)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

/// `cubbi -r NAME auth --logout`: revokes the login at the service (every token of it, and
/// the provider's), then forgets it; an API token is forgotten only (an admin revokes it).
async fn logout(name: &str, url: &str) -> Result<ExitCode, CliError> {
    match login::load_login(name)? {
        Some(stored) => {
            let client = LoginClient::new(url).map_err(|err| CliError::Refused(err.to_string()))?;
            let outcome = client.logout(&stored).await;
            login::remove_login(name)?;
            match outcome {
                Ok(()) => eprintln!("logged out of {name}; its tokens are revoked"),
                // Already over at the service: nothing left to revoke.
                Err(err) if err.is_refusal() => {
                    eprintln!("logged out of {name} (the service had already ended the login)")
                }
                Err(err) => {
                    return Err(CliError::Refused(format!(
                        "forgot the login to {name} here, but the service did not confirm \
                         revoking it: {err}"
                    )));
                }
            }
        }
        None => {
            if remotes::remove_token(name)? {
                eprintln!(
                    "forgot the API token of {name}; it stays valid at the service until its \
                     admin revokes it (`cubbi serve token revoke`)"
                );
            } else {
                eprintln!("no login or token is stored for {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where a secret went, in words.
fn where_kept(stored: &remotes::Stored) -> String {
    match stored {
        remotes::Stored::Keyring => "the system keyring".into(),
        remotes::Stored::File(path) => path.display().to_string(),
    }
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
