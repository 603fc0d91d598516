//! The session API: what a session is, what creating one takes, and the one backend trait
//! every front end talks to (the local Docker endpoint, or a cubbi service over HTTP).

mod error;
mod types;
pub mod wire;

pub use error::{ApiError, ErrorCode};
pub use types::*;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

/// Reports what a long operation is doing, for progress displays.
pub trait Progress: Send + Sync {
    fn step(&self, step: CreateStep);
    /// The session exists from here on (its name and port are held), though it is not ready.
    fn reserved(&self, _session: &Session) {}
    /// Something the user should know once (not a failure).
    fn notice(&self, _message: &str) {}
}

/// A progress sink that shows nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn step(&self, _step: CreateStep) {}
}

/// The single entry point to sessions, whatever the transport.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Creates a session and returns once its SSH server accepts the user's key.
    async fn create(&self, spec: SessionSpec, progress: &dyn Progress)
    -> Result<Session, ApiError>;
    async fn list(&self) -> Result<Vec<Session>, ApiError>;
    /// Finds one session by a unique prefix of its id or its name.
    async fn get(&self, id_or_name: &str) -> Result<Session, ApiError>;
    /// Shuts a running session down cleanly (systemd's halt) and keeps its container, port
    /// and host key: it reads `stopped`. A session that is not running is refused.
    async fn stop(&self, id_or_name: &str) -> Result<Session, ApiError>;
    /// Boots a stopped session again on the same port with the same pinned host key, and
    /// returns once sshd proves that key. A running session is refused.
    async fn start(&self, id_or_name: &str) -> Result<Session, ApiError>;
    /// Commits a session's container as a snapshot of the caller's named `name` (else
    /// `SESSION-UNIXTIME`): a stopped session as it is, a running one frozen for the commit.
    async fn snapshot(&self, id_or_name: &str, name: Option<String>) -> Result<Snapshot, ApiError>;
    /// The caller's snapshots (every owner's for a service's admin).
    async fn snapshots(&self) -> Result<Vec<Snapshot>, ApiError>;
    /// Removes a snapshot by its exact name; one a session runs from is refused.
    async fn remove_snapshot(&self, name: &str) -> Result<Snapshot, ApiError>;
    /// The owner's agent data volume (the tools' logins and settings) as a checked tar, paths
    /// relative to the volume; only `image`'s folder when given.
    async fn export_data(&self, image: Option<&str>) -> Result<(Vec<u8>, DataSummary), ApiError>;
    /// Checks `archive` entry by entry (no absolute paths, `..`, links out or device files,
    /// within the size limit) and writes it into the owner's data volume; refused whole.
    async fn import_data(&self, archive: Vec<u8>) -> Result<DataSummary, ApiError>;
    /// Stops the sessions that have been idle past their `--idle-stop` limit. Where the
    /// checking is someone else's (a service checks its own sessions), nothing.
    async fn stop_idle(&self) -> Result<Vec<IdleStopped>, ApiError> {
        Ok(Vec::new())
    }
    /// Changes a running session's egress allow-list without a restart: `deny` rules taken
    /// away, then `allow` rules added. An open session (or one held to `none`) is refused.
    async fn change_egress(
        &self,
        id_or_name: &str,
        change: crate::egress::EgressChange,
    ) -> Result<EgressView, ApiError>;
    /// Stops and removes a session; its data volume stays.
    async fn close(&self, id_or_name: &str) -> Result<Session, ApiError>;
    /// What the session's units and agent print (the container's console).
    async fn logs(
        &self,
        id_or_name: &str,
        options: LogOptions,
    ) -> Result<BoxStream<'static, Result<LogChunk, ApiError>>, ApiError>;
    /// Lets `public_key` log in to a ready session as the agent user and says where to reach it.
    async fn connect(&self, id_or_name: &str, public_key: &str) -> Result<Session, ApiError>;
    /// Runs a command in the session as the agent user, streaming its output.
    async fn exec(
        &self,
        id_or_name: &str,
        command: Vec<String>,
    ) -> Result<BoxStream<'static, Result<ExecEvent, ApiError>>, ApiError>;
}

/// Refuses an exec without a command, the same way on every backend.
pub fn require_command(command: &[String]) -> Result<(), ApiError> {
    if command.is_empty() {
        return Err(ApiError::invalid(
            "give a command to run, e.g. `cubbi session exec NAME -- ls`",
        ));
    }
    Ok(())
}
