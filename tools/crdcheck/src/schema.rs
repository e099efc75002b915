//! The schema walk: rules, defaults and transition rules of every node, and the
//! validation of an object as the API server does it after defaulting.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::cost::{self, Cardinality};
use crate::{Rule, STATIC_ESTIMATED_COST_LIMIT, STATIC_ESTIMATED_CRD_COST_LIMIT};

/// `(path, message)` pairs.
pub type Findings = Vec<(String, String)>;

fn join(path: &str, part: &str) -> String {
    if path.is_empty() {
        part.to_owned()
    } else {
        format!("{path}.{part}")
    }
}

/// The node's rules, compiled; a rule that does not parse is a finding.
fn rules(env: &cel::Env, node: &Value, path: &str, out: &mut Findings) -> Vec<Rule> {
    node.get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entry| match Rule::compile(env, entry) {
            Ok(rule) => Some(rule),
            Err(e) => {
                out.push((path.to_owned(), e));
                None
            }
        })
        .collect()
}

/// The names in a node's `required`.
pub fn required(node: &Value) -> Vec<&str> {
    node.get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// The child schemas of a node: properties, list items and map values, each with the
/// path segment, whether the child is required, and how many of it one node can hold.
fn children(node: &Value) -> Vec<(String, &Value, bool, Cardinality)> {
    let mut out = Vec::new();
    let required = required(node);
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            out.push((
                name.clone(),
                child,
                required.contains(&name.as_str()),
                Cardinality::Bounded(1),
            ));
        }
    }
    if let Some(items) = node.get("items").filter(|v| v.is_object()) {
        out.push(("@items".into(), items, true, cost::max_items(node)));
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        out.push(("@values".into(), values, true, cost::max_items(node)));
    }
    out
}

/// Walks the schema: every rule parses, costs within budget, is not a transition rule
/// on an optional field, and every default passes the rules that apply to it.
pub fn check_schema(env: &Arc<cel::Env>, root: &Value) -> Findings {
    let mut out = Findings::new();
    let mut total: u64 = 0;
    walk(
        env,
        root,
        "",
        Cardinality::Bounded(1),
        true,
        &mut total,
        &mut out,
    );
    if total > STATIC_ESTIMATED_CRD_COST_LIMIT {
        out.push((
            String::new(),
            format!(
                "the estimated cost of all rules, {total}, exceeds the API server's budget for a CRD, {STATIC_ESTIMATED_CRD_COST_LIMIT}: bound lists and strings with maxItems and maxLength"
            ),
        ));
    }
    out
}

fn walk(
    env: &Arc<cel::Env>,
    node: &Value,
    path: &str,
    cardinality: Cardinality,
    present: bool,
    total: &mut u64,
    out: &mut Findings,
) {
    let node_rules = rules(env, node, path, out);
    for rule in &node_rules {
        let cost = cost::rule_cost(node, rule, cardinality);
        *total = total.saturating_add(cost);
        if cost > STATIC_ESTIMATED_COST_LIMIT {
            out.push((
                path.to_owned(),
                format!(
                    "rule `{}` has an estimated cost of {cost} (times the {} it can run per object), over the API server's per-rule budget of {STATIC_ESTIMATED_COST_LIMIT}: bound the lists and strings it reads with maxItems and maxLength",
                    rule.source,
                    cardinality.describe(),
                ),
            ));
        }
        let optional_old_self = node
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|e| {
                e.get("rule").and_then(Value::as_str) == Some(&rule.source)
                    && e.get("optionalOldSelf").and_then(Value::as_bool) == Some(true)
            });
        if rule.transition && !present && !optional_old_self {
            out.push((
                path.to_owned(),
                format!(
                    "transition rule `{}` is on an optional field without a default: the API server skips it when the field is added or removed; put it on the parent, make the field required, or set optionalOldSelf",
                    rule.source
                ),
            ));
        }
    }
    if let Some(default) = node.get("default") {
        let mut value = default.clone();
        apply_defaults(node, &mut value);
        for (p, message) in validate(env, node, &value, path) {
            out.push((
                path.to_owned(),
                format!(
                    "the schema default {} is refused by the API server when the CRD is written: {}: {message}",
                    compact(default),
                    if p.is_empty() { "<root>" } else { p.as_str() }
                ),
            ));
        }
    }
    for (name, child, required, count) in children(node) {
        let child_path = join(path, &name);
        let child_present = required || child.get("default").is_some();
        walk(
            env,
            child,
            &child_path,
            cardinality.times(count, child),
            child_present,
            total,
            out,
        );
    }
}

fn compact(value: &Value) -> String {
    let s = value.to_string();
    if s.chars().count() > 120 {
        format!("{}...", s.chars().take(117).collect::<String>())
    } else {
        s
    }
}

/// Fills in schema defaults as the API server does before validating: a missing
/// property with a `default` gets it, then every present value is defaulted in turn.
pub fn apply_defaults(node: &Value, value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(props) = node.get("properties").and_then(Value::as_object) {
                for (name, child) in props {
                    if !map.contains_key(name)
                        && let Some(default) = child.get("default")
                    {
                        map.insert(name.clone(), default.clone());
                    }
                    if let Some(v) = map.get_mut(name) {
                        apply_defaults(child, v);
                    }
                }
            }
            if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
                let fixed: Vec<&String> = node
                    .get("properties")
                    .and_then(Value::as_object)
                    .map(|p| p.keys().collect())
                    .unwrap_or_default();
                for (k, v) in map.iter_mut() {
                    if !fixed.contains(&k) {
                        apply_defaults(values, v);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = node.get("items") {
                for v in items {
                    apply_defaults(item, v);
                }
            }
        }
        _ => {}
    }
}

