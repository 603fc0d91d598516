//! HTTPS for `cubbi serve` when `server.tls_cert` and `server.tls_key` are set: the identity
//! from the PEM files, and an [`axum::serve::Listener`] that hands axum finished TLS streams.
//!
//! Handshakes run on their own tasks, off the accept loop: a client that opens a connection
//! and then says nothing (or dribbles bytes) must not keep everyone else from connecting.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::config::ServerSettings;
use super::connections::{Acceptor, ConnectionGate, ConnectionPermit, accept_tcp};

/// How long a client gets to finish the TLS handshake before its connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the serve loop to pick them up; it accepts in a tight loop, so
/// this only fills if the server is stuck, and then handshake tasks wait instead of piling up.
const READY_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{path} is readable by group or others, so the private key in it may have leaked; \
         run `chmod 600 {path}` (and consider a new key)"
    )]
    KeyNotPrivate { path: PathBuf },
    #[error("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("{path} is not a readable PEM certificate file: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    // The reason is ours, never the parser's text: that could quote lines of the key.
    #[error("{path} is not a readable PEM private key: {reason}")]
    BadKey { path: PathBuf, reason: &'static str },
    #[error("{cert} and {key} do not make a usable TLS identity: {reason}")]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// The acceptor for `settings`, or `None` when the service serves plain HTTP.
pub fn acceptor_from_settings(settings: &ServerSettings) -> Result<Option<TlsAcceptor>, TlsError> {
    match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => acceptor(cert, key).map(Some),
        // The config's validation refuses one without the other; plain HTTP is what it meant.
        _ => Ok(None),
    }
}

/// A TLS acceptor for the certificate chain in `cert` and the private key in `key`.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain = load_certs(cert)?;
    let private_key = load_key(key)?;
    let identity = |reason: String| TlsError::Identity {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason,
    };
    // The provider is named rather than installed process-wide: reqwest (in the same binary)
    // picks its own, and an explicit one keeps both on aws-lc-rs without a global to race on.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| identity(err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|err| identity(err.to_string()))?;
    // axum's server speaks HTTP/1.1 here; offering h2 would need its http2 feature.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The certificate chain in `path`, leaf first.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |source: io::Error| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| match err {
            rustls::pki_types::pem::Error::Io(source) => read_error(source),
            other => TlsError::BadCertificate {
                path: path.to_path_buf(),
                reason: other.to_string(),
            },
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| match err {
            rustls::pki_types::pem::Error::Io(source) => read_error(source),
            other => TlsError::BadCertificate {
                path: path.to_path_buf(),
                reason: other.to_string(),
            },
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The private key in `path`, refused when others may have read it.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let metadata = std::fs::metadata(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if metadata.permissions().mode() & 0o077 != 0 {
        return Err(TlsError::KeyNotPrivate {
            path: path.to_path_buf(),
        });
    }
    PrivateKeyDer::from_pem_file(path).map_err(|err| match err {
        rustls::pki_types::pem::Error::Io(source) => TlsError::Read {
            path: path.to_path_buf(),
            source,
        },
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::BadKey {
            path: path.to_path_buf(),
            reason: "no PRIVATE KEY block (PKCS#8, PKCS#1 or SEC1) in it",
        },
        _ => TlsError::BadKey {
            path: path.to_path_buf(),
            reason: "malformed PEM",
        },
    })
}

/// A finished handshake, with the share of the connection cap it has held since its TCP accept.
type Ready = (TlsStream<TcpStream>, SocketAddr, ConnectionPermit);

/// Accepts TCP on a background task and yields connections whose TLS handshake finished. A
/// connection holds its permit from the TCP accept on, so handshakes in progress count
/// against the connection cap too.
pub struct TlsListener {
    ready: mpsc::Receiver<Ready>,
    accepting: AbortHandle,
}

impl TlsListener {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor, gate: ConnectionGate) -> Self {
        let (sender, ready) = mpsc::channel(READY_QUEUE);
        let accepting = tokio::spawn(accept_loop(listener, acceptor, gate, sender)).abort_handle();
        Self { ready, accepting }
    }
}

impl Drop for TlsListener {
    /// The serve loop drops the listener when it stops; the TCP socket lives in the accept
    /// task, so that task must end too or the port would keep taking connections.
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    gate: ConnectionGate,
    ready: mpsc::Sender<Ready>,
) {
    loop {
        let permit = gate.admit().await;
        let (tcp, peer) = accept_tcp(&listener).await;
        if ready.is_closed() {
            return;
        }
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    // Fails only once the server is gone; the connection just closes.
                    let _ = ready.send((stream, peer, permit)).await;
                }
                Ok(Err(err)) => tracing::debug!(%peer, "TLS handshake failed: {err}"),
                Err(_) => tracing::debug!(
                    %peer,
                    "TLS handshake not done after {}s; dropped",
                    HANDSHAKE_TIMEOUT.as_secs()
                ),
            }
        });
    }
}

impl Acceptor for TlsListener {
    type Io = TlsStream<TcpStream>;

    async fn accept(&mut self) -> Ready {
        match self.ready.recv().await {
            Some(connection) => connection,
            None => {
                // The accept task holds a sender until it ends, and it ends only if it
                // panicked; the serve loop has no way to hear of an error here, so stop
                // taking new ones.
                tracing::error!("the TLS accept task is gone; no new connections");
                std::future::pending().await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn a_key_readable_by_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = write(
            dir.path(),
            "key.pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            0o640,
        );
        let err = load_key(&key).expect_err("a group-readable key");
        assert!(matches!(err, TlsError::KeyNotPrivate { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&key.display().to_string()), "{message}");
        assert!(message.contains("chmod 600"), "{message}");
    }

    #[test]
    fn a_garbage_key_error_does_not_quote_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = write(dir.path(), "key.pem", "secret-material-here\n", 0o600);
        let message = load_key(&key).expect_err("no key in it").to_string();
        assert!(message.contains(&key.display().to_string()), "{message}");
        assert!(!message.contains("secret-material"), "{message}");
    }

    #[test]
    fn a_missing_cert_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.pem");
        let err = load_certs(&missing).expect_err("missing");
        assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.pem"), "{err}");
    }

    #[test]
    fn a_garbage_cert_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = write(dir.path(), "cert.pem", "not a certificate\n", 0o644);
        let message = load_certs(&cert).expect_err("garbage").to_string();
        assert!(message.contains(&cert.display().to_string()), "{message}");
        assert!(message.contains("no PEM certificate"), "{message}");

        let broken = write(
            dir.path(),
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!notbase64!!!\n-----END CERTIFICATE-----\n",
            0o644,
        );
        let message = load_certs(&broken).expect_err("bad base64").to_string();
        assert!(message.contains("broken.pem"), "{message}");
    }

    #[test]
    fn plain_http_settings_need_no_acceptor() {
        let settings = ServerSettings::default();
        assert!(acceptor_from_settings(&settings).expect("no tls").is_none());
    }
}
