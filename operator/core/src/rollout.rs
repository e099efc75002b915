//! The blue-green rollout engine: pure decisions, no API calls.
//!
//! Input: the [`DependencyGraph`] of the FinServices and, per service, what was observed
//! ([`Observed`]): the spec's version, the live (active) color and version and since
//! when, the previous color, the preview color's availability and the `/health` result
//! fetched through `<name>-preview` (the controller edge obtains it, for example through
//! the API server's service proxy), the observation window's restarts and readiness, a
//! user request, and whether a version already failed. Output: one [`Decision`] per
//! service ([`plan`]), whose [`Step`] the edge carries out and records as an Event and in
//! the conditions ([`Decision::conditions`]).
//!
//! The rules, in the order they are applied:
//!
//! - **Rollback first.** A service rolls back when a user asks (annotation
//!   [`ROLLBACK_ANNOTATION`]) or its observation window fails. With cascade, every
//!   transitive dependent whose live version went live *after* the rolled-back version
//!   did rolls back too ([`rollback_set`]), dependents before their dependencies: a
//!   member waits ([`Step::WaitForDependents`]) until its dependents in the set are done.
//!   A rollback flips the Service back when the old color is still up, else scales it up
//!   first ([`Step::ScaleUpOld`]).
//! - **Schema barrier.** No release goes live again whose schema is older than an
//!   incompatible migration a live version brought ([`SchemaBarrier`]): a rollback (by
//!   hand, by cascade or after a failed window) that would is refused for its whole set
//!   ([`Step::BlockedBySchema`]) unless the request is forced, and so is a spec version
//!   known to be that old. A forced crossing is recorded on the barrier.
//! - **Holds.** A service whose spec version failed (aborted or rolled back) stays put
//!   ([`Step::Held`]) until its spec version changes; its dependents wait on it.
//! - **Order.** A new version is not deployed, promoted or even probed while a dependency
//!   is missing, progressing, in its observation window, degraded or held.
//! - **Gate.** The preview color must be available and its `/health` (which includes its
//!   own dependencies' health) must answer healthy; past the readiness timeout it aborts.
//! - **Promotion.** Automatic, or on request ([`PROMOTE_ANNOTATION`]) when `autoPromote`
//!   is false. Then the observation window; after it and the scale-down delay, the old
//!   color is scaled to zero.
//!
//! Times are whole seconds (no float arithmetic).

use std::collections::{BTreeMap, BTreeSet};

pub use crate::analysis::Verdict;
use crate::conditions::{Desired, Reason, Type};
use crate::crd::{Color, MigrationRef, SchemaBarrier};
use crate::graph::DependencyGraph;

/// Annotation asking for a rollback: `cascade` or `single`. Cleared by the operator once
/// the rollback is done.
pub const ROLLBACK_ANNOTATION: &str = "finflow.dev/rollback";
/// Annotation promoting a preview that waits for a manual promotion: `"true"`.
pub const PROMOTE_ANNOTATION: &str = "finflow.dev/promote";
/// Annotation aborting a rollout in preview: `"true"`.
pub const ABORT_ANNOTATION: &str = "finflow.dev/abort";
/// Pod label (and env `FINFLOW_ROLE` through the downward API): `preview` or `active`.
pub const ROLE_LABEL: &str = "finflow.dev/role";
/// Value of [`ROLE_LABEL`] on the color behind `<name>-preview`.
pub const ROLE_PREVIEW: &str = "preview";
/// Value of [`ROLE_LABEL`] on the color behind `<name>`.
pub const ROLE_ACTIVE: &str = "active";

/// The engine's reasons, of its Events and of the conditions its decisions set.
impl Reason {
    pub const UP_TO_DATE: Self = Self("UpToDate");
    pub const DEPENDENCY_NOT_HEALTHY: Self = Self("DependencyNotHealthy");
    pub const NEW_VERSION: Self = Self("NewVersion");
    pub const PREVIEW_NOT_AVAILABLE: Self = Self("PreviewNotAvailable");
    pub const PREVIEW_HEALTH_PENDING: Self = Self("PreviewHealthPending");
    pub const PREVIEW_UNHEALTHY: Self = Self("PreviewUnhealthy");
    pub const READINESS_TIMEOUT: Self = Self("ReadinessTimeout");
    pub const HEALTH_CHECK_FAILED: Self = Self("HealthCheckFailed");
    pub const ABORT_REQUESTED: Self = Self("AbortRequested");
    pub const SPEC_REVERTED: Self = Self("SpecReverted");
    pub const MANUAL_PROMOTION: Self = Self("ManualPromotion");
    pub const PREVIEW_HEALTHY: Self = Self("PreviewHealthy");
    pub const PROMOTION_REQUESTED: Self = Self("PromotionRequested");
    pub const OBSERVING: Self = Self("Observing");
    pub const OBSERVATION_FAILED: Self = Self("ObservationFailed");
    pub const SCALE_DOWN_DELAY_PASSED: Self = Self("ScaleDownDelayPassed");
    pub const ROLLBACK_REQUESTED: Self = Self("RollbackRequested");
    pub const CASCADE_ROLLBACK: Self = Self("CascadeRollback");
    pub const DEPENDENTS_ROLLING_BACK: Self = Self("DependentsRollingBack");
    pub const OLD_COLOR_DOWN: Self = Self("OldColorDown");
    pub const NO_PREVIOUS_VERSION: Self = Self("NoPreviousVersion");
    pub const VERSION_FAILED: Self = Self("VersionFailed");
    pub const FIRST_VERSION: Self = Self("FirstVersion");
    pub const ANALYSIS_FAILED: Self = Self("AnalysisFailed");
    pub const ANALYSIS_PASSED: Self = Self("AnalysisPassed");
    pub const ANALYSIS_INCONCLUSIVE: Self = Self("AnalysisInconclusive");
    pub const ANALYSIS_UNAVAILABLE: Self = Self("AnalysisUnavailable");
    pub const INCOMPATIBLE_MIGRATION: Self = Self("IncompatibleMigration");
    pub const INCOMPATIBLE_MIGRATION_FORCED: Self = Self("IncompatibleMigrationForced");
}

