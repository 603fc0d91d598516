//! A russh client that only talks to a host presenting the pinned key, authenticated with the
//! user's cubbi key: the readiness probe, one-off commands and interactive shells.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::BoxStream;
use russh::client::{self, Handle};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::{ChannelMsg, Disconnect};

use super::SshError;
use crate::api::ExecEvent;

/// Where to connect and with which keys.
#[derive(Clone)]
pub struct SshTarget {
    pub address: String,
    pub user: String,
    pub client_key: Arc<PrivateKey>,
    pub host_key: PublicKey,
}

struct PinnedHost {
    expected: PublicKey,
    mismatch: bool,
}

impl client::Handler for PinnedHost {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let matches = matches!(
            offered,
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } if key.key_data() == self.expected.key_data()
        );
        self.mismatch = !matches;
        Ok(matches)
    }

    /// cubbi never requests agent forwarding, so a server that opens an agent channel anyway
    /// is refused (russh's default would accept it).
    async fn server_channel_open_agent_forward(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        drop(reply);
        Ok(())
    }
}

fn client_config() -> Arc<client::Config> {
    Arc::new(client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        ..Default::default()
    })
}

fn pinned(target: &SshTarget) -> PinnedHost {
    PinnedHost {
        expected: target.host_key.clone(),
        mismatch: false,
    }
}

/// An authenticated connection.
pub struct SshSession {
    handle: Handle<PinnedHost>,
}

/// A connection whose key exchange is done and whose host key matched the pin, not yet logged
/// in: a claim opens it while the owner's key is still being copied in, so only the login is
/// left once the key is there.
pub struct KeyExchanged {
    handle: Handle<PinnedHost>,
}

impl KeyExchanged {
    /// Logs in with the target's key, within `timeout`, and closes the connection: `Ok` means
    /// sshd accepted the key.
    pub async fn log_in_once(self, target: &SshTarget, timeout: Duration) -> Result<(), SshError> {
        let session = tokio::time::timeout(timeout, SshSession::log_in(target, Ok(self.handle)))
            .await
            .map_err(|_| SshError::Connection {
                address: target.address.clone(),
                reason: format!("timed out after {:.1}s (no login)", timeout.as_secs_f64()),
            })??;
        tracing::debug!("sshd accepted the key");
        session.close().await;
        Ok(())
    }
}

impl SshSession {
    /// Connects, verifies the pinned host key and logs in, all within `timeout`: a server that
    /// completes the key exchange and then never answers the login cannot hold the caller.
    ///
    /// The client never asks for agent or X11 forwarding: no `agent_forward` or `request_x11`
    /// call exists in cubbi, and the handler refuses a server-opened agent channel (russh's
    /// default would accept one).
    pub async fn connect(target: &SshTarget, timeout: Duration) -> Result<Self, SshError> {
        match tokio::time::timeout(timeout, Self::connect_and_log_in(target)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(SshError::Connection {
                address: target.address.clone(),
                reason: format!(
                    "timed out after {:.1}s (no handshake and login)",
                    timeout.as_secs_f64()
                ),
            }),
        }
    }

