//! The rollout engine's edge ([`crate::rollout`] decides, this module talks to the API
//! server): probing `/health` through the service proxy, reading the sidecars' metrics
//! through the pod proxy ([`crate::analysis`] judges them), labelling pods with their
//! role, clearing a handled request annotation, and recording each step as an Event.
//! Writes are server-side applies with field manager `finflow-operator`, except the
//! removal of a user's request annotation (see [`clear_request`]).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::{Context, Result};
use crate::analysis::{self, Sample};
use crate::crd::{Color, FinService};
use crate::finservice::COLOR_LABEL;
use crate::inject::SIDECAR_ADMIN_PORT;
use crate::meta::{FIELD_MANAGER, INSTANCE_LABEL};
use crate::rollout::{self, Decision};

/// How long a `/health` probe may take. The reconcile waits for it, so a backend that
/// accepts the connection and never answers must not hold it (and every FinService
/// queued behind it) for the client's much longer read timeout.
pub const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a `/health` probe found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Probe {
    pub healthy: bool,
    /// The schema the answering release expects, when its body says
    /// ([`rollout::schema_from_health`]).
    pub schema: Option<rollout::Schema>,
}

/// `health_path` of Service `service` through the API server's service proxy. The
/// service's own `/health` covers its dependencies, so this one answer is the gate's
/// input. Any error (not found, 5xx, no answer within [`HEALTH_PROBE_TIMEOUT`]) counts as
/// unhealthy: only a 2xx passes.
pub async fn probe_health(
    client: &Client,
    namespace: &str,
    service: &str,
    health_path: &str,
) -> Probe {
    probe_health_within(
        HEALTH_PROBE_TIMEOUT,
        client,
        namespace,
        service,
        health_path,
    )
    .await
}

async fn probe_health_within(
    timeout: Duration,
    client: &Client,
    namespace: &str,
    service: &str,
    health_path: &str,
) -> Probe {
    let path = rollout::health_proxy_path(namespace, service, health_path);
    fetch_probe(timeout, client, namespace, &path).await
}

/// The most of a body the operator reads from a pod through the API server's proxy. A
/// health report is a few hundred bytes, and a sidecar's own metrics come first in its
/// exposition (the app's follow, and are not read). Read whole, a body without end (a
/// tenant's app, a broken one) would grow the operator until it is killed, and with it
/// every namespace's reconciles and the admission webhook.
pub const MAX_POD_READ: usize = 256 * 1024;

/// What [`read_from_pod`] read: at most [`MAX_POD_READ`] bytes, and whether that was
/// the whole body.
struct Read {
    text: String,
    whole: bool,
}

/// GETs `path` through the API server, reading at most [`MAX_POD_READ`] bytes of the
/// body, and none of an answer other than a 2xx (kube's own reading of an error answer
/// takes the whole body, however long).
async fn read_from_pod(client: &Client, path: &str) -> std::result::Result<Read, String> {
    use http_body_util::BodyExt;
    let request = http::Request::get(path)
        .body(kube::client::Body::empty())
        .map_err(|e| e.to_string())?;
    let response = client.send(request).await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while bytes.len() <= MAX_POD_READ {
        let Some(frame) = body.frame().await else {
            break;
        };
        if let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    let whole = bytes.len() <= MAX_POD_READ;
    bytes.truncate(MAX_POD_READ);
    Ok(Read {
        text: String::from_utf8_lossy(&bytes).into_owned(),
        whole,
    })
}

/// GETs `path` within `timeout`: healthy on a 2xx whose body is at most
/// [`MAX_POD_READ`], with the schema the body reports.
async fn fetch_probe(timeout: Duration, client: &Client, namespace: &str, path: &str) -> Probe {
    match tokio::time::timeout(timeout, read_from_pod(client, path)).await {
        Ok(Ok(Read { text, whole: true })) => Probe {
            healthy: true,
            schema: rollout::schema_from_health(&text),
        },
        Ok(Ok(Read { whole: false, .. })) => {
            tracing::info!(
                namespace,
                path,
                limit = MAX_POD_READ,
                "health answer too long; unhealthy"
            );
            Probe::default()
        }
        Ok(Err(error)) => {
            tracing::debug!(namespace, path, %error, "health probe failed");
            Probe::default()
        }
        Err(_) => {
            tracing::info!(namespace, path, ?timeout, "health probe timed out");
            Probe::default()
        }
    }
}

/// `/health` of `<name>-preview`.
pub async fn probe_preview_health(client: &Client, fs: &FinService) -> Probe {
    let Some(ns) = fs.namespace() else {
        return Probe::default();
    };
    probe_health(
        client,
        &ns,
        &crate::finservice::preview_service_name(&fs.name_any()),
        &fs.spec.rollout.health_path,
    )
    .await
}

/// `health_path` of one pod, through the pod proxy on the port its Services target
/// (`http`, the sidecar's when injected): what a release reports of itself, with no
/// other color's pod answering in its place (a Service may still list the old color's
/// endpoints just after a switch). A pod without that port is not probed.
pub async fn probe_pod_health(
    client: &Client,
    namespace: &str,
    pod: &Pod,
    health_path: &str,
) -> Probe {
    let port = pod.spec.as_ref().and_then(|spec| {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(crate::inject::HTTP_PORT))
            .map(|p| p.container_port)
    });
    let Some(port) = port else {
        return Probe::default();
    };
    let path = rollout::pod_health_path(namespace, &pod.name_any(), port, health_path);
    fetch_probe(HEALTH_PROBE_TIMEOUT, client, namespace, &path).await
}

