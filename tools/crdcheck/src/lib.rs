//! What a real API server refuses in a CustomResourceDefinition, found without one.
//!
//! The API server checks a CRD when it is written and every resource when it is
//! written, in ways a fake API server does not:
//!
//! 1. every rule in `x-kubernetes-validations` must parse, and its estimated cost,
//!    times the number of times it can run in one object, must stay within the
//!    per-rule and per-CRD budgets ([`cost`]);
//! 2. a schema `default` must pass the rules of its own node (and of the nodes
//!    under it), evaluated since Kubernetes 1.25 when the CRD is written;
//! 3. a transition rule (one naming `oldSelf`) on an optional field is skipped when
//!    the field is added or removed, so it does not guard what it seems to;
//! 4. fields the operator turns into label values or object names must be refused
//!    by the schema when they could not be one ([`derived`]).
//!
//! Rules are evaluated with the `cel` crate (the CEL interpreter for Rust) against
//! JSON values, as the API server evaluates them against the stored object.

pub mod cost;
pub mod derived;
pub mod schema;

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

pub use derived::{Derived, DerivedField};

/// The API server's budget for one rule's estimated cost, times its cardinality.
pub const STATIC_ESTIMATED_COST_LIMIT: u64 = 10_000_000;
/// The API server's budget for the estimated cost of all the rules of one CRD version.
pub const STATIC_ESTIMATED_CRD_COST_LIMIT: u64 = 100_000_000;
/// The largest request the API server takes; unbounded lists and strings are
/// estimated to fill one.
pub const MAX_REQUEST_SIZE_BYTES: u64 = 3 * 1024 * 1024;

/// One thing the API server would refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `<plural>.<group>/<version>`.
    pub crd: String,
    /// Where in the schema (or the object), as `spec.sidecar`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.crd, self.path, self.message)
    }
}

/// A compiled rule, with what it needs to run.
pub struct Rule {
    pub source: String,
    pub message: Option<String>,
    program: cel::Program,
    /// Names `oldSelf`: it only runs on updates.
    pub transition: bool,
}

/// The CEL environment of CRD rules: the standard library plus the string and list
/// extensions the API server also offers.
pub fn cel_env() -> Arc<cel::Env> {
    let mut env = cel::Env::stdlib();
    // Both extensions only declare functions; declaring them on a fresh environment
    // cannot conflict.
    let _ = env.add_extension(cel::extensions::strings);
    let _ = env.add_extension(cel::extensions::lists);
    Arc::new(env)
}

impl Rule {
    /// Parses one entry of `x-kubernetes-validations`.
    pub fn compile(env: &cel::Env, entry: &Value) -> Result<Self, String> {
        let source = entry
            .get("rule")
            .and_then(Value::as_str)
            .ok_or_else(|| "a validation without `rule`".to_owned())?
            .to_owned();
        let program = env
            .compile(&source)
            .map_err(|e| format!("rule `{source}` does not parse: {e}"))?;
        if let Some(expr) = entry.get("messageExpression").and_then(Value::as_str) {
            env.compile(expr)
                .map_err(|e| format!("messageExpression `{expr}` does not parse: {e}"))?;
        }
        let transition = program.references().has_variable("oldSelf");
        Ok(Self {
            message: entry
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned),
            source,
            program,
            transition,
        })
    }

    /// Runs the rule on a new object (never a transition rule): `None` when it holds,
    /// otherwise why not, as the API server would say it.
    pub fn refuses(&self, env: &Arc<cel::Env>, value: &Value) -> Option<String> {
        let mut ctx = cel::Context::with_env(env.clone());
        ctx.add_variable_from_value("self", to_cel(value));
        match self.program.execute(&ctx) {
            Ok(cel::Value::Bool(true)) => None,
            Ok(cel::Value::Bool(false)) => Some(
                self.message
                    .clone()
                    .unwrap_or_else(|| format!("failed rule: {}", self.source)),
            ),
            Ok(other) => Some(format!("rule `{}` gave {other:?}, not a bool", self.source)),
            Err(e) => Some(format!("rule `{}` failed to evaluate: {e}", self.source)),
        }
    }
}

/// A JSON value as the API server hands it to CEL: integers as `int`.
pub fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(f)) => cel::Value::Float(f),
            (None, None) => cel::Value::Null,
        },
        Value::String(s) => cel::Value::from(s.as_str()),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => {
            let map: std::collections::HashMap<String, cel::Value> =
                map.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            cel::Value::from(map)
        }
    }
}

/// Everything wrong with one CRD (as JSON): its schema checks for every version, and
/// the derived-field probes of `derived` on the `samples` of its kind.
pub fn check_crd(crd: &Value, derived: &[DerivedField], samples: &[Value]) -> Vec<Problem> {
    let env = cel_env();
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    let kind = crd
        .pointer("/spec/names/kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut problems = Vec::new();
    for version in crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let v = version
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let label = format!("{name}/{v}");
        let Some(root) = version.pointer("/schema/openAPIV3Schema") else {
            problems.push(Problem {
                crd: label,
                path: String::new(),
                message: "no openAPIV3Schema".into(),
            });
            continue;
        };
        let mut add = |path: String, message: String| {
            problems.push(Problem {
                crd: label.clone(),
                path,
                message,
            })
        };
        for (path, message) in schema::check_schema(&env, root) {
            add(path, message);
        }
        let api_version = format!("{group}/{v}");
        let own: Vec<&Value> = samples
            .iter()
            .filter(|s| {
                s.get("kind").and_then(Value::as_str) == Some(kind)
                    && s.get("apiVersion").and_then(Value::as_str) == Some(&api_version)
            })
            .collect();
        for sample in &own {
            let sample_name = sample
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            for (path, message) in schema::validate_object(&env, root, sample) {
                add(
                    path,
                    format!("example {kind} {sample_name:?} is refused: {message}"),
                );
            }
        }
        for field in derived.iter().filter(|d| d.kind == kind) {
            let Some(sample) = own.first() else {
                add(
                    field.path.join("."),
                    format!("no example {kind} to probe {} with", field.what),
                );
                continue;
            };
            for message in derived::probe(&env, root, sample, field) {
                add(field.path.join("."), message);
            }
        }
    }
    problems
}

/// Every YAML document of every `.yaml` file in `dir`, files in name order.
pub fn read_yaml_dir(dir: &std::path::Path) -> anyhow::Result<Vec<Value>> {
    use anyhow::Context as _;
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        out.extend(read_yaml_documents(&text).with_context(|| format!("parsing {}", f.display()))?);
    }
    Ok(out)
}

/// Reads every YAML document of a file (`---`-separated) as JSON values.
pub fn read_yaml_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in text.split("\n---") {
        let doc = doc.trim_start_matches("---");
        if doc.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#')
        }) {
            continue;
        }
        let value: Value = serde_saphyr::from_str(doc)?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}
