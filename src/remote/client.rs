//! The session backend over HTTP: the same [`Backend`] the CLI drives locally, spoken to a
//! `cubbi serve`. Sessions it creates or connects to get the same `~/.ssh/cubbi.d/` files as
//! local ones (with the host key the service pinned), so `ssh cubbi-NAME` works with strict
//! checking against the remote host.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::api::wire::{
    ConnectRequest, CreateRequest, ErrorBody, ExecLine, ExecRequest, ImageInfo, LogLine,
};
use crate::api::{
    ApiError, Backend, CreateStep, ExecEvent, LogChunk, LogOptions, Progress, Session, SessionSpec,
};
use crate::ssh::files::SshFiles;

/// How long a connection attempt to the service may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest line of a stream the client accepts (a runaway service must not exhaust memory).
const MAX_LINE: usize = 16 * 1024 * 1024;

pub struct RemoteBackend {
    /// The remote's name, for messages (`cubbi -r NAME auth`).
    name: String,
    /// Base URL without a trailing slash.
    url: String,
    token: String,
    http: reqwest::Client,
    /// The user's public key, authorized in sessions this client creates or connects to.
    public_key: String,
    ssh_files: Option<SshFiles>,
}

impl RemoteBackend {
    pub fn new(
        name: &str,
        url: &str,
        token: String,
        public_key: String,
        ssh_files: Option<SshFiles>,
    ) -> Result<Self, ApiError> {
        let http = super::http_client(
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .user_agent(concat!("cubbi/", env!("CARGO_PKG_VERSION"))),
        )
        .map_err(|err| ApiError::unavailable(err.to_string()))?;
        Ok(Self {
            name: name.to_string(),
            url: url.trim_end_matches('/').to_string(),
            token,
            http,
            public_key,
            ssh_files,
        })
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }

    /// Sends a request; a failure status becomes the service's error as it worded it.
    pub(crate) async fn send(&self, request: RequestBuilder) -> Result<Response, ApiError> {
        let response = request.send().await.map_err(|err| {
            ApiError::unavailable(format!(
                "cannot reach the cubbi service `{}` at {}: {}",
                self.name,
                self.url,
                without_url(&err)
            ))
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        let detail = serde_json::from_slice::<ErrorBody>(&body)
            .ok()
            .map(|b| b.error);
        if status == StatusCode::UNAUTHORIZED {
            return Err(ApiError::Unauthorized(format!(
                "the cubbi service `{}` refused the token{}; run `cubbi -r {} auth` with a valid one",
                self.name,
                detail
                    .map(|d| format!(" ({})", d.message))
                    .unwrap_or_default(),
                self.name
            )));
        }
        Err(match detail {
            Some(detail) => detail.into(),
            None => ApiError::unavailable(format!(
                "the cubbi service `{}` answered {status} without an error body",
                self.name
            )),
        })
    }

    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<T, ApiError> {
        let response = self.send(request).await?;
        response.json().await.map_err(|err| {
            ApiError::unavailable(format!(
                "the cubbi service `{}` sent an answer this client cannot read: {}",
                self.name,
                without_url(&err)
            ))
        })
    }

    fn session_path(id: &str) -> Result<String, ApiError> {
        // Names and ids have no characters a URL would need escaped; refuse the rest here.
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(ApiError::invalid(format!(
                "`{id}` is not a session id or name"
            )));
        }
        Ok(format!("/v1/sessions/{id}"))
    }

    fn write_ssh_files(&self, session: &Session) -> Result<(), ApiError> {
        if let Some(files) = &self.ssh_files {
            files
                .write_session(&session.name, &session.ssh)
                .map_err(|err| ApiError::unavailable(err.to_string()))?;
        }
        Ok(())
    }

    pub async fn images(&self) -> Result<Vec<ImageInfo>, ApiError> {
        self.json(self.request(Method::GET, "/v1/images")).await
    }

    pub async fn image(&self, name: &str) -> Result<ImageInfo, ApiError> {
        if !crate::images::metadata::is_image_name(name) {
            return Err(ApiError::invalid(format!("`{name}` is not an image name")));
        }
        self.json(self.request(Method::GET, &format!("/v1/images/{name}")))
            .await
    }
}

/// What went wrong with a request, with its causes (the URL is in the message already).
fn without_url(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else if err.is_decode() {
        "undecodable answer"
    } else {
        "request failed"
    };
    let mut text = kind.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// The lines of an NDJSON body, each parsed as `T`.
fn ndjson<T: DeserializeOwned + Send + 'static>(
    response: Response,
) -> impl Stream<Item = Result<T, ApiError>> + Send + 'static {
    let bytes = response.bytes_stream();
    futures_util::stream::unfold(
        (bytes, Vec::<u8>::new(), false),
        |(mut bytes, mut buffer, done)| async move {
            if done {
                return None;
            }
            loop {
                if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let parsed = serde_json::from_slice::<T>(&line).map_err(|err| {
                        ApiError::unavailable(format!("the service sent an unreadable line: {err}"))
                    });
                    return Some((parsed, (bytes, buffer, false)));
                }
                if buffer.len() > MAX_LINE {
                    let err = ApiError::unavailable("the service sent a line over 16 MiB");
                    return Some((Err(err), (bytes, buffer, true)));
                }
                match bytes.next().await {
                    Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                    Some(Err(err)) => {
                        let err = ApiError::unavailable(format!(
                            "the stream from the service broke: {}",
                            without_url(&err)
                        ));
                        return Some((Err(err), (bytes, buffer, true)));
                    }
                    None => return None,
                }
            }
        },
    )
}