/// What a service does next. [`Step::as_str`] is the Event action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// Live version is the spec's version and nothing is pending.
    Steady,
    /// A dependency is not healthy: nothing is deployed, promoted or probed.
    WaitForDependencies,
    /// The spec's version failed; nothing moves until the spec's version changes.
    Held,
    /// The first version of a new service goes to the active color in place.
    DeployFirst,
    /// Deploy the spec's version to the idle color (behind `<name>-preview`).
    DeployPreview,
    /// The preview is not yet available or healthy; probe again.
    AwaitPreview,
    /// The preview is healthy; a user must promote (`autoPromote: false`).
    AwaitPromotion,
    /// Switch `<name>`'s selector to the preview color.
    Promote,
    /// In the observation window after a promotion.
    Observe,
    /// Scale the previous color to zero.
    ScaleDownOld,
    /// Give up the preview: scale it to zero and hold the version.
    Abort,
    /// Part of a cascade rollback: dependents roll back first.
    WaitForDependents,
    /// Scale the previous color back up before flipping to it.
    ScaleUpOld,
    /// Switch `<name>`'s selector back to the previous color.
    Rollback,
    /// A rollback, or a spec version, would put live a release older than an applied
    /// incompatible migration: held until forced, or the spec names another version.
    BlockedBySchema,
}

impl Step {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Steady => "Steady",
            Self::WaitForDependencies => "WaitForDependencies",
            Self::Held => "Held",
            Self::DeployFirst => "DeployFirst",
            Self::DeployPreview => "DeployPreview",
            Self::AwaitPreview => "AwaitPreview",
            Self::AwaitPromotion => "AwaitPromotion",
            Self::Promote => "Promote",
            Self::Observe => "Observe",
            Self::ScaleDownOld => "ScaleDownOld",
            Self::Abort => "Abort",
            Self::WaitForDependents => "WaitForDependents",
            Self::ScaleUpOld => "ScaleUpOld",
            Self::Rollback => "Rollback",
            Self::BlockedBySchema => "BlockedBySchema",
        }
    }

    /// Steps that change something in the cluster (and get an Event of their own).
    pub const fn acts(self) -> bool {
        matches!(
            self,
            Self::DeployFirst
                | Self::DeployPreview
                | Self::Promote
                | Self::ScaleDownOld
                | Self::Abort
                | Self::ScaleUpOld
                | Self::Rollback
        )
    }

    /// Steps reported as a Warning Event.
    pub const fn is_warning(self) -> bool {
        matches!(
            self,
            Self::Abort | Self::Rollback | Self::ScaleUpOld | Self::Held | Self::BlockedBySchema
        )
    }
}

/// A user's request, read from the FinService's annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Promote a preview waiting for it; `force` also lets through a version older than
    /// an applied incompatible migration (`finflow.dev/promote: force`).
    Promote {
        force: bool,
    },
    Abort,
    /// Roll back, with `cascade` to the dependents promoted after this service; `force`
    /// crosses an applied incompatible migration (`finflow.dev/rollback: cascade,force`).
    Rollback {
        cascade: bool,
        force: bool,
    },
}

/// What a request annotation's value adds to say it is forced.
pub const FORCE: &str = "force";

impl Request {
    /// Whether the request was handled (or can no longer apply) after `step`, so its
    /// annotation goes: a promotion stays while a preview is on its way or waiting, a
    /// rollback while dependents roll back first or the old color scales up.
    pub fn handled_after(self, step: Step) -> bool {
        match self {
            Self::Promote { .. } => !matches!(
                step,
                Step::AwaitPreview | Step::AwaitPromotion | Step::DeployPreview
            ),
            Self::Abort => true,
            Self::Rollback { .. } => !matches!(step, Step::WaitForDependents | Step::ScaleUpOld),
        }
    }

