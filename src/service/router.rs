//! The routes of the session API. The router is generic over [`SessionHost`], which hands out
//! an [`api::Backend`](crate::api::Backend) per caller, so tests can put any backend behind
//! it; handlers only parse, authorize, call the backend and map its errors to statuses.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::header::{CONTENT_TYPE, HOST};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::auth::Authenticated;
use super::data_routes;
use super::documented::DocumentedRoutes;
use super::http_error::HttpError;
use super::lifecycle_routes;
use super::oidc::routes as oidc_routes;
use super::openapi;
use super::page;
use super::policy::Policy;
use super::project_routes;
use super::run_routes;
use super::store::{Caller, Store};
use super::ws;
use crate::api::wire::{
    ConnectRequest, CreateRequest, ExecLine, ExecRequest, Health, ImageInfo, LogLine, RuntimeList,
};
use crate::api::{ApiError, Backend, CreateStep, ErrorCode, LogOptions, Progress, Session};

/// Where the service's sessions come from: one backend per caller, scoped to what the caller
/// may see, plus what is not about one session (the image catalogue).
#[async_trait]
pub trait SessionHost: Send + Sync + 'static {
    type Sessions: Backend + 'static;
    /// The sessions `caller` may act on: their own, or everyone's for an admin.
    fn sessions_of(&self, caller: &Caller) -> Self::Sessions;
    /// A session was created or closed: the next read must already show it.
    async fn changed(&self, id: &str);
    /// The images sessions may boot.
    async fn images(&self) -> Result<Vec<ImageInfo>, ApiError>;
    /// The runtimes the engine has (`docker info`), for `GET /v1/runtimes`; `None` for a host
    /// that cannot tell (every runtime the policy allows is offered then).
    async fn engine_runtimes(&self) -> Result<Option<Vec<String>>, ApiError> {
        Ok(None)
    }
    /// Tops the warm pool up to its targets; a host without a pool has nothing to do.
    async fn fill_pool(&self) -> Result<Vec<crate::local::backend::Filled>, ApiError> {
        Ok(Vec::new())
    }
    /// The key the service logs in to its sessions with to run agents; a host without one
    /// answers runs with 503.
    fn run_key(&self) -> Option<Arc<russh::keys::PrivateKey>> {
        None
    }
    /// Whether sessions run on several hosts (a Swarm's nodes), each session naming the
    /// address of its own, rather than on the service's host.
    fn sessions_on_many_hosts(&self) -> bool {
        false
    }
    /// A session as the caller sees it (owners as the service names them).
    fn present(&self, session: Session) -> Session {
        session
    }
    /// A snapshot as the caller sees it (owners as the service names them).
    fn present_snapshot(&self, snapshot: crate::api::Snapshot) -> crate::api::Snapshot {
        snapshot
    }
    /// The projects `caller` registered (their own, an admin's too). A host without a
    /// project store answers 503.
    /// The MCP servers `caller` registered (never another user's). A host without a place
    /// for them answers 503.
    fn mcp_of(&self, _caller: &Caller) -> Result<crate::mcp::registry::McpRegistry, ApiError> {
        Err(ApiError::unavailable(
            "this service keeps no MCP servers".to_string(),
        ))
    }
    fn projects_of(&self, _caller: &Caller) -> Result<crate::projects::ProjectStore, ApiError> {
        Err(ApiError::unavailable(
            "this service keeps no projects".to_string(),
        ))
    }
}

/// What every handler shares.
pub struct AppState<H> {
    shared: Arc<Shared<H>>,
}

impl<H> Clone for AppState<H> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

struct Shared<H> {
    host: Arc<H>,
    store: Arc<dyn Store>,
    policy: Policy,
    /// Creates under way per user, counted against the quota with the sessions they have.
    creating: PerUser,
    /// Streams (followed logs, execs) open per user.
    streams: PerUser,
    streams_per_user: usize,
    /// Agent runs under way per user.
    runs: PerUser,
    runs_per_user: usize,
    max_run_timeout: Duration,
    /// Turns true when the service is stopping; streams end then.
    stopping: watch::Receiver<bool>,
    request_timeout: Duration,
    /// The OpenID Connect login, when `[auth.oidc]` configures one.
    oidc: Option<Arc<super::oidc::OidcService>>,
    /// WebSocket tickets, live terminals and open sockets.
    ws: super::ws::WsState,
}

