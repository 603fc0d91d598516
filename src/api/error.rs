//! Errors of the session API, each with a stable code that HTTP responses carry.

use serde::{Deserialize, Serialize};

/// Stable, machine-readable error codes (also the `code` of HTTP error bodies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    NotFound,
    Conflict,
    Invalid,
    Exhausted,
    Unavailable,
    Failed,
    /// No token, or one the service does not know (HTTP 401).
    Unauthorized,
    /// A per-user limit of the service is reached (HTTP 429).
    Quota,
    /// The request body is over the service's limit (HTTP 413).
    TooLarge,
    /// A fault of the service itself (HTTP 500); the service logs the details.
    Internal,
    /// A create asked for egress the service's `[egress]` does not allow (HTTP 400); the
    /// message names the domain.
    EgressDomain,
}

impl ErrorCode {
    /// The HTTP status a failure with this code answers with.
    pub fn http_status(self) -> u16 {
        match self {
            Self::Invalid | Self::EgressDomain => 400,
            Self::Unauthorized => 401,
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::TooLarge => 413,
            Self::Quota => 429,
            Self::Failed | Self::Internal => 500,
            Self::Exhausted | Self::Unavailable => 503,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("no session matches `{0}`; `cubbi session list` shows them")]
    NotFound(String),
    #[error("`{prefix}` matches several sessions: {}; give more of the id or the name", candidates.join(", "))]
    Ambiguous {
        prefix: String,
        candidates: Vec<String>,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Exhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{step} failed: {reason}{}", logs_suffix(logs))]
    Failed {
        step: String,
        reason: String,
        logs: Vec<String>,
    },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Quota(String),
    #[error("{0}")]
    EgressDomain(String),
    /// A failure a cubbi service reported, as it worded it.
    #[error("{message}")]
    Service { code: ErrorCode, message: String },
}

fn logs_suffix(logs: &[String]) -> String {
    if logs.is_empty() {
        String::new()
    } else {
        format!(
            "\nlast lines of the session's console:\n  {}",
            logs.join("\n  ")
        )
    }
}

impl ApiError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Ambiguous { .. } | Self::Conflict(_) => ErrorCode::Conflict,
            Self::Invalid(_) => ErrorCode::Invalid,
            Self::Exhausted(_) => ErrorCode::Exhausted,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Failed { .. } => ErrorCode::Failed,
            Self::Unauthorized(_) => ErrorCode::Unauthorized,
            Self::Quota(_) => ErrorCode::Quota,
            Self::EgressDomain(_) => ErrorCode::EgressDomain,
            Self::Service { code, .. } => *code,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    pub fn unavailable(message: impl std::fmt::Display) -> Self {
        Self::Unavailable(message.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_snake_case() {
        let code = serde_json::to_string(&ApiError::NotFound("x".into()).code()).unwrap();
        assert_eq!(code, "\"not_found\"");
        let ambiguous = ApiError::Ambiguous {
            prefix: "a".into(),
            candidates: vec!["a1 (alpha)".into(), "a2 (beta)".into()],
        };
        assert_eq!(ambiguous.code(), ErrorCode::Conflict);
        assert!(ambiguous.to_string().contains("a1 (alpha), a2 (beta)"));
    }

    #[test]
    fn failures_carry_console_lines() {
        let err = ApiError::Failed {
            step: "waiting for sshd".into(),
            reason: "timed out".into(),
            logs: vec!["[FAILED] Failed to start ssh.service".into()],
        };
        let text = err.to_string();
        assert!(
            text.starts_with("waiting for sshd failed: timed out"),
            "{text}"
        );
        assert!(text.contains("[FAILED]"), "{text}");
    }
}
