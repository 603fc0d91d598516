//! `/v1/projects`: each user's registered git repositories, kept by the service (see
//! [`super::projects`]). Credentials come up once in a request body and never go back down:
//! every answer is a [`ProjectSummary`], and no error or log line quotes a body's values.
//!
//! The service never scans an SSH host key on a request (that would let any caller make it
//! connect anywhere): a project on a host it knows no key of must bring `host_keys`; the CLI
//! scans from the client's side and asks its user first.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::auth::Authenticated;
use super::http_error::HttpError;
use super::router::{AppState, SessionHost};
use crate::api::{ApiError, ErrorCode};
use crate::projects::store::{ProjectStore, ProjectSummary, clone_url, ssh_host_pattern};
use crate::projects::url::{self, RepoUrl};
use crate::projects::wire::{
    AddProjectRequest, CredentialInput, UpdateProjectRequest, parse_host_keys,
};
use crate::projects::{NewProject, ProjectError, ProjectUpdate};

/// The longest project reference accepted in a path.
const MAX_REFERENCE: usize = 512;

/// Field and variant names of the project bodies: the only words a body error may quote.
const BODY_WORDS: &[&str] = &[
    "url",
    "name",
    "branch",
    "token_user",
    "credential",
    "host_keys",
    "ssh_key",
    "token",
];

/// A store failure as an answer: an unknown project (or another user's) is 404.
fn project_error(err: ProjectError) -> HttpError {
    match err {
        ProjectError::NotFound { .. } => HttpError::new(ErrorCode::NotFound, err.to_string()),
        other => ApiError::from(other).into(),
    }
}

/// A body that does not parse, without quoting any of its values: they may be secrets.
fn body_error(rejection: JsonRejection) -> HttpError {
    match rejection {
        JsonRejection::JsonDataError(_) | JsonRejection::JsonSyntaxError(_) => {
            HttpError::new(ErrorCode::Invalid, redact_quoted(&rejection.body_text()))
        }
        other => other.into(),
    }
}

/// Replaces every `` `quoted` `` or `"quoted"` part of a message by `…`, unless it is one of
/// [`BODY_WORDS`].
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(['`', '"']) {
        let quote = rest[start..].chars().next().unwrap_or('"');
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find(quote) {
            Some(end) => {
                let inner = &after[..end];
                out.push(quote);
                out.push_str(if BODY_WORDS.contains(&inner) {
                    inner
                } else {
                    "…"
                });
                out.push(quote);
                rest = &after[end + 1..];
            }
            None => {
                // An unclosed quote: drop what follows rather than risk quoting a secret.
                out.push('…');
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn check_reference(reference: &str) -> Result<(), HttpError> {
    if reference.is_empty() || reference.len() > MAX_REFERENCE || reference.contains('#') {
        return Err(HttpError::new(
            ErrorCode::Invalid,
            "a project is named by its name or its id (host/org/repo, percent-encoded as one \
             path segment), without #branch",
        ));
    }
    Ok(())
}

/// Runs store work (SQLite and crypto) off the async threads.
async fn blocking<T, F>(work: F) -> Result<T, HttpError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, HttpError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| HttpError::new(ErrorCode::Internal, err.to_string()))?
}

fn store_of<H: SessionHost>(
    state: &AppState<H>,
    caller: &super::store::Caller,
) -> Result<ProjectStore, HttpError> {
    Ok(state.host().projects_of(caller)?)
}

/// The refusal for an SSH project whose host key nobody gave.
fn needs_host_key(pattern: &str) -> HttpError {
    HttpError::new(
        ErrorCode::Invalid,
        format!(
            "no SSH host key is known to this service for {pattern}: pass the host's key in \
             host_keys (\"KEYTYPE BASE64\", checked against the fingerprint the host \
             publishes; `cubbi -r NAME project add` scans it and asks you), or ask the \
             service's admin to add it to projects.known_hosts. The service never scans a \
             host on request"
        ),
    )
}

#[utoipa::path(get, path = "/v1/projects", operation_id = "list_projects", tag = "projects", security(("token" = [])),
    responses((status = 200, description = "The caller's projects, by name (never a secret)", body = Vec<ProjectSummary>),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 500, description = "The project store failed", body = crate::api::wire::ErrorBody)))]