/// What the sidecars of `pods` counted, summed: each read through the API server's pod
/// proxy on the sidecar's admin port, concurrently, each within
/// [`HEALTH_PROBE_TIMEOUT`]. A pod whose sidecar does not answer, or answers with what
/// is not a FinFlow sidecar's metrics, is left out (`pods` says how many were read).
pub async fn scrape(client: &Client, namespace: &str, pods: &[&Pod]) -> Sample {
    let reads = pods.iter().map(|pod| async move {
        let name = pod.name_any();
        let path = analysis::pod_metrics_path(namespace, &name, SIDECAR_ADMIN_PORT);
        let text = match tokio::time::timeout(HEALTH_PROBE_TIMEOUT, read_from_pod(client, &path))
            .await
        {
            Ok(Ok(Read { text, whole: true })) => text,
            // The sidecar's own families, all of them ahead of the app's, are in it.
            Ok(Ok(Read { text, whole: false })) if analysis::sidecar_part_ends(&text) => text,
            Ok(Ok(Read { whole: false, .. })) => {
                tracing::info!(namespace, pod = %name, limit = MAX_POD_READ, "sidecar metrics too long");
                return None;
            }
            Ok(Err(error)) => {
                tracing::debug!(namespace, pod = %name, %error, "sidecar metrics unreadable");
                return None;
            }
            Err(_) => {
                tracing::info!(namespace, pod = %name, "sidecar metrics timed out");
                return None;
            }
        };
        analysis::parse(&text)
            .inspect_err(|error| tracing::info!(namespace, pod = %name, %error, "sidecar metrics not understood"))
            .ok()
    });
    let samples: Vec<Sample> = futures_util::future::join_all(reads)
        .await
        .into_iter()
        .flatten()
        .collect();
    Sample::sum(&samples)
}

/// The pods of both colors of `name` (one LIST).
pub async fn pods_of(pods: &Api<Pod>, name: &str) -> Result<Vec<Pod>> {
    let selector = format!("{INSTANCE_LABEL}={name}");
    Ok(pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items)
}

