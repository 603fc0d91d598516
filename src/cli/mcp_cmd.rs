//! `cubbi mcp ...`: the MCP servers sessions' tools can be given (`--mcp NAME`,
//! `defaults.mcp`). Header values are secrets: stored 0600, never printed.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::output::{print_json, table, terminal_safe};
use super::{CliError, OutputMode};
use crate::config::Config;
use crate::mcp::registry::McpRegistry;
use crate::mcp::{McpError, McpServer, McpSummary};
use crate::remote::client::RemoteBackend;

#[derive(Debug, Args)]
pub struct McpArgs {
    #[command(subcommand)]
    command: McpCommand,
}

#[derive(Debug, Subcommand)]
enum McpCommand {
    /// Register an MCP server under NAME: a remote one (URL, Streamable HTTP), or a stdio one
    /// (--command and/or --image) that runs inside each session as a service, reached by the
    /// tools over Streamable HTTP on loopback.
    Add {
        /// Lowercase letters, digits, `-` and `_`; tools see its tools as mcp__NAME__TOOL.
        name: String,
        /// The server's http:// or https:// URL, e.g. https://mcp.example.com/mcp.
        #[arg(required_unless_present_any = ["command", "image"], conflicts_with_all = ["command", "image", "env"])]
        url: Option<String>,
        /// A header sent with every request, NAME=VALUE (the value is kept secret).
        /// Repeatable.
        #[arg(long = "header", value_name = "NAME=VALUE", requires = "url")]
        headers: Vec<String>,
        /// A stdio server's command line (shell words), run in the session as `agent`, or in
        /// --image.
        #[arg(long, value_name = "CMD")]
        command: Option<String>,
        /// Run the stdio server from this Docker image, with the session's own Docker.
        #[arg(long, value_name = "IMAGE")]
        image: Option<String>,
        /// The stdio server's environment, KEY=VALUE (kept secret). Repeatable.
        #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
    },
    /// List the registered MCP servers (header names only).
    List,
    /// Show one MCP server (header names only).
    Show { name: String },
    /// Forget an MCP server.
    Remove { name: String },
}

/// Where the servers are kept: this machine's registry, or the caller's on a service.
enum Catalog {
    Local(McpRegistry),
    Remote(RemoteBackend),
}

impl Catalog {
    async fn add(&self, server: McpServer) -> Result<McpSummary, CliError> {
        match self {
            Self::Local(registry) => {
                registry.add(server.clone()).map_err(refused)?;
                Ok(server.summary())
            }
            Self::Remote(client) => Ok(client.mcp_add(&server).await?),
        }
    }

    async fn list(&self) -> Result<Vec<McpSummary>, CliError> {
        match self {
            Self::Local(registry) => Ok(registry
                .list()
                .map_err(refused)?
                .iter()
                .map(McpServer::summary)
                .collect()),
            Self::Remote(client) => Ok(client.mcp_list().await?),
        }
    }

    async fn show(&self, name: &str) -> Result<McpSummary, CliError> {
        match self {
            Self::Local(registry) => Ok(registry.get(name).map_err(refused)?.summary()),
            Self::Remote(client) => Ok(client.mcp_show(name).await?),
        }
    }

    async fn remove(&self, name: &str) -> Result<McpSummary, CliError> {
        match self {
            Self::Local(registry) => Ok(registry.remove(name).map_err(refused)?.summary()),
            Self::Remote(client) => Ok(client.mcp_remove(name).await?),
        }
    }
}

/// The MCP servers of this machine, or the caller's on the cubbi service `remote`.
pub async fn run(
    args: McpArgs,
    mode: OutputMode,
    remote: Option<&str>,
    config: &Config,
) -> Result<ExitCode, CliError> {
    let registry = match remote {
        None => Catalog::Local(McpRegistry::open_default().map_err(refused)?),
        Some(name) => Catalog::Remote(super::remote_cmd::client(config, name)?),
    };
    let is_remote = remote.is_some();
    match args.command {
        McpCommand::Add {
            name,
            url,
            headers,
            command,
            image,
            env,
        } => {
            let server = match &url {
                Some(url) => McpServer::new(&name, url, &headers),
                None => McpServer::stdio(&name, image.as_deref(), command.as_deref(), &env),
            }
            .map_err(refused)?;
            let summary = registry.add(server).await?;
            if mode.json {
                print_json(&summary)?;
            } else if is_remote {
                println!(
                    "registered MCP server {name} on the service; give it to a session with \
                     `cubbi -r REMOTE session create --mcp {name}`"
                );
            } else {
                println!(
                    "registered MCP server {name}; give it to a session with --mcp {name}, or to \
                     every session with `cubbi config set defaults.mcp {name}`"
                );
            }
        }
        McpCommand::List => {
            let servers = registry.list().await?;
            if mode.json {
                print_json(&servers)?;
            } else if servers.is_empty() {
                println!("no MCP servers; `cubbi mcp add NAME URL` registers one");
            } else {
                let rows = servers.iter().map(|s| {
                    let target = if s.kind == "stdio" {
                        let mut words = s.image.iter().cloned().collect::<Vec<_>>();
                        words.extend(s.command.iter().cloned());
                        shell_words::join(&words)
                    } else {
                        s.url.clone()
                    };
                    vec![
                        s.name.clone(),
                        s.kind.clone(),
                        terminal_safe(&target).into_owned(),
                        terminal_safe(&s.headers.join(", ")).into_owned(),
                        if !is_remote && config.defaults.mcp.contains(&s.name) {
                            "yes".into()
                        } else {
                            String::new()
                        },
                    ]
                });
                print!(
                    "{}",
                    table(
                        config.ui.table_format,
                        &["NAME", "TYPE", "URL / COMMAND", "HEADERS", "DEFAULT"],
                        rows
                    )
                );
            }
        }
        McpCommand::Show { name } => {
            let summary = registry.show(&name).await?;
            if mode.json {
                print_json(&summary)?;
            } else {
                println!("name:    {}", summary.name);
                println!("type:    {}", summary.kind);
                if summary.kind == "stdio" {
                    if let Some(image) = &summary.image {
                        println!("image:   {}", terminal_safe(image));
                    }
                    println!(
                        "command: {}",
                        terminal_safe(&shell_words::join(&summary.command))
                    );
                    println!("env:     {}", terminal_safe(&summary.env.join(", ")));
                } else {
                    println!("url:     {}", terminal_safe(&summary.url));
                }
                println!(
                    "headers: {}",
                    if summary.headers.is_empty() {
                        "none".to_string()
                    } else {
                        format!(
                            "{} (values set, not shown)",
                            terminal_safe(&summary.headers.join(", "))
                        )
                    }
                );
            }
        }
        McpCommand::Remove { name } => {
            registry.remove(&name).await?;
            if mode.json {
                print_json(&serde_json::json!({ "removed": name }))?;
            } else {
                println!("removed MCP server {name}");
                if !is_remote && config.defaults.mcp.contains(&name) {
                    eprintln!(
                        "warning: defaults.mcp still names {name}; new sessions are refused \
                         until `cubbi config set defaults.mcp ...` drops it"
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn refused(err: McpError) -> CliError {
    CliError::Refused(err.to_string())
}