    /// The annotation that carries this request: [`request_from_annotations`] reads it
    /// back as this request.
    pub fn annotation(self) -> (&'static str, String) {
        let with_force = |mode: &str, force: bool| {
            if force {
                format!("{mode},{FORCE}")
            } else {
                mode.to_owned()
            }
        };
        match self {
            Self::Promote { force: false } => (PROMOTE_ANNOTATION, "true".to_owned()),
            Self::Promote { force: true } => (PROMOTE_ANNOTATION, FORCE.to_owned()),
            Self::Abort => (ABORT_ANNOTATION, "true".to_owned()),
            Self::Rollback { cascade, force } => (
                ROLLBACK_ANNOTATION,
                with_force(if cascade { "cascade" } else { "single" }, force),
            ),
        }
    }
}

/// Reads the request annotations; rollback wins over abort over promote, since it is the
/// most conservative. A value the operator does not know is no request.
pub fn request_from_annotations(annotations: &BTreeMap<String, String>) -> Option<Request> {
    if let Some(value) = annotations.get(ROLLBACK_ANNOTATION) {
        let (mode, force) = match value.split_once(',') {
            Some((mode, FORCE)) => (mode, true),
            Some(_) => ("", false),
            None => (value.as_str(), false),
        };
        match mode {
            "cascade" => {
                return Some(Request::Rollback {
                    cascade: true,
                    force,
                });
            }
            "single" | "true" => {
                return Some(Request::Rollback {
                    cascade: false,
                    force,
                });
            }
            _ => {}
        }
    }
    if annotations
        .get(ABORT_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        return Some(Request::Abort);
    }
    match annotations.get(PROMOTE_ANNOTATION).map(String::as_str) {
        Some("true") => Some(Request::Promote { force: false }),
        Some(FORCE) => Some(Request::Promote { force: true }),
        _ => None,
    }
}

/// The schema a release expects, as its `/health` reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    /// Its newest migration.
    pub version: i64,
    /// Its newest migration marked incompatible with the release before it.
    pub incompatible: Option<MigrationRef>,
}

/// The barrier once `live` is live: raised to `live`'s newest incompatible migration
/// when that is newer; marked overridden by `live` when `live` is older (or its schema
/// unknown) and the request that put it live was `forced`; the mark goes once a
/// release at or past the barrier is live again.
pub fn barrier_after(
    barrier: Option<&SchemaBarrier>,
    schemas: &BTreeMap<String, Schema>,
    live: &str,
    forced: bool,
) -> Option<SchemaBarrier> {
    let schema = schemas.get(live);
    let mut next = barrier.cloned();
    if let Some(m) = schema.and_then(|s| s.incompatible.as_ref())
        && next
            .as_ref()
            .is_none_or(|b| m.version > b.migration.version)
    {
        next = Some(SchemaBarrier {
            migration: m.clone(),
            release: live.to_owned(),
            overridden_by: None,
        });
    }
    if let Some(b) = &mut next {
        if schema.is_some_and(|s| s.version >= b.migration.version) {
            b.overridden_by = None;
        } else if forced {
            b.overridden_by = Some(live.to_owned());
        }
    }
    next
}

/// What starts a service's own rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trigger {
    pub cascade: bool,
    pub force: bool,
}

/// A version running in a color, live since `since` (seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub color: Color,
    pub version: String,
    pub since: i64,
}

/// The idle color while it runs a candidate version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    pub version: String,
    /// When the candidate was deployed to the idle color.
    pub since: i64,
    /// Every replica of the preview color is available.
    pub available: bool,
    /// `/health` through `<name>-preview`: `None` until probed (only probed when available).
    pub healthy: Option<bool>,
    /// The traffic analysis of the preview's pods (only made when available).
    pub analysis: Verdict,
}

/// What the observation window saw since the promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    /// Container restarts in the new color since the promotion.
    pub restarts: i32,
    /// A pod of the new color became unready.
    pub unready: bool,
    /// `/health` of `<name>` failed.
    pub health_failed: bool,
    /// The traffic analysis of the new version's pods failed.
    pub analysis_failed: bool,
}

impl Window {
    pub fn failed(self) -> bool {
        self.restarts > 0 || self.unready || self.health_failed || self.analysis_failed
    }

    /// Failed by its traffic alone: restarts, readiness and `/health` were fine.
    fn failed_by_traffic_only(self) -> bool {
        self.analysis_failed && self.restarts == 0 && !self.unready && !self.health_failed
    }
}

/// Rollout settings, in seconds (from `spec.rollout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub readiness_timeout: i64,
    pub observation_window: i64,
    pub scale_down_delay: i64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            readiness_timeout: 300,
            observation_window: 300,
            scale_down_delay: 300,
        }
    }
}

