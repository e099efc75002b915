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

/// Condition types.
pub mod types {
    /// The workload runs the desired version with every replica ready.
    pub const READY: &str = "Ready";
    /// The workload is moving towards the desired state.
    pub const PROGRESSING: &str = "Progressing";
    /// The workload failed to reach the desired state in time.
    pub const DEGRADED: &str = "Degraded";
    /// Everything the FinService depends on exists and is Ready.
    pub const DEPENDENCIES_READY: &str = "DependenciesReady";
    /// The MessageQueue's exchanges, queues and bindings are declared.
    pub const TOPOLOGY_DECLARED: &str = "TopologyDeclared";
    /// kstatus: the controller is moving the resource towards its spec.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: the resource cannot reach its spec until someone changes something.
    pub const STALLED: &str = "Stalled";
}

/// Condition reasons (CamelCase, as the conventions ask).
pub mod reasons {
    pub const DEPENDENCIES_READY: &str = "DependenciesReady";
    pub const DEPENDENCY_MISSING: &str = "DependencyMissing";
    pub const DEPENDENCY_NOT_READY: &str = "DependencyNotReady";
    pub const WAITING_FOR_DEPENDENCIES: &str = "WaitingForDependencies";
    pub const ROLLING_OUT: &str = "RollingOut";
    pub const ROLLED_OUT: &str = "RolledOut";
    pub const REPLICAS_READY: &str = "ReplicasReady";
    pub const REPLICAS_NOT_READY: &str = "ReplicasNotReady";
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    pub const AS_EXPECTED: &str = "AsExpected";
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    pub const WAITING_FOR_BROKER: &str = "WaitingForBroker";
    pub const DECLARING: &str = "Declaring";
    pub const DECLARED: &str = "Declared";
    pub const DECLARATION_FAILED: &str = "DeclarationFailed";
    pub const CREDENTIALS_INCOMPLETE: &str = "CredentialsIncomplete";
    /// Reconciling=False: nothing left to do.
    pub const RECONCILED: &str = "Reconciled";
    /// The API server refused to apply an object.
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// A reconcile failed otherwise (a read, a status write, no answer).
    pub const RECONCILE_FAILED: &str = "ReconcileFailed";
}

/// `status` values.
pub const TRUE: &str = "True";
pub const FALSE: &str = "False";
pub const UNKNOWN: &str = "Unknown";

/// A condition as a reconciler decides it, before times and generations are filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status: if status { TRUE } else { FALSE },
            reason,
            message: message.into(),
        }
    }

    pub fn unknown(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
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
            let previous = current.iter().find(|c| c.type_ == d.type_);
            let last_transition_time = match previous {
                Some(p) if p.status == d.status => p.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: d.type_.to_owned(),
                status: d.status.to_owned(),
                reason: d.reason.to_owned(),
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
            Some(d) => Desired::new(types::RECONCILING, true, d.reason, &d.message),
            None => Desired::new(types::RECONCILING, false, reasons::RECONCILED, ""),
        },
        match degraded {
            Some(d) => Desired::new(types::STALLED, true, d.reason, &d.message),
            None => Desired::new(types::STALLED, false, reasons::AS_EXPECTED, ""),
        },
    ]
}

