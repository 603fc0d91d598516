//! `cubbi image ...`: the images sessions boot.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bollard::Docker;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::{print_json, table};
use super::{CliError, Context};
use crate::config::ConfigFile;
use crate::images::build::{BuildEvent, BuildRequest};
use crate::images::{Catalog, ImageDefinition, ImageMetadata, context};

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// List the images cubbi knows, and whether each is built on the endpoint.
    List,
    /// Show an image's metadata and, when built, the local image's details.
    Inspect {
        /// Image name, e.g. `base` or `claude-code`.
        name: String,
    },
    /// Build an image on the endpoint. A tool image builds `cubbi-base` first when absent.
    Build(BuildArgs),
}

#[derive(Debug, Args)]
struct BuildArgs {
    /// Image name (see `cubbi image list`); optional with --from.
    #[arg(required_unless_present = "from")]
    name: Option<String>,
    /// Build from this folder (a Dockerfile and a cubbi-image.toml) instead of the built-in one.
    #[arg(long, value_name = "DIR")]
    from: Option<PathBuf>,
    /// Tag to give the image [default: cubbi-NAME].
    #[arg(long, value_name = "TAG")]
    tag: Option<String>,
    /// Image to build on (the Dockerfile's BASE argument).
    #[arg(long, value_name = "IMAGE")]
    base: Option<String>,
    /// Ignore Docker's build cache.
    #[arg(long)]
    no_cache: bool,
    /// Do not take the host's extra CA certificates into the image.
    #[arg(long)]
    no_host_ca: bool,
}

/// One row of `image list`.
#[derive(Debug, Serialize)]
struct ImageRow {
    name: String,
    description: String,
    tag: String,
    /// The tool release the image installs (none for `base`).
    tool_version: Option<String>,
    built: bool,
    id: Option<String>,
    size_bytes: Option<i64>,
}

