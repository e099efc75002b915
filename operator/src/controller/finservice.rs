//! The FinService reconciler: the rollout engine's edge.
//!
//! One reconcile reads the FinServices of the namespace (the dependency graph and, from
//! their status, how each stands), what the FinService depends on, the objects it owns
//! and its pods; probes `/health` where the engine needs it; asks [`rollout::plan`] for
//! the next step; moves the rollout state in the status by that step
//! ([`finservice::advance`]); applies the objects that state implies; labels pods with
//! their role; writes the status; records the step as an Event; and removes a request
//! annotation it has handled. When any of it fails, the status and an Event say so
//! ([`super::report_failure`]) before the retry.

use std::collections::{BTreeMap, BTreeSet};
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
    clear_request, label_pod_roles, pods_of, pods_of_version, probe_health, probe_pod_health,
    probe_preview_health, record, scrape,
};
use super::{
    Context, Result, Target, apply_status, measured, namespace, owned_objects, report_failure,
    scoped_api,
};
use crate::analysis;
use crate::crd::{AnalysisStage, Color, FinService, MessageQueue, Phase, RedisCache};
use crate::finservice::{
    self, Blocker, COLOR_LABEL, Fresh, cache_blocker, queue_blocker, service_blocker,
};
use crate::graph::DependencyGraph;
use crate::meta::INSTANCE_LABEL;
use crate::rollout::{self, Step};

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

