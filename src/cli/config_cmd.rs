//! `cubbi config ...`: show and change the user config.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::{print_json, table};
use super::{CliError, OutputMode};
use crate::config::keys::{self, KeySpec};
use crate::config::store::Source;
use crate::config::{ConfigError, ConfigFile};

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Show every key with its value in effect (secrets masked).
    List,
    /// Print one key's value (secrets masked). `openai.api_key` is short for
    /// `services.openai.api_key`.
    Get { key: String },
    /// Set a key. Values may reference the environment as `${VAR}`, resolved when used.
    Set { key: String, value: String },
    /// Remove a key from the file, so its default applies again.
    Unset { key: String },
    /// Remove every setting, API keys included.
    Reset {
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Manage the extra Docker networks every session joins (defaults.networks).
    #[command(subcommand)]
    Network(NetworkCommand),
}

#[derive(Debug, Subcommand)]
enum NetworkCommand {
    /// List the extra networks.
    List,
    /// Add a network by name.
    Add { name: String },
    /// Remove a network by name.
    Remove { name: String },
}

/// One row of `config list` / `config get --json`.
#[derive(Debug, Serialize)]
struct Shown {
    key: String,
    value: Option<toml::Value>,
    source: Option<Source>,
    secret: bool,
}

pub fn run(args: ConfigArgs, mode: OutputMode) -> Result<ExitCode, CliError> {
    let mut file = ConfigFile::open_default()?;
    match args.command {
        ConfigCommand::List => list(&file, mode)?,
        ConfigCommand::Get { key } => {
            let shown = show(&file, &keys::lookup(&key)?)?;
            if mode.json {
                print_json(&shown)?;
            } else {
                match &shown.value {
                    Some(value) => println!("{}", display(value)),
                    None => {
                        return Err(CliError::Refused(format!(
                            "`{}` is not set; set it with `cubbi config set {} VALUE`",
                            shown.key, shown.key
                        )));
                    }
                }
            }
        }
        ConfigCommand::Set { key, value } => {
            let spec = keys::lookup(&key)?;
            let parsed = keys::parse_value(&spec, &value)?;
            file.set(&spec, parsed)?;
            file.save()?;
            eprintln!("set {}", spec.path);
        }
        ConfigCommand::Unset { key } => {
            let spec = keys::lookup(&key)?;
            if file.unset(&spec)? {
                file.save()?;
                eprintln!("unset {}", spec.path);
            } else {
                eprintln!("{} was not set", spec.path);
            }
        }
        ConfigCommand::Reset { yes } => {
            if !yes
                && !confirm(&format!(
                    "Reset {} to defaults? This removes every setting, API keys included.",
                    file.path().display()
                ))?
            {
                return Err(CliError::Refused(
                    "nothing was changed; pass --yes to reset without asking".into(),
                ));
            }
            file.reset();
            file.save()?;
            eprintln!("reset {}", file.path().display());
        }
        ConfigCommand::Network(command) => network(&mut file, command, mode)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn list(file: &ConfigFile, mode: OutputMode) -> Result<(), CliError> {
    let mut specs: Vec<KeySpec> = keys::static_keys().collect();
    specs.extend(
        file.remote_endpoint_names()?
            .iter()
            .map(|name| keys::remote_endpoint_key(name)),
    );
    let rows = specs
        .iter()
        .map(|spec| show(file, spec))
        .collect::<Result<Vec<_>, _>>()?;
    if mode.json {
        print_json(&rows)?;
        return Ok(());
    }
    let format = file.config()?.ui.table_format;
    let text = table(
        format,
        &["KEY", "VALUE", "SOURCE"],
        rows.iter().map(|row| {
            vec![
                row.key.clone(),
                row.value.as_ref().map(display).unwrap_or_default(),
                match row.source {
                    Some(Source::File) => "file".to_string(),
                    Some(Source::Default) => "default".to_string(),
                    None => String::new(),
                },
            ]
        }),
    );
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

fn show(file: &ConfigFile, spec: &KeySpec) -> Result<Shown, ConfigError> {
    let effective = file.effective(spec)?;
    let secret = spec.is_secret();
    let (value, source) = match effective {
        Some((value, source)) => (Some(if secret { mask(value) } else { value }), Some(source)),
        None => (None, None),
    };
    Ok(Shown {
        key: spec.path.clone(),
        value,
        source,
        secret,
    })
}

/// Secrets are never printed. A bare `${VAR}` reference is not itself secret and helps the
/// user see where the value comes from, so it stays visible.
fn mask(value: toml::Value) -> toml::Value {
    match value.as_str() {
        Some(text) if is_bare_reference(text) => value,
        _ => toml::Value::String("********".into()),
    }
}

fn is_bare_reference(text: &str) -> bool {
    text.strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
        .is_some_and(crate::config::env::is_env_name)
}

/// Strings print bare so `cubbi config get` composes in shell scripts.
fn display(value: &toml::Value) -> String {
    match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Array(items) => items.iter().map(display).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn network(
    file: &mut ConfigFile,
    command: NetworkCommand,
    mode: OutputMode,
) -> Result<(), CliError> {
    let spec = keys::lookup("defaults.networks")?;
    let mut networks = file.config()?.defaults.networks;
    match command {
        NetworkCommand::List => {
            if mode.json {
                print_json(&networks)?;
            } else if networks.is_empty() {
                eprintln!("no extra networks; add one with `cubbi config network add NAME`");
            } else {
                for name in &networks {
                    println!("{name}");
                }
            }
            return Ok(());
        }
        NetworkCommand::Add { name } => {
            keys::validate_network_name(&name)?;
            if networks.contains(&name) {
                eprintln!("{name} is already in defaults.networks");
                return Ok(());
            }
            networks.push(name.clone());
            eprintln!("added {name} to defaults.networks");
        }
        NetworkCommand::Remove { name } => {
            if !networks.contains(&name) {
                return Err(ConfigError::NoSuchNetwork { name }.into());
            }
            networks.retain(|existing| existing != &name);
            eprintln!("removed {name} from defaults.networks");
        }
    }
    let value = keys::parse_value(&spec, &networks.join(","))?;
    file.set(&spec, value)?;
    file.save()?;
    Ok(())
}

/// Asks on the terminal; without one, the answer is no.
fn confirm(question: &str) -> Result<bool, CliError> {
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES"))
}
