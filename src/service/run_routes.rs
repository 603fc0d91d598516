//! Agent runs over HTTP. `POST /v1/runs` creates a session, runs one prompt headless with the
//! image's tool and closes the session (unless `keep`); `POST /v1/sessions/{id}/runs` runs in
//! a session of the caller's. The answer is the run's result, or its events as NDJSON when the
//! request accepts `application/x-ndjson`.
//!
//! The run is a task of its own, tied to the request by a channel: a client that goes away
//! drops its end, which stops the agent in the session and closes a session made for the run.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use russh::keys::PrivateKey;
use tokio::sync::{mpsc, oneshot};

use super::auth::Authenticated;
use super::http_error::HttpError;
use super::router::{AppState, SessionHost, UserSlot, check_id, check_offered};
use super::store::Caller;
use crate::api::wire::{CreateRequest, RunBody};
use crate::api::{ApiError, Backend, ErrorCode, Quiet, SessionSpec};
use crate::images::metadata::ImageMetadata;
use crate::run::{RunEvent, RunRequest, RunResult};

/// Events a run may have queued for a client that reads slowly; past it the run is stopped
/// rather than the service buffering without end.
const QUEUED_EVENTS: usize = 1024;

impl RunBody {
    /// The tool's part of the request, the timeout capped by the service.
    fn run_request(&self, max_timeout: Duration) -> Result<RunRequest, ApiError> {
        if self.prompt.trim().is_empty() {
            return Err(ApiError::invalid("the prompt is empty".to_string()));
        }
        let timeout = match self.timeout {
            None => max_timeout,
            Some(seconds) => Duration::try_from_secs_f64(seconds)
                .ok()
                .filter(|timeout| !timeout.is_zero() && *timeout <= max_timeout)
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "timeout must be more than 0 and at most {} seconds (runs.max_timeout)",
                        max_timeout.as_secs()
                    ))
                })?,
        };
        Ok(RunRequest {
            prompt: self.prompt.clone(),
            resume: self.resume_session_id.clone(),
            allowed_tools: self.allowed_tools.clone(),
            disallowed_tools: self.disallowed_tools.clone(),
            append_system_prompt: self.append_system_prompt.clone(),
            max_turns: self.max_turns,
            model: self.model.clone(),
            timeout: Some(timeout),
        })
    }

    fn create_request(&self, image: String) -> CreateRequest {
        CreateRequest {
            image,
            snapshot: None,
            // Runs come in numbers and names are the engine's: a fresh one unless asked.
            name: self
                .name
                .clone()
                .or_else(|| Some(format!("run-{:08x}", rand::random::<u32>()))),
            env: self.env.clone(),
            networks: self.networks.clone(),
            default_network: true,
            volumes: Vec::new(),
            project: self.project.clone(),
            run_init: self.run_init,
            memory: self.memory,
            cpus: self.cpus,
            pids_limit: self.pids_limit,
            runtime: self.runtime.clone(),
            idle_stop_secs: None,
            public_key: None,
            egress: None,
            mcp: self.mcp.clone(),
        }
    }
}

#[utoipa::path(post, path = "/v1/runs", operation_id = "create_run", tag = "runs",
    request_body = RunBody, security(("token" = [])),
    responses((status = 200, description = "The run's result (`is_error` says whether the agent failed); with `Accept: application/x-ndjson`, NDJSON RunEvent lines ending with the result, and a blank line every 30 s of quiet", body = RunResult),
        (status = 400, description = "Invalid request: empty prompt, an option the tool lacks, a timeout over runs.max_timeout", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 429, description = "Quota reached (sessions or runs per user)", body = crate::api::wire::ErrorBody),
        (status = 500, description = "The session failed to boot", body = crate::api::wire::ErrorBody)))]