    /// [`Self::connect`] over a stream already open to the session's sshd (the WebSocket
    /// tunnel of a service whose SSH ports are not reachable); `target.address` only names it.
    pub async fn connect_stream<S>(
        target: &SshTarget,
        stream: S,
        timeout: Duration,
    ) -> Result<Self, SshError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let over = async {
            let handle = client::connect_stream(client_config(), stream, pinned(target)).await;
            Self::log_in(target, handle).await
        };
        match tokio::time::timeout(timeout, over).await {
            Ok(outcome) => outcome,
            Err(_) => Err(SshError::Connection {
                address: target.address.clone(),
                reason: format!(
                    "timed out after {:.1}s (no handshake and login)",
                    timeout.as_secs_f64()
                ),
            }),
        }
    }

    /// Ends the connection politely.
    async fn close(self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
    }

    /// Connects and verifies the pinned host key within `timeout`, without logging in.
    pub async fn key_exchange(
        target: &SshTarget,
        timeout: Duration,
    ) -> Result<KeyExchanged, SshError> {
        let connect = client::connect(client_config(), target.address.as_str(), pinned(target));
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(handle)) => Ok(KeyExchanged { handle }),
            Ok(Err(russh::Error::UnknownKey)) => Err(SshError::HostKeyMismatch),
            Ok(Err(err)) => Err(SshError::Connection {
                address: target.address.clone(),
                reason: err.to_string(),
            }),
            Err(_) => Err(SshError::Connection {
                address: target.address.clone(),
                reason: format!(
                    "timed out after {:.1}s (no handshake)",
                    timeout.as_secs_f64()
                ),
            }),
        }
    }

    async fn connect_and_log_in(target: &SshTarget) -> Result<Self, SshError> {
        let handle =
            client::connect(client_config(), target.address.as_str(), pinned(target)).await;
        Self::log_in(target, handle).await
    }

    async fn log_in(
        target: &SshTarget,
        handle: Result<Handle<PinnedHost>, russh::Error>,
    ) -> Result<Self, SshError> {
        let connection_error = |reason: String| SshError::Connection {
            address: target.address.clone(),
            reason,
        };
        let mut handle = match handle {
            Err(russh::Error::UnknownKey) => return Err(SshError::HostKeyMismatch),
            Err(err) => return Err(connection_error(err.to_string())),
            Ok(handle) => handle,
        };
        let key = PrivateKeyWithHashAlg::new(target.client_key.clone(), None);
        let auth = handle
            .authenticate_publickey(target.user.clone(), key)
            .await
            .map_err(|err| connection_error(err.to_string()))?;
        if !auth.success() {
            return Err(SshError::AuthenticationRefused(target.user.clone()));
        }
        Ok(Self { handle })
    }

    /// Runs a command (argv, quoted for the remote shell) in `dir` (else the login folder) and
    /// streams its output.
    pub async fn exec(
        self,
        command: &[String],
        dir: Option<&str>,
    ) -> Result<BoxStream<'static, ExecEvent>, SshError> {
        self.exec_with_input(command, dir, None).await
    }

    /// [`Self::exec`], with `input` written to the command's stdin and then closed, so what
    /// it carries never appears in a process listing.
    pub async fn exec_with_input(
        self,
        command: &[String],
        dir: Option<&str>,
        input: Option<&[u8]>,
    ) -> Result<BoxStream<'static, ExecEvent>, SshError> {
        let line = command_line(Some(command), dir);
        let channel =
            self.handle
                .channel_open_session()
                .await
                .map_err(|err| SshError::Connection {
                    address: "session".into(),
                    reason: err.to_string(),
                })?;
        channel
            .exec(true, line)
            .await
            .map_err(|err| SshError::Connection {
                address: "session".into(),
                reason: err.to_string(),
            })?;
        if let Some(input) = input {
            let sent = async {
                channel.data(input).await?;
                channel.eof().await
            };
            sent.await.map_err(|err| SshError::Connection {
                address: "session".into(),
                reason: err.to_string(),
            })?;
        }
        let handle = self.handle;
        let stream = futures_util::stream::unfold(
            (channel, Some(handle), None::<i32>),
            |(mut channel, handle, mut exit)| async move {
                loop {
                    match channel.wait().await {
                        Some(ChannelMsg::Data { data }) => {
                            return Some((
                                ExecEvent::Stdout(data.to_vec()),
                                (channel, handle, exit),
                            ));
                        }
                        Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                            return Some((
                                ExecEvent::Stderr(data.to_vec()),
                                (channel, handle, exit),
                            ));
                        }
                        Some(ChannelMsg::ExitStatus { exit_status }) => {
                            exit = Some(i32::try_from(exit_status).unwrap_or(255));
                        }
                        Some(ChannelMsg::ExitSignal { .. }) => exit = exit.or(Some(255)),
                        Some(_) => {}
                        None => {
                            let handle = handle?;
                            let _ = handle.disconnect(Disconnect::ByApplication, "", "en").await;
                            let code = exit.unwrap_or(255);
                            return Some((ExecEvent::Exit(code), (channel, None, None)));
                        }
                    }
                }
            },
        );
        Ok(Box::pin(stream))
    }

    /// A PTY channel of `cols`x`rows` running `command` (else the login shell), for a caller
    /// that relays it elsewhere (the service's WebSocket terminal). The returned session
    /// must live as long as the channel.
    pub async fn open_pty(
        self,
        cols: u32,
        rows: u32,
        command: Option<&[String]>,
    ) -> Result<(russh::Channel<client::Msg>, Self), SshError> {
        let failed = |err: russh::Error| SshError::Connection {
            address: "session".into(),
            reason: err.to_string(),
        };
        let channel = self.handle.channel_open_session().await.map_err(failed)?;
        channel
            .request_pty(true, "xterm-256color", cols, rows, 0, 0, &[])
            .await
            .map_err(failed)?;
        match command {
            None => channel.request_shell(true).await,
            Some(command) => channel.exec(true, command_line(Some(command), None)).await,
        }
        .map_err(failed)?;
        Ok((channel, self))
    }

    /// An interactive PTY on the user's terminal: raw mode, window resizes, exit status.
    pub async fn interactive(
        self,
        command: Option<&[String]>,
        dir: Option<&str>,
    ) -> Result<i32, SshError> {
        use crossterm::terminal;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let failed = |reason: String| SshError::Connection {
            address: "session".into(),
            reason,
        };
        let mut channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|err| failed(err.to_string()))?;
        let (cols, rows) = terminal::size().unwrap_or((80, 24));
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into());
        channel
            .request_pty(false, &term, u32::from(cols), u32::from(rows), 0, 0, &[])
            .await
            .map_err(|err| failed(err.to_string()))?;
        match (command, dir) {
            (None, None) => channel.request_shell(true).await,
            _ => channel.exec(true, command_line(command, dir)).await,
        }
        .map_err(|err| failed(err.to_string()))?;

        terminal::enable_raw_mode().map_err(|err| SshError::Terminal(err.to_string()))?;
        let _restore = RawModeGuard;
        let mut resized =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
                .map_err(|err| SshError::Terminal(err.to_string()))?;
        let mut stdin = tokio::io::stdin();
        let mut stdout = tokio::io::stdout();
        let mut buffer = vec![0u8; 4096];
        let mut stdin_open = true;
        let mut exit = None;
        loop {
            tokio::select! {
                read = stdin.read(&mut buffer), if stdin_open => match read {
                    Ok(0) | Err(_) => {
                        stdin_open = false;
                        let _ = channel.eof().await;
                    }
                    Ok(n) => {
                        let _ = channel.data_bytes(buffer[..n].to_vec()).await;
                    }
                },
                _ = resized.recv() => {
                    if let Ok((cols, rows)) = terminal::size() {
                        let _ = channel.window_change(u32::from(cols), u32::from(rows), 0, 0).await;
                    }
                }
                message = channel.wait() => match message {
                    Some(ChannelMsg::Data { data }) | Some(ChannelMsg::ExtendedData { data, .. }) => {
                        let _ = stdout.write_all(&data).await;
                        let _ = stdout.flush().await;
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => {
                        exit = Some(i32::try_from(exit_status).unwrap_or(255));
                    }
                    Some(_) => {}
                    None => break,
                },
            }
        }
        self.close().await;
        Ok(exit.unwrap_or(255))
    }
}

