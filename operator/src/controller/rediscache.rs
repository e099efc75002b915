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
    Context, Observed, Result, apply_params, apply_status, measured, namespace, now, owned_objects,
    random_secret, scoped_api,
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
    measured::<RedisCache, _>(reconcile_inner(rc, ctx)).await
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
                .await?;
            applied.push(format!("Secret/{name}"));
        }
    }

    let owned = rules::desired(&rc);
    let deployment = Observed::read(Api::namespaced(client.clone(), &ns), owned.deployment).await?;
    let service = Observed::read(Api::namespaced(client.clone(), &ns), owned.service).await?;
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