/// Everything the engine needs to know about one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub spec_version: String,
    pub auto_promote: bool,
    pub timing: Timing,
    /// What `<name>` sends traffic to; `None` for a service never deployed.
    pub active: Option<Live>,
    /// Every replica of the active color runs the live version and is available.
    pub active_ready: bool,
    /// What ran before the last promotion (what a rollback returns to), if known.
    pub previous: Option<Live>,
    /// The previous color still has its replicas available.
    pub previous_up: bool,
    pub preview: Option<Preview>,
    pub window: Window,
    /// A version that failed here (aborted or rolled back); holds while it is the spec's.
    pub failed_version: Option<String>,
    pub request: Option<Request>,
    /// The schema each release reported, by version.
    pub schemas: BTreeMap<String, Schema>,
    /// The newest incompatible migration a live version brought.
    pub barrier: Option<SchemaBarrier>,
}

impl Observed {
    /// A service running `version` in blue since `since`, with nothing pending.
    pub fn steady(version: &str, since: i64) -> Self {
        Self {
            spec_version: version.to_owned(),
            auto_promote: true,
            timing: Timing::default(),
            active: Some(Live {
                color: Color::Blue,
                version: version.to_owned(),
                since,
            }),
            active_ready: true,
            previous: None,
            previous_up: false,
            preview: None,
            window: Window::default(),
            failed_version: None,
            request: None,
            schemas: BTreeMap::new(),
            barrier: None,
        }
    }

    /// The barrier putting `release` live would cross: its schema is older than the
    /// barrier's migration, or unknown and `unknown_crosses`.
    fn crosses(&self, release: &str, unknown_crosses: bool) -> Option<&SchemaBarrier> {
        let barrier = self.barrier.as_ref()?;
        match self.schemas.get(release) {
            Some(s) => (s.version < barrier.migration.version).then_some(barrier),
            None => unknown_crosses.then_some(barrier),
        }
    }

    /// The barrier a rollback of this service would cross. The previous release's
    /// schema unknown counts as older: refusing is the side a user can override.
    pub fn rollback_crosses(&self) -> Option<&SchemaBarrier> {
        let previous = self.previous.as_ref()?;
        self.crosses(&previous.version, true)
    }

    fn promote_forced(&self) -> bool {
        self.request == Some(Request::Promote { force: true })
    }

    fn held(&self) -> bool {
        self.failed_version.as_deref() == Some(self.spec_version.as_str())
    }

    /// Rolled back: what is live is no longer the version that failed. (Promotion clears
    /// `failed_version`, so an old abort does not count.)
    fn rolled_away(&self) -> bool {
        self.failed_version
            .as_ref()
            .is_some_and(|f| self.active.as_ref().is_none_or(|a| &a.version != f))
    }

    fn live_is_spec(&self) -> bool {
        self.active
            .as_ref()
            .is_some_and(|a| a.version == self.spec_version)
    }

    /// In the observation window that follows a promotion.
    pub fn observing(&self, now: i64) -> bool {
        self.previous.is_some()
            && self
                .active
                .as_ref()
                .is_some_and(|a| now < a.since.saturating_add(self.timing.observation_window))
    }

    /// Healthy as a dependency: live at the spec's version with every replica ready,
    /// nothing pending, out of its observation window, not held.
    pub fn healthy(&self, now: i64) -> bool {
        self.live_is_spec()
            && self.active_ready
            && self.preview.is_none()
            && !self.held()
            && !self.observing(now)
            && !matches!(self.request, Some(Request::Rollback { .. }))
    }

    /// Starts a rollback of this service (not counting cascades from others). The edge
    /// keeps it in the status until the switch back (or while the schema barrier holds
    /// it), so that dependents rolling back first see it.
    pub fn rollback_trigger(&self, now: i64) -> Option<Trigger> {
        if let Some(Request::Rollback { cascade, force }) = self.request {
            // A rollback asked for during a preview is an abort: nothing new is live.
            return (!self.held() && self.preview.is_none()).then_some(Trigger { cascade, force });
        }
        (self.live_is_spec() && self.observing(now) && self.window.failed()).then_some(Trigger {
            cascade: true,
            force: false,
        })
    }
}

/// The next step of one service and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub step: Step,
    pub reason: Reason,
    pub message: String,
}