struct RawModeGuard;

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// Waits until sshd accepts the key (a full handshake and authentication), retrying with
/// backoff; `still_alive` lets the caller stop early when the container died.
pub async fn wait_until_ready<F, Fut>(
    target: &SshTarget,
    timeout: Duration,
    mut still_alive: F,
) -> Result<(), SshError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(5);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let started = Instant::now();
        let outcome = SshSession::connect(target, remaining.min(Duration::from_secs(5))).await;
        tracing::trace!(
            attempts,
            took_ms = started.elapsed().as_millis() as u64,
            ok = outcome.is_ok(),
            "ssh readiness attempt"
        );
        let last = match outcome {
            Ok(session) => {
                tracing::debug!(attempts, "sshd accepted the key");
                session.close().await;
                return Ok(());
            }
            Err(SshError::HostKeyMismatch) => return Err(SshError::HostKeyMismatch),
            Err(err) => err,
        };
        if Instant::now() >= deadline {
            return Err(SshError::Connection {
                address: target.address.clone(),
                reason: format!(
                    "not ready after {}s ({attempts} attempts): {last}",
                    timeout.as_secs()
                ),
            });
        }
        // Checking the container costs an API call, so only now and then.
        if attempts.is_multiple_of(8) && !still_alive().await {
            return Err(SshError::Connection {
                address: target.address.clone(),
                reason: format!("the container stopped while sshd was starting ({last})"),
            });
        }
        tokio::time::sleep(delay.min(deadline.saturating_duration_since(Instant::now()))).await;
        // A refused attempt costs about a millisecond (docker-proxy or the kernel answers at
        // once), so polling often is cheap and every millisecond here is the user's.
        delay = (delay * 2).min(Duration::from_millis(20));
    }
}

