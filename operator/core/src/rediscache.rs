//! RedisCache decisions: the Redis Deployment and Service, the optional password
//! Secret, and the status.
//!
//! Redis here is a cache (idempotency keys at the entry, sessions, read caches) with the
//! database as the ground truth, so it runs as a single-replica Deployment without
//! persistence. The password Secret, like the broker's credentials, is generated once:
//! the controller reads it first and applies [`password_secret`] only when it is missing.

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, PodSpec, PodTemplateSpec, Probe, Secret,
    SecretKeySelector, Service, ServicePort, ServiceSpec, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::conditions::{self, Desired, Reason, Type};
use crate::crd::{Phase, RedisCache, RedisCacheStatus};
use crate::meta::{self, labels, owned_meta, with_spec_hash};
use crate::pod_security;

pub const PASSWORD_KEY: &str = "password";
/// Key of the Redis URL services use (`REDIS_URL`).
pub const URL_KEY: &str = "url";
pub const PORT: i32 = 6379;
const COMPONENT: &str = "redis";
/// The user of the official redis images (`redis`, Debian and Alpine alike).
pub const REDIS_UID: i64 = 999;

pub fn password_secret_name(name: &str) -> String {
    format!("{name}-auth")
}

/// The Redis URL from inside the namespace.
pub fn url(name: &str, password: Option<&str>) -> String {
    match password {
        Some(p) => format!("redis://:{p}@{name}:{PORT}"),
        None => format!("redis://{name}:{PORT}"),
    }
}

fn selector(name: &str) -> std::collections::BTreeMap<String, String> {
    [
        (meta::NAME_LABEL.to_owned(), COMPONENT.to_owned()),
        (meta::INSTANCE_LABEL.to_owned(), name.to_owned()),
    ]
    .into()
}

/// The password Secret, for the first and only time it is written.
pub fn password_secret(rc: &RedisCache, password: &str) -> Secret {
    let name = rc.name_any();
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: owned_meta(rc, password_secret_name(&name), labels(&name, COMPONENT)),
        type_: Some("Opaque".to_owned()),
        data: Some(
            [
                (PASSWORD_KEY.to_owned(), bytes(password)),
                (URL_KEY.to_owned(), bytes(&url(&name, Some(password)))),
            ]
            .into(),
        ),
        ..Secret::default()
    }
}

/// The Deployment and the Service.
#[derive(Debug, Clone, PartialEq)]
pub struct Owned {
    pub deployment: Deployment,
    pub service: Service,
}

