//! The committed CRDs pass every check, and each check catches what it is for.

use std::path::{Path, PathBuf};

use finflow_crdcheck::{Problem, check_crd, derived, read_yaml_dir, read_yaml_documents};
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yaml_in(dir: &Path) -> Vec<Value> {
    read_yaml_dir(dir).unwrap()
}

fn examples() -> Vec<Value> {
    yaml_in(&root().join("examples"))
}

fn problems(crd: &Value) -> Vec<Problem> {
    check_crd(crd, derived::FINFLOW, &examples())
}

#[test]
fn every_committed_crd_passes_every_check() {
    let crds = yaml_in(&root().join("crds"));
    assert_eq!(crds.len(), 3, "crds/ holds the three FinFlow CRDs");
    let found: Vec<String> = crds
        .iter()
        .flat_map(problems)
        .map(|p| p.to_string())
        .collect();
    assert!(found.is_empty(), "problems:\n{}", found.join("\n"));
}

#[test]
fn every_example_resource_is_probed_against_its_crd() {
    let kinds: Vec<String> = examples()
        .iter()
        .filter_map(|e| e.get("kind").and_then(Value::as_str).map(str::to_owned))
        .collect();
    for kind in ["FinService", "MessageQueue", "RedisCache"] {
        assert!(kinds.iter().any(|k| k == kind), "examples/ has no {kind}");
    }
}

#[test]
fn the_finservice_crd_that_a_real_api_server_refused_fails_the_check() {
    let text = include_str!("fixtures/finservices-with-invalid-sidecar-default.yaml");
    let crd = &read_yaml_documents(text).unwrap()[0];
    let found = problems(crd);
    assert!(
        found.iter().any(|p| p.path == "spec.sidecar"
            && p.message.contains("schema default")
            && p.message
                .contains("an enabled sidecar needs jwksUri or hs256SecretRef")),
        "the sidecar default was not caught: {found:#?}"
    );
}

/// A one-version CRD of kind `Thing` around a `spec` schema.
fn crd_with_spec(spec: Value) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.example.dev"},
        "spec": {
            "group": "example.dev",
            "names": {"kind": "Thing", "plural": "things"},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {
                "openAPIV3Schema": {"type": "object", "properties": {"spec": spec}}
            }}]
        }
    })
}

fn messages(crd: &Value, derived: &[derived::DerivedField], samples: &[Value]) -> Vec<String> {
    check_crd(crd, derived, samples)
        .into_iter()
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn a_rule_that_does_not_parse_is_a_problem() {
    let crd = crd_with_spec(json!({"type": "string", "maxLength": 10,
        "x-kubernetes-validations": [{"rule": "self.size( > 0"}]}));
    let found = messages(&crd, &[], &[]);
    assert!(
        found.iter().any(|m| m.contains("does not parse")),
        "{found:?}"
    );
}

#[test]
fn a_rule_over_an_unbounded_list_exceeds_the_cost_budget_and_a_bounded_one_does_not() {
    let list = |bounded: bool| {
        let mut node = json!({"type": "array", "items": {"type": "string"},
            "x-kubernetes-validations": [{"rule": "self.all(x, self.exists(y, y == x))"}]});
        if bounded {
            node["maxItems"] = json!(16);
            node["items"]["maxLength"] = json!(64);
        }
        crd_with_spec(json!({"type": "object", "properties": {"names": node}}))
    };
    let unbounded = messages(&list(false), &[], &[]);
    assert!(
        unbounded.iter().any(|m| m.contains("per-rule budget")),
        "{unbounded:?}"
    );
    assert_eq!(messages(&list(true), &[], &[]), Vec::<String>::new());
}

#[test]
fn a_rule_under_an_unbounded_list_is_counted_once_per_item_a_request_can_hold() {
    // Each item's rule is cheap; but 3 MiB of items make the total too dear.
    let crd = crd_with_spec(json!({"type": "object", "properties": {"items": {
        "type": "array",
        "items": {"type": "string",
            "x-kubernetes-validations": [{"rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')"}]}
    }}}));
    let found = messages(&crd, &[], &[]);
    assert!(found.iter().any(|m| m.contains("budget")), "{found:?}");
}

#[test]
fn a_transition_rule_on_an_optional_field_is_a_problem_unless_optional_old_self() {
    let field = |extra: Value| {
        let mut rule = json!({"rule": "self == oldSelf", "message": "immutable"});
        if let (Value::Object(r), Value::Object(e)) = (&mut rule, extra) {
            r.extend(e);
        }
        crd_with_spec(json!({"type": "object", "properties": {"class": {
            "type": "string", "maxLength": 10, "x-kubernetes-validations": [rule]}}}))
    };
    let found = messages(&field(json!({})), &[], &[]);
    assert!(
        found.iter().any(|m| m.contains("transition rule")),
        "{found:?}"
    );
    let optional = messages(&field(json!({"optionalOldSelf": true})), &[], &[]);
    assert_eq!(optional, Vec::<String>::new());
}

#[test]
fn a_default_nested_under_a_rule_is_checked_with_its_own_defaults_filled_in() {
    let crd = crd_with_spec(json!({"type": "object",
        "default": {},
        "properties": {"min": {"type": "integer", "default": 5}, "max": {"type": "integer", "default": 3}},
        "x-kubernetes-validations": [{"rule": "self.min <= self.max", "message": "min above max"}]}));
    let found = messages(&crd, &[], &[]);
    assert!(
        found
            .iter()
            .any(|m| m.contains("schema default") && m.contains("min above max")),
        "{found:?}"
    );
}

#[test]
fn a_field_that_becomes_a_label_value_must_be_limited_to_label_syntax() {
    let fields = [derived::DerivedField {
        kind: "Thing",
        path: &["spec", "version"],
        what: derived::Derived::LabelValue,
    }];
    let sample = json!({"apiVersion": "example.dev/v1", "kind": "Thing",
        "metadata": {"name": "a"}, "spec": {"version": "1.0"}});
    let loose = crd_with_spec(json!({"type": "object", "properties": {
        "version": {"type": "string"}}}));
    let found = messages(&loose, &fields, std::slice::from_ref(&sample));
    assert!(
        found.iter().any(|m| m.contains("not a label value")),
        "{found:?}"
    );
    let strict = crd_with_spec(json!({"type": "object", "properties": {"version": {
        "type": "string", "maxLength": 63,
        "pattern": "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"}}}));
    assert_eq!(messages(&strict, &fields, &[sample]), Vec::<String>::new());
}

#[test]
fn an_example_with_duplicate_list_map_keys_is_refused() {
    let crd = crd_with_spec(json!({"type": "object", "properties": {"env": {
        "type": "array", "maxItems": 8, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
        "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "maxLength": 10}}}}}}));
    let sample = json!({"apiVersion": "example.dev/v1", "kind": "Thing", "metadata": {"name": "a"},
        "spec": {"env": [{"name": "A"}, {"name": "A"}]}});
    let found = messages(&crd, &[], &[sample]);
    assert!(
        found.iter().any(|m| m.contains("Duplicate value")),
        "{found:?}"
    );
}
