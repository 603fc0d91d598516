//! `/v1/mcp`: each user's MCP servers on the service, and giving them to a new session by
//! name (`mcp` in `POST /v1/sessions` and `POST /v1/runs`).
//!
//! A user's servers are theirs alone: another user's name is a 404, as their sessions are.
//! Header and env values are secrets: they come up once in a request body, are kept in a
//! file of the user's (0600, under the service's state folder), reach a session only as
//! files, and never go back down (every answer is an [`McpSummary`]). A remote server's URL
//! obeys the service's `[egress]` rules, and a session held to an allow-list is given the
//! servers' host names (`=HOST`) so its tools reach them.

use std::path::Path;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use sha2::Digest;

use super::auth::Authenticated;
use super::http_error::HttpError;
use super::router::{AppState, SessionHost};
use super::store::Caller;
use crate::api::{ApiError, ErrorCode, SessionSpec};
use crate::egress::{DomainRule, EgressMode};
use crate::mcp::registry::McpRegistry;
use crate::mcp::{McpError, McpServer, McpSummary};

/// Most servers one user may keep, and give to one session.
const MAX_SERVERS: usize = 64;
const MAX_PER_SESSION: usize = 16;

/// One registry edit at a time in this process: an edit reads, changes and writes the file.
static EDITS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The user's registry: a file named by a digest of the user name, so no name becomes a path.
pub fn registry_of(dir: &Path, user: &str) -> McpRegistry {
    let digest = sha2::Sha256::digest(user.as_bytes());
    let file: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    McpRegistry::at(dir.join(format!("{file}.toml")))
}

fn mcp_error(err: McpError) -> HttpError {
    match err {
        McpError::NotFound(_) => HttpError::new(ErrorCode::NotFound, err.to_string()),
        McpError::Exists(_) => HttpError::new(ErrorCode::Conflict, err.to_string()),
        McpError::Registry { .. } => HttpError::new(ErrorCode::Unavailable, err.to_string()),
        other => HttpError::new(ErrorCode::Invalid, other.to_string()),
    }
}

/// A body that does not parse, without quoting its values (they may be secrets).
fn body_error(rejection: JsonRejection) -> HttpError {
    match rejection {
        JsonRejection::JsonDataError(_) | JsonRejection::JsonSyntaxError(_) => HttpError::new(
            ErrorCode::Invalid,
            "the body is not an MCP server: give `name` and `url` (with `headers`), or `name` \
             and `stdio` with `command` and/or `image`, and nothing else",
        ),
        other => other.into(),
    }
}

/// A remote server's host must be a name the service's `[egress]` rules allow; an address is
/// refused where the service keeps an allow-list of names.
fn check_url_egress(
    server: &McpServer,
    rules: &crate::egress::service_rules::ServiceEgress,
) -> Result<(), ApiError> {
    match host_rule(server) {
        Ok(None) => Ok(()),
        Ok(Some(rule)) => rules.check_change(&crate::egress::EgressChange {
            allow: vec![rule],
            deny: Vec::new(),
        }),
        Err(address) if rules.force_allow_list || !rules.allowed.is_empty() => Err(address),
        Err(_) => Ok(()),
    }
}

/// `=HOST` of a remote server; `None` for a stdio one. An address has no rule: refused
/// where names are all a session may reach.
fn host_rule(server: &McpServer) -> Result<Option<DomainRule>, ApiError> {
    if server.stdio.is_some() {
        return Ok(None);
    }
    let url = reqwest::Url::parse(&server.url)
        .map_err(|err| ApiError::invalid(format!("MCP server `{}`: {err}", server.name)))?;
    match url.domain() {
        Some(host) => format!("={host}")
            .parse::<DomainRule>()
            .map(Some)
            .map_err(|err| ApiError::EgressDomain(format!("MCP server `{}`: {err}", server.name))),
        None => Err(ApiError::EgressDomain(format!(
            "MCP server `{}` is at an address, not a name; sessions held to an allow-list reach \
             names only",
            server.name
        ))),
    }
}

/// Resolves `spec.mcp_names` in the caller's registry into `spec.mcp`, and opens a restricted
/// session's allow-list to their hosts. A name the caller has not registered is a 400.
pub(super) fn give<H: SessionHost>(
    state: &AppState<H>,
    caller: &Caller,
    spec: &mut SessionSpec,
) -> Result<(), ApiError> {
    let names = std::mem::take(&mut spec.mcp_names);
    if names.is_empty() {
        return Ok(());
    }
    if names.len() > MAX_PER_SESSION {
        return Err(ApiError::invalid(format!(
            "at most {MAX_PER_SESSION} MCP servers per session"
        )));
    }
    let known = state
        .host()
        .mcp_of(caller)?
        .list()
        .map_err(|err| ApiError::unavailable(err.to_string()))?;
    let servers =
        crate::mcp::pick(&known, &names).map_err(|err| ApiError::invalid(err.to_string()))?;
    let restricted = spec
        .egress
        .as_ref()
        .is_some_and(|egress| egress.mode() == EgressMode::AllowList);
    for server in &servers {
        check_url_egress(server, &state.policy().egress)?;
        if restricted
            && let Some(rule) = host_rule(server)?
            && let Some(egress) = spec.egress.as_mut()
            && !egress.domains.contains(&rule)
        {
            egress.domains.push(rule);
        }
    }
    spec.mcp = servers;
    Ok(())
}

