//! One reconcile of a FinService as values, so that its decisions are tested without
//! IO. The runtime (`controller::finservice`) does the IO between them:
//!
//! 1. it reads the namespace's FinServices, the queue and cache named in the spec, the
//!    two Deployments and the pods ([`Read`]); [`Standing::of`] says what blocks the
//!    service, which releases run, and what to probe;
//! 2. it probes what [`Standing`] names ([`Standing::preview`], [`Standing::observing`],
//!    [`Standing::live_schema_pod`]) and hands the findings over as [`Probed`];
//! 3. [`plan`] answers the next rollout state, the engine's decision and the objects to
//!    own ([`Plan`]); [`Plan::held`] says whether to apply them;
//! 4. after it has applied them and written the status, it records [`Notes::after`].

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::analysis::{self, Judgement, Sample, Verdict};
use crate::conditions::Reason;
use crate::crd::RedisCache;
use crate::crd::{AnalysisStage, Color, FinService, FinServiceStatus, MessageQueue, Phase};
use crate::finservice::{
    self, Blocker, COLOR_LABEL, Fresh, Owned, Settings, VERSION_LABEL, cache_blocker,
    queue_blocker, service_blocker,
};
use crate::graph::DependencyGraph;
use crate::rollout::{self, Decision, Step};

/// What the runtime read for one reconcile.
#[derive(Debug, Clone, Copy)]
pub struct Read<'a> {
    /// The FinService being reconciled, as handed to the reconcile.
    pub fs: &'a FinService,
    /// The namespace's other FinServices.
    pub others: &'a [FinService],
    /// The MessageQueue `spec.queueRef` names, when it exists.
    pub queue: Option<&'a MessageQueue>,
    /// The RedisCache `spec.cacheRef` names, when it exists.
    pub cache: Option<&'a RedisCache>,
    /// The blue Deployment, when it exists.
    pub blue: Option<&'a Deployment>,
    /// The green Deployment, when it exists.
    pub green: Option<&'a Deployment>,
    /// The service's pods.
    pub pods: &'a [Pod],
    pub now: &'a Time,
}

/// How the service stands before any probe: what blocks it, which releases run, and
/// what is to be probed.
#[derive(Debug, Clone)]
pub struct Standing {
    /// What keeps its objects from being created: a missing dependency, queue or cache,
    /// a dependency cycle.
    pub blockers: Vec<Blocker>,
    /// Dependencies that exist but are not Ready: shown in `DependenciesReady`; holding
    /// back a new version is the engine's decision.
    pub not_ready: Vec<Blocker>,
    /// Whether the cache asks for a password. Without the cache object, the default (a
    /// password), so that nothing is built on a guess that would later have to change.
    pub cache_password: bool,
    /// The namespace's dependency graph without what a cycle holds
    /// ([`DependencyGraph::sound_part`]); `None` when this service is held (a blocker
    /// says so).
    pub graph: Option<DependencyGraph>,
    /// The color serving `<name>`.
    pub color: Color,
    /// The active color runs the live version with every replica available.
    pub active_ready: bool,
    /// The idle color runs the preview with every replica available.
    pub preview_available: bool,
    /// The idle color runs the retained previous version with every replica available.
    pub previous_up: bool,
    /// The live version is in its observation window, whose baseline this operator
    /// recorded: probe `<name>`'s `/health` and judge the live version's pods.
    pub observing: bool,
    /// The traffic analysis' thresholds, when the spec asks for an analysis.
    pub thresholds: Option<analysis::Thresholds>,
}