impl Decision {
    fn new(step: Step, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            step,
            reason,
            message: message.into(),
        }
    }

    /// Puts live, as a user's forced request asked, a release older than the schema
    /// barrier: the crossing is recorded on the barrier and in a Warning Event.
    pub fn forced(&self) -> bool {
        matches!(self.step, Step::Promote | Step::Rollback)
            && self.reason == Reason::INCOMPATIBLE_MIGRATION_FORCED
    }

    /// The conditions this decision reports: Progressing and Degraded (Ready and
    /// DependenciesReady stay with the workload's reconciler).
    pub fn conditions(&self) -> Vec<Desired> {
        let progressing = matches!(
            self.step,
            Step::DeployFirst
                | Step::DeployPreview
                | Step::AwaitPreview
                | Step::AwaitPromotion
                | Step::Promote
                | Step::Observe
                | Step::ScaleDownOld
                | Step::WaitForDependents
                | Step::ScaleUpOld
                | Step::Rollback
        );
        let degraded = matches!(
            self.step,
            Step::Abort
                | Step::Held
                | Step::Rollback
                | Step::ScaleUpOld
                | Step::WaitForDependents
                | Step::BlockedBySchema
        );
        vec![
            Desired::new(
                Type::Progressing,
                progressing,
                self.reason,
                self.message.clone(),
            ),
            Desired::new(Type::Degraded, degraded, self.reason, self.message.clone()),
        ]
    }
}

/// The services that roll back because of `root`: `root` itself and, with `cascade`,
/// every transitive dependent whose live version went live after `root`'s did and has
/// a previous one to roll back to. One with none (deployed once only, after `root` went
/// live; or rolled back already by this cascade, which took its previous) is not waited
/// for: "nothing to roll back to" never ends, and `root` waited for it forever, the
/// release the cascade was asked to take away still live. A dependent a dependency
/// cycle holds is not in `graph` ([`DependencyGraph::sound_part`]) and stays as it is
/// too.
pub fn rollback_set(
    graph: &DependencyGraph,
    observed: &BTreeMap<String, Observed>,
    root: &str,
    cascade: bool,
) -> BTreeSet<String> {
    let mut set = BTreeSet::from([root.to_owned()]);
    let Some(root_since) = observed
        .get(root)
        .and_then(|o| o.active.as_ref())
        .map(|a| a.since)
    else {
        return set;
    };
    if cascade {
        for dependent in graph.transitive_dependents(root) {
            let after = observed.get(&dependent).is_some_and(|o| {
                o.previous.is_some() && o.active.as_ref().is_some_and(|a| a.since > root_since)
            });
            if after {
                set.insert(dependent);
            }
        }
    }
    set
}

/// Decides every service's next step at time `now` (seconds).
pub fn plan(
    graph: &DependencyGraph,
    observed: &BTreeMap<String, Observed>,
    now: i64,
) -> BTreeMap<String, Decision> {
    // Rollback membership first: a service may be pulled into another's cascade.
    let mut rolling_back: BTreeMap<String, Reason> = BTreeMap::new();
    let mut members: Vec<BTreeSet<String>> = Vec::new();
    let done = |s: &str| observed.get(s).is_none_or(Observed::rolled_away);
    // Members of a set that would cross a schema barrier unforced: none of the set
    // moves (a cascade half done would be worse than none), each says why.
    let mut blocked: BTreeMap<String, String> = BTreeMap::new();
    let mut forced: BTreeSet<String> = BTreeSet::new();
    for (name, o) in observed {
        if let Some(trigger) = o.rollback_trigger(now) {
            let set = rollback_set(graph, observed, name, trigger.cascade);
            let crossing: Vec<(&String, &SchemaBarrier)> = set
                .iter()
                .filter(|m| !done(m))
                .filter_map(|m| Some((m, observed.get(m)?.rollback_crosses()?)))
                .collect();
            if trigger.force {
                forced.extend(crossing.iter().map(|(m, _)| (*m).clone()));
            } else if let Some((first, barrier)) = crossing.first() {
                let why = refusal(first, &observed[*first], barrier);
                let why = if crossing.len() > 1 {
                    format!("{why} (and {} more)", crossing.len() - 1)
                } else {
                    why
                };
                let how = if *name == **first {
                    String::new()
                } else {
                    format!(" (a rollback of {name} cascades to it)")
                };
                // The command that overrides it: the same rollback, forced.
                let cascade = if trigger.cascade { " --cascade" } else { "" };
                for member in set.iter().filter(|m| !done(m)) {
                    blocked.entry(member.clone()).or_insert_with(|| {
                        format!(
                            "{why}{how}; `kubectl finflow rollback {name}{cascade} --force` overrides"
                        )
                    });
                }
            }
            for member in &set {
                // A failed window's rollback kept in the status while it waits comes
                // back as a request: the window, still failed, says why.
                let why = if member == name {
                    if o.window.failed_by_traffic_only() {
                        Reason::ANALYSIS_FAILED
                    } else if o.window.failed() {
                        Reason::OBSERVATION_FAILED
                    } else {
                        Reason::ROLLBACK_REQUESTED
                    }
                } else {
                    Reason::CASCADE_ROLLBACK
                };
                rolling_back.entry(member.clone()).or_insert(why);
            }
            members.push(set);
        }
    }
    let wave_of: BTreeMap<String, usize> = graph
        .deploy_waves()
        .into_iter()
        .enumerate()
        .flat_map(|(i, wave)| wave.into_iter().map(move |s| (s, i)))
        .collect();

    graph
        .services()
        .filter_map(|name| {
            let o = observed.get(name)?;
            let decision = if let Some(why) = blocked.get(name) {
                Decision::new(Step::BlockedBySchema, Reason::INCOMPATIBLE_MIGRATION, why)
            } else if let Some(why) = rolling_back.get(name).filter(|_| !done(name)) {
                // Reverse deploy waves: every member of a later wave (which includes
                // every dependent) rolls back first, as the deploy runbook prescribes.
                let mine = wave_of.get(name).copied().unwrap_or(0);
                let waiting: BTreeSet<&String> = members
                    .iter()
                    .filter(|set| set.contains(name))
                    .flatten()
                    .filter(|m| wave_of.get(m.as_str()).is_some_and(|w| *w > mine))
                    .filter(|m| !done(m))
                    .collect();
                if !waiting.is_empty() {
                    Decision::new(
                        Step::WaitForDependents,
                        Reason::DEPENDENTS_ROLLING_BACK,
                        format!(
                            "waiting for {} to roll back first",
                            join(waiting.iter().map(|s| s.as_str()))
                        ),
                    )
                } else if let (true, Some(barrier)) = (forced.contains(name), o.rollback_crosses())
                {
                    let mut d = rollback_step(o, Reason::INCOMPATIBLE_MIGRATION_FORCED);
                    d.message = format!(
                        "{}, past migration {} ({}) as forced",
                        d.message, barrier.migration.version, barrier.migration.description
                    );
                    d
                } else {
                    rollback_step(o, *why)
                }
            } else {
                decide_one(graph, observed, name, o, now)
            };
            Some((name.to_owned(), decision))
        })
        .collect()
}