#[utoipa::path(get, path = "/v1/mcp", operation_id = "list_mcp_servers", tag = "mcp",
    security(("token" = [])),
    responses((status = 200, description = "The caller's MCP servers (header and env names, never values)", body = [McpSummary]),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 503, description = "The service keeps no MCP servers, or cannot read them", body = crate::api::wire::ErrorBody)))]
pub(super) async fn list<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Vec<McpSummary>>, HttpError> {
    let servers = state.host().mcp_of(&caller)?.list().map_err(mcp_error)?;
    Ok(Json(servers.iter().map(McpServer::summary).collect()))
}

#[utoipa::path(post, path = "/v1/mcp", operation_id = "add_mcp_server", tag = "mcp",
    request_body = McpServer, security(("token" = [])),
    responses((status = 201, description = "Registered for the caller", body = McpSummary),
        (status = 400, description = "Not a valid server (name, URL, header), or its host is outside the service's [egress] rules (`egress_domain`)", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 409, description = "The caller has a server of that name", body = crate::api::wire::ErrorBody),
        (status = 429, description = "The caller keeps 64 servers", body = crate::api::wire::ErrorBody)))]
pub(super) async fn add<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    body: Result<Json<McpServer>, JsonRejection>,
) -> Result<(StatusCode, Json<McpSummary>), HttpError> {
    let Json(server) = body.map_err(body_error)?;
    server.check().map_err(mcp_error)?;
    check_url_egress(&server, &state.policy().egress)?;
    let registry = state.host().mcp_of(&caller)?;
    let _edit = EDITS.lock().await;
    if registry.list().map_err(mcp_error)?.len() >= MAX_SERVERS {
        return Err(ApiError::Quota(format!(
            "you keep {MAX_SERVERS} MCP servers, the most a user may; remove one first"
        ))
        .into());
    }
    registry.add(server.clone()).map_err(mcp_error)?;
    Ok((StatusCode::CREATED, Json(server.summary())))
}

#[utoipa::path(get, path = "/v1/mcp/{name}", operation_id = "show_mcp_server", tag = "mcp",
    params(("name" = String, Path, description = "The server's name")),
    security(("token" = [])),
    responses((status = 200, description = "The server (header and env names, never values)", body = McpSummary),
        (status = 400, description = "Not a server name", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No server of the caller's by that name", body = crate::api::wire::ErrorBody)))]
pub(super) async fn show<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    name: Result<UrlPath<String>, PathRejection>,
) -> Result<Json<McpSummary>, HttpError> {
    let UrlPath(name) = name?;
    crate::mcp::check_name(&name).map_err(mcp_error)?;
    let server = state
        .host()
        .mcp_of(&caller)?
        .get(&name)
        .map_err(mcp_error)?;
    Ok(Json(server.summary()))
}

#[utoipa::path(delete, path = "/v1/mcp/{name}", operation_id = "remove_mcp_server", tag = "mcp",
    params(("name" = String, Path, description = "The server's name")),
    security(("token" = [])),
    responses((status = 200, description = "Removed; sessions that have it keep it", body = McpSummary),
        (status = 400, description = "Not a server name", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No server of the caller's by that name", body = crate::api::wire::ErrorBody)))]
pub(super) async fn remove<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    name: Result<UrlPath<String>, PathRejection>,
) -> Result<Json<McpSummary>, HttpError> {
    let UrlPath(name) = name?;
    crate::mcp::check_name(&name).map_err(mcp_error)?;
    let registry = state.host().mcp_of(&caller)?;
    let _edit = EDITS.lock().await;
    let removed = registry.remove(&name).map_err(mcp_error)?;
    Ok(Json(removed.summary()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_has_a_file_of_their_own_that_no_name_can_escape() {
        let dir = Path::new("/state/mcp");
        let alice = registry_of(dir, "alice");
        assert!(alice.path().starts_with(dir));
        assert_ne!(alice.path(), registry_of(dir, "bob").path());
        assert!(registry_of(dir, "../../etc/passwd").path().starts_with(dir));
    }

    #[test]
    fn a_remote_server_gives_its_host_name_and_an_address_is_refused() {
        let named = McpServer::new("docs", "https://mcp.example.com/mcp", &[]).unwrap();
        assert_eq!(
            host_rule(&named).unwrap(),
            Some("=mcp.example.com".parse().unwrap())
        );
        let address = McpServer::new("ip", "http://192.0.2.1:8000/mcp", &[]).unwrap();
        assert_eq!(
            host_rule(&address).unwrap_err().code(),
            ErrorCode::EgressDomain
        );
        let rules: crate::egress::service_rules::ServiceEgress =
            toml::from_str("never = [\"example.com\"]").unwrap();
        assert_eq!(
            check_url_egress(&named, &rules).unwrap_err().code(),
            ErrorCode::EgressDomain
        );
        // An address is fine where no allow-list of names is kept, refused where one is.
        assert!(check_url_egress(&address, &rules).is_ok());
        let names_only: crate::egress::service_rules::ServiceEgress =
            toml::from_str("force_allow_list = true").unwrap();
        assert!(check_url_egress(&address, &names_only).is_err());
        assert!(check_url_egress(&named, &names_only).is_ok());
    }
}
