//! The operator against a real cluster: runs only when `KUBECONFIG` is set (a kind or
//! k3d cluster is enough), and says why it skips otherwise.
//!
//! The CRDs are installed, the controllers run in this process against the cluster, and
//! a small platform is created in a fresh namespace. The app images need not exist:
//! what is checked is what the operator creates and reports, not whether pods start.

use std::time::Duration;

use finflow_e2e::cluster::{self, TestNamespace, eventually};
use finflow_operator::crd::{self, FinService, RedisCache};
use finflow_operator_core::finservice::fixtures::{container, env_named, pod};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(120);

fn finservice(name: &str, depends_on: &[&str]) -> FinService {
    serde_json::from_value(json!({
        "apiVersion": "finflow.dev/v1alpha1",
        "kind": "FinService",
        "metadata": {"name": name},
        "spec": {
            "image": format!("ghcr.io/finflow/{name}"),
            "version": "0.1.0",
            "replicas": 1,
            "port": 8001,
            "dependsOn": depends_on,
            "sidecar": {"jwksUri": "http://auth:8001/.well-known/jwks.json"}
        }
    }))
    .unwrap()
}

#[tokio::test]
async fn the_crds_install_and_are_established() {
    if !cluster::available("operator cluster tests") {
        return;
    }
    let client = cluster::client().await;
    cluster::install_crds(&client).await;
}

#[tokio::test]
async fn the_api_server_refuses_a_message_queue_of_more_nodes_than_the_operator_runs() {
    if !cluster::available("operator cluster tests") {
        return;
    }
    let client = cluster::client().await;
    cluster::install_crds(&client).await;
    let ns = TestNamespace::create(&client, "finflow-mq-bound-test").await;
    let queues: Api<crd::MessageQueue> = Api::namespaced(client.clone(), &ns.name);
    let queue = |name: &str, replicas: i64| -> crd::MessageQueue {
        serde_json::from_value(json!({
            "apiVersion": "finflow.dev/v1alpha1",
            "kind": "MessageQueue",
            "metadata": {"name": name},
            "spec": {"replicas": replicas}
        }))
        .unwrap()
    };
    // Each node is named in every node's configuration: 2^31 of them would have had
    // the operator build gigabytes of it, and be killed, for every namespace.
    for replicas in [
        i64::from(i32::MAX),
        i64::from(crd::messagequeue::MAX_REPLICAS) + 1,
    ] {
        let refused = queues
            .create(&PostParams::default(), &queue("huge", replicas))
            .await
            .expect_err("more nodes than the operator runs");
        let kube::Error::Api(status) = refused else {
            panic!("not the API server's refusal: {refused}");
        };
        assert_eq!(status.code, 422, "{status:?}");
        assert!(
            status.message.contains("replicas must be between 0 and 9"),
            "{status:?}"
        );
    }
    let most = i64::from(crd::messagequeue::MAX_REPLICAS);
    queues
        .create(&PostParams::default(), &queue("largest", most))
        .await
        .expect("the largest MessageQueue the operator runs");
    ns.delete().await;
}