impl<H: SessionHost> AppState<H> {
    pub fn new(
        host: H,
        store: Arc<dyn Store>,
        policy: Policy,
        stopping: watch::Receiver<bool>,
        timing: Timing,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                host: Arc::new(host),
                store,
                policy,
                creating: PerUser::default(),
                streams: PerUser::default(),
                streams_per_user: timing.streams_per_user,
                runs: PerUser::default(),
                runs_per_user: timing.runs_per_user,
                max_run_timeout: timing.max_run_timeout,
                stopping,
                request_timeout: timing.request_timeout,
                oidc: None,
                ws: super::ws::WsState::default(),
            }),
        }
    }

    /// The same state with an OpenID Connect login (before the state is shared).
    pub fn with_oidc(mut self, oidc: Option<Arc<super::oidc::OidcService>>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.oidc = oidc;
        }
        self
    }

    pub(crate) fn oidc(&self) -> Option<Arc<super::oidc::OidcService>> {
        self.shared.oidc.clone()
    }

    pub(super) fn ws(&self) -> &super::ws::WsState {
        &self.shared.ws
    }

    pub(super) fn host(&self) -> &H {
        &self.shared.host
    }

    pub(super) fn host_arc(&self) -> Arc<H> {
        Arc::clone(&self.shared.host)
    }

    /// The longest an agent run may take (`runs.max_timeout`), and its default.
    pub(super) fn max_run_timeout(&self) -> Duration {
        self.shared.max_run_timeout
    }

    /// Counts an agent run against the caller's cap until the returned slot drops.
    pub(super) fn run_slot(&self, caller: &Caller) -> Result<UserSlot, HttpError> {
        let limit = self.shared.runs_per_user;
        self.shared.runs.take(&caller.user, |under_way| {
            if under_way >= limit {
                return Err(ApiError::Quota(format!(
                    "you have {under_way} agent runs under way and this service allows {limit} \
                     per user (runs.per_user); wait for one to end"
                )));
            }
            Ok(())
        })
    }

    pub(super) fn policy(&self) -> &Policy {
        &self.shared.policy
    }

    pub(super) fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.shared.store)
    }

    /// A session as the caller gets it: owner as the service names it, and the SSH host
    /// the caller should dial (the configured public name, else the host the caller used).
    pub(super) fn publish(&self, session: Session, headers: &HeaderMap) -> Session {
        let mut session = self.shared.host.present(session);
        if self.shared.host.sessions_on_many_hosts() {
            // The session names its node; neither the public name nor the URL's host is it.
        } else if let Some(host) = self
            .shared
            .policy
            .public_host
            .clone()
            .or_else(|| request_host(headers))
        {
            session.ssh.host = host;
        }
        session.ssh.proxy = self.shared.policy.ssh_proxy;
        session
    }

    /// Counts a create against the caller's quota until the returned guard drops.
    pub(super) async fn quota_slot(&self, caller: &Caller) -> Result<UserSlot, HttpError> {
        let limit = self.shared.policy.sessions_per_user;
        let owned = if limit == 0 {
            0
        } else {
            // An admin's quota counts their own sessions, not everyone's they can see.
            let own = Caller {
                admin: false,
                ..caller.clone()
            };
            self.shared.host.sessions_of(&own).list().await?.len()
        };
        self.shared.creating.take(&caller.user, |under_way| {
            if limit > 0 && owned + under_way >= limit {
                return Err(ApiError::Quota(format!(
                    "you have {} sessions (with those being created) and this service allows \
                     {limit} per user (limits.sessions_per_user); close one first",
                    owned + under_way
                )));
            }
            Ok(())
        })
    }

    /// Counts an open stream against the caller's cap until the returned slot drops (the
    /// stream's body holds it).
    fn stream_slot(&self, caller: &Caller) -> Result<UserSlot, HttpError> {
        let limit = self.shared.streams_per_user;
        self.shared.streams.take(&caller.user, |open| {
            if open >= limit {
                return Err(ApiError::Quota(format!(
                    "you have {open} streams open (followed logs, execs) and this service \
                     allows {limit} per user (server.streams_per_user); end one first"
                )));
            }
            Ok(())
        })
    }
}

/// What the router needs to know of time and streams (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a request may take (streams excepted).
    pub request_timeout: Duration,
    /// Streams one user may hold open at once.
    pub streams_per_user: usize,
    /// Agent runs one user may have under way at once.
    pub runs_per_user: usize,
    /// The longest an agent run may take.
    pub max_run_timeout: Duration,
}

