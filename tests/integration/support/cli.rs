//! Runs the real `cubbi` binary with a private HOME, in the style of `Cubbi::new(&home)
//! .args(["config", "get", "x"]).run().success().stdout_is("...")`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A throwaway HOME, XDG_CONFIG_HOME and XDG_DATA_HOME, so tests never see the developer's
/// config or projects.
pub struct TestHome {
    dir: tempfile::TempDir,
}

impl TestHome {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temp dir for HOME"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_file(&self) -> PathBuf {
        self.path().join(".config/cubbi/config.toml")
    }
}

pub struct Cubbi {
    command: Command,
    stdin: Option<Vec<u8>>,
}

impl Cubbi {
    /// Runs in the home folder, as a user who just logged in: a `session create` without a
    /// PATH is refused there unless it passes `--no-mount` (or a test changes the folder).
    pub fn new(home: &TestHome) -> Self {
        Self::with_command(home, Command::new(env!("CARGO_BIN_EXE_cubbi")))
    }

    /// The same, in the network namespace `netns` (a path under /run/netns): through
    /// `nsenter --net`, which keeps the cgroup mounts that `ip netns exec` hides.
    pub fn in_network_namespace(home: &TestHome, netns: &Path) -> Self {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", netns.display()))
            .arg(env!("CARGO_BIN_EXE_cubbi"));
        Self::with_command(home, command)
    }

    fn with_command(home: &TestHome, mut command: Command) -> Self {
        command
            .current_dir(home.path())
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join(".config"))
            .env("XDG_DATA_HOME", home.path().join(".local/share"))
            .env_remove("CUBBI_PROJECT_KEY")
            .env_remove("CUBBI_DOCKER_HOST")
            .env_remove("RUST_LOG")
            // A developer's own keyring stays out of the tests; the keyring tests start one
            // of their own and name its bus.
            .env_remove("DBUS_SESSION_BUS_ADDRESS");
        Self {
            command,
            stdin: None,
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.command.args(args);
        self
    }

    /// Runs in `dir` instead of the home folder.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.command.current_dir(dir);
        self
    }

    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Self {
        self.command.arg(arg);
        self
    }

    /// The command as configured, for tests that attach it to something else (a terminal).
    pub fn into_command(self) -> Command {
        self.command
    }

    /// Runs without waiting, for tests that interrupt a command.
    pub fn spawn(mut self) -> std::process::Child {
        self.command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the cubbi binary starts")
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    /// [`Self::run`] on the blocking pool, for async tests that keep a service going meanwhile.
    pub async fn run_async(self) -> Result<Ran, libtest_mimic::Failed> {
        tokio::task::spawn_blocking(move || self.run())
            .await
            .map_err(|err| libtest_mimic::Failed::from(err.to_string()))
    }

    pub fn run(mut self) -> Ran {
        use std::io::Write;
        self.command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.command.spawn().expect("the cubbi binary runs");
        let input = self.stdin.take().unwrap_or_default();
        if let Some(mut pipe) = child.stdin.take() {
            let _ = pipe.write_all(&input);
        }
        Ran {
            output: child.wait_with_output().expect("cubbi finishes"),
            description: format!("{:?}", self.command),
        }
    }
}

/// A finished `cubbi` run with assertions that print everything on failure.
pub struct Ran {
    pub output: Output,
    description: String,
}

impl Ran {
    /// The exit code (`None` when a signal ended the process).
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    fn report(&self) -> String {
        format!(
            "{}\nexit: {:?}\nstdout:\n{}\nstderr:\n{}",
            self.description,
            self.output.status.code(),
            self.stdout(),
            self.stderr()
        )
    }

    #[track_caller]
    pub fn success(self) -> Self {
        assert!(
            self.output.status.success(),
            "expected success: {}",
            self.report()
        );
        self
    }

    #[track_caller]
    pub fn failure(self) -> Self {
        assert!(
            !self.output.status.success(),
            "expected failure: {}",
            self.report()
        );
        assert!(
            !self.stderr().contains("panicked"),
            "cubbi panicked: {}",
            self.report()
        );
        self
    }

    #[track_caller]
    pub fn stdout_is(self, expected: &str) -> Self {
        assert_eq!(self.stdout(), expected, "{}", self.report());
        self
    }

    #[track_caller]
    pub fn stdout_contains(self, needle: &str) -> Self {
        assert!(
            self.stdout().contains(needle),
            "stdout lacks {needle:?}: {}",
            self.report()
        );
        self
    }

    #[track_caller]
    pub fn stdout_lacks(self, needle: &str) -> Self {
        assert!(
            !self.stdout().contains(needle),
            "stdout has {needle:?}: {}",
            self.report()
        );
        self
    }

    #[track_caller]
    pub fn stderr_lacks(self, needle: &str) -> Self {
        assert!(
            !self.stderr().contains(needle),
            "stderr has {needle:?}: {}",
            self.report()
        );
        self
    }

    #[track_caller]
    pub fn stderr_contains(self, needle: &str) -> Self {
        assert!(
            self.stderr().contains(needle),
            "stderr lacks {needle:?}: {}",
            self.report()
        );
        self
    }
}
