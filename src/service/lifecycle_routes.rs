//! Stop and start over HTTP: `POST /v1/sessions/{id}/stop` and `/start`. Like a close, they
//! take the caller's session by its exact name or id, never a prefix; another user's session
//! is a 404. Each runs on a task of its own, so a client that goes away cannot leave a start
//! half-done (the container renamed for booting but never proven ready).

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;

use super::auth::Authenticated;
use super::http_error::HttpError;
use super::router::{AppState, SessionHost, check_id, exact_session};
use super::store::Caller;
use crate::api::{ApiError, Backend, ErrorCode, Session};

#[derive(Clone, Copy)]
enum Change {
    Stop,
    Start,
}

#[utoipa::path(post, path = "/v1/sessions/{id}/stop", operation_id = "stop_session", tag = "sessions",
    params(("id" = String, Path, description = "The session's exact name, its full id or its 12-character short id; never a prefix")),
    security(("token" = [])),
    responses((status = 200, description = "Stopped cleanly; its container, port and host key are kept", body = Session),
        (status = 400, description = "Bad id", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No such session of the caller's", body = crate::api::wire::ErrorBody),
        (status = 409, description = "The session is not running", body = crate::api::wire::ErrorBody),
        (status = 500, description = "It did not shut down cleanly (it is not running)", body = crate::api::wire::ErrorBody)))]
pub(super) async fn stop<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<Session>, HttpError> {
    change(state, caller, id, headers, Change::Stop).await
}

#[utoipa::path(post, path = "/v1/sessions/{id}/start", operation_id = "start_session", tag = "sessions",
    params(("id" = String, Path, description = "The session's exact name, its full id or its 12-character short id; never a prefix")),
    security(("token" = [])),
    responses((status = 200, description = "Booted on the same port; sshd proved the same pinned host key", body = Session),
        (status = 400, description = "Bad id", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No such session of the caller's", body = crate::api::wire::ErrorBody),
        (status = 409, description = "The session is running already, or its port is taken", body = crate::api::wire::ErrorBody),
        (status = 500, description = "It did not come back; it is left as it is", body = crate::api::wire::ErrorBody)))]
pub(super) async fn start<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<Session>, HttpError> {
    change(state, caller, id, headers, Change::Start).await
}

async fn change<H: SessionHost>(
    state: AppState<H>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    change: Change,
) -> Result<Json<Session>, HttpError> {
    let Path(id) = id?;
    check_id(&id)?;
    let sessions = state.host().sessions_of(&caller);
    let listed = sessions.list().await?;
    let target = exact_session(&listed, &id).ok_or_else(|| ApiError::Service {
        code: ErrorCode::NotFound,
        message: format!(
            "no session is named `{id}` or has that id; stop and start take a session's exact \
             name or id, never a prefix (`cubbi session list` shows them)"
        ),
    })?;
    let host = state.host_arc();
    let task = tokio::spawn(async move {
        let changed = match change {
            Change::Stop => sessions.stop(&target).await,
            Change::Start => sessions.start(&target).await,
        };
        // Refreshed whatever the outcome: a failed start may have left it running.
        host.changed(&target).await;
        changed
    });
    let session = task
        .await
        .map_err(|err| HttpError::new(ErrorCode::Internal, err.to_string()))??;
    Ok(Json(state.publish(session, &headers)))
}