/// A reconcile that failed, as its resource's status reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Whether retrying can succeed with nothing changed (a timeout, an overloaded
    /// server); otherwise the resource is stalled until someone changes something.
    pub transient: bool,
    /// [`reasons::APPLY_FAILED`] or [`reasons::RECONCILE_FAILED`].
    pub reason: &'static str,
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
        Desired::new(types::READY, false, reason, message),
        if failure.transient {
            Desired::new(types::RECONCILING, true, reason, message)
        } else {
            Desired::new(types::RECONCILING, false, reasons::RECONCILED, "")
        },
        Desired::new(types::STALLED, !failure.transient, reason, message),
    ];
    let mut others: Vec<Condition> = current
        .iter()
        .filter(|c| decided.iter().all(|d| d.type_ != c.type_))
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
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
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
        Desired::new(types::READY, status, reasons::REPLICAS_READY, message)
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

    fn status_of(conditions: &[Desired; 2]) -> [(&'static str, &'static str); 2] {
        conditions.each_ref().map(|d| (d.type_, d.status))
    }

    #[test]
    fn a_ready_resource_is_neither_reconciling_nor_stalled() {
        let ready = ready(true, "2/2");
        let progressing = Desired::new(types::PROGRESSING, false, reasons::ROLLED_OUT, "");
        let degraded = Desired::new(types::DEGRADED, false, reasons::AS_EXPECTED, "");
        let pair = kstatus(&ready, Some(&progressing), Some(&degraded));
        assert_eq!(
            status_of(&pair),
            [(types::RECONCILING, FALSE), (types::STALLED, FALSE)]
        );
    }

    #[test]
    fn a_rollout_in_progress_is_reconciling_with_its_message() {
        let progressing = Desired::new(types::PROGRESSING, true, "PreviewHealthy", "promoting 2");
        let [reconciling, stalled] = kstatus(&ready(false, "1/2"), Some(&progressing), None);
        assert_eq!(
            (
                reconciling.status,
                reconciling.reason,
                reconciling.message.as_str()
            ),
            (TRUE, "PreviewHealthy", "promoting 2")
        );
        assert_eq!(stalled.status, FALSE);
    }

    #[test]
    fn a_resource_waiting_without_progress_is_still_reconciling() {
        let waiting = Desired::new(
            types::READY,
            false,
            reasons::WAITING_FOR_DEPENDENCIES,
            "held until a is ready",
        );
        let [reconciling, _] = kstatus(&waiting, None, None);
        assert_eq!(
            (reconciling.status, reconciling.reason),
            (TRUE, reasons::WAITING_FOR_DEPENDENCIES)
        );
    }

    #[test]
    fn a_degraded_resource_is_stalled_and_reconciling_only_while_progressing() {
        let degraded = Desired::new(types::DEGRADED, true, "VersionFailed", "2.0.0 failed");
        let [reconciling, stalled] = kstatus(&ready(false, ""), None, Some(&degraded));
        assert_eq!(reconciling.status, FALSE, "held: nothing moves");
        assert_eq!(
            (stalled.status, stalled.reason, stalled.message.as_str()),
            (TRUE, "VersionFailed", "2.0.0 failed")
        );
        let rolling_back = Desired::new(types::PROGRESSING, true, "CascadeRollback", "back");
        let [reconciling, stalled] =
            kstatus(&ready(false, ""), Some(&rolling_back), Some(&degraded));
        assert_eq!((reconciling.status, stalled.status), (TRUE, TRUE));
    }

    fn refused() -> Failure {
        Failure {
            transient: false,
            reason: reasons::APPLY_FAILED,
            message: "applying Deployment/a-blue: refused".into(),
        }
    }

    fn settled_conditions() -> Vec<Condition> {
        let decided = vec![
            ready(true, "2/2"),
            Desired::new(types::PROGRESSING, false, reasons::ROLLED_OUT, ""),
            Desired::new(types::DEGRADED, false, reasons::AS_EXPECTED, ""),
            Desired::new(types::RECONCILING, false, reasons::RECONCILED, ""),
            Desired::new(types::STALLED, false, reasons::AS_EXPECTED, ""),
        ];
        merge(&[], decided, Some(1), &at(100))
    }

    #[test]
    fn a_refused_apply_makes_the_resource_stalled_and_not_ready_at_its_generation() {
        let after = after_failure(&settled_conditions(), &refused(), Some(2), &at(200));
        let ready = find(&after, types::READY).unwrap();
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.message.as_str()
            ),
            (
                FALSE,
                reasons::APPLY_FAILED,
                "applying Deployment/a-blue: refused"
            )
        );
        assert_eq!(ready.observed_generation, Some(2));
        assert_eq!(ready.last_transition_time, at(200));
        let stalled = find(&after, types::STALLED).unwrap();
        assert_eq!(
            (stalled.status.as_str(), stalled.message.as_str()),
            (TRUE, ready.message.as_str())
        );
        assert!(!is_true(&after, types::RECONCILING));
        assert_eq!(
            types_of(&after),
            ["Ready", "Progressing", "Degraded", "Reconciling", "Stalled"],
            "the other conditions stay, in their place"
        );
        assert_eq!(
            find(&after, types::DEGRADED).unwrap().observed_generation,
            Some(1)
        );
    }

    #[test]
    fn a_transient_failure_is_reconciling_not_stalled() {
        let failure = Failure {
            transient: true,
            reason: reasons::RECONCILE_FAILED,
            message: "etcdserver: request timed out".into(),
        };
        let after = after_failure(&settled_conditions(), &failure, Some(1), &at(200));
        assert!(is_true(&after, types::RECONCILING));
        assert!(!is_true(&after, types::STALLED));
        assert!(!is_true(&after, types::READY));
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
                Desired::new(types::DEGRADED, false, reasons::AS_EXPECTED, ""),
            ],
            None,
            &at(1),
        );
        let second = merge(
            &first,
            vec![Desired::new(
                types::DEGRADED,
                false,
                reasons::AS_EXPECTED,
                "",
            )],
            None,
            &at(2),
        );
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].type_, types::DEGRADED);
        assert_eq!(second[0].last_transition_time, at(1));
    }
}
