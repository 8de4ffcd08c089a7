//! The one mapping from failures to HTTP: a status and `{"error":{"code","message"}}`.

use http::StatusCode;
use serde_json::json;
use shared::Error;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For a validation error: the request field it is about (the page shows it there).
    pub field: Option<String>,
    /// Seconds to wait before sending again (the `Retry-After` header), when it helps.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `authorization: Bearer <api key>` with a valid key",
        )
    }

    /// A portal link that has expired or was revoked: the page shows this message as it is.
    pub fn session_expired() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "session_expired",
            "this link has expired; open Webhooks from your dashboard again",
        )
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn invalid(field: &str, message: impl std::fmt::Display) -> Self {
        Self {
            field: Some(field.to_owned()),
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_error",
                format!("{field}: {message}"),
            )
        }
    }

    pub fn body(&self) -> serde_json::Value {
        match &self.field {
            Some(field) => {
                json!({"error": {"code": self.code, "message": self.message, "field": field}})
            }
            None => json!({"error": {"code": self.code, "message": self.message}}),
        }
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        match err {
            Error::Validation(v) => ApiError::invalid(&v.field, v.message),
            Error::NotFound(what) => ApiError::not_found(what),
            Error::Conflict(message) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            e @ Error::PayloadTooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                e.to_string(),
            ),
            Error::Aws { service, message } => {
                tracing::error!(service, message, "AWS call failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "storage is temporarily unavailable; nothing was changed, try again",
                )
            }
            Error::StoredNotQueued(message) => {
                tracing::error!(message, "event stored, deliveries not queued");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "stored_not_queued",
                    "the event was stored, but its deliveries could not be queued yet: publish it again with the same id to finish (safe at any time: it is delivered once)",
                )
            }
            Error::Corrupt(message) => {
                tracing::error!(message, "corrupt stored item");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "an internal error occurred",
                )
            }
        }
    }
}

impl From<shared::ValidationError> for ApiError {
    fn from(err: shared::ValidationError) -> Self {
        ApiError::invalid(&err.field, err.message)
    }
}

/// As [`parse_json`], where the body may be left out: an empty body is the default request.
pub fn parse_json_or_default<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        parse_json(body)
    }
}

/// Parses a JSON request body, telling malformed JSON (400) from wrong fields (422).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the request body must be a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_error",
                e.to_string(),
            ),
            Category::Syntax | Category::Eof | Category::Io => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the request body is not valid JSON: {e}"),
            ),
        }
    })
}
