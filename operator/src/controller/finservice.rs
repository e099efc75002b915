//! The FinService reconciler.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};

use super::{
    Context, Observed, Result, apply_status, measured, namespace, now, owned_objects, scoped_api,
};
use crate::crd::{Color, FinService, MessageQueue, Phase, RedisCache};
use crate::finservice::{self, Blocker, cache_blocker, queue_blocker, service_blocker};

/// The FinService controller: its own objects, what it owns, and the FinServices,
/// queues and caches others depend on (a dependency turning Ready wakes its dependents).
pub fn controller(client: Client, namespace: Option<&str>) -> Controller<FinService> {
    let services: Api<FinService> = scoped_api(client.clone(), namespace);
    let controller = Controller::new(services.clone(), watcher::Config::default());
    let store = controller.store();
    let by_service = store.clone();
    let by_queue = store.clone();
    let by_cache = store;
    controller
        .owns(
            scoped_api::<Deployment>(client.clone(), namespace),
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
            scoped_api::<ServiceAccount>(client.clone(), namespace),
            owned_objects(),
        )
        .watches(
            services,
            watcher::Config::default(),
            move |dep: FinService| {
                dependents(&by_service, &dep.namespace().unwrap_or_default(), |fs| {
                    fs.spec.depends_on.contains(&dep.name_any())
                })
            },
        )
        .watches(
            scoped_api::<MessageQueue>(client.clone(), namespace),
            watcher::Config::default(),
            move |mq: MessageQueue| {
                dependents(&by_queue, &mq.namespace().unwrap_or_default(), |fs| {
                    fs.spec.queue_ref.as_deref() == Some(mq.name_any().as_str())
                })
            },
        )
        .watches(
            scoped_api::<RedisCache>(client, namespace),
            watcher::Config::default(),
            move |rc: RedisCache| {
                dependents(&by_cache, &rc.namespace().unwrap_or_default(), |fs| {
                    fs.spec.cache_ref.as_deref() == Some(rc.name_any().as_str())
                })
            },
        )
}

fn dependents(
    store: &Store<FinService>,
    namespace: &str,
    uses: impl Fn(&FinService) -> bool,
) -> Vec<ObjectRef<FinService>> {
    store
        .state()
        .iter()
        .filter(|fs| fs.namespace().as_deref() == Some(namespace) && uses(fs))
        .map(|fs| ObjectRef::from_obj(fs.as_ref()))
        .collect()
}

pub async fn reconcile(fs: Arc<FinService>, ctx: Arc<Context>) -> Result<Action> {
    measured::<FinService, _>(reconcile_inner(fs, ctx)).await
}

