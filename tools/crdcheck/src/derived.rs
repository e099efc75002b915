//! Fields the operator turns into something Kubernetes checks more strictly than the
//! CRD would: a label value, the name of a Service. The schema must refuse what could
//! not become one, or the operator's writes fail long after the user's `apply`
//! succeeded. Each is probed: an example resource with the field set to values that
//! must be refused, and to values that must pass.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::schema;

/// What a field becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Derived {
    /// A label value: at most 63 characters, alphanumerics with `-`, `_` and `.`
    /// inside.
    LabelValue,
    /// The name of a Service (DNS-1035 label), after a suffix of this many characters.
    ServiceName { suffix: usize },
}

impl fmt::Display for Derived {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LabelValue => write!(f, "a label value"),
            Self::ServiceName { suffix: 0 } => write!(f, "a Service name (DNS-1035 label)"),
            Self::ServiceName { suffix } => write!(
                f,
                "a Service name (DNS-1035 label) with a {suffix}-character suffix"
            ),
        }
    }
}

/// A field of a kind, by its path in the object, and what it becomes.
#[derive(Clone, Debug)]
pub struct DerivedField {
    pub kind: &'static str,
    pub path: &'static [&'static str],
    pub what: Derived,
}

/// Values that must be refused, and values that must pass.
fn probes(what: Derived) -> (Vec<String>, Vec<String>) {
    match what {
        Derived::LabelValue => (
            vec![
                "1.0 beta".into(),
                "-1.0".into(),
                "1.0-".into(),
                "1.0/2".into(),
                "v".repeat(64),
            ],
            vec!["1.4.2".into(), "v2.0.0-rc.1_build.7".into(), "v".repeat(63)],
        ),
        Derived::ServiceName { suffix } => (
            vec![
                "1wallet".into(),
                "Wallet".into(),
                "wallet.eu".into(),
                "wallet_eu".into(),
                "wallet-".into(),
                "w".repeat(63 - suffix + 1),
            ],
            vec![
                "wallet".into(),
                "wallet-eu-2".into(),
                "w".repeat(63 - suffix),
            ],
        ),
    }
}

fn set(value: &mut Value, path: &[&str], to: Value) {
    let mut at = value;
    for (i, key) in path.iter().enumerate() {
        let Value::Object(map) = at else { return };
        if i + 1 == path.len() {
            map.insert((*key).to_owned(), to);
            return;
        }
        at = map
            .entry((*key).to_owned())
            .or_insert_with(|| Value::Object(Default::default()));
    }
}

/// What the probes of one field find wrong in the schema, using `sample` (a valid
/// object of the kind) for everything else.
pub fn probe(
    env: &Arc<cel::Env>,
    root: &Value,
    sample: &Value,
    field: &DerivedField,
) -> Vec<String> {
    let (refused, accepted) = probes(field.what);
    let mut out = Vec::new();
    let with = |v: &str| {
        let mut object = sample.clone();
        set(&mut object, field.path, Value::String(v.to_owned()));
        schema::validate_object(env, root, &object)
    };
    for v in refused {
        if with(&v).is_empty() {
            out.push(format!(
                "accepts {v:?}, which is not {}: limit it with a pattern and maxLength (or a rule)",
                field.what
            ));
        }
    }
    for v in accepted {
        let findings = with(&v);
        if let Some((path, message)) = findings.first() {
            out.push(format!(
                "refuses {v:?}, which is {}: {path}: {message}",
                field.what
            ));
        }
    }
    out
}

/// FinFlow's derived fields: what the operator makes of each CRD's fields.
pub const FINFLOW: &[DerivedField] = &[
    // `<name>` and `<name>-preview` Services, `<name>-blue`/`-green` Deployments.
    DerivedField {
        kind: "FinService",
        path: &["metadata", "name"],
        what: Derived::ServiceName { suffix: 8 },
    },
    // The pods' `finflow.dev/version` label.
    DerivedField {
        kind: "FinService",
        path: &["spec", "version"],
        what: Derived::LabelValue,
    },
    // `<name>` and `<name>-headless` Services; StatefulSet pods `<name>-N` carry a
    // `controller-revision-hash` label of `<name>-<10 characters>`.
    DerivedField {
        kind: "MessageQueue",
        path: &["metadata", "name"],
        what: Derived::ServiceName { suffix: 13 },
    },
    // `<name>` Service, `<name>-auth` Secret.
    DerivedField {
        kind: "RedisCache",
        path: &["metadata", "name"],
        what: Derived::ServiceName { suffix: 5 },
    },
];
