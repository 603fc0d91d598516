//! `cubbi pool status|fill|drain`: the warm pool of the local endpoint (`[pool]` in the config).
//! A service's pool is its own (`[pool]` in service.toml), so `-r` is refused.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::output::{print_json, table, terminal_safe as safe};
use super::{CliError, Context};
use crate::config::ConfigFile;
use crate::local::pool::ops;

#[derive(Debug, Args)]
pub struct PoolArgs {
    #[command(subcommand)]
    command: PoolCommand,
}

#[derive(Debug, Subcommand)]
enum PoolCommand {
    /// Per image: members ready to be claimed, and the target (`pool.IMAGE`).
    Status,
    /// Boot members until every image has its target, and wait for them.
    Fill {
        /// Print nothing (the refill a create starts in the background).
        #[arg(long)]
        quiet: bool,
    },
    /// Remove the unclaimed members (of one image, or all); sessions made from members stay.
    Drain {
        /// Only this image's members.
        #[arg(long, value_name = "NAME")]
        image: Option<String>,
    },
}

pub async fn run(args: PoolArgs, context: &Context) -> Result<ExitCode, CliError> {
    let config = ConfigFile::open_default()?.config()?;
    let endpoint = crate::docker::resolve_endpoint(context.endpoint.as_deref(), &config);
    let docker = crate::docker::connect(&endpoint).await?;
    let refused = |err: ops::PoolError| CliError::Refused(err.to_string());
    match args.command {
        PoolCommand::Status => {
            let rows = ops::status(&docker, &config.pool, &super::session_cmd::owner())
                .await
                .map_err(refused)?;
            if context.mode.json {
                print_json(&rows)?;
            } else if rows.is_empty() {
                eprintln!("no pool is configured; set one with `cubbi config set pool.base 2`");
            } else {
                let text = table(
                    config.ui.table_format,
                    &["IMAGE", "READY", "NOT READY", "TARGET"],
                    rows.iter().map(|row| {
                        vec![
                            safe(&row.image).into_owned(),
                            row.ready.to_string(),
                            row.not_ready.to_string(),
                            row.target.to_string(),
                        ]
                    }),
                );
                std::io::stdout().write_all(text.as_bytes())?;
            }
        }
        PoolCommand::Fill { quiet } => {
            if config.pool.is_empty() {
                return Err(CliError::Refused(
                    "no pool is configured; set one with `cubbi config set pool.base 2`".into(),
                ));
            }
            if super::session_cmd::pool_settings(&config).is_none() {
                return Err(CliError::Refused(format!(
                    "members would boot with defaults.runtime = {}, which is runc without \
                     defaults.allow_unsafe_runc; set defaults.runtime to sysbox-runc, or \
                     defaults.allow_unsafe_runc to true",
                    config.defaults.runtime
                )));
            }
            let (files, client_key) = super::session_cmd::user_ssh()?;
            let backend =
                super::session_cmd::local_backend(context, &config, &files, &client_key).await?;
            if !quiet && !context.mode.json {
                eprintln!("booting pool members (each takes a few seconds)...");
            }
            let filled = backend.fill_pool().await?;
            if context.mode.json {
                print_json(&filled)?;
            } else if !quiet {
                for row in &filled {
                    eprintln!(
                        "{}: {} booted, {} of {} there now{}",
                        safe(&row.image),
                        row.started,
                        row.had + row.started,
                        row.target,
                        row.failed
                            .as_deref()
                            .map(|why| format!(" ({})", safe(why)))
                            .unwrap_or_default()
                    );
                }
            }
            if filled.iter().any(|row| row.failed.is_some()) {
                return Ok(ExitCode::FAILURE);
            }
        }
        PoolCommand::Drain { image } => {
            let removed = ops::drain(&docker, image.as_deref(), &super::session_cmd::owner())
                .await
                .map_err(refused)?;
            if context.mode.json {
                print_json(&serde_json::json!({ "removed": removed }))?;
            } else {
                eprintln!("removed {removed} pool member(s)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