/// Per-user counts of things under way (creates, open streams).
#[derive(Clone, Default)]
struct PerUser(Arc<Mutex<HashMap<String, usize>>>);

impl PerUser {
    /// One more for `user` if `admit` allows it given the count now; the slot counts until it
    /// drops.
    fn take(
        &self,
        user: &str,
        admit: impl FnOnce(usize) -> Result<(), ApiError>,
    ) -> Result<UserSlot, HttpError> {
        let mut counts = self
            .0
            .lock()
            .map_err(|_| HttpError::new(ErrorCode::Internal, "per-user bookkeeping failed"))?;
        let count = counts.entry(user.to_string()).or_default();
        admit(*count)?;
        *count += 1;
        Ok(UserSlot {
            counts: self.clone(),
            user: user.to_string(),
        })
    }
}

/// One counted thing of one user's; dropping it gives the count back.
pub(super) struct UserSlot {
    counts: PerUser,
    user: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.counts.0.lock()
            && let Some(count) = counts.get_mut(&self.user)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

/// The host part of the request's `Host` header (`[::1]:3000` gives `::1`).
fn request_host(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(HOST)?.to_str().ok()?;
    let host = match value.strip_prefix('[') {
        Some(rest) => rest.split(']').next()?,
        None => value.rsplit_once(':').map_or(value, |(host, _)| host),
    };
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
    valid.then(|| host.to_string())
}

/// Session ids and names in paths: what `cubbi` could have made, nothing else.
pub(super) fn check_id(id: &str) -> Result<(), HttpError> {
    let fine = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if fine {
        Ok(())
    } else {
        Err(HttpError::new(
            ErrorCode::Invalid,
            "a session id or name has only letters, digits, `-`, `_` and `.` (at most 128)",
        ))
    }
}

/// Every route of the service, each with its document entry: `timed` ones answer within
/// `server.request_timeout`, `streamed` ones (exec, logs) may run for as long as they stream,
/// and `health` is for probes.
pub(super) struct ServiceRoutes<H> {
    pub timed: DocumentedRoutes<AppState<H>>,
    pub streamed: DocumentedRoutes<AppState<H>>,
    pub health: DocumentedRoutes<AppState<H>>,
    /// Timed, with a body limit of their own (agent data archives).
    pub data: DocumentedRoutes<AppState<H>>,
}

/// The routes, registered with their documentation; the host type only picks the handlers'
/// instances, so the document can be made without a host.
pub(super) fn routes<H: SessionHost>() -> ServiceRoutes<H> {
    ServiceRoutes {
        timed: DocumentedRoutes::new()
            .route::<__path_list, _>(list::<H>)
            .route::<__path_create, _>(create::<H>)
            .route::<__path_show, _>(show::<H>)
            .route::<__path_close, _>(close::<H>)
            .route::<lifecycle_routes::__path_stop, _>(lifecycle_routes::stop::<H>)
            .route::<lifecycle_routes::__path_start, _>(lifecycle_routes::start::<H>)
            .route::<lifecycle_routes::__path_change_egress, _>(
                lifecycle_routes::change_egress::<H>,
            )
            .route::<super::mcp_routes::__path_list, _>(super::mcp_routes::list::<H>)
            .route::<super::mcp_routes::__path_add, _>(super::mcp_routes::add::<H>)
            .route::<super::mcp_routes::__path_show, _>(super::mcp_routes::show::<H>)
            .route::<super::mcp_routes::__path_remove, _>(super::mcp_routes::remove::<H>)
            .route::<lifecycle_routes::__path_snapshot, _>(lifecycle_routes::snapshot::<H>)
            .route::<lifecycle_routes::__path_list_snapshots, _>(
                lifecycle_routes::list_snapshots::<H>,
            )
            .route::<lifecycle_routes::__path_remove_snapshot, _>(
                lifecycle_routes::remove_snapshot::<H>,
            )
            .route::<__path_connect, _>(connect::<H>)
            .route::<__path_images, _>(images::<H>)
            .route::<__path_image, _>(image::<H>)
            .route::<__path_runtimes, _>(runtimes::<H>)
            .route::<__path_openapi_document, _>(openapi_document)
            .route::<project_routes::__path_list, _>(project_routes::list::<H>)
            .route::<project_routes::__path_add, _>(project_routes::add::<H>)
            .route::<project_routes::__path_show, _>(project_routes::show::<H>)
            .route::<project_routes::__path_update, _>(project_routes::update::<H>)
            .route::<project_routes::__path_remove, _>(project_routes::remove::<H>)
            .route::<oidc_routes::__path_config, _>(oidc_routes::config::<H>)
            .route::<oidc_routes::__path_login, _>(oidc_routes::login::<H>)
            .route::<oidc_routes::__path_poll, _>(oidc_routes::poll::<H>)
            .route::<oidc_routes::__path_refresh, _>(oidc_routes::refresh::<H>)
            .route::<oidc_routes::__path_logout, _>(oidc_routes::logout::<H>)
            .route::<oidc_routes::__path_callback, _>(oidc_routes::callback::<H>)
            .route::<oidc_routes::__path_callback_post, _>(oidc_routes::callback_post::<H>)
            .route::<ws::__path_issue_ticket, _>(ws::issue_ticket::<H>),
        streamed: DocumentedRoutes::new()
            .route::<__path_exec, _>(exec::<H>)
            .route::<__path_logs, _>(logs::<H>)
            .route::<run_routes::__path_create_run, _>(run_routes::create_run::<H>)
            .route::<run_routes::__path_run_in_session, _>(run_routes::run_in_session::<H>)
            .route::<ws::__path_terminal, _>(ws::terminal::<H>)
            .route::<ws::__path_ssh, _>(ws::ssh::<H>)
            .route::<ws::__path_logs_ws, _>(ws::logs_ws::<H>),
        health: DocumentedRoutes::new()
            .route::<__path_healthz, _>(healthz)
            .route::<page::__path_index, _>(page::index)
            .route::<page::__path_asset, _>(page::asset),
        data: DocumentedRoutes::new()
            .route::<data_routes::__path_export, _>(data_routes::export::<H>)
            .route::<data_routes::__path_import, _>(data_routes::import::<H>),
    }
}

pub fn router<H: SessionHost>(state: AppState<H>, body_limit: usize) -> Router {
    let ServiceRoutes {
        timed,
        streamed,
        health,
        data,
    } = routes::<H>();
    let time_limited = middleware::from_fn_with_state(state.clone(), time_limit::<H>);
    let (data, _) = data
        .map_router(|router| {
            router
                .route_layer(time_limited.clone())
                .route_layer(DefaultBodyLimit::max(data_routes::BODY_LIMIT))
        })
        .into_parts();
    let (timed, _) = timed
        .map_router(|router| router.route_layer(time_limited))
        .into_parts();
    let (streamed, _) = streamed.into_parts();
    let (health, _) = health.into_parts();
    Router::new()
        .merge(timed)
        .merge(streamed)
        .merge(health)
        .merge(data)
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let route = request
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map_or("unmatched", |path| path.as_str());
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        route,
                        user = tracing::field::Empty,
                    )
                })
                // One line per answer, at info: the status and how long it took.
                .on_response(
                    tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO),
                ),
        )
        .with_state(state)
}

