//! The custom resources (group `finflow.dev`, version `v1alpha1`; `docs/architecture.md`,
//! Operator and custom resources).
//!
//! The Rust types are the source of truth: `crdgen` renders them into `crds/`, and a
//! test fails when the files there differ from what the types generate. Every field
//! carries a doc comment because it becomes the field's `kubectl explain` text.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod finservice;
pub mod messagequeue;
pub mod rediscache;

pub use finservice::{
    AnalysisSpec, AnalysisStage, AnalysisStatus, AnalysisVerdict, Color, FinService,
    FinServiceSpec, FinServiceStatus, MigrationRef, Module, Observation, ReleaseSchema, Revision,
    RollbackState, RolloutSpec, SchemaBarrier, SecretMount, SidecarSpec,
};
pub use messagequeue::{MessageQueue, MessageQueueSpec, MessageQueueStatus};
pub use rediscache::{RedisCache, RedisCacheSpec, RedisCacheStatus};

/// The API group of every FinFlow resource.
pub const GROUP: &str = "finflow.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";

/// Every CRD the operator serves, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    [FinService::crd(), MessageQueue::crd(), RedisCache::crd()]
        .into_iter()
        .map(unwrapped)
        .collect()
}

/// `crd` with its schema's descriptions unwrapped ([`unwrap_lines`]): the doc comments
/// they come from are wrapped at 90 columns, and `kubectl explain` wraps again, so kept
/// line breaks would break its lines in the middle.
fn unwrapped(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    match (key.as_str(), v) {
                        ("description", serde_json::Value::String(text)) => {
                            *text = unwrap_lines(text);
                        }
                        // Values, not schemas: left as written.
                        ("default" | "example" | "enum", _) => {}
                        (_, v) => walk(v),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    walk(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

/// Joins the lines of each paragraph of `text` with spaces; blank lines (paragraphs) and
/// list items (`- `) keep their breaks.
pub fn unwrap_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines().map(str::trim_end) {
        if line.is_empty() {
            if !out.is_empty() && !out.ends_with("\n\n") {
                out.push_str(if out.ends_with('\n') { "\n" } else { "\n\n" });
            }
        } else if out.is_empty() || out.ends_with('\n') {
            out.push_str(line);
        } else if line.trim_start().starts_with("- ") {
            out.push('\n');
            out.push_str(line);
        } else {
            out.push(' ');
            out.push_str(line.trim_start());
        }
    }
    out.trim_end().to_owned()
}

/// A key in a Secret of the resource's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as the resource.
    pub name: String,
    /// Key inside the Secret's data.
    pub key: String,
}

/// Where a resource stands, in one word (`status.phase`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Seen, nothing observed yet.
    Pending,
    /// Held: something it depends on is missing or not Ready; nothing is rolled out.
    Waiting,
    /// Its workload is being brought to the desired state.
    Progressing,
    /// Its workload runs as desired with every replica ready.
    Ready,
    /// Its workload failed to become ready in time.
    Degraded,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Waiting => "Waiting",
            Self::Progressing => "Progressing",
            Self::Ready => "Ready",
            Self::Degraded => "Degraded",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_unwrapped_into_paragraphs_and_list_items() {
        let text = "A rollback, by hand,\nby cascade.\n\nSecond paragraph\n  continues.\n- one item\n- another\n";
        assert_eq!(
            unwrap_lines(text),
            "A rollback, by hand, by cascade.\n\nSecond paragraph continues.\n- one item\n- another"
        );
        assert_eq!(unwrap_lines("one line"), "one line");
    }

    #[test]
    fn every_generated_description_is_unwrapped_and_values_are_left_alone() {
        let crd = serde_json::to_value(&all()[0]).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let barrier = &schema["properties"]["status"]["properties"]["schemaBarrier"];
        let description = barrier["description"].as_str().unwrap();
        assert!(!description.contains('\n'), "{description}");
        assert!(description.starts_with("The newest incompatible migration a live version brought. A rollback, by hand, by cascade"));
        // A property named `description` is a schema, not a text.
        assert!(barrier["properties"]["migration"]["properties"]["description"].is_object());
    }
}