/// A spec as a request: what only makes sense on this machine is refused here, clearly.
fn create_request(spec: SessionSpec, public_key: String) -> Result<CreateRequest, ApiError> {
    if let Some(workspace) = &spec.workspace {
        return Err(ApiError::invalid(format!(
            "a folder of this machine ({}) cannot be mounted into a remote session; give a git \
             URL (`cubbi -r NAME https://host/org/repo`) or --project",
            workspace.display()
        )));
    }
    Ok(CreateRequest {
        image: spec.image,
        name: spec.name,
        env: spec.env,
        networks: spec.networks,
        default_network: spec.default_network,
        volumes: spec.volumes,
        project: spec.project,
        run_init: spec.run_init,
        memory: spec.memory,
        cpus: spec.cpus,
        pids_limit: spec.pids_limit,
        runtime: Some(spec.runtime),
        public_key: Some(public_key),
    })
}

#[async_trait]
impl Backend for RemoteBackend {
    async fn create(
        &self,
        spec: SessionSpec,
        progress: &dyn Progress,
    ) -> Result<Session, ApiError> {
        progress.step(CreateStep::Validating);
        let request = create_request(spec, self.public_key.clone())?;
        progress.step(CreateStep::WaitingForSsh);
        let session: Session = self
            .json(self.request(Method::POST, "/v1/sessions").json(&request))
            .await?;
        progress.step(CreateStep::WritingSshConfig);
        self.write_ssh_files(&session)?;
        Ok(session)
    }

    async fn list(&self) -> Result<Vec<Session>, ApiError> {
        self.json(self.request(Method::GET, "/v1/sessions")).await
    }

    async fn get(&self, id_or_name: &str) -> Result<Session, ApiError> {
        let path = Self::session_path(id_or_name)?;
        self.json(self.request(Method::GET, &path)).await
    }

    async fn close(&self, id_or_name: &str) -> Result<Session, ApiError> {
        let path = Self::session_path(id_or_name)?;
        let session: Session = self.json(self.request(Method::DELETE, &path)).await?;
        if let Some(files) = &self.ssh_files {
            files
                .remove_session(&session.name)
                .map_err(|err| ApiError::unavailable(err.to_string()))?;
        }
        Ok(session)
    }

    async fn logs(
        &self,
        id_or_name: &str,
        options: LogOptions,
    ) -> Result<BoxStream<'static, Result<LogChunk, ApiError>>, ApiError> {
        let path = format!("{}/logs", Self::session_path(id_or_name)?);
        let mut query = format!("?follow={}", options.follow);
        if let Some(tail) = options.tail {
            query += &format!("&tail={tail}");
        }
        let response = self
            .send(self.request(Method::GET, &format!("{path}{query}")))
            .await?;
        let lines = ndjson::<LogLine>(response).map(|line| match line? {
            LogLine::Text(text) => Ok(LogChunk { text }),
            LogLine::Error(detail) => Err(detail.into()),
        });
        Ok(Box::pin(lines))
    }

    async fn connect(&self, id_or_name: &str, public_key: &str) -> Result<Session, ApiError> {
        let path = format!("{}/connect", Self::session_path(id_or_name)?);
        let body = ConnectRequest {
            public_key: public_key.to_string(),
        };
        let session: Session = self
            .json(self.request(Method::POST, &path).json(&body))
            .await?;
        self.write_ssh_files(&session)?;
        Ok(session)
    }

    async fn exec(
        &self,
        id_or_name: &str,
        command: Vec<String>,
    ) -> Result<BoxStream<'static, Result<ExecEvent, ApiError>>, ApiError> {
        let path = format!("{}/exec", Self::session_path(id_or_name)?);
        let response = self
            .send(
                self.request(Method::POST, &path)
                    .json(&ExecRequest { command }),
            )
            .await?;
        let events = ndjson::<ExecLine>(response).map(|line| line?.into_event());
        Ok(Box::pin(events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_folders_are_refused_for_remote_sessions() {
        let spec = SessionSpec {
            name: None,
            image: "base".into(),
            workspace: Some("/home/me/code".into()),
            project: None,
            run_init: false,
            env: Default::default(),
            volumes: Vec::new(),
            networks: Vec::new(),
            default_network: true,
            memory: None,
            cpus: None,
            pids_limit: None,
            runtime: "sysbox-runc".into(),
            unsafe_runc: false,
            ssh_bind: "127.0.0.1".parse().unwrap(),
            authorized_keys: Vec::new(),
        };
        let err = create_request(spec.clone(), "ssh-ed25519 AAAA".into()).unwrap_err();
        assert!(err.to_string().contains("/home/me/code"), "{err}");
        let request = create_request(
            SessionSpec {
                workspace: None,
                ..spec
            },
            "ssh-ed25519 AAAA".into(),
        )
        .unwrap();
        assert_eq!(request.public_key.as_deref(), Some("ssh-ed25519 AAAA"));
    }

    #[test]
    fn hostile_ids_never_reach_a_url() {
        for id in ["../admin", "a/b", "a?b", "", "x y", "%2e%2e"] {
            assert!(RemoteBackend::session_path(id).is_err(), "{id}");
        }
        assert_eq!(
            RemoteBackend::session_path("abc-1.2_x").unwrap(),
            "/v1/sessions/abc-1.2_x"
        );
    }
}
