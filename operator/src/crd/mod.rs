//! The custom resources (group `finflow.dev`, version `v1alpha1`, DESIGN section 8).
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
    vec![FinService::crd(), MessageQueue::crd(), RedisCache::crd()]
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
