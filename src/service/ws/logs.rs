//! `GET /v1/sessions/{id}/logs/ws`: the follow stream of `GET /v1/sessions/{id}/logs?follow=true`
//! as a WebSocket for the browser. Each text message is one JSON `LogLine`, as the NDJSON
//! lines are; nothing follows an error line. The service pings every 30 s of quiet, so a dead
//! client is found, and the socket counts against the user's open WebSockets.

use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::stream::BoxStream;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;

use super::routes::upgrade_needed;
use super::{MAX_MESSAGE, SOCKETS_PER_USER, admit};
use crate::api::wire::LogLine;
use crate::api::{ApiError, Backend, LogChunk, LogOptions};
use crate::service::http_error::HttpError;
use crate::service::router::{AppState, SessionHost, check_id};
use crate::service::tickets::Purpose;

/// Quiet this long gets a ping (as the NDJSON stream's blank line).
const KEEPALIVE: Duration = Duration::from_secs(30);
/// A client that cannot take a line within this long is given up on.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(in crate::service) struct LogsWsQuery {
    /// A ticket from `POST /v1/sessions/{id}/tickets` (purpose `logs`).
    ticket: Option<String>,
    /// Only the last N lines before following.
    tail: Option<u64>,
}

#[utoipa::path(get, path = "/v1/sessions/{id}/logs/ws", operation_id = "session_logs_ws", tag = "sessions",
    params(("id" = String, Path, description = "Session id or name"), LogsWsQuery),
    security(("token" = [])),
    responses((status = 101, description = "A WebSocket whose text messages are each one JSON LogLine (`{\"text\":...}` or `{\"error\":{...}}`, after which it closes): the session's log, followed until it ends or the client goes"),
        (status = 400, description = "Not a WebSocket request, or a bad query", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid ticket, token or login cookie", body = crate::api::wire::ErrorBody),
        (status = 403, description = "A page of another origin", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No such session of the caller's", body = crate::api::wire::ErrorBody),
        (status = 429, description = "Too many sockets open", body = crate::api::wire::ErrorBody)))]
pub(in crate::service) async fn logs_ws<H: SessionHost>(
    State(state): State<AppState<H>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<LogsWsQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, HttpError> {
    let Path(id) = id?;
    check_id(&id)?;
    let Query(query) = query?;
    let (caller, session) = admit(
        &state,
        &headers,
        query.ticket.as_deref(),
        &id,
        Purpose::Logs,
    )
    .await?;
    let upgrade = upgrade.map_err(upgrade_needed)?;
    let slot = state
        .ws()
        .sockets
        .take(&caller.user, SOCKETS_PER_USER, "WebSockets")?;
    let options = LogOptions {
        follow: true,
        tail: query.tail,
    };
    let chunks = state
        .host()
        .sessions_of(&caller)
        .logs(&session.id, options)
        .await?;
    Ok(upgrade
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            serve(socket, chunks).await;
            drop(slot);
        }))
}

/// Sends each chunk as a JSON line until the log ends, an error was sent, or the client goes.
async fn serve(socket: WebSocket, mut chunks: BoxStream<'static, Result<LogChunk, ApiError>>) {
    let (mut sink, mut incoming) = socket.split();
    loop {
        let line = tokio::select! {
            chunk = tokio::time::timeout(KEEPALIVE, chunks.next()) => match chunk {
                Err(_) => None,
                Ok(None) => break,
                Ok(Some(Ok(chunk))) => Some(LogLine::Text(chunk.text)),
                Ok(Some(Err(err))) => Some(LogLine::Error((&err).into())),
            },
            // The client has nothing to say; its close (or a broken socket) ends the stream.
            message = incoming.next() => match message {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => break,
            },
        };
        let last = matches!(line, Some(LogLine::Error(_)));
        let message = match line {
            None => Message::Ping(Default::default()),
            Some(line) => match serde_json::to_string(&line) {
                Ok(text) => Message::Text(text.into()),
                Err(_) => break,
            },
        };
        let sent = tokio::time::timeout(SEND_TIMEOUT, sink.send(message)).await;
        if !matches!(sent, Ok(Ok(()))) || last {
            break;
        }
    }
    let _ = sink.send(Message::Close(None)).await;
}