/// Defaults then validates a whole object against its CRD's root schema.
pub fn validate_object(env: &Arc<cel::Env>, root: &Value, object: &Value) -> Findings {
    let mut value = object.clone();
    apply_defaults(root, &mut value);
    validate(env, root, &value, "")
}

fn int(node: &Value, key: &str) -> Option<u64> {
    node.get(key).and_then(Value::as_u64)
}

/// What the API server would refuse in `value` under schema `node`: the structural
/// limits FinFlow's CRDs use (lengths, pattern, enum, counts, required, list-map
/// keys) and the node's non-transition rules.
pub fn validate(env: &Arc<cel::Env>, node: &Value, value: &Value, path: &str) -> Findings {
    let mut out = Findings::new();
    if value.is_null() {
        if node.get("nullable").and_then(Value::as_bool) != Some(true) {
            out.push((path.to_owned(), "must not be null".into()));
        }
        return out;
    }
    if let Some(choices) = node.get("enum").and_then(Value::as_array)
        && !choices.contains(value)
    {
        out.push((
            path.to_owned(),
            format!("{} is not one of {}", value, Value::Array(choices.clone())),
        ));
    }
    match value {
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(max) = int(node, "maxLength")
                && len > max
            {
                out.push((
                    path.to_owned(),
                    format!("{s:?} is longer than {max} characters"),
                ));
            }
            if let Some(min) = int(node, "minLength")
                && len < min
            {
                out.push((
                    path.to_owned(),
                    format!("{s:?} is shorter than {min} characters"),
                ));
            }
            if let Some(pattern) = node.get("pattern").and_then(Value::as_str) {
                match regex::Regex::new(pattern) {
                    Ok(re) if re.is_match(s) => {}
                    Ok(_) => {
                        out.push((path.to_owned(), format!("{s:?} does not match {pattern:?}")))
                    }
                    Err(e) => out.push((path.to_owned(), format!("pattern {pattern:?}: {e}"))),
                }
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(max) = int(node, "maxItems")
                && n > max
            {
                out.push((path.to_owned(), format!("{n} items, at most {max}")));
            }
            if let Some(min) = int(node, "minItems")
                && n < min
            {
                out.push((path.to_owned(), format!("{n} items, at least {min}")));
            }
            out.extend(duplicate_keys(node, items, path));
            if let Some(item) = node.get("items") {
                for (i, v) in items.iter().enumerate() {
                    out.extend(validate(env, item, v, &format!("{path}[{i}]")));
                }
            }
        }
        Value::Object(map) => out.extend(validate_fields(env, node, map, path)),
        Value::Number(n) => {
            if let (Some(min), Some(v)) = (node.get("minimum").and_then(Value::as_f64), n.as_f64())
                && v < min
            {
                out.push((path.to_owned(), format!("{v} is less than {min}")));
            }
            if let (Some(max), Some(v)) = (node.get("maximum").and_then(Value::as_f64), n.as_f64())
                && v > max
            {
                out.push((path.to_owned(), format!("{v} is more than {max}")));
            }
        }
        _ => {}
    }
    let mut parse_errors = Findings::new();
    for rule in rules(env, node, path, &mut parse_errors) {
        if rule.transition {
            continue;
        }
        if let Some(message) = rule.refuses(env, value) {
            out.push((path.to_owned(), message));
        }
    }
    out.extend(parse_errors);
    out
}

fn validate_fields(
    env: &Arc<cel::Env>,
    node: &Value,
    map: &Map<String, Value>,
    path: &str,
) -> Findings {
    let mut out = Findings::new();
    for name in required(node) {
        if !map.contains_key(name) {
            out.push((join(path, name), "Required value".into()));
        }
    }
    let props = node.get("properties").and_then(Value::as_object);
    for (k, v) in map {
        if let Some(child) = props.and_then(|p| p.get(k)) {
            out.extend(validate(env, child, v, &join(path, k)));
        } else if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
            out.extend(validate(env, values, v, &join(path, k)));
        }
    }
    if let Some(max) = int(node, "maxProperties")
        && map.len() as u64 > max
    {
        out.push((
            path.to_owned(),
            format!("{} properties, at most {max}", map.len()),
        ));
    }
    out
}

/// Two items of a `map` list with the same keys, or two equal items of a `set` list:
/// the API server refuses both.
fn duplicate_keys(node: &Value, items: &[Value], path: &str) -> Findings {
    let list_type = node.get("x-kubernetes-list-type").and_then(Value::as_str);
    let keys: Vec<&str> = node
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let key_of = |item: &Value| -> Value {
        match list_type {
            Some("map") => Value::Array(
                keys.iter()
                    .map(|k| item.get(*k).cloned().unwrap_or(Value::Null))
                    .collect(),
            ),
            _ => item.clone(),
        }
    };
    if !matches!(list_type, Some("map" | "set")) {
        return Findings::new();
    }
    let mut seen = Vec::new();
    let mut out = Findings::new();
    for (i, item) in items.iter().enumerate() {
        let key = key_of(item);
        if seen.contains(&key) {
            out.push((format!("{path}[{i}]"), format!("Duplicate value: {key}")));
        }
        seen.push(key);
    }
    out
}
