//! What every owned object shares: names, labels, owner references, and the rule that
//! decides whether an object must be written at all.
//!
//! Writes are server-side applies of the whole desired object. To keep a reconcile that
//! changes nothing from writing anything, each desired object carries a hash of itself
//! ([`SPEC_HASH`]); the reconciler reads the current object and applies only when it is
//! missing, its hash differs (the desired state changed, including a field removed), or a
//! field the operator sets has been changed by someone else ([`contains`]).
//!
//! It writes only what it controls: an object of the same name that something else
//! made ([`held_by_another`]) is left as it is and reported, never taken over.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Field manager of every write.
pub const FIELD_MANAGER: &str = "finflow-operator";
/// Annotation holding the hash of the desired object that was last applied.
pub const SPEC_HASH: &str = "finflow.dev/spec-hash";
/// Label naming the custom resource an object belongs to.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// Label naming the kind of component (`app`, `rabbitmq`, `redis`, ...).
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";

/// Labels shared by everything the operator creates for `instance`.
pub fn labels(instance: &str, component: &str) -> BTreeMap<String, String> {
    [
        (NAME_LABEL, component),
        (INSTANCE_LABEL, instance),
        (MANAGED_BY_LABEL, FIELD_MANAGER),
        (PART_OF_LABEL, "finflow"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// `selector` narrowed to the pods this operator made, for a Service: another release of
/// the same instance name (a Helm chart's `app.kubernetes.io/name` and `instance` are
/// the same labels) would otherwise share its traffic. A workload's own selector stays as
/// it was written: it cannot change.
pub fn selecting_ours(mut selector: BTreeMap<String, String>) -> BTreeMap<String, String> {
    selector.insert(MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned());
    selector
}

/// The controller owner reference to `owner`, so that deleting it deletes what it owns.
pub fn owner_reference<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    owner.controller_owner_ref(&())
}

/// Metadata of an object owned by `owner`, in its namespace.
pub fn owned_meta<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: impl Into<String>,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: owner.namespace(),
        labels: Some(labels),
        owner_references: owner_reference(owner).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// Who else holds `current`, the object of the desired object's name, when it is not
/// the owner `desired` names as its controller: `None` when it does not exist yet or is
/// ours to write. A forced apply would take over every field the operator sets, so a
/// FinService named like a Service someone made by hand would send that Service's
/// traffic to its own pods, and one named like another release's Deployment would run
/// its image there.
pub fn held_by_another<K: Resource>(desired: &K, current: Option<&K>) -> Option<String> {
    let current = current?;
    let controller = |meta: &ObjectMeta| {
        meta.owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true))
            .cloned()
    };
    let ours = controller(desired.meta());
    let theirs = controller(current.meta());
    if ours.as_ref().map(|r| &r.uid) == theirs.as_ref().map(|r| &r.uid) {
        return None;
    }
    Some(match theirs {
        Some(r) => format!("controlled by {}/{}", r.kind, r.name),
        None => "controlled by no one (made outside the operator)".to_owned(),
    })
}