/// Labels every pod of `name` with its role while `<name>` selects `active`; returns
/// how many pods were relabelled. Pods that become preview are relabelled first, so that
/// during a switch no two colors consume work queues at once (briefly none does).
///
/// A pod that went since it was listed (scaled down, evicted) is skipped: it has no role
/// left to play, and failing the reconcile for it would hold the promotion back. The API
/// server says so with 404 Not Found, or with 409 Conflict for an apply naming the uid
/// of an object that no longer exists ([`rollout::pod_role_apply`]); with `force`, an
/// apply has no other conflict.
pub async fn label_pod_roles(api: &Api<Pod>, pods: &[Pod], active: Color) -> Result<usize> {
    let mut changes: Vec<(&'static str, String, serde_json::Value)> = pods
        .iter()
        .filter_map(|pod| {
            let color = match pod.labels().get(COLOR_LABEL).map(String::as_str) {
                Some("blue") => Color::Blue,
                Some("green") => Color::Green,
                _ => return None,
            };
            let name = pod.name_any();
            rollout::pod_role_apply(&name, pod.uid().as_deref(), pod.labels(), color, active)
                .map(|body| (rollout::role(color, active), name, body))
        })
        .collect();
    changes.sort_by_key(|(role, name, _)| (*role != rollout::ROLE_PREVIEW, name.clone()));
    let mut relabelled = 0;
    for (_, name, body) in &changes {
        let applied = api
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await;
        match applied {
            Ok(_) => relabelled += 1,
            Err(kube::Error::Api(status)) if status.is_not_found() || status.is_conflict() => {
                tracing::debug!(pod = %name, reason = %status.reason, "pod went before its relabel; skipped");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(relabelled)
}

/// Removes the request annotations `fs` carries. A user's annotation is owned by the
/// user's field manager (the plugin's apply, or `kubectl annotate`), and server-side
/// apply cannot remove a field another manager owns; so this is a JSON patch, with a
/// `test` of each value so that a request changed meanwhile is not lost.
pub async fn clear_request(api: &Api<FinService>, fs: &FinService) -> Result<()> {
    let mut ops = Vec::new();
    for key in [
        rollout::PROMOTE_ANNOTATION,
        rollout::ABORT_ANNOTATION,
        rollout::ROLLBACK_ANNOTATION,
    ] {
        if let Some(value) = fs.annotations().get(key) {
            let path = format!(
                "/metadata/annotations/{}",
                key.replace('~', "~0").replace('/', "~1")
            );
            ops.push(json!({"op": "test", "path": path, "value": value}));
            ops.push(json!({"op": "remove", "path": path}));
        }
    }
    if ops.is_empty() {
        return Ok(());
    }
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))?;
    api.patch(
        &fs.name_any(),
        &PatchParams::default(),
        &Patch::Json::<()>(patch),
    )
    .await?;
    Ok(())
}

/// An Event for a step that changed something, or one that needs attention the first
/// time it is decided (a hold is not repeated every reconcile): the reason is the
/// decision's, the action the step's.
pub async fn record(
    ctx: &Context,
    fs: &FinService,
    decision: &Decision,
    previous_step: Option<&str>,
) {
    let repeated = previous_step == Some(decision.step.as_str());
    if !(decision.step.acts() || (decision.step.is_warning() && !repeated)) {
        return;
    }
    // A forced crossing of the schema barrier is worth a look whatever the step.
    let warning = decision.step.is_warning() || decision.forced();
    let type_ = if warning {
        EventType::Warning
    } else {
        EventType::Normal
    };
    ctx.event(
        fs,
        type_,
        decision.reason.as_str(),
        decision.step.as_str(),
        decision.message.clone(),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::Reason;
    use crate::controller::mock::{Expect, Reply, Verifier};
    use crate::finservice::fixtures::{finservice, settings};
    use crate::rollout::Step;

    fn pod(name: &str, color: &str, role: Option<&str>) -> Pod {
        let mut labels = json!({ INSTANCE_LABEL: "payment", COLOR_LABEL: color });
        if let Some(role) = role {
            labels[rollout::ROLE_LABEL] = json!(role);
        }
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": name, "uid": format!("uid-{name}"), "labels": labels },
        }))
        .unwrap()
    }

    fn role_apply(name: &str, role: &str) -> Expect {
        Expect::apply(
            format!(
                "/api/v1/namespaces/finflow/pods/{name}?&force=true&fieldManager={FIELD_MANAGER}"
            ),
            json!({ "metadata": {
                "name": name, "uid": format!("uid-{name}"), "labels": { rollout::ROLE_LABEL: role },
            } }),
        )
    }

    #[tokio::test]
    async fn the_preview_health_goes_through_the_service_proxy() {
        let fs = finservice("payment", &[]);
        let (ctx, verifier) = Verifier::context(settings());
        let server = verifier.run(vec![
            Expect::get(
                "/api/v1/namespaces/finflow/services/payment-preview:http/proxy/health",
                Reply::Json(json!({ "status": "ok" })),
            ),
            Expect::get(
                "/api/v1/namespaces/finflow/services/payment-preview:http/proxy/health",
                Reply::NotFound,
            ),
        ]);
        assert!(probe_preview_health(&ctx.client, &fs).await.healthy);
        assert!(!probe_preview_health(&ctx.client, &fs).await.healthy);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_health_probe_that_hangs_fails_at_its_timeout_instead_of_stalling_the_reconcile() {
        let (ctx, verifier) = Verifier::context(settings());
        let path = "/api/v1/namespaces/finflow/services/payment-preview:http/proxy/health";
        let server = verifier.run(vec![
            Expect::get(path, Reply::Hang),
            Expect::get(path, Reply::Json(json!({ "status": "ok" }))),
        ]);
        let probe = || {
            probe_health_within(
                Duration::from_millis(200),
                &ctx.client,
                "finflow",
                "payment-preview",
                "/health",
            )
        };
        let started = std::time::Instant::now();
        assert!(!probe().await.healthy);
        assert!(started.elapsed() < Duration::from_secs(5));
        // The client is not wedged: the next probe gets its answer.
        assert!(probe().await.healthy);
        server.await.unwrap();
        assert!(HEALTH_PROBE_TIMEOUT <= Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_health_answer_longer_than_the_operator_reads_is_unhealthy() {
        let (ctx, verifier) = Verifier::context(settings());
        let path = "/api/v1/namespaces/finflow/services/payment-preview:http/proxy/health";
        let report = r#"{"status":"ok","schema":{"version":3}}"#;
        let padded = format!("{report}{}", " ".repeat(MAX_POD_READ - report.len()));
        let server = verifier.run(vec![
            Expect::get(path, Reply::Text(format!("{padded} "))),
            Expect::get(path, Reply::Text(padded)),
        ]);
        let probe = || {
            probe_health_within(
                HEALTH_PROBE_TIMEOUT,
                &ctx.client,
                "finflow",
                "payment-preview",
                "/health",
            )
        };
        assert_eq!(probe().await, Probe::default(), "one byte over");
        let at_the_limit = probe().await;
        assert!(at_the_limit.healthy);
        assert_eq!(at_the_limit.schema.map(|s| s.version), Some(3));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_sidecar_s_metrics_are_read_from_the_start_of_an_exposition_too_long_to_read_whole() {
        let (ctx, verifier) = Verifier::context(settings());
        let own = "finflow_sidecar_requests_total{origin=\"upstream\",traffic=\"api\",status=\"200\"} 7\n\
                   finflow_sidecar_upstream_metrics_up 1\n";
        let app = "app_metric 1\n".repeat(MAX_POD_READ / 10);
        let cut_short =
            "finflow_sidecar_requests_total{origin=\"client\",traffic=\"app\",status=\"200\"} 7\n"
                .repeat(MAX_POD_READ / 50);
        let server = verifier.run(vec![
            Expect::get(
                "/api/v1/namespaces/finflow/pods/p1:15020/proxy/metrics",
                Reply::Text(format!("{own}{app}")),
            ),
            Expect::get(
                "/api/v1/namespaces/finflow/pods/p2:15020/proxy/metrics",
                Reply::Text(format!(
                    "{cut_short}finflow_sidecar_upstream_metrics_up 1\n"
                )),
            ),
        ]);
        let (p1, p2) = (pod("p1", "green", None), pod("p2", "green", None));
        let first = scrape(&ctx.client, "finflow", &[&p1]).await;
        assert_eq!(
            (first.pods, first.requests),
            (1, 7),
            "its own part was read: {first:?}"
        );
        let second = scrape(&ctx.client, "finflow", &[&p2]).await;
        assert_eq!(
            second.pods, 0,
            "its own part did not end within the limit: {second:?}"
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_promotion_relabels_exactly_the_pods_whose_role_changed_preview_first() {
        let (ctx, verifier) = Verifier::context(settings());
        // Green was promoted: its pods become active, blue's preview; an unlabelled
        // new pod gets its role too.
        let server = verifier.run(vec![
            role_apply("b1", "preview"),
            role_apply("g1", "active"),
            role_apply("g3", "active"),
        ]);
        let pods = [
            pod("g1", "green", Some("preview")),
            pod("b1", "blue", Some("active")),
            pod("g2", "green", Some("active")),
            pod("g3", "green", None),
        ];
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), "finflow");
        assert_eq!(label_pod_roles(&api, &pods, Color::Green).await.unwrap(), 3);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn pods_that_went_since_they_were_listed_are_skipped_not_errors() {
        let (ctx, verifier) = Verifier::context(settings());
        let server = verifier.run(vec![
            role_apply("b1", "preview").reply(Reply::NotFound),
            role_apply("b2", "preview").reply(Reply::Conflict),
            role_apply("g1", "active"),
        ]);
        let pods = [
            pod("b1", "blue", Some("active")),
            pod("b2", "blue", Some("active")),
            pod("g1", "green", Some("preview")),
        ];
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), "finflow");
        assert_eq!(label_pod_roles(&api, &pods, Color::Green).await.unwrap(), 1);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn any_other_relabel_failure_still_fails_the_reconcile() {
        let (ctx, verifier) = Verifier::context(settings());
        let server = verifier.run(vec![role_apply("b1", "preview").reply(Reply::Forbidden)]);
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), "finflow");
        let pods = [pod("b1", "blue", Some("active"))];
        assert!(label_pod_roles(&api, &pods, Color::Green).await.is_err());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_handled_request_annotation_is_removed_with_a_tested_json_patch() {
        let mut fs = finservice("payment", &[]);
        fs.metadata
            .annotations
            .get_or_insert_default()
            .insert(rollout::ROLLBACK_ANNOTATION.into(), "cascade".into());
        let (ctx, verifier) = Verifier::context(settings());
        let server = verifier.run(vec![
            Expect::patch(
                "/apis/finflow.dev/v1alpha1/namespaces/finflow/finservices/payment?",
                json!([
                    {"op": "test", "path": "/metadata/annotations/finflow.dev~1rollback", "value": "cascade"},
                    {"op": "remove", "path": "/metadata/annotations/finflow.dev~1rollback"},
                ]),
            )
            .reply(Reply::Json(serde_json::to_value(finservice("payment", &[])).unwrap())),
        ]);
        let api: Api<FinService> = Api::namespaced(ctx.client.clone(), "finflow");
        clear_request(&api, &fs).await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn steps_that_act_or_first_warn_become_events_and_waiting_does_not() {
        let fs = finservice("payment", &[]);
        let (ctx, verifier) = Verifier::context(settings());
        let server = verifier.run(vec![
            Expect::event(Reason::PREVIEW_HEALTHY.as_str()).check(|body| {
                assert_eq!(body["action"], "Promote");
                assert_eq!(body["type"], "Normal");
            }),
            Expect::event(Reason::VERSION_FAILED.as_str()).check(|body| {
                assert_eq!(body["action"], "Held");
                assert_eq!(body["type"], "Warning");
            }),
        ]);
        let decision = |step, reason: Reason| Decision {
            step,
            reason,
            message: "m".into(),
        };
        record(
            &ctx,
            &fs,
            &decision(Step::Promote, Reason::PREVIEW_HEALTHY),
            None,
        )
        .await;
        record(
            &ctx,
            &fs,
            &decision(Step::WaitForDependencies, Reason::DEPENDENCY_NOT_HEALTHY),
            None,
        )
        .await;
        record(
            &ctx,
            &fs,
            &decision(Step::Held, Reason::VERSION_FAILED),
            Some("Observe"),
        )
        .await;
        // The same hold again: no second Event.
        record(
            &ctx,
            &fs,
            &decision(Step::Held, Reason::VERSION_FAILED),
            Some("Held"),
        )
        .await;
        server.await.unwrap();
    }
}