impl Standing {
    pub fn of(read: &Read<'_>) -> Self {
        let fs = read.fs;
        let name = fs.name_any();
        let state = fs.status.clone().unwrap_or_default();
        let all: Vec<&FinService> = read.others.iter().chain([fs]).collect();
        let by_name: BTreeMap<String, &FinService> =
            all.iter().map(|f| (f.name_any(), *f)).collect();
        let mut blockers = Vec::new();
        let mut not_ready = Vec::new();
        for dep in &fs.spec.depends_on {
            match by_name.get(dep) {
                None => blockers.extend(service_blocker(dep, None)),
                Some(found) => not_ready.extend(service_blocker(dep, Some(found))),
            }
        }
        if let Some(queue) = &fs.spec.queue_ref {
            blockers.extend(queue_blocker(queue, read.queue));
        }
        let mut cache_password = true;
        if let Some(cache) = &fs.spec.cache_ref {
            if let Some(rc) = read.cache {
                cache_password = rc.spec.password;
            }
            blockers.extend(cache_blocker(cache, read.cache));
        }
        let names: BTreeSet<&String> = by_name.keys().collect();
        let services: Vec<(String, Vec<String>)> = all
            .iter()
            .map(|f| {
                let deps: Vec<String> = f
                    .spec
                    .depends_on
                    .iter()
                    .filter(|d| names.contains(d))
                    .cloned()
                    .collect();
                (f.name_any(), deps)
            })
            .collect();
        // A cycle elsewhere in the namespace holds only the services in it or downstream.
        let (graph, left_out) = DependencyGraph::sound_part(&services);
        let graph = match left_out.get(&name) {
            None => Some(graph),
            Some(e) => {
                blockers.push(Blocker {
                    kind: "FinService",
                    name,
                    not_ready: Some(e.to_string()),
                });
                None
            }
        };
        let color = state.active_color.unwrap_or(Color::Blue);
        let (active_now, idle_now) = match color {
            Color::Blue => (read.blue, read.green),
            Color::Green => (read.green, read.blue),
        };
        let replicas = fs.spec.replicas;
        let runs_in = |deployment, version: Option<&str>| {
            version.is_some_and(|v| runs(deployment, v, replicas))
        };
        Self {
            blockers,
            not_ready,
            cache_password,
            graph,
            color,
            active_ready: runs_in(active_now, state.active_version.as_deref()),
            preview_available: runs_in(idle_now, state.preview_version.as_deref()),
            previous_up: state.previous_retained
                && runs_in(idle_now, state.previous_version.as_deref()),
            observing: state.observation.is_some()
                && finservice::observed(fs, None).observing(finservice::seconds(read.now)),
            thresholds: finservice::analysis_thresholds(fs),
        }
    }

    /// The preview to probe through `<name>-preview` and, with thresholds, to judge by
    /// its pods' traffic: its version, once it runs with every replica available.
    pub fn preview<'a>(&self, read: &Read<'a>) -> Option<&'a str> {
        let version = read.fs.status.as_ref()?.preview_version.as_deref()?;
        self.preview_available.then_some(version)
    }

    /// The pods whose traffic an analysis of `version` in `color` reads.
    pub fn pods_of<'a>(read: &Read<'a>, color: Color, version: &str) -> Vec<&'a Pod> {
        pods_of_version(read.pods, color, version)
    }

    /// The live version's pod to ask for its schema while neither the status nor this
    /// reconcile's probes (`known`) know it: a first version, or one that went live
    /// before this operator read schemas.
    pub fn live_schema_pod<'a>(
        &self,
        read: &Read<'a>,
        known: &BTreeMap<String, rollout::Schema>,
    ) -> Option<(&'a str, &'a Pod)> {
        let status = read.fs.status.as_ref()?;
        let version = status.active_version.as_deref()?;
        let unknown =
            !status.schemas.iter().any(|r| r.release == version) && !known.contains_key(version);
        let pod = pods_of_version(read.pods, self.color, version)
            .into_iter()
            .next()?;
        (self.active_ready && unknown).then_some((version, pod))
    }
}

/// What the probes [`Standing`] named found.
#[derive(Debug, Clone, Default)]
pub struct Probed {
    /// The preview's `/health` through `<name>-preview`: whether it is healthy.
    pub preview_healthy: Option<bool>,
    /// What the preview's sidecars counted, when it was judged.
    pub preview_sample: Option<Sample>,
    /// `<name>`'s `/health` in the observation window.
    pub window_healthy: Option<bool>,
    /// What the live version's sidecars counted in the window, when it was judged.
    pub window_sample: Option<Sample>,
    /// Schemas the releases reported in this reconcile's probes, by release.
    pub schemas: BTreeMap<String, rollout::Schema>,
}

/// The plan of one reconcile: the state to move to and the objects to own in it.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The rollout state after the engine's step, with the analysis shown and the
    /// rollback record.
    pub next: FinServiceStatus,
    /// The engine's decision; `None` while something blocks the service.
    pub decision: Option<Decision>,
    /// The objects it should own in `next`.
    pub owned: Owned,
    /// Missing dependencies, queue or cache, then dependencies not Ready: what the
    /// `DependenciesReady` condition names.
    pub blockers_shown: Vec<Blocker>,
    blocked: bool,
    first_wait: bool,
}

