//! A stateful fake Kubernetes API server for scenario tests, with the Deployment
//! controller, the kubelet and the apps' `/health` simulated.
//!
//! Where [`super::mock`] checks one reconcile's exact requests, this one keeps objects,
//! so many reconciles of many FinServices can run against it over simulated time, and a
//! test asserts on what the cluster ends up holding, on the Events, and on the writes
//! (each with its query, content type and body, see [`Write`]).
//! It answers what the operator sends: GET and LIST (with label selectors), server-side
//! apply (a deep merge; the status subresource is replaced; an apply naming a uid where
//! no object is answers 409 Conflict, as the API server does), JSON patch, create and
//! replace, Event creation, and GET through the service proxy. Pods are made by
//! [`Fake::settle`] from each Deployment's template, and the test decides which versions
//! never become ready, which crash, and which answer `/health` with an error.
//!
//! It refuses what the real API server refuses about keyed lists: a pod template whose
//! containers, init containers or volumes repeat a name, or a container whose `env`,
//! `volumeMounts` (by `mountPath`) or `ports` (by `containerPort` and `protocol`) repeat
//! a key. An apply gets the server-side apply answer (500, `duplicate entries for key`);
//! a create, replace or other patch gets 422 Invalid, stricter than a real server, which
//! accepts a repeated `env` or port with a warning and then silently uses one of them.
//! A test can also make it refuse any write to a path ([`Fake::refuse`]).

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
    /// Object path (with `/status` for the status subresource) -> how every write to it
    /// is answered, until removed.
    pub refusals: BTreeMap<String, Refusal>,
    /// Pods deleted right after a LIST returned them: gone by the operator's next request.
    pub vanishing: BTreeSet<String>,
}

/// A write the fake refuses: the `Status` it answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    /// The Status reason (`Invalid`, `Forbidden`, ...; empty for a plain 500).
    pub reason: String,
    pub message: String,
}

impl Refusal {
    fn answer(&self) -> (StatusCode, Value) {
        failure(self.code, &self.reason, &self.message)
    }
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

    /// Refuses every write to `path` (an object's path, `/status` for its status) with
    /// `code`, `reason` and `message`, as the API server would, until
    /// [`State::refusals`] loses it.
    pub fn refuse(&self, path: &str, code: u16, reason: &str, message: &str) {
        self.state().refusals.insert(
            path.to_owned(),
            Refusal {
                code,
                reason: reason.to_owned(),
                message: message.to_owned(),
            },
        );
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
                if let Some(refusal) = state.refusals.get(&path) {
                    return refusal.answer();
                }
                let apply = content_type.contains("apply-patch");
                if apply
                    && !status_subresource
                    && let Some(duplicate) = duplicate_key(&body)
                {
                    return typed_patch_error(&body, &name, &duplicate);
                }
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
                if !apply
                    && !status_subresource
                    && let Some(duplicate) = duplicate_key(&next)
                {
                    return invalid(&next, &name, &duplicate);
                }
                let stored = state.stamp(next, current.as_ref());
                state
                    .objects
                    .entry(collection)
                    .or_default()
                    .insert(name, stored.clone());
                (StatusCode::OK, stored)
            }
            (&Method::POST, None) | (&Method::PUT, Some(_)) => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let object_path = format!("{collection}/{name}");
                state.writes.push(format!("{} {object_path}", parts.method));
                state.sent.push(Write {
                    method: parts.method.clone(),
                    path: path.clone(),
                    query: query.clone(),
                    content_type: String::new(),
                    body: body.clone(),
                });
                if let Some(refusal) = state.refusals.get(&object_path) {
                    return refusal.answer();
                }
                if let Some(duplicate) = duplicate_key(&body) {
                    return invalid(&body, &name, &duplicate);
                }
                let current = state
                    .objects
                    .get(&collection)
                    .and_then(|c| c.get(&name))
                    .cloned();
                let created = parts.method == Method::POST;
                match (&current, created) {
                    (Some(_), true) => {
                        return failure(409, "AlreadyExists", &format!("{name:?} already exists"));
                    }
                    (None, false) => return not_found(),
                    _ => {}
                }
                let stored = state.stamp(body, current.as_ref());
                state
                    .objects
                    .entry(collection)
                    .or_default()
                    .insert(name, stored.clone());
                let code = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                (code, stored)
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
    failure(404, "NotFound", "not found")
}

