//! MessageQueue decisions: the RabbitMQ objects, the credentials, the topology Job, and
//! the status.
//!
//! The credentials Secret is special: it is generated once and never rewritten, because
//! RabbitMQ stores its users on the data volume at first boot, and a new password would
//! lock every service out of a broker that still has the old one. The controller reads
//! it first and applies [`credentials_secret`] only when it does not exist.
//!
//! The topology (exchanges, queues, bindings) is declared by a Job that imports a
//! RabbitMQ definitions file through the management API once the broker is ready. The
//! Job's name carries the hash of the definitions, so a changed topology gets a new Job,
//! and `TopologyDeclared` turns True only when that Job succeeded.

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction,
    KeyToPath, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec,
    PodTemplateSpec, Probe, Secret, SecretKeySelector, SecretVolumeSource, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::conditions::{self, Desired, Reason, Type};
use crate::crd::{MessageQueue, MessageQueueStatus, Phase};
use crate::dns::ClusterDomain;
use crate::meta::{self, labels, owned_meta, with_spec_hash};
use crate::pod_security;

pub const USERNAME_KEY: &str = "username";
pub const PASSWORD_KEY: &str = "password";
pub const COOKIE_KEY: &str = "erlang-cookie";
/// Key of the AMQP URL services use (`AMQP_URL`).
pub const URL_KEY: &str = "url";
/// The broker user the services connect as.
pub const USERNAME: &str = "finflow";
pub const AMQP_PORT: i32 = 5672;
pub const MANAGEMENT_PORT: i32 = 15672;
const COMPONENT: &str = "rabbitmq";
const DEFINITIONS_FILE: &str = "definitions.json";
/// The user of the official rabbitmq images (`rabbitmq`).
pub const RABBITMQ_UID: i64 = 999;

pub fn credentials_secret_name(name: &str) -> String {
    format!("{name}-credentials")
}

pub fn headless_service_name(name: &str) -> String {
    format!("{name}-headless")
}

pub fn config_map_name(name: &str) -> String {
    format!("{name}-config")
}

pub fn topology_config_map_name(name: &str) -> String {
    format!("{name}-topology")
}

/// The topology Job for the current definitions: `<name>-topo-<hash>` (within the
/// 63 characters a Job name may have, given the 50-character limit on the name).
pub fn topology_job_name(mq: &MessageQueue) -> String {
    let hash = meta::hash(&definitions(mq));
    format!("{}-topo-{}", mq.name_any(), &hash[..6])
}

/// The AMQP URL of the broker from inside its namespace.
pub fn url(name: &str, password: &str) -> String {
    format!("amqp://{USERNAME}:{password}@{name}:{AMQP_PORT}/%2f")
}

/// Labels selecting the broker's pods (and the volumes the StatefulSet creates).
pub fn selector(name: &str) -> std::collections::BTreeMap<String, String> {
    [
        (meta::NAME_LABEL.to_owned(), COMPONENT.to_owned()),
        (meta::INSTANCE_LABEL.to_owned(), name.to_owned()),
    ]
    .into()
}

/// The credentials Secret, for the first and only time it is written. `password` and
/// `cookie` come from the caller's random source.
pub fn credentials_secret(mq: &MessageQueue, password: &str, cookie: &str) -> Secret {
    let name = mq.name_any();
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: owned_meta(mq, credentials_secret_name(&name), labels(&name, COMPONENT)),
        type_: Some("Opaque".to_owned()),
        data: Some(
            [
                (USERNAME_KEY.to_owned(), bytes(USERNAME)),
                (PASSWORD_KEY.to_owned(), bytes(password)),
                (COOKIE_KEY.to_owned(), bytes(cookie)),
                (URL_KEY.to_owned(), bytes(&url(&name, password))),
            ]
            .into(),
        ),
        ..Secret::default()
    }
}

/// Whether an existing credentials Secret is usable as it is. A Secret missing a key is
/// reported, never regenerated: replacing the password would orphan the broker's data.
pub fn credentials_complete(secret: &Secret) -> bool {
    let data = secret.data.clone().unwrap_or_default();
    [USERNAME_KEY, PASSWORD_KEY, COOKIE_KEY, URL_KEY]
        .iter()
        .all(|k| data.get(*k).is_some_and(|v| !v.0.is_empty()))
}

/// Whether an existing credentials Secret the MessageQueue does not own is one an
/// earlier MessageQueue of this name released (its cleanup removes the owner and keeps
/// the labels the Secret was made with), which it takes back as it is. Any other Secret
/// of that name (made by hand, another controller's) is not its to take: adopted, it
/// would be garbage-collected with the MessageQueue.
pub fn released_credentials(mq: &MessageQueue, secret: &Secret) -> bool {
    let made_with = labels(&mq.name_any(), COMPONENT);
    secret
        .owner_references()
        .iter()
        .all(|r| r.controller != Some(true))
        && made_with
            .iter()
            .all(|(k, v)| secret.labels().get(k) == Some(v))
}

