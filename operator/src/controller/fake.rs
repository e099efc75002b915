//! A stateful fake Kubernetes API server for scenario tests, with the Deployment
//! controller, the kubelet and the apps' `/health` simulated.
//!
//! Where [`super::mock`] checks one reconcile's exact requests, this one keeps objects,
//! so many reconciles of many FinServices can run against it over simulated time, and a
//! test asserts on what the cluster ends up holding, on the Events, and on the writes
//! (each with its query, content type and body, see [`Write`]).
//! It answers what the operator sends: GET and LIST (with label selectors), server-side
//! apply (a deep merge; the status subresource is replaced; an apply naming a uid where
//! no object is answers 409 Conflict, as the API server does), JSON patch, Event
//! creation, and GET through the service proxy. Pods are made by [`Fake::settle`] from
//! each Deployment's template, and the test decides which versions never become
//! ready, which crash, and which answer `/health` with an error.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;

use super::Context;
use crate::finservice::{COLOR_LABEL, Settings, VERSION_LABEL};
use crate::meta::INSTANCE_LABEL;

pub const NS: &str = "finflow";
const FINSERVICES: &str = "/apis/finflow.dev/v1alpha1/namespaces/finflow/finservices";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/finflow/deployments";
const PODS: &str = "/api/v1/namespaces/finflow/pods";
const SERVICES: &str = "/api/v1/namespaces/finflow/services";

/// An Event as the fake received it, with the simulated time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub at: i64,
    pub object: String,
    pub type_: String,
    pub reason: String,
    pub action: String,
    pub note: String,
}

