//! Status conditions, following the Kubernetes API conventions.
//!
//! A condition's `lastTransitionTime` says when its *status* last changed, so [`merge`]
//! keeps the old time whenever the status stays the same, even if the reason or message
//! moves on. That is also what makes an unchanged reconcile produce an identical status,
//! and so no status write at all.
//!
//! Beside each kind's own conditions every status carries kstatus' `Reconciling` and
//! `Stalled` ([`kstatus`]), the abnormal-true pair that Flux, Argo CD and `kubectl wait`
//! read: Reconciling while the resource moves towards its spec, Stalled while it cannot
//! get there without someone changing something, both False once it is Ready. A
//! reconcile that fails keeps the rest of the status and says so ([`after_failure`]).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Type {
    /// The workload runs the desired version with every replica ready.
    Ready,
    /// The workload is moving towards the desired state.
    Progressing,
    /// The workload failed to reach the desired state in time.
    Degraded,
    /// Everything the FinService depends on exists and is Ready.
    DependenciesReady,
    /// The MessageQueue's exchanges, queues and bindings are declared.
    TopologyDeclared,
    /// kstatus: the controller is moving the resource towards its spec.
    Reconciling,
    /// kstatus: the resource cannot reach its spec until someone changes something.
    Stalled,
}

impl Type {
    /// As the status spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::Progressing => "Progressing",
            Self::Degraded => "Degraded",
            Self::DependenciesReady => "DependenciesReady",
            Self::TopologyDeclared => "TopologyDeclared",
            Self::Reconciling => "Reconciling",
            Self::Stalled => "Stalled",
        }
    }
}

/// Why a condition or an Event says what it says (CamelCase, as the conventions ask).
/// A closed set: only this crate names reasons, each beside the decisions that give
/// them (the rollout engine's in [`crate::rollout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reason(pub(crate) &'static str);

impl Reason {
    /// As conditions and Events spell it.
    pub const fn as_str(self) -> &'static str {
        self.0
    }

    pub const DEPENDENCIES_READY: Self = Self("DependenciesReady");
    pub const DEPENDENCY_MISSING: Self = Self("DependencyMissing");
    pub const DEPENDENCY_NOT_READY: Self = Self("DependencyNotReady");
    pub const WAITING_FOR_DEPENDENCIES: Self = Self("WaitingForDependencies");
    pub const ROLLING_OUT: Self = Self("RollingOut");
    pub const ROLLED_OUT: Self = Self("RolledOut");
    pub const REPLICAS_READY: Self = Self("ReplicasReady");
    pub const REPLICAS_NOT_READY: Self = Self("ReplicasNotReady");
    pub const PROGRESS_DEADLINE_EXCEEDED: Self = Self("ProgressDeadlineExceeded");
    pub const AS_EXPECTED: Self = Self("AsExpected");
    pub const SCALED_TO_ZERO: Self = Self("ScaledToZero");
    pub const WAITING_FOR_BROKER: Self = Self("WaitingForBroker");
    pub const DECLARING: Self = Self("Declaring");
    pub const DECLARED: Self = Self("Declared");
    pub const DECLARATION_FAILED: Self = Self("DeclarationFailed");
    pub const CREDENTIALS_INCOMPLETE: Self = Self("CredentialsIncomplete");
    /// Reconciling=False: nothing left to do.
    pub const RECONCILED: Self = Self("Reconciled");
    /// The API server refused to apply an object.
    pub const APPLY_FAILED: Self = Self("ApplyFailed");
    /// An object the operator would write exists and is not the resource's own.
    pub const NOT_OWNED: Self = Self("ObjectNotOwned");
    /// A reconcile failed otherwise (a read, a status write, no answer).
    pub const RECONCILE_FAILED: Self = Self("ReconcileFailed");
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::fmt::Display for Type {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// A status holds them as strings (`Condition`, Events): compared as they are spelled.
impl PartialEq<Type> for String {
    fn eq(&self, other: &Type) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Reason> for String {
    fn eq(&self, other: &Reason) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Reason> for &str {
    fn eq(&self, other: &Reason) -> bool {
        *self == other.as_str()
    }
}

/// `status` values.
pub const TRUE: &str = "True";
pub const FALSE: &str = "False";
pub const UNKNOWN: &str = "Unknown";

/// A condition as a reconciler decides it, before times and generations are filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub type_: Type,
    pub status: &'static str,
    pub reason: Reason,
    pub message: String,
}

impl Desired {
    pub fn new(type_: Type, status: bool, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: if status { TRUE } else { FALSE },
            reason,
            message: message.into(),
        }
    }

    pub fn unknown(type_: Type, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: UNKNOWN,
            reason,
            message: message.into(),
        }
    }
}

