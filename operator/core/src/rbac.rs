//! Every permission the operator needs, in one place.
//!
//! `crdgen` renders [`cluster_role`] to `operator/rbac.yaml`, the file the chart uses;
//! a test fails when that file is stale. When a reconciler starts touching a new kind,
//! the rule is added here, next to the others, and nowhere else.

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Name of the ClusterRole (and of the operator's ServiceAccount in the chart).
pub const NAME: &str = "finflow-operator";

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..PolicyRule::default()
    }
}

/// What the operator reads and writes. Server-side apply needs `create` as well as
/// `patch` because an apply may create the object.
pub fn rules() -> Vec<PolicyRule> {
    const OWN: [&str; 6] = ["get", "list", "watch", "create", "patch", "delete"];
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
        // precondition, never patched.
        rule(
            "coordination.k8s.io",
            &["leases"],
            &["get", "create", "update"],
        ),
        // The injection webhook's configuration: the chart creates it, the operator
        // patches its caBundle.
        rule(
            "admissionregistration.k8s.io",
            &["mutatingwebhookconfigurations"],
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
        rules().iter().any(|r| {
            r.api_groups
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
    fn the_leader_lease_can_be_created_and_replaced_but_not_patched() {
        for verb in ["get", "create", "update"] {
            assert!(allows("coordination.k8s.io", "leases", verb), "{verb}");
        }
        assert!(!allows("coordination.k8s.io", "leases", "patch"));
    }

    #[test]
    fn the_webhook_configuration_can_be_patched_but_not_created() {
        let mwc = (
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
        );
        assert!(allows(mwc.0, mwc.1, "get") && allows(mwc.0, mwc.1, "patch"));
        assert!(!allows(mwc.0, mwc.1, "create"));
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