pub fn desired(rc: &RedisCache) -> Owned {
    let name = rc.name_any();
    let spec = &rc.spec;
    let mut args = vec![
        "--maxmemory".to_owned(),
        spec.max_memory.clone(),
        "--maxmemory-policy".to_owned(),
        spec.eviction_policy.as_str().to_owned(),
        // A cache: nothing is written to disk.
        "--save".to_owned(),
        String::new(),
        "--appendonly".to_owned(),
        "no".to_owned(),
    ];
    let mut env = Vec::new();
    if spec.password {
        // Kubernetes expands $(REDIS_PASSWORD) in args, so the password stays in the Secret.
        args.extend(["--requirepass".to_owned(), "$(REDIS_PASSWORD)".to_owned()]);
        env.push(EnvVar {
            name: "REDIS_PASSWORD".to_owned(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: password_secret_name(&name),
                    key: PASSWORD_KEY.to_owned(),
                    optional: None,
                }),
                ..EnvVarSource::default()
            }),
        });
    }
    let tcp_probe = |initial: i32| Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String("redis".to_owned()),
            host: None,
        }),
        initial_delay_seconds: Some(initial),
        period_seconds: Some(10),
        ..Probe::default()
    };
    let container = Container {
        name: "redis".to_owned(),
        image: Some(spec.image.clone()),
        args: Some(args),
        env: (!env.is_empty()).then_some(env),
        ports: Some(vec![ContainerPort {
            name: Some("redis".to_owned()),
            container_port: PORT,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        resources: spec.resources.clone(),
        readiness_probe: Some(tcp_probe(2)),
        liveness_probe: Some(tcp_probe(15)),
        security_context: Some(pod_security::container_context()),
        ..Container::default()
    };
    let mut pod_labels = labels(&name, COMPONENT);
    pod_labels.extend(selector(&name));
    let deployment = with_spec_hash(Deployment {
        metadata: owned_meta(rc, &name, labels(&name, COMPONENT)),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector(&name)),
                match_expressions: None,
            },
            // Never two primaries with diverging data, even briefly.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".to_owned()),
                rolling_update: None,
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    automount_service_account_token: Some(false),
                    security_context: Some(pod_security::pod_context(REDIS_UID)),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    });
    let service = with_spec_hash(Service {
        metadata: owned_meta(rc, &name, labels(&name, COMPONENT)),
        spec: Some(ServiceSpec {
            selector: Some(meta::selecting_ours(selector(&name))),
            ports: Some(vec![ServicePort {
                name: Some("redis".to_owned()),
                port: PORT,
                target_port: Some(IntOrString::String("redis".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    });
    Owned {
        deployment,
        service,
    }
}

/// The status from the Deployment as observed.
pub fn next_status(
    rc: &RedisCache,
    deployment: Option<&Deployment>,
    now: &Time,
) -> RedisCacheStatus {
    let current = rc.status.clone().unwrap_or_default();
    let name = rc.name_any();
    let status = deployment
        .and_then(|d| d.status.clone())
        .unwrap_or_default();
    let observed = deployment.is_some_and(|d| {
        status.observed_generation.is_some() && status.observed_generation >= d.metadata.generation
    });
    let ready_replicas = status.ready_replicas.unwrap_or(0);
    let ready = observed && ready_replicas >= 1 && status.updated_replicas.unwrap_or(0) >= 1;
    let (phase, condition) = if ready {
        (
            Phase::Ready,
            Desired::new(
                Type::Ready,
                true,
                Reason::REPLICAS_READY,
                "Redis is answering",
            ),
        )
    } else {
        (
            Phase::Progressing,
            Desired::new(
                Type::Ready,
                false,
                Reason::REPLICAS_NOT_READY,
                "waiting for the Redis pod",
            ),
        )
    };
    let [reconciling, stalled] = conditions::kstatus(&condition, None, None);
    RedisCacheStatus {
        phase: Some(phase),
        ready: Some(format!("{ready_replicas}/1")),
        password_secret: rc.spec.password.then(|| password_secret_name(&name)),
        endpoint: Some(format!("{name}:{PORT}")),
        conditions: conditions::merge(
            &current.conditions,
            vec![condition, reconciling, stalled],
            rc.metadata.generation,
            now,
        ),
        observed_generation: rc.metadata.generation,
    }
}

/// The status after a reconcile that failed: as it was, with Ready=False and Stalled
/// or Reconciling ([`conditions::after_failure`]).
pub fn status_after_failure(
    rc: &RedisCache,
    failure: &conditions::Failure,
    now: &Time,
) -> RedisCacheStatus {
    let current = rc.status.clone().unwrap_or_default();
    let generation = rc.metadata.generation;
    RedisCacheStatus {
        phase: Some(failure.phase()),
        conditions: conditions::after_failure(&current.conditions, failure, generation, now),
        observed_generation: generation,
        ..current
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RedisCacheSpec;
    use crate::finservice::fixtures::pod;
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn rc(password: bool) -> RedisCache {
        let mut spec: RedisCacheSpec = serde_json::from_value(json!({})).unwrap();
        spec.password = password;
        let mut rc = RedisCache::new("cache", spec);
        rc.metadata.namespace = Some("finflow".into());
        rc.metadata.uid = Some("uid-cache".into());
        rc.metadata.generation = Some(1);
        rc
    }

    fn args(owned: &Owned) -> Vec<String> {
        pod(&owned.deployment).containers[0].args.clone().unwrap()
    }

    #[test]
    fn a_password_comes_from_the_secret_and_is_required() {
        let owned = desired(&rc(true));
        let args = args(&owned);
        let at = args.iter().position(|a| a == "--requirepass").unwrap();
        assert_eq!(args[at + 1], "$(REDIS_PASSWORD)");
        let secret = password_secret(&rc(true), "pw");
        assert_eq!(secret.metadata.name.as_deref(), Some("cache-auth"));
        let url = String::from_utf8(secret.data.unwrap()[URL_KEY].0.clone()).unwrap();
        assert_eq!(url, "redis://:pw@cache:6379");
    }

    #[test]
    fn without_a_password_nothing_asks_for_one() {
        let owned = desired(&rc(false));
        assert!(!args(&owned).contains(&"--requirepass".to_owned()));
        assert_eq!(
            next_status(&rc(false), None, &Time(Timestamp::UNIX_EPOCH)).password_secret,
            None
        );
    }

    #[test]
    fn redis_is_one_pod_behind_a_service() {
        let owned = desired(&rc(true));
        let spec = owned.deployment.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(
            spec.strategy.as_ref().unwrap().type_.as_deref(),
            Some("Recreate")
        );
        let service = owned.service.spec.as_ref().unwrap();
        assert_eq!(service.ports.as_ref().unwrap()[0].port, 6379);
        let selects = |labels: &std::collections::BTreeMap<String, String>| {
            service
                .selector
                .as_ref()
                .unwrap()
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        };
        let own = spec.template.metadata.as_ref().unwrap().labels.as_ref();
        assert!(selects(own.unwrap()), "the cache's own pod");
        // A Helm release of Redis named like the cache labels its pods just so.
        let mut helm = selector("cache");
        helm.insert(meta::MANAGED_BY_LABEL.to_owned(), "Helm".to_owned());
        assert!(!selects(&helm), "another release's pod");
        assert_eq!(
            args(&owned)[..4],
            ["--maxmemory", "256mb", "--maxmemory-policy", "volatile-lru"]
        );
    }

    #[test]
    fn the_redis_pod_passes_the_restricted_profile() {
        for password in [true, false] {
            let owned = desired(&rc(password));
            let pod = pod(&owned.deployment);
            assert_eq!(pod_security::violations(pod), Vec::<String>::new());
            let security = pod.security_context.as_ref().unwrap();
            assert_eq!(security.run_as_user, Some(999));
        }
    }

    #[test]
    fn the_cache_is_ready_once_its_pod_is() {
        let rc = rc(true);
        let mut deployment = desired(&rc).deployment;
        let now = Time(Timestamp::UNIX_EPOCH);
        let waiting = next_status(&rc, Some(&deployment), &now);
        assert_eq!(waiting.phase, Some(Phase::Progressing));
        assert!(conditions::is_true(&waiting.conditions, Type::Reconciling));
        deployment.metadata.generation = Some(1);
        deployment.status = Some(DeploymentStatus {
            observed_generation: Some(1),
            ready_replicas: Some(1),
            updated_replicas: Some(1),
            ..DeploymentStatus::default()
        });
        let status = next_status(&rc, Some(&deployment), &now);
        assert_eq!(status.phase, Some(Phase::Ready));
        assert!(conditions::is_true(&status.conditions, Type::Ready));
        assert!(!conditions::is_true(&status.conditions, Type::Reconciling));
        assert!(!conditions::is_true(&status.conditions, Type::Stalled));
        assert_eq!(status.password_secret.as_deref(), Some("cache-auth"));
    }
}