/// The new condition list: one entry per desired condition, in the desired order.
/// `lastTransitionTime` is `now` only for a condition that is new or whose status changed.
pub fn merge(
    current: &[Condition],
    desired: Vec<Desired>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    desired
        .into_iter()
        .map(|d| {
            let previous = current.iter().find(|c| c.type_ == d.type_.as_str());
            let last_transition_time = match previous {
                Some(p) if p.status == d.status => p.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: d.type_.as_str().to_owned(),
                status: d.status.to_owned(),
                reason: d.reason.as_str().to_owned(),
                message: d.message,
                last_transition_time,
                observed_generation: generation,
            }
        })
        .collect()
}

/// kstatus' `Reconciling` and `Stalled`, from the conditions a reconcile decided.
/// Stalled follows `degraded` (a failed version held, a deadline passed, a broken
/// Secret); Reconciling follows `progressing`, and covers a resource that is neither
/// Ready nor stuck (waiting for a dependency), so that nothing short of Ready reads as
/// done. Each carries the reason and message of the condition it follows.
pub fn kstatus(
    ready: &Desired,
    progressing: Option<&Desired>,
    degraded: Option<&Desired>,
) -> [Desired; 2] {
    let progressing = progressing.filter(|d| d.status == TRUE);
    let degraded = degraded.filter(|d| d.status == TRUE);
    let reconciling = match progressing {
        Some(p) => Some(p),
        None if ready.status != TRUE && degraded.is_none() => Some(ready),
        None => None,
    };
    [
        match reconciling {
            Some(d) => Desired::new(Type::Reconciling, true, d.reason, &d.message),
            None => Desired::new(Type::Reconciling, false, Reason::RECONCILED, ""),
        },
        match degraded {
            Some(d) => Desired::new(Type::Stalled, true, d.reason, &d.message),
            None => Desired::new(Type::Stalled, false, Reason::AS_EXPECTED, ""),
        },
    ]
}

/// A reconcile that failed, as its resource's status reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Whether retrying can succeed with nothing changed (a timeout, an overloaded
    /// server); otherwise the resource is stalled until someone changes something.
    pub transient: bool,
    /// [`Reason::APPLY_FAILED`] or [`Reason::RECONCILE_FAILED`].
    pub reason: Reason,
    /// What failed, with the API server's own message.
    pub message: String,
}

impl Failure {
    /// The phase of a resource whose reconcile failed this way: Progressing while a
    /// retry may get past it, Degraded when it cannot.
    pub fn phase(&self) -> crate::crd::Phase {
        if self.transient {
            crate::crd::Phase::Progressing
        } else {
            crate::crd::Phase::Degraded
        }
    }
}

/// The conditions after a failed reconcile: Ready=False and Stalled=True (or
/// Reconciling=True while a transient failure is retried) with the failure's reason
/// and message at `generation`; every other condition stays as it was.
pub fn after_failure(
    current: &[Condition],
    failure: &Failure,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let (reason, message) = (failure.reason, failure.message.as_str());
    let decided = [
        Desired::new(Type::Ready, false, reason, message),
        if failure.transient {
            Desired::new(Type::Reconciling, true, reason, message)
        } else {
            Desired::new(Type::Reconciling, false, Reason::RECONCILED, "")
        },
        Desired::new(Type::Stalled, !failure.transient, reason, message),
    ];
    let mut others: Vec<Condition> = current
        .iter()
        .filter(|c| decided.iter().all(|d| d.type_.as_str() != c.type_))
        .cloned()
        .collect();
    // Ready first and the kstatus pair last, as every reconciler orders them.
    let mut decided = merge(current, decided.into(), generation, now);
    let pair = decided.split_off(1);
    decided.append(&mut others);
    decided.extend(pair);
    decided
}

