//! Every permission the operator needs, in one place.
//!
//! `crdgen` renders [`cluster_role`] to `operator/rbac.yaml`, the file the chart uses;
//! a test fails when that file is stale. When a reconciler starts touching a new kind,
//! the rule is added here, next to the others, and nowhere else.

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Name of the ClusterRole (and of the operator's ServiceAccount in the chart).
pub const NAME: &str = "finflow-operator";
/// The leader-election Lease, in the operator's namespace: the only one it may read or
/// replace.
pub const LEASE_NAME: &str = "finflow-operator";
/// The MutatingWebhookConfiguration the chart renders: the only one the operator may
/// read or patch (its caBundle).
pub const WEBHOOK_CONFIGURATION_NAME: &str = "finflow-operator";

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..PolicyRule::default()
    }
}

/// `rule` for the objects named `names` only. Kubernetes cannot limit `create` by
/// name (the object has none until it exists), so such a rule never carries it.
fn named(group: &str, resources: &[&str], names: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        resource_names: Some(names.iter().map(|n| (*n).to_owned()).collect()),
        ..rule(group, resources, verbs)
    }
}

/// What the operator reads and writes, and nothing more: the token is powerful (it
/// creates Deployments in any namespace), so a stolen one must not also take over the
/// control plane's leader Leases or rewire another webhook. Server-side apply needs
/// `create` as well as `patch` because an apply may create the object. Nothing owned
/// is deleted by the operator (garbage collection removes it with its owner), so no
/// `delete` but on the volumes a MessageQueue cleanup removes.
pub fn rules() -> Vec<PolicyRule> {
    const OWN: [&str; 5] = ["get", "list", "watch", "create", "patch"];
    vec![
        // The custom resources: watched, finalized (metadata patch) and given a status.
        rule(
            "finflow.dev",
            &["finservices", "messagequeues", "rediscaches"],
            &["get", "list", "watch", "patch", "update"],
        ),
        rule(
            "finflow.dev",
            &[
                "finservices/status",
                "messagequeues/status",
                "rediscaches/status",
            ],
            &["get", "patch", "update"],
        ),
        // Owner references with blockOwnerDeletion need update on the owner's finalizers.
        rule(
            "finflow.dev",
            &[
                "finservices/finalizers",
                "messagequeues/finalizers",
                "rediscaches/finalizers",
            ],
            &["update"],
        ),
        // Owned workloads and their plumbing.
        rule("apps", &["deployments", "statefulsets"], &OWN),
        rule("", &["services", "configmaps", "serviceaccounts"], &OWN),
        // Credentials: generated once, read before anything is written.
        rule("", &["secrets"], &OWN),
        rule("batch", &["jobs"], &OWN),
        // Rollouts: pods of each color are labelled with their role (watched,
        // so a new pod learns it at once), and `/health` is probed through the API
        // server's service proxy.
        rule("", &["pods"], &["get", "list", "watch", "patch"]),
        rule("", &["services/proxy"], &["get"]),
        // Traffic analysis: the sidecars' metrics of a version's pods, through the pod
        // proxy on the sidecar's admin port.
        rule("", &["pods/proxy"], &["get"]),
        // MessageQueue cleanup deletes its volumes when asked not to retain them.
        rule("", &["persistentvolumeclaims"], &["get", "list", "delete"]),
        // kube-runtime's event recorder creates events and patches repeated ones.
        rule("events.k8s.io", &["events"], &["create", "patch"]),
        // Leader election: the Lease is created, then replaced with a resourceVersion
        // precondition, never patched; only the operator's own is read or replaced.
        rule("coordination.k8s.io", &["leases"], &["create"]),
        named(
            "coordination.k8s.io",
            &["leases"],
            &[LEASE_NAME],
            &["get", "update"],
        ),
        // The injection webhook's configuration: the chart creates it, the operator
        // patches its caBundle.
        named(
            "admissionregistration.k8s.io",
            &["mutatingwebhookconfigurations"],
            &[WEBHOOK_CONFIGURATION_NAME],
            &["get", "patch"],
        ),
    ]
}

