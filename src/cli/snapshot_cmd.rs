//! `cubbi snapshot list|show|rm`, and the printing `cubbi session snapshot` shares: snapshots
//! through the backend trait, a table for people and `--json` for programs.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::output::{print_json, table, terminal_safe as safe};
use super::session_cmd::{Target, age};
use super::{CliError, Context};
use crate::api::Snapshot;
use crate::config::{Config, ConfigFile};

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// List your snapshots.
    List,
    /// Show one snapshot.
    Show {
        /// The snapshot's name.
        name: String,
    },
    /// Remove snapshots (one a session still runs from is refused).
    Rm {
        /// The snapshots' names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub async fn run(args: SnapshotArgs, context: &Context) -> Result<ExitCode, CliError> {
    let config = ConfigFile::open_default()?.config()?;
    let target = Target::open(context, &config).await?;
    let backend = target.backend.as_ref();
    match args.command {
        SnapshotCommand::List => {
            let snapshots = backend.snapshots().await?;
            print_snapshots(&snapshots, context, &config)?;
        }
        SnapshotCommand::Show { name } => {
            let found = crate::local::snapshot::pick(backend.snapshots().await?, &name)?;
            print_snapshot(&found, context)?;
        }
        SnapshotCommand::Rm { names } => {
            let mut failed = false;
            for name in names {
                match backend.remove_snapshot(&name).await {
                    Ok(removed) => eprintln!("removed snapshot {}", safe(&removed.name)),
                    Err(err) => {
                        eprintln!(
                            "error: {}",
                            super::output::terminal_safe_lines(&err.to_string())
                        );
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One snapshot: JSON, or a few lines for people.
pub(super) fn print_snapshot(snapshot: &Snapshot, context: &Context) -> Result<(), CliError> {
    if context.mode.json {
        print_json(snapshot)?;
        return Ok(());
    }
    let how = match snapshot.taken.as_str() {
        "frozen" => "taken from the running session, frozen for the commit",
        "stopped" => "taken from the stopped session",
        _ => "taken",
    };
    println!(
        "snapshot {}: session {} {how}, {} ago, {}\nimage: {}",
        safe(&snapshot.name),
        safe(&snapshot.source),
        age(snapshot.created),
        megabytes(snapshot.size),
        safe(&snapshot.image),
    );
    Ok(())
}

fn print_snapshots(
    snapshots: &[Snapshot],
    context: &Context,
    config: &Config,
) -> Result<(), CliError> {
    if context.mode.json {
        print_json(&snapshots)?;
        return Ok(());
    }
    if snapshots.is_empty() {
        eprintln!("no snapshots; take one with `cubbi session snapshot ID`");
        return Ok(());
    }
    let text = table(
        config.ui.table_format,
        &["NAME", "SOURCE", "TAKEN", "AGE", "SIZE"],
        snapshots.iter().map(|s| {
            vec![
                safe(&s.name).into_owned(),
                safe(&s.source).into_owned(),
                safe(&s.taken).into_owned(),
                age(s.created),
                megabytes(s.size),
            ]
        }),
    );
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

fn megabytes(bytes: i64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}
