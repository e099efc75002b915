//! A stateful fake Kubernetes API server for scenario tests, with the Deployment
//! controller, the kubelet and the apps' `/health` simulated.
//!
//! Where [`super::mock`] checks one reconcile's exact requests, this one keeps objects,
//! so many reconciles of many FinServices can run against it over simulated time, and a
//! test asserts on what the cluster ends up holding, on the Events, and on the writes
//! (each with its query, content type and body, see [`Write`]).
//! It answers what the operator sends, namespaced or cluster-scoped: GET and LIST (with
//! label selectors), create (409 AlreadyExists when the name is taken), replace,
//! server-side apply (a deep merge; the status subresource is replaced), JSON, merge and
//! strategic merge patches, Event creation, and GET through the service proxy. Like the
//! real server, a write whose body carries a `metadata.resourceVersion` other than the
//! stored one is refused with 409 Conflict, and a field an apply set is removed when the
//! same manager's next apply leaves it out. Pods are made by [`Fake::settle`] from
//! each Deployment's template, and the test decides which versions never become
//! ready, which crash, and which answer `/health` with an error. More clients can talk
//! to the same cluster ([`Fake::client`]), and a test can cut one off: its requests then
//! never get an answer, as across a network partition.
//!
//! Like the real server, an apply naming a uid where no object is answers 409 Conflict,
//! and it refuses what the real API server refuses about keyed lists: a pod template
//! whose containers, init containers or volumes repeat a name, or a container whose
//! `env`, `volumeMounts` (by `mountPath`) or `ports` (by `containerPort` and `protocol`)
//! repeat a key. An apply gets the server-side apply answer (500, `duplicate entries for
//! key`); a create, replace or other patch gets 422 Invalid, stricter than a real
//! server, which accepts a repeated `env` or port with a warning and then silently uses
//! one of them. A test can also make it refuse any write to a path ([`Fake::refuse`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
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
    /// When it was accepted, on the test's (tokio) clock.
    pub when: tokio::time::Instant,
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
    /// `(service, version)` -> what each of its pods' sidecars counted, served as their
    /// metrics through the pod proxy; a pod without an entry has no sidecar to answer.
    pub traffic: BTreeMap<(String, String), crate::analysis::Traffic>,
    /// `(service, version)` -> the `schema` its `/health` body reports (as the
    /// platform's `SchemaReport` writes it); without an entry the body has none.
    pub schemas: BTreeMap<(String, String), Value>,
    /// Object path (with `/status` for the status subresource) -> how every write to it
    /// is answered, until removed.
    pub refusals: BTreeMap<String, Refusal>,
    /// Pods deleted right after a LIST returned them: gone by the operator's next request.
    pub vanishing: BTreeSet<String>,
    /// Clients (see [`Fake::client`]) whose requests are held unanswered.
    pub cut_off: BTreeSet<usize>,
    /// The last body each field manager applied to each object (path, manager).
    applied: BTreeMap<(String, String), Value>,
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
    clients: Arc<AtomicUsize>,
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

/// Removes from `object` what `before` applied and `now` no longer does: server-side
/// apply drops the fields a manager stops applying. (The real server keeps a field
/// another manager also applied; in these tests one manager applies each object.)
fn forget(object: &mut Value, before: &Value, now: &Value) {
    let (Value::Object(object), Value::Object(before)) = (object, before) else {
        return;
    };
    for (k, was) in before {
        match now.get(k) {
            None => {
                object.remove(k);
            }
            Some(is) => {
                if let Some(field) = object.get_mut(k) {
                    forget(field, was, is);
                }
            }
        }
    }
}

/// A JSON merge patch (RFC 7386) or, with `by_name`, a strategic merge patch: maps
/// merge and `null` removes a field; a list is replaced, except that a strategic patch
/// merges a list of named objects into the current one element by element, matching on
/// `name` (the merge key the API declares for the lists the operator patches:
/// webhooks, containers, env).
fn merge_patch(target: &mut Value, patch: &Value, by_name: bool) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v, by_name);
                }
            }
        }
        (Value::Array(t), Value::Array(p))
            if by_name && p.iter().all(|e| e["name"].is_string()) =>
        {
            for element in p {
                match t.iter_mut().find(|c| c["name"] == element["name"]) {
                    Some(current) => merge_patch(current, element, by_name),
                    None => t.push(element.clone()),
                }
            }
        }
        (t, p) => {
            *t = p.clone();
            if let Value::Object(map) = t {
                map.retain(|_, v| !v.is_null());
            }
        }
    }
}

