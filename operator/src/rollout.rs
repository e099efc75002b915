//! The blue-green rollout engine (issue 9): pure decisions, no API calls.
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
use crate::conditions::{self, Desired};
use crate::crd::Color;
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

/// Reasons of Events and conditions; constants so tests and users can match on them.
pub mod reason {
    pub const UP_TO_DATE: &str = "UpToDate";
    pub const DEPENDENCY_NOT_HEALTHY: &str = "DependencyNotHealthy";
    pub const NEW_VERSION: &str = "NewVersion";
    pub const PREVIEW_NOT_AVAILABLE: &str = "PreviewNotAvailable";
    pub const PREVIEW_HEALTH_PENDING: &str = "PreviewHealthPending";
    pub const PREVIEW_UNHEALTHY: &str = "PreviewUnhealthy";
    pub const READINESS_TIMEOUT: &str = "ReadinessTimeout";
    pub const HEALTH_CHECK_FAILED: &str = "HealthCheckFailed";
    pub const ABORT_REQUESTED: &str = "AbortRequested";
    pub const SPEC_REVERTED: &str = "SpecReverted";
    pub const MANUAL_PROMOTION: &str = "ManualPromotion";
    pub const PREVIEW_HEALTHY: &str = "PreviewHealthy";
    pub const PROMOTION_REQUESTED: &str = "PromotionRequested";
    pub const OBSERVING: &str = "Observing";
    pub const OBSERVATION_FAILED: &str = "ObservationFailed";
    pub const SCALE_DOWN_DELAY_PASSED: &str = "ScaleDownDelayPassed";
    pub const ROLLBACK_REQUESTED: &str = "RollbackRequested";
    pub const CASCADE_ROLLBACK: &str = "CascadeRollback";
    pub const DEPENDENTS_ROLLING_BACK: &str = "DependentsRollingBack";
    pub const OLD_COLOR_DOWN: &str = "OldColorDown";
    pub const NO_PREVIOUS_VERSION: &str = "NoPreviousVersion";
    pub const VERSION_FAILED: &str = "VersionFailed";
    pub const FIRST_VERSION: &str = "FirstVersion";
    pub const ANALYSIS_FAILED: &str = "AnalysisFailed";
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
            Self::Abort | Self::Rollback | Self::ScaleUpOld | Self::Held
        )
    }
}

/// A user's request, read from the FinService's annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Promote,
    Abort,
    Rollback { cascade: bool },
}

/// Reads the request annotations; rollback wins over abort over promote, since it is the
/// most conservative.
pub fn request_from_annotations(annotations: &BTreeMap<String, String>) -> Option<Request> {
    if let Some(mode) = annotations.get(ROLLBACK_ANNOTATION) {
        match mode.as_str() {
            "cascade" => return Some(Request::Rollback { cascade: true }),
            "single" | "true" => return Some(Request::Rollback { cascade: false }),
            _ => {}
        }
    }
    if annotations
        .get(ABORT_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        return Some(Request::Abort);
    }
    if annotations
        .get(PROMOTE_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        return Some(Request::Promote);
    }
    None
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
        }
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
    }

    /// Starts a rollback of this service (not counting cascades from others): `Some`
    /// with whether it cascades. The edge keeps it in the status until the switch back,
    /// so that dependents rolling back first see it.
    pub fn rollback_trigger(&self, now: i64) -> Option<bool> {
        if let Some(Request::Rollback { cascade }) = self.request {
            // A rollback asked for during a preview is an abort: nothing new is live.
            return (!self.held() && self.preview.is_none()).then_some(cascade);
        }
        (self.live_is_spec() && self.observing(now) && self.window.failed()).then_some(true)
    }
}

/// The next step of one service and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub step: Step,
    pub reason: &'static str,
    pub message: String,
}

impl Decision {
    fn new(step: Step, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            step,
            reason,
            message: message.into(),
        }
    }

    /// The conditions this decision reports: Progressing and Degraded (Ready and
    /// DependenciesReady stay with the workload's reconciler).
    pub fn conditions(&self) -> Vec<Desired> {
        use conditions::types::{DEGRADED, PROGRESSING};
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
            Step::Abort | Step::Held | Step::Rollback | Step::ScaleUpOld | Step::WaitForDependents
        );
        vec![
            Desired::new(PROGRESSING, progressing, self.reason, self.message.clone()),
            Desired::new(DEGRADED, degraded, self.reason, self.message.clone()),
        ]
    }
}