pub(super) async fn list<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Vec<ProjectSummary>>, HttpError> {
    let store = store_of(&state, &caller)?;
    blocking(move || {
        let projects = store.list().map_err(project_error)?;
        Ok(Json(projects.iter().map(|p| store.summary(p)).collect()))
    })
    .await
}

#[utoipa::path(post, path = "/v1/projects", operation_id = "add_project", tag = "projects", request_body = AddProjectRequest,
    security(("token" = [])),
    responses((status = 201, description = "Registered", body = ProjectSummary),
        (status = 400, description = "Bad URL, name, branch, credential or host key; or an SSH host without a known key", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 409, description = "The project or the name is taken", body = crate::api::wire::ErrorBody),
        (status = 413, description = "Body over the limit", body = crate::api::wire::ErrorBody),
        (status = 429, description = "The caller has limits.projects_per_user projects", body = crate::api::wire::ErrorBody)))]
pub(super) async fn add<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    body: Result<Json<AddProjectRequest>, JsonRejection>,
) -> Result<Response, HttpError> {
    let Json(request) = body.map_err(body_error)?;
    let store = store_of(&state, &caller)?;
    let limit = state.policy().projects_per_user;
    blocking(move || {
        let registered = store.list().map_err(project_error)?.len();
        if registered >= limit {
            return Err(ApiError::Quota(format!(
                "you have {registered} projects and this service allows {limit} per user \
                 (limits.projects_per_user); remove one first"
            ))
            .into());
        }
        let url = RepoUrl::parse(&request.url).map_err(project_error)?;
        if let Some(name) = &request.name {
            url::validate_name(name).map_err(project_error)?;
        }
        if let Some(branch) = &request.branch {
            url::validate_branch(branch).map_err(project_error)?;
        }
        let credential = match request.credential {
            Some(input) => Some(
                input
                    .into_credential(request.token_user.as_deref())
                    .map_err(project_error)?,
            ),
            None if request.token_user.is_some() => {
                return Err(project_error(ProjectError::Refused(
                    "token_user goes with a token credential".into(),
                )));
            }
            None => None,
        };
        let target = clone_url(&url, credential.as_ref());
        let host_keys = parse_host_keys(&request.host_keys, &target).map_err(project_error)?;
        if let Some(pattern) = ssh_host_pattern(&target)
            && host_keys.is_empty()
            && store.known_host_keys(&pattern).is_empty()
        {
            return Err(needs_host_key(&pattern));
        }
        let project = store
            .add(NewProject {
                url,
                name: request.name,
                branch: request.branch,
                credential,
                host_keys,
            })
            .map_err(project_error)?;
        tracing::info!(project = %project.id, "project registered");
        Ok((StatusCode::CREATED, Json(store.summary(&project))).into_response())
    })
    .await
}

#[utoipa::path(get, path = "/v1/projects/{reference}", operation_id = "show_project", tag = "projects",
    params(("reference" = String, Path, description = "The project's name, or its id host/org/repo percent-encoded as one segment")),
    security(("token" = [])),
    responses((status = 200, description = "The project (never its secret)", body = ProjectSummary),
        (status = 400, description = "Bad reference", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No such project of the caller's", body = crate::api::wire::ErrorBody)))]
pub(super) async fn show<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    reference: Result<Path<String>, PathRejection>,
) -> Result<Json<ProjectSummary>, HttpError> {
    let Path(reference) = reference?;
    check_reference(&reference)?;
    let store = store_of(&state, &caller)?;
    blocking(move || {
        let project = store.require(&reference).map_err(project_error)?;
        Ok(Json(store.summary(&project)))
    })
    .await
}

#[utoipa::path(put, path = "/v1/projects/{reference}", operation_id = "update_project", tag = "projects",
    params(("reference" = String, Path, description = "The project's name, or its id host/org/repo percent-encoded as one segment")),
    request_body = UpdateProjectRequest, security(("token" = [])),
    responses((status = 200, description = "Changed", body = ProjectSummary),
        (status = 400, description = "Bad reference or change", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No such project of the caller's", body = crate::api::wire::ErrorBody),
        (status = 409, description = "The new name is taken", body = crate::api::wire::ErrorBody),
        (status = 413, description = "Body over the limit", body = crate::api::wire::ErrorBody)))]
