//! `GET /healthz` on the service, as setup (waiting for it to come up) and doctor (once) ask
//! it. Plain HTTP/1.1 over a TCP stream: the service listens on loopback without TLS, and this
//! keeps the probe free of an HTTP client's TLS setup.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long setup waits for a freshly started service to answer.
pub const SETUP_WAIT: Duration = Duration::from_secs(20);

/// How long one probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// An answer larger than this is not a health answer.
const MAX_ANSWER: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("nothing answers on {address}: {source}")]
    Connect {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("http://{address}/healthz did not answer within {seconds} s")]
    Timeout { address: SocketAddr, seconds: u64 },
    #[error("reading http://{address}/healthz failed: {source}")]
    Io {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("http://{address}/healthz answered `{status_line}`, not 200 with status ok")]
    Unhealthy {
        address: SocketAddr,
        status_line: String,
    },
}

/// One `GET /healthz`: Ok when it answers 200 with `"status":"ok"` in the body.
pub async fn probe(address: SocketAddr, timeout: Duration) -> Result<(), HealthError> {
    let answer = tokio::time::timeout(timeout, fetch(address))
        .await
        .map_err(|_| HealthError::Timeout {
            address,
            seconds: timeout.as_secs(),
        })??;
    let status_line = answer.lines().next().unwrap_or_default().trim().to_string();
    let ok_status = status_line
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code == "200");
    let body: String = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if ok_status && body.contains(r#""status":"ok""#) {
        Ok(())
    } else {
        Err(HealthError::Unhealthy {
            address,
            status_line,
        })
    }
}

async fn fetch(address: SocketAddr) -> Result<String, HealthError> {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|source| HealthError::Connect { address, source })?;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    let io = |source| HealthError::Io { address, source };
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .await
        .map_err(io)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Probes until the service answers healthy or `wait` has passed; the last error otherwise.
pub async fn wait_healthy(address: SocketAddr, wait: Duration) -> Result<(), HealthError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match probe(
            address,
            PROBE_TIMEOUT.min(left.max(Duration::from_millis(100))),
        )
        .await
        {
            Ok(()) => return Ok(()),
            Err(err) if tokio::time::Instant::now() >= deadline => return Err(err),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-connection server answering `answer` to whatever it is sent.
    async fn serve_once(answer: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            if let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        address
    }

    #[tokio::test]
    async fn a_200_with_status_ok_is_healthy() {
        let address = serve_once(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 33\r\n\r\n\
             {\"status\":\"ok\",\"version\":\"0.1.0\"}",
        )
        .await;
        probe(address, Duration::from_secs(2)).await.unwrap();
    }

    #[tokio::test]
    async fn anything_else_is_not() {
        let address =
            serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n{\"status\":\"ok\"}").await;
        let err = probe(address, Duration::from_secs(2)).await.unwrap_err();
        assert!(err.to_string().contains("503"), "{err}");
        let address = serve_once("HTTP/1.1 200 OK\r\n\r\n{\"status\":\"starting\"}").await;
        assert!(probe(address, Duration::from_secs(2)).await.is_err());
    }

    #[tokio::test]
    async fn waiting_gives_up_with_the_last_error() {
        // A port nothing listens on: bind, note it, let it go.
        let address = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = wait_healthy(address, Duration::from_millis(600))
            .await
            .unwrap_err();
        assert!(matches!(err, HealthError::Connect { .. }), "{err}");
    }
}
