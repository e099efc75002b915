//! The RedisCache reconciler. Everything it creates is owned and garbage-collected with
//! it (Redis keeps no data worth retaining), so it needs no finalizer.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::Patch;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};

use super::{
    Context, Result, Target, apply_params, apply_status, applying, measured, namespace, now,
    owned_objects, random_secret, report_failure, scoped_api,
};
use crate::crd::{Phase, RedisCache};
use crate::rediscache as rules;

pub fn controller(client: Client, namespace: Option<&str>) -> Controller<RedisCache> {
    Controller::new(
        scoped_api::<RedisCache>(client.clone(), namespace),
        watcher::Config::default(),
    )
    .owns(
        scoped_api::<Deployment>(client.clone(), namespace),
        owned_objects(),
    )
    .owns(
        scoped_api::<Service>(client.clone(), namespace),
        owned_objects(),
    )
    .owns(scoped_api::<Secret>(client, namespace), owned_objects())
}

pub async fn reconcile(rc: Arc<RedisCache>, ctx: Arc<Context>) -> Result<Action> {
    measured::<RedisCache, _>(async {
        let result = reconcile_inner(rc.clone(), ctx.clone()).await;
        if let Err(error) = &result {
            report_failure(&ctx, rc.as_ref(), rc.status.as_ref(), error, |f, now| {
                rules::status_after_failure(&rc, f, now)
            })
            .await;
        }
        result
    })
    .await
}

async fn reconcile_inner(rc: Arc<RedisCache>, ctx: Arc<Context>) -> Result<Action> {
    let ns = namespace(rc.as_ref())?;
    let client = ctx.client.clone();
    let mut applied = Vec::new();

    if rc.spec.password {
        // Read first; generated only when missing, never replaced.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let name = rules::password_secret_name(&rc.name_any());
        if secrets.get_opt(&name).await?.is_none() {
            let secret = rules::password_secret(&rc, &random_secret(32));
            secrets
                .patch(&name, &apply_params(), &Patch::Apply(&secret))
                .await
                .map_err(applying(format!("Secret/{name}")))?;
            applied.push(format!("Secret/{name}"));
        }
    }

    let owned = rules::desired(&rc);
    let deployment = Target::read(Api::namespaced(client.clone(), &ns), owned.deployment).await?;
    let service = Target::read(Api::namespaced(client.clone(), &ns), owned.service).await?;
    deployment.ours()?;
    service.ours()?;
    let deployment_described = deployment.describe();
    let service_described = service.describe();
    let (deployment, wrote_deployment) = deployment.sync().await?;
    let (_, wrote_service) = service.sync().await?;
    if wrote_deployment {
        applied.push(deployment_described);
    }
    if wrote_service {
        applied.push(service_described);
    }

    let status = rules::next_status(&rc, deployment.as_ref(), &now());
    let api: Api<RedisCache> = Api::namespaced(client, &ns);
    apply_status(&api, rc.as_ref(), rc.status.as_ref(), &status).await?;

    if !applied.is_empty() {
        ctx.event(
            rc.as_ref(),
            EventType::Normal,
            "Applied",
            "Apply",
            format!("applied {}", applied.join(", ")),
        )
        .await;
    }
    let phase = status.phase.unwrap_or(Phase::Pending);
    if rc.status.as_ref().and_then(|s| s.phase) != Some(phase) {
        let note = status
            .conditions
            .first()
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ctx.event(
            rc.as_ref(),
            EventType::Normal,
            phase.as_str(),
            "Reconcile",
            note,
        )
        .await;
    }
    Ok(if phase == Phase::Ready {
        Action::requeue(Duration::from_secs(300))
    } else {
        Action::requeue(Duration::from_secs(10))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::mock::{Expect, Reply, Verifier};
    use crate::crd::RedisCacheSpec;
    use crate::finservice::fixtures::settings;
    use serde_json::json;

    const REFUSED: &str = "Deployment.apps \"cache\" is invalid: spec.template.spec.containers[0].image: Required value";

    #[tokio::test]
    async fn a_refused_apply_stalls_the_cache_and_is_recorded_before_the_retry() {
        let spec: RedisCacheSpec = serde_json::from_value(json!({"password": false})).unwrap();
        let mut rc = RedisCache::new("cache", spec);
        rc.metadata.namespace = Some("finflow".into());
        rc.metadata.uid = Some("uid-cache".into());
        rc.metadata.generation = Some(4);
        let message = format!("applying Deployment/cache: {REFUSED}");
        let expected = message.clone();
        let steps = vec![
            Expect::get("/apis/apps/v1/namespaces/finflow/deployments/cache", Reply::NotFound),
            Expect::get("/api/v1/namespaces/finflow/services/cache", Reply::NotFound),
            Expect::apply(
                "/apis/apps/v1/namespaces/finflow/deployments/cache?&force=true&fieldManager=finflow-operator",
                json!({"kind": "Deployment"}),
            )
            .reply(Reply::Refused(422, "Invalid", REFUSED)),
            Expect::apply(
                "/apis/finflow.dev/v1alpha1/namespaces/finflow/rediscaches/cache/status?&force=true&fieldManager=finflow-operator",
                json!({"status": {"phase": "Degraded", "observedGeneration": 4}}),
            )
            .reply(Reply::Json(serde_json::to_value(&rc).unwrap()))
            .check(move |body| {
                let conditions = body["status"]["conditions"].as_array().unwrap();
                let of = |t: &str| conditions.iter().find(|c| c["type"] == t).unwrap().clone();
                for (type_, status) in [("Ready", "False"), ("Stalled", "True")] {
                    let c = of(type_);
                    assert_eq!(
                        (&c["status"], &c["reason"], &c["message"], &c["observedGeneration"]),
                        (&json!(status), &json!("ApplyFailed"), &json!(expected), &json!(4)),
                        "{type_}"
                    );
                }
                assert_eq!(of("Reconciling")["status"], "False");
            }),
            Expect::event("ApplyFailed").check(move |body| {
                assert_eq!(body["type"], "Warning");
                assert_eq!(body["note"], json!(message));
            }),
        ];
        let (ctx, verifier) = Verifier::context(settings());
        let server = verifier.run(steps);
        assert!(reconcile(Arc::new(rc), ctx).await.is_err());
        server.await.unwrap();
    }
}