impl Plan {
    /// The engine's step, if it decided one.
    pub fn step(&self) -> Option<Step> {
        self.decision.as_ref().map(|d| d.step)
    }

    /// Whether to leave the cluster as it is although `stale` objects differ from the
    /// plan: nothing is created while what it depends on is missing, nor before its
    /// first version may go out; once the cluster matches there is nothing to hold.
    pub fn held(&self, stale: bool) -> bool {
        (self.blocked || self.first_wait) && stale
    }
}

/// The plan that follows from what was read, how it stands and what the probes found.
pub fn plan(read: &Read<'_>, standing: &Standing, probed: Probed, settings: &Settings) -> Plan {
    let fs = read.fs;
    let name = fs.name_any();
    let now_s = finservice::seconds(read.now);
    let state = fs.status.clone().unwrap_or_default();
    let color = standing.color;
    let judge = |sample: &Option<Sample>| {
        standing
            .thresholds
            .as_ref()
            .zip(sample.as_ref())
            .map(|(t, s)| analysis::judge(s, t))
    };
    // Both may be judged in one reconcile (a new spec version previews while the last
    // one is still observed): each verdict decides its own stage.
    let preview_judged: Option<(&str, AnalysisStage, Judgement)> = standing
        .preview(read)
        .zip(judge(&probed.preview_sample))
        .map(|(v, j)| (v, AnalysisStage::Preview, j));
    let window_judged: Option<(&str, AnalysisStage, Judgement)> = state
        .active_version
        .as_deref()
        .filter(|_| standing.observing)
        .zip(judge(&probed.window_sample))
        .map(|(v, j)| (v, AnalysisStage::Observation, j));
    let window = standing.observing.then(|| {
        let baseline = state
            .observation
            .as_ref()
            .map_or(0, |o| o.restarts_at_promotion);
        rollout::Window {
            restarts: (restarts(read.pods, color) - baseline).max(0),
            unready: !standing.active_ready,
            health_failed: probed.window_healthy != Some(true),
            analysis_failed: window_judged
                .as_ref()
                .is_some_and(|(_, _, j)| j.verdict == Verdict::Failed),
        }
    });
    let fresh = Fresh {
        active_ready: standing.active_ready,
        preview_available: standing.preview_available,
        preview_healthy: probed.preview_healthy,
        preview_analysis: preview_judged
            .as_ref()
            .map_or(Verdict::Unavailable, |(_, _, j)| j.verdict),
        previous_up: standing.previous_up,
        window,
        schemas: probed.schemas,
    };

    let mut world: BTreeMap<String, rollout::Observed> = read
        .others
        .iter()
        .map(|f| (f.name_any(), finservice::observed(f, None)))
        .collect();
    let me = finservice::observed(fs, Some(&fresh));
    let own_trigger = me.rollback_trigger(now_s);
    world.insert(name.clone(), me);
    let decision = match (&standing.graph, standing.blockers.is_empty()) {
        (Some(graph), true) => rollout::plan(graph, &world, now_s).remove(&name),
        _ => None,
    };
    let step = decision.as_ref().map(|d| d.step);
    let mut next = finservice::advance(
        fs,
        step.unwrap_or(Step::Steady),
        read.now,
        restarts(read.pods, color.other()),
        window,
    );
    finservice::record_schemas(
        &mut next,
        &fs.spec.version,
        &fresh.schemas,
        decision.as_ref().is_some_and(Decision::forced),
    );
    // The status shows one analysis: a failed window's (it rolls back what is live),
    // else the preview's, else the window's.
    let failed = |j: &&(&str, AnalysisStage, Judgement)| j.2.verdict == Verdict::Failed;
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
            read.now,
        ));
    }
    next.rollback =
        finservice::rollback_after(own_trigger, step, &fs.spec.version, next.rollback.take());

    let mut planned = fs.clone();
    planned.status = Some(next.clone());
    // The issuer's epoch as of this reconcile, with this service's own step applied.
    let epoch = finservice::issuer_epoch(read.others.iter().chain([&planned]));
    let owned = finservice::desired_with_epoch(
        &planned,
        settings,
        standing.cache_password,
        epoch.as_deref(),
    );
    let first_wait = step == Some(Step::WaitForDependencies) && next.active_version.is_none();
    let mut blockers_shown = standing.blockers.clone();
    blockers_shown.extend(standing.not_ready.iter().cloned());
    Plan {
        next,
        decision,
        owned,
        blockers_shown,
        blocked: !standing.blockers.is_empty(),
        first_wait,
    }
}

