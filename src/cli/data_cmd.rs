//! `cubbi data export|import`: the owner's agent data volume (the tools' logins and settings)
//! as a tar, locally or on a service (`-r NAME`). An export holds credentials, so the file is
//! written 0600 and atomically; an import is checked entry by entry and refused whole.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::output::{print_json, terminal_safe as safe};
use super::session_cmd::Target;
use super::{CliError, Context};
use crate::api::DataSummary;
use crate::config::ConfigFile;

#[derive(Debug, Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Write your agent data volume (or one image's part of it) to a tar file (mode 0600).
    Export {
        /// Only this tool image's data (`claude-code`).
        #[arg(long, value_name = "NAME")]
        image: Option<String>,
        /// The tar file to write; an existing file is replaced.
        file: PathBuf,
    },
    /// Write a tar into your agent data volume: absolute paths, `..`, links out, device files
    /// and archives over 256 MiB are refused, and then nothing is written.
    Import {
        /// The tar file to read.
        #[arg(required_unless_present = "from_host", conflicts_with = "from_host")]
        file: Option<PathBuf>,
        /// Copy your own tool configs from this machine's home (~/.claude, ~/.codex,
        /// ~/.gemini, ...), with their modes.
        #[arg(long)]
        from_host: bool,
    },
}

pub async fn run(args: DataArgs, context: &Context) -> Result<ExitCode, CliError> {
    // Everything about the files is settled before a backend is opened.
    let work = match args.command {
        DataCommand::Export { image, file } => Work::Export { image, file },
        DataCommand::Import {
            file: Some(file), ..
        } => Work::Import {
            archive: std::fs::read(&file).map_err(|err| {
                CliError::Refused(format!("cannot read {}: {err}", file.display()))
            })?,
            origin: format!("{}", file.display()),
        },
        DataCommand::Import { file: None, .. } => from_host()?,
    };
    let config = ConfigFile::open_default()?.config()?;
    let target = Target::open(context, &config).await?;
    let backend = target.backend.as_ref();
    match work {
        Work::Export { image, file } => {
            let (archive, summary) = backend.export_data(image.as_deref()).await?;
            crate::atomic_file::write(&file, &archive, 0o600, 0o700).map_err(|err| {
                CliError::Refused(format!("cannot write {}: {err}", file.display()))
            })?;
            report(
                &summary,
                context,
                &format!("exported to {}", file.display()),
            )?;
        }
        Work::Import { archive, origin } => {
            let summary = backend.import_data(archive).await?;
            report(&summary, context, &format!("imported from {origin}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

enum Work {
    Export {
        image: Option<String>,
        file: PathBuf,
    },
    Import {
        archive: Vec<u8>,
        origin: String,
    },
}

/// The host user's tool folders the images persist, as an archive; says what it found.
fn from_host() -> Result<Work, CliError> {
    let home =
        dirs::home_dir().ok_or_else(|| CliError::Refused("cannot tell your home folder".into()))?;
    let catalog =
        crate::images::Catalog::embedded().map_err(|err| CliError::Refused(err.to_string()))?;
    let found = crate::local::agent_data::host_configs(&home, &catalog);
    if found.is_empty() {
        return Err(CliError::Refused(format!(
            "none of the tool folders cubbi images keep (~/.claude, ~/.codex, ~/.gemini, ...) \
             is in {}; nothing to import",
            home.display()
        )));
    }
    for config in &found {
        eprintln!(
            "copying {} -> {}",
            safe(&config.host.display().to_string()),
            safe(&config.volume.display().to_string())
        );
    }
    let archive = crate::local::agent_data::archive_host_configs(&found)
        .map_err(|err| CliError::Refused(format!("cannot read your tool folders: {err}")))?;
    Ok(Work::Import {
        archive,
        origin: "your home folder".into(),
    })
}

fn report(summary: &DataSummary, context: &Context, what: &str) -> Result<(), CliError> {
    if context.mode.json {
        print_json(summary)?;
        return Ok(());
    }
    let tools = if summary.tools.is_empty() {
        "no tool data".to_string()
    } else {
        summary
            .tools
            .iter()
            .map(|t| safe(t))
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!(
        "{what}: {} files, {} folders, {} links, {} bytes ({tools})",
        summary.files, summary.folders, summary.links, summary.bytes
    );
    Ok(())
}
