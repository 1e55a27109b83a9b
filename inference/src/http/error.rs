//! The one error type every endpoint answers with: `{"error": "..."}`, a status that says whose
//! fault it is, a reason label for the error metrics, and `Retry-After` on 503s.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::engine::EngineError;
use crate::preprocess::PreprocessError;

/// Every failure is `{"error": "..."}` with a status that says whose fault it is.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Label for `ml_inference_request_errors_total{reason}`.
    pub reason: &'static str,
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            reason,
            retry_after: None,
        }
    }
    pub fn bad_request(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, reason, message)
    }
    pub fn unavailable(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, reason, message)
        }
    }
}

impl ApiError {
    /// The client closed its connection before the answer: nobody reads this one (nginx's 499),
    /// it only counts in the error metrics.
    pub fn client_gone() -> Self {
        Self::new(
            StatusCode::from_u16(499).expect("499 is a valid status"),
            "client_gone",
            "the client closed the connection",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status);
        if let Some(s) = self.retry_after {
            r.insert_header((header::RETRY_AFTER, s.to_string()));
        }
        r.json(json!({ "error": self.message }))
    }
}

impl From<PreprocessError> for ApiError {
    fn from(e: PreprocessError) -> Self {
        let (status, reason) = match &e {
            PreprocessError::Empty => (StatusCode::BAD_REQUEST, "empty_image"),
            PreprocessError::UnknownFormat => (StatusCode::BAD_REQUEST, "not_an_image"),
            PreprocessError::Unsupported(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_format")
            }
            PreprocessError::TooManyPixels { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "image_too_large")
            }
            PreprocessError::Decode(_) => (StatusCode::BAD_REQUEST, "undecodable_image"),
        };
        Self::new(status, reason, e.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::QueueFull(_) => Self::unavailable("queue_full", e.to_string()),
            EngineError::Expired(_) => Self::unavailable("queue_timeout", e.to_string()),
            EngineError::Stopped => Self::unavailable("stopped", e.to_string()),
            EngineError::TooManyImages { .. } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_images",
                e.to_string(),
            ),
            EngineError::Model(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "model_error",
                e.to_string(),
            ),
        }
    }
}