fn rollback_step(o: &Observed, why: Reason) -> Decision {
    match (&o.previous, o.previous_up) {
        (Some(p), true) => Decision::new(
            Step::Rollback,
            why,
            format!("switching back to {} ({})", p.version, p.color.as_str()),
        ),
        (Some(p), false) => Decision::new(
            Step::ScaleUpOld,
            Reason::OLD_COLOR_DOWN,
            format!(
                "scaling {} ({}) back up before switching to it",
                p.version,
                p.color.as_str()
            ),
        ),
        (None, _) => Decision::new(
            Step::Held,
            Reason::NO_PREVIOUS_VERSION,
            "nothing to roll back to",
        ),
    }
}

/// Why rolling `name` back would cross `barrier`, in words.
fn refusal(name: &str, o: &Observed, barrier: &SchemaBarrier) -> String {
    let target = o.previous.as_ref().map_or("", |p| p.version.as_str());
    let schema = o.schemas.get(target).map_or_else(
        || "an unknown schema".to_owned(),
        |s| format!("schema {}", s.version),
    );
    format!(
        "rolling {name} back to {target} ({schema}) would run it against migration {} ({}), brought live by {}, which it cannot read",
        barrier.migration.version, barrier.migration.description, barrier.release
    )
}

fn join<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