/// Where a request path points: the collection, the object's name, and whether it is
/// the status subresource. Namespaced (`.../namespaces/<ns>/<resource>/<name>`) and
/// cluster-scoped (`/api/v1/<resource>/<name>`, `/apis/<group>/<version>/<resource>/
/// <name>`) paths alike.
fn locate(path: &str) -> Option<(String, Option<String>, bool)> {
    let segments: Vec<&str> = path.split('/').collect();
    let resource = match segments.iter().position(|s| *s == "namespaces") {
        Some(at) if segments.len() > at + 2 => at + 2,
        Some(_) => return None,
        None => match segments.get(1) {
            Some(&"api") => 3,
            Some(&"apis") => 4,
            _ => return None,
        },
    };
    if segments.len() <= resource {
        return None;
    }
    let collection = segments[..=resource].join("/");
    let name = segments.get(resource + 1).map(|s| (*s).to_owned());
    let status = segments.get(resource + 2) == Some(&"status");
    Some((collection, name, status))
}

/// The Status the API server answers a refused request with.
fn status(code: StatusCode, reason: &str, message: String) -> (StatusCode, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

/// 409 Conflict: the write's resourceVersion precondition does not hold.
fn conflict(name: &str) -> (StatusCode, Value) {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        ),
    )
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
        let fake = Self {
            state: Arc::new(Mutex::new(State::default())),
            clock: Arc::new(AtomicI64::new(1_000_000)),
            clients: Arc::new(AtomicUsize::new(0)),
        };
        let (client, _) = fake.client();
        let clock = fake.clock.clone();
        let ctx =
            Context::new(client, settings, Some("test".into())).with_clock(Arc::new(move || {
                Time(Timestamp::from_second(clock.load(Ordering::SeqCst)).unwrap())
            }));
        (fake, Arc::new(ctx))
    }

    /// Another client of the same cluster, and its number (the context's is 0), by
    /// which [`State::cut_off`] names it.
    pub fn client(&self) -> (Client, usize) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let id = self.clients.fetch_add(1, Ordering::SeqCst);
        let server = self.clone();
        tokio::spawn(async move {
            // Requests of a cut-off client: held, never answered, never dropped.
            let mut held = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                if server.state().cut_off.contains(&id) {
                    held.push(send);
                    continue;
                }
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                // A sidecar's metrics through the pod proxy are text, not JSON.
                if let Some(text) = server.state().sidecar_metrics(parts.uri.path()) {
                    let (status, body) = match text {
                        Some(text) => (StatusCode::OK, text),
                        None => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no sidecar here".to_owned(),
                        ),
                    };
                    send.send_response(
                        Response::builder()
                            .status(status)
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Body::from(body.into_bytes()))
                            .unwrap(),
                    );
                    continue;
                }
                let (status, reply) = server.serve(&parts, &bytes);
                send.send_response(
                    Response::builder()
                        .status(status)
                        .body(Body::from(serde_json::to_vec(&reply).unwrap_or_default()))
                        .unwrap(),
                );
            }
        });
        (Client::new(service, NS), id)
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
        let stored = state.stamp(object, None, collection.contains("/namespaces/"));
        state
            .objects
            .entry(collection.to_owned())
            .or_default()
            .insert(name, stored);
    }

    /// Removes `name` as if a user deleted it.
    pub fn delete(&self, collection: &str, name: &str) {
        if let Some(c) = self.state().objects.get_mut(collection) {
            c.remove(name);
        }
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
        let stored = state.stamp(edited, Some(&current), true);
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
                        // As the ReplicaSet controller makes it: the template's spec.
                        "spec": template["spec"].clone(),
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
        if let Some(rest) = path.strip_prefix(&format!("{PODS}/"))
            && let Some((pod, _)) = rest.split_once("/proxy")
        {
            return state.pod_health(pod);
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

        let Some((collection, name, status_subresource)) = locate(&path) else {
            return not_found();
        };
        let namespaced = collection.contains("/namespaces/");
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if parts.method != Method::GET {
            let shown = match &name {
                Some(name) => format!("{collection}/{name}"),
                None => collection.clone(),
            };
            state.writes.push(format!(
                "{} {shown}{}",
                parts.method,
                if status_subresource { "/status" } else { "" }
            ));
            state.sent.push(Write {
                method: parts.method.clone(),
                path: path.clone(),
                query: query.clone(),
                content_type: content_type.clone(),
                body: body.clone(),
                when: tokio::time::Instant::now(),
            });
        }

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
            (&Method::POST, None) => {
                let Some(name) = body["metadata"]["name"].as_str().map(str::to_owned) else {
                    return status(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        "metadata.name: Required value".into(),
                    );
                };
                if let Some(refusal) = state.refusals.get(&format!("{collection}/{name}")) {
                    return refusal.answer();
                }
                if let Some(duplicate) = duplicate_key(&body) {
                    return invalid(&body, &name, &duplicate);
                }
                if state
                    .objects
                    .get(&collection)
                    .is_some_and(|c| c.contains_key(&name))
                {
                    return status(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        format!("\"{name}\" already exists"),
                    );
                }
                if !body["metadata"]["resourceVersion"].is_null() {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "resourceVersion should not be set on objects to be created".into(),
                    );
                }
                let stored = state.stamp(body, None, namespaced);
                state
                    .objects
                    .entry(collection)
                    .or_default()
                    .insert(name, stored.clone());
                (StatusCode::CREATED, stored)
            }
            (&Method::PUT | &Method::PATCH, Some(name)) => {
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
                // A resourceVersion in the body is a precondition, whatever the verb.
                if let Some(expected) = body["metadata"]["resourceVersion"].as_str()
                    && current
                        .as_ref()
                        .and_then(|c| c["metadata"]["resourceVersion"].as_str())
                        != Some(expected)
                {
                    return match current {
                        Some(_) => conflict(&name),
                        None => not_found(),
                    };
                }
                let next = if parts.method == Method::PUT {
                    let Some(current) = current.clone() else {
                        return not_found();
                    };
                    let mut object = body;
                    for kept in ["uid", "creationTimestamp"] {
                        object["metadata"][kept] = current["metadata"][kept].clone();
                    }
                    // The status is written through its subresource only.
                    if !status_subresource && let Some(status) = current.get("status") {
                        object["status"] = status.clone();
                    }
                    object
                } else if content_type.contains("json-patch") {
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
                } else if content_type.contains("merge-patch") {
                    let Some(mut object) = current.clone() else {
                        return not_found();
                    };
                    merge_patch(&mut object, &body, content_type.contains("strategic"));
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
                    let manager = query
                        .split('&')
                        .find_map(|q| q.strip_prefix("fieldManager="))
                        .unwrap_or_default()
                        .to_owned();
                    if let Some(before) = state.applied.get(&(path.clone(), manager.clone())) {
                        forget(&mut object, before, &body);
                    }
                    merge(&mut object, &body);
                    state.applied.insert((path.clone(), manager), body);
                    object
                };
                if !apply
                    && !status_subresource
                    && let Some(duplicate) = duplicate_key(&next)
                {
                    return invalid(&next, &name, &duplicate);
                }
                let stored = state.stamp(next, current.as_ref(), namespaced);
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
    fn stamp(&mut self, mut object: Value, previous: Option<&Value>, namespaced: bool) -> Value {
        self.next_version += 1;
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(self.next_version.to_string());
        if namespaced {
            meta["namespace"] = json!(NS);
        }
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

    /// `Some` for a GET of a pod's sidecar metrics through the pod proxy: the metrics
    /// of its `(service, version)`'s [`State::traffic`], or `None` (no sidecar answers).
    fn sidecar_metrics(&self, path: &str) -> Option<Option<String>> {
        let rest = path.strip_prefix(PODS)?.strip_prefix('/')?;
        let (pod, port) = rest.strip_suffix("/proxy/metrics")?.split_once(':')?;
        let port_matches = port == crate::inject::SIDECAR_ADMIN_PORT.to_string();
        let pod = self.objects.get(PODS).and_then(|c| c.get(pod));
        Some(
            pod.filter(|_| port_matches)
                .and_then(|p| self.traffic.get(&key(p)))
                .map(crate::analysis::exposition),
        )
    }

    /// `/health` of one pod through the pod proxy (`<pod>:<port>`): as a Service of that
    /// pod alone answers.
    fn pod_health(&self, pod_and_port: &str) -> (StatusCode, Value) {
        let (pod, port) = pod_and_port.split_once(':').unwrap_or((pod_and_port, ""));
        let Some(pod) = self.objects.get(PODS).and_then(|c| c.get(pod)) else {
            return not_found();
        };
        let declared = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .chain(pod["spec"]["initContainers"].as_array())
            .flatten()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .any(|p| {
                p["containerPort"]
                    .as_i64()
                    .map(|n| n.to_string())
                    .as_deref()
                    == Some(port)
            });
        if !declared {
            return failure(503, "ServiceUnavailable", "nothing listens on that port");
        }
        self.answer(&[pod])
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
        self.answer(&pods)
    }

    /// What `pods` answer together: 503 when there are none or one runs an unhealthy
    /// version, else 200 with the schema of their one release, if it reports one.
    fn answer(&self, pods: &[&Value]) -> (StatusCode, Value) {
        if pods.is_empty() || pods.iter().any(|p| self.unhealthy.contains(&key(p))) {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "unhealthy", "reason": "ServiceUnavailable", "code": 503}),
            )
        } else {
            let mut body = json!({"status": "up"});
            // The schema of the one release behind the Service, as its pods answer.
            let keys: BTreeSet<(String, String)> = pods.iter().map(|p| key(p)).collect();
            if let [only] = Vec::from_iter(keys).as_slice()
                && let Some(schema) = self.schemas.get(only)
            {
                body["schema"] = schema.clone();
            }
            (StatusCode::OK, body)
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
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{Api, Patch, PatchParams, PostParams};

    use super::*;
    use crate::finservice;
    use crate::finservice::fixtures::{self, settings};
    use k8s_openapi::api::core::v1::EnvVar;

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

    fn lease(holder: &str) -> Lease {
        serde_json::from_value(json!({
            "metadata": {"name": "op", "namespace": NS},
            "spec": {"holderIdentity": holder},
        }))
        .unwrap()
    }

    fn code(result: kube::Result<Lease>) -> u16 {
        match result {
            Err(kube::Error::Api(e)) => e.code,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_taken_name_or_a_stale_resource_version_is_refused_with_409() {
        let (fake, _) = Fake::start(crate::finservice::fixtures::settings());
        let (client, _) = fake.client();
        let leases: Api<Lease> = Api::namespaced(client, NS);
        let created = leases
            .create(&PostParams::default(), &lease("a"))
            .await
            .unwrap();
        assert_eq!(
            code(leases.create(&PostParams::default(), &lease("b")).await),
            409
        );
        let mut first = created.clone();
        first.spec.as_mut().unwrap().holder_identity = Some("b".into());
        leases
            .replace("op", &PostParams::default(), &first)
            .await
            .unwrap();
        // The same resourceVersion again: someone wrote since it was read.
        let mut second = created;
        second.spec.as_mut().unwrap().holder_identity = Some("c".into());
        assert_eq!(
            code(leases.replace("op", &PostParams::default(), &second).await),
            409
        );
        let held = leases.get("op").await.unwrap();
        assert_eq!(held.spec.unwrap().holder_identity.as_deref(), Some("b"));
    }

    #[tokio::test]
    async fn a_strategic_merge_patch_merges_named_list_elements() {
        let (fake, _) = Fake::start(crate::finservice::fixtures::settings());
        const MWCS: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";
        fake.create(
            MWCS,
            json!({
                "metadata": {"name": "hooks"},
                "webhooks": [
                    {"name": "a", "failurePolicy": "Ignore", "clientConfig": {"url": "https://a"}},
                    {"name": "b", "failurePolicy": "Fail"},
                ],
            }),
        );
        let (client, _) = fake.client();
        let api: Api<MutatingWebhookConfiguration> = Api::all(client);
        api.patch(
            "hooks",
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"webhooks": [{"name": "a", "clientConfig": {"caBundle": "Q0E="}}]}),
            ),
        )
        .await
        .unwrap();
        let stored = fake.get(MWCS, "hooks").unwrap();
        assert_eq!(
            stored["webhooks"][0],
            json!({"name": "a", "failurePolicy": "Ignore", "clientConfig": {"url": "https://a", "caBundle": "Q0E="}})
        );
        assert_eq!(stored["webhooks"][1]["failurePolicy"], "Fail");
        assert!(stored["metadata"].get("namespace").is_none());
    }

    // The fake's keyed-list check against what the pure core builds: a property of
    // `finservice::desired` that only the API server's rule (here, the fake's) can judge.
    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever names and paths a user picks, the Deployments hold every key of a
        /// keyed list once, as server-side apply requires.
        #[test]
        fn no_user_input_makes_a_keyed_list_repeat_a_key(
            names in proptest::collection::vec(
                proptest::sample::select(vec![
                    "DATABASE_URL", "AMQP_URL", "REDIS_URL", "LISTEN_ADDR", "FINFLOW_ROLE",
                    "FINFLOW_SERVICE", "RUST_LOG",
                ]),
                0..6,
            ),
            paths in proptest::collection::vec(
                proptest::sample::select(vec![finservice::PODINFO_PATH, "/etc/finflow/sidecar", "/keys"]),
                0..4,
            ),
            sidecar: bool,
            native: bool,
        ) {
            let mut fs = fixtures::finservice("payment", &[]);
            fs.spec.queue_ref = Some("events".into());
            fs.spec.cache_ref = Some("cache".into());
            fs.spec.sidecar.enabled = sidecar;
            fs.spec.env = names
                .iter()
                .map(|n| EnvVar {
                    name: (*n).to_owned(),
                    value: Some("user".into()),
                    ..EnvVar::default()
                })
                .collect();
            fs.spec.secret_mounts = paths
                .iter()
                .map(|p| crate::crd::SecretMount {
                    secret_name: "s".into(),
                    mount_path: (*p).to_owned(),
                })
                .collect();
            let settings = finservice::Settings { native_sidecars: native, ..settings() };
            for deployment in finservice::desired(&fs, &settings, true).deployments {
                let value = serde_json::to_value(&deployment).unwrap();
                let duplicate = duplicate_key(&value);
                proptest::prop_assert!(duplicate.is_none(), "{duplicate:?}");
            }
        }
    }
}