/// RabbitMQ definitions (the format `rabbitmqadmin import` reads) for the topology.
pub fn definitions(mq: &MessageQueue) -> Value {
    let t = &mq.spec.topology;
    let exchanges: Vec<Value> = t
        .exchanges
        .iter()
        .map(|e| {
            json!({
                "name": e.name, "vhost": "/", "type": e.kind.as_str(), "durable": e.durable,
                "auto_delete": false, "internal": false, "arguments": {}
            })
        })
        .collect();
    let queues: Vec<Value> = t
        .queues
        .iter()
        .map(|q| {
            let mut arguments = serde_json::Map::new();
            arguments.insert(
                "x-queue-type".into(),
                json!(if q.quorum { "quorum" } else { "classic" }),
            );
            if let Some(dlx) = &q.dead_letter_exchange {
                arguments.insert("x-dead-letter-exchange".into(), json!(dlx));
            }
            json!({
                "name": q.name, "vhost": "/", "durable": true, "auto_delete": false,
                "arguments": arguments
            })
        })
        .collect();
    let bindings: Vec<Value> = t
        .bindings
        .iter()
        .map(|b| {
            json!({
                "source": b.exchange, "vhost": "/", "destination": b.queue,
                "destination_type": "queue", "routing_key": b.routing_key, "arguments": {}
            })
        })
        .collect();
    json!({"exchanges": exchanges, "queues": queues, "bindings": bindings})
}

/// The objects a MessageQueue owns besides the credentials and the topology Job.
#[derive(Debug, Clone, PartialEq)]
pub struct Owned {
    pub config_map: ConfigMap,
    pub topology: ConfigMap,
    /// Headless (peer discovery), then client.
    pub services: [Service; 2],
    pub stateful_set: StatefulSet,
}

/// RabbitMQ nodes name each other by their fully qualified names, so the peers listed
/// here and each node's own name carry the cluster's domain.
fn rabbitmq_conf(mq: &MessageQueue, domain: &ClusterDomain) -> String {
    let name = mq.name_any();
    let namespace = mq.namespace().unwrap_or_default();
    let headless = headless_service_name(&name);
    let mut conf = vec![
        format!("listeners.tcp.default = {AMQP_PORT}"),
        format!("management.tcp.port = {MANAGEMENT_PORT}"),
        "cluster_formation.peer_discovery_backend = classic_config".to_owned(),
        "queue_leader_locator = balanced".to_owned(),
    ];
    // At least one node is named (a queue scaled to zero keeps its configuration), and
    // at most what the schema allows (`nodes`).
    for i in 0..mq.spec.nodes().max(1) {
        conf.push(format!(
            "cluster_formation.classic_config.nodes.{} = rabbit@{name}-{i}.{headless}.{namespace}.svc.{domain}",
            i + 1
        ));
    }
    conf.join("\n") + "\n"
}

