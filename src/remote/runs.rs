//! Agent runs on a cubbi service: `cubbi -r NAME run` is `POST /v1/runs` (or
//! `POST /v1/sessions/{id}/runs`), so the service's own key reaches the session and the tool's
//! metadata is the service's, not whatever images this machine has.
//!
//! The run is always asked for as NDJSON: events arrive as they happen, a quiet agent is kept
//! alive by the service's blank lines, and dropping the answer (Ctrl-C) is what tells the
//! service to stop the agent.

use futures_util::StreamExt;
use reqwest::Method;
use reqwest::header::ACCEPT;

use super::client::{RemoteBackend, create_request, ndjson};
use crate::api::wire::RunBody;
use crate::api::{ApiError, SessionSpec};
use crate::local::naming::SessionName;
use crate::run::{RunEvent, RunRequest, RunResult};

impl RemoteBackend {
    /// Runs `body` in a new session (`session: None`) or in the caller's session `session`,
    /// handing each event to `on_event` and returning the result event. A stream that ends
    /// without a result, or a result the client would not print, is an error.
    pub async fn run(
        &self,
        session: Option<&str>,
        body: &RunBody,
        on_event: &mut (dyn FnMut(&RunEvent) + Send),
    ) -> Result<RunResult, ApiError> {
        let path = match session {
            None => "/v1/runs".to_string(),
            Some(id) => format!("{}/runs", Self::session_path(id)?),
        };
        let response = self
            .send(
                self.request(Method::POST, &path)
                    .header(ACCEPT, "application/x-ndjson")
                    .json(body),
            )
            .await?;
        let mut events = std::pin::pin!(ndjson::<RunEvent>(response, self.bounds()));
        while let Some(event) = events.next().await {
            match event? {
                RunEvent::Result(result) => return self.checked_result(result),
                event => on_event(&event),
            }
        }
        Err(ApiError::unavailable(format!(
            "the cubbi service `{}` ended the run's stream without a result",
            self.name()
        )))
    }

    /// The session named in a result becomes part of messages and later commands: it must be
    /// a session name.
    fn checked_result(&self, result: RunResult) -> Result<RunResult, ApiError> {
        if let Some(session) = &result.session
            && SessionName::parse(session).is_err()
        {
            return Err(ApiError::unavailable(format!(
                "the cubbi service `{}` named a run's session {session:?}, which is not a session name",
                self.name()
            )));
        }
        Ok(result)
    }
}

/// The body of a run: `request`, and for a new session (`spec`) what it is made of. What a
/// remote run cannot carry (a folder of this machine, volumes, leaving the default network) is
/// refused here, before anything reaches the service.
pub fn run_body(
    spec: Option<SessionSpec>,
    request: &RunRequest,
    keep: bool,
) -> Result<RunBody, ApiError> {
    let mut body = RunBody {
        prompt: request.prompt.clone(),
        append_system_prompt: request.append_system_prompt.clone(),
        allowed_tools: request.allowed_tools.clone(),
        disallowed_tools: request.disallowed_tools.clone(),
        resume_session_id: request.resume.clone(),
        model: request.model.clone(),
        max_turns: request.max_turns,
        timeout: request.timeout.map(|timeout| timeout.as_secs_f64()),
        keep,
        ..RunBody::default()
    };
    let Some(spec) = spec else {
        return Ok(body);
    };
    // The service authorizes no key of ours in a run's session; `connect` does, later.
    let create = create_request(spec, String::new())?;
    if !create.volumes.is_empty() {
        return Err(ApiError::invalid(
            "a remote run takes no volumes; give the work as a git URL or --project",
        ));
    }
    if !create.default_network {
        return Err(ApiError::invalid(
            "a remote run's session is always on the service's default network",
        ));
    }
    body.image = Some(create.image);
    body.name = create.name;
    body.env = create.env;
    body.networks = create.networks;
    body.project = create.project;
    body.run_init = create.run_init;
    body.runtime = create.runtime;
    body.memory = create.memory;
    body.cpus = create.cpus;
    body.pids_limit = create.pids_limit;
    body.mcp = create.mcp;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_in_an_existing_session_carries_only_the_run() {
        let request = RunRequest {
            prompt: "hello".into(),
            resume: Some("abc".into()),
            max_turns: Some(3),
            timeout: Some(std::time::Duration::from_secs(90)),
            ..RunRequest::default()
        };
        let body = run_body(None, &request, false).unwrap();
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"prompt": "hello", "resume_session_id": "abc",
                "max_turns": 3, "timeout": 90.0})
        );
    }
}