pub(super) async fn create_run<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: Result<Json<RunBody>, JsonRejection>,
) -> Result<Response, HttpError> {
    let Json(body) = body?;
    let client_key = run_key(&state)?;
    let request = body.run_request(state.max_run_timeout())?;
    let image = body
        .image
        .clone()
        .ok_or_else(|| ApiError::invalid("a run needs an `image`".to_string()))?;
    let metadata = crate::run::tool_metadata(&image)?;
    crate::run::argv::check(&metadata, &request)
        .map_err(|err| ApiError::invalid(err.to_string()))?;
    check_offered(&state.host().images().await?, &image)?;
    let mut spec = state.policy().spec(body.create_request(image))?;
    super::mcp_routes::give(&state, &caller, &mut spec)?;
    let run_slot = state.run_slot(&caller)?;
    let quota = state.quota_slot(&caller).await?;
    let plan = RunPlan {
        session: RunSession::New {
            spec: Box::new(spec),
            quota,
            keep: body.keep,
        },
        metadata,
        request,
    };
    Ok(answer(&state, caller, plan, run_slot, client_key, &headers).await)
}

#[utoipa::path(post, path = "/v1/sessions/{id}/runs", operation_id = "run_in_session", tag = "runs",
    params(("id" = String, Path, description = "Session id, unique id prefix, or name")),
    request_body = RunBody, security(("token" = [])),
    responses((status = 200, description = "The run's result; NDJSON RunEvent lines with `Accept: application/x-ndjson`", body = RunResult),
        (status = 400, description = "Invalid request (`env`, `image` and session options belong to `POST /v1/runs`)", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No such session of the caller's", body = crate::api::wire::ErrorBody),
        (status = 429, description = "Too many runs of the caller at once", body = crate::api::wire::ErrorBody)))]
pub(super) async fn run_in_session<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Json<RunBody>, JsonRejection>,
) -> Result<Response, HttpError> {
    let Path(id) = id?;
    check_id(&id)?;
    let Json(body) = body?;
    let for_new_sessions = !body.env.is_empty()
        || body.image.is_some()
        || body.project.is_some()
        || body.keep
        || body.name.is_some()
        || body.runtime.is_some()
        || body.memory.is_some()
        || body.cpus.is_some()
        || body.pids_limit.is_some()
        || body.run_init
        || !body.networks.is_empty();
    if for_new_sessions {
        return Err(ApiError::invalid(
            "env, image, project, keep, name, runtime, limits, run_init and networks are for a new \
             session (`POST /v1/runs`); a session's env is set when it is created"
                .to_string(),
        )
        .into());
    }
    let client_key = run_key(&state)?;
    let request = body.run_request(state.max_run_timeout())?;
    let session = state.host().sessions_of(&caller).get(&id).await?;
    let metadata = crate::run::tool_metadata(&session.image)?;
    crate::run::argv::check(&metadata, &request)
        .map_err(|err| ApiError::invalid(err.to_string()))?;
    let run_slot = state.run_slot(&caller)?;
    let plan = RunPlan {
        session: RunSession::Existing(session.name),
        metadata,
        request,
    };
    Ok(answer(&state, caller, plan, run_slot, client_key, &headers).await)
}

fn run_key<H: SessionHost>(state: &AppState<H>) -> Result<Arc<PrivateKey>, ApiError> {
    state
        .host()
        .run_key()
        .ok_or_else(|| ApiError::unavailable("this service runs no agents".to_string()))
}

/// What a run task does, decided by the handler.
struct RunPlan {
    session: RunSession,
    metadata: ImageMetadata,
    request: RunRequest,
}

/// Where a run runs.
enum RunSession {
    /// A session of the caller's.
    Existing(String),
    /// A session the run task creates (counted against the quota until it exists) and
    /// closes afterwards unless `keep`.
    New {
        spec: Box<SessionSpec>,
        quota: UserSlot,
        keep: bool,
    },
}

