//! The client side of `GET /v1/sessions/{id}/ssh`: a single-use ticket, the WebSocket (over
//! TLS for an `https` service, trusting the system's roots and `$CUBBI_CA_CERT` as the HTTP
//! client does), and a relay between it and a byte stream: stdin and stdout for
//! `cubbi ssh-proxy` (OpenSSH's `ProxyCommand`), an in-memory pipe for `cubbi session connect`.
//!
//! Everything the service sends is hostile: messages are bounded, a text message or a broken
//! frame ends the tunnel with one readable error, and nothing the service says reaches the
//! output but the bytes of binary messages.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use super::client::RemoteBackend;
use crate::api::ApiError;
use crate::api::wire::ErrorBody;

/// A byte stream a WebSocket can run over (TCP, or TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open tunnel to a session's sshd.
pub type Tunnel = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

/// The largest message or frame taken from the service (it sends at most 32 KiB at a time).
const MAX_MESSAGE: usize = 256 * 1024;
/// How long the ticket, the connection and the upgrade may take together.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// The most read from the input at once (one binary message).
const CHUNK: usize = 32 * 1024;
/// The longest ticket taken from the service (it issues 43 characters).
const MAX_TICKET: usize = 256;

#[derive(serde::Deserialize)]
struct TicketAnswer {
    ticket: String,
}

/// Why a tunnel did not open or broke.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("the cubbi service `{service}` refused the SSH tunnel: {reason}")]
    Refused { service: String, reason: String },
    #[error("cannot open the SSH tunnel through the cubbi service `{service}`: {reason}")]
    Open { service: String, reason: String },
    #[error("the SSH tunnel broke: {0}")]
    Broken(String),
}

impl From<TunnelError> for ApiError {
    fn from(err: TunnelError) -> Self {
        ApiError::unavailable(err.to_string())
    }
}

impl RemoteBackend {
    /// A single-use `ssh` ticket for the session, then the WebSocket to its sshd.
    pub async fn open_ssh_tunnel(&self, id: &str) -> Result<Tunnel, ApiError> {
        let path = Self::session_path(id)?;
        let opened = async {
            let answer: TicketAnswer = self
                .json(
                    self.request(Method::POST, &format!("{path}/tickets"))
                        .json(&serde_json::json!({"purpose": "ssh"})),
                )
                .await?;
            let ticket = answer.ticket;
            if ticket.is_empty()
                || ticket.len() > MAX_TICKET
                || !ticket
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            {
                return Err(self
                    .open_error("it sent a ticket this client refuses to use")
                    .into());
            }
            Ok(self.upgrade(&format!("{path}/ssh?ticket={ticket}")).await?)
        };
        tokio::time::timeout(OPEN_TIMEOUT, opened)
            .await
            .map_err(|_| self.open_error(&format!("no tunnel within {OPEN_TIMEOUT:?}")))?
    }

    fn open_error(&self, reason: &str) -> TunnelError {
        TunnelError::Open {
            service: self.name().to_string(),
            reason: reason.to_string(),
        }
    }

    /// Connects to the service (TLS for `https`) and upgrades `path` to a WebSocket.
    async fn upgrade(&self, path: &str) -> Result<Tunnel, TunnelError> {
        let base = reqwest::Url::parse(self.url())
            .map_err(|err| self.open_error(&format!("its URL: {err}")))?;
        let secure = match base.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(self.open_error(&format!("its URL has scheme `{other}`"))),
        };
        // `host_str` keeps an IPv6 address in brackets, as the authority wants it.
        let authority_host = base
            .host_str()
            .ok_or_else(|| self.open_error("its URL has no host"))?
            .to_string();
        let host = authority_host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = base
            .port_or_known_default()
            .ok_or_else(|| self.open_error("its URL has no port"))?;
        let authority = format!("{authority_host}:{port}");
        let url = format!(
            "{}://{authority}{}{path}",
            if secure { "wss" } else { "ws" },
            base.path().trim_end_matches('/'),
        );
        let mut request = url
            .into_client_request()
            .map_err(|err| self.open_error(&err.to_string()))?;
        request.headers_mut().insert(
            tungstenite::http::header::USER_AGENT,
            tungstenite::http::HeaderValue::from_static(concat!(
                "cubbi/",
                env!("CARGO_PKG_VERSION")
            )),
        );
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|err| self.open_error(&format!("{authority}: {err}")))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Io> = if secure {
            let connector = tokio_rustls::TlsConnector::from(Arc::new(
                tls_config().map_err(|reason| self.open_error(&reason))?,
            ));
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|err| self.open_error(&format!("{host}: {err}")))?;
            Box::new(
                connector
                    .connect(name, tcp)
                    .await
                    .map_err(|err| self.open_error(&format!("TLS with {authority}: {err}")))?,
            )
        } else {
            Box::new(tcp)
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        match tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await {
            Ok((socket, _)) => Ok(socket),
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status();
                let message = response
                    .body()
                    .as_deref()
                    .and_then(|body| serde_json::from_slice::<ErrorBody>(body).ok())
                    .map(|body| body.error.message)
                    .unwrap_or_else(|| format!("it answered {status}"));
                Err(TunnelError::Refused {
                    service: self.name().to_string(),
                    reason: message,
                })
            }
            Err(err) => Err(self.open_error(&err.to_string())),
        }
    }
}

