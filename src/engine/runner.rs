//! External programs (ip, iptables, groupadd, usermod, apt-get, docker) behind one trait, so the
//! setup steps are tested by recording the commands they would run.

use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// What a finished program printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

pub trait CommandRunner: Send + Sync {
    /// Runs `program args…` to completion; a non-zero exit is an `Ok` with `success: false`.
    fn output(&self, program: &str, args: &[&str]) -> Result<CommandOutput, CommandError>;

    /// Like [`output`](Self::output), with `input` on the program's stdin (how the firewall's
    /// `iptables-restore` payload is handed over).
    fn output_with_input(
        &self,
        program: &str,
        args: &[&str],
        input: &str,
    ) -> Result<CommandOutput, CommandError>;

    /// Runs it and turns a non-zero exit into an error carrying its stderr.
    fn run(&self, program: &str, args: &[&str]) -> Result<CommandOutput, CommandError> {
        check(program, args, self.output(program, args)?)
    }
}

/// A non-zero exit as an error carrying its stderr.
pub fn check(
    program: &str,
    args: &[&str],
    output: CommandOutput,
) -> Result<CommandOutput, CommandError> {
    if output.success {
        Ok(output)
    } else {
        Err(CommandError::Failed {
            command: command_line(program, args),
            status: "non-zero exit".into(),
            stderr: output.stderr.trim().to_string(),
        })
    }
}

/// The command line as a person would type it (for messages and `--dry-run`).
pub fn command_line(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .map(|word| {
            if word.is_empty() || word.contains(|c: char| c.is_whitespace() || c == '\'') {
                format!("'{}'", word.replace('\'', r"'\''"))
            } else {
                word.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs programs for real.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn output(&self, program: &str, args: &[&str]) -> Result<CommandOutput, CommandError> {
        tracing::debug!(command = %command_line(program, args), "running");
        let output = Command::new(program)
            .args(args)
            .output()
            .map_err(|source| CommandError::Spawn {
                command: command_line(program, args),
                source,
            })?;
        Ok(CommandOutput {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    fn output_with_input(
        &self,
        program: &str,
        args: &[&str],
        input: &str,
    ) -> Result<CommandOutput, CommandError> {
        tracing::debug!(command = %command_line(program, args), "running with input");
        let spawn_error = |source| CommandError::Spawn {
            command: command_line(program, args),
            source,
        };
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        if let Some(mut stdin) = child.stdin.take() {
            // A program that exits early closes its stdin; its exit status says why.
            let _ = stdin.write_all(input.as_bytes());
        }
        let output = child.wait_with_output().map_err(spawn_error)?;
        Ok(CommandOutput {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

#[cfg(test)]
pub mod fake {
    use std::sync::Mutex;

    use super::*;

    /// Records every command; answers from a list of (command prefix, output) rules, else success.
    #[derive(Default)]
    pub struct RecordingRunner {
        pub ran: Mutex<Vec<String>>,
        /// What was handed to each command that got stdin, with its command line.
        pub inputs: Mutex<Vec<(String, String)>>,
        pub answers: Vec<(String, CommandOutput)>,
    }

    impl RecordingRunner {
        pub fn answering(mut self, prefix: &str, success: bool, stdout: &str) -> Self {
            self.answers.push((
                prefix.to_string(),
                CommandOutput {
                    success,
                    stdout: stdout.to_string(),
                    stderr: if success {
                        String::new()
                    } else {
                        "refused".into()
                    },
                },
            ));
            self
        }

        pub fn commands(&self) -> Vec<String> {
            self.ran.lock().map(|ran| ran.clone()).unwrap_or_default()
        }

        pub fn inputs(&self) -> Vec<(String, String)> {
            self.inputs
                .lock()
                .map(|inputs| inputs.clone())
                .unwrap_or_default()
        }
    }

    impl CommandRunner for RecordingRunner {
        fn output(&self, program: &str, args: &[&str]) -> Result<CommandOutput, CommandError> {
            let line = command_line(program, args);
            if let Ok(mut ran) = self.ran.lock() {
                ran.push(line.clone());
            }
            Ok(self
                .answers
                .iter()
                .find(|(prefix, _)| line.starts_with(prefix.as_str()))
                .map(|(_, output)| output.clone())
                .unwrap_or(CommandOutput {
                    success: true,
                    ..Default::default()
                }))
        }

        fn output_with_input(
            &self,
            program: &str,
            args: &[&str],
            input: &str,
        ) -> Result<CommandOutput, CommandError> {
            if let Ok(mut inputs) = self.inputs.lock() {
                inputs.push((command_line(program, args), input.to_string()));
            }
            self.output(program, args)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_a_shell_line() {
        assert_eq!(
            command_line("ip", &["link", "add", "a b"]),
            "ip link add 'a b'"
        );
    }

    #[test]
    fn a_failing_program_is_an_error_with_its_stderr() {
        let err = SystemRunner
            .run("sh", &["-c", "echo nope >&2; exit 3"])
            .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let err = SystemRunner.run("/nonexistent/program", &[]).unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }), "{err}");
    }
}
