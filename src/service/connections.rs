//! The service's connections: how many may be open at once, how long a client may take to send
//! its request head, and the serve loop that enforces both.
//!
//! Without these an unauthenticated client that opens connections and says nothing holds a file
//! descriptor each for as long as it likes; about a thousand of them made `accept` fail with
//! `EMFILE`, and nobody else got an answer. Here every connection (a TLS handshake in progress
//! included) holds a permit of one semaphore, the accept loop waits for a free permit instead
//! of running out of descriptors, and a connection whose request head is not complete within
//! the header timeout is closed, which frees its permit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// A share of the connection cap, held for as long as the connection is open.
pub type ConnectionPermit = OwnedSemaphorePermit;

/// The cap on open connections, shared by the accept loop and the TLS handshakes.
#[derive(Clone, Debug)]
pub struct ConnectionGate {
    permits: Arc<Semaphore>,
    cap: u32,
}

impl ConnectionGate {
    pub fn new(max_connections: usize) -> Self {
        // The semaphore counts in u32 when acquiring many; the config caps far below that.
        let cap = u32::try_from(max_connections.max(1)).unwrap_or(u32::MAX >> 3);
        Self {
            permits: Arc::new(Semaphore::new(cap as usize)),
            cap,
        }
    }

    /// Returns once no connection holds a permit.
    async fn all_closed(&self) {
        let _all = self.permits.acquire_many(self.cap).await;
    }

    /// Waits until fewer than the cap are open. Never fails: the semaphore is never closed.
    pub async fn admit(&self) -> ConnectionPermit {
        loop {
            if let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await {
                return permit;
            }
        }
    }
}

/// Where the serve loop takes its connections from: plain TCP or finished TLS handshakes.
pub trait Acceptor: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection and the permit it holds.
    fn accept(
        &mut self,
    ) -> impl std::future::Future<Output = (Self::Io, SocketAddr, ConnectionPermit)> + Send;
}

/// Plain HTTP: a TCP listener behind the gate.
pub struct PlainAcceptor {
    listener: TcpListener,
    gate: ConnectionGate,
}

impl PlainAcceptor {
    pub fn new(listener: TcpListener, gate: ConnectionGate) -> Self {
        Self { listener, gate }
    }
}

impl Acceptor for PlainAcceptor {
    type Io = TcpStream;

    async fn accept(&mut self) -> (TcpStream, SocketAddr, ConnectionPermit) {
        let permit = self.gate.admit().await;
        let (stream, peer) = accept_tcp(&self.listener).await;
        (stream, peer, permit)
    }
}

/// The next TCP connection, riding out errors that concern one peer or a passing shortage.
pub async fn accept_tcp(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            // The peer gave up before we got to it: nothing wrong with the listener.
            Err(err) if is_connection_error(&err) => continue,
            Err(err) => {
                // Out of file descriptors and the like: retrying at once would spin.
                tracing::error!("accepting a connection failed: {err}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn is_connection_error(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Serves `app` on the connections `acceptor` yields until `stopping` turns true, then lets
/// open requests and streams end for at most `grace` (streams are told to end through the same
/// `stopping`). The gate is the one `acceptor` admits through: when all its permits are back,
/// every connection is closed.
pub async fn serve<A: Acceptor>(
    mut acceptor: A,
    gate: ConnectionGate,
    app: axum::Router,
    header_timeout: Duration,
    stopping: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let mut stopped = stopping.clone();
    loop {
        let (io, peer, permit) = tokio::select! {
            accepted = acceptor.accept() => accepted,
            () = stopped_signal(&mut stopped) => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let mut stop = stopping.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = stopped_signal(&mut stop) => {
                    // Finish the request in flight, then close (idle ones close at once).
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = ended {
                // A header timeout or a peer that went away: its own business.
                tracing::debug!(%peer, "connection ended: {err}");
            }
            drop(permit);
        });
    }
    tracing::info!("stopping: no new connections; streams are ending");
    drop(acceptor);
    if tokio::time::timeout(grace, gate.all_closed())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open after {}s; exiting anyway",
            grace.as_secs()
        );
    }
}

/// Returns once `stop` turns true (or its sender is gone), holding no borrow of the value.
async fn stopped_signal(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await.map(|_| ());
}

/// Raises this process's soft limit on open files to its hard limit, so the connection cap,
/// not the descriptor table, is what bounds connections. Returns the limit in force.
pub fn raise_open_files_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_gate_admits_no_more_than_its_cap_and_again_when_one_closes() {
        let gate = ConnectionGate::new(2);
        let first = gate.admit().await;
        let _second = gate.admit().await;
        let third = tokio::time::timeout(Duration::from_millis(50), gate.admit()).await;
        assert!(
            third.is_err(),
            "a third connection was admitted past a cap of 2"
        );
        drop(first);
        let again = tokio::time::timeout(Duration::from_millis(500), gate.admit()).await;
        assert!(
            again.is_ok(),
            "a closed connection's permit was not given back"
        );
    }

    #[test]
    fn a_cap_of_zero_still_admits_one() {
        let gate = ConnectionGate::new(0);
        assert_eq!(gate.permits.available_permits(), 1);
    }
}
