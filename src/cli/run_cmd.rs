//! `cubbi run`: one prompt, headless, in a new session (closed afterwards unless `--keep`) or
//! an existing one; the result as text, `--json` or a `--stream` of NDJSON events.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::output::terminal_safe_lines;
use super::session_cmd::{CreateArgs, Target, remote_backend, spec_from, user_ssh};
use super::{CliError, Context};
use crate::api::{Backend, Quiet};
use crate::config::Config;
use crate::images::metadata::ImageMetadata;
use crate::run::{RunEvent, RunRequest, RunResult};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    create: CreateArgs,
    /// The prompt; `-` reads it from stdin.
    #[arg(short = 'p', long, value_name = "TEXT")]
    prompt: String,
    /// Continue the tool's conversation ID (`agent_session_id` of an earlier run).
    #[arg(long, value_name = "ID")]
    resume: Option<String>,
    /// A tool the agent may use without asking. Repeatable.
    #[arg(long = "allowed-tools", value_name = "TOOL")]
    allowed_tools: Vec<String>,
    /// A tool the agent must not use. Repeatable.
    #[arg(long = "disallowed-tools", value_name = "TOOL")]
    disallowed_tools: Vec<String>,
    /// Text added to the tool's system prompt.
    #[arg(long, value_name = "TEXT")]
    append_system_prompt: Option<String>,
    /// Most agent turns.
    #[arg(long, value_name = "N")]
    max_turns: Option<u32>,
    /// The model the tool uses.
    #[arg(long)]
    model: Option<String>,
    /// Stop the agent after this long (`90`, `90s`, `5m`, `1h`).
    #[arg(long, value_name = "DURATION", value_parser = super::duration::parse_duration)]
    timeout: Option<Duration>,
    /// Run in this existing session instead of a new one.
    #[arg(long, value_name = "ID")]
    session: Option<String>,
    /// Keep the new session after the run.
    #[arg(long)]
    keep: bool,
    /// Print the run's events as NDJSON lines (text, tool_use, tool_result, result).
    #[arg(long)]
    stream: bool,
}

/// The metadata of a cubbi image by the name a session or `--image` gives.
fn metadata_for(image: &str) -> Result<ImageMetadata, CliError> {
    crate::run::tool_metadata(image).map_err(|err| CliError::Refused(err.to_string()))
}

