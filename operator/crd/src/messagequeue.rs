//! `MessageQueue`: a RabbitMQ broker for the FinFlow events (`docs/architecture.md`, Events).

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::Phase;

/// Desired state of a RabbitMQ broker.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "finflow.dev",
    version = "v1alpha1",
    kind = "MessageQueue",
    plural = "messagequeues",
    shortname = "mq",
    category = "finflow",
    namespaced,
    status = "MessageQueueStatus",
    derive = "PartialEq",
    doc = "A RabbitMQ broker: a StatefulSet, a headless and a client Service, a credentials Secret generated once, and the declared topology.",
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.ready"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Topology", type_ = "string", json_path = ".status.conditions[?(@.type==\"TopologyDeclared\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 50").message("the name must leave room for the `-headless` Service suffix and the pods' revision label (at most 50 characters)"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("the name becomes Service names: lower-case letters, digits and '-', starting with a letter and ending with a letter or digit (DNS-1035)")
)]
#[serde(rename_all = "camelCase")]
pub struct MessageQueueSpec {
    /// RabbitMQ image. Use a `-management` variant: the topology Job runs its
    /// `rabbitmqadmin` against the management API.
    #[serde(default = "default_image")]
    #[x_kube(validation = Rule::new("self.size() > 0").message("image must not be empty"))]
    pub image: String,
    /// Number of RabbitMQ nodes (an odd number keeps quorum queues available), at most
    /// 9: each node is named in every node's configuration.
    #[serde(default = "default_replicas")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 9").message("replicas must be between 0 and 9"))]
    pub replicas: i32,
    /// Persistent storage of each node.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Exchanges, queues and bindings declared once the broker is ready.
    #[serde(default)]
    pub topology: TopologySpec,
    /// CPU and memory of each node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_image() -> String {
    "rabbitmq:3.13-management".to_owned()
}

fn default_replicas() -> i32 {
    1
}

impl MessageQueueSpec {
    /// The nodes the operator runs: `replicas`, within what the schema allows (an
    /// object stored before that bound, or under an older CRD, gets at most
    /// [`MAX_REPLICAS`]).
    pub fn nodes(&self) -> i32 {
        self.replicas.clamp(0, MAX_REPLICAS)
    }
}

/// The most RabbitMQ nodes a MessageQueue runs (the schema refuses more): every node's
/// configuration names each node, so the operator's work grows with the square of it,
/// and a count nobody bounded (2^31) would have it build gigabytes of configuration.
pub const MAX_REPLICAS: i32 = 9;

/// Persistent storage of each RabbitMQ node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
// On the object, not on `storageClassName`: the API server skips a field's transition
// rule when the field is added or removed, which is the change to refuse here.
#[x_kube(
    validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)").message("storage.storageClassName cannot be changed after creation")
)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Volume size per node. Fixed at creation: a StatefulSet's volume claims cannot change.
    // An explicit `null` (the schema allows it) means the default, not an object the
    // controller cannot read.
    #[serde(default = "default_size", deserialize_with = "size_or_default")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage.size cannot be changed after creation"))]
    pub size: Quantity,
    /// StorageClass of the volumes; the cluster default when unset. Fixed at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub storage_class_name: Option<String>,
    /// Keep the volumes and the credentials Secret when the MessageQueue is deleted, so a
    /// MessageQueue created again with the same name finds its data and the password that
    /// data was created with. When false, both are deleted with it.
    #[serde(default = "default_true")]
    pub retain_on_delete: bool,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_size(),
            storage_class_name: None,
            retain_on_delete: true,
        }
    }
}

fn default_size() -> Quantity {
    Quantity("1Gi".to_owned())
}

fn size_or_default<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Quantity, D::Error> {
    Ok(Option::<Quantity>::deserialize(d)?.unwrap_or_else(default_size))
}

fn default_true() -> bool {
    true
}

/// What the broker must hold before services use it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopologySpec {
    /// Exchanges to declare.
    #[serde(default = "default_exchanges")]
    #[schemars(length(max = 256))]
    pub exchanges: Vec<ExchangeSpec>,
    /// Queues to declare (consumers also declare their own at start).
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub queues: Vec<QueueSpec>,
    /// Bindings from exchanges to queues.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub bindings: Vec<BindingSpec>,
}

impl Default for TopologySpec {
    fn default() -> Self {
        Self {
            exchanges: default_exchanges(),
            queues: Vec::new(),
            bindings: Vec::new(),
        }
    }
}

/// The events exchange (`docs/architecture.md`, Events) and its dead-letter exchange.
fn default_exchanges() -> Vec<ExchangeSpec> {
    ["finflow.events", "finflow.dlx"]
        .map(|name| ExchangeSpec {
            name: name.to_owned(),
            kind: ExchangeKind::Topic,
            durable: true,
        })
        .to_vec()
}

/// An exchange.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeSpec {
    /// Exchange name.
    #[x_kube(validation = Rule::new("self.size() > 0").message("an exchange needs a name"))]
    pub name: String,
    /// Exchange type.
    #[serde(rename = "type", default = "default_kind")]
    pub kind: ExchangeKind,
    /// Survives a broker restart.
    #[serde(default = "default_true")]
    pub durable: bool,
}

fn default_kind() -> ExchangeKind {
    ExchangeKind::Topic
}

/// RabbitMQ exchange types.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeKind {
    Topic,
    Direct,
    Fanout,
    Headers,
}

impl ExchangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Topic => "topic",
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Headers => "headers",
        }
    }
}

/// A queue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueSpec {
    /// Queue name, `<consumer>.<purpose>` by convention.
    #[x_kube(validation = Rule::new("self.size() > 0").message("a queue needs a name"))]
    pub name: String,
    /// A quorum queue (replicated, durable) rather than a classic one.
    #[serde(default = "default_true")]
    pub quorum: bool,
    /// Exchange rejected messages are dead-lettered to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_exchange: Option<String>,
}

/// A binding from an exchange to a queue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BindingSpec {
    /// Source exchange.
    pub exchange: String,
    /// Destination queue.
    pub queue: String,
    /// Routing key (a topic pattern for topic exchanges).
    pub routing_key: String,
}

/// Observed state of a broker.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageQueueStatus {
    /// Where the broker stands: Pending, Progressing, Ready or Degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Ready nodes over desired nodes, for example `1/1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// Secret with the keys `username`, `password`, `erlang-cookie` and `url` (the AMQP
    /// URL services use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// Host and port of the client Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Ready and TopologyDeclared, following the Kubernetes API conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_null_storage_size_reads_as_the_default_size() {
        // The schema marks `size` nullable, so the API server stores a `null` as sent;
        // a controller that could not read it would stop watching every MessageQueue.
        let spec: MessageQueueSpec =
            serde_json::from_value(serde_json::json!({"storage": {"size": null}})).unwrap();
        assert_eq!(spec.storage.size, default_size());
    }
}