/// The services that roll back because of `root`: `root` itself and, with `cascade`,
/// every transitive dependent whose live version went live after `root`'s did.
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
            let after = observed
                .get(&dependent)
                .and_then(|o| o.active.as_ref())
                .is_some_and(|a| a.since > root_since);
            // A dependent already rolled back by this cascade stays in the set (its live
            // since moved to the rollback) and is then recognised as done.
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
    let mut rolling_back: BTreeMap<String, &'static str> = BTreeMap::new();
    let mut members: Vec<BTreeSet<String>> = Vec::new();
    for (name, o) in observed {
        if let Some(cascade) = o.rollback_trigger(now) {
            let set = rollback_set(graph, observed, name, cascade);
            for member in &set {
                let why = if member == name {
                    if o.request.is_some() {
                        reason::ROLLBACK_REQUESTED
                    } else if o.window.failed_by_traffic_only() {
                        reason::ANALYSIS_FAILED
                    } else {
                        reason::OBSERVATION_FAILED
                    }
                } else {
                    reason::CASCADE_ROLLBACK
                };
                rolling_back.entry(member.clone()).or_insert(why);
            }
            members.push(set);
        }
    }
    let done = |s: &str| observed.get(s).is_none_or(Observed::rolled_away);
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
            let decision = if let Some(why) = rolling_back.get(name).filter(|_| !done(name)) {
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
                        reason::DEPENDENTS_ROLLING_BACK,
                        format!(
                            "waiting for {} to roll back first",
                            join(waiting.iter().map(|s| s.as_str()))
                        ),
                    )
                } else {
                    rollback_step(o, why)
                }
            } else {
                decide_one(graph, observed, name, o, now)
            };
            Some((name.to_owned(), decision))
        })
        .collect()
}

fn rollback_step(o: &Observed, why: &'static str) -> Decision {
    match (&o.previous, o.previous_up) {
        (Some(p), true) => Decision::new(
            Step::Rollback,
            why,
            format!("switching back to {} ({})", p.version, p.color.as_str()),
        ),
        (Some(p), false) => Decision::new(
            Step::ScaleUpOld,
            reason::OLD_COLOR_DOWN,
            format!(
                "scaling {} ({}) back up before switching to it",
                p.version,
                p.color.as_str()
            ),
        ),
        (None, _) => Decision::new(
            Step::Held,
            reason::NO_PREVIOUS_VERSION,
            "nothing to roll back to",
        ),
    }
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
            reason::VERSION_FAILED,
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
            reason::ABORT_REQUESTED
        } else {
            reason::SPEC_REVERTED
        };
        return Decision::new(Step::Abort, why, format!("aborting preview {}", p.version));
    }
    let Some(active) = &o.active else {
        return match unhealthy_dependencies(graph, observed, name, now) {
            Some(d) => d,
            None => Decision::new(
                Step::DeployFirst,
                reason::FIRST_VERSION,
                format!("deploying {}", o.spec_version),
            ),
        };
    };
    if o.live_is_spec() {
        if o.observing(now) {
            return Decision::new(
                Step::Observe,
                reason::OBSERVING,
                format!("watching {} after its promotion", active.version),
            );
        }
        let delay = o.timing.scale_down_delay.max(o.timing.observation_window);
        if o.previous_up && now >= active.since.saturating_add(delay) {
            return Decision::new(
                Step::ScaleDownOld,
                reason::SCALE_DOWN_DELAY_PASSED,
                format!("scaling {} down", active.color.other().as_str()),
            );
        }
        return Decision::new(
            Step::Steady,
            reason::UP_TO_DATE,
            format!("{} is live", active.version),
        );
    }
    // A new version: nothing happens while a dependency is not healthy.
    if let Some(wait) = unhealthy_dependencies(graph, observed, name, now) {
        return wait;
    }
    let Some(preview) = &o.preview else {
        return Decision::new(
            Step::DeployPreview,
            reason::NEW_VERSION,
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
                reason::READINESS_TIMEOUT,
                format!("{} did not become available in time", preview.version),
            )
        } else {
            Decision::new(
                Step::AwaitPreview,
                reason::PREVIEW_NOT_AVAILABLE,
                format!("waiting for {} to become available", preview.version),
            )
        };
    }
    if preview.analysis == Verdict::Failed {
        return Decision::new(
            Step::Abort,
            reason::ANALYSIS_FAILED,
            format!(
                "{} failed its traffic analysis (see status.analysis)",
                preview.version
            ),
        );
    }
    match preview.healthy {
        None => Decision::new(
            Step::AwaitPreview,
            reason::PREVIEW_HEALTH_PENDING,
            format!("probing {}'s health", preview.version),
        ),
        Some(false) if timed_out => Decision::new(
            Step::Abort,
            reason::HEALTH_CHECK_FAILED,
            format!("{} did not become healthy in time", preview.version),
        ),
        Some(false) => Decision::new(
            Step::AwaitPreview,
            reason::PREVIEW_UNHEALTHY,
            format!("{} is not healthy yet", preview.version),
        ),
        Some(true) if o.auto_promote => Decision::new(
            Step::Promote,
            reason::PREVIEW_HEALTHY,
            format!("promoting {}", preview.version),
        ),
        Some(true) if o.request == Some(Request::Promote) => Decision::new(
            Step::Promote,
            reason::PROMOTION_REQUESTED,
            format!("promoting {}", preview.version),
        ),
        Some(true) => Decision::new(
            Step::AwaitPromotion,
            reason::MANUAL_PROMOTION,
            format!(
                "{} is healthy; promote with `kubectl finflow promote {name}`",
                preview.version
            ),
        ),
    }
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
            reason::DEPENDENCY_NOT_HEALTHY,
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

/// Applies a step to the observed state the way the controller's writes would, as seen
/// on the next observation. Used by the scenario tests and documentation of each step's
/// effect; `now` is the step's time.
pub fn apply(o: &mut Observed, step: Step, now: i64) {
    match step {
        Step::DeployFirst => {
            o.active = Some(Live {
                color: Color::Blue,
                version: o.spec_version.clone(),
                since: now,
            });
            o.active_ready = false;
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
