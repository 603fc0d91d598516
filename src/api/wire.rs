//! What travels over HTTP between `cubbi -r` and `cubbi serve`: request bodies, streamed lines
//! and the error body. The session types themselves ([`super::Session`]) travel as they are.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, ErrorCode, ExecEvent, VolumeMount};

/// The body of `POST /v1/sessions`. The service decides the rest (SSH bind address, runtime
/// policy, limits); a field it does not know is refused, never ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// A cubbi image name (`claude-code`) the service allows. Give this or `snapshot`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schema(pattern = r"^[a-z0-9][a-z0-9-]*$", min_length = 1, max_length = 63)]
    pub image: String,
    /// Boot the caller's snapshot of this exact name (`GET /v1/snapshots`) instead of an
    /// image: the new session has the snapshot's files, a new host key, port and name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Session name; derived from the project when absent. Lowercased, `_`, `.` and spaces
    /// become `-`, other characters are dropped, at most 63 are kept; nothing left is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Environment for the agent; written into the session as a file, never container env.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Extra networks to join; the service allows only those its config names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    /// Also join the service's default network.
    #[serde(default = "yes")]
    pub default_network: bool,
    /// Host paths of the service's host: refused unless the service allows them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<VolumeMountSchema>)]
    pub volumes: Vec<VolumeMount>,
    /// A registered project (id, name or URL) or a git URL, cloned into the workspace
    /// (`#branch` picks a branch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Run the project's `.cubbi/init.sh` even when `project` is an ad-hoc URL.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run_init: bool,
    /// Memory limit in Docker's syntax (`4g`), at least 6m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, pattern = r"^[0-9.]+[bkmgtBKMGT]?[bB]?$")]
    pub memory: Option<crate::local::limits::MemoryLimit>,
    /// CPUs, at least 0.01.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>, minimum = 0.01)]
    pub cpus: Option<crate::local::limits::CpuLimit>,
    /// Most processes, 64 to 4194304.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>, minimum = 64, maximum = 4194304)]
    pub pids_limit: Option<crate::local::limits::PidsLimit>,
    /// `sysbox-runc` unless given; `runc` only where the service allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Stop the session (keeping it) after this many seconds without an SSH connection; at
    /// most, and by default, the service's `limits.idle_stop` when it sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub idle_stop_secs: Option<u64>,
    /// The caller's OpenSSH public key, authorized in the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// The names the session may reach; the service's `[egress]` decides what may be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<crate::egress::EgressRequest>,
    /// MCP servers of the caller's on this service (`POST /v1/mcp`), by name, at most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 16)]
    pub mcp: Vec<String>,
}

fn yes() -> bool {
    true
}

/// [`VolumeMount`] as the OpenAPI document describes it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct VolumeMountSchema {
    host: String,
    container: String,
    read_only: Option<bool>,
}

/// The body of `POST /v1/sessions/{id}/connect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectRequest {
    /// An OpenSSH public key to authorize in the session.
    pub public_key: String,
}

/// The body of `POST /v1/sessions/{id}/snapshot`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// The snapshot's name [default: `SESSION-UNIXTIME`].
    #[serde(default)]
    pub name: Option<String>,
}

/// The body of `POST /v1/sessions/{id}/exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments, run as `agent` (no shell unless you give one).
    pub command: Vec<String>,
}

/// One line of a streamed exec (NDJSON): output as base64, then the exit code, or an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecLine {
    Stdout(String),
    Stderr(String),
    Exit(i32),
    Error(ErrorDetail),
}

impl ExecLine {
    pub fn from_event(event: Result<ExecEvent, ApiError>) -> Self {
        match event {
            Ok(ExecEvent::Stdout(data)) => Self::Stdout(STANDARD.encode(data)),
            Ok(ExecEvent::Stderr(data)) => Self::Stderr(STANDARD.encode(data)),
            Ok(ExecEvent::Exit(code)) => Self::Exit(code),
            Err(err) => Self::Error(ErrorDetail::from(&err)),
        }
    }

    pub fn into_event(self) -> Result<ExecEvent, ApiError> {
        let decode = |data: String| {
            STANDARD.decode(data).map_err(|err| {
                ApiError::unavailable(format!("the service sent undecodable output: {err}"))
            })
        };
        match self {
            Self::Stdout(data) => Ok(ExecEvent::Stdout(decode(data)?)),
            Self::Stderr(data) => Ok(ExecEvent::Stderr(decode(data)?)),
            Self::Exit(code) => Ok(ExecEvent::Exit(code)),
            Self::Error(detail) => Err(detail.into()),
        }
    }
}

/// One line of a streamed log (NDJSON): console text, or the error that ended the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogLine {
    Text(String),
    Error(ErrorDetail),
}

/// Every HTTP failure: `{"error": {"code": "not_found", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

impl From<&ApiError> for ErrorDetail {
    fn from(err: &ApiError) -> Self {
        Self {
            code: err.code(),
            message: err.to_string(),
        }
    }
}

