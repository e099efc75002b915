//! The product installed the way a platform engineer installs it, on a real API server:
//! the CRDs in `crds/` applied server-side, both Helm charts installed by the real Helm
//! engine, the manifests in `examples/` applied. Runs only when `KUBECONFIG` is set and
//! says why it skips otherwise.
//!
//! The operator's controllers run in this process under the chart's own ServiceAccount
//! (impersonated), so what its ClusterRole allows is all they can do. On a bare API
//! server [`bare::Stand`] plays the kubelet and the built-in controllers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use finflow_e2e::bare::{self, Stand};
use finflow_e2e::cluster;
use finflow_operator::crd::{FinService, Phase};
use kube::api::{DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(300);
/// Where the operator chart is installed, as its README says.
const OPERATOR_NS: &str = "finflow-system";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Helm binary: `HELM`, else the one `dev/check-delivery` installs, else `helm`.
fn helm() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("HELM") {
        return Some(h.into());
    }
    let local = root().join("target/delivery-tools/helm/helm");
    if local.exists() {
        return Some(local);
    }
    Command::new("helm")
        .arg("version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("helm"))
}

/// Helm and an admin client, or `None` (and why, on stderr) when `test` must skip.
async fn cluster_and_helm(test: &str) -> Option<(PathBuf, Client)> {
    if !cluster::available(test) {
        return None;
    }
    let Some(helm) = helm() else {
        eprintln!(
            "{test} skipped: no helm (set HELM, or run dev/check-delivery, which installs it)"
        );
        return None;
    };
    Some((helm, cluster::client().await))
}

fn run_helm(helm: &Path, args: &[&str]) -> String {
    let out = Command::new(helm)
        .args(args)
        .current_dir(root())
        .output()
        .expect("running helm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "helm {}:\n{text}", args.join(" "));
    text
}

/// Every document of every YAML file in `dir`, in file order.
fn documents(dir: &Path) -> Vec<Value> {
    finflow_crdcheck::read_yaml_dir(dir).unwrap()
}

/// `kubectl apply --server-side` of one object.
async fn apply(client: &Client, object: &Value) {
    let api_version = object["apiVersion"].as_str().unwrap();
    let kind = object["kind"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk).await.unwrap();
    let name = object["metadata"]["name"].as_str().unwrap();
    let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
        Some(ns) if caps.scope == kube::discovery::Scope::Namespaced => {
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        _ => Api::all_with(client.clone(), &resource),
    };
    api.patch(
        name,
        &PatchParams::apply("kubectl").force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
}

/// A client acting as `system:serviceaccount:<ns>:<name>`.
async fn client_as(ns: &str, name: &str) -> Client {
    let mut config = kube::Config::infer().await.unwrap();
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:{name}"));
    Client::try_from(config).unwrap()
}

/// The leader's duties under the chart's ClusterRole, against the chart's objects: a
/// leader election round and the webhook certificate's caBundle go through; the same
/// verbs on another Lease (the control plane's, in kube-system) or another webhook
/// configuration are refused, and so is deleting what the operator owns.
async fn reaches_its_own_lease_and_webhook_configuration_and_no_other(
    operator: &Client,
    admin: &Client,
) {
    use finflow_operator::leader::{Elector, Timing};
    use finflow_operator::{certs, rbac};
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::DeleteParams;

    let (leading_tx, mut leading) = tokio::sync::watch::channel(false);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let elector = Elector::new(
        operator.clone(),
        OPERATOR_NS,
        rbac::LEASE_NAME,
        "install-test",
        Timing::new(Duration::from_secs(15)),
    );
    let campaign = tokio::spawn(elector.run(leading_tx, stop));
    tokio::time::timeout(Duration::from_secs(30), leading.wait_for(|l| *l))
        .await
        .expect("leads within 30 s under the chart's role")
        .unwrap();
    stop_tx.send(true).unwrap();
    campaign.await.unwrap();

    certs::ensure(
        operator,
        OPERATOR_NS,
        certs::WEBHOOK_SERVICE,
        &Default::default(),
        k8s_openapi::jiff::Timestamp::now(),
    )
    .await
    .expect("the webhook certificate and caBundle under the chart's role");
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    let written = configurations.get(certs::CONFIGURATION_NAME).await.unwrap();
    assert!(
        written.webhooks.unwrap_or_default().iter().all(|w| w
            .client_config
            .ca_bundle
            .as_ref()
            .is_some_and(|b| !b.0.is_empty())),
        "the caBundle is written"
    );

    let forbidden = |what: &str, result: kube::Result<()>| match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: not refused by RBAC: {other:?}"),
    };
    let leases: Api<Lease> = Api::namespaced(operator.clone(), "kube-system");
    forbidden(
        "another Lease",
        leases.get("kube-controller-manager").await.map(drop),
    );
    let others: Api<MutatingWebhookConfiguration> = Api::all(operator.clone());
    forbidden(
        "another webhook configuration",
        others.get("another-webhook").await.map(drop),
    );
    forbidden(
        "listing webhook configurations",
        others.list(&Default::default()).await.map(drop),
    );
    let secrets: Api<Secret> = Api::namespaced(operator.clone(), OPERATOR_NS);
    forbidden(
        "deleting a Secret",
        secrets
            .delete(certs::SECRET_NAME, &DeleteParams::default())
            .await
            .map(drop),
    );
}

#[tokio::test]
async fn crds_charts_and_examples_install_and_six_services_become_ready_in_order() {
    let Some((helm, admin)) = cluster_and_helm("install cluster test").await else {
        return;
    };

    // kubectl apply --server-side -f crds/
    for crd in documents(&root().join("crds")) {
        apply(&admin, &crd).await;
    }
    cluster::wait_established(&admin).await;

    // helm install of both charts (upgrade --install: the operator's cluster-scoped
    // objects have fixed names, and a bare API server never finishes deleting).
    let kubeconfig = std::env::var("KUBECONFIG").unwrap();
    run_helm(
        &helm,
        &[
            "upgrade",
            "--install",
            "finflow-operator",
            "charts/finflow-operator",
            "-n",
            OPERATOR_NS,
            "--create-namespace",
            "--kubeconfig",
            &kubeconfig,
        ],
    );
    let platform_ns = format!(
        "finflow-chart-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    run_helm(
        &helm,
        &[
            "install",
            "finflow",
            "charts/finflow",
            "-f",
            "charts/finflow/values-dev.yaml",
            "-n",
            &platform_ns,
            "--create-namespace",
            "--kubeconfig",
            &kubeconfig,
        ],
    );
    let chart_services: Api<FinService> = Api::namespaced(admin.clone(), &platform_ns);
    let names: Vec<String> = chart_services
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    assert!(
        names.len() >= 5,
        "the finflow chart's FinServices were accepted by the CRD: {names:?}"
    );

    // kubectl apply -f examples/, into a namespace of this run's own.
    let ns = format!(
        "finflow-examples-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let stand = if bare::is_bare(&admin).await {
        Some(Stand::start(&admin, &ns).await.expect("the stand"))
    } else {
        None
    };
    let operator = client_as(OPERATOR_NS, "finflow-operator").await;
    reaches_its_own_lease_and_webhook_configuration_and_no_other(&operator, &admin).await;
    let stop = cluster::start_controllers(&operator, &ns);
    for mut object in documents(&root().join("examples")) {
        if object["kind"] == "Namespace" {
            object["metadata"]["name"] = ns.clone().into();
        } else {
            object["metadata"]["namespace"] = ns.clone().into();
        }
        apply(&admin, &object).await;
    }

    // Polled often enough to see the order: a dependent cannot start its rollout
    // before its dependency's Ready is written, and its own pods take the stand at
    // least one pass.
    let services: Api<FinService> = Api::namespaced(admin.clone(), &ns);
    let mut first_ready: BTreeMap<String, u32> = BTreeMap::new();
    let started = std::time::Instant::now();
    let mut poll = 0;
    while first_ready.len() < 6 {
        assert!(
            started.elapsed() < LIMIT,
            "six FinServices not Ready within {LIMIT:?}; Ready so far: {first_ready:?}"
        );
        for f in services.list(&ListParams::default()).await.unwrap().items {
            if f.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready) {
                first_ready.entry(f.name_any()).or_insert(poll);
            }
        }
        poll += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at = |name: &str| first_ready[name];
    assert!(at("auth") < at("wallet"), "A before B: {first_ready:?}");
    assert!(at("wallet") < at("payment"), "B before C: {first_ready:?}");
    assert!(
        at("payment") < at("notification").min(at("kyc")),
        "C before D and E: {first_ready:?}"
    );
    assert!(
        at("notification").max(at("kyc")) < at("reporting"),
        "D and E before F: {first_ready:?}"
    );
    eprintln!("first seen Ready, by poll (100 ms apart): {first_ready:?}");
    let _ = stop.send(true);
    if let Some(stand) = stand {
        stand.stop();
    }
}

/// With `watchNamespace`, the operator chart binds its rules in that namespace and its
/// own, and cluster-wide only to its webhook configuration: its token reads no other
/// namespace's Secrets. (Before, one ClusterRoleBinding gave every namespace's Secrets,
/// kube-system's too, whatever it watched.) The chart's RBAC objects are applied as
/// rendered, the cluster-scoped ones renamed for this test so that it shares the server
/// with the install test.
#[tokio::test]
async fn an_operator_watching_one_namespace_reads_no_other_namespace_s_secrets() {
    let Some((helm, admin)) = cluster_and_helm("scoped RBAC cluster test").await else {
        return;
    };
    let release = cluster::TestNamespace::create(&admin, "finflow-scoped-op").await;
    let watched = cluster::TestNamespace::create(&admin, "finflow-scoped").await;
    let rendered = run_helm(
        &helm,
        &[
            "template",
            "finflow-operator",
            "charts/finflow-operator",
            "-n",
            &release.name,
            "--set",
            &format!("watchNamespace={}", watched.name),
        ],
    );
    let suffix = format!("-{}", &release.name[release.name.len() - 8..]);
    // `helm template` prints a note before the documents on stderr, which run_helm joins.
    let documents = rendered.find("---").map_or("", |at| &rendered[at..]);
    for mut doc in finflow_crdcheck::read_yaml_documents(documents)
        .unwrap()
        .into_iter()
        .filter(Value::is_object)
    {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        if ![
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "RoleBinding",
        ]
        .contains(&kind.as_str())
        {
            continue;
        }
        if kind.starts_with("Cluster") {
            let name = format!("{}{suffix}", doc["metadata"]["name"].as_str().unwrap());
            doc["metadata"]["name"] = Value::String(name);
        }
        if let Some(role) = doc.get_mut("roleRef") {
            let name = format!("{}{suffix}", role["name"].as_str().unwrap());
            role["name"] = Value::String(name);
        }
        apply(&admin, &doc).await;
    }

    let operator = client_as(&release.name, "finflow-operator").await;
    let refused = |what: &str, r: Result<(), kube::Error>| match r {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("{what}: {other:?}"),
    };
    let allowed = |what: &str, r: Result<(), kube::Error>| {
        r.unwrap_or_else(|e| panic!("{what}: {e}"));
    };
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Secret;
    let secrets = |ns: &str| Api::<Secret>::namespaced(operator.clone(), ns);
    let lp = ListParams::default();
    refused(
        "kube-system's Secrets",
        secrets("kube-system").list(&lp).await.map(drop),
    );
    refused(
        "default's Secrets",
        secrets("default").list(&lp).await.map(drop),
    );
    allowed(
        "the watched namespace's Secrets",
        secrets(&watched.name).list(&lp).await.map(drop),
    );
    allowed(
        "its webhook's serving certificate",
        secrets(&release.name)
            .get_opt("finflow-operator-webhook-tls")
            .await
            .map(drop),
    );
    let deployments = |ns: &str| Api::<Deployment>::namespaced(operator.clone(), ns);
    refused(
        "kube-system's Deployments",
        deployments("kube-system").list(&lp).await.map(drop),
    );
    allowed(
        "the watched Deployments",
        deployments(&watched.name).list(&lp).await.map(drop),
    );
    let leases = |ns: &str| Api::<Lease>::namespaced(operator.clone(), ns);
    refused(
        "a Lease in kube-system",
        leases("kube-system")
            .get_opt("finflow-operator")
            .await
            .map(drop),
    );
    allowed(
        "its own Lease",
        leases(&release.name)
            .get_opt("finflow-operator")
            .await
            .map(drop),
    );
    let webhooks: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(operator.clone());
    allowed(
        "its webhook configuration",
        webhooks.get_opt("finflow-operator").await.map(drop),
    );
    release.delete().await;
    watched.delete().await;
}