impl Reason {
    /// The reconcile applied objects that differed from the plan.
    pub const APPLIED: Self = Self("Applied");

    /// The Event of a new phase is named after the phase.
    fn of_phase(phase: Phase) -> Self {
        Self(phase.as_str())
    }
}

/// An Event to record on the FinService.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: Reason,
    pub action: &'static str,
    pub note: String,
}

/// The Events a reconcile records besides the engine's step, in this order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Notes {
    /// A new analysis record: another version, stage or verdict than before.
    pub analysis: Option<Note>,
    /// Objects it applied.
    pub applied: Option<Note>,
    /// A new phase, with the message of the condition that shows it.
    pub phase: Option<Note>,
}

impl Notes {
    /// The Events of a reconcile that moved the status from `before` to `after`, and
    /// applied `stale` objects unless `held`.
    pub fn after(
        before: &FinServiceStatus,
        after: &FinServiceStatus,
        held: bool,
        stale: &[String],
    ) -> Self {
        let analysis = after
            .analysis
            .as_ref()
            .and_then(|next| finservice::analysis_event(before.analysis.as_ref(), next))
            .map(|(warning, reason, note)| Note {
                warning,
                reason,
                action: "Analyze",
                note,
            });
        let applied = (!held && !stale.is_empty()).then(|| Note {
            warning: false,
            reason: Reason::APPLIED,
            action: "Apply",
            note: format!("applied {}", stale.join(", ")),
        });
        let phase = after.phase.unwrap_or(Phase::Pending);
        let phase = (before.phase != Some(phase)).then(|| {
            let shown = finservice::phase_condition(phase);
            Note {
                warning: phase == Phase::Degraded,
                reason: Reason::of_phase(phase),
                action: "Reconcile",
                note: after
                    .conditions
                    .iter()
                    .find(|c| c.type_ == shown)
                    .map(|c| c.message.clone())
                    .unwrap_or_default(),
            }
        });
        Self {
            analysis,
            applied,
            phase,
        }
    }
}