/// Requests other than streams get `server.request_timeout`.
async fn time_limit<H: SessionHost>(
    State(state): State<AppState<H>>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(state.shared.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => HttpError::new(
            ErrorCode::Unavailable,
            format!(
                "the request took longer than {}s (server.request_timeout)",
                state.shared.request_timeout.as_secs()
            ),
        )
        .with_status(StatusCode::GATEWAY_TIMEOUT)
        .into_response(),
    }
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    HttpError::new(ErrorCode::Internal, "internal error; the service logged it").into_response()
}

async fn unknown_route() -> HttpError {
    HttpError::new(
        ErrorCode::NotFound,
        "no such route; GET /v1/openapi.json lists them",
    )
}

async fn wrong_method() -> HttpError {
    HttpError::new(ErrorCode::Invalid, "this route does not take that method")
        .with_status(StatusCode::METHOD_NOT_ALLOWED)
}

#[utoipa::path(get, path = "/healthz", operation_id = "health", tag = "service",
    responses((status = 200, description = "The service is up", body = Health)))]
pub(super) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

#[utoipa::path(get, path = "/v1/openapi.json", operation_id = "get_openapi_document", tag = "service", security(("token" = [])),
    responses((status = 200, description = "This document"),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody)))]
pub(super) async fn openapi_document(_caller: Authenticated) -> Response {
    Json(openapi::document()).into_response()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// Only this owner's sessions (admins).
    owner: Option<String>,
}

