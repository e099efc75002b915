//! Helpers of the cluster tests (`tests/operator.rs`, `tests/rollouts.rs`): they run
//! only when `KUBECONFIG` names a cluster (a kind or k3d cluster is enough) and say why
//! they skip otherwise. Each test installs the generated CRDs, takes a namespace of its
//! own, and runs the operator's controllers in the test process, scoped to it.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use finflow_operator::controller::{self, Context};
use finflow_operator::crd;
use finflow_operator::finservice::Settings;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

/// Whether a cluster is configured; says why the test skips when not.
pub fn available(tests: &str) -> bool {
    if std::env::var_os("KUBECONFIG").is_none() {
        // Written to stderr directly: the harness captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "{tests} skipped: KUBECONFIG is not set, so there is no cluster to test against"
        );
        return false;
    }
    true
}

/// A client from `KUBECONFIG`, with rustls on ring as everywhere in the project.
pub async fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::try_default()
        .await
        .expect("a client from KUBECONFIG")
}

/// Applies the generated CRDs and waits until each is established.
pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("finflow-operator-tests").force();
    for crd in crd::all() {
        let name = crd.name_any();
        crds.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .unwrap();
    }
    wait_established(client).await;
}

/// Waits until each of the operator's CRDs is established.
pub async fn wait_established(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crd::all() {
        let name = crd.name_any();
        eventually(
            &format!("CRD {name} established"),
            Duration::from_secs(120),
            || {
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
            },
        )
        .await;
    }
}

/// Polls `check` every second until it holds, failing after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// A namespace of the test's own, deleted by [`TestNamespace::delete`].
pub struct TestNamespace {
    client: Client,
    pub name: String,
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> Self {
        let name = format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
            .chars()
            .take(63)
            .collect::<String>();
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

    pub async fn delete(self) {
        let namespaces: Api<Namespace> = Api::all(self.client);
        let _ = namespaces
            .delete(&self.name, &DeleteParams::default())
            .await;
    }
}

/// Runs the controllers in this process, watching `namespace`, until the returned
/// sender says `true` (or is dropped).
pub fn start_controllers(client: &Client, namespace: &str) -> watch::Sender<bool> {
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