/// The roots a tunnel trusts: the system's and those in `$CUBBI_CA_CERT`, as
/// [`super::http_client`] trusts for the HTTP requests.
fn tls_config() -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = std::env::var_os(super::CA_CERT_ENV).filter(|value| !value.is_empty()) {
        let path = std::path::PathBuf::from(path);
        let certs = crate::service::tls::load_certs(&path)
            .map_err(|err| format!("{err} (from {})", super::CA_CERT_ENV))?;
        for cert in certs {
            roots.add(cert).map_err(|err| {
                format!("{} (from {}): {err}", path.display(), super::CA_CERT_ENV)
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Relays bytes between `input`/`output` and the tunnel until the service closes it (Ok)
/// or something breaks. The end of `input` closes the tunnel: OpenSSH is done with it.
pub async fn relay<R, W>(tunnel: Tunnel, mut input: R, mut output: W) -> Result<(), TunnelError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = tunnel.split();
    let mut buffer = vec![0u8; CHUNK];
    let mut input_open = true;
    loop {
        tokio::select! {
            read = input.read(&mut buffer), if input_open => match read {
                Ok(0) | Err(_) => {
                    input_open = false;
                    // The service ends its side on the close; its answer ends the loop.
                    if sink.send(Message::Close(None)).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(n) => sink
                    .send(Message::Binary(buffer[..n].to_vec().into()))
                    .await
                    .map_err(|err| TunnelError::Broken(err.to_string()))?,
            },
            message = stream.next() => match message {
                None | Some(Ok(Message::Close(_))) => return Ok(()),
                Some(Ok(Message::Binary(data))) => {
                    let written = async {
                        output.write_all(&data).await?;
                        output.flush().await
                    };
                    if written.await.is_err() {
                        // The reader (OpenSSH) went away: nothing is left to carry.
                        return Ok(());
                    }
                }
                // tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Text(_) | Message::Frame(_))) => {
                    return Err(TunnelError::Broken(
                        "the service sent a message that is not SSH bytes".into(),
                    ));
                }
                Some(Err(tungstenite::Error::ConnectionClosed)) => return Ok(()),
                // Once this side closed, how the service ends the connection does not matter.
                Some(Err(_)) if !input_open => return Ok(()),
                Some(Err(err)) => return Err(TunnelError::Broken(err.to_string())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;

    /// A tunnel whose far end is a WebSocket server the test drives as a hostile service.
    async fn pair() -> (Tunnel, WebSocketStream<tokio::io::DuplexStream>) {
        let (near, far) = tokio::io::duplex(1 << 20);
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let client = WebSocketStream::from_raw_socket(
            Box::new(near) as Box<dyn Io>,
            Role::Client,
            Some(config),
        )
        .await;
        let server = WebSocketStream::from_raw_socket(far, Role::Server, None).await;
        (client, server)
    }

    #[tokio::test]
    async fn bytes_go_both_ways_and_a_close_ends_it_cleanly() {
        let (client, mut server) = pair().await;
        let (mut input, input_far) = tokio::io::duplex(1024);
        let (output_far, mut output) = tokio::io::duplex(1024);
        let relay = tokio::spawn(relay(client, input_far, output_far));
        input.write_all(b"SSH-2.0-client\r\n").await.unwrap();
        match server.next().await {
            Some(Ok(Message::Binary(data))) => assert_eq!(&data[..], b"SSH-2.0-client\r\n"),
            other => panic!("the service got {other:?}"),
        }
        server
            .send(Message::Binary(b"SSH-2.0-server\r\n".to_vec().into()))
            .await
            .unwrap();
        let mut line = [0u8; 16];
        output.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"SSH-2.0-server\r\n");
        server.close(None).await.unwrap();
        assert!(relay.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_text_message_or_an_oversized_one_is_refused_and_never_written() {
        for hostile in [
            Message::Text("\u{1b}]0;owned\u{7}".into()),
            Message::Binary(vec![0u8; MAX_MESSAGE + 1].into()),
        ] {
            let (client, mut server) = pair().await;
            let (_input, input_far) = tokio::io::duplex(1024);
            let (output_far, mut output) = tokio::io::duplex(4 * MAX_MESSAGE);
            let relay = tokio::spawn(relay(client, input_far, output_far));
            let _ = server.send(hostile).await;
            let err = relay.await.unwrap().unwrap_err();
            assert!(matches!(err, TunnelError::Broken(_)), "{err}");
            let mut written = Vec::new();
            output.read_to_end(&mut written).await.unwrap();
            assert!(written.is_empty(), "nothing reached the output");
        }
    }

    #[tokio::test]
    async fn the_end_of_the_input_closes_the_tunnel() {
        let (client, mut server) = pair().await;
        let (input, input_far) = tokio::io::duplex(1024);
        let (output_far, _output) = tokio::io::duplex(1024);
        let relay = tokio::spawn(relay(client, input_far, output_far));
        drop(input);
        assert!(matches!(server.next().await, Some(Ok(Message::Close(_)))));
        drop(server);
        assert!(relay.await.unwrap().is_ok());
    }
}
