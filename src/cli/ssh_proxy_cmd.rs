//! `cubbi ssh-proxy [-r NAME] ID`: OpenSSH's `ProxyCommand` for a session of a cubbi service
//! whose SSH ports clients cannot reach. It gets a single-use ticket with the remote's token,
//! opens `GET /v1/sessions/{id}/ssh` and relays stdin and stdout as binary messages. OpenSSH
//! checks the pinned host key and logs in through it as it would over TCP.
//!
//! Stdout carries the SSH stream alone: errors go to stderr, one line, with a non-zero exit.

use std::process::ExitCode;

use super::{CliError, Context};
use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct SshProxyArgs {
    /// The session's id or name.
    pub id: String,
}

pub async fn run(
    args: SshProxyArgs,
    context: &Context,
    config: &Config,
) -> Result<ExitCode, CliError> {
    let Some(remote) = context.remote.as_deref() else {
        return Err(CliError::Refused(
            "ssh-proxy reaches sessions of a cubbi service; give `-r NAME` (see `cubbi remote \
             list`), or set remote.default"
                .into(),
        ));
    };
    let (files, client_key) = super::session_cmd::user_ssh()?;
    let backend = super::session_cmd::remote_backend(remote, config, &files, &client_key)?;
    let tunnel = backend.open_ssh_tunnel(&args.id).await?;
    crate::remote::tunnel::relay(tunnel, tokio::io::stdin(), tokio::io::stdout())
        .await
        .map_err(|err| CliError::Refused(err.to_string()))?;
    Ok(ExitCode::SUCCESS)
}
