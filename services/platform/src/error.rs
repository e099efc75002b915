//! The one error type every handler returns, and the JSON envelope it becomes.
//!
//! A handler never builds a response body for a failure by hand: it returns an
//! [`ApiError`], whose [`IntoResponse`] writes
//! `{"success": false, "error": {"code", "message", "details"}}` with the status that
//! belongs to the code (`docs/architecture.md`, Errors and the envelope). Internal causes (SQL, I/O, broker errors) are
//! logged with the request's span and replaced by a generic message, so a response never
//! carries a stack trace or SQL text.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// The error codes of the contract, each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    ValidationError,
    InsufficientFunds,
    WalletNotActive,
    Unauthorized,
    Forbidden,
    KycRequired,
    NotFound,
    MethodNotAllowed,
    Conflict,
    IdempotencyKeyReused,
    RateLimited,
    InternalError,
    DependencyUnavailable,
    /// The request's head is larger than the proxy reads.
    HeadersTooLarge,
    UriTooLong,
    /// The request's body did not arrive in time (the proxy's answer to a client that
    /// sends its body too slowly, or never finishes it).
    RequestTimeout,
}

impl ErrorCode {
    /// The HTTP status this code is always sent with.
    pub const fn status(self) -> StatusCode {
        match self {
            Self::ValidationError | Self::InsufficientFunds | Self::WalletNotActive => {
                StatusCode::BAD_REQUEST
            }
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden | Self::KycRequired => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::DependencyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The code as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ValidationError => "VALIDATION_ERROR",
            Self::InsufficientFunds => "INSUFFICIENT_FUNDS",
            Self::WalletNotActive => "WALLET_NOT_ACTIVE",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Forbidden => "FORBIDDEN",
            Self::KycRequired => "KYC_REQUIRED",
            Self::NotFound => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::Conflict => "CONFLICT",
            Self::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Self::RateLimited => "RATE_LIMITED",
            Self::InternalError => "INTERNAL_ERROR",
            Self::DependencyUnavailable => "DEPENDENCY_UNAVAILABLE",
            Self::HeadersTooLarge => "HEADERS_TOO_LARGE",
            Self::UriTooLong => "URI_TOO_LONG",
            Self::RequestTimeout => "REQUEST_TIMEOUT",
        }
    }
}

/// A failure a client can be told about.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<Value>,
    /// Seconds after which a retry may succeed; sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

/// The body of every failure response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    /// Always `false`.
    pub success: bool,
    pub error: ErrorBody,
}

/// What went wrong, in a form a program can act on.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    /// `429 RATE_LIMITED` with a `Retry-After` of `seconds`.
    pub fn rate_limited(message: impl Into<String>, seconds: u64) -> Self {
        let mut err = Self::new(ErrorCode::RateLimited, message);
        err.retry_after = Some(seconds.max(1));
        err
    }

    /// Adds machine-readable details (field names, limits) to the error.
    #[must_use]
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ValidationError, message)
    }

    /// A validation error that names the offending field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::validation(message).with_details(serde_json::json!({ "field": field }))
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// `403 FORBIDDEN`, `details.reason = "party"`: staff who exchanged money with
    /// `whom` (a party to a payment or an alert, a wallet's owner) do not decide about
    /// them; another staff member must. One refusal for every service's staff rule.
    pub fn counterparty(whom: &str) -> Self {
        Self::forbidden(format!(
            "you exchanged money with {whom}; another staff member must decide"
        ))
        .with_details(serde_json::json!({ "reason": "party" }))
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, what)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    /// A dependency failed: the cause is logged here and only its name is returned.
    pub fn dependency(name: &str, cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(dependency = name, error = %cause, "dependency unavailable");
        Self::new(
            ErrorCode::DependencyUnavailable,
            format!("{name} is unavailable, try again later"),
        )
    }

    /// An internal failure: the cause is logged here and never returned.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(ErrorCode::InternalError, "internal error")
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorEnvelope {
            success: false,
            error: ErrorBody {
                code: self.code,
                message: self.message,
                details: self.details,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

#[cfg(feature = "db")]
/// The constraint a unique violation broke, if `err` is one: lets a service answer a
/// duplicate with its own words (`an account with this email already exists`).
pub fn unique_violation(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation => {
            db.constraint()
        }
        _ => None,
    }
}

/// Maps a database error to the contract. Unique and exclusion violations become
/// `CONFLICT` naming the constraint (a duplicate is the client's business, the SQL is
/// not); check and foreign-key violations mean the code let bad data through and are
/// internal; connection failures are a dependency being down.
#[cfg(feature = "db")]
impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::RowNotFound => Self::not_found("not found"),
            sqlx::Error::Database(db) => match db.kind() {
                sqlx::error::ErrorKind::UniqueViolation => {
                    let constraint = db.constraint().unwrap_or("unique").to_owned();
                    tracing::info!(%constraint, "unique violation answered as conflict");
                    Self::conflict("the resource already exists")
                        .with_details(serde_json::json!({ "constraint": constraint }))
                }
                _ if db.code().as_deref() == Some("23P01") => {
                    Self::conflict("the resource conflicts with an existing one")
                }
                _ => Self::internal(&err),
            },
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => Self::dependency("database", &err),
            _ => Self::internal(&err),
        }
    }
}

#[cfg(feature = "cache")]
impl From<redis::RedisError> for ApiError {
    fn from(err: redis::RedisError) -> Self {
        Self::dependency("cache", &err)
    }
}

/// The body of every success response: `{"success": true, "data": ...}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Envelope<T> {
    /// Always `true`.
    pub success: bool,
    pub data: T,
}

/// Wraps `data` in the success envelope with status 200.
pub fn ok<T: Serialize>(data: T) -> Response {
    with_status(StatusCode::OK, data)
}

/// Wraps `data` in the success envelope with the given status (201 on create, 202 on accept).
pub fn with_status<T: Serialize>(status: StatusCode, data: T) -> Response {
    (
        status,
        Json(Envelope {
            success: true,
            data,
        }),
    )
        .into_response()
}

/// The result type of every handler.
pub type ApiResult<T = Response> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_serializes_to_its_wire_name() {
        for code in [
            ErrorCode::ValidationError,
            ErrorCode::InsufficientFunds,
            ErrorCode::WalletNotActive,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::KycRequired,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::Conflict,
            ErrorCode::IdempotencyKeyReused,
            ErrorCode::RateLimited,
            ErrorCode::InternalError,
            ErrorCode::DependencyUnavailable,
            ErrorCode::HeadersTooLarge,
            ErrorCode::UriTooLong,
            ErrorCode::RequestTimeout,
        ] {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                Value::String(code.as_str().to_owned())
            );
        }
    }

    #[test]
    fn codes_carry_the_statuses_of_the_contract() {
        assert_eq!(ErrorCode::ValidationError.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            ErrorCode::InsufficientFunds.status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(ErrorCode::KycRequired.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            ErrorCode::IdempotencyKeyReused.status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            ErrorCode::DependencyUnavailable.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ErrorCode::HeadersTooLarge.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn an_internal_error_hides_its_cause() {
        let err = ApiError::internal(&"syntax error at or near SELECT");
        assert_eq!(err.code, ErrorCode::InternalError);
        assert!(!err.message.contains("SELECT"));
    }
}
