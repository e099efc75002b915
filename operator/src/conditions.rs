//! Status conditions, following the Kubernetes API conventions.
//!
//! A condition's `lastTransitionTime` says when its *status* last changed, so [`merge`]
//! keeps the old time whenever the status stays the same, even if the reason or message
//! moves on. That is also what makes an unchanged reconcile produce an identical status,
//! and so no status write at all.

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