/// The condition of `type_`, if present.
pub fn find(conditions: &[Condition], type_: Type) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_.as_str())
}

/// Whether the condition of `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: Type) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == TRUE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn ready(status: bool, message: &str) -> Desired {
        Desired::new(Type::Ready, status, Reason::REPLICAS_READY, message)
    }

    #[test]
    fn a_new_condition_gets_the_current_time() {
        let merged = merge(&[], vec![ready(true, "2/2")], Some(3), &at(100));
        assert_eq!(merged[0].last_transition_time, at(100));
        assert_eq!(merged[0].status, TRUE);
        assert_eq!(merged[0].observed_generation, Some(3));
    }

    #[test]
    fn the_transition_time_stays_when_only_the_message_changes() {
        let first = merge(&[], vec![ready(false, "0/2")], Some(1), &at(100));
        let second = merge(&first, vec![ready(false, "1/2")], Some(1), &at(200));
        assert_eq!(second[0].last_transition_time, at(100));
        assert_eq!(second[0].message, "1/2");
    }

    #[test]
    fn the_transition_time_moves_when_the_status_changes() {
        let first = merge(&[], vec![ready(false, "0/2")], Some(1), &at(100));
        let second = merge(&first, vec![ready(true, "2/2")], Some(1), &at(200));
        assert_eq!(second[0].last_transition_time, at(200));
    }

    #[test]
    fn merging_the_same_decision_twice_is_a_fixed_point() {
        let first = merge(&[], vec![ready(true, "2/2")], Some(1), &at(100));
        let second = merge(&first, vec![ready(true, "2/2")], Some(1), &at(500));
        assert_eq!(first, second);
    }

    fn types_of(conditions: &[Condition]) -> Vec<&str> {
        conditions.iter().map(|c| c.type_.as_str()).collect()
    }

    fn status_of(conditions: &[Desired; 2]) -> [(Type, &'static str); 2] {
        conditions.each_ref().map(|d| (d.type_, d.status))
    }

    #[test]
    fn a_ready_resource_is_neither_reconciling_nor_stalled() {
        let ready = ready(true, "2/2");
        let progressing = Desired::new(Type::Progressing, false, Reason::ROLLED_OUT, "");
        let degraded = Desired::new(Type::Degraded, false, Reason::AS_EXPECTED, "");
        let pair = kstatus(&ready, Some(&progressing), Some(&degraded));
        assert_eq!(
            status_of(&pair),
            [(Type::Reconciling, FALSE), (Type::Stalled, FALSE)]
        );
    }

    #[test]
    fn a_rollout_in_progress_is_reconciling_with_its_message() {
        let progressing = Desired::new(
            Type::Progressing,
            true,
            Reason::PREVIEW_HEALTHY,
            "promoting 2",
        );
        let [reconciling, stalled] = kstatus(&ready(false, "1/2"), Some(&progressing), None);
        assert_eq!(
            (
                reconciling.status,
                reconciling.reason,
                reconciling.message.as_str()
            ),
            (TRUE, Reason::PREVIEW_HEALTHY, "promoting 2")
        );
        assert_eq!(stalled.status, FALSE);
    }

    #[test]
    fn a_resource_waiting_without_progress_is_still_reconciling() {
        let waiting = Desired::new(
            Type::Ready,
            false,
            Reason::WAITING_FOR_DEPENDENCIES,
            "held until a is ready",
        );
        let [reconciling, _] = kstatus(&waiting, None, None);
        assert_eq!(
            (reconciling.status, reconciling.reason),
            (TRUE, Reason::WAITING_FOR_DEPENDENCIES)
        );
    }

    #[test]
    fn a_degraded_resource_is_stalled_and_reconciling_only_while_progressing() {
        let degraded = Desired::new(Type::Degraded, true, Reason::VERSION_FAILED, "2.0.0 failed");
        let [reconciling, stalled] = kstatus(&ready(false, ""), None, Some(&degraded));
        assert_eq!(reconciling.status, FALSE, "held: nothing moves");
        assert_eq!(
            (stalled.status, stalled.reason, stalled.message.as_str()),
            (TRUE, Reason::VERSION_FAILED, "2.0.0 failed")
        );
        let rolling_back = Desired::new(Type::Progressing, true, Reason::CASCADE_ROLLBACK, "back");
        let [reconciling, stalled] =
            kstatus(&ready(false, ""), Some(&rolling_back), Some(&degraded));
        assert_eq!((reconciling.status, stalled.status), (TRUE, TRUE));
    }

    fn refused() -> Failure {
        Failure {
            transient: false,
            reason: Reason::APPLY_FAILED,
            message: "applying Deployment/a-blue: refused".into(),
        }
    }

    fn settled_conditions() -> Vec<Condition> {
        let decided = vec![
            ready(true, "2/2"),
            Desired::new(Type::Progressing, false, Reason::ROLLED_OUT, ""),
            Desired::new(Type::Degraded, false, Reason::AS_EXPECTED, ""),
            Desired::new(Type::Reconciling, false, Reason::RECONCILED, ""),
            Desired::new(Type::Stalled, false, Reason::AS_EXPECTED, ""),
        ];
        merge(&[], decided, Some(1), &at(100))
    }

    #[test]
    fn a_refused_apply_makes_the_resource_stalled_and_not_ready_at_its_generation() {
        let after = after_failure(&settled_conditions(), &refused(), Some(2), &at(200));
        let ready = find(&after, Type::Ready).unwrap();
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.message.as_str()
            ),
            (
                FALSE,
                Reason::APPLY_FAILED.as_str(),
                "applying Deployment/a-blue: refused"
            )
        );
        assert_eq!(ready.observed_generation, Some(2));
        assert_eq!(ready.last_transition_time, at(200));
        let stalled = find(&after, Type::Stalled).unwrap();
        assert_eq!(
            (stalled.status.as_str(), stalled.message.as_str()),
            (TRUE, ready.message.as_str())
        );
        assert!(!is_true(&after, Type::Reconciling));
        assert_eq!(
            types_of(&after),
            ["Ready", "Progressing", "Degraded", "Reconciling", "Stalled"],
            "the other conditions stay, in their place"
        );
        assert_eq!(
            find(&after, Type::Degraded).unwrap().observed_generation,
            Some(1)
        );
    }

    #[test]
    fn a_transient_failure_is_reconciling_not_stalled() {
        let failure = Failure {
            transient: true,
            reason: Reason::RECONCILE_FAILED,
            message: "etcdserver: request timed out".into(),
        };
        let after = after_failure(&settled_conditions(), &failure, Some(1), &at(200));
        assert!(is_true(&after, Type::Reconciling));
        assert!(!is_true(&after, Type::Stalled));
        assert!(!is_true(&after, Type::Ready));
    }

    #[test]
    fn the_same_failure_again_changes_nothing() {
        let first = after_failure(&settled_conditions(), &refused(), Some(1), &at(200));
        let second = after_failure(&first, &refused(), Some(1), &at(300));
        assert_eq!(first, second);
    }

    #[test]
    fn conditions_no_longer_decided_are_dropped_and_order_follows_the_decision() {
        let first = merge(
            &[],
            vec![
                ready(true, "2/2"),
                Desired::new(Type::Degraded, false, Reason::AS_EXPECTED, ""),
            ],
            None,
            &at(1),
        );
        let second = merge(
            &first,
            vec![Desired::new(Type::Degraded, false, Reason::AS_EXPECTED, "")],
            None,
            &at(2),
        );
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].type_, Type::Degraded);
        assert_eq!(second[0].last_transition_time, at(1));
    }
}