#[tokio::test]
async fn the_api_server_refuses_a_finservice_whose_lists_have_no_end() {
    if !cluster::available("operator cluster tests") {
        return;
    }
    let client = cluster::client().await;
    cluster::install_crds(&client).await;
    let ns = TestNamespace::create(&client, "finflow-fs-bound-test").await;
    let services: Api<FinService> = Api::namespaced(client.clone(), &ns.name);
    let with_env = |name: &str, entries: usize| {
        let mut fs = finservice(name, &[]);
        fs.spec.env = (0..entries)
            .map(|i| {
                serde_json::from_value(json!({"name": format!("E{i}"), "value": "x"})).unwrap()
            })
            .collect();
        fs
    };
    // The operator holds every FinService of the cluster and reads a namespace's at
    // each reconcile: a list without end is memory without end.
    let refused = services
        .create(&PostParams::default(), &with_env("long", 257))
        .await
        .expect_err("more env entries than the schema allows");
    let kube::Error::Api(status) = refused else {
        panic!("not the API server's refusal: {refused}");
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(status.message.contains("spec.env"), "{status:?}");
    let mut proxies = finservice("proxied", &[]);
    proxies.spec.sidecar.trusted_proxies = (0..65).map(|i| format!("10.0.0.{i}")).collect();
    assert!(
        services
            .create(&PostParams::default(), &proxies)
            .await
            .is_err()
    );
    services
        .create(&PostParams::default(), &with_env("longest", 256))
        .await
        .expect("the longest env the schema allows");
    ns.delete().await;
}

#[tokio::test]
async fn a_platform_gets_its_deployments_and_services() {
    if !cluster::available("operator cluster tests") {
        return;
    }
    let client = cluster::client().await;
    cluster::install_crds(&client).await;
    let ns = TestNamespace::create(&client, "finflow-operator-test").await;
    let stop = cluster::start_controllers(&client, &ns.name);

    let services: Api<FinService> = Api::namespaced(client.clone(), &ns.name);
    let caches: Api<RedisCache> = Api::namespaced(client.clone(), &ns.name);
    let pp = PostParams::default();
    services
        .create(&pp, &finservice("auth", &[]))
        .await
        .unwrap();
    services
        .create(&pp, &finservice("wallet", &["auth"]))
        .await
        .unwrap();
    let cache: RedisCache = serde_json::from_value(json!({
        "apiVersion": "finflow.dev/v1alpha1", "kind": "RedisCache",
        "metadata": {"name": "cache"}, "spec": {}
    }))
    .unwrap();
    caches.create(&pp, &cache).await.unwrap();

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    for name in ["auth-blue", "auth-green", "cache"] {
        eventually(&format!("Deployment {name}"), LIMIT, || {
            let deployments = deployments.clone();
            async move { deployments.get_opt(name).await.ok().flatten().is_some() }
        })
        .await;
    }
    for name in ["auth", "auth-preview", "cache"] {
        eventually(&format!("Service {name}"), LIMIT, || {
            let svcs = svcs.clone();
            async move { svcs.get_opt(name).await.ok().flatten().is_some() }
        })
        .await;
    }
    eventually("the cache's password Secret", LIMIT, || {
        let secrets = secrets.clone();
        async move { secrets.get_opt("cache-auth").await.ok().flatten().is_some() }
    })
    .await;

    let blue = deployments.get("auth-blue").await.unwrap();
    assert_eq!(blue.spec.as_ref().unwrap().replicas, Some(1));
    let green = deployments.get("auth-green").await.unwrap();
    assert_eq!(green.spec.as_ref().unwrap().replicas, Some(0));
    let selector = svcs
        .get("auth")
        .await
        .unwrap()
        .spec
        .unwrap()
        .selector
        .unwrap();
    assert_eq!(selector["finflow.dev/color"], "blue");

    // wallet depends on auth, whose pods cannot become ready here: it must wait, and
    // nothing of it may be rolled out.
    eventually("wallet Waiting", LIMIT, || {
        let services = services.clone();
        async move {
            services
                .get("wallet")
                .await
                .ok()
                .and_then(|w| w.status)
                .is_some_and(|s| {
                    s.phase == Some(crd::Phase::Waiting)
                        && s.conditions
                            .iter()
                            .any(|c| c.type_ == "DependenciesReady" && c.status == "False")
                })
        }
    })
    .await;
    assert!(deployments.get_opt("wallet-blue").await.unwrap().is_none());

    let _ = stop.send(true);
    ns.delete().await;
}

/// A namespace with the CRDs installed and the controllers running in it.
async fn platform(
    prefix: &str,
) -> Option<(
    kube::Client,
    TestNamespace,
    tokio::sync::watch::Sender<bool>,
)> {
    if !cluster::available("operator cluster tests") {
        return None;
    }
    let client = cluster::client().await;
    cluster::install_crds(&client).await;
    let ns = TestNamespace::create(&client, prefix).await;
    let stop = cluster::start_controllers(&client, &ns.name);
    Some((client, ns, stop))
}

#[tokio::test]
async fn a_users_database_url_replaces_the_operators_in_the_deployment() {
    let Some((client, ns, stop)) = platform("finflow-env-test").await else {
        return;
    };
    let mut fs = finservice("ledger", &[]);
    fs.spec.database_secret_ref =
        serde_json::from_value(json!({"name": "db", "key": "url"})).unwrap();
    fs.spec.env = serde_json::from_value(json!([
        {"name": "DATABASE_URL", "value": "postgres://mine@db.example/ledger"}
    ]))
    .unwrap();
    let services: Api<FinService> = Api::namespaced(client.clone(), &ns.name);
    services.create(&PostParams::default(), &fs).await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    eventually("Deployment ledger-blue", LIMIT, || {
        let deployments = deployments.clone();
        async move {
            deployments
                .get_opt("ledger-blue")
                .await
                .ok()
                .flatten()
                .is_some()
        }
    })
    .await;
    let blue = deployments.get("ledger-blue").await.unwrap();
    let app = container(pod(&blue), "app");
    let urls = env_named(app, "DATABASE_URL");
    assert_eq!(urls.len(), 1, "one DATABASE_URL: {urls:?}");
    assert_eq!(
        urls[0].value.as_deref(),
        Some("postgres://mine@db.example/ledger")
    );
    assert!(urls[0].value_from.is_none());
    let _ = stop.send(true);
    ns.delete().await;
}

#[tokio::test]
async fn a_deployment_the_server_refuses_shows_in_status_and_an_event() {
    let Some((client, ns, stop)) = platform("finflow-refused-test").await else {
        return;
    };
    // The CRD takes any quantities; the API server refuses a container whose request
    // exceeds its limit when the operator applies the Deployment.
    let mut fs = finservice("greedy", &[]);
    fs.spec.resources = serde_json::from_value(json!({
        "requests": {"cpu": "2"}, "limits": {"cpu": "1"}
    }))
    .unwrap();
    let services: Api<FinService> = Api::namespaced(client.clone(), &ns.name);
    services.create(&PostParams::default(), &fs).await.unwrap();
    eventually("greedy Stalled with the server's message", LIMIT, || {
        let services = services.clone();
        async move {
            services.get("greedy").await.ok().is_some_and(|f| {
                let generation = f.metadata.generation;
                f.status.is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == "Stalled"
                            && c.status == "True"
                            && c.reason == "ApplyFailed"
                            && c.message
                                .contains("must be less than or equal to cpu limit")
                            && c.observed_generation == generation
                    }) && s
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "False")
                })
            })
        }
    })
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let warnings: Vec<Event> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("greedy"))
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .collect();
    assert!(
        warnings
            .iter()
            .any(|e| e.note.as_deref().is_some_and(|n| n.contains("cpu limit"))),
        "a Warning Event names the refusal: {warnings:?}"
    );
    let _ = stop.send(true);
    ns.delete().await;
}