/// A write as the fake received it.
#[derive(Debug, Clone)]
pub struct Write {
    pub method: Method,
    /// The request path (with `/status` for the status subresource).
    pub path: String,
    /// The query string as sent, without the `?`.
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

impl Write {
    /// The query's parameters (`key=value`), as sent.
    pub fn params(&self) -> Vec<&str> {
        self.query.split('&').filter(|p| !p.is_empty()).collect()
    }
}

/// The cluster's state and the test's levers.
#[derive(Default)]
pub struct State {
    /// Collection path -> name -> object.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    next_version: u64,
    /// Every write: `METHOD path` (Events excluded).
    pub writes: Vec<String>,
    /// The same writes as sent, with their query, content type and body.
    pub sent: Vec<Write>,
    pub events: Vec<Recorded>,
    /// `(service, version)` whose pods never become ready.
    pub never_ready: BTreeSet<(String, String)>,
    /// `(service, version)` whose containers restart at every settle.
    pub crashing: BTreeSet<(String, String)>,
    /// `(service, version)` whose `/health` answers 503.
    pub unhealthy: BTreeSet<(String, String)>,
    /// Pods deleted right after a LIST returned them: gone by the operator's next request.
    pub vanishing: BTreeSet<String>,
}

/// The fake API server and its clock (seconds).
#[derive(Clone)]
pub struct Fake {
    state: Arc<Mutex<State>>,
    clock: Arc<AtomicI64>,
}

fn key(v: &Value) -> (String, String) {
    (
        v["metadata"]["labels"][INSTANCE_LABEL]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        v["metadata"]["labels"][VERSION_LABEL]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// Deep merge of an apply body into an object: maps merge, everything else is replaced.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn selected(labels: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|term| match term.split_once('=') {
            Some((k, v)) => labels[k] == v,
            None => false,
        })
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Fake {
    /// A fake server and a reconcile context whose client and clock use it.
    pub fn start(settings: Settings) -> (Self, Arc<Context>) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let fake = Self {
            state: Arc::new(Mutex::new(State::default())),
            clock: Arc::new(AtomicI64::new(1_000_000)),
        };
        let server = fake.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let (status, reply) = server.serve(&parts, &bytes);
                send.send_response(
                    Response::builder()
                        .status(status)
                        .body(Body::from(serde_json::to_vec(&reply).unwrap_or_default()))
                        .unwrap(),
                );
            }
        });
        let clock = fake.clock.clone();
        let ctx = Context::new(Client::new(service, NS), settings, Some("test".into())).with_clock(
            Arc::new(move || Time(Timestamp::from_second(clock.load(Ordering::SeqCst)).unwrap())),
        );
        (fake, Arc::new(ctx))
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn now(&self) -> i64 {
        self.clock.load(Ordering::SeqCst)
    }

    pub fn advance(&self, seconds: i64) {
        self.clock.fetch_add(seconds, Ordering::SeqCst);
    }

    /// Stores `object` as if a user created it.
    pub fn create(&self, collection: &str, object: Value) {
        let mut state = self.state();
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let stored = state.stamp(object, None);
        state
            .objects
            .entry(collection.to_owned())
            .or_default()
            .insert(name, stored);
    }

    pub fn get(&self, collection: &str, name: &str) -> Option<Value> {
        self.state()
            .objects
            .get(collection)
            .and_then(|c| c.get(name))
            .cloned()
    }

    pub fn list(&self, collection: &str) -> Vec<Value> {
        self.state()
            .objects
            .get(collection)
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn finservice(&self, name: &str) -> crate::crd::FinService {
        serde_json::from_value(self.get(FINSERVICES, name).expect("the FinService exists")).unwrap()
    }

    pub fn finservices(&self) -> Vec<crate::crd::FinService> {
        self.list(FINSERVICES)
            .into_iter()
            .map(|v| serde_json::from_value(v).unwrap())
            .collect()
    }

    /// A user's edit of a FinService: the change is merged into the spec or metadata,
    /// and the generation moves when the spec changed.
    pub fn edit_finservice(&self, name: &str, change: Value) {
        let mut state = self.state();
        let current = state.objects[FINSERVICES][name].clone();
        let mut edited = current.clone();
        merge(&mut edited, &change);
        let stored = state.stamp(edited, Some(&current));
        state
            .objects
            .get_mut(FINSERVICES)
            .unwrap()
            .insert(name.to_owned(), stored);
    }

    pub fn deployment(&self, name: &str) -> Option<Value> {
        self.get(DEPLOYMENTS, name)
    }

    pub fn config_map(&self, name: &str) -> Option<Value> {
        self.get("/api/v1/namespaces/finflow/configmaps", name)
    }

    pub fn service(&self, name: &str) -> Option<Value> {
        self.get(SERVICES, name)
    }

    pub fn pods(&self) -> Vec<Value> {
        self.list(PODS)
    }

    /// The Deployment controller and the kubelet: each Deployment gets its pods (one per
    /// replica, replaced when the template's version changes), crashing versions restart,
    /// and the status says how many are ready.
    pub fn settle(&self) {
        let mut state = self.state();
        let deployments: Vec<Value> = state
            .objects
            .get(DEPLOYMENTS)
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default();
        for d in deployments {
            let name = d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let template = &d["spec"]["template"];
            let labels = template["metadata"]["labels"].clone();
            let (instance, version) = key(template);
            let replicas = d["spec"]["replicas"].as_i64().unwrap_or(0);
            let ready = !state
                .never_ready
                .contains(&(instance.clone(), version.clone()));
            let crashing = state
                .crashing
                .contains(&(instance.clone(), version.clone()));
            let pods = state.objects.entry(PODS.to_owned()).or_default();
            let wanted: Vec<String> = (0..replicas)
                .map(|i| format!("{name}-{}-{i}", version.replace('.', "-")))
                .collect();
            let color = labels[COLOR_LABEL].clone();
            pods.retain(|pod_name, pod| {
                !(pod["metadata"]["labels"][INSTANCE_LABEL] == instance.as_str()
                    && pod["metadata"]["labels"][COLOR_LABEL] == color
                    && !wanted.contains(pod_name))
            });
            for pod_name in &wanted {
                let pod = pods.entry(pod_name.clone()).or_insert_with(|| {
                    json!({
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": pod_name, "namespace": NS, "uid": format!("uid-{pod_name}"), "labels": labels.clone()},
                        "status": {"containerStatuses": [{"name": "app", "restartCount": 0, "ready": ready, "image": "", "imageID": ""}]},
                    })
                });
                if crashing {
                    let restarts = pod["status"]["containerStatuses"][0]["restartCount"]
                        .as_i64()
                        .unwrap_or(0);
                    pod["status"]["containerStatuses"][0]["restartCount"] = json!(restarts + 1);
                }
            }
            let available = if ready { replicas } else { 0 };
            if let Some(stored) = state
                .objects
                .get_mut(DEPLOYMENTS)
                .and_then(|c| c.get_mut(&name))
            {
                stored["status"] = json!({
                    "observedGeneration": stored["metadata"]["generation"],
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "readyReplicas": available,
                    "availableReplicas": available,
                });
            }
        }
    }

    fn serve(&self, parts: &http::request::Parts, body: &[u8]) -> (StatusCode, Value) {
        let now = self.now();
        let mut state = self.state();
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or_default().to_owned();
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);

        if let Some(rest) = path.strip_prefix(&format!("{SERVICES}/"))
            && let Some((service, _)) = rest.split_once(":http/proxy")
        {
            return state.health(service);
        }
        if parts.method == Method::POST && path.ends_with("/events") {
            state.events.push(Recorded {
                at: now,
                object: body["regarding"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .into(),
                type_: body["type"].as_str().unwrap_or_default().into(),
                reason: body["reason"].as_str().unwrap_or_default().into(),
                action: body["action"].as_str().unwrap_or_default().into(),
                note: body["note"].as_str().unwrap_or_default().into(),
            });
            return (StatusCode::CREATED, body);
        }

        let segments: Vec<&str> = path.split('/').collect();
        let Some(at) = segments.iter().position(|s| *s == "namespaces") else {
            return not_found();
        };
        let collection = segments[..(at + 3).min(segments.len())].join("/");
        let name = segments.get(at + 3).map(|s| (*s).to_owned());
        let status_subresource = segments.get(at + 4) == Some(&"status");

        match (&parts.method, name) {
            (&Method::GET, None) => {
                let selector = query
                    .split('&')
                    .find_map(|q| q.strip_prefix("labelSelector="))
                    .map(decode)
                    .unwrap_or_default();
                let items: Vec<Value> = state
                    .objects
                    .get(&collection)
                    .into_iter()
                    .flat_map(|c| c.values())
                    .filter(|o| selected(&o["metadata"]["labels"], &selector))
                    .cloned()
                    .collect();
                if collection == PODS {
                    let State {
                        objects, vanishing, ..
                    } = &mut *state;
                    for item in &items {
                        let name = item["metadata"]["name"].as_str().unwrap_or_default();
                        if vanishing.remove(name)
                            && let Some(pods) = objects.get_mut(PODS)
                        {
                            pods.remove(name);
                        }
                    }
                }
                (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            (&Method::GET, Some(name)) => {
                match state.objects.get(&collection).and_then(|c| c.get(&name)) {
                    Some(o) => (StatusCode::OK, o.clone()),
                    None => not_found(),
                }
            }
            (&Method::PATCH, Some(name)) => {
                state.writes.push(format!(
                    "PATCH {collection}/{name}{}",
                    if status_subresource { "/status" } else { "" }
                ));
                let content_type = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                state.sent.push(Write {
                    method: Method::PATCH,
                    path: path.clone(),
                    query: query.clone(),
                    content_type: content_type.clone(),
                    body: body.clone(),
                });
                let current = state
                    .objects
                    .get(&collection)
                    .and_then(|c| c.get(&name))
                    .cloned();
                let next = if content_type.contains("json-patch") {
                    let Some(mut object) = current.clone() else {
                        return not_found();
                    };
                    let Ok(patch) = serde_json::from_value::<json_patch::Patch>(body) else {
                        return (StatusCode::BAD_REQUEST, json!({}));
                    };
                    if json_patch::patch(&mut object, &patch).is_err() {
                        return (
                            StatusCode::UNPROCESSABLE_ENTITY,
                            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "test failed", "reason": "Invalid", "code": 422}),
                        );
                    }
                    object
                } else if status_subresource {
                    let Some(mut object) = current.clone() else {
                        return not_found();
                    };
                    object["status"] = body["status"].clone();
                    object
                } else {
                    if current.is_none()
                        && let Some(uid) = body["metadata"]["uid"].as_str()
                    {
                        return (
                            StatusCode::CONFLICT,
                            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": format!("uid mismatch: the provided object specified uid {uid}, and no existing object was found"), "reason": "Conflict", "code": 409}),
                        );
                    }
                    let mut object = current.clone().unwrap_or_else(|| json!({}));
                    merge(&mut object, &body);
                    object
                };
                let stored = state.stamp(next, current.as_ref());
                state
                    .objects
                    .entry(collection)
                    .or_default()
                    .insert(name, stored.clone());
                (StatusCode::OK, stored)
            }
            _ => not_found(),
        }
    }
}