impl From<ErrorDetail> for ApiError {
    fn from(detail: ErrorDetail) -> Self {
        ApiError::Service {
            code: detail.code,
            message: detail.message,
        }
    }
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// One entry of `GET /v1/images`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageInfo {
    pub name: String,
    pub description: String,
    /// The Docker tag sessions of it boot.
    pub tag: String,
    /// Whether the image is built on the service's endpoint.
    pub built: bool,
    /// The tool's version the image was built with, when it declares one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_version: Option<String>,
    /// The whole `cubbi-image.toml` (only in `GET /v1/images/{name}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// `GET /v1/runtimes`: the runtimes a create may ask this service for, the default first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RuntimeList {
    /// `sysbox-runc` where the engine has Sysbox; `runc` (NOT isolated from the host) only
    /// where the service allows it (`allow_unsafe_runc`). Empty: this service can boot no
    /// session until its administrator installs Sysbox or allows runc.
    pub runtimes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_lines_round_trip_bytes() {
        let bytes = vec![0u8, 159, 146, 150, b'\n'];
        let line = ExecLine::from_event(Ok(ExecEvent::Stdout(bytes.clone())));
        let text = serde_json::to_string(&line).unwrap();
        assert!(text.starts_with("{\"stdout\":"), "{text}");
        let back: ExecLine = serde_json::from_str(&text).unwrap();
        assert_eq!(back.into_event().unwrap(), ExecEvent::Stdout(bytes));
    }

    #[test]
    fn create_request_refuses_unknown_fields() {
        let err = serde_json::from_str::<CreateRequest>(r#"{"image":"base","privileged":true}"#)
            .unwrap_err();
        assert!(err.to_string().contains("privileged"), "{err}");
        let ok: CreateRequest = serde_json::from_str(r#"{"image":"base"}"#).unwrap();
        assert!(ok.default_network);
        assert!(!ok.run_init);
        let asked: CreateRequest =
            serde_json::from_str(r#"{"image":"base","run_init":true}"#).unwrap();
        assert!(asked.run_init);
    }

    #[test]
    fn errors_keep_their_code_across_the_wire() {
        let sent = ErrorDetail::from(&ApiError::NotFound("x".into()));
        let text = serde_json::to_string(&ErrorBody { error: sent }).unwrap();
        let body: ErrorBody = serde_json::from_str(&text).unwrap();
        let err = ApiError::from(body.error);
        assert_eq!(err.code(), ErrorCode::NotFound);
        assert!(err.to_string().starts_with("no session matches `x`"));
    }
}

/// A run: the AgentContainers request, plus what a new session needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    /// The prompt. It reaches the tool on stdin, never in a process's argv.
    #[schema(min_length = 1)]
    pub prompt: String,
    /// Text added to the tool's system prompt (tools that have one).
    #[serde(default, skip_serializing_if = "is_default")]
    pub append_system_prompt: Option<String>,
    /// Tools the agent may use without asking (tools that have such a list).
    #[serde(default, skip_serializing_if = "is_default")]
    pub allowed_tools: Vec<String>,
    /// Tools the agent must not use.
    #[serde(default, skip_serializing_if = "is_default")]
    pub disallowed_tools: Vec<String>,
    /// Continue the tool's conversation (`agent_session_id` of an earlier result).
    #[serde(default, skip_serializing_if = "is_default")]
    pub resume_session_id: Option<String>,
    /// Environment for the agent (API keys): files in the new session, never container env
    /// or argv. Only with `POST /v1/runs`; a session's env is set when it is created.
    #[serde(default, skip_serializing_if = "is_default")]
    pub env: BTreeMap<String, String>,
    /// The tool image of the new session (`POST /v1/runs`; `GET /v1/images` lists them).
    #[serde(default, skip_serializing_if = "is_default")]
    #[schema(pattern = r"^[a-z0-9][a-z0-9-]*$", max_length = 63)]
    pub image: Option<String>,
    /// A registered project (or git URL) cloned into the new session's workspace.
    #[serde(default, skip_serializing_if = "is_default")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    #[schema(minimum = 1)]
    pub max_turns: Option<u32>,
    /// Seconds before the agent is stopped; at most, and by default, the service's
    /// `runs.max_timeout`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub timeout: Option<f64>,
    /// Keep the new session after the run (its name is in the result).
    #[serde(default, skip_serializing_if = "is_default")]
    pub keep: bool,
    /// The new session's name, runtime and limits, as in `POST /v1/sessions`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub runtime: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    #[schema(value_type = Option<String>)]
    pub memory: Option<crate::local::limits::MemoryLimit>,
    #[serde(default, skip_serializing_if = "is_default")]
    #[schema(value_type = Option<f64>, minimum = 0.01)]
    pub cpus: Option<crate::local::limits::CpuLimit>,
    /// Most processes, 64 to 4194304 (capped by the service's `limits.pids_limit`).
    #[serde(default, skip_serializing_if = "is_default")]
    #[schema(value_type = Option<i64>, minimum = 64, maximum = 4194304)]
    pub pids_limit: Option<crate::local::limits::PidsLimit>,
    /// Run the project's `.cubbi/init.sh` even when `project` is an ad-hoc URL.
    #[serde(default, skip_serializing_if = "is_default")]
    pub run_init: bool,
    /// More networks to join (from the service's `networks.allowed`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub networks: Vec<String>,
    /// MCP servers of the caller's on this service (`POST /v1/mcp`), by name, at most 16.
    #[serde(default, skip_serializing_if = "is_default")]
    #[schema(max_items = 16)]
    pub mcp: Vec<String>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}