pub(super) async fn update<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    reference: Result<Path<String>, PathRejection>,
    body: Result<Json<UpdateProjectRequest>, JsonRejection>,
) -> Result<Json<ProjectSummary>, HttpError> {
    let Path(reference) = reference?;
    check_reference(&reference)?;
    let Json(request) = body.map_err(body_error)?;
    let store = store_of(&state, &caller)?;
    blocking(move || {
        let current = store.require(&reference).map_err(project_error)?;
        // A new token keeps its user unless one is given; the store applies that.
        let credential = match request.credential {
            None => None,
            Some(None) => Some(None),
            Some(Some(input)) => {
                let user = match (&input, &request.token_user) {
                    (CredentialInput::Token(_), None) => None,
                    (_, user) => user.as_deref(),
                };
                Some(Some(input.into_credential(user).map_err(project_error)?))
            }
        };
        let target = match &credential {
            Some(Some(new)) => {
                let parsed = RepoUrl::parse(&current.url).map_err(project_error)?;
                clone_url(&parsed, Some(new))
            }
            _ => current.url.clone(),
        };
        let host_keys = match &request.host_keys {
            Some(keys) => Some(parse_host_keys(keys, &target).map_err(project_error)?),
            None => None,
        };
        let own_keys = host_keys.as_ref().unwrap_or(&current.host_keys);
        if let Some(pattern) = ssh_host_pattern(&target)
            && own_keys.is_empty()
            && store.known_host_keys(&pattern).is_empty()
        {
            return Err(needs_host_key(&pattern));
        }
        let updated = store
            .update(
                &current.id,
                ProjectUpdate {
                    name: request.name,
                    credential,
                    token_user: request.token_user,
                    branch: request.branch,
                    host_keys,
                },
            )
            .map_err(project_error)?;
        tracing::info!(project = %updated.id, "project changed");
        Ok(Json(store.summary(&updated)))
    })
    .await
}

#[utoipa::path(delete, path = "/v1/projects/{reference}", operation_id = "remove_project", tag = "projects",
    params(("reference" = String, Path, description = "The project's name, or its id host/org/repo percent-encoded as one segment")),
    security(("token" = [])),
    responses((status = 200, description = "Forgotten, with its credential; what it was", body = ProjectSummary),
        (status = 400, description = "Bad reference", body = crate::api::wire::ErrorBody),
        (status = 401, description = "No valid token", body = crate::api::wire::ErrorBody),
        (status = 404, description = "No such project of the caller's", body = crate::api::wire::ErrorBody)))]
pub(super) async fn remove<H: SessionHost>(
    State(state): State<AppState<H>>,
    Authenticated(caller): Authenticated,
    reference: Result<Path<String>, PathRejection>,
) -> Result<Json<ProjectSummary>, HttpError> {
    let Path(reference) = reference?;
    check_reference(&reference)?;
    let store = store_of(&state, &caller)?;
    blocking(move || {
        let removed = store.remove(&reference).map_err(project_error)?;
        tracing::info!(project = %removed.id, "project removed");
        Ok(Json(store.summary(&removed)))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::redact_quoted;

    #[test]
    fn body_errors_quote_field_names_only() {
        assert_eq!(
            redact_quoted("credential: unknown variant `hunter2`, expected `ssh_key` or `token`"),
            "credential: unknown variant `…`, expected `ssh_key` or `token`"
        );
        assert_eq!(
            redact_quoted("invalid type: string \"tok-secret\", expected a map"),
            "invalid type: string \"…\", expected a map"
        );
        assert_eq!(redact_quoted("cut `short"), "cut …");
    }
}