/// Waits until `name` is Stalled, `ObjectNotOwned`, naming `object` (`Kind/name`).
async fn stalled_on_another_s<K>(
    api: &Api<K>,
    name: &str,
    object: &str,
    conditions: fn(K) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(
        &format!("{name} Stalled, naming {object}"),
        LIMIT,
        || async {
            api.get(name).await.ok().is_some_and(|k| {
                conditions(k).iter().any(|c| {
                    c.type_ == "Stalled"
                        && c.status == "True"
                        && c.reason == "ObjectNotOwned"
                        && c.message.starts_with(&format!("{object} exists"))
                })
            })
        },
    )
    .await;
}

#[tokio::test]
async fn a_finservice_named_like_a_service_someone_made_leaves_it_alone_and_says_so() {
    let Some((client, ns, stop)) = platform("finflow-squat-test").await else {
        return;
    };
    // A Service made by hand: the address the namespace's apps reach their database at.
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let theirs: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "ledger"},
        "spec": {"selector": {"app": "postgres"}, "ports": [{"port": 5432}]}
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let finservices: Api<FinService> = Api::namespaced(client.clone(), &ns.name);
    finservices
        .create(&PostParams::default(), &finservice("ledger", &[]))
        .await
        .unwrap();
    stalled_on_another_s(&finservices, "ledger", "Service/ledger", |f| {
        f.status.map(|s| s.conditions).unwrap_or_default()
    })
    .await;
    let service = services.get("ledger").await.unwrap();
    let selector = service.spec.and_then(|s| s.selector).unwrap_or_default();
    assert_eq!(
        selector,
        [("app".to_owned(), "postgres".to_owned())].into(),
        "its traffic still goes where it went"
    );
    assert!(service.metadata.owner_references.is_none());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        deployments.get_opt("ledger-blue").await.unwrap().is_none(),
        "nothing of the FinService's is written while one of its objects is someone else's"
    );

    // Once its maker removes it, the FinService gets its own.
    services
        .delete("ledger", &Default::default())
        .await
        .unwrap();
    eventually("a Service of ledger's own", LIMIT, || {
        let services = services.clone();
        async move {
            services
                .get_opt("ledger")
                .await
                .ok()
                .flatten()
                .is_some_and(|s| {
                    s.metadata
                        .owner_references
                        .is_some_and(|o| o.iter().any(|r| r.kind == "FinService"))
                })
        }
    })
    .await;
    let _ = stop.send(true);
    ns.delete().await;
}

