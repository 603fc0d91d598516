//! Agent runs: one prompt in, one normalised JSON result out. The image's `[headless]` section
//! makes the tool's argv ([`argv`]), the tool runs in a session over SSH with the prompt on its
//! stdin (never in argv), and a per-tool parser ([`parse`]) turns what it prints into
//! [`RunEvent`]s and a [`RunResult`]. Front ends (the CLI, the service) call [`run`].

pub mod argv;
pub mod parse;
mod types;

pub use argv::RequestError;
pub use types::{RunEvent, RunRequest, RunResult, Usage};

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use russh::keys::PrivateKey;

use crate::api::{ApiError, Backend, ExecEvent};
use crate::images::metadata::ImageMetadata;
use crate::ssh::client::{SshSession, SshTarget};

/// Runs in the session: keeps the prompt (stdin) in a private folder, starts the tool in a
/// process group of its own reading it, records the group for [`STOP`], and cleans up.
const WRAPPER: &str = r#"d="$1"; shift
umask 077
mkdir "$d" || exit 125
cat > "$d/prompt" || exit 125
cd "$HOME/workspace" 2>/dev/null || cd "$HOME"
setsid "$@" < "$d/prompt" &
echo $! > "$d/pid"
wait $!
code=$?
rm -rf "$d"
exit $code"#;

/// The tool metadata of a cubbi image, by its name (`claude-code`) or tag
/// (`cubbi-claude-code`): what the CLI and the service read the `[headless]` section from.
pub fn tool_metadata(image: &str) -> Result<ImageMetadata, ApiError> {
    let name = image.strip_prefix("cubbi-").unwrap_or(image);
    let catalog =
        crate::images::Catalog::embedded().map_err(|err| ApiError::unavailable(err.to_string()))?;
    let found = catalog.get(name).map_err(|_| {
        ApiError::invalid(format!(
            "image `{image}` is no cubbi tool image, so it has no headless mode to run"
        ))
    })?;
    Ok(found.metadata.clone())
}

/// Stops a run's process group (TERM, then KILL), whatever the tool's children are. (dash's
/// `kill` takes no `--`.)
const STOP: &str = r#"pid=$(cat "$1/pid" 2>/dev/null) || exit 0
kill -TERM "-$pid" 2>/dev/null
for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "-$pid" 2>/dev/null || break; sleep 0.5; done
kill -KILL "-$pid" 2>/dev/null
rm -rf "$1"
exit 0"#;

/// Bytes of the tool's stderr kept to explain a failure.
const STDERR_KEPT: usize = 16 * 1024;

/// Runs `request` with the tool of `metadata` in the ready session `session`, reporting each
/// event to `on_event` as it arrives, and returns the result (also the last event). The run
/// stops early, with an error result, on `request.timeout` or when `cancel` completes.
///
/// The tool runs over SSH as the session's user, logged in with `client_key` (which
/// `backend.connect` authorizes), so the session's environment file reaches it.
pub async fn run(
    backend: &dyn Backend,
    client_key: Arc<PrivateKey>,
    session: &str,
    metadata: &ImageMetadata,
    request: &RunRequest,
    cancel: impl Future<Output = ()>,
    on_event: &mut (dyn FnMut(&RunEvent) + Send),
) -> Result<RunResult, ApiError> {
    let headless = argv::headless(metadata).map_err(|err| ApiError::invalid(err.to_string()))?;
    let dir = format!("/tmp/cubbi-run-{:016x}", rand::random::<u64>());
    let tool_argv = argv::build(metadata, request, &format!("{dir}/prompt"))
        .map_err(|err| ApiError::invalid(err.to_string()))?;
    let public_key = crate::ssh::keys::public_openssh(client_key.public_key())
        .map_err(|err| ApiError::unavailable(err.to_string()))?;
    let found = backend.connect(session, &public_key).await?;
    let host_key = crate::ssh::keys::parse_public(&found.ssh.host_key)
        .map_err(|err| ApiError::unavailable(format!("the session's host key: {err}")))?;
    let target = SshTarget {
        address: format!("{}:{}", found.ssh.host, found.ssh.port),
        user: found.ssh.user.clone(),
        client_key,
        host_key,
    };
    let ssh = SshSession::connect(&target, Duration::from_secs(10))
        .await
        .map_err(|err| ApiError::unavailable(err.to_string()))?;
    let mut command = vec![
        "sh".to_string(),
        "-c".into(),
        WRAPPER.into(),
        "cubbi-run".into(),
        dir.clone(),
    ];
    command.extend(tool_argv);
    let started = Instant::now();
    let mut output = ssh
        .exec_with_input(&command, None, Some(request.prompt.as_bytes()))
        .await
        .map_err(|err| ApiError::unavailable(err.to_string()))?;
    let mut parser = parse::Parser::new(headless.output);
    let mut pending = Vec::new();
    let mut stderr = Vec::new();
    let mut exit = None;
    let read = async {
        while let Some(event) = output.next().await {
            match event {
                ExecEvent::Stdout(data) => {
                    pending.extend_from_slice(&data);
                    while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=end).collect();
                        for event in parser.line(String::from_utf8_lossy(&line).trim_end()) {
                            on_event(&event);
                        }
                    }
                }
                ExecEvent::Stderr(data) => {
                    stderr.extend_from_slice(&data);
                    let excess = stderr.len().saturating_sub(STDERR_KEPT);
                    stderr.drain(..excess);
                }
                ExecEvent::Exit(code) => exit = Some(code),
            }
        }
    };
    let timeout = async {
        match request.timeout {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    let stopped = tokio::select! {
        () = read => None,
        () = timeout => Some(format!(
            "timed out after {}s; the agent was stopped",
            request.timeout.unwrap_or_default().as_secs_f64()
        )),
        () = cancel => Some("interrupted; the agent was stopped".to_string()),
    };
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut result = match stopped {
        None => {
            if !pending.is_empty() {
                for event in parser.line(String::from_utf8_lossy(&pending).trim_end()) {
                    on_event(&event);
                }
            }
            parser.finish(
                exit.unwrap_or(255),
                &String::from_utf8_lossy(&stderr),
                elapsed_ms,
            )
        }
        Some(reason) => {
            stop(backend, session, &dir).await;
            RunResult {
                result: reason,
                is_error: true,
                duration_ms: elapsed_ms,
                ..parser.finish(0, "", elapsed_ms)
            }
            .stopped()
        }
    };
    result.session = Some(found.name);
    on_event(&RunEvent::Result(result.clone()));
    Ok(result)
}

impl RunResult {
    /// A run cubbi stopped has no exit code.
    fn stopped(mut self) -> Self {
        self.exit_code = None;
        self
    }
}

/// Stops the run whose folder is `dir` (best effort: the session may be gone already).
async fn stop(backend: &dyn Backend, session: &str, dir: &str) {
    let command = vec![
        "sh".to_string(),
        "-c".into(),
        STOP.into(),
        "cubbi-stop".into(),
        dir.to_string(),
    ];
    if let Ok(mut events) = backend.exec(session, command).await {
        let drained = async { while events.next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(15), drained).await;
    }
}
