//! A fake Kubernetes API server for reconciler tests (the tower-test pattern of
//! kube-rs/controller-rs): the client under test talks to a mock service, and the
//! verifier checks each request against a list of expected steps (method, exact path
//! and query, content type, body) and answers it. A request beyond the list, or one that
//! differs from its step, fails the test; so a test also proves what was *not* written.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle};

use super::Context;
use crate::finservice::Settings;

/// The answer to a request.
pub enum Reply {
    /// 200 with this object.
    Json(Value),
    /// 404 with a `Status` body, as the API server answers for a missing object.
    NotFound,
    /// 409 with a `Status` body, as the API server answers an apply whose uid names no
    /// existing object.
    Conflict,
    /// 403 with a `Status` body: a request RBAC does not allow.
    Forbidden,
    /// 200 with this text (what a pod answers through the proxy).
    Text(String),
    /// 200 with the request's own body (what an apply of a new object returns, near enough).
    Echo,
    /// A refusal: a `Status` with this code, reason and message.
    Refused(u16, &'static str, &'static str),
    /// No answer at all, like a backend that accepts the connection and hangs: the
    /// request stays open until the verifier has served every step.
    Hang,
    /// This error code with a `Status` body (an API server that is failing).
    Status(StatusCode),
}

type Check = Box<dyn Fn(&Value) + Send>;

/// One expected request and its answer.
pub struct Expect {
    method: Method,
    uri: String,
    /// A `Patch::Apply` must carry the apply content type.
    apply: bool,
    /// Fields the body must contain, with these values.
    includes: Option<Value>,
    check: Option<Check>,
    reply: Reply,
}

impl Expect {
    pub fn get(uri: impl Into<String>, reply: Reply) -> Self {
        Self {
            method: Method::GET,
            uri: uri.into(),
            apply: false,
            includes: None,
            check: None,
            reply,
        }
    }

    /// A server-side apply whose body contains `includes`; answered with the body.
    pub fn apply(uri: impl Into<String>, includes: Value) -> Self {
        Self {
            method: Method::PATCH,
            uri: uri.into(),
            apply: true,
            includes: Some(includes),
            check: None,
            reply: Reply::Echo,
        }
    }

    /// A JSON patch whose body equals `ops`; answered with the body.
    pub fn patch(uri: impl Into<String>, ops: Value) -> Self {
        Self {
            method: Method::PATCH,
            uri: uri.into(),
            apply: false,
            includes: Some(ops),
            check: None,
            reply: Reply::Echo,
        }
    }

    /// An Event created in the test namespace with this reason.
    pub fn event(reason: &str) -> Self {
        Self {
            method: Method::POST,
            uri: "/apis/events.k8s.io/v1/namespaces/finflow/events?".to_owned(),
            apply: false,
            includes: Some(json!({"reason": reason, "reportingController": "finflow-operator"})),
            check: None,
            reply: Reply::Echo,
        }
    }

    /// Further assertions on the request body.
    pub fn check(mut self, check: impl Fn(&Value) + Send + 'static) -> Self {
        self.check = Some(Box::new(check));
        self
    }

    pub fn reply(mut self, reply: Reply) -> Self {
        self.reply = reply;
        self
    }
}

/// Whether `actual` has every field of `expected` with the same value (arrays equal
/// element by element).
pub fn includes(actual: &Value, expected: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e
            .iter()
            .all(|(k, ev)| a.get(k).is_some_and(|av| includes(av, ev))),
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(ev, av)| includes(av, ev))
        }
        (e, a) => e == a,
    }
}

pub struct Verifier(Handle<Request<Body>, Response<Body>>);

impl Verifier {
    /// A reconcile context whose client talks to the returned verifier.
    pub fn context(settings: Settings) -> (Arc<Context>, Verifier) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        (
            Arc::new(Context::new(client, settings, Some("test".into()))),
            Verifier(handle),
        )
    }

    /// Serves `steps` in order, then fails if any further request arrives.
    pub fn run(self, steps: Vec<Expect>) -> JoinHandle<()> {
        let mut handle = self.0;
        tokio::spawn(async move {
            let mut hung = Vec::new();
            for (i, step) in steps.into_iter().enumerate() {
                let next = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("step {i}: no request for {} {}", step.method, step.uri)
                    });
                let (request, send) = next.unwrap_or_else(|| {
                    panic!("step {i}: client gone before {} {}", step.method, step.uri)
                });
                assert_eq!(
                    (request.method(), request.uri().to_string()),
                    (&step.method, step.uri.clone()),
                    "step {i}"
                );
                if step.apply {
                    assert_eq!(
                        request
                            .headers()
                            .get(http::header::CONTENT_TYPE)
                            .map(|v| v.as_bytes()),
                        Some(&b"application/apply-patch+yaml"[..]),
                        "step {i}: a server-side apply"
                    );
                }
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap()
                };
                if let Some(expected) = &step.includes {
                    assert!(
                        includes(&body, expected),
                        "step {i} {}: body\n{body:#}\ndoes not include\n{expected:#}",
                        step.uri
                    );
                }
                if let Some(check) = &step.check {
                    check(&body);
                }
                let response = match step.reply {
                    Reply::Hang => {
                        hung.push(send);
                        continue;
                    }
                    Reply::Json(v) => Response::builder()
                        .status(StatusCode::OK)
                        .body(Body::from(serde_json::to_vec(&v).unwrap())),
                    Reply::Text(text) => Response::builder()
                        .status(StatusCode::OK)
                        .body(Body::from(text.into_bytes())),
                    Reply::Echo => Response::builder()
                        .status(StatusCode::OK)
                        .body(Body::from(bytes.to_vec())),
                    Reply::Refused(code, reason, message) => {
                        Response::builder().status(code).body(Body::from(
                            serde_json::to_vec(&json!({
                                "kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Failure", "message": message,
                                "reason": reason, "code": code
                            }))
                            .unwrap(),
                        ))
                    }
                    Reply::Status(code) => Response::builder().status(code).body(Body::from(
                        serde_json::to_vec(&json!({
                            "kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": "unavailable",
                            "reason": "ServiceUnavailable", "code": code.as_u16()
                        }))
                        .unwrap(),
                    )),
                    Reply::NotFound => failure(StatusCode::NOT_FOUND, "NotFound", "not found"),
                    Reply::Conflict => failure(StatusCode::CONFLICT, "Conflict", "uid mismatch"),
                    Reply::Forbidden => failure(StatusCode::FORBIDDEN, "Forbidden", "forbidden"),
                };
                send.send_response(response.unwrap());
            }
            if let Ok(Some((request, _))) =
                tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await
            {
                panic!("unexpected request: {} {}", request.method(), request.uri());
            }
            drop(hung);
        })
    }
}

/// A failure `Status`, as the API server sends it.
fn failure(code: StatusCode, reason: &str, message: &str) -> http::Result<Response<Body>> {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()
    });
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&status).unwrap()))
}
