//! The rollout engine's edge ([`crate::rollout`] decides, this module talks to the API
//! server): probing a preview's `/health` through the service proxy, labelling pods with
//! their role, moving the sidecars' JWKS epoch, and recording each step as an Event.
//! Every write is a server-side apply with field manager `finflow-operator`.

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Client, ResourceExt};

use super::{Context, Result};
use crate::crd::{Color, FinService};
use crate::finservice::COLOR_LABEL;
use crate::meta::{FIELD_MANAGER, INSTANCE_LABEL};
use crate::rollout::{self, Decision};

/// `/health` of `<name>-preview` through the API server's service proxy. The service's
/// own `/health` covers its dependencies, so this one answer is the gate's input. Any
/// error (not found, 5xx, timeout) counts as unhealthy: the gate only opens on a 2xx.
pub async fn probe_preview_health(client: &Client, fs: &FinService) -> bool {
    let Some(ns) = fs.namespace() else {
        return false;
    };
    let path = rollout::preview_health_path(&ns, &fs.name_any(), &fs.spec.rollout.health_path);
    let Ok(request) = http::Request::get(path).body(Vec::new()) else {
        return false;
    };
    client.request_text(request).await.is_ok()
}

/// Labels every pod of both colors of `name` with its role while `<name>` selects
/// `active`; returns how many pods were relabelled.
pub async fn label_pod_roles(pods: &Api<Pod>, name: &str, active: Color) -> Result<usize> {
    let mut changed = 0;
    for color in [Color::Blue, Color::Green] {
        let selector = format!("{INSTANCE_LABEL}={name},{COLOR_LABEL}={}", color.as_str());
        for pod in pods.list(&ListParams::default().labels(&selector)).await? {
            let pod_name = pod.name_any();
            if let Some(body) = rollout::pod_role_apply(&pod_name, pod.labels(), color, active) {
                pods.patch(
                    &pod_name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(body),
                )
                .await?;
                changed += 1;
            }
        }
    }
    Ok(changed)
}

/// Sets the JWKS epoch annotation on the sidecar ConfigMaps named.
pub async fn bump_jwks_epoch(
    config_maps: &Api<ConfigMap>,
    names: &[String],
    epoch: &str,
) -> Result<()> {
    for name in names {
        config_maps
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(rollout::jwks_epoch_apply(name, epoch)),
            )
            .await?;
    }
    Ok(())
}

/// An Event for a step that changed something or needs attention: the reason is the
/// decision's, the action the step's.
pub async fn record(ctx: &Context, fs: &FinService, decision: &Decision) {
    if !(decision.step.acts() || decision.step.is_warning()) {
        return;
    }
    let type_ = if decision.step.is_warning() {
        EventType::Warning
    } else {
        EventType::Normal
    };
    ctx.event(
        fs,
        type_,
        decision.reason,
        decision.step.as_str(),
        decision.message.clone(),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::mock::{Reply, Step, Verifier};
    use crate::finservice::tests::{finservice, settings};
    use crate::rollout::{Step as RolloutStep, reason};
    use serde_json::json;

    fn pod(name: &str, color: &str, role: Option<&str>) -> serde_json::Value {
        let mut labels = json!({ INSTANCE_LABEL: "payment", COLOR_LABEL: color });
        if let Some(role) = role {
            labels[rollout::ROLE_LABEL] = json!(role);
        }
        json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name, "labels": labels } })
    }

    fn pod_list(items: Vec<serde_json::Value>) -> Reply {
        Reply::Json(
            json!({ "apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items }),
        )
    }

    fn list_uri(color: &str) -> String {
        format!(
            "/api/v1/namespaces/finflow/pods?&labelSelector=app.kubernetes.io%2Finstance%3Dpayment%2Cfinflow.dev%2Fcolor%3D{color}"
        )
    }

    #[tokio::test]
    async fn the_preview_health_goes_through_the_service_proxy() {
        let mut fs = finservice("payment", &[]);
        fs.metadata.namespace = Some("finflow".into());
        let (ctx, verifier) = Verifier::context(settings());
        let server = verifier.run(vec![
            Step::get(
                "/api/v1/namespaces/finflow/services/payment-preview:http/proxy/health",
                Reply::Json(json!({ "status": "ok" })),
            ),
            Step::get(
                "/api/v1/namespaces/finflow/services/payment-preview:http/proxy/health",
                Reply::NotFound,
            ),
        ]);
        assert!(probe_preview_health(&ctx.client, &fs).await);
        assert!(!probe_preview_health(&ctx.client, &fs).await);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_promotion_relabels_exactly_the_pods_whose_role_changed() {
        let (ctx, verifier) = Verifier::context(settings());
        let apply = |name: &str, role: &str| {
            Step::apply(
                format!(
                    "/api/v1/namespaces/finflow/pods/{name}?&force=true&fieldManager={FIELD_MANAGER}"
                ),
                json!({ "metadata": { "name": name, "labels": { rollout::ROLE_LABEL: role } } }),
            )
        };
        let server = verifier.run(vec![
            // Blue was active and is now the preview; green was promoted.
            Step::get(
                list_uri("blue"),
                pod_list(vec![pod("b1", "blue", Some("active"))]),
            ),
            apply("b1", "preview"),
            Step::get(
                list_uri("green"),
                pod_list(vec![
                    pod("g1", "green", Some("preview")),
                    pod("g2", "green", Some("active")),
                ]),
            ),
            apply("g1", "active"),
        ]);
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), "finflow");
        assert_eq!(
            label_pod_roles(&pods, "payment", Color::Green)
                .await
                .unwrap(),
            2
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn the_jwks_epoch_is_applied_to_each_sidecar_config_map() {
        let (ctx, verifier) = Verifier::context(settings());
        let server = verifier.run(
            ["wallet-sidecar", "payment-sidecar"]
                .map(|cm| {
                    Step::apply(
                        format!("/api/v1/namespaces/finflow/configmaps/{cm}?&force=true&fieldManager={FIELD_MANAGER}"),
                        json!({ "metadata": { "annotations": { rollout::JWKS_EPOCH_ANNOTATION: "2.0.0" } } }),
                    )
                })
                .into(),
        );
        let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), "finflow");
        bump_jwks_epoch(
            &cms,
            &["wallet-sidecar".into(), "payment-sidecar".into()],
            "2.0.0",
        )
        .await
        .unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn steps_that_act_or_warn_become_events_and_waiting_does_not() {
        let mut fs = finservice("payment", &[]);
        fs.metadata.namespace = Some("finflow".into());
        let (ctx, verifier) = Verifier::context(settings());
        let server = verifier.run(vec![
            Step::event(reason::PREVIEW_HEALTHY).check(|body| {
                assert_eq!(body["action"], "Promote");
                assert_eq!(body["type"], "Normal");
            }),
            Step::event(reason::READINESS_TIMEOUT).check(|body| {
                assert_eq!(body["action"], "Abort");
                assert_eq!(body["type"], "Warning");
            }),
        ]);
        let decision = |step, reason: &'static str| Decision {
            step,
            reason,
            message: "m".into(),
        };
        record(
            &ctx,
            &fs,
            &decision(RolloutStep::Promote, reason::PREVIEW_HEALTHY),
        )
        .await;
        record(
            &ctx,
            &fs,
            &decision(
                RolloutStep::WaitForDependencies,
                reason::DEPENDENCY_NOT_HEALTHY,
            ),
        )
        .await;
        record(
            &ctx,
            &fs,
            &decision(RolloutStep::Abort, reason::READINESS_TIMEOUT),
        )
        .await;
        server.await.unwrap();
    }
}
