//! Stop and start over HTTP: `POST /v1/sessions/{id}/stop` and `/start` (and `/egress`, a
//! live change of the allow-list, checked against the service's `[egress]`). Like a close, they
//! take the caller's session by its exact name or id, never a prefix; another user's session
//! is a 404. Each runs on a task of its own, so a client that goes away cannot leave a start
//! half-done (the container renamed for booting but never proven ready).

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};

use super::auth::Authenticated;
use super::http_error::HttpError;
use super::router::{AppState, SessionHost, check_id, exact_session};
use super::store::Caller;
use crate::api::wire::SnapshotRequest;
use crate::api::{ApiError, Backend, EgressView, ErrorCode, Session, Snapshot};
use crate::egress::EgressChange;

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

#[utoipa::path(post, path = "/v1/sessions/{id}/egress", operation_id = "change_session_egress", tag = "sessions",
    params(("id" = String, Path, description = "The session's exact name, its full id or its 12-character short id; never a prefix")),
    request_body = EgressChange, security(("token" = [])),
    responses((status = 200, description = "The policy in force now; the resolver applies it within a second, without a restart", body = EgressView),
        (status = 400, description = "Bad id or names, nothing to change, or a name outside the service's [egress] rules (`egress_domain`)", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No such session of the caller's", body = crate::api::wire::ErrorBody),
        (status = 409, description = "The session is open or held to `none`: only an allow-list takes names", body = crate::api::wire::ErrorBody)))]
pub(super) async fn change_egress<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<EgressChange>, JsonRejection>,
) -> Result<Json<EgressView>, HttpError> {
    let Path(id) = id?;
    check_id(&id)?;
    let Json(change) = body?;
    change.check()?;
    state.policy().egress.check_change(&change)?;
    let sessions = state.host().sessions_of(&caller);
    let target = exact_target(&sessions, &id, "egress changes").await?;
    Ok(Json(sessions.change_egress(&target, change).await?))
}

/// The full id of the caller's session named exactly `id` (or with that full or short id).
async fn exact_target(sessions: &impl Backend, id: &str, what: &str) -> Result<String, ApiError> {
    let listed = sessions.list().await?;
    exact_session(&listed, id).ok_or_else(|| ApiError::Service {
        code: ErrorCode::NotFound,
        message: format!(
            "no session is named `{id}` or has that id; {what} take a session's exact name or \
             id, never a prefix (`cubbi session list` shows them)"
        ),
    })
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
    let target = exact_target(&sessions, &id, "stop and start").await?;
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

#[utoipa::path(post, path = "/v1/sessions/{id}/snapshot", operation_id = "snapshot_session", tag = "snapshots",
    params(("id" = String, Path, description = "The session's exact name, its full id or its 12-character short id; never a prefix")),
    request_body = SnapshotRequest, security(("token" = [])),
    responses((status = 201, description = "Committed: as it was when stopped, frozen for the commit when running", body = Snapshot),
        (status = 400, description = "Bad id or name", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No such session of the caller's", body = crate::api::wire::ErrorBody),
        (status = 409, description = "A snapshot of that name exists, or the session is being created", body = crate::api::wire::ErrorBody),
        (status = 429, description = "The caller keeps limits.snapshots_per_user snapshots", body = crate::api::wire::ErrorBody)))]
pub(super) async fn snapshot<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<SnapshotRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Snapshot>), HttpError> {
    let Path(id) = id?;
    check_id(&id)?;
    let Json(request) = body?;
    let sessions = state.host().sessions_of(&caller);
    let target = exact_target(&sessions, &id, "snapshots").await?;
    // Counted as the user's own, admin or not: an admin's view lists everyone's.
    let own = Caller {
        user: caller.user.clone(),
        admin: false,
    };
    let kept = state.host().sessions_of(&own).snapshots().await?.len();
    let limit = state.policy().snapshots_per_user;
    if kept >= limit {
        return Err(ApiError::Quota(format!(
            "you keep {kept} snapshots and this service allows {limit} per user \
             (limits.snapshots_per_user); remove one first (`cubbi -r NAME snapshot rm`)"
        ))
        .into());
    }
    // On its own task: a client that goes away must not leave a session paused.
    let made = tokio::spawn(async move { sessions.snapshot(&target, request.name).await })
        .await
        .map_err(|err| HttpError::new(ErrorCode::Internal, err.to_string()))??;
    Ok((
        StatusCode::CREATED,
        Json(state.host().present_snapshot(made)),
    ))
}

#[utoipa::path(get, path = "/v1/snapshots", operation_id = "list_snapshots", tag = "snapshots",
    security(("token" = [])),
    responses((status = 200, description = "The caller's snapshots (everyone's for an admin)", body = [Snapshot]),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody)))]
pub(super) async fn list_snapshots<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Vec<Snapshot>>, HttpError> {
    let snapshots = state.host().sessions_of(&caller).snapshots().await?;
    Ok(Json(
        snapshots
            .into_iter()
            .map(|s| state.host().present_snapshot(s))
            .collect(),
    ))
}

#[utoipa::path(delete, path = "/v1/snapshots/{name}", operation_id = "remove_snapshot", tag = "snapshots",
    params(("name" = String, Path, description = "The snapshot's exact name")),
    security(("token" = [])),
    responses((status = 200, description = "Removed", body = Snapshot),
        (status = 400, description = "Bad name", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No such snapshot of the caller's", body = crate::api::wire::ErrorBody),
        (status = 409, description = "A session runs from it", body = crate::api::wire::ErrorBody)))]
pub(super) async fn remove_snapshot<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<Snapshot>, HttpError> {
    let Path(name) = name?;
    check_id(&name)?;
    let removed = state
        .host()
        .sessions_of(&caller)
        .remove_snapshot(&name)
        .await?;
    Ok(Json(state.host().present_snapshot(removed)))
}
