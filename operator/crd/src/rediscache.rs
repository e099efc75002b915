//! `RedisCache`: a Redis for idempotency keys, sessions and read caches.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::Phase;

/// Desired state of a Redis.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "finflow.dev",
    version = "v1alpha1",
    kind = "RedisCache",
    plural = "rediscaches",
    shortname = "rcache",
    category = "finflow",
    namespaced,
    status = "RedisCacheStatus",
    derive = "PartialEq",
    doc = "A Redis: a Deployment, a Service and, when a password is asked for, a Secret generated once.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.ready"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 58").message("the name must leave room for the `-auth` Secret suffix (at most 58 characters)"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("the name becomes a Service name: lower-case letters, digits and '-', starting with a letter and ending with a letter or digit (DNS-1035)")
)]
#[serde(rename_all = "camelCase")]
pub struct RedisCacheSpec {
    /// Redis image.
    #[serde(default = "default_image")]
    #[x_kube(validation = Rule::new("self.size() > 0").message("image must not be empty"))]
    pub image: String,
    /// Require a password. The operator generates it once into the Secret `<name>-auth`
    /// (keys `password` and `url`).
    #[serde(default = "default_true")]
    pub password: bool,
    /// Memory limit Redis enforces on its data, in Redis notation (for example `256mb`).
    #[serde(default = "default_max_memory")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(kb|mb|gb)?$')").message("maxMemory is a number with an optional kb, mb or gb unit"))]
    pub max_memory: String,
    /// What Redis evicts when `maxMemory` is reached.
    #[serde(default = "default_eviction")]
    pub eviction_policy: EvictionPolicy,
    /// CPU and memory of the Redis container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_image() -> String {
    "redis:7.4-alpine".to_owned()
}

fn default_true() -> bool {
    true
}

fn default_max_memory() -> String {
    "256mb".to_owned()
}

fn default_eviction() -> EvictionPolicy {
    EvictionPolicy::VolatileLru
}

/// Redis `maxmemory-policy` values.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EvictionPolicy {
    /// Refuse writes when full.
    Noeviction,
    /// Evict least recently used keys that have a TTL (idempotency keys and sessions do).
    VolatileLru,
    /// Evict any least recently used key.
    AllkeysLru,
}

impl EvictionPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Noeviction => "noeviction",
            Self::VolatileLru => "volatile-lru",
            Self::AllkeysLru => "allkeys-lru",
        }
    }
}

/// Observed state of a Redis.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisCacheStatus {
    /// Where the cache stands: Pending, Progressing, Ready or Degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Ready pods over desired pods, for example `1/1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// Secret with the keys `password` and `url`, when a password is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<String>,
    /// Host and port of the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Ready, following the Kubernetes API conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
