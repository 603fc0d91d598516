//! `cubbi serve token ...`: the API tokens of the service on this host.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::output::{print_json, table};
use super::{CliError, Context};
use crate::config::ConfigFile;
use crate::service::config::ServiceConfig;
use crate::service::store::{TokenRecord, open_configured};

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
    /// The service config, whose `[store]` (and `state_dir`) says where the tokens are
    /// [default: /etc/cubbi/service.toml; its defaults when absent].
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// The service's state folder, which holds its SQLite database, over the config's
    /// state_dir [default: /var/lib/cubbi].
    #[arg(long, value_name = "DIR", global = true)]
    state_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Issue a token for a user (created if new). Prints only the token, once.
    Create {
        /// User name: a lowercase letter, then up to 31 lowercase letters, digits, `_` or `-`.
        #[arg(long, value_name = "NAME")]
        user: String,
        /// Make the user an administrator. Without `--admin` or `--no-admin`, an existing
        /// user stays what they are and a new user is not an administrator.
        #[arg(long, conflicts_with = "no_admin")]
        admin: bool,
        /// Make the user no administrator (demote an existing one).
        #[arg(long)]
        no_admin: bool,
    },
    /// List all tokens, revoked ones included.
    List,
    /// Revoke a token by its id (see `cubbi serve token list`).
    Revoke {
        /// Token id: the 12 hex digits after `cubbi_`.
        id: String,
    },
}

pub async fn run(args: TokenArgs, context: &Context) -> Result<ExitCode, CliError> {
    let mut config = ServiceConfig::load_given(args.config.as_deref())
        .map_err(|err| CliError::Refused(err.to_string()))?;
    if let Some(dir) = args.state_dir {
        config.state_dir = dir;
    }
    let store = open_configured(&config).await?;
    match args.command {
        TokenCommand::Create {
            user,
            admin,
            no_admin,
        } => {
            let flag = match (admin, no_admin) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            let (record, token) = store.issue_token(&user, flag).await?;
            // stdout carries the token alone so that `TOKEN=$(cubbi serve token create ...)`
            // works; everything for the reader goes to stderr.
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{token}")?;
            stdout.flush()?;
            eprintln!(
                "Token {} for {}{}: it is shown once; give it to {}, who runs `cubbi -r NAME auth`.",
                record.id,
                record.user,
                if record.admin { " (admin)" } else { "" },
                record.user
            );
        }
        TokenCommand::List => {
            let records = store.tokens().await?;
            if context.mode.json {
                print_json(&records)?;
            } else {
                let format = ConfigFile::open_default()?.config()?.ui.table_format;
                let text = table(
                    format,
                    &["ID", "USER", "ADMIN", "CREATED", "LAST USED", "STATE"],
                    records.iter().map(row),
                );
                std::io::stdout().write_all(text.as_bytes())?;
            }
        }
        TokenCommand::Revoke { id } => {
            if !store.revoke(&id).await? {
                return Err(CliError::Refused(format!(
                    "no unrevoked token with id {id:?}; see `cubbi serve token list`"
                )));
            }
            eprintln!("Revoked token {id}.");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn row(record: &TokenRecord) -> Vec<String> {
    let now = now();
    vec![
        record.id.clone(),
        record.user.clone(),
        if record.admin { "yes" } else { "no" }.to_string(),
        format!("{} ago", age(now, record.created)),
        record
            .last_used
            .map_or_else(|| "never".to_string(), |t| format!("{} ago", age(now, t))),
        match record.revoked {
            Some(t) => format!("revoked {} ago", age(now, t)),
            None => "active".to_string(),
        },
    ]
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

fn age(now: i64, then: i64) -> String {
    match (now - then).max(0) {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}
