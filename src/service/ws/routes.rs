//! The handlers: tickets, the terminal and the SSH tunnel.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::pty::Key;
use super::{IDLE, MAX_MESSAGE, SOCKETS_PER_USER, TERMINALS_PER_USER, admit, tty, tunnel};
use crate::api::{ApiError, Backend, ErrorCode};
use crate::service::auth::Authenticated;
use crate::service::http_error::HttpError;
use crate::service::router::{AppState, SessionHost, check_id};
use crate::service::tickets::{Purpose, TICKET_LIFETIME};
use crate::ssh::client::{SshSession, SshTarget};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketRequest {
    /// What the ticket opens.
    pub purpose: Purpose,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TicketAnswer {
    /// Pass as `?ticket=` on the WebSocket request; good once.
    pub ticket: String,
    /// Seconds the ticket stays good.
    pub expires_in: u64,
}

#[utoipa::path(post, path = "/v1/sessions/{id}/tickets", operation_id = "issue_ticket", tag = "sessions",
    params(("id" = String, Path, description = "Session id or name")),
    request_body = TicketRequest, security(("token" = [])),
    responses((status = 200, description = "A single-use ticket for one WebSocket upgrade to this session, good for 30 s", body = TicketAnswer),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No such session of the caller's", body = crate::api::wire::ErrorBody),
        (status = 429, description = "Too many unused tickets", body = crate::api::wire::ErrorBody)))]
