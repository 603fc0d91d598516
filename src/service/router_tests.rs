//! The router over an in-memory [`SessionHost`]: quota, `?wait=false` and policy refusals
//! checked without Docker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures_util::stream::BoxStream;
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

use super::host_volumes::{HostMountRule, HostVolumeRoots};
use super::policy::Policy;
use super::router::{AppState, SessionHost, Timing, router};
use super::store::{Caller, SqliteStore};
use crate::api::wire::ImageInfo;
use crate::api::{
    ApiError, Backend, ExecEvent, LogChunk, LogOptions, Progress, Session, SessionSpec,
    SessionState,
};

/// Every session of every user, shared by the backends the host hands out.
#[derive(Default)]
struct Memory {
    sessions: Mutex<Vec<Session>>,
    /// Creates made (by spec), to check a refused request reached no backend.
    creates: Mutex<Vec<SessionSpec>>,
    /// When set, a create waits here after reserving, as a booting session does.
    boot_gate: Option<Arc<Notify>>,
    /// Each owner's agent data, as the checked tar an import made of it.
    data: Mutex<std::collections::HashMap<String, Vec<u8>>>,
}

struct MemoryHost(Arc<Memory>);

struct MemoryBackend {
    memory: Arc<Memory>,
    caller: Caller,
}

fn session(id: &str, name: &str, owner: &str, state: SessionState) -> Session {
    serde_json::from_value(serde_json::json!({
        "id": id, "name": name, "image": "base", "owner": owner, "state": state,
        "created": 0, "workspace": null, "command": [],
        "ssh": {"host": "127.0.0.1", "port": 2300, "user": "agent", "host_key": "k"},
    }))
    .expect("a session")
}

impl MemoryBackend {
    fn visible(&self, session: &Session) -> bool {
        self.caller.admin || session.owner == self.caller.user
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn change_egress(
        &self,
        id_or_name: &str,
        change: crate::egress::EgressChange,
    ) -> Result<crate::api::EgressView, ApiError> {
        let found = self.get(id_or_name).await?;
        let policy = change.applied_to(&found.name, found.egress.as_ref())?;
        let view = crate::api::EgressView {
            mode: policy.mode(),
            domains: policy.domains().to_vec(),
            denied: Vec::new(),
            denied_lookups: 0,
            denied_connections: 0,
        };
        let mut sessions = self.memory.sessions.lock().unwrap();
        if let Some(stored) = sessions.iter_mut().find(|s| s.id == found.id) {
            stored.egress = Some(view.clone());
        }
        Ok(view)
    }

    async fn create(
        &self,
        spec: SessionSpec,
        progress: &dyn Progress,
    ) -> Result<Session, ApiError> {
        let name = spec.name.clone().unwrap_or_else(|| "session".into());
        let id = {
            let mut creates = self.memory.creates.lock().unwrap();
            creates.push(spec);
            format!("{:064x}", creates.len())
        };
        let mut created = session(&id, &name, &self.caller.user, SessionState::Creating);
        self.memory.sessions.lock().unwrap().push(created.clone());
        progress.reserved(&created);
        if let Some(gate) = &self.memory.boot_gate {
            gate.notified().await;
        }
        created.state = SessionState::Ready;
        let mut sessions = self.memory.sessions.lock().unwrap();
        if let Some(stored) = sessions.iter_mut().find(|s| s.id == id) {
            *stored = created.clone();
        }
        Ok(created)
    }

    async fn list(&self) -> Result<Vec<Session>, ApiError> {
        let sessions = self.memory.sessions.lock().unwrap();
        Ok(sessions
            .iter()
            .filter(|s| self.visible(s))
            .cloned()
            .collect())
    }

    async fn get(&self, id_or_name: &str) -> Result<Session, ApiError> {
        self.list()
            .await?
            .into_iter()
            .find(|s| s.id == id_or_name || s.name == id_or_name)
            .ok_or_else(|| ApiError::NotFound(id_or_name.to_string()))
    }

    async fn close(&self, id_or_name: &str) -> Result<Session, ApiError> {
        let found = self.get(id_or_name).await?;
        self.memory
            .sessions
            .lock()
            .unwrap()
            .retain(|s| s.id != found.id);
        Ok(found)
    }

    async fn logs(
        &self,
        _id_or_name: &str,
        _options: LogOptions,
    ) -> Result<BoxStream<'static, Result<LogChunk, ApiError>>, ApiError> {
        Err(ApiError::unavailable("no logs in memory"))
    }

