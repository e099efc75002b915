//! The FinService reconciler: the rollout engine's edge.
//!
//! One reconcile reads the FinServices of the namespace, the queue and cache the spec
//! names, the two Deployments and the pods; probes what the core's
//! [`reconcile::Standing`] names (the preview's and the live version's `/health`, their
//! sidecars' traffic, the live version's schema); asks [`reconcile::plan`] for the next
//! rollout state, the engine's decision and the objects to own; applies those objects
//! unless the plan holds them; labels pods with their role; writes the status; and
//! records the step and [`reconcile::Notes`] as Events, removing a request annotation
//! it has handled. When any of it fails, the status and an Event say so
//! ([`super::report_failure`]) before the retry.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};

use super::rollout::{
    clear_request, label_pod_roles, pods_of, probe_health, probe_pod_health, probe_preview_health,
    record, scrape,
};
use super::{
    Context, Result, Target, apply_status, measured, namespace, owned_objects, report_failure,
    scoped_api,
};
use crate::crd::{Color, FinService, MessageQueue, Phase, RedisCache};
use crate::finservice;
use crate::meta::INSTANCE_LABEL;
use crate::reconcile::{self, Note, Notes, Probed, Read, Standing};
use crate::rollout;

/// The FinService controller: its own objects, what it owns, their pods (a new pod
/// learns its role at once), and the queues and caches others depend on. Any FinService
/// change wakes every FinService of its namespace: rollout decisions read the whole
/// graph (a cascade reaches transitive dependents, a promotion of the issuer concerns
/// every sidecar).
pub fn controller(client: Client, namespace: Option<&str>) -> Controller<FinService> {
    let services: Api<FinService> = scoped_api(client.clone(), namespace);
    let controller = Controller::new(services.clone(), watcher::Config::default());
    let store = controller.store();
    let by_service = store.clone();
    let by_queue = store.clone();
    let by_cache = store.clone();
    let by_pod = store;
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
            scoped_api::<Pod>(client.clone(), namespace),
            owned_objects(),
            move |pod: Pod| {
                let instance = pod.labels().get(INSTANCE_LABEL).cloned();
                dependents(&by_pod, &pod.namespace().unwrap_or_default(), |fs| {
                    instance.as_deref() == Some(fs.name_any().as_str())
                })
            },
        )
        .watches(
            services,
            watcher::Config::default(),
            move |changed: FinService| {
                let name = changed.name_any();
                dependents(
                    &by_service,
                    &changed.namespace().unwrap_or_default(),
                    |fs| fs.name_any() != name,
                )
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
    measured::<FinService, _>(async {
        let result = reconcile_inner(fs.clone(), ctx.clone()).await;
        if let Err(error) = &result {
            report_failure(&ctx, fs.as_ref(), fs.status.as_ref(), error, |f, now| {
                finservice::status_after_failure(&fs, f, now)
            })
            .await;
        }
        result
    })
    .await
}

async fn reconcile_inner(fs: Arc<FinService>, ctx: Arc<Context>) -> Result<Action> {
    let ns = namespace(fs.as_ref())?;
    let name = fs.name_any();
    let client = ctx.client.clone();
    let now = ctx.now();
    let state = fs.status.clone().unwrap_or_default();

    // What it depends on, owns and runs.
    let services: Api<FinService> = Api::namespaced(client.clone(), &ns);
    // The others as listed; this one as handed to the reconcile.
    let others: Vec<FinService> = services
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|f| f.name_any() != name)
        .collect();
    let queue = match &fs.spec.queue_ref {
        Some(queue) => {
            Api::<MessageQueue>::namespaced(client.clone(), &ns)
                .get_opt(queue)
                .await?
        }
        None => None,
    };
    let cache = match &fs.spec.cache_ref {
        Some(cache) => {
            Api::<RedisCache>::namespaced(client.clone(), &ns)
                .get_opt(cache)
                .await?
        }
        None => None,
    };
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let blue_now = deployments
        .get_opt(&finservice::deployment_name(&name, Color::Blue))
        .await?;
    let green_now = deployments
        .get_opt(&finservice::deployment_name(&name, Color::Green))
        .await?;
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pods = pods_of(&pods_api, &name).await?;
    let read = Read {
        fs: fs.as_ref(),
        others: &others,
        queue: queue.as_ref(),
        cache: cache.as_ref(),
        blue: blue_now.as_ref(),
        green: green_now.as_ref(),
        pods: &pods,
        now: &now,
    };
    let standing = Standing::of(&read);

    // What it names to probe.
    let mut probed = Probed::default();
    let color = standing.color;
    if let Some(version) = standing.preview(&read) {
        let probe = probe_preview_health(&client, &fs).await;
        probed.preview_healthy = Some(probe.healthy);
        if let Some(schema) = probe.schema {
            probed.schemas.insert(version.to_owned(), schema);
        }
        if standing.thresholds.is_some() {
            let pods = Standing::pods_of(&read, color.other(), version);
            probed.preview_sample = Some(scrape(&client, &ns, &pods).await);
        }
    }
    if standing.observing {
        let probe = probe_health(&client, &ns, &name, &fs.spec.rollout.health_path).await;
        probed.window_healthy = Some(probe.healthy);
        if let (Some(_), Some(version)) = (&standing.thresholds, state.active_version.as_deref()) {
            let pods = Standing::pods_of(&read, color, version);
            probed.window_sample = Some(scrape(&client, &ns, &pods).await);
        }
    }
    if let Some((version, pod)) = standing.live_schema_pod(&read, &probed.schemas)
        && let Some(schema) = probe_pod_health(&client, &ns, pod, &fs.spec.rollout.health_path)
            .await
            .schema
    {
        probed.schemas.insert(version.to_owned(), schema);
    }

    // The decision, and what it should own in the state that follows.
    let plan = reconcile::plan(&read, &standing, probed, &ctx.settings);
    let step = plan.step();
    let [blue, green] = plan.owned.deployments.clone();
    let [active_service, preview_service] = plan.owned.services.clone();
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let service_account = Target::read(
        Api::namespaced(client.clone(), &ns),
        plan.owned.service_account.clone(),
    )
    .await?;
    let config_map = Target::read(
        Api::namespaced(client.clone(), &ns),
        plan.owned.config_map.clone(),
    )
    .await?;
    let blue = Target {
        current: blue_now,
        ..Target::new(deployments.clone(), blue)
    };
    let green = Target {
        current: green_now,
        ..Target::new(deployments, green)
    };
    let active_service = Target::read(svcs.clone(), active_service).await?;
    let preview_service = Target::read(svcs, preview_service).await?;
    // Nothing is written while any of them is someone else's.
    [
        service_account.ours(),
        config_map.ours(),
        blue.ours(),
        green.ours(),
        active_service.ours(),
        preview_service.ours(),
    ]
    .into_iter()
    .collect::<Result<()>>()?;
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
    let held = plan.held(!stale.is_empty());

    let active_color = plan.next.active_color.unwrap_or(Color::Blue);
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
        if plan.next.active_version.is_some() {
            label_pod_roles(&pods_api, &pods, active_color).await?;
        }
        match active_color {
            Color::Blue => blue,
            Color::Green => green,
        }
    };

    let status = finservice::status_after(
        &fs,
        finservice::Reconciled {
            state: plan.next.clone(),
            blockers: &plan.blockers_shown,
            held,
            decision: plan.decision.as_ref(),
            active: active.as_ref(),
        },
        &now,
    );
    apply_status(&services, fs.as_ref(), fs.status.as_ref(), &status).await?;

    let notes = Notes::after(&state, &status, held, &stale);
    if let Some(note) = notes.analysis {
        note_event(&ctx, &fs, note).await;
    }
    if let Some(d) = &plan.decision {
        record(&ctx, &fs, d, state.step.as_deref()).await;
        if let Some(request) = rollout::request_from_annotations(fs.annotations())
            && request.handled_after(d.step)
        {
            clear_request(&services, &fs).await?;
        }
    }
    for note in [notes.applied, notes.phase].into_iter().flatten() {
        note_event(&ctx, &fs, note).await;
    }

    Ok(Action::requeue(finservice::requeue_after(
        status.phase.unwrap_or(Phase::Pending),
        step,
        status.previous_retained,
    )))
}

async fn note_event(ctx: &Context, fs: &FinService, note: Note) {
    let kind = if note.warning {
        EventType::Warning
    } else {
        EventType::Normal
    };
    ctx.event(fs, kind, note.reason.as_str(), note.action, note.note)
        .await;
}
