//! Every failure as `{"error": {"code", "message"}}` with the status its code stands for,
//! including the ones axum would answer in plain text (bad JSON, bad paths, oversized bodies).

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api::wire::{ErrorBody, ErrorDetail};
use crate::api::{ApiError, ErrorCode};

/// An error on its way to the client.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    detail: ErrorDetail,
}

impl HttpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            detail: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }

    /// The same body with another status (405, 408: statuses without a code of their own).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }
}

impl From<ApiError> for HttpError {
    fn from(err: ApiError) -> Self {
        if matches!(err.code(), ErrorCode::Internal | ErrorCode::Failed) {
            tracing::warn!("request failed: {err}");
        }
        Self::new(err.code(), err.to_string())
    }
}

impl From<JsonRejection> for HttpError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::BytesRejection(bytes)
                if bytes.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Self::new(
                    ErrorCode::TooLarge,
                    "the request body is over this service's limit",
                )
            }
            JsonRejection::MissingJsonContentType(_) => Self::new(
                ErrorCode::Invalid,
                "send the body as JSON with `Content-Type: application/json`",
            ),
            other => Self::new(ErrorCode::Invalid, other.body_text()),
        }
    }
}

impl From<PathRejection> for HttpError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(ErrorCode::Invalid, rejection.body_text())
    }
}

impl From<QueryRejection> for HttpError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(ErrorCode::Invalid, rejection.body_text())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: self.detail })).into_response()
    }
}