#[tokio::test]
async fn a_message_queue_that_keeps_nothing_deletes_its_own_volumes_and_no_other_release_s() {
    let Some((client, ns, stop)) = platform("finflow-claims-test").await else {
        return;
    };
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    // What the broker's StatefulSet made, and a Helm release of RabbitMQ named `events`
    // beside it, labelled the same way.
    for name in ["data-events-0", "data-events-rabbitmq-0"] {
        let claim: PersistentVolumeClaim = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "labels": {
                "app.kubernetes.io/name": "rabbitmq", "app.kubernetes.io/instance": "events"
            }},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
        }))
        .unwrap();
        claims.create(&PostParams::default(), &claim).await.unwrap();
    }
    let queues: Api<crd::MessageQueue> = Api::namespaced(client.clone(), &ns.name);
    let queue: crd::MessageQueue = serde_json::from_value(json!({
        "apiVersion": "finflow.dev/v1alpha1", "kind": "MessageQueue",
        "metadata": {"name": "events"},
        "spec": {"storage": {"retainOnDelete": false}}
    }))
    .unwrap();
    queues.create(&PostParams::default(), &queue).await.unwrap();
    // Its StatefulSet made: only then are the claims of its name known to be its own.
    let brokers: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    eventually("the MessageQueue's StatefulSet", LIMIT, || {
        let brokers = brokers.clone();
        async move { brokers.get_opt("events").await.is_ok_and(|s| s.is_some()) }
    })
    .await;
    queues.delete("events", &Default::default()).await.unwrap();
    eventually("the MessageQueue gone", LIMIT, || {
        let queues = queues.clone();
        async move { queues.get_opt("events").await.is_ok_and(|q| q.is_none()) }
    })
    .await;
    // Without a controller manager a deleted claim keeps its protection finalizer: it
    // stays, marked for deletion.
    let deleted = |c: Option<PersistentVolumeClaim>| {
        c.is_none_or(|c| c.metadata.deletion_timestamp.is_some())
    };
    assert!(deleted(claims.get_opt("data-events-0").await.unwrap()));
    assert!(
        !deleted(claims.get_opt("data-events-rabbitmq-0").await.unwrap()),
        "another release's volume is not the MessageQueue's to delete"
    );
    let _ = stop.send(true);
    ns.delete().await;
}

#[tokio::test]
async fn a_message_queue_leaves_a_credentials_secret_it_did_not_make_alone() {
    let Some((client, ns, stop)) = platform("finflow-mq-secret-test").await else {
        return;
    };
    // A Secret of the name the MessageQueue would use, made by hand: adopted, it would
    // be deleted with the MessageQueue, and its password replaced the broker's.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let theirs: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "events-credentials"},
        "stringData": {"password": "someone else's"}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let queues: Api<crd::MessageQueue> = Api::namespaced(client.clone(), &ns.name);
    let queue: crd::MessageQueue = serde_json::from_value(json!({
        "apiVersion": "finflow.dev/v1alpha1", "kind": "MessageQueue",
        "metadata": {"name": "events"}, "spec": {}
    }))
    .unwrap();
    queues.create(&PostParams::default(), &queue).await.unwrap();
    stalled_on_another_s(&queues, "events", "Secret/events-credentials", |q| {
        q.status.map(|s| s.conditions).unwrap_or_default()
    })
    .await;
    let secret = secrets.get("events-credentials").await.unwrap();
    assert!(secret.metadata.owner_references.is_none());
    let data = secret.data.unwrap_or_default();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["password"],
        "not rewritten"
    );
    let _ = stop.send(true);
    ns.delete().await;
}