/// The line the session's shell runs: `command` (argv, quoted), or a login shell when there is
/// none, started in `dir` when given.
pub fn command_line(command: Option<&[String]>, dir: Option<&str>) -> String {
    let run = match command {
        Some(argv) => shell_words::join(argv),
        None => "exec \"${SHELL:-/bin/bash}\" -l".to_string(),
    };
    match dir {
        Some(dir) => format!("cd {} && {run}", shell_words::quote(dir)),
        None => run,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_start_in_the_folder_given() {
        let argv = ["echo".to_string(), "a b".to_string()];
        assert_eq!(command_line(Some(&argv), None), "echo 'a b'");
        assert_eq!(
            command_line(Some(&argv), Some("/home/agent/workspace")),
            "cd /home/agent/workspace && echo 'a b'"
        );
        assert_eq!(
            command_line(None, Some("/w s")),
            "cd '/w s' && exec \"${SHELL:-/bin/bash}\" -l"
        );
    }

    /// An SSH server that completes the key exchange and then never answers the login.
    struct StallingLogin;

    impl russh::server::Handler for StallingLogin {
        type Error = russh::Error;

        async fn auth_publickey_offered(
            &mut self,
            _user: &str,
            _offer: russh::server::PublicKeyOffer<'_>,
        ) -> Result<russh::server::Auth, Self::Error> {
            std::future::pending().await
        }
    }

    fn target(address: String, host_key: PublicKey) -> SshTarget {
        SshTarget {
            address,
            user: "agent".into(),
            client_key: Arc::new(crate::ssh::keys::generate("client").unwrap()),
            host_key,
        }
    }

    #[tokio::test]
    async fn a_login_that_never_answers_times_out() {
        let host = crate::ssh::keys::generate("host").unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let config = Arc::new(russh::server::Config {
            keys: vec![host.clone()],
            ..Default::default()
        });
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let config = config.clone();
                tokio::spawn(async move {
                    if let Ok(session) =
                        russh::server::run_stream(config, stream, StallingLogin).await
                    {
                        let _ = session.await;
                    }
                });
            }
        });
        let target = target(address, host.public_key().clone());
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            Duration::from_secs(20),
            SshSession::connect(&target, Duration::from_millis(1500)),
        )
        .await
        .expect("connect must give up by itself within its timeout");
        let Err(err) = outcome else {
            panic!("a stalled login must not succeed")
        };
        assert!(err.to_string().contains("timed out"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_server_that_accepts_and_says_nothing_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream);
            }
        });
        let host = crate::ssh::keys::generate("host").unwrap();
        let target = target(address, host.public_key().clone());
        let started = Instant::now();
        let err = SshSession::connect(&target, Duration::from_millis(500))
            .await
            .err()
            .expect("a silent server must not succeed");
        assert!(err.to_string().contains("timed out"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
        held.abort();
    }
}
