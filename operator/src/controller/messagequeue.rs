//! The MessageQueue reconciler.
//!
//! A finalizer runs the cleanup the garbage collector cannot decide: with
//! `storage.retainOnDelete` (the default) the credentials Secret is released from its
//! owner so it survives next to the retained volumes, and a MessageQueue created again
//! under the same name finds both; otherwise the volumes are deleted with it.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use super::{
    Context, Error, Result, Target, apply_params, apply_status, applying, measured, namespace, now,
    owned_objects, random_secret, report_failure, scoped_api,
};
use crate::crd::{MessageQueue, Phase};
use crate::messagequeue::{self as mq_rules, JobState};
use crate::meta;

/// Finalizer name on MessageQueues.
pub const FINALIZER: &str = "finflow.dev/messagequeue-cleanup";

pub fn controller(client: Client, namespace: Option<&str>) -> Controller<MessageQueue> {
    Controller::new(
        scoped_api::<MessageQueue>(client.clone(), namespace),
        watcher::Config::default(),
    )
    .owns(
        scoped_api::<StatefulSet>(client.clone(), namespace),
        owned_objects(),
    )
    .owns(
        scoped_api::<Service>(client.clone(), namespace),
        owned_objects(),
    )
    .owns(
        scoped_api::<ConfigMap>(client.clone(), namespace),
        owned_objects(),
    )
    .owns(
        scoped_api::<Secret>(client.clone(), namespace),
        owned_objects(),
    )
    .owns(scoped_api::<Job>(client, namespace), owned_objects())
}

pub async fn reconcile(mq: Arc<MessageQueue>, ctx: Arc<Context>) -> Result<Action> {
    measured::<MessageQueue, _>(async {
        let ns = namespace(mq.as_ref())?;
        let api: Api<MessageQueue> = Api::namespaced(ctx.client.clone(), &ns);
        finalizer(&api, FINALIZER, mq, |event| async {
            match event {
                Finalizer::Apply(mq) => {
                    let result = apply(mq.clone(), &ctx, &ns).await;
                    if let Err(error) = &result {
                        report_failure(&ctx, mq.as_ref(), mq.status.as_ref(), error, |f, now| {
                            mq_rules::status_after_failure(&mq, f, now)
                        })
                        .await;
                    }
                    result
                }
                Finalizer::Cleanup(mq) => cleanup(mq, &ctx, &ns).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
    })
    .await
}

/// The credentials: read first, created only when missing, re-adopted (with its data
/// exactly as found) when an earlier cleanup released it. Returns whether it is complete.
async fn credentials(mq: &MessageQueue, ctx: &Context, ns: &str) -> Result<bool> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let name = mq_rules::credentials_secret_name(&mq.name_any());
    match secrets.get_opt(&name).await? {
        None => {
            let secret = mq_rules::credentials_secret(mq, &random_secret(32), &random_secret(64));
            secrets
                .patch(&name, &apply_params(), &Patch::Apply(&secret))
                .await
                .map_err(applying(format!("Secret/{name}")))?;
            ctx.event(
                mq,
                EventType::Normal,
                "CredentialsGenerated",
                "Apply",
                format!("generated Secret {name}; it is never regenerated"),
            )
            .await;
            Ok(true)
        }
        Some(existing) => {
            let owned = existing
                .owner_references()
                .iter()
                .any(|o| Some(&o.uid) == mq.meta().uid.as_ref());
            if !owned && !mq_rules::released_credentials(mq, &existing) {
                return Err(Error::NotOwned {
                    object: format!("Secret/{name}"),
                    holder: "not released by an earlier MessageQueue of this name".to_owned(),
                });
            }
            if !owned {
                // The data goes back exactly as found: an apply that left it out would
                // remove the keys this field manager wrote when it created them.
                let adopt = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(ns.to_owned()),
                        labels: existing.metadata.labels.clone(),
                        owner_references: meta::owner_reference(mq).map(|o| vec![o]),
                        ..ObjectMeta::default()
                    },
                    data: existing.data.clone(),
                    type_: existing.type_.clone(),
                    ..Secret::default()
                };
                secrets
                    .patch(&name, &apply_params(), &Patch::Apply(&adopt))
                    .await
                    .map_err(applying(format!("Secret/{name}")))?;
                ctx.event(
                    mq,
                    EventType::Normal,
                    "CredentialsAdopted",
                    "Apply",
                    format!("reusing the retained Secret {name}"),
                )
                .await;
            }
            Ok(mq_rules::credentials_complete(&existing))
        }
    }
}

