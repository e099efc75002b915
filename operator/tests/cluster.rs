//! Tests against a real cluster: they run only when `KUBECONFIG` is set (a kind or k3d
//! cluster is enough), and say why they skip otherwise.
//!
//! They install the generated CRDs, run the controllers in this process against the
//! cluster, create a small platform in a fresh namespace, and watch the objects appear.
//! The app images need not exist: what is checked is what the operator creates and what
//! it reports, not whether the pods start.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use finflow_operator::controller::{self, Context};
use finflow_operator::crd::{self, FinService, RedisCache};
use finflow_operator::finservice::Settings;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

fn cluster_available() -> bool {
    if std::env::var_os("KUBECONFIG").is_none() {
        // Written to stderr directly: the test harness captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "cluster tests skipped: KUBECONFIG is not set, so there is no cluster to test against"
        );
        return false;
    }
    true
}

async fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::try_default()
        .await
        .expect("a client from KUBECONFIG")
}

async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("finflow-operator-tests").force();
    for crd in crd::all() {
        let name = crd.name_any();
        crds.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .unwrap();
        eventually(&format!("CRD {name} established"), || {
            let crds = crds.clone();
            let name = name.clone();
            async move {
                crds.get_opt(&name).await.ok().flatten().is_some_and(|c| {
                    c.status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                })
            }
        })
        .await;
    }
}

/// Polls `check` for up to two minutes.
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("timed out waiting for {what}");
}

struct TestNamespace {
    client: Client,
    name: String,
}

impl TestNamespace {
    async fn create(client: &Client) -> Self {
        let name = format!("finflow-test-{}", std::process::id());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        Self {
            client: client.clone(),
            name,
        }
    }

    async fn delete(self) {
        let namespaces: Api<Namespace> = Api::all(self.client);
        let _ = namespaces
            .delete(&self.name, &DeleteParams::default())
            .await;
    }
}

/// Runs the controllers in this process until the returned sender is dropped or set.
fn start_controllers(client: &Client, namespace: &str) -> watch::Sender<bool> {
    let (stop_tx, stop) = watch::channel(false);
    let ctx = Arc::new(Context::new(
        client.clone(),
        Settings {
            sidecar_image: "ghcr.io/finflow/sidecar:test".into(),
            native_sidecars: true,
        },
        Some("cluster-test".into()),
    ));
    let namespace = namespace.to_owned();
    tokio::spawn(async move {
        let trigger = move || -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
            let mut stop = stop.clone();
            Box::pin(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
        };
        controller::run(ctx, Some(namespace), trigger).await;
    });
    stop_tx
}

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
    if !cluster_available() {
        return;
    }
    let client = client().await;
    install_crds(&client).await;
}

#[tokio::test]
async fn a_platform_gets_its_deployments_and_services() {
    if !cluster_available() {
        return;
    }
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client).await;
    let stop = start_controllers(&client, &ns.name);

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
        eventually(&format!("Deployment {name}"), || {
            let deployments = deployments.clone();
            async move { deployments.get_opt(name).await.ok().flatten().is_some() }
        })
        .await;
    }
    for name in ["auth", "auth-preview", "cache"] {
        eventually(&format!("Service {name}"), || {
            let svcs = svcs.clone();
            async move { svcs.get_opt(name).await.ok().flatten().is_some() }
        })
        .await;
    }
    eventually("the cache's password Secret", || {
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
    eventually("wallet Waiting", || {
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