pub async fn run(args: RunArgs, context: &Context, config: &Config) -> Result<ExitCode, CliError> {
    if args.create.run.is_some() {
        return Err(CliError::Refused(
            "--run runs a shell command; `cubbi run` runs the prompt of -p".into(),
        ));
    }
    let prompt = if args.prompt == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        text
    } else {
        args.prompt.clone()
    };
    let request = RunRequest {
        prompt,
        resume: args.resume.clone(),
        allowed_tools: args.allowed_tools.clone(),
        disallowed_tools: args.disallowed_tools.clone(),
        append_system_prompt: args.append_system_prompt.clone(),
        max_turns: args.max_turns,
        model: args.model.clone(),
        timeout: args.timeout,
    };
    if let Some(remote) = &context.remote {
        return run_remote(remote, &args, &request, context, config).await;
    }
    // Everything that can be refused is, before a session exists.
    let (spec, metadata) = match &args.session {
        Some(_) => (None, None),
        None => {
            let spec = spec_from(&args.create, config, context)?;
            let metadata = metadata_for(&spec.image)?;
            crate::run::argv::check(&metadata, &request).map_err(refused)?;
            super::session_cmd::warn_unless_telemetry_answers(config).await;
            (Some(spec), Some(metadata))
        }
    };
    let target = Target::open(context, config).await?;
    let backend = target.backend.as_ref();
    let (session, metadata) = match (spec, metadata, &args.session) {
        (Some(spec), Some(metadata), _) => {
            let created = backend.create(spec, &Quiet).await?;
            if created.pool && context.remote.is_none() {
                super::session_cmd::refill_after_claim(context, config);
            }
            (created.name, metadata)
        }
        (_, _, Some(id)) => {
            let session = backend.get(id).await?;
            let metadata = metadata_for(&session.image)?;
            crate::run::argv::check(&metadata, &request).map_err(refused)?;
            (session.name, metadata)
        }
        _ => return Err(CliError::Refused("no session to run in".into())),
    };
    let created = args.session.is_none();
    let stream = args.stream;
    let mut stdout = std::io::stdout();
    let mut print_event = |event: &RunEvent| {
        if stream && !matches!(event, RunEvent::Result(_)) {
            print_line(&mut stdout, event);
        }
    };
    let cancel = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let ran = crate::run::run(
        backend,
        target.client_key.clone(),
        &session,
        &metadata,
        &request,
        cancel,
        &mut print_event,
    )
    .await;
    let closed = if created && !args.keep {
        close(backend, &session).await
    } else {
        false
    };
    let mut result = ran?;
    if closed {
        result.session = None;
    }
    report(&result, stream, context.mode.json)?;
    Ok(if result.is_error {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `cubbi -r NAME run`: the service runs it (`POST /v1/runs`), checks it against its own
/// images, and closes a session it made unless `--keep`. Ctrl-C drops the answer, which is
/// how the service learns to stop the agent.
async fn run_remote(
    remote: &str,
    args: &RunArgs,
    request: &RunRequest,
    context: &Context,
    config: &Config,
) -> Result<ExitCode, CliError> {
    let spec = match &args.session {
        Some(_) => None,
        None => Some(spec_from(&args.create, config, context)?),
    };
    let body = crate::remote::runs::run_body(spec, request, args.keep)?;
    let (files, client_key) = user_ssh()?;
    let backend = remote_backend(remote, config, &files, &client_key)?;
    let stream = args.stream;
    let mut stdout = std::io::stdout();
    let mut print_event = |event: &RunEvent| {
        if stream {
            print_line(&mut stdout, event);
        }
    };
    let result = tokio::select! {
        ran = backend.run(args.session.as_deref(), &body, &mut print_event) => ran?,
        _ = tokio::signal::ctrl_c() => {
            return Err(CliError::Refused(
                "stopped (Ctrl-C): the service stops the agent and closes a session it made \
                 for the run"
                    .into(),
            ));
        }
    };
    report(&result, stream, context.mode.json)?;
    Ok(if result.is_error {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn refused(err: crate::run::RequestError) -> CliError {
    CliError::Refused(err.to_string())
}

/// Closes the run's own session; says so when it cannot.
async fn close(backend: &dyn Backend, session: &str) -> bool {
    match backend.close(session).await {
        Ok(_) => true,
        Err(err) => {
            eprintln!(
                "warning: could not close session {session}: {}",
                terminal_safe_lines(&err.to_string())
            );
            false
        }
    }
}

fn print_line(out: &mut impl Write, value: &impl serde::Serialize) {
    if let Ok(line) = serde_json::to_string(value) {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// `--stream`: the result event; `--json`: the result object; else the text on stdout and a
/// summary line on stderr.
fn report(result: &RunResult, stream: bool, json: bool) -> Result<(), CliError> {
    let mut stdout = std::io::stdout();
    if stream {
        print_line(&mut stdout, &RunEvent::Result(result.clone()));
        return Ok(());
    }
    if json {
        print_line(&mut stdout, result);
        return Ok(());
    }
    let text = terminal_safe_lines(&result.result);
    if result.is_error {
        eprintln!("error: {text}");
    } else {
        writeln!(stdout, "{text}")?;
    }
    eprintln!("{}", summary(result));
    Ok(())
}

fn summary(result: &RunResult) -> String {
    let count = |value: Option<u64>| value.map_or("?".to_string(), |n| n.to_string());
    let cost = result
        .total_cost_usd
        .map_or("cost unknown".to_string(), |usd| format!("${usd:.4}"));
    format!(
        "{}: {} turns, {} in / {} out tokens, {cost}, {:.1}s{}",
        if result.is_error { "failed" } else { "done" },
        count(result.num_turns),
        count(result.usage.input_tokens),
        count(result.usage.output_tokens),
        result.duration_ms as f64 / 1000.0,
        result
            .agent_session_id
            .as_ref()
            .map(|id| format!(", resume with --resume {}", terminal_safe_lines(id)))
            .unwrap_or_default(),
    )
}