pub async fn run(args: ImageArgs, context: &Context) -> Result<ExitCode, CliError> {
    let file = ConfigFile::open_default()?;
    let config = file.config()?;
    let catalog = Catalog::embedded()?;
    let endpoint = crate::docker::resolve_endpoint(context.endpoint.as_deref(), &config);
    if let Some(remote) = &context.remote {
        return remote_images(args.command, remote, context, &config).await;
    }
    match args.command {
        ImageCommand::List => {
            let docker = crate::docker::connect(&endpoint).await?;
            let mut rows = Vec::new();
            for image in catalog.all() {
                let tag = image.metadata.default_tag();
                let local = docker.inspect_image(&tag).await.ok();
                rows.push(ImageRow {
                    name: image.metadata.name.clone(),
                    description: image.metadata.description.clone(),
                    tool_version: image.metadata.tool_version.clone(),
                    built: local.is_some(),
                    id: local.as_ref().and_then(|i| i.id.clone()),
                    size_bytes: local.as_ref().and_then(|i| i.size),
                    tag,
                });
            }
            if context.mode.json {
                print_json(&rows)?;
            } else {
                print_images(
                    config.ui.table_format,
                    rows.iter().map(|row| ListedImage {
                        name: &row.name,
                        tag: &row.tag,
                        tool_version: row.tool_version.as_deref(),
                        built: row.built,
                        size: row.size_bytes.map(human_size).unwrap_or_default(),
                        description: &row.description,
                    }),
                )?;
            }
        }
        ImageCommand::Inspect { name } => {
            let image = catalog.get(&name)?;
            let docker = crate::docker::connect(&endpoint).await?;
            let local = docker
                .inspect_image(&image.metadata.default_tag())
                .await
                .ok();
            inspect(&image.metadata, Built::Here(local.as_ref()), context)?;
        }
        ImageCommand::Build(build) => {
            let docker = crate::docker::connect(&endpoint).await?;
            let ca_certificates = if build.no_host_ca {
                Vec::new()
            } else {
                context::ca_certificates(config.build.ca_certificates.as_deref())?
            };
            let definition = match &build.from {
                Some(dir) => ImageDefinition::from_folder(dir)?,
                None => catalog
                    .get(build.name.as_deref().unwrap_or_default())?
                    .clone(),
            };
            let is_base = definition.metadata.name == "base" && build.from.is_none();
            if !is_base && build.base.is_none() {
                let base = catalog.get("base")?;
                let base_tag = base.metadata.default_tag();
                if docker.inspect_image(&base_tag).await.is_err() {
                    eprintln!("{base_tag} is not built yet; building it first");
                    build_one(&docker, base, base_tag, None, &build, &ca_certificates).await?;
                }
            }
            let tag = build
                .tag
                .clone()
                .unwrap_or_else(|| definition.metadata.default_tag());
            build_one(
                &docker,
                &definition,
                tag,
                build.base.clone(),
                &build,
                &ca_certificates,
            )
            .await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One row of the human `image list`, wherever the image is.
struct ListedImage<'a> {
    name: &'a str,
    tag: &'a str,
    tool_version: Option<&'a str>,
    built: bool,
    size: String,
    description: &'a str,
}

fn print_images<'a>(
    format: crate::config::TableFormat,
    rows: impl IntoIterator<Item = ListedImage<'a>>,
) -> Result<(), CliError> {
    let text = table(
        format,
        &["NAME", "TAG", "VERSION", "BUILT", "SIZE", "DESCRIPTION"],
        rows.into_iter().map(|row| {
            vec![
                row.name.to_string(),
                row.tag.to_string(),
                row.tool_version.unwrap_or("-").to_string(),
                if row.built { "yes" } else { "no" }.to_string(),
                row.size,
                row.description.to_string(),
            ]
        }),
    );
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

/// `image list` and `image inspect` of the images the cubbi service `remote` offers; its
/// images are built there, with `cubbi image build` on that host.
async fn remote_images(
    command: ImageCommand,
    remote: &str,
    context: &Context,
    config: &crate::config::Config,
) -> Result<ExitCode, CliError> {
    let client = super::remote_cmd::client(config, remote)?;
    match command {
        ImageCommand::List => {
            let images = client.images().await?;
            if context.mode.json {
                print_json(&images)?;
            } else {
                print_images(
                    config.ui.table_format,
                    images.iter().map(|image| ListedImage {
                        name: &image.name,
                        tag: &image.tag,
                        tool_version: image.tool_version.as_deref(),
                        built: image.built,
                        size: String::new(),
                        description: &image.description,
                    }),
                )?;
            }
        }
        ImageCommand::Inspect { name } => {
            let image = client.image(&name).await?;
            if context.mode.json {
                print_json(&image)?;
                return Ok(ExitCode::SUCCESS);
            }
            let metadata: ImageMetadata = image
                .metadata
                .clone()
                .ok_or_else(|| {
                    CliError::Refused(format!(
                        "the service `{remote}` sent no metadata for `{name}`"
                    ))
                })
                .and_then(|value| {
                    serde_json::from_value(value).map_err(|err| {
                        CliError::Refused(format!(
                            "the service `{remote}` sent metadata for `{name}` this cubbi cannot \
                             read: {err}"
                        ))
                    })
                })?;
            inspect(
                &metadata,
                Built::There {
                    remote,
                    built: image.built,
                },
                context,
            )?;
        }
        ImageCommand::Build(_) => {
            return Err(CliError::Refused(format!(
                "`cubbi image build` builds on this machine only; drop `-r {remote}` (the \
                 service's images are built on its host)"
            )));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether and where an image is built.
enum Built<'a> {
    /// On this machine's endpoint, with Docker's details when it is.
    Here(Option<&'a bollard::models::ImageInspect>),
    /// On the cubbi service `remote`.
    There { remote: &'a str, built: bool },
}

async fn build_one(
    docker: &Docker,
    image: &ImageDefinition,
    tag: String,
    base: Option<String>,
    args: &BuildArgs,
    ca_certificates: &[PathBuf],
) -> Result<(), CliError> {
    let started = std::time::Instant::now();
    let request = BuildRequest {
        image,
        tag: tag.clone(),
        base,
        no_cache: args.no_cache,
        ca_certificates: ca_certificates.to_vec(),
    };
    let interactive = std::io::stderr().is_terminal();
    let spinner = indicatif::ProgressBar::new_spinner();
    if interactive {
        spinner.enable_steady_tick(Duration::from_millis(120));
        spinner.set_message(format!("building {tag}"));
    } else {
        eprintln!("building {tag}");
    }
    let result = crate::images::build::build(docker, &request, |event| match event {
        BuildEvent::Step(step) if interactive => spinner.set_message(format!("{tag}: {step}")),
        BuildEvent::Step(step) => eprintln!("  {step}"),
        BuildEvent::Output(line) => tracing::info!(target: "cubbi::build", "{line}"),
    })
    .await;
    spinner.finish_and_clear();
    let id = result?;
    eprintln!(
        "built {tag} ({}) in {:.1}s",
        short_id(&id),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn inspect(metadata: &ImageMetadata, built: Built<'_>, context: &Context) -> Result<(), CliError> {
    let (local, there) = match built {
        Built::Here(local) => (local, None),
        Built::There { remote, built } => (None, Some((remote, built))),
    };
    #[derive(Serialize)]
    struct Inspected<'a> {
        metadata: &'a ImageMetadata,
        tag: String,
        built: bool,
        id: Option<String>,
        created: Option<String>,
        size_bytes: Option<i64>,
    }
    let shown = Inspected {
        metadata,
        tag: metadata.default_tag(),
        built: local.is_some(),
        id: local.as_ref().and_then(|i| i.id.clone()),
        created: local.as_ref().and_then(|i| i.created.clone()),
        size_bytes: local.as_ref().and_then(|i| i.size),
    };
    if context.mode.json {
        print_json(&shown)?;
        return Ok(());
    }
    let mut out = String::new();
    out += &format!("name:        {}\n", metadata.name);
    if let Some(version) = &metadata.tool_version {
        out += &format!("tool:        {version} (pinned)\n");
    }
    out += &format!("description: {}\n", metadata.description);
    out += &format!("version:     {}\n", metadata.version);
    out += &format!("tag:         {}\n", shown.tag);
    out += &format!("command:     {}\n", metadata.command.join(" "));
    match (&shown.id, there) {
        (_, Some((remote, true))) => out += &format!("built:       yes, on `{remote}`\n"),
        (_, Some((remote, false))) => out += &format!("built:       no, not on `{remote}`\n"),
        (Some(id), None) => {
            out += &format!("built:       yes, {}", short_id(id));
            if let Some(size) = shown.size_bytes {
                out += &format!(", {}", human_size(size));
            }
            if let Some(created) = &shown.created {
                out += &format!(", created {created}");
            }
            out += "\n";
        }
        (None, None) => out += &format!("built:       no (cubbi image build {})\n", metadata.name),
    }
    if !metadata.environment.is_empty() {
        out += "environment:\n";
        for env in &metadata.environment {
            let mut flags = Vec::new();
            if env.required {
                flags.push("required");
            }
            if env.sensitive {
                flags.push("sensitive");
            }
            out += &format!("  {:<28} {}", env.name, env.description);
            if !flags.is_empty() {
                out += &format!(" ({})", flags.join(", "));
            }
            out += "\n";
        }
    }
    if !metadata.persistent_configs.is_empty() {
        out += "persistent configs:\n";
        for config in &metadata.persistent_configs {
            out += &format!("  {} -> {}\n", config.source, config.target);
        }
    }
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

fn human_size(bytes: i64) -> String {
    indicatif::HumanBytes(bytes.max(0) as u64).to_string()
}
