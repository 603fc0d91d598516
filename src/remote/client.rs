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
    Snapshot,
};
use crate::local::naming::SessionName;
use crate::ssh::checked::CheckedEndpoint;
use crate::ssh::files::SshFiles;

/// How long a connection attempt to the service may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest line of a stream the client accepts (a runaway service must not exhaust memory).
const MAX_LINE: usize = 16 * 1024 * 1024;
/// How long a request and its whole answer may take (streams: until their first byte). Above
/// the service's own `server.request_timeout` default (180 s), so the service's 504 is what a
/// slow create shows; a service that never answers cannot hold the CLI for ever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// The largest answer that is not a stream (a session list of a busy service is far below).
const MAX_BODY: usize = 8 * 1024 * 1024;
/// The largest error body read; the rest is not waited for.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// How long a stream (logs, exec) may send nothing before the client gives up on it. The
/// service sends a blank line every 30 s of quiet, so a quiet `exec` or `logs --follow` stays
/// open however long it lasts, and only a service that went away is given up on.
const STREAM_IDLE: Duration = Duration::from_secs(300);

/// How much and how long the client waits for a service.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub request_timeout: Duration,
    pub max_body: usize,
    pub max_line: usize,
    pub stream_idle: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            request_timeout: REQUEST_TIMEOUT,
            max_body: MAX_BODY,
            max_line: MAX_LINE,
            stream_idle: STREAM_IDLE,
        }
    }
}

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
    bounds: Bounds,
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
            bounds: Bounds::default(),
        })
    }

    /// The same client with other bounds (tests use short ones).
    pub fn with_bounds(mut self, bounds: Bounds) -> Self {
        self.bounds = bounds;
        self
    }

    /// The remote's name, for messages.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// The service's base URL, without a trailing slash.
    pub(super) fn url(&self) -> &str {
        &self.url
    }

    pub(super) fn bounds(&self) -> Bounds {
        self.bounds
    }

    fn timed_out(&self) -> ApiError {
        ApiError::unavailable(format!(
            "the cubbi service `{}` at {} did not answer within {:?}",
            self.name, self.url, self.bounds.request_timeout
        ))
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }

    /// Sends a request; a failure status becomes the service's error as it worded it.
    pub(crate) async fn send(&self, request: RequestBuilder) -> Result<Response, ApiError> {
        tokio::time::timeout(self.bounds.request_timeout, self.send_unbounded(request))
            .await
            .map_err(|_| self.timed_out())?
    }

    async fn send_unbounded(&self, request: RequestBuilder) -> Result<Response, ApiError> {
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
        let body = read_limited(response, MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
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

    /// A request whose answer is one JSON value: the whole exchange within the request
    /// timeout, the body within the size limit.
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<T, ApiError> {
        let exchange = async {
            let response = self.send_unbounded(request).await?;
            read_limited(response, self.bounds.max_body)
                .await
                .map_err(|err| match err {
                    BodyError::TooLarge => ApiError::unavailable(format!(
                        "the cubbi service `{}` sent an answer over {} bytes; refusing it",
                        self.name, self.bounds.max_body
                    )),
                    BodyError::Broken(err) => ApiError::unavailable(format!(
                        "the answer of the cubbi service `{}` broke off: {}",
                        self.name,
                        without_url(&err)
                    )),
                })
        };
        let body = tokio::time::timeout(self.bounds.request_timeout, exchange)
            .await
            .map_err(|_| self.timed_out())??;
        serde_json::from_slice(&body).map_err(|err| {
            ApiError::unavailable(format!(
                "the cubbi service `{}` sent an answer this client cannot read: {err}",
                self.name
            ))
        })
    }

    /// A session as the service described it, refused whole when a field the client writes
    /// into OpenSSH files or a URL does not pass the checks (see [`checked_session`]).
    async fn session(&self, request: RequestBuilder) -> Result<Session, ApiError> {
        let session: Session = self.json(request).await?;
        checked_session(&self.name, session)
    }

    pub(super) fn session_path(id: &str) -> Result<String, ApiError> {
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

    /// Writes the session's OpenSSH files; [`checked_session`] has checked it.
    fn write_ssh_files(&self, session: &Session) -> Result<(), ApiError> {
        if let Some(files) = &self.ssh_files {
            // A service whose SSH ports clients cannot reach: OpenSSH goes through it.
            let route = if session.ssh.proxy {
                crate::ssh::files::Route::Proxy {
                    remote: &self.name,
                    id: &session.id,
                }
            } else {
                crate::ssh::files::Route::Direct
            };
            files
                .write_session_via(&session.name, &session.ssh, route)
                .map_err(|err| ApiError::unavailable(err.to_string()))?;
        }
        Ok(())
    }

    /// A create of `spec`, or of a session from the caller's snapshot `snapshot` (the spec's
    /// image is then the snapshot's, on the service).
    pub async fn create_with(
        &self,
        spec: SessionSpec,
        snapshot: Option<String>,
        progress: &dyn Progress,
    ) -> Result<Session, ApiError> {
        progress.step(CreateStep::Validating);
        let mut request = create_request(spec, self.public_key.clone())?;
        if snapshot.is_some() {
            request.image = String::new();
            request.snapshot = snapshot;
        }
        progress.step(CreateStep::WaitingForSsh);
        let session = self
            .session(self.request(Method::POST, "/v1/sessions").json(&request))
            .await?;
        progress.step(CreateStep::WritingSshConfig);
        self.write_ssh_files(&session)?;
        Ok(session)
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

/// Why a body was not read.
pub(super) enum BodyError {
    TooLarge,
    Broken(reqwest::Error),
}

/// The body, or [`BodyError::TooLarge`] as soon as it passes `limit` bytes (announced or
/// sent): a service cannot make the client hold more.
pub(super) async fn read_limited(response: Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(BodyError::Broken)?;
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A session from a service's answer, checked before anything uses it: its name by the
/// naming rules (it becomes file names under `~/.ssh/cubbi.d` and a `Host` alias), its SSH
/// host, user and host key by [`CheckedEndpoint`] (they become lines of OpenSSH files), its id
/// by the characters of a URL segment. The answer is refused, never mended. Text fields that
/// are only printed (owner, statuses) are neutralised where they are printed.
fn checked_session(service: &str, session: Session) -> Result<Session, ApiError> {
    let refuse = |what: String| {
        ApiError::unavailable(format!(
            "the cubbi service `{service}` sent a session this client refuses to use: {what}"
        ))
    };
    SessionName::parse(&session.name).map_err(|err| refuse(format!("the name {err}")))?;
    CheckedEndpoint::parse(&session.ssh).map_err(|err| refuse(err.to_string()))?;
    if RemoteBackend::session_path(&session.id).is_err() || session.id.len() > 128 {
        return Err(refuse(format!(
            "the id {:?} is not a session id",
            session.id
        )));
    }
    Ok(session)
}

/// The lines of an NDJSON body, each parsed as `T`: at most `bounds.max_line` bytes a line,
/// and an error when nothing comes for `bounds.stream_idle`.
pub(super) fn ndjson<T: DeserializeOwned + Send + 'static>(
    response: Response,
    bounds: Bounds,
) -> impl Stream<Item = Result<T, ApiError>> + Send + 'static {
    let bytes = response.bytes_stream();
    futures_util::stream::unfold(
        (bytes, Vec::<u8>::new(), false),
        move |(mut bytes, mut buffer, done)| async move {
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
                if buffer.len() > bounds.max_line {
                    let err = ApiError::unavailable(format!(
                        "the service sent a line over {} bytes",
                        bounds.max_line
                    ));
                    return Some((Err(err), (bytes, buffer, true)));
                }
                match tokio::time::timeout(bounds.stream_idle, bytes.next()).await {
                    Err(_) => {
                        let err = ApiError::unavailable(format!(
                            "the service sent nothing for {:?}; giving up on the stream",
                            bounds.stream_idle
                        ));
                        return Some((Err(err), (bytes, buffer, true)));
                    }
                    Ok(Some(Ok(chunk))) => buffer.extend_from_slice(&chunk),
                    Ok(Some(Err(err))) => {
                        let err = ApiError::unavailable(format!(
                            "the stream from the service broke: {}",
                            without_url(&err)
                        ));
                        return Some((Err(err), (bytes, buffer, true)));
                    }
                    Ok(None) => return None,
                }
            }
        },
    )
}

/// A spec as a request: every field is carried or refused here, clearly (the destructuring
/// names them all, so a new one cannot be dropped silently). Plain runc needs the same opt-in
/// as locally; the service's bind address and the authorized keys are the service's and this
/// client's own.
pub(super) fn create_request(
    spec: SessionSpec,
    public_key: String,
) -> Result<CreateRequest, ApiError> {
    let SessionSpec {
        name,
        image,
        workspace,
        project,
        run_init,
        env,
        volumes,
        networks,
        default_network,
        memory,
        cpus,
        pids_limit,
        runtime,
        unsafe_runc,
        ssh_bind: _, // `--ssh-bind` is refused for a remote where it is parsed
        authorized_keys,
        idle_stop_secs,
        mcp,
        mcp_names,
        egress,
    } = spec;
    if !mcp.is_empty() {
        return Err(ApiError::invalid(
            "a remote session takes MCP servers registered on the service (`cubbi -r NAME mcp \
             add`), by name",
        ));
    }
    if let Some(workspace) = &workspace {
        return Err(ApiError::invalid(format!(
            "a folder of this machine ({}) cannot be mounted into a remote session; give a git \
             URL (`cubbi -r NAME https://host/org/repo`) or --project",
            workspace.display()
        )));
    }
    crate::local::runtime::check_opt_in(&runtime, unsafe_runc)?;
    if !authorized_keys.is_empty() {
        return Err(ApiError::invalid(
            "a remote session authorizes this client's key only; extra keys cannot be sent",
        ));
    }
    Ok(CreateRequest {
        image,
        snapshot: None,
        name,
        env,
        networks,
        default_network,
        volumes,
        project,
        run_init,
        memory,
        cpus,
        pids_limit,
        runtime: Some(runtime),
        idle_stop_secs,
        public_key: Some(public_key),
        egress,
        mcp: mcp_names,
    })
}

#[async_trait]
impl Backend for RemoteBackend {
    async fn create(
        &self,
        spec: SessionSpec,
        progress: &dyn Progress,
    ) -> Result<Session, ApiError> {
        self.create_with(spec, None, progress).await
    }

    async fn list(&self) -> Result<Vec<Session>, ApiError> {
        let sessions: Vec<Session> = self.json(self.request(Method::GET, "/v1/sessions")).await?;
        sessions
            .into_iter()
            .map(|session| checked_session(&self.name, session))
            .collect()
    }

    async fn get(&self, id_or_name: &str) -> Result<Session, ApiError> {
        let path = Self::session_path(id_or_name)?;
        self.session(self.request(Method::GET, &path)).await
    }

    async fn stop(&self, id_or_name: &str) -> Result<Session, ApiError> {
        let path = format!("{}/stop", Self::session_path(id_or_name)?);
        self.session(self.request(Method::POST, &path)).await
    }

    async fn start(&self, id_or_name: &str) -> Result<Session, ApiError> {
        let path = format!("{}/start", Self::session_path(id_or_name)?);
        let session = self.session(self.request(Method::POST, &path)).await?;
        // The same pin and port as before; written again only in case they went missing.
        self.write_ssh_files(&session)?;
        Ok(session)
    }

    async fn snapshot(&self, id_or_name: &str, name: Option<String>) -> Result<Snapshot, ApiError> {
        let path = format!("{}/snapshot", Self::session_path(id_or_name)?);
        let body = crate::api::wire::SnapshotRequest { name };
        self.json(self.request(Method::POST, &path).json(&body))
            .await
    }

    async fn change_egress(
        &self,
        id_or_name: &str,
        change: crate::egress::EgressChange,
    ) -> Result<crate::api::EgressView, ApiError> {
        change.check()?;
        let path = format!("{}/egress", Self::session_path(id_or_name)?);
        let mut view: crate::api::EgressView = self
            .json(self.request(Method::POST, &path).json(&change))
            .await?;
        // The service's words: only DNS names, as many as a resolver keeps.
        view.denied = std::mem::take(&mut view.denied)
            .into_iter()
            .filter(|name| name.parse::<crate::egress::DomainRule>().is_ok())
            .take(crate::egress::table::DENIED_KEPT)
            .collect();
        Ok(view)
    }

    async fn snapshots(&self) -> Result<Vec<Snapshot>, ApiError> {
        self.json(self.request(Method::GET, "/v1/snapshots")).await
    }

    async fn remove_snapshot(&self, name: &str) -> Result<Snapshot, ApiError> {
        let name = crate::local::snapshot::check_name(name)?;
        self.json(self.request(Method::DELETE, &format!("/v1/snapshots/{name}")))
            .await
    }

    async fn export_data(
        &self,
        image: Option<&str>,
    ) -> Result<(Vec<u8>, crate::api::DataSummary), ApiError> {
        self.export_remote_data(image).await
    }

    async fn import_data(&self, archive: Vec<u8>) -> Result<crate::api::DataSummary, ApiError> {
        self.import_remote_data(archive).await
    }

    async fn close(&self, id_or_name: &str) -> Result<Session, ApiError> {
        let path = Self::session_path(id_or_name)?;
        let session = self.session(self.request(Method::DELETE, &path)).await?;
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
        let lines = ndjson::<LogLine>(response, self.bounds).map(|line| match line? {
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
        let session = self
            .session(self.request(Method::POST, &path).json(&body))
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
        let events = ndjson::<ExecLine>(response, self.bounds).map(|line| line?.into_event());
        Ok(Box::pin(events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(runtime: &str) -> SessionSpec {
        SessionSpec {
            name: None,
            image: "base".into(),
            workspace: None,
            project: None,
            run_init: false,
            env: Default::default(),
            volumes: Vec::new(),
            networks: Vec::new(),
            default_network: true,
            memory: None,
            cpus: None,
            pids_limit: None,
            runtime: runtime.into(),
            unsafe_runc: false,
            ssh_bind: "127.0.0.1".parse().unwrap(),
            authorized_keys: Vec::new(),
            idle_stop_secs: None,
            mcp: Vec::new(),
            mcp_names: Vec::new(),
            egress: None,
        }
    }

    #[test]
    fn local_folders_are_refused_for_remote_sessions() {
        let spec = SessionSpec {
            workspace: Some("/home/me/code".into()),
            ..spec("sysbox-runc")
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
    fn runc_needs_the_opt_in_remotely_too() {
        let spec = spec("runc");
        let err = create_request(spec.clone(), "k".into()).unwrap_err();
        assert!(err.to_string().contains("--unsafe-runc"), "{err}");
        let request = create_request(
            SessionSpec {
                unsafe_runc: true,
                ..spec.clone()
            },
            "k".into(),
        )
        .unwrap();
        assert_eq!(request.runtime.as_deref(), Some("runc"));
        let err = create_request(
            SessionSpec {
                unsafe_runc: true,
                authorized_keys: vec!["ssh-ed25519 AAAA".into()],
                ..spec
            },
            "k".into(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("extra keys"), "{err}");
    }

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAv6DsKRDHwOfHjfUK0cw6GU8eYuf7ZEu6h7mU/A+NFp";

    fn session_json(name: &str, host: &str, user: &str, key: &str) -> String {
        serde_json::json!({
            "id": "0123456789ab", "name": name, "image": "base", "owner": "alice",
            "state": "ready", "created": 0, "workspace": null, "command": [],
            "ssh": {"host": host, "port": 2200, "user": user, "host_key": key},
        })
        .to_string()
    }

    #[test]
    fn hostile_sessions_are_refused_whole() {
        let parse = |json: String| serde_json::from_str::<Session>(&json).unwrap();
        let good = parse(session_json("web", "127.0.0.1", "agent", KEY));
        assert_eq!(checked_session("svc", good).unwrap().name, "web");
        for (json, says) in [
            (
                session_json("../../.config/x/cubbi", "127.0.0.1", "agent", KEY),
                "not a session name",
            ),
            (
                session_json("web", "127.0.0.1\nMatch exec \"id\"", "agent", KEY),
                "SSH host",
            ),
            (
                session_json("web", "h", "agent\n  ProxyCommand sh", KEY),
                "SSH user",
            ),
            (
                session_json("web", "h", "agent", "ssh-ed25519 AAAA"),
                "host key",
            ),
        ] {
            let err = checked_session("svc", parse(json)).unwrap_err().to_string();
            assert!(
                err.contains("refuses to use") && err.contains(says),
                "{err}"
            );
        }
        let mut bad_id = parse(session_json("web", "h", "agent", KEY));
        bad_id.id = "../x".into();
        assert!(checked_session("svc", bad_id).is_err());
    }

    /// A loopback service that answers each connection with `answer` (or never, when `None`),
    /// then closes it when `close`.
    async fn stub(answer: Option<Vec<u8>>, close: bool) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                if let Some(answer) = &answer {
                    let _ = stream.write_all(answer).await;
                    if close {
                        let _ = stream.shutdown().await;
                    }
                }
                held.push(stream);
            }
        });
        format!("http://{address}")
    }

    fn client(url: &str, bounds: Bounds) -> RemoteBackend {
        RemoteBackend::new("stub", url, "token".into(), String::new(), None)
            .unwrap()
            .with_bounds(bounds)
    }

    #[tokio::test]
    async fn a_service_that_never_answers_times_out() {
        let url = stub(None, false).await;
        let bounds = Bounds {
            request_timeout: Duration::from_millis(300),
            ..Bounds::default()
        };
        let started = std::time::Instant::now();
        let err = client(&url, bounds).list().await.unwrap_err().to_string();
        assert!(err.contains("did not answer within 300ms"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn answers_over_the_size_limit_are_refused() {
        let bounds = Bounds {
            max_body: 1024,
            ..Bounds::default()
        };
        // Announced: the length alone refuses it.
        let mut announced = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
            content-length: 4096\r\n\r\n"
            .to_vec();
        announced.extend(std::iter::repeat_n(b' ', 4096));
        // Not announced: the body is cut off as it passes the limit.
        let mut unannounced =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n["
                .to_vec();
        unannounced.extend(std::iter::repeat_n(b' ', 4096));
        unannounced.push(b']');
        for answer in [announced, unannounced] {
            let url = stub(Some(answer), true).await;
            let err = client(&url, bounds).list().await.unwrap_err().to_string();
            assert!(err.contains("over 1024 bytes"), "{err}");
        }
    }

    #[tokio::test]
    async fn a_stream_that_goes_quiet_ends_with_an_error() {
        let url = stub(
            Some(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
              transfer-encoding: chunked\r\n\r\n"
                    .to_vec(),
            ),
            false,
        )
        .await;
        let bounds = Bounds {
            stream_idle: Duration::from_millis(300),
            ..Bounds::default()
        };
        let mut lines = client(&url, bounds)
            .logs("web", LogOptions::default())
            .await
            .unwrap();
        let err = lines.next().await.unwrap().unwrap_err().to_string();
        assert!(err.contains("sent nothing for 300ms"), "{err}");
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