/// Whether `owner` (by its uid) is `object`'s controller.
pub fn controlled_by<K: Resource, O: Resource>(object: &K, owner: &O) -> bool {
    let Some(uid) = owner.meta().uid.as_deref() else {
        return false;
    };
    object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// Short, stable hash of anything serializable (hex of the first 8 bytes of SHA-256).
pub fn hash<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    Sha256::digest(&bytes)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `object` with [`SPEC_HASH`] set to the hash of the rest of it.
pub fn with_spec_hash<K: Resource + Serialize>(mut object: K) -> K {
    let annotations = &mut object.meta_mut().annotations;
    if let Some(a) = annotations.as_mut() {
        a.remove(SPEC_HASH);
        if a.is_empty() {
            *annotations = None;
        }
    }
    let h = hash(&object);
    object.annotations_mut().insert(SPEC_HASH.to_owned(), h);
    object
}

/// Whether `desired` must be applied, given the object currently in the cluster.
pub fn needs_apply<K: Resource + Serialize>(desired: &K, current: Option<&K>) -> bool {
    let Some(current) = current else {
        return true;
    };
    if desired.annotations().get(SPEC_HASH) != current.annotations().get(SPEC_HASH) {
        return true;
    }
    let (Ok(d), Ok(c)) = (serde_json::to_value(desired), serde_json::to_value(current)) else {
        return true;
    };
    !contains(&c, &d)
}

/// Whether `actual` holds everything `expected` says, as the API server returns it.
///
/// Fields the server added (defaults, status, other managers' fields) are ignored.
/// A zero value (`""`, `0`, `false`, `null`, empty list or map) matches a missing field,
/// because the server omits them. `resources` is skipped: the server rewrites quantities
/// into canonical form (`0.5` becomes `500m`), and a change there is caught by the hash.
pub fn contains(actual: &Value, expected: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e.iter().all(|(k, ev)| {
            k == "resources"
                || match a.get(k) {
                    Some(av) => contains(av, ev),
                    None => is_zero(ev),
                }
        }),
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(ev, av)| contains(av, ev))
        }
        (e, Value::Null) => is_zero(e),
        (e, a) => e == a,
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_i64() == Some(0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_zero),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use serde_json::json;

    fn config_map(data: &[(&str, &str)]) -> ConfigMap {
        with_spec_hash(ConfigMap {
            metadata: ObjectMeta {
                name: Some("c".into()),
                ..ObjectMeta::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ConfigMap::default()
        })
    }

    fn owned_by(uid: &str, kind: &str, name: &str) -> ConfigMap {
        let mut c = config_map(&[("a", "1")]);
        c.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "finflow.dev/v1alpha1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        c
    }

    #[test]
    fn a_missing_object_or_one_the_same_owner_controls_is_ours_to_write() {
        let desired = owned_by("uid-ledger", "FinService", "ledger");
        assert_eq!(held_by_another(&desired, None), None);
        let mut current = owned_by("uid-ledger", "FinService", "ledger");
        current.data = Some([("a".to_owned(), "changed".to_owned())].into());
        assert_eq!(held_by_another(&desired, Some(&current)), None);
    }

    #[test]
    fn an_object_made_by_hand_or_controlled_by_another_is_not_taken_over() {
        let desired = owned_by("uid-ledger", "FinService", "ledger");
        let by_hand = config_map(&[("a", "1")]);
        assert_eq!(
            held_by_another(&desired, Some(&by_hand)).as_deref(),
            Some("controlled by no one (made outside the operator)")
        );
        // Same name, same kind of owner, but another object: a FinService deleted and
        // made again while its old objects wait for the garbage collector.
        let earlier = owned_by("uid-old-ledger", "FinService", "ledger");
        assert_eq!(
            held_by_another(&desired, Some(&earlier)).as_deref(),
            Some("controlled by FinService/ledger")
        );
        let mut helm = owned_by("uid-x", "HelmRelease", "db");
        helm.metadata.owner_references.as_mut().unwrap()[0].controller = None;
        assert!(held_by_another(&desired, Some(&helm)).is_some());
    }

    #[test]
    fn a_missing_object_must_be_applied() {
        assert!(needs_apply(&config_map(&[("a", "1")]), None));
    }

    #[test]
    fn an_object_as_applied_needs_nothing() {
        let desired = config_map(&[("a", "1")]);
        let mut current = desired.clone();
        current.metadata.resource_version = Some("42".into());
        current
            .annotations_mut()
            .insert("someone/else".into(), "x".into());
        assert!(!needs_apply(&desired, Some(&current)));
    }

    #[test]
    fn a_removed_key_changes_the_hash_and_is_applied() {
        let old = config_map(&[("a", "1"), ("b", "2")]);
        let new = config_map(&[("a", "1")]);
        assert!(needs_apply(&new, Some(&old)));
    }

    #[test]
    fn a_field_changed_by_someone_else_is_applied_back() {
        let desired = config_map(&[("a", "1")]);
        let mut current = desired.clone();
        current.data = Some([("a".to_owned(), "tampered".to_owned())].into());
        assert!(needs_apply(&desired, Some(&current)));
    }

    #[test]
    fn server_defaults_and_omitted_zero_values_are_not_drift() {
        let expected = json!({"spec": {"replicas": 0, "paused": false, "ports": [{"port": 80}], "resources": {"cpu": "0.5"}}});
        let actual = json!({"spec": {"ports": [{"port": 80, "protocol": "TCP"}], "resources": {"cpu": "500m"}, "revisionHistoryLimit": 10}});
        assert!(contains(&actual, &expected));
        assert!(!contains(&json!({"spec": {"ports": []}}), &expected));
    }

    #[test]
    fn the_hash_does_not_depend_on_the_previous_hash() {
        let a = config_map(&[("a", "1")]);
        let again = with_spec_hash(a.clone());
        assert_eq!(a, again);
    }
}
