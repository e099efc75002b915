//! Extractors whose rejections speak the envelope.
//!
//! axum's own `Json`, `Path` and `Query` answer bad input with plain-text bodies and a
//! mix of 400, 413, 415 and 422. The contract wants every malformed request to get
//! `400 VALIDATION_ERROR` in the JSON envelope, so services use these wrappers instead;
//! they delegate the parsing to axum and only translate the rejection.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::ApiError;

/// A JSON request body; any rejection is `400 VALIDATION_ERROR`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    let (reason, message) = match rejection {
        JsonRejection::JsonDataError(e) => ("invalid_field", e.body_text()),
        JsonRejection::JsonSyntaxError(e) => ("malformed_json", e.body_text()),
        JsonRejection::MissingJsonContentType(_) => (
            "content_type",
            "expected a request with `Content-Type: application/json`".to_owned(),
        ),
        JsonRejection::BytesRejection(e) => {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ("body_too_large", "the request body is too large".to_owned())
            } else {
                (
                    "unreadable_body",
                    "the request body could not be read".to_owned(),
                )
            }
        }
        _ => ("invalid_body", rejection.body_text()),
    };
    ApiError::validation(message).with_details(json!({ "reason": reason }))
}

/// Path parameters; a value that does not parse (a malformed id) is `400 VALIDATION_ERROR`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(path_rejection(&rejection)),
        }
    }
}

fn path_rejection(rejection: &PathRejection) -> ApiError {
    match rejection {
        PathRejection::FailedToDeserializePathParams(e) => {
            ApiError::validation(e.body_text()).with_details(json!({ "reason": "invalid_path" }))
        }
        // A handler asked for parameters its route does not have: our bug, not the client's.
        _ => ApiError::internal(&rejection.body_text()),
    }
}

/// Query-string parameters; anything unparsable is `400 VALIDATION_ERROR`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_rejection(&rejection)),
        }
    }
}

fn query_rejection(rejection: &QueryRejection) -> ApiError {
    ApiError::validation(rejection.body_text()).with_details(json!({ "reason": "invalid_query" }))
}
