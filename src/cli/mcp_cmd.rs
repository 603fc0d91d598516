//! `cubbi mcp ...`: the MCP servers sessions' tools can be given (`--mcp NAME`,
//! `defaults.mcp`). Header values are secrets: stored 0600, never printed.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::output::{print_json, table, terminal_safe};
use super::{CliError, OutputMode};
use crate::config::Config;
use crate::mcp::registry::McpRegistry;
use crate::mcp::{McpError, McpServer};

#[derive(Debug, Args)]
pub struct McpArgs {
    #[command(subcommand)]
    command: McpCommand,
}

#[derive(Debug, Subcommand)]
enum McpCommand {
    /// Register a remote MCP server (Streamable HTTP) under NAME.
    Add {
        /// Lowercase letters, digits, `-` and `_`; tools see its tools as mcp__NAME__TOOL.
        name: String,
        /// The server's http:// or https:// URL, e.g. https://mcp.example.com/mcp.
        url: String,
        /// A header sent with every request, NAME=VALUE (the value is kept secret).
        /// Repeatable.
        #[arg(long = "header", value_name = "NAME=VALUE")]
        headers: Vec<String>,
    },
    /// List the registered MCP servers (header names only).
    List,
    /// Show one MCP server (header names only).
    Show { name: String },
    /// Forget an MCP server.
    Remove { name: String },
}

pub fn run(args: McpArgs, mode: OutputMode, config: &Config) -> Result<ExitCode, CliError> {
    let registry = McpRegistry::open_default().map_err(refused)?;
    match args.command {
        McpCommand::Add { name, url, headers } => {
            let server = McpServer::new(&name, &url, &headers).map_err(refused)?;
            registry.add(server.clone()).map_err(refused)?;
            if mode.json {
                print_json(&server.summary())?;
            } else {
                println!(
                    "registered MCP server {name}; give it to a session with --mcp {name}, or to \
                     every session with `cubbi config set defaults.mcp {name}`"
                );
            }
        }
        McpCommand::List => {
            let servers: Vec<_> = registry
                .list()
                .map_err(refused)?
                .iter()
                .map(McpServer::summary)
                .collect();
            if mode.json {
                print_json(&servers)?;
            } else if servers.is_empty() {
                println!("no MCP servers; `cubbi mcp add NAME URL` registers one");
            } else {
                let rows = servers.iter().map(|s| {
                    vec![
                        s.name.clone(),
                        s.kind.to_string(),
                        terminal_safe(&s.url).into_owned(),
                        s.headers.join(", "),
                        if config.defaults.mcp.contains(&s.name) {
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
                        &["NAME", "TYPE", "URL", "HEADERS", "DEFAULT"],
                        rows
                    )
                );
            }
        }
        McpCommand::Show { name } => {
            let summary = registry.get(&name).map_err(refused)?.summary();
            if mode.json {
                print_json(&summary)?;
            } else {
                println!("name:    {}", summary.name);
                println!("type:    {}", summary.kind);
                println!("url:     {}", terminal_safe(&summary.url));
                println!(
                    "headers: {}",
                    if summary.headers.is_empty() {
                        "none".to_string()
                    } else {
                        format!("{} (values set, not shown)", summary.headers.join(", "))
                    }
                );
            }
        }
        McpCommand::Remove { name } => {
            registry.remove(&name).map_err(refused)?;
            if mode.json {
                print_json(&serde_json::json!({ "removed": name }))?;
            } else {
                println!("removed MCP server {name}");
                if config.defaults.mcp.contains(&name) {
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