async fn apply(mq: Arc<MessageQueue>, ctx: &Context, ns: &str) -> Result<Action> {
    let client = ctx.client.clone();
    let credentials_ok = credentials(&mq, ctx, ns).await?;

    let owned = mq_rules::desired(&mq, &ctx.cluster_domain);
    let [headless, client_service] = owned.services;
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let observed_config = Target::read(config_maps.clone(), owned.config_map).await?;
    let observed_topology = Target::read(config_maps, owned.topology).await?;
    let observed_headless = Target::read(services.clone(), headless).await?;
    let observed_client = Target::read(services, client_service).await?;
    let observed_sts =
        Target::read(Api::namespaced(client.clone(), ns), owned.stateful_set).await?;
    // Nothing is written while any of them is someone else's.
    [
        observed_config.ours(),
        observed_topology.ours(),
        observed_headless.ours(),
        observed_client.ours(),
        observed_sts.ours(),
    ]
    .into_iter()
    .collect::<Result<()>>()?;

    let mut applied = Vec::new();
    for (described, wrote) in [
        (observed_config.describe(), observed_config.sync().await?.1),
        (
            observed_topology.describe(),
            observed_topology.sync().await?.1,
        ),
        (
            observed_headless.describe(),
            observed_headless.sync().await?.1,
        ),
        (observed_client.describe(), observed_client.sync().await?.1),
    ] {
        if wrote {
            applied.push(described);
        }
    }
    let sts_described = observed_sts.describe();
    let (sts, wrote) = observed_sts.sync().await?;
    if wrote {
        applied.push(sts_described);
    }

    // The topology Job runs against a ready broker only, and once per definitions.
    let jobs: Api<Job> = Api::namespaced(client, ns);
    let job_name = mq_rules::topology_job_name(&mq);
    let mut job = jobs.get_opt(&job_name).await?;
    let desired_job = mq_rules::topology_job(&mq);
    // A Job of that name someone else made would report a topology it never declared.
    if let Some(holder) = meta::held_by_another(&desired_job, job.as_ref()) {
        return Err(Error::NotOwned {
            object: format!("Job/{job_name}"),
            holder,
        });
    }
    if job.is_none() && credentials_ok && mq_rules::broker_ready(sts.as_ref(), mq.spec.nodes()) {
        let created = jobs
            .patch(&job_name, &apply_params(), &Patch::Apply(&desired_job))
            .await
            .map_err(applying(format!("Job/{job_name}")))?;
        applied.push(format!("Job/{job_name}"));
        job = Some(created);
    }
    let job_state = mq_rules::job_state(job.as_ref());

    let status = mq_rules::next_status(&mq, sts.as_ref(), job_state, credentials_ok, &now());
    let api: Api<MessageQueue> = Api::namespaced(ctx.client.clone(), ns);
    apply_status(&api, mq.as_ref(), mq.status.as_ref(), &status).await?;

    if !applied.is_empty() {
        ctx.event(
            mq.as_ref(),
            EventType::Normal,
            "Applied",
            "Apply",
            format!("applied {}", applied.join(", ")),
        )
        .await;
    }
    let phase = status.phase.unwrap_or(Phase::Pending);
    if mq.status.as_ref().and_then(|s| s.phase) != Some(phase) {
        let type_ = if phase == Phase::Degraded {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let note = status
            .conditions
            .first()
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ctx.event(mq.as_ref(), type_, phase.as_str(), "Reconcile", note)
            .await;
    }
    Ok(match (phase, job_state) {
        (Phase::Ready, _) => Action::requeue(Duration::from_secs(300)),
        (_, JobState::Running) => Action::requeue(Duration::from_secs(10)),
        _ => Action::requeue(Duration::from_secs(30)),
    })
}

async fn cleanup(mq: Arc<MessageQueue>, ctx: &Context, ns: &str) -> Result<Action> {
    let name = mq.name_any();
    if mq.spec.storage.retain_on_delete {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
        let secret_name = mq_rules::credentials_secret_name(&name);
        // Only its own: a Secret of that name someone else made stays as it is.
        let own_secret = secrets
            .get_opt(&secret_name)
            .await?
            .filter(|secret| meta::controlled_by(secret, mq.as_ref()));
        let released = own_secret.is_some();
        if let Some(existing) = own_secret {
            // Applying it without owner references releases it from the garbage collector.
            let release = Secret {
                metadata: ObjectMeta {
                    name: Some(secret_name.clone()),
                    namespace: Some(ns.to_owned()),
                    labels: existing.metadata.labels.clone(),
                    ..ObjectMeta::default()
                },
                data: existing.data.clone(),
                type_: existing.type_.clone(),
                ..Secret::default()
            };
            secrets
                .patch(&secret_name, &apply_params(), &Patch::Apply(&release))
                .await?;
        }
        ctx.event(
            mq.as_ref(),
            EventType::Normal,
            "Retained",
            "Cleanup",
            if released {
                format!(
                    "kept the volumes and Secret {secret_name} for a MessageQueue of the same name"
                )
            } else {
                "kept the volumes for a MessageQueue of the same name".to_owned()
            },
        )
        .await;
    } else {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
        let selector = mq_rules::selector(&name)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let found = claims
            .list(&ListParams::default().labels(&selector))
            .await?;
        let brokers: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
        let broker = brokers.get_opt(&name).await?;
        let own = mq_rules::own_claims(&mq, broker.as_ref(), &found.items);
        for claim in &own {
            claims.delete(claim, &DeleteParams::default()).await?;
        }
        if broker.is_some_and(|sts| meta::controlled_by(&sts, mq.as_ref())) {
            ctx.event(
                mq.as_ref(),
                EventType::Normal,
                "DeletedVolumes",
                "Cleanup",
                format!("deleted {} volume claims", own.len()),
            )
            .await;
        } else {
            // Whose the claims of the name are cannot be told: someone must look.
            ctx.event(
                mq.as_ref(),
                EventType::Warning,
                "KeptVolumes",
                "Cleanup",
                format!(
                    "deleted no volume claim: StatefulSet {name} is gone or not this MessageQueue's, so claims data-{name}-<n> may be another release's"
                ),
            )
            .await;
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::mock::{Expect, Reply, Verifier};
    use crate::dns::ClusterDomain;
    use crate::finservice::fixtures::settings;
    use serde_json::json;

    fn finalized_mq() -> MessageQueue {
        let mut mq = crate::messagequeue::fixtures::message_queue();
        mq.metadata.finalizers = Some(vec![FINALIZER.into()]);
        mq
    }

    fn base(path: &str) -> String {
        format!("/api/v1/namespaces/finflow/{path}")
    }

    #[tokio::test]
    async fn existing_credentials_are_read_and_never_written() {
        let mq = finalized_mq();
        let existing = mq_rules::credentials_secret(&mq, "original", "cookie");
        let owned = mq_rules::desired(&mq, &ClusterDomain::default());
        let steps = vec![
            Expect::get(base("secrets/events-credentials"), Reply::Json(serde_json::to_value(&existing).unwrap())),
            Expect::get(base("configmaps/events-config"), Reply::Json(serde_json::to_value(&owned.config_map).unwrap())),
            Expect::get(base("configmaps/events-topology"), Reply::Json(serde_json::to_value(&owned.topology).unwrap())),
            Expect::get(base("services/events-headless"), Reply::Json(serde_json::to_value(&owned.services[0]).unwrap())),
            Expect::get(base("services/events"), Reply::Json(serde_json::to_value(&owned.services[1]).unwrap())),
            Expect::get(
                "/apis/apps/v1/namespaces/finflow/statefulsets/events",
                Reply::Json(serde_json::to_value(&owned.stateful_set).unwrap()),
            ),
            Expect::get(
                format!("/apis/batch/v1/namespaces/finflow/jobs/{}", mq_rules::topology_job_name(&mq)),
                Reply::NotFound,
            ),
            // The broker is not ready: no Job yet, and the status says so.
            Expect::apply(
                "/apis/finflow.dev/v1alpha1/namespaces/finflow/messagequeues/events/status?&force=true&fieldManager=finflow-operator",
                json!({"status": {"phase": "Progressing", "credentialsSecret": "events-credentials"}}),
            )
            .reply(Reply::Json(serde_json::to_value(&mq).unwrap()))
            .check(|body| {
                let topology = body["status"]["conditions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["type"] == "TopologyDeclared")
                    .unwrap();
                assert_eq!(topology["reason"], "WaitingForBroker");
            }),
            Expect::event("Progressing"),
        ];
        let (ctx, verifier) = Verifier::context(settings());
        let server = verifier.run(steps);
        reconcile(Arc::new(mq), ctx).await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn the_broker_configuration_uses_the_operators_cluster_domain() {
        let mq = finalized_mq();
        let domain: ClusterDomain = "corp.example".parse().unwrap();
        let existing = mq_rules::credentials_secret(&mq, "original", "cookie");
        let owned = mq_rules::desired(&mq, &domain);
        let steps = vec![
            Expect::get(base("secrets/events-credentials"), Reply::Json(serde_json::to_value(&existing).unwrap())),
            Expect::get(base("configmaps/events-config"), Reply::NotFound),
            Expect::get(base("configmaps/events-topology"), Reply::Json(serde_json::to_value(&owned.topology).unwrap())),
            Expect::get(base("services/events-headless"), Reply::Json(serde_json::to_value(&owned.services[0]).unwrap())),
            Expect::get(base("services/events"), Reply::Json(serde_json::to_value(&owned.services[1]).unwrap())),
            Expect::get(
                "/apis/apps/v1/namespaces/finflow/statefulsets/events",
                Reply::Json(serde_json::to_value(&owned.stateful_set).unwrap()),
            ),
            Expect::apply(
                format!("{}?&force=true&fieldManager=finflow-operator", base("configmaps/events-config")),
                json!({"metadata": {"name": "events-config"}}),
            )
            .check(|body| {
                let conf = body["data"]["rabbitmq.conf"].as_str().unwrap();
                assert!(conf.contains("events-headless.finflow.svc.corp.example"), "{conf}");
            }),
            Expect::get(
                format!("/apis/batch/v1/namespaces/finflow/jobs/{}", mq_rules::topology_job_name(&mq)),
                Reply::NotFound,
            ),
            Expect::apply(
                "/apis/finflow.dev/v1alpha1/namespaces/finflow/messagequeues/events/status?&force=true&fieldManager=finflow-operator",
                json!({"status": {"phase": "Progressing"}}),
            )
            .reply(Reply::Json(serde_json::to_value(&mq).unwrap())),
            Expect::event("Applied"),
            Expect::event("Progressing"),
        ];
        let (ctx, verifier) = Verifier::context(settings());
        let ctx = Arc::new(Arc::into_inner(ctx).unwrap().with_cluster_domain(domain));
        let server = verifier.run(steps);
        reconcile(Arc::new(mq), ctx).await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn missing_credentials_are_generated_once_with_every_key() {
        let mq = finalized_mq();
        let owned = mq_rules::desired(&mq, &ClusterDomain::default());
        let steps = vec![
            Expect::get(base("secrets/events-credentials"), Reply::NotFound),
            Expect::apply(
                format!("{}?&force=true&fieldManager=finflow-operator", base("secrets/events-credentials")),
                json!({"kind": "Secret", "metadata": {"name": "events-credentials"}}),
            )
            .check(|body| {
                for key in ["username", "password", "erlang-cookie", "url"] {
                    assert!(body["data"][key].is_string(), "{key}");
                }
                assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-events");
            }),
            Expect::event("CredentialsGenerated"),
            Expect::get(base("configmaps/events-config"), Reply::Json(serde_json::to_value(&owned.config_map).unwrap())),
            Expect::get(base("configmaps/events-topology"), Reply::Json(serde_json::to_value(&owned.topology).unwrap())),
            Expect::get(base("services/events-headless"), Reply::Json(serde_json::to_value(&owned.services[0]).unwrap())),
            Expect::get(base("services/events"), Reply::Json(serde_json::to_value(&owned.services[1]).unwrap())),
            Expect::get(
                "/apis/apps/v1/namespaces/finflow/statefulsets/events",
                Reply::Json(serde_json::to_value(&owned.stateful_set).unwrap()),
            ),
            Expect::get(
                format!("/apis/batch/v1/namespaces/finflow/jobs/{}", mq_rules::topology_job_name(&mq)),
                Reply::NotFound,
            ),
            Expect::apply(
                "/apis/finflow.dev/v1alpha1/namespaces/finflow/messagequeues/events/status?&force=true&fieldManager=finflow-operator",
                json!({"status": {"phase": "Progressing"}}),
            )
            .reply(Reply::Json(serde_json::to_value(&mq).unwrap())),
            Expect::event("Progressing"),
        ];
        let (ctx, verifier) = Verifier::context(settings());
        let server = verifier.run(steps);
        reconcile(Arc::new(mq), ctx).await.unwrap();
        server.await.unwrap();
    }
}
