//! The caller's agent data over HTTP: `GET /v1/data` exports the owner's data volume as a
//! tar, `POST /v1/data` imports one. The archive is checked entry by entry on the way in and
//! out (`local::agent_data`); another user's data is never reachable, since the volume is the
//! caller's own. Archives are held in memory, so at most [`TRANSFERS`] run at once.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::Semaphore;
use utoipa::IntoParams;

use super::auth::Authenticated;
use super::http_error::HttpError;
use super::router::{AppState, SessionHost};
use crate::api::{ApiError, Backend, DataSummary};
use crate::local::agent_data::ArchiveLimits;

/// Archives in flight service-wide; more wait for none and get 429.
const TRANSFERS: usize = 2;
static IN_FLIGHT: Semaphore = Semaphore::const_new(TRANSFERS);

/// The largest import body: the content limit plus room for tar headers.
pub(super) const BODY_LIMIT: usize = (ArchiveLimits::DEFAULT_MAX_BYTES + (64 << 20)) as usize;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ExportQuery {
    /// Only this tool image's folder (`claude-code`).
    image: Option<String>,
}

fn transfer_slot() -> Result<tokio::sync::SemaphorePermit<'static>, ApiError> {
    IN_FLIGHT.try_acquire().map_err(|_| {
        ApiError::Quota(format!(
            "{TRANSFERS} agent data transfers are running on this service; try again shortly"
        ))
    })
}

#[utoipa::path(get, path = "/v1/data", operation_id = "export_data", tag = "data",
    params(ExportQuery), security(("token" = [])),
    responses((status = 200, description = "The caller's agent data volume as a tar (paths relative to the volume: `claude-code/.claude/...`), checked entry by entry", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "Bad image name, or the volume holds what an export refuses to carry", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No data for that image yet", body = crate::api::wire::ErrorBody),
        (status = 429, description = "Too many transfers at once", body = crate::api::wire::ErrorBody)))]
pub(super) async fn export<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(query) = query.map_err(|err| ApiError::invalid(err.body_text()))?;
    let _slot = transfer_slot()?;
    let (archive, _) = state
        .host()
        .sessions_of(&caller)
        .export_data(query.image.as_deref())
        .await?;
    Ok(([(CONTENT_TYPE, "application/octet-stream")], archive).into_response())
}

#[utoipa::path(post, path = "/v1/data", operation_id = "import_data", tag = "data",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "A tar with paths relative to the data volume"),
    security(("token" = [])),
    responses((status = 200, description = "Written into the caller's data volume", body = DataSummary),
        (status = 400, description = "A hostile or unreadable archive (absolute paths, `..`, links out, device files, over the limits); nothing was written", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 413, description = "Over the size limit", body = crate::api::wire::ErrorBody),
        (status = 429, description = "Too many transfers at once", body = crate::api::wire::ErrorBody)))]
pub(super) async fn import<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    body: Bytes,
) -> Result<Json<DataSummary>, HttpError> {
    let _slot = transfer_slot()?;
    let sessions = state.host().sessions_of(&caller);
    // On its own task: a client that goes away cannot stop it half-way (the helper container
    // is removed either way).
    let summary = tokio::spawn(async move { sessions.import_data(body.to_vec()).await })
        .await
        .map_err(|err| ApiError::unavailable(err.to_string()))??;
    Ok(Json(summary))
}