fn decide_one(
    graph: &DependencyGraph,
    observed: &BTreeMap<String, Observed>,
    name: &str,
    o: &Observed,
    now: i64,
) -> Decision {
    if o.held() {
        return Decision::new(
            Step::Held,
            Reason::VERSION_FAILED,
            format!(
                "version {} failed; change spec.version to continue",
                o.spec_version
            ),
        );
    }
    if let Some(p) = &o.preview
        && (matches!(o.request, Some(Request::Abort | Request::Rollback { .. }))
            || o.live_is_spec()
            || p.version != o.spec_version)
    {
        let why = if matches!(o.request, Some(Request::Abort | Request::Rollback { .. })) {
            Reason::ABORT_REQUESTED
        } else {
            Reason::SPEC_REVERTED
        };
        return Decision::new(Step::Abort, why, format!("aborting preview {}", p.version));
    }
    let Some(active) = &o.active else {
        return match unhealthy_dependencies(graph, observed, name, now) {
            Some(d) => d,
            None => Decision::new(
                Step::DeployFirst,
                Reason::FIRST_VERSION,
                format!("deploying {}", o.spec_version),
            ),
        };
    };
    if o.live_is_spec() {
        if o.observing(now) {
            return Decision::new(
                Step::Observe,
                Reason::OBSERVING,
                format!("watching {} after its promotion", active.version),
            );
        }
        let delay = o.timing.scale_down_delay.max(o.timing.observation_window);
        if o.previous_up && now >= active.since.saturating_add(delay) {
            return Decision::new(
                Step::ScaleDownOld,
                Reason::SCALE_DOWN_DELAY_PASSED,
                format!("scaling {} down", active.color.other().as_str()),
            );
        }
        return Decision::new(
            Step::Steady,
            Reason::UP_TO_DATE,
            format!("{} is live", active.version),
        );
    }
    // A new version: nothing happens while a dependency is not healthy.
    if let Some(wait) = unhealthy_dependencies(graph, observed, name, now) {
        return wait;
    }
    // A spec version known to be older than an applied incompatible migration (a
    // reverted spec, as GitOps rolls back) is not even deployed, unless forced.
    if let (None, Some(barrier), false) = (
        &o.preview,
        o.crosses(&o.spec_version, false),
        o.promote_forced(),
    ) {
        return schema_hold(name, o, &o.spec_version, barrier);
    }
    let Some(preview) = &o.preview else {
        return Decision::new(
            Step::DeployPreview,
            Reason::NEW_VERSION,
            format!(
                "deploying {} to {}",
                o.spec_version,
                active.color.other().as_str()
            ),
        );
    };
    let timed_out = now > preview.since.saturating_add(o.timing.readiness_timeout);
    if !preview.available {
        return if timed_out {
            Decision::new(
                Step::Abort,
                Reason::READINESS_TIMEOUT,
                format!("{} did not become available in time", preview.version),
            )
        } else {
            Decision::new(
                Step::AwaitPreview,
                Reason::PREVIEW_NOT_AVAILABLE,
                format!("waiting for {} to become available", preview.version),
            )
        };
    }
    if preview.analysis == Verdict::Failed {
        return Decision::new(
            Step::Abort,
            Reason::ANALYSIS_FAILED,
            format!(
                "{} failed its traffic analysis (see status.analysis)",
                preview.version
            ),
        );
    }
    // The preview told its schema with its health: one older than the barrier, or none
    // at all (a build from before schemas were reported), is not promoted unforced.
    if preview.healthy == Some(true)
        && let Some(barrier) = o.crosses(&preview.version, true)
    {
        return if o.promote_forced() {
            Decision::new(
                Step::Promote,
                Reason::INCOMPATIBLE_MIGRATION_FORCED,
                format!(
                    "promoting {} past migration {} ({}) as forced",
                    preview.version, barrier.migration.version, barrier.migration.description
                ),
            )
        } else {
            schema_hold(name, o, &preview.version, barrier)
        };
    }
    match preview.healthy {
        None => Decision::new(
            Step::AwaitPreview,
            Reason::PREVIEW_HEALTH_PENDING,
            format!("probing {}'s health", preview.version),
        ),
        Some(false) if timed_out => Decision::new(
            Step::Abort,
            Reason::HEALTH_CHECK_FAILED,
            format!("{} did not become healthy in time", preview.version),
        ),
        Some(false) => Decision::new(
            Step::AwaitPreview,
            Reason::PREVIEW_UNHEALTHY,
            format!("{} is not healthy yet", preview.version),
        ),
        Some(true) if o.auto_promote => Decision::new(
            Step::Promote,
            Reason::PREVIEW_HEALTHY,
            format!("promoting {}", preview.version),
        ),
        Some(true) if matches!(o.request, Some(Request::Promote { .. })) => Decision::new(
            Step::Promote,
            Reason::PROMOTION_REQUESTED,
            format!("promoting {}", preview.version),
        ),
        Some(true) => Decision::new(
            Step::AwaitPromotion,
            Reason::MANUAL_PROMOTION,
            format!(
                "{} is healthy; promote with `kubectl finflow promote {name}`",
                preview.version
            ),
        ),
    }
}

/// Holding spec version `release`, whose schema is older than `barrier`.
fn schema_hold(name: &str, o: &Observed, release: &str, barrier: &SchemaBarrier) -> Decision {
    let schema = o.schemas.get(release).map_or_else(
        || "reports no schema, so it may not read".to_owned(),
        |s| format!("expects schema {}, older than", s.version),
    );
    Decision::new(
        Step::BlockedBySchema,
        Reason::INCOMPATIBLE_MIGRATION,
        format!(
            "{release} {schema} migration {} ({}), brought live by {}, which it cannot read; set spec.version to a release that has it, or `kubectl finflow promote {name} --force` overrides",
            barrier.migration.version, barrier.migration.description, barrier.release
        ),
    )
}

fn unhealthy_dependencies(
    graph: &DependencyGraph,
    observed: &BTreeMap<String, Observed>,
    name: &str,
    now: i64,
) -> Option<Decision> {
    let blocked: Vec<&str> = graph
        .dependencies(name)
        .filter(|d| !observed.get(*d).is_some_and(|o| o.healthy(now)))
        .collect();
    (!blocked.is_empty()).then(|| {
        Decision::new(
            Step::WaitForDependencies,
            Reason::DEPENDENCY_NOT_HEALTHY,
            format!("waiting for {}", join(blocked.into_iter())),
        )
    })
}

/// The role of a pod of `color` while `<name>` selects `active`.
pub fn role(color: Color, active: Color) -> &'static str {
    if color == active {
        ROLE_ACTIVE
    } else {
        ROLE_PREVIEW
    }
}

