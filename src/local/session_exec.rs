//! Commands cubbi itself runs inside a session (reading its status files, authorizing a key),
//! bounded in time and in bytes read.
//!
//! Root in a session controls everything such a command runs: one user replaced `/usr/bin/sh`
//! in their own session, and a single status read grew the service by 600 MB in 6 s; another
//! that never exits would hold the request (and an admin's list or close) for ever. So every
//! exec cubbi makes into a session goes through [`run_bounded`], which stops reading past
//! `max_output` and gives up after `timeout`.

use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecResults};
use futures_util::StreamExt;

use super::docker_api::DockerApi;

/// How much a command cubbi runs in a session may print, and how long it may take.
#[derive(Debug, Clone, Copy)]
pub struct ExecBounds {
    pub max_output: usize,
    pub timeout: Duration,
}

impl ExecBounds {
    /// For reading the session's small status files (one line each).
    pub const STATUS: Self = Self {
        max_output: 4096,
        timeout: Duration::from_secs(5),
    };
    /// For writing a key to authorized_keys (prints nothing when it works).
    pub const AUTHORIZE: Self = Self {
        max_output: 4096,
        timeout: Duration::from_secs(15),
    };
    /// For applying a claim to a pool member (cubbi-init's pass over the uploaded files).
    pub const CLAIM: Self = Self {
        max_output: 16 * 1024,
        timeout: Duration::from_secs(60),
    };
}

/// What a bounded command printed on stdout and its exit code.
#[derive(Debug)]
pub struct Captured {
    pub stdout: String,
    pub exit_code: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionExecError {
    #[error("{0}")]
    Docker(#[from] bollard::errors::Error),
    #[error("it did not finish within {} s", .0.as_secs())]
    TimedOut(Duration),
    #[error("it printed more than {0} bytes")]
    TooMuchOutput(usize),
}

/// Runs `command` in container `id` as `user` (the image's default when `None`), reading at
/// most `bounds.max_output` bytes of its stdout and stderr within `bounds.timeout`.
pub async fn run_bounded(
    docker: &dyn DockerApi,
    id: &str,
    command: Vec<&str>,
    user: Option<&str>,
    bounds: ExecBounds,
) -> Result<Captured, SessionExecError> {
    run_bounded_with_input(docker, id, command, user, None, bounds).await
}

/// [`run_bounded`], with `input` written to the command's stdin (which is then closed).
pub async fn run_bounded_with_input(
    docker: &dyn DockerApi,
    id: &str,
    command: Vec<&str>,
    user: Option<&str>,
    input: Option<Vec<u8>>,
    bounds: ExecBounds,
) -> Result<Captured, SessionExecError> {
    let run = async {
        let exec = docker
            .create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(command.into_iter().map(String::from).collect()),
                    user: user.map(String::from),
                    attach_stdin: Some(input.is_some()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await?;
        let mut stdout = Vec::new();
        if let StartExecResults::Attached {
            mut output,
            input: mut stdin,
        } = docker.start_exec(&exec.id).await?
        {
            let write = async {
                if let Some(bytes) = &input {
                    use tokio::io::AsyncWriteExt;
                    // A command that exits without reading it all is seen by its exit code.
                    if stdin.write_all(bytes).await.is_ok() {
                        let _ = stdin.shutdown().await;
                    }
                }
            };
            let read = async {
                let mut read = 0usize;
                while let Some(chunk) = output.next().await {
                    let chunk = chunk?;
                    read += chunk.as_ref().len();
                    if read > bounds.max_output {
                        // Dropping the stream closes the attach; the command gets EPIPE.
                        return Err(SessionExecError::TooMuchOutput(bounds.max_output));
                    }
                    if let bollard::container::LogOutput::StdOut { message } = chunk {
                        stdout.extend_from_slice(&message);
                    }
                }
                Ok(())
            };
            let ((), read) = tokio::join!(write, read);
            read?;
        }
        let exit_code = docker.inspect_exec(&exec.id).await?.exit_code;
        Ok(Captured {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            exit_code,
        })
    };
    tokio::time::timeout(bounds.timeout, run)
        .await
        .map_err(|_| SessionExecError::TimedOut(bounds.timeout))?
}