/// The pods of `color` running `version`, leaving out those being deleted.
pub fn pods_of_version<'a>(pods: &'a [Pod], color: Color, version: &str) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.labels().get(COLOR_LABEL).map(String::as_str) == Some(color.as_str()))
        .filter(|p| p.labels().get(VERSION_LABEL).map(String::as_str) == Some(version))
        .collect()
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::json;

    use super::*;
    use crate::crd::{Phase, RedisCacheSpec, ReleaseSchema};
    use crate::finservice::fixtures::{at, finservice, settings, with_rollout_status};

    fn read<'a>(fs: &'a FinService, others: &'a [FinService], now: &'a Time) -> Read<'a> {
        Read {
            fs,
            others,
            queue: None,
            cache: None,
            blue: None,
            green: None,
            pods: &[],
            now,
        }
    }

    /// `name` live in blue at 1.0.0.
    fn live(name: &str) -> FinService {
        let mut fs = finservice(name, &[]);
        fs.status = Some(FinServiceStatus {
            active_color: Some(Color::Blue),
            active_version: Some("1.0.0".into()),
            ..FinServiceStatus::default()
        });
        fs
    }

    /// Its blue Deployment as planned, with every replica available.
    fn blue_running(fs: &FinService) -> Deployment {
        let [blue, _] = finservice::desired(fs, &settings(), true).deployments;
        with_rollout_status(blue, fs.spec.replicas)
    }

    fn pod(name: &str, color: Color, version: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    [
                        (COLOR_LABEL.to_owned(), color.as_str().to_owned()),
                        (VERSION_LABEL.to_owned(), version.to_owned()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    fn cache(password: bool) -> RedisCache {
        let mut spec: RedisCacheSpec = serde_json::from_value(json!({})).unwrap();
        spec.password = password;
        RedisCache::new("cache", spec)
    }

    #[test]
    fn a_missing_dependency_blocks_the_plan_and_holds_what_would_be_created() {
        let fs = finservice("wallet", &["auth"]);
        let now = at(1_000);
        let read = read(&fs, &[], &now);
        let standing = Standing::of(&read);
        assert_eq!(standing.blockers, [Blocker::missing("FinService", "auth")]);
        assert!(standing.not_ready.is_empty());
        let plan = plan(&read, &standing, Probed::default(), &settings());
        assert_eq!(plan.decision, None, "no step while something is missing");
        assert_eq!(plan.blockers_shown, standing.blockers);
        assert!(plan.held(true), "nothing is created for it");
        assert!(
            !plan.held(false),
            "nothing to hold once the cluster matches"
        );
    }

    #[test]
    fn a_dependency_that_is_not_ready_is_shown_and_the_engine_decides() {
        let fs = finservice("wallet", &["auth"]);
        let others = [finservice("auth", &[])];
        let now = at(1_000);
        let read = read(&fs, &others, &now);
        let standing = Standing::of(&read);
        assert!(standing.blockers.is_empty());
        assert_eq!(standing.not_ready.len(), 1);
        assert_eq!(standing.not_ready[0].name, "auth");
        let plan = plan(&read, &standing, Probed::default(), &settings());
        assert_eq!(plan.step(), Some(Step::WaitForDependencies));
        assert_eq!(plan.blockers_shown, standing.not_ready);
        assert!(
            plan.held(true),
            "a first version waits for its dependencies before anything is created"
        );
    }

    /// A cycle two tenants' services made (GitOps, a shared namespace) held every
    /// FinService of the namespace: no rollout, and no rollback for a failed window.
    #[test]
    fn a_dependency_cycle_holds_its_members_and_their_dependents_and_no_other() {
        let fs = finservice("pay", &[]);
        let others = [
            finservice("ledger", &[]),
            finservice("x", &["y"]),
            finservice("y", &["x"]),
            finservice("z", &["y", "ledger"]),
        ];
        let now = at(1_000);
        let standing = Standing::of(&read(&fs, &others, &now));
        assert!(standing.blockers.is_empty(), "{:?}", standing.blockers);
        let graph = standing.graph.expect("the graph of the rest");
        assert_eq!(graph.deploy_waves(), [vec!["ledger", "pay"]]);
        for held in ["x", "z"] {
            let fs = others.iter().find(|f| f.name_any() == held).unwrap();
            let rest: Vec<_> = others
                .iter()
                .filter(|f| f.name_any() != held)
                .cloned()
                .chain([finservice("pay", &[])])
                .collect();
            let standing = Standing::of(&read(fs, &rest, &now));
            assert!(standing.graph.is_none(), "{held}");
            assert_eq!(standing.blockers.len(), 1, "{held}");
            let why = standing.blockers[0].not_ready.as_deref().unwrap();
            assert!(why.contains("cycle"), "{held}: {why}");
        }
    }

    #[test]
    fn a_dependency_cycle_is_a_blocker_and_no_graph() {
        let fs = finservice("a", &["b"]);
        let others = [finservice("b", &["a"])];
        let now = at(1_000);
        let standing = Standing::of(&read(&fs, &others, &now));
        assert!(standing.graph.is_none());
        assert_eq!(standing.blockers.len(), 1);
        assert_eq!(standing.blockers[0].kind, "FinService");
        assert_eq!(standing.blockers[0].name, "a");
    }

    #[test]
    fn a_first_version_with_nothing_missing_is_deployed_and_not_held() {
        let fs = finservice("auth", &[]);
        let now = at(1_000);
        let read = read(&fs, &[], &now);
        let standing = Standing::of(&read);
        assert_eq!(standing.preview(&read), None);
        assert!(!standing.observing && !standing.active_ready);
        let plan = plan(&read, &standing, Probed::default(), &settings());
        assert_eq!(plan.step(), Some(Step::DeployFirst));
        assert_eq!(plan.next.active_version.as_deref(), Some("1.0.0"));
        assert!(!plan.held(true));
    }

    #[test]
    fn a_missing_cache_assumes_a_password_and_a_found_one_says_whether() {
        let mut fs = finservice("payment", &[]);
        fs.spec.cache_ref = Some("cache".into());
        let now = at(1_000);
        let missing = Standing::of(&read(&fs, &[], &now));
        assert!(missing.cache_password);
        assert_eq!(missing.blockers, [Blocker::missing("RedisCache", "cache")]);
        let open = cache(false);
        let found = Standing::of(&Read {
            cache: Some(&open),
            ..read(&fs, &[], &now)
        });
        assert!(!found.cache_password);
        assert_eq!(found.blockers.len(), 1, "found, but not Ready yet");
        assert!(found.blockers[0].not_ready.is_some());
    }

    #[test]
    fn the_live_version_is_ready_when_its_color_runs_it_whole() {
        let fs = live("auth");
        let blue = blue_running(&fs);
        let now = at(1_000);
        let standing = Standing::of(&Read {
            blue: Some(&blue),
            ..read(&fs, &[], &now)
        });
        assert!(standing.active_ready);
        assert!(!standing.preview_available && !standing.previous_up);
        let half = with_rollout_status(blue, 1);
        let standing = Standing::of(&Read {
            blue: Some(&half),
            ..read(&fs, &[], &now)
        });
        assert!(!standing.active_ready, "one of two replicas is not ready");
    }

    #[test]
    fn the_live_schema_is_asked_of_one_of_its_pods_only_while_unknown() {
        let fs = live("auth");
        let blue = blue_running(&fs);
        let pods = [
            pod("old", Color::Green, "0.9.0"),
            pod("live", Color::Blue, "1.0.0"),
        ];
        let now = at(1_000);
        let read = Read {
            blue: Some(&blue),
            pods: &pods,
            ..read(&fs, &[], &now)
        };
        let standing = Standing::of(&read);
        let (version, asked) = standing
            .live_schema_pod(&read, &BTreeMap::new())
            .expect("unknown schema");
        assert_eq!(version, "1.0.0");
        assert_eq!(asked.metadata.name.as_deref(), Some("live"));

        let probed: BTreeMap<String, rollout::Schema> = [(
            "1.0.0".to_owned(),
            rollout::Schema {
                version: 3,
                incompatible: None,
            },
        )]
        .into();
        assert!(standing.live_schema_pod(&read, &probed).is_none());

        let mut recorded = fs.clone();
        if let Some(status) = recorded.status.as_mut() {
            status.schemas = vec![ReleaseSchema {
                release: "1.0.0".into(),
                schema_version: 3,
                incompatible_migration: None,
            }];
        }
        let read = Read {
            fs: &recorded,
            ..read
        };
        assert!(
            Standing::of(&read)
                .live_schema_pod(&read, &BTreeMap::new())
                .is_none()
        );
    }

    #[test]
    fn an_unhealthy_live_version_in_its_window_is_found_failed() {
        let mut fs = live("auth");
        fs.status.as_mut().unwrap().observation = Some(Default::default());
        fs.status.as_mut().unwrap().active_since = Some(at(1_000));
        fs.status.as_mut().unwrap().previous_version = Some("0.9.0".into());
        let blue = blue_running(&fs);
        let now = at(1_010);
        let read = Read {
            blue: Some(&blue),
            ..read(&fs, &[], &now)
        };
        let standing = Standing::of(&read);
        assert!(standing.observing, "ten seconds into the window");
        let healthy = plan(
            &read,
            &standing,
            Probed {
                window_healthy: Some(true),
                ..Probed::default()
            },
            &settings(),
        );
        let failing = plan(
            &read,
            &standing,
            Probed {
                window_healthy: Some(false),
                ..Probed::default()
            },
            &settings(),
        );
        assert_eq!(healthy.step(), Some(Step::Observe));
        assert!(
            matches!(
                failing.step(),
                Some(Step::ScaleUpOld | Step::Rollback | Step::WaitForDependents)
            ),
            "a failed window rolls back: {:?}",
            failing.decision
        );
        assert!(failing.next.rollback.is_some(), "and records why");
    }

    #[test]
    fn notes_say_what_changed_and_nothing_when_nothing_did() {
        let before = FinServiceStatus {
            phase: Some(Phase::Ready),
            ..FinServiceStatus::default()
        };
        assert_eq!(Notes::after(&before, &before, false, &[]), Notes::default());
        let degraded = FinServiceStatus {
            phase: Some(Phase::Degraded),
            ..FinServiceStatus::default()
        };
        let notes = Notes::after(&before, &degraded, false, &["Deployment/a".into()]);
        let phase = notes.phase.expect("a new phase");
        assert!(phase.warning);
        assert_eq!(phase.reason.as_str(), "Degraded");
        assert_eq!(
            notes.applied.map(|n| n.note).as_deref(),
            Some("applied Deployment/a")
        );
        let held = Notes::after(&before, &before, true, &["Deployment/a".into()]);
        assert_eq!(held.applied, None, "held: nothing was applied");
    }
}
