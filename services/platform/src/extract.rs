//! Extractors whose rejections speak the envelope.
//!
//! axum's own `Json`, `Path` and `Query` answer bad input with plain-text bodies and a
//! mix of 400, 413, 415 and 422. The contract wants every malformed request to get
//! `400 VALIDATION_ERROR` in the JSON envelope, so services use these wrappers instead;
//! they delegate the parsing to axum and translate the rejection.
//!
//! They also refuse what serde would take but no handler means to: a body that is a
//! JSON array (serde reads a struct from one, field by field in order; no route takes a
//! list), and NUL characters in text (`\u0000`, `%00`), which PostgreSQL cannot store
//! in `text`.

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::HeaderMap;
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
        if !is_json(req.headers()) {
            return Err(ApiError::validation(
                "expected a request with `Content-Type: application/json`",
            )
            .with_details(json!({ "reason": "content_type" })));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| json_rejection(&JsonRejection::BytesRejection(e)))?;
        let value = match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => value,
            Err(rejection) => return Err(json_rejection(&rejection)),
        };
        check_body(&bytes)?;
        Ok(Self(value))
    }
}

/// `application/json` or `application/<something>+json`, parameters aside.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// A request body that parsed is no array, and none of its text holds a NUL character.
fn check_body(bytes: &[u8]) -> Result<(), ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        return Err(
            ApiError::validation("the request body must be a JSON object, not an array")
                .with_details(json!({ "reason": "array_body" })),
        );
    }
    if has_escaped_nul(bytes) {
        return Err(nul_refused());
    }
    Ok(())
}

/// Whether JSON text holds `\u0000`: raw control characters are not valid JSON, so an
/// escape is the only way a NUL gets in. `\\u0000` (an escaped backslash, then
/// `u0000`) is text, not a NUL: the backslashes before `u` must be odd in number.
fn has_escaped_nul(bytes: &[u8]) -> bool {
    let mut from = 0;
    while let Some(at) = bytes[from..].windows(5).position(|w| w == b"u0000") {
        let u = from + at;
        let backslashes = bytes[..u].iter().rev().take_while(|b| **b == b'\\').count();
        if backslashes % 2 == 1 {
            return true;
        }
        from = u + 1;
    }
    false
}

fn nul_refused() -> ApiError {
    ApiError::validation("text must not contain NUL characters")
        .with_details(json!({ "reason": "nul_character" }))
}

/// Whether a URI part holds a percent-encoded NUL (a raw one is no valid URI).
fn has_encoded_nul(text: &str) -> bool {
    text.as_bytes().windows(3).any(|w| w == b"%00")
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
        if has_encoded_nul(parts.uri.path()) {
            return Err(nul_refused());
        }
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
        if parts.uri.query().is_some_and(has_encoded_nul) {
            return Err(nul_refused());
        }
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_rejection(&rejection)),
        }
    }
}

fn query_rejection(rejection: &QueryRejection) -> ApiError {
    ApiError::validation(rejection.body_text()).with_details(json!({ "reason": "invalid_query" }))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::StatusCode;

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Profile {
        #[allow(dead_code)]
        full_name: String,
        #[allow(dead_code)]
        phone: String,
    }

    async fn profile(body: &str) -> Result<Profile, ApiError> {
        let req = Request::builder()
            .method("PUT")
            .uri("/api/v1/users/me")
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        Json::<Profile>::from_request(req, &())
            .await
            .map(|Json(p)| p)
    }

    fn reason(err: &ApiError) -> &str {
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        err.details.as_ref().unwrap()["reason"].as_str().unwrap()
    }

    #[tokio::test]
    async fn an_array_is_refused_where_an_object_is_expected() {
        let err = profile(r#"["Array Name","+14155550199"]"#)
            .await
            .unwrap_err();
        assert_eq!(reason(&err), "array_body");
        assert!(profile(r#" {"full_name":"A","phone":"+1"}"#).await.is_ok());
    }

    #[tokio::test]
    async fn a_nul_character_in_any_text_is_refused() {
        let err = profile(r#"{"full_name":"A\u0000B","phone":"+1"}"#)
            .await
            .unwrap_err();
        assert_eq!(reason(&err), "nul_character");
        let err = profile(r#"{"full_name":"A","phone":"+1","\u0000":1}"#)
            .await
            .unwrap_err();
        assert_eq!(reason(&err), "nul_character");
    }

    #[tokio::test]
    async fn an_escaped_backslash_before_u0000_is_text_not_a_nul() {
        let ok = profile(r#"{"full_name":"C:\\u0000","phone":"+1"}"#)
            .await
            .unwrap();
        assert_eq!(ok.full_name, r"C:\u0000");
        let err = profile(r#"{"full_name":"C:\\\u0000","phone":"+1"}"#)
            .await
            .unwrap_err();
        assert_eq!(reason(&err), "nul_character");
    }

    #[tokio::test]
    async fn other_content_types_are_refused_and_json_suffixes_taken() {
        let req = |ct: &str| {
            Request::builder()
                .method("PUT")
                .uri("/")
                .header("content-type", ct)
                .body(Body::from(r#"{"full_name":"A","phone":"+1"}"#))
                .unwrap()
        };
        let err = Json::<Profile>::from_request(req("text/plain"), &())
            .await
            .unwrap_err();
        assert_eq!(reason(&err), "content_type");
        for ct in [
            "application/json; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(
                Json::<Profile>::from_request(req(ct), &()).await.is_ok(),
                "{ct}"
            );
        }
    }

    #[tokio::test]
    async fn a_percent_encoded_nul_in_the_query_or_path_is_refused() {
        #[derive(Debug, serde::Deserialize)]
        struct Filter {
            #[allow(dead_code)]
            currency: Option<String>,
        }
        let (mut parts, ()) = Request::builder()
            .uri("/api/v1/reports/transactions?currency=%00")
            .body(())
            .unwrap()
            .into_parts();
        let err = Query::<Filter>::from_request_parts(&mut parts, &())
            .await
            .unwrap_err();
        assert_eq!(reason(&err), "nul_character");
        assert!(has_encoded_nul("/api/v1/payments/%00"));
        assert!(!has_encoded_nul("/api/v1/payments/a%2500"));
    }
}