impl State {
    /// Server-set metadata: uid, resourceVersion, generation (moved by a spec change).
    fn stamp(&mut self, mut object: Value, previous: Option<&Value>) -> Value {
        self.next_version += 1;
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(self.next_version.to_string());
        meta["namespace"] = json!(NS);
        if meta["uid"].is_null() {
            meta["uid"] = json!(format!("uid-{}", meta["name"].as_str().unwrap_or_default()));
        }
        if meta["creationTimestamp"].is_null() {
            meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        let generation = match previous {
            None => 1,
            Some(p) => {
                let g = p["metadata"]["generation"].as_i64().unwrap_or(1);
                if p["spec"] == object["spec"] {
                    g
                } else {
                    g + 1
                }
            }
        };
        object["metadata"]["generation"] = json!(generation);
        object
    }

    /// `/health` of a Service: 200 when it selects pods and none runs an unhealthy version.
    fn health(&self, service: &str) -> (StatusCode, Value) {
        let Some(svc) = self.objects.get(SERVICES).and_then(|c| c.get(service)) else {
            return not_found();
        };
        let selector = &svc["spec"]["selector"];
        let pods: Vec<&Value> = self
            .objects
            .get(PODS)
            .into_iter()
            .flat_map(|c| c.values())
            .filter(|p| {
                selector
                    .as_object()
                    .is_some_and(|s| s.iter().all(|(k, v)| &p["metadata"]["labels"][k] == v))
            })
            .filter(|p| !self.never_ready.contains(&key(p)))
            .collect();
        if pods.is_empty() || pods.iter().any(|p| self.unhealthy.contains(&key(p))) {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "unhealthy", "reason": "ServiceUnavailable", "code": 503}),
            )
        } else {
            (StatusCode::OK, json!({"status": "ok"}))
        }
    }
}

fn not_found() -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "not found", "reason": "NotFound", "code": 404}),
    )
}

/// Where FinServices live in the fake.
pub fn finservices() -> &'static str {
    FINSERVICES
}