    async fn connect(&self, id_or_name: &str, _public_key: &str) -> Result<Session, ApiError> {
        self.get(id_or_name).await
    }

    async fn exec(
        &self,
        _id_or_name: &str,
        _command: Vec<String>,
    ) -> Result<BoxStream<'static, Result<ExecEvent, ApiError>>, ApiError> {
        Err(ApiError::unavailable("no exec in memory"))
    }

    async fn stop(&self, id_or_name: &str) -> Result<Session, ApiError> {
        self.set_state(id_or_name, SessionState::Stopped).await
    }

    async fn start(&self, id_or_name: &str) -> Result<Session, ApiError> {
        self.set_state(id_or_name, SessionState::Ready).await
    }

    async fn snapshot(
        &self,
        _id_or_name: &str,
        _name: Option<String>,
    ) -> Result<crate::api::Snapshot, ApiError> {
        Err(ApiError::unavailable("no snapshots in memory"))
    }

    async fn snapshots(&self) -> Result<Vec<crate::api::Snapshot>, ApiError> {
        Ok(Vec::new())
    }

    async fn remove_snapshot(&self, name: &str) -> Result<crate::api::Snapshot, ApiError> {
        Err(ApiError::NotFound(name.to_string()))
    }

    async fn export_data(
        &self,
        _image: Option<&str>,
    ) -> Result<(Vec<u8>, crate::api::DataSummary), ApiError> {
        let stored = self
            .memory
            .data
            .lock()
            .unwrap()
            .get(&self.caller.user)
            .cloned();
        let archive = match stored {
            Some(archive) => archive,
            None => tar::Builder::new(Vec::new()).into_inner().unwrap(),
        };
        Ok((archive, crate::api::DataSummary::default()))
    }

    async fn import_data(&self, archive: Vec<u8>) -> Result<crate::api::DataSummary, ApiError> {
        let (checked, summary) = crate::local::agent_data::rewrite(
            archive.as_slice(),
            0,
            std::path::Path::new(""),
            Default::default(),
        )
        .map_err(|err| ApiError::invalid(err.to_string()))?;
        self.memory
            .data
            .lock()
            .unwrap()
            .insert(self.caller.user.clone(), checked);
        Ok(summary)
    }
}

impl MemoryBackend {
    async fn set_state(&self, id_or_name: &str, state: SessionState) -> Result<Session, ApiError> {
        let found = self.get(id_or_name).await?;
        let mut sessions = self.memory.sessions.lock().unwrap();
        let stored = sessions
            .iter_mut()
            .find(|s| s.id == found.id)
            .ok_or_else(|| ApiError::NotFound(id_or_name.to_string()))?;
        stored.state = state;
        Ok(stored.clone())
    }
}

#[async_trait]
impl SessionHost for MemoryHost {
    type Sessions = MemoryBackend;

    fn sessions_of(&self, caller: &Caller) -> MemoryBackend {
        MemoryBackend {
            memory: Arc::clone(&self.0),
            caller: caller.clone(),
        }
    }

    async fn changed(&self, _id: &str) {}

    async fn images(&self) -> Result<Vec<ImageInfo>, ApiError> {
        Ok(vec![ImageInfo {
            name: "base".into(),
            description: String::new(),
            tag: "cubbi-base".into(),
            built: true,
            tool_version: None,
            metadata: None,
        }])
    }
}

fn policy(sessions_per_user: usize) -> Policy {
    Policy {
        images: Vec::new(),
        host_mounts: HostMountRule::new(&HostVolumeRoots::default(), &[]),
        allow_unsafe_runc: false,
        networks_allowed: Vec::new(),
        ssh_bind: "127.0.0.1".parse().unwrap(),
        public_host: None,
        ssh_proxy: false,
        sessions_per_user,
        max_memory: None,
        max_cpus: None,
        max_pids: crate::local::limits::PidsLimit::default(),
        projects_per_user: 10,
        snapshots_per_user: 10,
        idle_stop_secs: None,
        egress: Default::default(),
    }
}

