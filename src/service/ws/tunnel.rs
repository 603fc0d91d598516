//! Raw SSH over a WebSocket: binary messages carry the bytes of one TCP connection to the
//! session's sshd, as the service reaches it. The client's own SSH (OpenSSH through
//! `cubbi ssh-proxy`) checks the host key and logs in; the service only relays.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Relays until either side closes, or nothing moves either way for `idle`.
pub async fn relay(mut socket: WebSocket, mut tcp: TcpStream, idle: Duration) {
    let (mut from_sshd, mut to_sshd) = tcp.split();
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        let step = tokio::time::timeout(idle, async {
            tokio::select! {
                message = socket.recv() => match message {
                    Some(Ok(Message::Binary(data))) => to_sshd.write_all(&data).await.is_ok(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => true,
                    // Text has no meaning here; a close or an error ends the tunnel.
                    _ => false,
                },
                read = from_sshd.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => false,
                    Ok(n) => socket
                        .send(Message::Binary(buffer[..n].to_vec().into()))
                        .await
                        .is_ok(),
                },
            }
        })
        .await;
        if !matches!(step, Ok(true)) {
            break;
        }
    }
    // A clean close: the client's own close (or anything it still had in flight) is read
    // before the connection drops, so it sees the end rather than a reset.
    let _ = socket.send(Message::Close(None)).await;
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// How long the end of a tunnel waits for the client's close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