#[utoipa::path(get, path = "/v1/sessions", operation_id = "list_sessions", tag = "sessions", params(ListQuery),
    security(("token" = [])),
    responses((status = 200, description = "The caller's sessions (an admin's: everyone's)", body = Vec<Session>),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 503, description = "The Docker endpoint is down", body = crate::api::wire::ErrorBody)))]
pub(super) async fn list<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    query: Result<Query<ListQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Vec<Session>>, HttpError> {
    let Query(query) = query?;
    let backend = state.shared.host.sessions_of(&caller);
    let sessions = backend
        .list()
        .await?
        .into_iter()
        .map(|session| state.publish(session, &headers))
        .filter(|session| {
            query
                .owner
                .as_ref()
                .is_none_or(|owner| &session.owner == owner)
        })
        .collect();
    Ok(Json(sessions))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateQuery {
    /// `false`: answer 202 as soon as the session exists, before it is ready.
    wait: Option<bool>,
}

/// Tells the handler when the session exists, for `?wait=false`.
struct Reserved(Mutex<Option<tokio::sync::oneshot::Sender<Session>>>);

impl Progress for Reserved {
    fn step(&self, step: CreateStep) {
        tracing::debug!("{step}");
    }

    fn notice(&self, message: &str) {
        tracing::info!("{message}");
    }

    fn reserved(&self, session: &Session) {
        if let Some(sender) = self.0.lock().ok().and_then(|mut slot| slot.take()) {
            let _ = sender.send(session.clone());
        }
    }
}

#[utoipa::path(post, path = "/v1/sessions", operation_id = "create_session", tag = "sessions", params(CreateQuery),
    request_body = CreateRequest, security(("token" = [])),
    responses((status = 201, description = "Ready: sshd accepts the key", body = Session),
        (status = 202, description = "Created, still booting (`?wait=false`)", body = Session),
        (status = 400, description = "Invalid request", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No snapshot of the caller's by that name (`snapshot`)", body = crate::api::wire::ErrorBody),
        (status = 409, description = "The name is taken", body = crate::api::wire::ErrorBody),
        (status = 413, description = "Body over the limit", body = crate::api::wire::ErrorBody),
        (status = 429, description = "Quota reached", body = crate::api::wire::ErrorBody),
        (status = 500, description = "The session failed to boot", body = crate::api::wire::ErrorBody),
        (status = 503, description = "The Docker endpoint is down or no port is free", body = crate::api::wire::ErrorBody)))]
pub(super) async fn create<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    query: Result<Query<CreateQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Json<CreateRequest>, JsonRejection>,
) -> Result<Response, HttpError> {
    let Query(query) = query?;
    let Json(request) = body?;
    let snapshot = request.snapshot.clone();
    if snapshot.is_none() {
        check_offered(&state.shared.host.images().await?, &request.image)?;
    }
    let mut spec = state.shared.policy.spec(request)?;
    super::mcp_routes::give(&state, &caller, &mut spec)?;
    let backend = state.shared.host.sessions_of(&caller);
    if let Some(name) = snapshot {
        // The caller's own snapshots only: another user's is a 404, like their sessions.
        check_id(&name)?;
        spec.image = crate::local::snapshot::pick(backend.snapshots().await?, &name)?.image;
    }
    let slot = state.quota_slot(&caller).await?;
    let (sender, reserved) = tokio::sync::oneshot::channel();
    let host = Arc::clone(&state.shared.host);
    // The create runs on its own task: a client that goes away must not cancel it half-way.
    let mut task = tokio::spawn(async move {
        let progress = Reserved(Mutex::new(Some(sender)));
        let created = backend.create(spec, &progress).await;
        drop(slot);
        if let Ok(session) = &created {
            host.changed(&session.id).await;
        }
        created
    });
    let finished = |joined: Result<Result<Session, ApiError>, tokio::task::JoinError>| {
        joined
            .map_err(|err| HttpError::new(ErrorCode::Internal, err.to_string()))?
            .map_err(HttpError::from)
    };
    if query.wait.unwrap_or(true) {
        let session = finished(task.await)?;
        return Ok((StatusCode::CREATED, Json(state.publish(session, &headers))).into_response());
    }
    tokio::select! {
        Ok(session) = reserved => {
            state.shared.host.changed(&session.id).await;
            Ok((StatusCode::ACCEPTED, Json(state.publish(session, &headers))).into_response())
        }
        joined = &mut task => {
            let session = finished(joined)?;
            Ok((StatusCode::CREATED, Json(state.publish(session, &headers))).into_response())
        }
    }
}