/// A router over `memory`, and a token of user `alice`.
struct Service {
    router: axum::Router,
    token: String,
    _stopping: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

fn service(memory: &Arc<Memory>, sessions_per_user: usize) -> Service {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let (_, token) = store.issue_token("alice", Some(false)).unwrap();
    let (stopping, stopped) = watch::channel(false);
    let timing = Timing {
        request_timeout: Duration::from_secs(10),
        streams_per_user: 4,
        runs_per_user: 1,
        max_run_timeout: Duration::from_secs(60),
    };
    let state = AppState::new(
        MemoryHost(Arc::clone(memory)),
        Arc::new(store),
        policy(sessions_per_user),
        stopped,
        timing,
    );
    Service {
        router: router(state, 1 << 20),
        token,
        _stopping: stopping,
        _dir: dir,
    }
}

impl Service {
    /// POSTs a create; returns the status and the JSON body.
    async fn create(
        &self,
        query: &str,
        body: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        let request = Request::post(format!("/v1/sessions{query}"))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }
}

fn error_code(body: &serde_json::Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("(none)")
}

#[tokio::test]
async fn creates_past_the_quota_answer_429() {
    let memory = Arc::new(Memory::default());
    let service = service(&memory, 2);
    // Another user's session does not count against alice's quota.
    memory.sessions.lock().unwrap().push(session(
        &"b".repeat(64),
        "bobs",
        "bob",
        SessionState::Ready,
    ));
    for name in ["one", "two"] {
        let (status, body) = service
            .create("", serde_json::json!({"image": "base", "name": name}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["state"], "ready", "{body}");
    }
    let (status, body) = service
        .create("", serde_json::json!({"image": "base", "name": "three"}))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(error_code(&body), "quota", "{body}");
    assert_eq!(memory.creates.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn wait_false_answers_once_the_session_is_reserved() {
    let gate = Arc::new(Notify::new());
    let memory = Arc::new(Memory {
        boot_gate: Some(Arc::clone(&gate)),
        ..Default::default()
    });
    let service = service(&memory, 0);
    // The boot never finishes until the gate opens: only `?wait=false` can answer.
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(5),
        service.create(
            "?wait=false",
            serde_json::json!({"image": "base", "name": "slow"}),
        ),
    )
    .await
    .expect("?wait=false answered before the boot finished");
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["state"], "creating", "{body}");
    assert_eq!(body["name"], "slow", "{body}");
    gate.notify_one();
}

#[tokio::test]
async fn policy_refusals_create_nothing() {
    let memory = Arc::new(Memory::default());
    let service = service(&memory, 0);
    let refused = [
        // Not in the catalogue the host offers.
        serde_json::json!({"image": "debian"}),
        serde_json::json!({"image": "codex"}),
        // Plain runc on a service that runs Sysbox only.
        serde_json::json!({"image": "base", "runtime": "runc"}),
        serde_json::json!({"image": "base", "runtime": "kata"}),
        // A network the service does not allow.
        serde_json::json!({"image": "base", "networks": ["host"]}),
    ];
    for request in refused {
        let (status, body) = service.create("", request.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{request}: {body}");
        assert_eq!(error_code(&body), "invalid", "{request}: {body}");
    }
    assert!(memory.creates.lock().unwrap().is_empty());
    assert!(memory.sessions.lock().unwrap().is_empty());
}

/// A tar of one file `path` holding `size` bytes, the path written as given.
fn tar_with(path: &str, size: usize) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_size(size as u64);
    header.set_mode(0o600);
    let name = &mut header.as_old_mut().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append(&header, vec![b'x'; size].as_slice())
        .unwrap();
    builder.into_inner().unwrap()
}

#[tokio::test]
async fn agent_data_imports_take_archives_past_the_body_limit_and_refuse_hostile_ones() {
    let memory = Arc::new(Memory::default());
    let service = service(&memory, 2);
    let post = |archive: Vec<u8>| {
        Request::post("/v1/data")
            .header("authorization", format!("Bearer {}", service.token))
            .header("content-type", "application/octet-stream")
            .body(Body::from(archive))
            .unwrap()
    };
    // Twice the router's body limit (1 MiB): data routes have a limit of their own.
    let big = tar_with("claude-code/.claude/history.jsonl", 2 << 20);
    let response = service.router.clone().oneshot(post(big)).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["files"], 1, "{body}");
    assert_eq!(body["tools"], serde_json::json!(["claude-code"]), "{body}");

    let hostile = tar_with("../../etc/cron.d/x", 4);
    let response = service.router.clone().oneshot(post(hostile)).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_code(&body), "invalid", "{body}");
    // What alice had stays as it was.
    let kept = memory.data.lock().unwrap()["alice"].len();
    assert!(kept > 2 << 20, "{kept}");
}