/// The ClusterRole bound to the operator's ServiceAccount.
pub fn cluster_role() -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(NAME.to_owned()),
            labels: Some(
                [("app.kubernetes.io/name".to_owned(), NAME.to_owned())]
                    .into_iter()
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        rules: Some(rules()),
        ..ClusterRole::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(group: &str, resource: &str, verb: &str) -> bool {
        allows_on(group, resource, None, verb)
    }

    /// Whether a rule allows `verb` on `resource`, on the object `name` (`None`: any
    /// object, as a `create` or `list` asks).
    fn allows_on(group: &str, resource: &str, name: Option<&str>, verb: &str) -> bool {
        rules().iter().any(|r| {
            let names = r.resource_names.as_deref().unwrap_or_default();
            (names.is_empty() || name.is_some_and(|n| names.iter().any(|x| x == n)))
                && r.api_groups
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|g| g == group)
                && r.resources
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|x| x == resource)
                && r.verbs.iter().any(|v| v == verb)
        })
    }

    #[test]
    fn server_side_apply_of_every_owned_kind_is_allowed() {
        for (group, resource) in [
            ("apps", "deployments"),
            ("apps", "statefulsets"),
            ("", "services"),
            ("", "configmaps"),
            ("", "serviceaccounts"),
            ("", "secrets"),
            ("batch", "jobs"),
        ] {
            for verb in ["get", "create", "patch"] {
                assert!(allows(group, resource, verb), "{verb} {group}/{resource}");
            }
        }
    }

    #[test]
    fn only_the_operator_s_own_lease_can_be_read_or_replaced_and_none_patched() {
        let lease = ("coordination.k8s.io", "leases");
        assert!(allows_on(lease.0, lease.1, None, "create"));
        for verb in ["get", "update"] {
            assert!(
                allows_on(lease.0, lease.1, Some(LEASE_NAME), verb),
                "{verb}"
            );
            // The control plane's leader Leases, say, in kube-system.
            assert!(!allows_on(
                lease.0,
                lease.1,
                Some("kube-controller-manager"),
                verb
            ));
            assert!(!allows_on(lease.0, lease.1, None, verb), "{verb} on any");
        }
        assert!(!allows_on(lease.0, lease.1, Some(LEASE_NAME), "patch"));
    }

    #[test]
    fn only_the_chart_s_webhook_configuration_can_be_patched_and_none_created() {
        let mwc = (
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
        );
        let own = Some(WEBHOOK_CONFIGURATION_NAME);
        assert!(allows_on(mwc.0, mwc.1, own, "get") && allows_on(mwc.0, mwc.1, own, "patch"));
        assert!(!allows_on(mwc.0, mwc.1, Some("another-webhook"), "patch"));
        assert!(!allows_on(mwc.0, mwc.1, None, "list"));
        assert!(!allows_on(mwc.0, mwc.1, None, "create"));
    }

    #[test]
    fn nothing_is_deleted_but_a_message_queue_s_volumes() {
        for r in rules() {
            if r.verbs.iter().any(|v| v == "delete") {
                assert_eq!(
                    r.resources.as_deref(),
                    Some(&["persistentvolumeclaims".to_owned()][..])
                );
            }
        }
        assert!(allows("", "persistentvolumeclaims", "delete"));
    }

    #[test]
    fn statuses_and_events_can_be_written() {
        assert!(allows("finflow.dev", "finservices/status", "patch"));
        assert!(allows("finflow.dev", "messagequeues/status", "patch"));
        assert!(allows("finflow.dev", "rediscaches/status", "patch"));
        assert!(allows("events.k8s.io", "events", "create"));
    }

    #[test]
    fn nothing_is_granted_on_everything() {
        for r in rules() {
            assert!(!r.verbs.iter().any(|v| v == "*"));
            assert!(!r.resources.unwrap_or_default().iter().any(|x| x == "*"));
        }
    }
}