/// Dry-runs a pod of `spec` in `namespace`: the API server's pod security admission
/// answers as it would for the pod itself.
async fn pod_admitted(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    spec: k8s_openapi::api::core::v1::PodSpec,
) -> Result<(), String> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    let pod = k8s_openapi::api::core::v1::Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    };
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    pods.create(&dry_run, &pod)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn every_pod_the_operator_makes_or_injects_is_admitted_where_restricted_is_enforced() {
    let Some((client, ns, stop)) = platform("finflow-restricted-test").await else {
        return;
    };
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &ns.name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted"
            }}})),
        )
        .await
        .unwrap();
    let pp = PostParams::default();
    // What a cluster's controller manager gives every namespace (a bare API server has
    // none): pods that name no account run as `default`.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &ns.name);
    let default = serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
    if let Err(e) = accounts.create(&pp, &default).await {
        assert!(e.to_string().contains("AlreadyExists"), "{e}");
    }
    let services: Api<FinService> = Api::namespaced(client.clone(), &ns.name);
    services
        .create(&pp, &finservice("auth", &[]))
        .await
        .unwrap();
    let caches: Api<RedisCache> = Api::namespaced(client.clone(), &ns.name);
    let cache: RedisCache = serde_json::from_value(json!({
        "apiVersion": "finflow.dev/v1alpha1", "kind": "RedisCache",
        "metadata": {"name": "cache"}, "spec": {"password": true}
    }))
    .unwrap();
    caches.create(&pp, &cache).await.unwrap();
    let queues: Api<crd::MessageQueue> = Api::namespaced(client.clone(), &ns.name);
    let queue: crd::MessageQueue = serde_json::from_value(json!({
        "apiVersion": "finflow.dev/v1alpha1", "kind": "MessageQueue",
        "metadata": {"name": "events"}, "spec": {}
    }))
    .unwrap();
    queues.create(&pp, &queue).await.unwrap();

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let sets: Api<k8s_openapi::api::apps::v1::StatefulSet> =
        Api::namespaced(client.clone(), &ns.name);
    let mut made = Vec::new();
    for name in ["auth-blue", "cache"] {
        eventually(&format!("Deployment {name}"), LIMIT, || {
            let deployments = deployments.clone();
            async move { deployments.get_opt(name).await.ok().flatten().is_some() }
        })
        .await;
        made.push((name, pod(&deployments.get(name).await.unwrap()).clone()));
    }
    eventually("the broker's StatefulSet", LIMIT, || {
        let sets = sets.clone();
        async move { sets.get_opt("events").await.ok().flatten().is_some() }
    })
    .await;
    let broker = sets.get("events").await.unwrap().spec.unwrap();
    let mut node = broker.template.spec.unwrap();
    // What the StatefulSet controller adds: each claim template's claim, as a volume.
    for claim in broker.volume_claim_templates.iter().flatten() {
        let name = claim.metadata.name.clone().unwrap();
        node.volumes.get_or_insert_with(Vec::new).push(
            serde_json::from_value(json!({
                "name": name, "persistentVolumeClaim": {"claimName": format!("{name}-events-0")}
            }))
            .unwrap(),
        );
    }
    made.push(("events", node));
    for (name, spec) in made {
        pod_admitted(&client, &ns.name, name, spec)
            .await
            .unwrap_or_else(|e| panic!("a pod of {name} was refused: {e}"));
    }

    // What the webhook does to a pod that states its seccomp profile per container, as
    // the restricted standard allows: the injected pod must still be admitted.
    let app: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(json!({
        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532},
        "containers": [{
            "name": "app", "image": "example/app:1",
            "ports": [{"name": "http", "containerPort": 8080}],
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"}
            }
        }]
    }))
    .unwrap();
    pod_admitted(&client, &ns.name, "app", app.clone())
        .await
        .expect("the app alone is restricted");
    for native in [true, false] {
        let settings = finflow_operator_core::inject::SidecarSettings {
            image: "ghcr.io/finflow/sidecar:0.1.0".to_owned(),
            app_port: None,
            config_map: None,
            hs256_secret: None,
            native,
        };
        let injected = finflow_operator_core::inject::inject(&app, &settings);
        pod_admitted(&client, &ns.name, "injected", injected)
            .await
            .unwrap_or_else(|e| panic!("the injected pod (native {native}) was refused: {e}"));
    }

    let _ = stop.send(true);
    ns.delete().await;
}