#[utoipa::path(get, path = "/v1/sessions/{id}", operation_id = "show_session", tag = "sessions",
    params(("id" = String, Path, description = "Session id, unique id prefix, or name")),
    security(("token" = [])),
    responses((status = 200, description = "The session", body = Session),
        (status = 400, description = "Bad id", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No such session of the caller's", body = crate::api::wire::ErrorBody)))]
pub(super) async fn show<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<Session>, HttpError> {
    let Path(id) = id?;
    check_id(&id)?;
    let session = state.shared.host.sessions_of(&caller).get(&id).await?;
    Ok(Json(state.publish(session, &headers)))
}

#[utoipa::path(delete, path = "/v1/sessions/{id}", operation_id = "close_session", tag = "sessions",
    params(("id" = String, Path, description = "The session's exact name, its full id or its 12-character short id; never a prefix")),
    security(("token" = [])),
    responses((status = 200, description = "Closed; its data volume stays", body = Session),
        (status = 400, description = "Bad id", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No such session of the caller's", body = crate::api::wire::ErrorBody)))]
pub(super) async fn close<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<Session>, HttpError> {
    let Path(id) = id?;
    check_id(&id)?;
    let sessions = state.shared.host.sessions_of(&caller);
    // Destructive: the exact session or none (`DELETE /v1/sessions/w` must not close `web2`).
    let listed = sessions.list().await?;
    let target = exact_session(&listed, &id).ok_or_else(|| ApiError::Service {
        code: ErrorCode::NotFound,
        message: format!(
            "no session is named `{id}` or has that id; closing takes a session's exact name or \
             id, never a prefix (`cubbi session list` shows them)"
        ),
    })?;
    let session = sessions.close(&target).await?;
    state.shared.host.changed(&session.id).await;
    Ok(Json(state.publish(session, &headers)))
}

/// A service boots only images of its catalogue (`GET /v1/images`), built: never another
/// image of the engine, which a name like an image id prefix (`3f2a9c`) would otherwise reach.
pub(super) fn check_offered(offered: &[ImageInfo], image: &str) -> Result<(), ApiError> {
    match offered.iter().find(|info| info.name == image) {
        Some(info) if info.built => Ok(()),
        Some(_) => Err(ApiError::unavailable(format!(
            "image `{image}` is not built on this service yet; an admin builds it with `cubbi \
             image build {image}`"
        ))),
        None => Err(ApiError::invalid(format!(
            "this service does not offer image `{image}`; `GET /v1/images` lists those it does"
        ))),
    }
}

/// The full id of the session named exactly `id`, or whose full or 12-character short id is
/// exactly `id`.
pub(super) fn exact_session(sessions: &[Session], id: &str) -> Option<String> {
    let short = |full: &str| full.get(..12).unwrap_or(full).to_string();
    sessions
        .iter()
        .find(|s| s.name == id || s.id == id || short(&s.id) == id)
        .map(|s| s.id.clone())
}

#[utoipa::path(post, path = "/v1/sessions/{id}/connect", operation_id = "connect_session", tag = "sessions",
    params(("id" = String, Path, description = "Session id, unique id prefix, or name")),
    request_body = ConnectRequest, security(("token" = [])),
    responses((status = 200, description = "The key may log in; where to reach the session", body = Session),
        (status = 400, description = "Bad id or key", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No such session of the caller's", body = crate::api::wire::ErrorBody),
        (status = 409, description = "The session is not ready", body = crate::api::wire::ErrorBody)))]
pub(super) async fn connect<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Json<ConnectRequest>, JsonRejection>,
) -> Result<Json<Session>, HttpError> {
    let Path(id) = id?;
    check_id(&id)?;
    let Json(request) = body?;
    let session = state
        .shared
        .host
        .sessions_of(&caller)
        .connect(&id, &request.public_key)
        .await?;
    Ok(Json(state.publish(session, &headers)))
}

/// How often a stream with nothing to say sends a blank line, so clients (whose idle limit
/// ends a stream the service has abandoned) and proxies keep a quiet `exec` or `logs -f` open.
pub(super) const KEEPALIVE: Duration = Duration::from_secs(30);

/// `chunks`, with a blank line whenever nothing came for `every`; ends when `chunks` does.
pub(super) fn with_keepalives<S>(
    chunks: S,
    every: Duration,
) -> impl Stream<Item = S::Item> + Send + 'static
where
    S: Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    futures_util::stream::unfold(Box::pin(chunks), move |mut chunks| async move {
        match tokio::time::timeout(every, chunks.next()).await {
            Ok(Some(chunk)) => Some((chunk, chunks)),
            Ok(None) => None,
            Err(_) => Some((Ok(Bytes::from_static(b"\n")), chunks)),
        }
    })
}

/// Newline-delimited JSON, ended early when the service stops, with a blank line every
/// [`KEEPALIVE`] of silence; `slot` counts the stream against its user's cap until the body
/// is done or dropped.
fn ndjson<H, T>(
    state: &AppState<H>,
    lines: impl Stream<Item = T> + Send + 'static,
    slot: UserSlot,
) -> Response
where
    T: Serialize + Send + 'static,
{
    let mut stopping = state.shared.stopping.clone();
    let stop = async move {
        let _ = stopping.wait_for(|stopping| *stopping).await;
    };
    let bytes = lines.take_until(stop).map(move |line| {
        let _counted = &slot;
        let mut text = serde_json::to_vec(&line).unwrap_or_default();
        text.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(text))
    });
    (
        [(CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(with_keepalives(bytes, KEEPALIVE)),
    )
        .into_response()
}

#[utoipa::path(post, path = "/v1/sessions/{id}/exec", operation_id = "exec_in_session", tag = "sessions",
    params(("id" = String, Path, description = "Session id, unique id prefix, or name")),
    request_body = ExecRequest, security(("token" = [])),
    responses((status = 200, description = "NDJSON lines of ExecLine: output (base64), then the exit code; a blank line every 30 s of quiet (skip it)", body = ExecLine, content_type = "application/x-ndjson"),
        (status = 400, description = "Bad id or command", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No such session of the caller's", body = crate::api::wire::ErrorBody),
        (status = 409, description = "The session is not ready", body = crate::api::wire::ErrorBody)))]
pub(super) async fn exec<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<ExecRequest>, JsonRejection>,
) -> Result<Response, HttpError> {
    let Path(id) = id?;
    check_id(&id)?;
    let Json(request) = body?;
    let slot = state.stream_slot(&caller)?;
    let events = state
        .shared
        .host
        .sessions_of(&caller)
        .exec(&id, request.command)
        .await?;
    Ok(ndjson(&state, events.map(ExecLine::from_event), slot))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct LogsQuery {
    /// Keep streaming until the session ends or the client goes.
    follow: Option<bool>,
    /// Only the last N lines.
    tail: Option<u64>,
}

#[utoipa::path(get, path = "/v1/sessions/{id}/logs", operation_id = "session_logs", tag = "sessions",
    params(("id" = String, Path, description = "Session id, unique id prefix, or name"), LogsQuery),
    security(("token" = [])),
    responses((status = 200, description = "NDJSON lines of LogLine; a blank line every 30 s of quiet (skip it)", body = LogLine, content_type = "application/x-ndjson"),
        (status = 400, description = "Bad id or query", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No such session of the caller's", body = crate::api::wire::ErrorBody)))]
pub(super) async fn logs<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Path(id) = id?;
    check_id(&id)?;
    let Query(query) = query?;
    let options = LogOptions {
        follow: query.follow.unwrap_or(false),
        tail: query.tail,
    };
    let slot = state.stream_slot(&caller)?;
    let chunks: BoxStream<'static, _> = state
        .shared
        .host
        .sessions_of(&caller)
        .logs(&id, options)
        .await?;
    let lines = chunks.scan(false, |failed, chunk| {
        // Nothing follows an error line.
        if *failed {
            return std::future::ready(None);
        }
        let line = match chunk {
            Ok(chunk) => LogLine::Text(chunk.text),
            Err(err) => {
                *failed = true;
                LogLine::Error((&err).into())
            }
        };
        std::future::ready(Some(line))
    });
    Ok(ndjson(&state, lines, slot))
}

#[utoipa::path(get, path = "/v1/images", operation_id = "list_images", tag = "images", security(("token" = [])),
    responses((status = 200, description = "The images this service offers", body = Vec<ImageInfo>),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody)))]