pub fn desired(mq: &MessageQueue, domain: &ClusterDomain) -> Owned {
    let name = mq.name_any();
    let config_map = with_spec_hash(ConfigMap {
        metadata: owned_meta(mq, config_map_name(&name), labels(&name, COMPONENT)),
        data: Some(
            [
                ("rabbitmq.conf".to_owned(), rabbitmq_conf(mq, domain)),
                (
                    "enabled_plugins".to_owned(),
                    "[rabbitmq_management,rabbitmq_prometheus].\n".to_owned(),
                ),
            ]
            .into(),
        ),
        ..ConfigMap::default()
    });
    let topology = with_spec_hash(ConfigMap {
        metadata: owned_meta(
            mq,
            topology_config_map_name(&name),
            labels(&name, COMPONENT),
        ),
        data: Some(
            [(
                DEFINITIONS_FILE.to_owned(),
                serde_json::to_string_pretty(&definitions(mq)).unwrap_or_default(),
            )]
            .into(),
        ),
        ..ConfigMap::default()
    });
    let port = |n: &str, p: i32| ServicePort {
        name: Some(n.to_owned()),
        port: p,
        target_port: Some(IntOrString::String(n.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    };
    let headless = with_spec_hash(Service {
        metadata: owned_meta(mq, headless_service_name(&name), labels(&name, COMPONENT)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            // Nodes must find each other before any of them is ready.
            publish_not_ready_addresses: Some(true),
            selector: Some(meta::selecting_ours(selector(&name))),
            ports: Some(vec![port("epmd", 4369), port("cluster", 25672)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    });
    let client = with_spec_hash(Service {
        metadata: owned_meta(mq, &name, labels(&name, COMPONENT)),
        spec: Some(ServiceSpec {
            selector: Some(meta::selecting_ours(selector(&name))),
            ports: Some(vec![
                port("amqp", AMQP_PORT),
                port("management", MANAGEMENT_PORT),
                port("prometheus", 15692),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    });
    Owned {
        config_map,
        topology,
        services: [headless, client],
        stateful_set: with_spec_hash(stateful_set(mq, domain)),
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        ..VolumeMount::default()
    }
}

fn exec_probe(command: &[&str], initial_delay: i32, period: i32, timeout: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(command.iter().map(|c| (*c).to_owned()).collect()),
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(period),
        timeout_seconds: Some(timeout),
        ..Probe::default()
    }
}

fn stateful_set(mq: &MessageQueue, domain: &ClusterDomain) -> StatefulSet {
    let name = mq.name_any();
    let secret = credentials_secret_name(&name);
    let headless = headless_service_name(&name);
    let container_port = |n: &str, p: i32| ContainerPort {
        name: Some(n.to_owned()),
        container_port: p,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    };
    // Erlang refuses a cookie file others can read, and Secret volumes are root-owned:
    // an init container copies it into the data volume with owner-only permissions.
    let cookie = Container {
        name: "erlang-cookie".to_owned(),
        image: Some(mq.spec.image.clone()),
        command: Some(vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "cp /cookie/.erlang.cookie /var/lib/rabbitmq/.erlang.cookie && chmod 600 /var/lib/rabbitmq/.erlang.cookie".to_owned(),
        ]),
        volume_mounts: Some(vec![mount("cookie", "/cookie"), mount("data", "/var/lib/rabbitmq")]),
        security_context: Some(pod_security::container_context()),
        ..Container::default()
    };
    let rabbitmq = Container {
        name: "rabbitmq".to_owned(),
        image: Some(mq.spec.image.clone()),
        ports: Some(vec![
            container_port("amqp", AMQP_PORT),
            container_port("management", MANAGEMENT_PORT),
            container_port("prometheus", 15692),
            container_port("epmd", 4369),
            container_port("cluster", 25672),
        ]),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            value_env("RABBITMQ_USE_LONGNAME", "true"),
            value_env(
                "RABBITMQ_NODENAME",
                &format!("rabbit@$(POD_NAME).{headless}.$(POD_NAMESPACE).svc.{domain}"),
            ),
            secret_env("RABBITMQ_DEFAULT_USER", &secret, USERNAME_KEY),
            secret_env("RABBITMQ_DEFAULT_PASS", &secret, PASSWORD_KEY),
        ]),
        volume_mounts: Some(vec![
            mount("data", "/var/lib/rabbitmq"),
            mount("config", "/etc/rabbitmq"),
        ]),
        resources: mq.spec.resources.clone(),
        readiness_probe: Some(exec_probe(
            &["rabbitmq-diagnostics", "-q", "ping"],
            10,
            10,
            10,
        )),
        liveness_probe: Some(exec_probe(
            &["rabbitmq-diagnostics", "-q", "status"],
            60,
            60,
            15,
        )),
        security_context: Some(pod_security::container_context()),
        ..Container::default()
    };
    let storage = &mq.spec.storage;
    let policy = if storage.retain_on_delete {
        "Retain"
    } else {
        "Delete"
    };
    StatefulSet {
        metadata: owned_meta(mq, &name, labels(&name, COMPONENT)),
        spec: Some(StatefulSetSpec {
            replicas: Some(mq.spec.nodes()),
            service_name: Some(headless),
            // With classic peer discovery every node may start at once and join the others.
            pod_management_policy: Some("Parallel".to_owned()),
            selector: LabelSelector {
                match_labels: Some(selector(&name)),
                match_expressions: None,
            },
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(policy.to_owned()),
                    when_scaled: Some("Retain".to_owned()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some({
                        let mut l = labels(&name, COMPONENT);
                        l.extend(selector(&name));
                        l
                    }),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    init_containers: Some(vec![cookie]),
                    containers: vec![rabbitmq],
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(60),
                    // The image's own user; the data volume is group-owned by it.
                    security_context: Some(pod_security::pod_context(RABBITMQ_UID)),
                    volumes: Some(vec![
                        Volume {
                            name: "config".to_owned(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: config_map_name(&name),
                                ..ConfigMapVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "cookie".to_owned(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(secret),
                                items: Some(vec![KeyToPath {
                                    key: COOKIE_KEY.to_owned(),
                                    path: ".erlang.cookie".to_owned(),
                                    mode: None,
                                }]),
                                ..SecretVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                    ]),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".to_owned()),
                    labels: Some(selector(&name)),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
                    storage_class_name: storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some([("storage".to_owned(), storage.size.clone())].into()),
                        limits: None,
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                status: None,
            }]),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

/// The Job that imports the definitions into a ready broker.
pub fn topology_job(mq: &MessageQueue) -> Job {
    let name = mq.name_any();
    let secret = credentials_secret_name(&name);
    let script = format!(
        "rabbitmqadmin --host={name} --port={MANAGEMENT_PORT} --username=\"$RABBITMQ_USER\" \
         --password=\"$RABBITMQ_PASS\" import /topology/{DEFINITIONS_FILE}"
    );
    with_spec_hash(Job {
        metadata: owned_meta(
            mq,
            topology_job_name(mq),
            labels(&name, "rabbitmq-topology"),
        ),
        spec: Some(JobSpec {
            backoff_limit: Some(6),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&name, "rabbitmq-topology")),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("OnFailure".to_owned()),
                    automount_service_account_token: Some(false),
                    security_context: Some(pod_security::pod_context(RABBITMQ_UID)),
                    containers: vec![Container {
                        name: "import".to_owned(),
                        image: Some(mq.spec.image.clone()),
                        command: Some(vec!["sh".to_owned(), "-c".to_owned(), script]),
                        env: Some(vec![
                            secret_env("RABBITMQ_USER", &secret, USERNAME_KEY),
                            secret_env("RABBITMQ_PASS", &secret, PASSWORD_KEY),
                        ]),
                        volume_mounts: Some(vec![mount("topology", "/topology")]),
                        security_context: Some(pod_security::container_context()),
                        ..Container::default()
                    }],
                    volumes: Some(vec![Volume {
                        name: "topology".to_owned(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: topology_config_map_name(&name),
                            ..ConfigMapVolumeSource::default()
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    })
}

/// Of the volume claims that carry the broker's labels ([`selector`]), the names of those
/// the MessageQueue's own StatefulSet made (`data-<name>-<ordinal>`): what a
/// MessageQueue that keeps nothing deletes. `broker` is the StatefulSet `<name>` as found
/// at cleanup: none of it, or not controlled by `mq`, and nothing is deleted, whatever
/// the claims are called (a Bitnami release named `<name>` has a StatefulSet `<name>`
/// and volumes `data-<name>-0`, labelled alike, owned by nothing: a MessageQueue of the
/// same name, stalled on that StatefulSet and deleted, deleted that release's data). A
/// claim another StatefulSet or controller owns is never its to delete either. A
/// RabbitMQ installed under another name (`data-<name>-rabbitmq-0`) does not match.
pub fn own_claims(
    mq: &MessageQueue,
    broker: Option<&StatefulSet>,
    claims: &[PersistentVolumeClaim],
) -> Vec<String> {
    let name = mq.name_any();
    let Some(broker_uid) = broker
        .filter(|sts| meta::controlled_by(*sts, mq))
        .and_then(|sts| sts.metadata.uid.clone())
    else {
        return Vec::new();
    };
    let prefix = format!("data-{name}-");
    claims
        .iter()
        .filter(|c| {
            let claim = c.name_any();
            let ordinal = claim.strip_prefix(&prefix).unwrap_or_default();
            let owners_ours = c.owner_references().iter().all(|r| {
                if r.kind == "StatefulSet" {
                    r.uid == broker_uid
                } else {
                    r.controller != Some(true)
                }
            });
            !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit()) && owners_ours
        })
        .map(ResourceExt::name_any)
        .collect()
}

/// Whether the broker runs every desired node, up to date and ready.
pub fn broker_ready(sts: Option<&StatefulSet>, replicas: i32) -> bool {
    let Some(sts) = sts else { return false };
    let status = sts.status.clone().unwrap_or_default();
    let observed = status.observed_generation.is_some()
        && status.observed_generation >= sts.metadata.generation;
    observed
        && status.ready_replicas.unwrap_or(0) >= replicas
        && status.updated_replicas.unwrap_or(0) >= replicas
}

/// Where the topology Job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Missing,
    Running,
    Succeeded,
    Failed,
}

pub fn job_state(job: Option<&Job>) -> JobState {
    let Some(job) = job else {
        return JobState::Missing;
    };
    let status = job.status.clone().unwrap_or_default();
    let has = |t: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == t && c.status == conditions::TRUE)
    };
    if has("Complete") || status.succeeded.unwrap_or(0) > 0 {
        JobState::Succeeded
    } else if has("Failed") {
        JobState::Failed
    } else {
        JobState::Running
    }
}

/// The status from what was observed. `credentials_ok` is false when the existing
/// credentials Secret lacks a key (which the operator refuses to repair by itself).
pub fn next_status(
    mq: &MessageQueue,
    sts: Option<&StatefulSet>,
    job: JobState,
    credentials_ok: bool,
    now: &Time,
) -> MessageQueueStatus {
    let current = mq.status.clone().unwrap_or_default();
    let name = mq.name_any();
    let replicas = mq.spec.nodes();
    let ready_nodes = sts
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let broker = broker_ready(sts, replicas);
    let topology = match (broker, job) {
        (_, JobState::Succeeded) => Desired::new(
            Type::TopologyDeclared,
            true,
            Reason::DECLARED,
            "definitions imported",
        ),
        (_, JobState::Failed) => Desired::new(
            Type::TopologyDeclared,
            false,
            Reason::DECLARATION_FAILED,
            format!("Job {} failed; see its logs", topology_job_name(mq)),
        ),
        (true, _) => Desired::new(
            Type::TopologyDeclared,
            false,
            Reason::DECLARING,
            format!("Job {} is importing the definitions", topology_job_name(mq)),
        ),
        (false, _) => Desired::new(
            Type::TopologyDeclared,
            false,
            Reason::WAITING_FOR_BROKER,
            "declared once the broker is ready",
        ),
    };
    let declared = job == JobState::Succeeded;
    let (phase, ready) = if !credentials_ok {
        (
            Phase::Degraded,
            Desired::new(
                Type::Ready,
                false,
                Reason::CREDENTIALS_INCOMPLETE,
                format!(
                    "Secret {} lacks a key; it is never regenerated automatically, restore it or delete it to start over",
                    credentials_secret_name(&name)
                ),
            ),
        )
    } else if job == JobState::Failed {
        (
            Phase::Degraded,
            Desired::new(
                Type::Ready,
                false,
                Reason::DECLARATION_FAILED,
                topology.message.clone(),
            ),
        )
    } else if broker && declared {
        (
            Phase::Ready,
            Desired::new(
                Type::Ready,
                true,
                Reason::REPLICAS_READY,
                format!("{ready_nodes}/{replicas} nodes ready, topology declared"),
            ),
        )
    } else {
        (
            Phase::Progressing,
            Desired::new(
                Type::Ready,
                false,
                Reason::REPLICAS_NOT_READY,
                format!("{ready_nodes}/{replicas} nodes ready"),
            ),
        )
    };
    // Incomplete credentials and a failed declaration stay until someone acts.
    let stuck = Desired::new(
        Type::Degraded,
        phase == Phase::Degraded,
        ready.reason,
        &ready.message,
    );
    let [reconciling, stalled] = conditions::kstatus(&ready, None, Some(&stuck));
    MessageQueueStatus {
        phase: Some(phase),
        ready: Some(format!("{ready_nodes}/{replicas}")),
        credentials_secret: Some(credentials_secret_name(&name)),
        endpoint: Some(format!("{name}:{AMQP_PORT}")),
        conditions: conditions::merge(
            &current.conditions,
            vec![ready, topology, reconciling, stalled],
            mq.metadata.generation,
            now,
        ),
        observed_generation: mq.metadata.generation,
    }
}

/// The status after a reconcile that failed: as it was, with Ready=False and Stalled
/// or Reconciling ([`conditions::after_failure`]).
pub fn status_after_failure(
    mq: &MessageQueue,
    failure: &conditions::Failure,
    now: &Time,
) -> MessageQueueStatus {
    let current = mq.status.clone().unwrap_or_default();
    let generation = mq.metadata.generation;
    MessageQueueStatus {
        phase: Some(failure.phase()),
        conditions: conditions::after_failure(&current.conditions, failure, generation, now),
        observed_generation: generation,
        ..current
    }
}

/// Fixtures for tests here and in the runtime crate (feature `testing`).
#[cfg(any(test, feature = "testing"))]
pub mod fixtures {
    use crate::crd::{MessageQueue, MessageQueueSpec};

    /// `finflow/events`, generation 1, with every default.
    pub fn message_queue() -> MessageQueue {
        let spec: MessageQueueSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        let mut mq = MessageQueue::new("events", spec);
        mq.metadata.namespace = Some("finflow".into());
        mq.metadata.uid = Some("uid-events".into());
        mq.metadata.generation = Some(1);
        mq
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::message_queue as mq;
    use super::*;
    use crate::crd::messagequeue::{BindingSpec, QueueSpec};
    use crate::finservice::fixtures::env_named;
    use k8s_openapi::api::apps::v1::StatefulSetStatus;
    use k8s_openapi::api::batch::v1::JobStatus;
    use k8s_openapi::jiff::Timestamp;

    fn claim(name: &str, controller: Option<(&str, &str)>) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(selector("events")),
                owner_references: controller.map(|(kind, owner)| {
                    vec![
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                            api_version: "apps/v1".into(),
                            kind: kind.into(),
                            name: owner.into(),
                            uid: format!("uid-{owner}"),
                            controller: Some(true),
                            block_owner_deletion: None,
                        },
                    ]
                }),
                ..ObjectMeta::default()
            },
            ..PersistentVolumeClaim::default()
        }
    }

    #[test]
    fn only_credentials_an_earlier_queue_of_the_name_released_are_taken_back() {
        let queue = mq();
        let mut released = credentials_secret(&queue, "s3cret", "cookie");
        released.metadata.owner_references = None;
        assert!(released_credentials(&queue, &released));
        let mut by_hand = released.clone();
        by_hand.metadata.labels = None;
        assert!(!released_credentials(&queue, &by_hand));
        let mut synced = released.clone();
        synced.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "external-secrets.io/v1".into(),
                kind: "ExternalSecret".into(),
                name: "events-credentials".into(),
                uid: "uid-es".into(),
                controller: Some(true),
                block_owner_deletion: None,
            },
        ]);
        assert!(!released_credentials(&queue, &synced));
    }

    /// The MessageQueue's StatefulSet as the API server has it, with its uid.
    fn broker(queue: &MessageQueue) -> StatefulSet {
        let mut sts = desired(queue, &ClusterDomain::default()).stateful_set;
        sts.metadata.uid = Some("uid-events".into());
        sts
    }

    #[test]
    fn only_the_claims_the_broker_s_stateful_set_made_are_its_to_delete() {
        let queue = mq();
        let ours = broker(&queue);
        let claims = [
            claim("data-events-0", None),
            claim("data-events-2", Some(("StatefulSet", "events"))),
            // A Helm release of RabbitMQ named `events` labels its volumes the same.
            claim(
                "data-events-rabbitmq-0",
                Some(("StatefulSet", "events-rabbitmq")),
            ),
            claim("data-events-rabbitmq-1", None),
            claim("data-events-", None),
            claim("data-events-1x", None),
            claim("data-events-3", Some(("StatefulSet", "other"))),
            claim("data-events-4", Some(("Deployment", "events"))),
            claim("events-data-0", None),
        ];
        assert_eq!(
            own_claims(&queue, Some(&ours), &claims),
            ["data-events-0", "data-events-2"]
        );
    }

    /// A Bitnami release named `events` has a StatefulSet `events` whose volumes are
    /// `data-events-<n>`, owned by nothing: a MessageQueue `events`, stalled on that
    /// StatefulSet and deleted, deleted that release's data.
    #[test]
    fn without_a_stateful_set_of_its_own_a_message_queue_deletes_no_claim() {
        let queue = mq();
        let claims = [claim("data-events-0", None), claim("data-events-1", None)];
        let mut theirs = broker(&queue);
        theirs.metadata.owner_references = None;
        theirs.metadata.uid = Some("uid-bitnami".into());
        assert!(own_claims(&queue, Some(&theirs), &claims).is_empty());
        assert!(own_claims(&queue, None, &claims).is_empty());
        // Another MessageQueue of the name, deleted and made again: its broker is not
        // this one's.
        let mut before = broker(&queue);
        before.metadata.owner_references.as_mut().unwrap()[0].uid = "uid-earlier".into();
        assert!(own_claims(&queue, Some(&before), &claims).is_empty());
        // And a claim its StatefulSet would own, but a StatefulSet of another uid does.
        let mut stale = claim("data-events-0", Some(("StatefulSet", "events")));
        stale.metadata.owner_references.as_mut().unwrap()[0].uid = "uid-gone".into();
        assert!(own_claims(&queue, Some(&broker(&queue)), &[stale]).is_empty());
    }

    fn now() -> Time {
        Time(Timestamp::from_second(1000).unwrap())
    }

    fn ready_sts(mq: &MessageQueue) -> StatefulSet {
        let mut sts = desired(mq, &ClusterDomain::default()).stateful_set;
        sts.metadata.generation = Some(1);
        sts.status = Some(StatefulSetStatus {
            observed_generation: Some(1),
            replicas: 1,
            ready_replicas: Some(1),
            updated_replicas: Some(1),
            ..StatefulSetStatus::default()
        });
        sts
    }

    fn decode(secret: &Secret, key: &str) -> String {
        String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
    }

    #[test]
    fn the_credentials_hold_the_user_password_cookie_and_url() {
        let secret = credentials_secret(&mq(), "s3cret", "cookie");
        assert_eq!(secret.metadata.name.as_deref(), Some("events-credentials"));
        assert_eq!(decode(&secret, USERNAME_KEY), "finflow");
        assert_eq!(decode(&secret, PASSWORD_KEY), "s3cret");
        assert_eq!(
            decode(&secret, URL_KEY),
            "amqp://finflow:s3cret@events:5672/%2f"
        );
        assert!(credentials_complete(&secret));
        let mut broken = secret;
        broken.data.as_mut().unwrap().remove(COOKIE_KEY);
        assert!(!credentials_complete(&broken));
    }

    #[test]
    fn the_broker_is_a_stateful_set_with_a_volume_per_node() {
        let owned = desired(&mq(), &ClusterDomain::default());
        let spec = owned.stateful_set.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.service_name.as_deref(), Some("events-headless"));
        let claim = &spec.volume_claim_templates.as_ref().unwrap()[0];
        let size = &claim
            .spec
            .as_ref()
            .unwrap()
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"];
        assert_eq!(size.0, "1Gi");
        let retention = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .unwrap();
        assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
        let broker = &spec.template.spec.as_ref().unwrap().containers[0];
        let pass = env_named(broker, "RABBITMQ_DEFAULT_PASS")[0];
        let from = pass
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (from.name.as_str(), from.key.as_str()),
            ("events-credentials", "password")
        );
    }

    #[test]
    fn nodes_name_each_other_in_the_configured_cluster_domain() {
        let mut mq = mq();
        mq.spec.replicas = 2;
        let domain: ClusterDomain = "corp.example".parse().unwrap();
        let owned = desired(&mq, &domain);
        let conf = &owned.config_map.data.as_ref().unwrap()["rabbitmq.conf"];
        assert!(conf.contains(
            "classic_config.nodes.2 = rabbit@events-1.events-headless.finflow.svc.corp.example\n"
        ));
        assert!(!conf.contains("cluster.local"));
        let pod = owned.stateful_set.spec.unwrap().template.spec.unwrap();
        let node = env_named(&pod.containers[0], "RABBITMQ_NODENAME")[0];
        assert_eq!(
            node.value.as_deref(),
            Some("rabbit@$(POD_NAME).events-headless.$(POD_NAMESPACE).svc.corp.example")
        );
    }

    #[test]
    fn a_node_count_beyond_the_schema_s_bound_runs_and_names_at_most_its_nodes() {
        let mut mq = mq();
        mq.spec.replicas = i32::MAX;
        let owned = desired(&mq, &ClusterDomain::default());
        let conf = &owned.config_map.data.as_ref().unwrap()["rabbitmq.conf"];
        let nodes = conf.matches("classic_config.nodes.").count();
        let most = crate::crd::messagequeue::MAX_REPLICAS;
        assert_eq!(nodes, most as usize);
        let spec = owned.stateful_set.spec.unwrap();
        assert_eq!(spec.replicas, Some(most), "as many pods as named nodes");
    }

    #[test]
    fn headless_and_client_services_select_the_broker() {
        let owned = desired(&mq(), &ClusterDomain::default());
        let [headless, client] = &owned.services;
        assert_eq!(headless.metadata.name.as_deref(), Some("events-headless"));
        assert_eq!(
            headless.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("None")
        );
        assert_eq!(client.metadata.name.as_deref(), Some("events"));
        let ports: Vec<i32> = client
            .spec
            .as_ref()
            .unwrap()
            .ports
            .iter()
            .flatten()
            .map(|p| p.port)
            .collect();
        assert!(ports.contains(&5672));
        let pod_labels = owned
            .stateful_set
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref();
        let own = pod_labels.unwrap().labels.clone().unwrap();
        // A Helm release of RabbitMQ named like the queue labels its pods just so.
        let mut helm = selector("events");
        helm.insert(meta::MANAGED_BY_LABEL.to_owned(), "Helm".to_owned());
        for s in [headless, client] {
            let selects = |labels: &std::collections::BTreeMap<String, String>| {
                let selector = s.spec.as_ref().unwrap().selector.as_ref().unwrap();
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            };
            assert!(selects(&own), "the broker's own pods");
            assert!(!selects(&helm), "another release's pods");
        }
    }

    #[test]
    fn the_default_topology_declares_the_design_exchanges() {
        let defs = definitions(&mq());
        let names: Vec<_> = defs["exchanges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].clone())
            .collect();
        assert_eq!(names, [json!("finflow.events"), json!("finflow.dlx")]);
        assert_eq!(defs["exchanges"][0]["type"], "topic");
    }

    #[test]
    fn a_changed_topology_gets_a_new_job() {
        let before = mq();
        let mut after = mq();
        after.spec.topology.queues.push(QueueSpec {
            name: "payment.requests".into(),
            quorum: true,
            dead_letter_exchange: Some("finflow.dlx".into()),
        });
        after.spec.topology.bindings.push(BindingSpec {
            exchange: "finflow.events".into(),
            queue: "payment.requests".into(),
            routing_key: "payment.requested".into(),
        });
        assert_ne!(topology_job_name(&before), topology_job_name(&after));
        assert!(topology_job_name(&after).len() <= 63);
        let defs = definitions(&after);
        assert_eq!(defs["queues"][0]["arguments"]["x-queue-type"], "quorum");
        assert_eq!(defs["bindings"][0]["routing_key"], "payment.requested");
    }

    #[test]
    fn the_topology_is_not_declared_before_the_job_succeeds() {
        let mq = mq();
        let waiting = next_status(&mq, None, JobState::Missing, true, &now());
        assert_eq!(waiting.phase, Some(Phase::Progressing));
        let topo = conditions::find(&waiting.conditions, Type::TopologyDeclared).unwrap();
        assert_eq!(
            (topo.status.as_str(), topo.reason.as_str()),
            ("False", Reason::WAITING_FOR_BROKER.as_str())
        );

        let sts = ready_sts(&mq);
        let running = next_status(&mq, Some(&sts), JobState::Running, true, &now());
        assert_eq!(running.phase, Some(Phase::Progressing));
        assert!(!conditions::is_true(
            &running.conditions,
            Type::TopologyDeclared
        ));

        let done = next_status(&mq, Some(&sts), JobState::Succeeded, true, &now());
        assert_eq!(done.phase, Some(Phase::Ready));
        assert!(conditions::is_true(
            &done.conditions,
            Type::TopologyDeclared
        ));
        assert!(conditions::is_true(&done.conditions, Type::Ready));

        let failed = next_status(&mq, Some(&sts), JobState::Failed, true, &now());
        assert_eq!(failed.phase, Some(Phase::Degraded));
    }

    #[test]
    fn a_queue_on_its_way_is_reconciling_and_a_failed_declaration_stalls() {
        let mq = mq();
        let sts = ready_sts(&mq);
        let kstatus = |status: &MessageQueueStatus| {
            [Type::Reconciling, Type::Stalled].map(|t| conditions::is_true(&status.conditions, t))
        };
        let running = next_status(&mq, Some(&sts), JobState::Running, true, &now());
        assert_eq!(kstatus(&running), [true, false]);
        let done = next_status(&mq, Some(&sts), JobState::Succeeded, true, &now());
        assert_eq!(kstatus(&done), [false, false]);
        let failed = next_status(&mq, Some(&sts), JobState::Failed, true, &now());
        assert_eq!(kstatus(&failed), [false, true]);
        let stalled = conditions::find(&failed.conditions, Type::Stalled).unwrap();
        assert_eq!(stalled.reason, Reason::DECLARATION_FAILED);
    }

    #[test]
    fn incomplete_credentials_degrade_instead_of_being_replaced() {
        let mq = mq();
        let status = next_status(
            &mq,
            Some(&ready_sts(&mq)),
            JobState::Succeeded,
            false,
            &now(),
        );
        assert_eq!(status.phase, Some(Phase::Degraded));
        assert!(!conditions::is_true(&status.conditions, Type::Ready));
    }

    #[test]
    fn the_broker_and_topology_pods_pass_the_restricted_profile() {
        let mut mq = mq();
        mq.spec.replicas = 3;
        let sts = desired(&mq, &ClusterDomain::default())
            .stateful_set
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        assert_eq!(pod_security::violations(&sts), Vec::<String>::new());
        let security = sts.security_context.unwrap();
        assert_eq!(
            (security.run_as_user, security.fs_group),
            (Some(999), Some(999))
        );
        let job = topology_job(&mq).spec.unwrap().template.spec.unwrap();
        assert_eq!(pod_security::violations(&job), Vec::<String>::new());
    }

    #[test]
    fn job_states_follow_the_job_conditions() {
        let mut job = topology_job(&mq());
        assert_eq!(job_state(None), JobState::Missing);
        assert_eq!(job_state(Some(&job)), JobState::Running);
        job.status = Some(JobStatus {
            succeeded: Some(1),
            ..JobStatus::default()
        });
        assert_eq!(job_state(Some(&job)), JobState::Succeeded);
    }
}