/// A `Status` of `code`; an empty `reason` is left out, as the server does.
fn failure(code: u16, reason: &str, message: &str) -> (StatusCode, Value) {
    let mut status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "code": code});
    if !reason.is_empty() {
        status["reason"] = json!(reason);
    }
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        status,
    )
}

/// A key found twice in a keyed list: where, as server-side apply and as validation
/// name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// `.spec.template.spec.containers[name="app"].env: duplicate entries for key [name="X"]`
    pub apply: String,
    /// `spec.template.spec.containers[0].env[7]: Duplicate value: {"name":"X"}`
    pub field: String,
}

/// The first key that a pod template in `object` (a Pod's spec, a workload's
/// `spec.template`, a CronJob's job template) holds twice in a keyed list.
pub fn duplicate_key(object: &Value) -> Option<Duplicate> {
    let (at, pod) = if object["kind"] == "Pod" {
        ("spec", &object["spec"])
    } else if object["spec"]["template"]["spec"].is_object() {
        ("spec.template.spec", &object["spec"]["template"]["spec"])
    } else if object["spec"]["jobTemplate"]["spec"]["template"]["spec"].is_object() {
        (
            "spec.jobTemplate.spec.template.spec",
            &object["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        )
    } else {
        return None;
    };
    let lists = ["containers", "initContainers", "volumes"];
    for list in lists {
        let path = format!("{at}.{list}");
        if let Some(d) = duplicate_in(&pod[list], &path, &path, &["name"]) {
            return Some(d);
        }
    }
    for list in &lists[..2] {
        for (i, container) in pod[list].as_array().into_iter().flatten().enumerate() {
            let name = container["name"].as_str().unwrap_or_default();
            for (key, fields) in [
                ("env", &["name"][..]),
                ("volumeMounts", &["mountPath"][..]),
                ("ports", &["containerPort", "protocol"][..]),
            ] {
                let d = duplicate_in(
                    &container[key],
                    &format!("{at}.{list}[name={name:?}].{key}"),
                    &format!("{at}.{list}[{i}].{key}"),
                    fields,
                );
                if d.is_some() {
                    return d;
                }
            }
        }
    }
    None
}

/// The first repeated key of `list` under `fields` (a port's protocol defaults to TCP);
/// `apply` and `field` name the list as server-side apply and validation do.
fn duplicate_in(list: &Value, apply: &str, field: &str, fields: &[&str]) -> Option<Duplicate> {
    let mut seen: Vec<Vec<(&str, Value)>> = Vec::new();
    for (i, item) in list.as_array().into_iter().flatten().enumerate() {
        let key: Vec<(&str, Value)> = fields
            .iter()
            .map(|f| match (&item[*f], *f) {
                (Value::Null, "protocol") => (*f, json!("TCP")),
                (v, _) => (*f, v.clone()),
            })
            .collect();
        if seen.contains(&key) {
            let apply_key = key
                .iter()
                .map(|(f, v)| format!("{f}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let value: serde_json::Map<String, Value> =
                key.into_iter().map(|(f, v)| (f.to_owned(), v)).collect();
            return Some(Duplicate {
                apply: format!(".{apply}: duplicate entries for key [{apply_key}]"),
                field: format!("{field}[{i}]: Duplicate value: {}", Value::Object(value)),
            });
        }
        seen.push(key);
    }
    None
}

/// `group/version, Kind=Kind` of an object, as the server names it in errors.
fn gvk(object: &Value) -> (String, String) {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    (api_version.to_owned(), kind.to_owned())
}

/// What the server answers an apply whose body repeats a key: the field manager cannot
/// build the typed object.
fn typed_patch_error(body: &Value, name: &str, duplicate: &Duplicate) -> (StatusCode, Value) {
    let (api_version, kind) = gvk(body);
    failure(
        500,
        "",
        &format!(
            "failed to create typed patch object ({NS}/{name}; {api_version}, Kind={kind}): {}",
            duplicate.apply
        ),
    )
}

/// What validation answers a create, replace or patch whose result repeats a key.
fn invalid(object: &Value, name: &str, duplicate: &Duplicate) -> (StatusCode, Value) {
    let (api_version, kind) = gvk(object);
    let group = api_version
        .split_once('/')
        .map(|(g, _)| format!(".{g}"))
        .unwrap_or_default();
    failure(
        422,
        "Invalid",
        &format!("{kind}{group} {name:?} is invalid: {}", duplicate.field),
    )
}

/// Where FinServices live in the fake.
pub fn finservices() -> &'static str {
    FINSERVICES
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finservice::tests::settings;
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::api::{Api, Patch, PatchParams, PostParams};

    fn deployment(app: Value, volumes: Value) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "a-blue", "namespace": NS},
            "spec": {
                "selector": {"matchLabels": {"app": "a"}},
                "template": {
                    "metadata": {"labels": {"app": "a"}},
                    "spec": {"containers": [app], "volumes": volumes},
                },
            },
        })
    }

    fn refused(result: Result<Deployment, kube::Error>) -> (u16, String, String) {
        match result {
            Err(kube::Error::Api(s)) => (s.code, s.reason, s.message),
            other => panic!("not refused: {other:?}"),
        }
    }

    async fn apply(ctx: &Context, body: &Value) -> Result<Deployment, kube::Error> {
        let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), NS);
        api.patch("a-blue", &PatchParams::apply("test"), &Patch::Apply(body))
            .await
    }

    #[tokio::test]
    async fn an_apply_that_repeats_an_env_name_is_refused_as_server_side_apply_refuses_it() {
        let (fake, ctx) = Fake::start(settings());
        let app = json!({"name": "app", "env": [
            {"name": "DATABASE_URL", "value": "ours"},
            {"name": "DATABASE_URL", "value": "theirs"},
        ]});
        let (code, _, message) = refused(apply(&ctx, &deployment(app, json!([]))).await);
        assert_eq!(code, 500);
        assert_eq!(
            message,
            "failed to create typed patch object (finflow/a-blue; apps/v1, Kind=Deployment): \
             .spec.template.spec.containers[name=\"app\"].env: duplicate entries for key \
             [name=\"DATABASE_URL\"]"
        );
        assert!(fake.deployment("a-blue").is_none(), "nothing stored");
    }

    #[tokio::test]
    async fn ports_are_keyed_by_port_and_protocol_with_tcp_by_default() {
        let (_, ctx) = Fake::start(settings());
        let app = json!({"name": "app", "ports": [
            {"containerPort": 8080, "protocol": "UDP"},
            {"containerPort": 8080},
            {"containerPort": 8080, "protocol": "TCP"},
        ]});
        let (_, _, message) = refused(apply(&ctx, &deployment(app, json!([]))).await);
        assert!(
            message.ends_with(
                ".ports: duplicate entries for key [containerPort=8080,protocol=\"TCP\"]"
            ),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_create_that_repeats_a_volume_or_a_mount_path_is_invalid() {
        let (_, ctx) = Fake::start(settings());
        let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), NS);
        let create = |body: Value| {
            let api = api.clone();
            async move {
                let d: Deployment = serde_json::from_value(body).unwrap();
                api.create(&PostParams::default(), &d).await
            }
        };
        let volumes = json!([{"name": "keys", "emptyDir": {}}, {"name": "keys", "emptyDir": {}}]);
        let (code, reason, message) =
            refused(create(deployment(json!({"name": "app"}), volumes)).await);
        assert_eq!((code, reason.as_str()), (422, "Invalid"));
        assert_eq!(
            message,
            "Deployment.apps \"a-blue\" is invalid: spec.template.spec.volumes[1]: \
             Duplicate value: {\"name\":\"keys\"}"
        );
        let app = json!({"name": "app", "volumeMounts": [
            {"name": "a", "mountPath": "/keys"},
            {"name": "b", "mountPath": "/keys"},
        ]});
        let (code, _, message) = refused(create(deployment(app, json!([]))).await);
        assert_eq!(code, 422);
        assert!(
            message.contains("containers[0].volumeMounts[1]"),
            "{message}"
        );
        let fine = create(deployment(json!({"name": "app"}), json!([]))).await;
        assert!(fine.is_ok(), "{fine:?}");
    }

    #[tokio::test]
    async fn a_refused_path_answers_the_status_it_was_given_until_lifted() {
        let (fake, ctx) = Fake::start(settings());
        fake.refuse(
            &format!("{DEPLOYMENTS}/a-blue"),
            403,
            "Forbidden",
            "deployments.apps \"a-blue\" is forbidden",
        );
        let body = deployment(json!({"name": "app"}), json!([]));
        let (code, reason, message) = refused(apply(&ctx, &body).await);
        assert_eq!(
            (code, reason.as_str(), message.as_str()),
            (403, "Forbidden", "deployments.apps \"a-blue\" is forbidden")
        );
        fake.state().refusals.clear();
        assert!(apply(&ctx, &body).await.is_ok());
    }
}