pub(super) async fn images<H: SessionHost>(
    State(state): State<AppState<H>>,
    _caller: Authenticated,
) -> Result<Json<Vec<ImageInfo>>, HttpError> {
    let mut images = state.shared.host.images().await?;
    for image in &mut images {
        image.metadata = None;
    }
    Ok(Json(images))
}

#[utoipa::path(get, path = "/v1/runtimes", operation_id = "list_runtimes", tag = "images", security(("token" = [])),
    responses((status = 200, description = "The runtimes a create may ask for, the default first", body = RuntimeList),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody)))]
pub(super) async fn runtimes<H: SessionHost>(
    State(state): State<AppState<H>>,
    _caller: Authenticated,
) -> Result<Json<RuntimeList>, HttpError> {
    let available = state.shared.host.engine_runtimes().await?;
    Ok(Json(RuntimeList {
        runtimes: state.shared.policy.runtimes_offered(available.as_deref()),
    }))
}

#[utoipa::path(get, path = "/v1/images/{name}", operation_id = "show_image", tag = "images",
    params(("name" = String, Path, description = "Image name, e.g. claude-code")),
    security(("token" = [])),
    responses((status = 200, description = "The image and its whole metadata", body = ImageInfo),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 404, description = "Not offered here", body = crate::api::wire::ErrorBody)))]