/// Container restarts of the pods of `color`.
fn restarts(pods: &[Pod], color: Color) -> i32 {
    pods.iter()
        .filter(|p| p.labels().get(COLOR_LABEL).map(String::as_str) == Some(color.as_str()))
        .flat_map(|p| {
            p.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum()
}

/// Whether `deployment` runs `version` with every one of `replicas` available.
fn runs(deployment: Option<&Deployment>, version: &str, replicas: i32) -> bool {
    deployment.is_some_and(|d| {
        let r = finservice::rollout(d, replicas);
        r.state == finservice::RolloutState::Complete
            && r.version.as_deref() == Some(version)
            && d.spec.as_ref().and_then(|s| s.replicas) == Some(replicas)
    })
}

async fn reconcile_inner(fs: Arc<FinService>, ctx: Arc<Context>) -> Result<Action> {
    let ns = namespace(fs.as_ref())?;
    let name = fs.name_any();
    let client = ctx.client.clone();
    let now = ctx.now();
    let now_s = finservice::seconds(&now);
    let state = fs.status.clone().unwrap_or_default();

    // The graph and what it depends on.
    let services: Api<FinService> = Api::namespaced(client.clone(), &ns);
    // The others as listed; this one as handed to the reconcile.
    let others: Vec<FinService> = services
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|f| f.name_any() != name)
        .collect();
    let all: Vec<&FinService> = others.iter().chain([fs.as_ref()]).collect();
    let by_name: BTreeMap<String, &FinService> = all.iter().map(|f| (f.name_any(), *f)).collect();
    let mut blockers: Vec<Blocker> = Vec::new();
    // The DependenciesReady condition names each dependency that is not Ready; holding
    // back a new version is the engine's decision.
    let mut not_ready: Vec<Blocker> = Vec::new();
    for dep in &fs.spec.depends_on {
        match by_name.get(dep) {
            None => blockers.extend(service_blocker(dep, None)),
            Some(found) => not_ready.extend(service_blocker(dep, Some(found))),
        }
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
    let names: BTreeSet<String> = by_name.keys().cloned().collect();
    let graph = DependencyGraph::new(all.iter().map(|f| {
        let deps: Vec<String> = f
            .spec
            .depends_on
            .iter()
            .filter(|d| names.contains(*d))
            .cloned()
            .collect();
        (f.name_any(), deps)
    }));
    let graph = match graph {
        Ok(graph) => Some(graph),
        Err(e) => {
            blockers.push(Blocker {
                kind: "FinService",
                name: name.clone(),
                not_ready: Some(e.to_string()),
            });
            None
        }
    };

    // What it owns and runs.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let blue_now = deployments
        .get_opt(&finservice::deployment_name(&name, Color::Blue))
        .await?;
    let green_now = deployments
        .get_opt(&finservice::deployment_name(&name, Color::Green))
        .await?;
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pods = pods_of(&pods_api, &name).await?;
    let color = state.active_color.unwrap_or(Color::Blue);
    let (active_now, idle_now) = match color {
        Color::Blue => (blue_now.as_ref(), green_now.as_ref()),
        Color::Green => (green_now.as_ref(), blue_now.as_ref()),
    };
    let replicas = fs.spec.replicas;
    let active_ready = state
        .active_version
        .as_deref()
        .is_some_and(|v| runs(active_now, v, replicas));
    let preview_available = state
        .preview_version
        .as_deref()
        .is_some_and(|v| runs(idle_now, v, replicas));
    // Schemas the releases report in their `/health`: the preview's with its gate
    // probe; the live version's, until known, from one of its pods (below).
    let mut schemas: BTreeMap<String, rollout::Schema> = BTreeMap::new();
    let preview_probe = if preview_available {
        Some(probe_preview_health(&client, &fs).await)
    } else {
        None
    };
    if let (Some(schema), Some(version)) = (
        preview_probe.as_ref().and_then(|p| p.schema.clone()),
        state.preview_version.as_ref(),
    ) {
        schemas.insert(version.clone(), schema);
    }
    let preview_healthy = preview_probe.map(|p| p.healthy);
    // The traffic analysis: of the preview once it is available, of the live version in
    // its window (below).
    let thresholds = finservice::analysis_thresholds(&fs);
    // Both may be judged in one reconcile (a new spec version previews while the last
    // one is still observed): each verdict decides its own stage.
    let mut preview_judged: Option<(String, AnalysisStage, analysis::Judgement)> = None;
    let mut window_judged: Option<(String, AnalysisStage, analysis::Judgement)> = None;
    if let (Some(t), true, Some(version)) = (
        &thresholds,
        preview_available,
        state.preview_version.as_deref(),
    ) {
        let sample = scrape(
            &client,
            &ns,
            &pods_of_version(&pods, color.other(), version),
        )
        .await;
        preview_judged = Some((
            version.to_owned(),
            AnalysisStage::Preview,
            analysis::judge(&sample, t),
        ));
    }
    // The window is watched once this operator recorded the promotion's baseline.
    let window = if state.observation.is_some() && finservice::observed(&fs, None).observing(now_s)
    {
        let baseline = state
            .observation
            .as_ref()
            .map_or(0, |o| o.restarts_at_promotion);
        let healthy = probe_health(&client, &ns, &name, &fs.spec.rollout.health_path)
            .await
            .healthy;
        let mut analysis_failed = false;
        if let (Some(t), Some(version)) = (&thresholds, state.active_version.as_deref()) {
            let sample = scrape(&client, &ns, &pods_of_version(&pods, color, version)).await;
            let judgement = analysis::judge(&sample, t);
            analysis_failed = judgement.verdict == analysis::Verdict::Failed;
            window_judged = Some((version.to_owned(), AnalysisStage::Observation, judgement));
        }
        Some(rollout::Window {
            restarts: (restarts(&pods, color) - baseline).max(0),
            unready: !active_ready,
            health_failed: !healthy,
            analysis_failed,
        })
    } else {
        None
    };
    // The live version's, until known (a first version, or one that went live before
    // this operator read schemas): from one of its own pods.
    if let (true, Some(version)) = (active_ready, state.active_version.as_ref())
        && !state.schemas.iter().any(|r| &r.release == version)
        && !schemas.contains_key(version)
        && let Some(pod) = pods_of_version(&pods, color, version).first()
        && let Some(schema) = probe_pod_health(&client, &ns, pod, &fs.spec.rollout.health_path)
            .await
            .schema
    {
        schemas.insert(version.clone(), schema);
    }
    let fresh = Fresh {
        active_ready,
        preview_available,
        preview_healthy,
        preview_analysis: preview_judged
            .as_ref()
            .map_or(analysis::Verdict::Unavailable, |(_, _, j)| j.verdict),
        previous_up: state.previous_retained
            && state
                .previous_version
                .as_deref()
                .is_some_and(|v| runs(idle_now, v, replicas)),
        window,
        schemas,
    };

    // The decision.
    let mut world: BTreeMap<String, rollout::Observed> = others
        .iter()
        .map(|f| (f.name_any(), finservice::observed(f, None)))
        .collect();
    let me = finservice::observed(&fs, Some(&fresh));
    let own_trigger = me.rollback_trigger(now_s);
    world.insert(name.clone(), me);
    let decision = match (&graph, blockers.is_empty()) {
        (Some(graph), true) => rollout::plan(graph, &world, now_s).remove(&name),
        _ => None,
    };
    let step = decision.as_ref().map(|d| d.step);
    let mut next = finservice::advance(
        &fs,
        step.unwrap_or(Step::Steady),
        &now,
        restarts(&pods, color.other()),
        window,
    );
    finservice::record_schemas(
        &mut next,
        &fs.spec.version,
        &fresh.schemas,
        decision.as_ref().is_some_and(rollout::Decision::forced),
    );
    // The status shows one: a failed window's (it rolls back what is live), else the
    // preview's, else the window's.
    let failed = |j: &&(String, AnalysisStage, analysis::Judgement)| {
        j.2.verdict == analysis::Verdict::Failed
    };
    let shown = window_judged
        .as_ref()
        .filter(failed)
        .or(preview_judged.as_ref())
        .or(window_judged.as_ref());
    if let Some((version, stage, judgement)) = shown {
        next.analysis = Some(finservice::analysis_status(
            state.analysis.as_ref(),
            version,
            *stage,
            judgement,
            &now,
        ));
    }
    next.rollback =
        finservice::rollback_after(own_trigger, step, &fs.spec.version, next.rollback.take());

    // What it should own in that state.
    let mut planned = fs.as_ref().clone();
    planned.status = Some(next.clone());
    // The issuer's epoch as of this reconcile, with this service's own step applied.
    let epoch = finservice::issuer_epoch(others.iter().chain([&planned]));
    let owned =
        finservice::desired_with_epoch(&planned, &ctx.settings, cache_password, epoch.as_deref());
    let [blue, green] = owned.deployments;
    let [active_service, preview_service] = owned.services;
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let service_account =
        Target::read(Api::namespaced(client.clone(), &ns), owned.service_account).await?;
    let config_map = Target::read(Api::namespaced(client.clone(), &ns), owned.config_map).await?;
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
    // Nothing is created while what it depends on is missing, nor before its first
    // version may go out; once the cluster matches the spec there is nothing to hold.
    let first_wait = step == Some(Step::WaitForDependencies) && next.active_version.is_none();
    let held = (!blockers.is_empty() || first_wait) && !stale.is_empty();

    let active_color = next.active_color.unwrap_or(Color::Blue);
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
        if next.active_version.is_some() {
            label_pod_roles(&pods_api, &pods, active_color).await?;
        }
        match active_color {
            Color::Blue => blue,
            Color::Green => green,
        }
    };

    let mut blockers_shown = blockers.clone();
    blockers_shown.extend(not_ready);
    let status = finservice::status_after(
        &fs,
        finservice::Reconciled {
            state: next,
            blockers: &blockers_shown,
            held,
            decision: decision.as_ref(),
            active: active.as_ref(),
        },
        &now,
    );
    let previous_phase = state.phase;
    let phase = status.phase.unwrap_or(Phase::Pending);
    apply_status(&services, fs.as_ref(), fs.status.as_ref(), &status).await?;

    if let Some((warning, reason, note)) = status
        .analysis
        .as_ref()
        .and_then(|next| finservice::analysis_event(state.analysis.as_ref(), next))
    {
        let kind = if warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        ctx.event(fs.as_ref(), kind, reason, "Analyze", note).await;
    }
    if let Some(d) = &decision {
        record(&ctx, &fs, d, state.step.as_deref()).await;
        if let Some(request) = rollout::request_from_annotations(fs.annotations())
            && request.handled_after(d.step)
        {
            clear_request(&services, &fs).await?;
        }
    }
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
        let shown = finservice::phase_condition(phase);
        let note = status
            .conditions
            .iter()
            .find(|c| c.type_ == shown)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ctx.event(fs.as_ref(), type_, phase.as_str(), "Reconcile", note)
            .await;
    }

    Ok(Action::requeue(finservice::requeue_after(
        phase,
        step,
        status.previous_retained,
    )))
}