pub(in crate::service) async fn issue_ticket<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<TicketRequest>, JsonRejection>,
) -> Result<Json<TicketAnswer>, HttpError> {
    let Path(id) = id?;
    check_id(&id)?;
    let Json(body) = body?;
    state.host().sessions_of(&caller).get(&id).await?;
    let ticket = state.ws().tickets.issue(&caller, &id, body.purpose)?;
    Ok(Json(TicketAnswer {
        ticket,
        expires_in: TICKET_LIFETIME.as_secs(),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(in crate::service) struct TerminalQuery {
    /// A ticket from `POST /v1/sessions/{id}/tickets` (purpose `terminal`).
    ticket: Option<String>,
    /// `shell` for a login shell; else the image's tool.
    run: Option<String>,
    /// The terminal's first size (a resize message changes it later).
    cols: Option<u32>,
    rows: Option<u32>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(in crate::service) struct SshQuery {
    /// A ticket from `POST /v1/sessions/{id}/tickets` (purpose `ssh`).
    ticket: Option<String>,
}

pub(super) fn upgrade_needed(_: WebSocketUpgradeRejection) -> HttpError {
    HttpError::new(ErrorCode::Invalid, "this route needs a WebSocket upgrade")
        .with_status(axum::http::StatusCode::BAD_REQUEST)
}

#[utoipa::path(get, path = "/v1/sessions/{id}/terminal", operation_id = "open_terminal", tag = "sessions",
    params(("id" = String, Path, description = "Session id or name"), TerminalQuery),
    security(("token" = [])),
    responses((status = 101, description = "A WebSocket of subprotocol `cubbi.tty.v1`: binary messages carry terminal bytes; text messages are JSON controls (`{\"type\":\"resize\",\"cols\":C,\"rows\":R}`, `{\"type\":\"ping\"}`; from the service `{\"type\":\"pong\"}` and `{\"type\":\"exit\",\"code\":N}`). Reconnecting within 5 minutes reattaches to the same PTY with its recent output."),
        (status = 400, description = "Not a WebSocket request of subprotocol cubbi.tty.v1", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid ticket, token or login cookie", body = crate::api::wire::ErrorBody),
        (status = 403, description = "A page of another origin", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No such session of the caller's", body = crate::api::wire::ErrorBody),
        (status = 429, description = "Too many terminals or sockets open", body = crate::api::wire::ErrorBody),
        (status = 503, description = "The session's sshd cannot be reached", body = crate::api::wire::ErrorBody)))]
pub(in crate::service) async fn terminal<H: SessionHost>(
    State(state): State<AppState<H>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<TerminalQuery>, QueryRejection>,
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
        Purpose::Terminal,
    )
    .await?;
    let upgrade = upgrade.map_err(upgrade_needed)?;
    let offered = headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|name| name.trim() == tty::PROTOCOL);
    if !offered {
        return Err(HttpError::new(
            ErrorCode::Invalid,
            "the terminal speaks subprotocol `cubbi.tty.v1`; offer it in Sec-WebSocket-Protocol",
        ));
    }
    let shell = match query.run.as_deref() {
        None | Some("tool") => session.command.is_empty(),
        Some("shell") => true,
        Some(_) => {
            return Err(ApiError::invalid("`run` is `shell` or `tool`".to_string()).into());
        }
    };
    let socket_slot = state
        .ws()
        .sockets
        .take(&caller.user, SOCKETS_PER_USER, "WebSockets")?;
    let key = Key {
        user: caller.user.clone(),
        session: session.id.clone(),
        shell,
    };
    let terminals = &state.ws().terminals;
    let attached = match terminals.attach(&key) {
        Some(attached) => attached,
        None => {
            if terminals.count_of(&caller.user) >= TERMINALS_PER_USER {
                return Err(ApiError::Quota(format!(
                    "you have {TERMINALS_PER_USER} terminals open, as many as this service allows \
                     per user; exit one first"
                ))
                .into());
            }
            let cols = query.cols.unwrap_or(80).clamp(1, 1000);
            let rows = query.rows.unwrap_or(24).clamp(1, 1000);
            let command = (!shell).then(|| session.command.clone());
            let ssh = log_in(&state, &caller, &session.id).await?;
            let (channel, ssh) = ssh
                .open_pty(cols, rows, command.as_deref())
                .await
                .map_err(|err| ApiError::unavailable(err.to_string()))?;
            terminals
                .start(key, channel, ssh, IDLE)
                .ok_or_else(|| ApiError::unavailable("the terminal ended at once".to_string()))?
        }
    };
    Ok(upgrade
        .protocols([tty::PROTOCOL])
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            tty::serve(socket, attached, IDLE).await;
            drop(socket_slot);
        }))
}

/// Logs in to the session's sshd as its agent user with the service's key, checking the
/// pinned host key.
async fn log_in<H: SessionHost>(
    state: &AppState<H>,
    caller: &crate::service::store::Caller,
    id: &str,
) -> Result<SshSession, HttpError> {
    let key: Arc<russh::keys::PrivateKey> = state.host().run_key().ok_or_else(|| {
        ApiError::unavailable("this service has no key to log in to sessions with".to_string())
    })?;
    let public_key = crate::ssh::keys::public_openssh(key.public_key())
        .map_err(|err| ApiError::unavailable(err.to_string()))?;
    let backend = state.host().sessions_of(caller);
    let found = backend.connect(id, &public_key).await?;
    let host_key = crate::ssh::keys::parse_public(&found.ssh.host_key)
        .map_err(|err| ApiError::unavailable(format!("the session's host key: {err}")))?;
    let target = SshTarget {
        address: format!("{}:{}", found.ssh.host, found.ssh.port),
        user: found.ssh.user.clone(),
        client_key: key,
        host_key,
    };
    Ok(SshSession::connect(&target, Duration::from_secs(10))
        .await
        .map_err(|err| ApiError::unavailable(err.to_string()))?)
}

#[utoipa::path(get, path = "/v1/sessions/{id}/ssh", operation_id = "open_ssh_tunnel", tag = "sessions",
    params(("id" = String, Path, description = "Session id or name"), SshQuery),
    security(("token" = [])),
    responses((status = 101, description = "A WebSocket whose binary messages carry the bytes of one TCP connection to the session's sshd (what `cubbi ssh-proxy` relays for OpenSSH)"),
        (status = 400, description = "Not a WebSocket request", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid ticket, token or login cookie", body = crate::api::wire::ErrorBody),
        (status = 403, description = "A page of another origin", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No such session of the caller's", body = crate::api::wire::ErrorBody),
        (status = 429, description = "Too many sockets open", body = crate::api::wire::ErrorBody),
        (status = 503, description = "The session's sshd cannot be reached", body = crate::api::wire::ErrorBody)))]
pub(in crate::service) async fn ssh<H: SessionHost>(
    State(state): State<AppState<H>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<SshQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, HttpError> {
    let Path(id) = id?;
    check_id(&id)?;
    let Query(query) = query?;
    let (caller, session) =
        admit(&state, &headers, query.ticket.as_deref(), &id, Purpose::Ssh).await?;
    let upgrade = upgrade.map_err(upgrade_needed)?;
    let slot = state
        .ws()
        .sockets
        .take(&caller.user, SOCKETS_PER_USER, "WebSockets")?;
    let address = format!("{}:{}", session.ssh.host, session.ssh.port);
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(&address),
    )
    .await
    .map_err(|_| ApiError::unavailable("the session's sshd did not answer".to_string()))?
    .map_err(|err| ApiError::unavailable(format!("the session's sshd: {err}")))?;
    let _ = tcp.set_nodelay(true);
    Ok(upgrade
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            tunnel::relay(socket, tcp, IDLE).await;
            drop(slot);
        }))
}