/// The apply body labelling pod `pod` of `color` with its role, or `None` when the label
/// is already right. Pods, not the pod template, are labelled: a template change would
/// replace every pod of the color at the very moment it is promoted.
///
/// The body carries the pod's `uid` when known: an apply to a name with no object tries
/// to create one, and with a uid the API server refuses (409 Conflict) instead, so a pod
/// that went after it was listed is never confused with a pod to make.
pub fn pod_role_apply(
    pod: &str,
    uid: Option<&str>,
    labels: &BTreeMap<String, String>,
    color: Color,
    active: Color,
) -> Option<serde_json::Value> {
    let want = role(color, active);
    (labels.get(ROLE_LABEL).map(String::as_str) != Some(want)).then(|| {
        let mut body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": pod, "labels": { ROLE_LABEL: want } },
        });
        if let Some(uid) = uid {
            body["metadata"]["uid"] = serde_json::json!(uid);
        }
        body
    })
}

/// The API server's service proxy to `health_path` of Service `service` (port `http`):
/// how the operator probes a color from outside the cluster network as well as inside.
pub fn health_proxy_path(namespace: &str, service: &str, health_path: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/services/{service}:http/proxy{health_path}")
}

/// The API server's pod proxy to `health_path` of pod `pod` on `port`: one pod's
/// answer, so what it reports is known to be its release's.
pub fn pod_health_path(namespace: &str, pod: &str, port: i32, health_path: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy{health_path}")
}

/// The schema a `/health` body reports (`schema`: `version`, the newest embedded
/// migration, and `incompatible`, the marked ones, as the platform's `SchemaReport`
/// writes them): `None` when the body carries none (a process without a database) or
/// is not that JSON. Of the marked migrations the newest counts: it is the barrier.
pub fn schema_from_health(body: &str) -> Option<Schema> {
    #[derive(serde::Deserialize)]
    struct Body {
        schema: Option<Report>,
    }
    #[derive(serde::Deserialize)]
    struct Report {
        version: i64,
        #[serde(default)]
        incompatible: Vec<Marked>,
    }
    #[derive(serde::Deserialize)]
    struct Marked {
        version: i64,
        description: String,
    }
    let report = serde_json::from_str::<Body>(body).ok()?.schema?;
    Some(Schema {
        version: report.version,
        incompatible: report
            .incompatible
            .into_iter()
            .max_by_key(|m| m.version)
            .map(|m| MigrationRef {
                version: m.version,
                description: m.description,
            }),
    })
}

/// Applies a decision's step to the observed state the way the controller's writes
/// would, as seen on the next observation. Used by the scenario tests and documentation
/// of each step's effect; `now` is the step's time.
pub fn apply(o: &mut Observed, decision: &Decision, now: i64) {
    let forced = decision.forced();
    match decision.step {
        Step::DeployFirst => {
            o.active = Some(Live {
                color: Color::Blue,
                version: o.spec_version.clone(),
                since: now,
            });
            o.active_ready = false;
            o.barrier = barrier_after(o.barrier.as_ref(), &o.schemas, &o.spec_version, false);
        }
        Step::DeployPreview => {
            o.preview = Some(Preview {
                version: o.spec_version.clone(),
                since: now,
                available: false,
                healthy: None,
                analysis: Verdict::default(),
            });
        }
        Step::Promote => {
            if let (Some(active), Some(preview)) = (o.active.take(), o.preview.take()) {
                o.barrier = barrier_after(o.barrier.as_ref(), &o.schemas, &preview.version, forced);
                o.active = Some(Live {
                    color: active.color.other(),
                    version: preview.version,
                    since: now,
                });
                o.previous = Some(active);
                o.previous_up = true;
                o.failed_version = None;
                o.window = Window::default();
                o.request = None;
            }
        }
        Step::ScaleDownOld => o.previous_up = false,
        Step::Abort => {
            if let Some(p) = o.preview.take()
                && p.version == o.spec_version
            {
                o.failed_version = Some(p.version);
            }
            o.request = None;
        }
        Step::ScaleUpOld => o.previous_up = true,
        Step::Rollback => {
            if let (Some(active), Some(previous)) = (o.active.take(), o.previous.take()) {
                o.barrier =
                    barrier_after(o.barrier.as_ref(), &o.schemas, &previous.version, forced);
                o.failed_version = Some(active.version.clone());
                o.active = Some(Live {
                    since: now,
                    ..previous
                });
                // The bad color is scaled to zero with the flip; nothing to return to.
                o.previous_up = false;
                o.window = Window::default();
                o.request = None;
            }
        }
        // The edge keeps a held rollback in the status: once the window is over, the
        // failure that started it still stands.
        Step::BlockedBySchema => {
            if o.request.is_none() && o.window.failed() {
                o.request = Some(Request::Rollback {
                    cascade: true,
                    force: false,
                });
            }
        }
        Step::Steady
        | Step::WaitForDependencies
        | Step::Held
        | Step::AwaitPreview
        | Step::AwaitPromotion
        | Step::Observe
        | Step::WaitForDependents => {}
    }
}

#[cfg(test)]
mod tests;