/// Starts the run task and answers with its result, or its events as NDJSON.
async fn answer<H: SessionHost>(
    state: &AppState<H>,
    caller: Caller,
    plan: RunPlan,
    slot: impl Send + 'static,
    client_key: Arc<PrivateKey>,
    headers: &HeaderMap,
) -> Response {
    let streamed = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/x-ndjson"));
    // The request's end of the run: dropping `client_gone` (the client went away, so axum
    // dropped this handler or the body holding it) stops the run.
    let (client_gone, gone) = oneshot::channel::<()>();
    let (events, received) = mpsc::channel::<RunEvent>(QUEUED_EVENTS);
    let (result_sender, result) = oneshot::channel::<Result<RunResult, ApiError>>();
    let (started_sender, started) = oneshot::channel::<Result<(), ApiError>>();
    let host = state.host_arc();
    // Creating, running and closing are one task: a client that goes away half-way through a
    // create leaves a session the task then closes, never an orphan.
    tokio::spawn(async move {
        let _counted = slot;
        let backend = host.sessions_of(&caller);
        let (session, close_after) = match plan.session {
            RunSession::Existing(name) => (name, false),
            RunSession::New { spec, quota, keep } => {
                let created = backend.create(*spec, &Quiet).await;
                drop(quota);
                match created {
                    Ok(session) => {
                        host.changed(&session.id).await;
                        (session.name, !keep)
                    }
                    Err(err) => {
                        let _ = started_sender.send(Err(err));
                        return;
                    }
                }
            }
        };
        let _ = started_sender.send(Ok(()));
        let overflowed = Arc::new(tokio::sync::Notify::new());
        let cancel = {
            let overflowed = Arc::clone(&overflowed);
            async move {
                tokio::select! {
                    _ = gone => {}
                    () = overflowed.notified() => {}
                }
            }
        };
        // The result event is sent below, once the session is closed or kept.
        let mut on_event = |event: &RunEvent| {
            if streamed
                && !matches!(event, RunEvent::Result(_))
                && events.try_send(event.clone()).is_err()
            {
                overflowed.notify_one();
            }
        };
        let ran = crate::run::run(
            &backend,
            client_key,
            &session,
            &plan.metadata,
            &plan.request,
            cancel,
            &mut on_event,
        )
        .await;
        let closed = close_after && close_run_session(&backend, &session).await;
        if closed {
            host.changed(&session).await;
        }
        let ran = ran.map(|mut result| {
            if closed {
                result.session = None;
            }
            result
        });
        if streamed {
            let last = match &ran {
                Ok(result) => result.clone(),
                Err(err) => RunResult {
                    result: err.to_string(),
                    is_error: true,
                    session: (!closed).then(|| session.clone()),
                    ..RunResult::default()
                },
            };
            let _ = events.send(RunEvent::Result(last)).await;
        }
        let _ = result_sender.send(ran);
    });
    // Until the session exists, a failure is an answer of its own (4xx/5xx, not a stream).
    match started.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => return HttpError::from(err).into_response(),
        Err(_) => {
            return HttpError::new(ErrorCode::Internal, "the run task ended early").into_response();
        }
    }
    if streamed {
        let lines = futures_util::stream::unfold(
            (received, client_gone),
            |(mut received, client_gone)| async move {
                let event = received.recv().await?;
                let mut line = serde_json::to_vec(&event).unwrap_or_default();
                line.push(b'\n');
                Some((
                    Ok::<_, std::convert::Infallible>(Bytes::from(line)),
                    (received, client_gone),
                ))
            },
        );
        return (
            [(CONTENT_TYPE, "application/x-ndjson")],
            Body::from_stream(super::router::with_keepalives(
                lines,
                super::router::KEEPALIVE,
            )),
        )
            .into_response();
    }
    let outcome = result.await;
    drop(client_gone);
    match outcome {
        Ok(Ok(result)) => (StatusCode::OK, Json(result)).into_response(),
        Ok(Err(err)) => HttpError::from(err).into_response(),
        Err(_) => HttpError::new(ErrorCode::Internal, "the run task ended without a result")
            .into_response(),
    }
}

/// Closes the session made for a run; a failure is logged (the session stays listed).
async fn close_run_session(backend: &impl Backend, session: &str) -> bool {
    match backend.close(session).await {
        Ok(_) => true,
        Err(err) => {
            tracing::warn!(session, "could not close a run's session: {err}");
            false
        }
    }
}
