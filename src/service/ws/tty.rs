//! The `cubbi.tty.v1` WebSocket protocol: binary messages carry terminal bytes both ways;
//! text messages are small JSON control messages.
//!
//! From the page: `{"type":"resize","cols":C,"rows":R}` (1..=1000 each) and
//! `{"type":"ping"}` (keepalive, answered `{"type":"pong"}`).
//! From the service: `{"type":"exit","code":N}` when the program in the PTY ended, then a
//! close. On connect the service first sends the recent output it kept (a reattach), as
//! binary.

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use super::pty::{Attached, Input};

/// The subprotocol name.
pub const PROTOCOL: &str = "cubbi.tty.v1";
/// The largest terminal size taken.
const MAX_SIDE: u32 = 1000;

#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Control {
    Resize { cols: u32, rows: u32 },
    Ping,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Notice {
    Pong,
    Exit { code: i32 },
}

impl Control {
    fn parse(text: &str) -> Option<Self> {
        let control: Self = serde_json::from_str(text).ok()?;
        match control {
            Self::Resize { cols, rows }
                if !(1..=MAX_SIDE).contains(&cols) || !(1..=MAX_SIDE).contains(&rows) =>
            {
                None
            }
            fine => Some(fine),
        }
    }
}

fn notice(notice: &Notice) -> Message {
    Message::Text(serde_json::to_string(notice).unwrap_or_default().into())
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// Serves one attached page until it leaves, goes quiet past `idle`, or the PTY ends.
pub async fn serve(mut socket: WebSocket, mut attached: Attached, idle: std::time::Duration) {
    if !attached.replay.is_empty() {
        let replay = std::mem::take(&mut attached.replay);
        if socket.send(Message::Binary(replay.into())).await.is_err() {
            return;
        }
    }
    let mut exit = attached.pty.exit();
    loop {
        tokio::select! {
            message = tokio::time::timeout(idle, socket.recv()) => {
                let message = match message {
                    Err(_) => {
                        let _ = socket.send(close(1000, "idle")).await;
                        return;
                    }
                    Ok(Some(Ok(message))) => message,
                    Ok(_) => return,
                };
                let input = match message {
                    Message::Binary(data) => Input::Data(data.to_vec()),
                    Message::Text(text) => match Control::parse(text.as_str()) {
                        Some(Control::Resize { cols, rows }) => Input::Resize { cols, rows },
                        Some(Control::Ping) => {
                            if socket.send(notice(&Notice::Pong)).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        None => {
                            let _ = socket.send(close(1008, "unknown control message")).await;
                            return;
                        }
                    },
                    Message::Close(_) => return,
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                if attached.pty.input().send(input).await.is_err() {
                    return;
                }
            }
            output = attached.live.recv() => match output {
                Ok(data) => {
                    if socket.send(Message::Binary(data)).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    // Reconnecting replays the ring: better than a gap in the middle.
                    let _ = socket.send(close(1013, "fell behind; reconnect")).await;
                    return;
                }
                Err(RecvError::Closed) => {
                    let _ = exit.wait_for(Option::is_some).await;
                    let code = (*exit.borrow()).unwrap_or(255);
                    let _ = socket.send(notice(&Notice::Exit { code })).await;
                    let _ = socket.send(close(1000, "ended")).await;
                    return;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_are_parsed_and_bounded() {
        assert_eq!(
            Control::parse(r#"{"type":"resize","cols":120,"rows":40}"#),
            Some(Control::Resize {
                cols: 120,
                rows: 40
            })
        );
        assert_eq!(Control::parse(r#"{"type":"ping"}"#), Some(Control::Ping));
        assert_eq!(
            Control::parse(r#"{"type":"resize","cols":0,"rows":40}"#),
            None
        );
        assert_eq!(
            Control::parse(r#"{"type":"resize","cols":5000,"rows":40}"#),
            None
        );
        assert_eq!(Control::parse(r#"{"type":"resize","cols":80}"#), None);
        assert_eq!(Control::parse(r#"{"type":"shutdown"}"#), None);
        assert_eq!(Control::parse("not json"), None);
    }
}
