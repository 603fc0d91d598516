//! The WebSocket terminal of a real `cubbi serve` into a real session: a PTY through the
//! session's sshd, resize, reattach with the same shell, and refusals before the upgrade.

use std::time::Duration;

use cubbi::api::{Backend, Quiet};
use futures_util::{SinkExt, StreamExt};
use libtest_mimic::{Failed, Trial};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::docker_test;
use crate::support::service::{TestService, user};

pub fn tests() -> Vec<Trial> {
    crate::trials![terminal_runs_a_shell_resizes_and_reattaches_and_refuses_others]
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn open(
    service: &TestService,
    path: &str,
    extra: &[(&str, String)],
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let address = service.url.trim_start_matches("http://").to_string();
    let mut request = format!("ws://{address}{path}").into_client_request()?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "cubbi.tty.v1".parse().expect("a header"),
    );
    for (name, value) in extra {
        request
            .headers_mut()
            .insert(axum_name(name), value.parse().expect("a header value"));
    }
    let tcp = tokio::net::TcpStream::connect(&address).await?;
    Ok(tokio_tungstenite::client_async(request, tcp).await?.0)
}

fn axum_name(name: &str) -> tokio_tungstenite::tungstenite::http::HeaderName {
    tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
        .expect("a header name")
}

async fn ticket(service: &TestService, token: &str, id: &str) -> Result<String, Failed> {
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v1/sessions/{id}/tickets", service.url))
        .bearer_auth(token)
        .json(&json!({"purpose": "terminal"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(answer["ticket"].as_str().ok_or("no ticket")?.to_string())
}

/// Reads terminal output until it contains `wanted`; everything read.
async fn read_until(socket: &mut Socket, wanted: &str) -> Result<String, Failed> {
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(message) = socket.next().await {
            if let Message::Binary(data) = message? {
                seen.push_str(&String::from_utf8_lossy(&data));
                if seen.contains(wanted) {
                    return Ok::<bool, Failed>(true);
                }
            }
        }
        Ok(false)
    })
    .await;
    match found {
        Ok(Ok(true)) => Ok(seen),
        _ => Err(format!("`{wanted}` never came; the terminal showed: {seen:?}").into()),
    }
}

async fn type_line(socket: &mut Socket, line: &str) -> Result<(), Failed> {
    socket
        .send(Message::Binary(format!("{line}\r").into_bytes().into()))
        .await?;
    Ok(())
}

fn status_of(err: tokio_tungstenite::tungstenite::Error) -> Option<u16> {
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => Some(response.status().as_u16()),
        _ => None,
    }
}

fn terminal_runs_a_shell_resizes_and_reattaches_and_refuses_others() -> Result<(), Failed> {
    docker_test("ws-terminal", |scope| async move {
        scope.ensure_image("base").await?;
        let mut service = TestService::start(&scope, |_| {}).await?;
        let alice = service.token(&user(&scope, "alice"), false)?;
        let bob = service.token(&user(&scope, "bob"), false)?;
        let session = service
            .client(&alice)?
            .create(crate::serve::spec("ws-terminal"), &Quiet)
            .await?;
        let id = session.id.clone();
        let path = |ticket: &str| format!("/v1/sessions/{id}/terminal?run=shell&ticket={ticket}");

        let mut socket = open(&service, &path(&ticket(&service, &alice, &id).await?), &[]).await?;
        type_line(&mut socket, "echo $((6*7))").await?;
        read_until(&mut socket, "42\r\n").await?;

        let resize = json!({"type": "resize", "cols": 101, "rows": 33}).to_string();
        socket.send(Message::Text(resize.into())).await?;
        type_line(&mut socket, "stty size").await?;
        read_until(&mut socket, "33 101").await?;

        type_line(&mut socket, "export CUBBI_MARK=kept7").await?;
        type_line(&mut socket, "echo marked_$((2+3))").await?;
        read_until(&mut socket, "marked_5").await?;
        socket.close(None).await?;
        drop(socket);

        // A ticket is spent once.
        let spent = ticket(&service, &alice, &id).await?;
        let first = open(&service, &path(&spent), &[]).await?;
        drop(first);
        let again = open(&service, &path(&spent), &[]).await;
        assert_eq!(again.err().and_then(status_of), Some(401));

        let mut socket = open(&service, &path(&ticket(&service, &alice, &id).await?), &[]).await?;
        type_line(&mut socket, "echo ${CUBBI_MARK}_$((1+1))").await?;
        read_until(&mut socket, "kept7_2").await?;
        drop(socket);

        // Another user's session: 404, no upgrade; a page of another origin: 403.
        let bearer = |token: &str| ("authorization", format!("Bearer {token}"));
        let plain = format!("/v1/sessions/{id}/terminal?run=shell");
        let refused = open(&service, &plain, &[bearer(&bob)]).await;
        assert_eq!(refused.err().and_then(status_of), Some(404));
        let cross = open(
            &service,
            &plain,
            &[bearer(&alice), ("origin", "http://evil.example".into())],
        )
        .await;
        assert_eq!(cross.err().and_then(status_of), Some(403));
        let cookie = open(
            &service,
            &plain,
            &[
                ("cookie", format!("cubbi_access={alice}")),
                ("origin", "http://evil.example".into()),
            ],
        )
        .await;
        assert_eq!(cookie.err().and_then(status_of), Some(403));

        service.client(&alice)?.close(&id).await?;
        service.stop().await?;
        Ok(())
    })
}