async fn reconcile_inner(fs: Arc<FinService>, ctx: Arc<Context>) -> Result<Action> {
    let ns = namespace(fs.as_ref())?;
    let client = ctx.client.clone();

    // What it depends on.
    let services: Api<FinService> = Api::namespaced(client.clone(), &ns);
    let mut blockers: Vec<Blocker> = Vec::new();
    for dep in &fs.spec.depends_on {
        let found = services.get_opt(dep).await?;
        blockers.extend(service_blocker(dep, found.as_ref()));
    }
    if let Some(queue) = &fs.spec.queue_ref {
        let found = Api::<MessageQueue>::namespaced(client.clone(), &ns)
            .get_opt(queue)
            .await?;
        blockers.extend(queue_blocker(queue, found.as_ref()));
    }
    // Without the cache object, assume the default (a password), so that nothing
    // is built on a guess that would later have to change.
    let mut cache_password = true;
    if let Some(cache) = &fs.spec.cache_ref {
        let found = Api::<RedisCache>::namespaced(client.clone(), &ns)
            .get_opt(cache)
            .await?;
        if let Some(rc) = &found {
            cache_password = rc.spec.password;
        }
        blockers.extend(cache_blocker(cache, found.as_ref()));
    }

    // What it owns, desired and current.
    let owned = finservice::desired(&fs, &ctx.settings, cache_password);
    let [blue, green] = owned.deployments;
    let [active_service, preview_service] = owned.services;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let service_account =
        Observed::read(Api::namespaced(client.clone(), &ns), owned.service_account).await?;
    let config_map = Observed::read(Api::namespaced(client.clone(), &ns), owned.config_map).await?;
    let blue = Observed::read(deployments.clone(), blue).await?;
    let green = Observed::read(deployments, green).await?;
    let active_service = Observed::read(svcs.clone(), active_service).await?;
    let preview_service = Observed::read(svcs, preview_service).await?;

    let stale: Vec<String> = [
        service_account.stale().then(|| service_account.describe()),
        config_map.stale().then(|| config_map.describe()),
        blue.stale().then(|| blue.describe()),
        green.stale().then(|| green.describe()),
        active_service.stale().then(|| active_service.describe()),
        preview_service.stale().then(|| preview_service.describe()),
    ]
    .into_iter()
    .flatten()
    .collect();
    // DESIGN section 8: nothing is rolled out while a dependency is missing or not
    // Ready. When the cluster already matches the spec there is nothing to hold.
    let held = !blockers.is_empty() && !stale.is_empty();

    let active_color = finservice::active_color(&fs);
    let active = if held {
        match active_color {
            Color::Blue => blue.current,
            Color::Green => green.current,
        }
    } else {
        service_account.sync().await?;
        config_map.sync().await?;
        let (blue, _) = blue.sync().await?;
        let (green, _) = green.sync().await?;
        active_service.sync().await?;
        preview_service.sync().await?;
        match active_color {
            Color::Blue => blue,
            Color::Green => green,
        }
    };

    let status = finservice::next_status(&fs, &blockers, held, active.as_ref(), &now());
    let previous_phase = fs.status.as_ref().and_then(|s| s.phase);
    let phase = status.phase.unwrap_or(Phase::Pending);
    apply_status(&services, fs.as_ref(), fs.status.as_ref(), &status).await?;

    if !held && !stale.is_empty() {
        let note = format!("applied {}", stale.join(", "));
        ctx.event(fs.as_ref(), EventType::Normal, "Applied", "Apply", note)
            .await;
    }
    if previous_phase != Some(phase) {
        let type_ = if phase == Phase::Degraded {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let note = status
            .conditions
            .iter()
            .find(|c| c.type_ == if held { "DependenciesReady" } else { "Ready" })
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ctx.event(fs.as_ref(), type_, phase.as_str(), "Reconcile", note)
            .await;
    }

    Ok(match phase {
        Phase::Ready => Action::requeue(Duration::from_secs(300)),
        Phase::Waiting => Action::requeue(Duration::from_secs(30)),
        Phase::Degraded => Action::requeue(Duration::from_secs(60)),
        Phase::Progressing | Phase::Pending => Action::requeue(Duration::from_secs(10)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::mock::{Reply, Step, Verifier};
    use crate::finservice::tests::{finservice, settings, with_rollout_status};
    use crate::finservice::{desired, next_status};
    use crate::meta::FIELD_MANAGER;
    use serde_json::{Value, json};

    const NS: &str = "finflow";

    fn path(kind_path: &str, name: &str) -> String {
        format!("{kind_path}/namespaces/{NS}/{name}")
    }

    fn apply_query() -> String {
        format!("?&force=true&fieldManager={FIELD_MANAGER}")
    }

    /// A dependency that exists and reports Ready.
    fn ready(name: &str) -> FinService {
        let mut dep = finservice(name, &[]);
        let blue = with_rollout_status(desired(&dep, &settings(), false).deployments[0].clone(), 2);
        dep.status = Some(next_status(
            &dep,
            &[],
            false,
            Some(&blue),
            &crate::finservice::tests::at(1),
        ));
        dep
    }

    /// The status write of `fs` (answered with `fs` itself); callers add their checks.
    fn status_apply(fs: &FinService) -> Step {
        let name = fs.metadata.name.clone().unwrap_or_default();
        Step::apply(
            format!(
                "{}{}",
                path(
                    "/apis/finflow.dev/v1alpha1",
                    &format!("finservices/{name}/status")
                ),
                apply_query()
            ),
            json!({"apiVersion": "finflow.dev/v1alpha1", "kind": "FinService"}),
        )
        .reply(Reply::Json(serde_json::to_value(fs).unwrap()))
    }

    fn owned_paths(name: &str) -> [String; 6] {
        [
            path("/api/v1", &format!("serviceaccounts/{name}")),
            path("/api/v1", &format!("configmaps/{name}-sidecar")),
            path("/apis/apps/v1", &format!("deployments/{name}-blue")),
            path("/apis/apps/v1", &format!("deployments/{name}-green")),
            path("/api/v1", &format!("services/{name}")),
            path("/api/v1", &format!("services/{name}-preview")),
        ]
    }

    #[tokio::test]
    async fn a_new_finservice_applies_its_six_objects_and_reports_progress() {
        let fs = finservice("wallet", &["auth"]);
        let mut steps = vec![Step::get(
            path("/apis/finflow.dev/v1alpha1", "finservices/auth"),
            Reply::Json(serde_json::to_value(ready("auth")).unwrap()),
        )];
        for p in owned_paths("wallet") {
            steps.push(Step::get(p, Reply::NotFound));
        }
        let owned = desired(&fs, &settings(), false);
        let expected: [Value; 6] = [
            serde_json::to_value(&owned.service_account).unwrap(),
            serde_json::to_value(&owned.config_map).unwrap(),
            serde_json::to_value(&owned.deployments[0]).unwrap(),
            serde_json::to_value(&owned.deployments[1]).unwrap(),
            serde_json::to_value(&owned.services[0]).unwrap(),
            serde_json::to_value(&owned.services[1]).unwrap(),
        ];
        for (p, body) in owned_paths("wallet").into_iter().zip(expected) {
            steps.push(Step::apply(format!("{p}{}", apply_query()), body));
        }
        steps.push(status_apply(&fs).check(|body| {
            assert_eq!(body["status"]["phase"], "Progressing");
            assert_eq!(body["status"]["activeColor"], "blue");
            assert_eq!(body["status"]["observedGeneration"], 1);
            let deps = conditions(body, "DependenciesReady");
            assert_eq!(deps["status"], "True");
        }));
        steps.push(Step::event("Applied"));
        steps.push(Step::event("Progressing"));

        let (ctx, verifier) = Verifier::context(settings());
        let server = verifier.run(steps);
        reconcile(Arc::new(fs), ctx).await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_second_reconcile_with_nothing_changed_writes_nothing() {
        let mut fs = finservice("wallet", &["auth"]);
        let owned = desired(&fs, &settings(), false);
        // What the cluster holds after the first reconcile, with the Deployment
        // controller reporting every replica ready.
        let blue = with_rollout_status(owned.deployments[0].clone(), 2);
        fs.status = Some(next_status(
            &fs,
            &[],
            false,
            Some(&blue),
            &crate::finservice::tests::at(50),
        ));
        let current: [Value; 6] = [
            serde_json::to_value(&owned.service_account).unwrap(),
            serde_json::to_value(&owned.config_map).unwrap(),
            serde_json::to_value(&blue).unwrap(),
            serde_json::to_value(with_rollout_status(owned.deployments[1].clone(), 0)).unwrap(),
            serde_json::to_value(&owned.services[0]).unwrap(),
            serde_json::to_value(&owned.services[1]).unwrap(),
        ];
        let mut steps = vec![Step::get(
            path("/apis/finflow.dev/v1alpha1", "finservices/auth"),
            Reply::Json(serde_json::to_value(ready("auth")).unwrap()),
        )];
        for (p, body) in owned_paths("wallet").into_iter().zip(current) {
            steps.push(Step::get(p, Reply::Json(server_side(body))));
        }

        let (ctx, verifier) = Verifier::context(settings());
        let server = verifier.run(steps);
        let action = reconcile(Arc::new(fs), ctx).await.unwrap();
        server.await.unwrap();
        assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    }

    #[tokio::test]
    async fn a_missing_dependency_holds_the_rollout_and_says_why() {
        let fs = finservice("wallet", &["auth"]);
        let mut steps = vec![Step::get(
            path("/apis/finflow.dev/v1alpha1", "finservices/auth"),
            Reply::NotFound,
        )];
        for p in owned_paths("wallet") {
            steps.push(Step::get(p, Reply::NotFound));
        }
        steps.push(status_apply(&fs).check(|body| {
            assert_eq!(body["status"]["phase"], "Waiting");
            let deps = conditions(body, "DependenciesReady");
            assert_eq!(deps["status"], "False");
            assert_eq!(deps["reason"], "DependencyMissing");
            assert_eq!(deps["message"], "FinService auth does not exist");
            assert_eq!(conditions(body, "Progressing")["status"], "False");
            assert!(body["status"].get("history").is_none());
        }));
        steps.push(Step::event("Waiting"));
        // No Deployment, Service, ConfigMap or ServiceAccount is written: the verifier
        // fails on any request beyond these steps.

        let (ctx, verifier) = Verifier::context(settings());
        let server = verifier.run(steps);
        let action = reconcile(Arc::new(fs), ctx).await.unwrap();
        server.await.unwrap();
        assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    }

    #[tokio::test]
    async fn a_dependency_that_is_not_ready_also_holds_the_rollout() {
        let fs = finservice("wallet", &["auth"]);
        let mut steps = vec![Step::get(
            path("/apis/finflow.dev/v1alpha1", "finservices/auth"),
            Reply::Json(serde_json::to_value(finservice("auth", &[])).unwrap()),
        )];
        for p in owned_paths("wallet") {
            steps.push(Step::get(p, Reply::NotFound));
        }
        steps.push(status_apply(&fs).check(|body| {
            assert_eq!(body["status"]["phase"], "Waiting");
            assert_eq!(
                conditions(body, "DependenciesReady")["reason"],
                "DependencyNotReady"
            );
        }));
        steps.push(Step::event("Waiting"));

        let (ctx, verifier) = Verifier::context(settings());
        let server = verifier.run(steps);
        reconcile(Arc::new(fs), ctx).await.unwrap();
        server.await.unwrap();
    }

    /// An object as the API server returns it: with server-set metadata and defaults.
    fn server_side(mut body: Value) -> Value {
        body["metadata"]["resourceVersion"] = json!("7");
        body["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        body["metadata"]["managedFields"] =
            json!([{"manager": FIELD_MANAGER, "operation": "Apply"}]);
        if body["kind"] == "Service" {
            body["spec"]["clusterIP"] = json!("10.0.0.7");
            body["spec"]["type"] = json!("ClusterIP");
            body["spec"]["sessionAffinity"] = json!("None");
        }
        if body["kind"] == "Deployment" {
            body["spec"]["template"]["spec"]["dnsPolicy"] = json!("ClusterFirst");
            body["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        }
        body
    }

    fn conditions<'a>(body: &'a Value, type_: &str) -> &'a Value {
        body["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap()
    }
}