pub(super) async fn image<H: SessionHost>(
    State(state): State<AppState<H>>,
    _caller: Authenticated,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<ImageInfo>, HttpError> {
    let Path(name) = name?;
    state
        .shared
        .host
        .images()
        .await?
        .into_iter()
        .find(|image| image.name == name)
        .map(Json)
        .ok_or_else(|| {
            HttpError::new(
                ErrorCode::NotFound,
                "no image of that name here; GET /v1/images lists them",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A quiet stream gets blank lines while it is quiet, its own lines as they come, and
    /// ends when it ends.
    #[tokio::test(start_paused = true)]
    async fn quiet_streams_get_keepalives() {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
        let chunks = futures_util::stream::unfold(receiver, |mut receiver| async move {
            let line = receiver.recv().await?;
            Some((Ok(Bytes::from(line)), receiver))
        });
        let mut body = Box::pin(with_keepalives(chunks, Duration::from_secs(30)));
        let started = tokio::time::Instant::now();
        let first = body.next().await.unwrap().unwrap();
        assert_eq!(first.as_ref(), b"\n");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        sender.send("{\"line\":1}\n").unwrap();
        assert_eq!(
            body.next().await.unwrap().unwrap().as_ref(),
            b"{\"line\":1}\n"
        );
        assert_eq!(body.next().await.unwrap().unwrap().as_ref(), b"\n");
        drop(sender);
        assert!(body.next().await.is_none());
    }

    fn session(id: &str, name: &str) -> Session {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "image": "base", "owner": "bob", "state": "ready",
            "created": 0, "workspace": null, "command": [],
            "ssh": {"host": "127.0.0.1", "port": 2300, "user": "agent", "host_key": "k"},
        }))
        .expect("a session")
    }

    #[test]
    fn only_built_catalogue_images_boot() {
        let info = |name: &str, built: bool| ImageInfo {
            name: name.into(),
            description: String::new(),
            tag: format!("cubbi-{name}"),
            built,
            tool_version: None,
            metadata: None,
        };
        let offered = [info("base", true), info("codex", false)];
        assert!(check_offered(&offered, "base").is_ok());
        let err = check_offered(&offered, "codex").unwrap_err();
        assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
        for other in ["3f2a9c", "debian", "claude-code"] {
            let err = check_offered(&offered, other).unwrap_err();
            assert_eq!(err.code(), ErrorCode::Invalid, "{err}");
            assert!(err.to_string().contains("does not offer"), "{err}");
        }
    }

    #[test]
    fn destructive_routes_take_exact_names_and_ids_only() {
        let full = "3f2a9c0d1e2b4a5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";
        let sessions = [session(full, "web2"), session(&"b".repeat(64), "api")];
        for exact in ["web2", full, &full[..12]] {
            assert_eq!(
                exact_session(&sessions, exact).as_deref(),
                Some(full),
                "{exact}"
            );
        }
        for prefix in ["w", "web", "3f2a", &full[..11], &full[..13], "web2x"] {
            assert_eq!(exact_session(&sessions, prefix), None, "{prefix}");
        }
    }
}
