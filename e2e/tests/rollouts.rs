//! The rollout scenarios on a real API server: they run only when `KUBECONFIG` is set and
//! say why they skip otherwise. On a bare API server (etcd and kube-apiserver, no nodes)
//! [`bare::Stand`] plays the kubelet and the built-in controllers, and the apps; on a
//! cluster with nodes (kind, k3d: one that can pull from Docker Hub) the pods run
//! `traefik/whoami` (it answers every path, so `/ready` and `/health` pass, and `POST
//! /health` with `500` makes its `/health` fail).
//!
//! Six FinServices in the design's graph, one replica each, the sidecar off, except in
//! the traffic analysis tests: those run on a bare API server only, where the stand
//! answers the pod proxy's reads of the sidecars' metrics. The operator's controllers
//! run in this process.
//! The same scenarios run on every build against the fake API server
//! (`operator/src/controller/scenarios.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use finflow_e2e::bare::{self, Stand};
use finflow_e2e::cluster::{self, TestNamespace, eventually};
use finflow_operator::analysis::Traffic;
use finflow_operator::crd::{AnalysisVerdict, FinService, FinServiceStatus, Phase};
use finflow_operator::plugin;
use finflow_operator::rollout::{Request, request_from_annotations};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

const IMAGE: &str = "docker.io/traefik/whoami";
const OLD: &str = "v1.10.1";
const NEW: &str = "v1.10.2";
/// A tag that does not exist: its pods never become ready.
const MISSING: &str = "v0.0.0-finflow-missing";
const LIMIT: Duration = Duration::from_secs(900);

use finflow_operator::graph::SIX_SERVICES as SIX;

struct Platform {
    client: Client,
    ns: TestNamespace,
    api: Api<FinService>,
    stop: watch::Sender<bool>,
    /// On a bare API server, what plays the kubelet.
    stand: Option<Stand>,
}

fn status(fs: &FinService) -> FinServiceStatus {
    fs.status.clone().unwrap_or_default()
}

/// Live at the spec's version, Ready, nothing pending, the old color scaled down.
fn settled(all: &BTreeMap<String, FinService>) -> bool {
    all.len() == SIX.len()
        && all.values().all(|fs| {
            let s = status(fs);
            s.phase == Some(Phase::Ready)
                && s.active_version.as_deref() == Some(fs.spec.version.as_str())
                && s.preview_version.is_none()
                && !s.previous_retained
        })
}

impl Platform {
    /// The six services deployed at [`OLD`], or `None` without a cluster.
    async fn start() -> Option<Self> {
        Self::start_with(false).await
    }

    /// [`Platform::start`], with the sidecar injected when `sidecar`: on a bare API
    /// server only, where the stand plays the sidecars' metrics (a cluster with nodes
    /// has no sidecar image to pull); `None` elsewhere, saying why.
    async fn start_with(sidecar: bool) -> Option<Self> {
        if !cluster::available("rollout cluster tests") {
            return None;
        }
        if sidecar && !bare::is_bare(&cluster::client().await).await {
            eprintln!(
                "traffic analysis cluster tests skipped: they need a bare API server, whose stand \
                 plays the sidecars' metrics; this cluster has nodes and no sidecar image"
            );
            return None;
        }
        let client = cluster::client().await;
        cluster::install_crds(&client).await;
        let ns = TestNamespace::create(&client, "finflow-rollout").await;
        let stand = if bare::is_bare(&client).await {
            Some(
                Stand::start(&client, &ns.name)
                    .await
                    .expect("the bare API server's stand"),
            )
        } else {
            None
        };
        let stop = cluster::start_controllers(&client, &ns.name);
        let api: Api<FinService> = Api::namespaced(client.clone(), &ns.name);
        for (name, deps) in SIX {
            let fs: FinService = serde_json::from_value(json!({
                "apiVersion": "finflow.dev/v1alpha1", "kind": "FinService",
                "metadata": {"name": name},
                "spec": {
                    "image": IMAGE, "version": OLD, "replicas": 1, "port": 8080,
                    // Non-root, as every FinService pod runs: an unprivileged port.
                    "env": [{"name": "WHOAMI_PORT_NUMBER", "value": "8080"}],
                    "module": name.to_uppercase(), "dependsOn": deps,
                    "sidecar": if sidecar {
                        json!({"jwksUri": "http://a:8080/.well-known/jwks.json"})
                    } else {
                        json!({"enabled": false})
                    },
                    "rollout": {
                        "readinessTimeoutSeconds": 120,
                        "observationWindowSeconds": 20,
                        "scaleDownDelaySeconds": 10,
                    },
                },
            }))
            .unwrap();
            api.create(&PostParams::default(), &fs).await.unwrap();
        }
        let platform = Self {
            client,
            ns,
            api,
            stop,
            stand,
        };
        platform
            .wait("six services live at the old version", settled)
            .await;
        Some(platform)
    }

    async fn all(&self) -> BTreeMap<String, FinService> {
        self.api
            .list(&ListParams::default())
            .await
            .map(|l| l.items.into_iter().map(|f| (f.name_any(), f)).collect())
            .unwrap_or_default()
    }

    async fn wait(&self, what: &str, done: impl Fn(&BTreeMap<String, FinService>) -> bool) {
        eventually(what, LIMIT, || async { done(&self.all().await) }).await;
    }

    async fn set_version(&self, name: &str, version: &str) {
        self.api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"version": version}})),
            )
            .await
            .unwrap();
    }

    async fn upgrade_all(&self, version: &str) {
        for (name, _) in SIX {
            self.set_version(name, version).await;
        }
    }

    /// `(action, reason)` of the Events about `name`, oldest first.
    async fn events(&self, name: &str) -> Vec<(String, String)> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns.name);
        let mut list: Vec<Event> = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect();
        list.sort_by_key(|e| e.metadata.creation_timestamp.clone());
        list.into_iter()
            .map(|e| (e.action.unwrap_or_default(), e.reason.unwrap_or_default()))
            .collect()
    }

    /// What `kubectl finflow` writes for `request` of `name`.
    async fn request(&self, name: &str, request: Request) {
        self.api
            .patch(
                name,
                &PatchParams::apply(plugin::FIELD_MANAGER).force(),
                &Patch::Apply(plugin::request_patch(name, request)),
            )
            .await
            .unwrap();
    }

    async fn acted(&self, name: &str, action: &str) -> bool {
        self.events(name).await.iter().any(|(a, _)| a == action)
    }

    /// Makes `/health` of `name`'s pods at `version` answer 500.
    async fn fail_health(&self, name: &str, version: &str) {
        if let Some(stand) = &self.stand {
            stand.set_health(name, version, 500);
            return;
        }
        // whoami's `POST /health` with a status code makes its `/health` answer it.
        let path = format!(
            "/api/v1/namespaces/{}/services/{name}:http/proxy/health",
            self.ns.name
        );
        self.client
            .request_text(http::Request::post(path).body(b"500".to_vec()).unwrap())
            .await
            .unwrap();
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        if let Some(stand) = self.stand {
            stand.stop();
        }
        self.ns.delete().await;
    }
}

/// Records, in the order the API server applied them, the services whose active version
/// becomes `version` from now on. One watch of the collection delivers changes in
/// etcd's revision order: unlike `activeSince` (whole seconds), it orders steps of a
/// cascade that finish within one second.
async fn record_arrivals(
    api: &Api<FinService>,
    version: &'static str,
) -> watch::Receiver<Vec<String>> {
    use futures_util::StreamExt as _;
    let from = api
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut changes = api
        .watch(&kube::api::WatchParams::default(), &from)
        .await
        .unwrap()
        .boxed();
    let (tx, rx) = watch::channel(Vec::new());
    tokio::spawn(async move {
        while let Some(Ok(change)) = changes.next().await {
            let (kube::api::WatchEvent::Added(fs) | kube::api::WatchEvent::Modified(fs)) = change
            else {
                continue;
            };
            let name = fs.name_any();
            if status(&fs).active_version.as_deref() == Some(version) {
                tx.send_if_modified(|seen| {
                    let new = !seen.contains(&name);
                    if new {
                        seen.push(name);
                    }
                    new
                });
            }
        }
    });
    rx
}

fn since(all: &BTreeMap<String, FinService>, name: &str) -> i64 {
    status(&all[name])
        .active_since
        .map_or(0, |t| t.0.as_second())
}

#[tokio::test]
async fn six_services_upgrade_in_dependency_order() {
    let Some(p) = Platform::start().await else {
        return;
    };
    p.upgrade_all(NEW).await;
    p.wait("six services live at the new version", settled)
        .await;
    let all = p.all().await;
    assert!(since(&all, "a") < since(&all, "b"));
    assert!(since(&all, "b") < since(&all, "c"));
    assert!(since(&all, "c") < since(&all, "d").min(since(&all, "e")));
    assert!(since(&all, "d").max(since(&all, "e")) < since(&all, "f"));
    for (name, _) in SIX {
        for action in ["DeployPreview", "Promote", "ScaleDownOld"] {
            assert!(p.acted(name, action).await, "{name}: no {action} Event");
        }
    }
    p.stop().await;
}

#[tokio::test]
async fn c_never_ready_aborts_and_holds_d_e_f_while_a_and_b_stay_upgraded() {
    let Some(p) = Platform::start().await else {
        return;
    };
    p.upgrade_all(NEW).await;
    p.set_version("c", MISSING).await;
    p.wait("C aborted", |all| {
        status(&all["c"]).failed_version.as_deref() == Some(MISSING)
    })
    .await;
    let all = p.all().await;
    for held in ["d", "e", "f"] {
        let s = status(&all[held]);
        assert_eq!(s.active_version.as_deref(), Some(OLD), "{held}");
        assert_eq!(s.preview_version, None, "{held} never deployed");
        assert_eq!(s.phase, Some(Phase::Waiting), "{held}");
    }
    for upgraded in ["a", "b"] {
        assert_eq!(status(&all[upgraded]).active_version.as_deref(), Some(NEW));
    }
    assert_eq!(status(&all["c"]).active_version.as_deref(), Some(OLD));
    assert_eq!(status(&all["c"]).phase, Some(Phase::Degraded));
    assert!(
        p.events("c")
            .await
            .contains(&("Abort".into(), "ReadinessTimeout".into()))
    );
    p.stop().await;
}

#[tokio::test]
async fn f_failing_its_observation_window_rolls_back_alone() {
    let Some(p) = Platform::start().await else {
        return;
    };
    p.upgrade_all(NEW).await;
    p.wait("F promoted and observed", |all| {
        status(&all["f"]).active_version.as_deref() == Some(NEW)
            && status(&all["f"]).observation.is_some()
    })
    .await;
    p.fail_health("f", NEW).await;
    p.wait("F rolled back", |all| {
        status(&all["f"]).failed_version.as_deref() == Some(NEW)
    })
    .await;
    let all = p.all().await;
    assert_eq!(status(&all["f"]).active_version.as_deref(), Some(OLD));
    for other in ["a", "b", "c", "d", "e"] {
        assert_eq!(status(&all[other]).active_version.as_deref(), Some(NEW));
        assert!(!p.acted(other, "Rollback").await, "{other} rolled back");
    }
    p.stop().await;
}

#[tokio::test]
async fn rollback_cascade_of_b_rolls_back_its_later_dependents_first() {
    let Some(p) = Platform::start().await else {
        return;
    };
    p.upgrade_all(NEW).await;
    p.wait("six services live at the new version", settled)
        .await;
    let arrivals = record_arrivals(&p.api, OLD).await;
    let cascade = Request::Rollback {
        cascade: true,
        force: false,
    };
    p.request("b", cascade).await;
    assert_eq!(
        request_from_annotations(p.api.get("b").await.unwrap().annotations()),
        Some(cascade)
    );
    p.wait("B rolled back", |all| {
        status(&all["b"]).active_version.as_deref() == Some(OLD)
    })
    .await;
    let all = p.all().await;
    for rolled in ["b", "c", "d", "e", "f"] {
        assert_eq!(
            status(&all[rolled]).active_version.as_deref(),
            Some(OLD),
            "{rolled}"
        );
    }
    assert_eq!(status(&all["a"]).active_version.as_deref(), Some(NEW));
    let order = arrivals.borrow().clone();
    let at = |name: &str| {
        order
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("{name} never went back to {OLD}: {order:?}"))
    };
    assert!(at("f") < at("d").min(at("e")), "{order:?}");
    assert!(at("d").max(at("e")) < at("c"), "{order:?}");
    assert!(at("c") < at("b"), "{order:?}");
    assert!(
        request_from_annotations(all["b"].annotations()).is_none(),
        "the handled request is cleared"
    );
    p.stop().await;
}

/// What each pod of `name` at `version` counts from now on (the stand's sidecars).
fn report(p: &Platform, name: &str, version: &str, traffic: Traffic) {
    p.stand
        .as_ref()
        .expect("traffic analysis runs with the stand")
        .set_traffic(name, version, &traffic);
}

#[tokio::test]
async fn a_preview_whose_sidecar_reports_twenty_percent_5xx_is_aborted() {
    let Some(p) = Platform::start_with(true).await else {
        return;
    };
    report(&p, "a", NEW, Traffic::FAILING);
    p.set_version("a", NEW).await;
    p.wait("A's preview aborted", |all| {
        status(&all["a"]).failed_version.as_deref() == Some(NEW)
    })
    .await;
    let events = p.events("a").await;
    assert!(
        events.contains(&("Abort".into(), "AnalysisFailed".into())),
        "{events:?}"
    );
    assert!(
        events.contains(&("Analyze".into(), "AnalysisFailed".into())),
        "{events:?}"
    );
    let analysis = status(&p.all().await["a"]).analysis.expect("the figures");
    assert_eq!(
        (
            analysis.verdict,
            analysis.requests,
            analysis.app_server_errors,
            analysis.pods
        ),
        (AnalysisVerdict::Failed, 100, 20, 1)
    );
    assert_eq!(
        status(&p.all().await["a"]).active_version.as_deref(),
        Some(OLD)
    );
    p.stop().await;
}

#[tokio::test]
async fn a_preview_under_the_thresholds_is_promoted() {
    let Some(p) = Platform::start_with(true).await else {
        return;
    };
    report(&p, "a", NEW, Traffic::HEALTHY);
    p.set_version("a", NEW).await;
    // Judged in preview, or, when the stand's sidecars did not answer yet as the
    // preview became available (Unavailable holds nothing back), in its window.
    p.wait("A promoted and its traffic judged Passed", |all| {
        let s = status(&all["a"]);
        s.active_version.as_deref() == Some(NEW)
            && s.analysis
                .is_some_and(|a| a.version == NEW && a.verdict == AnalysisVerdict::Passed)
    })
    .await;
    let events = p.events("a").await;
    assert!(
        events.contains(&("Analyze".into(), "AnalysisPassed".into())),
        "{events:?}"
    );
    assert!(
        events.contains(&("Promote".into(), "PreviewHealthy".into())),
        "{events:?}"
    );
    p.stop().await;
}

#[tokio::test]
async fn an_observation_window_with_a_latency_regression_rolls_back_and_holds_the_dependents() {
    let Some(p) = Platform::start_with(true).await else {
        return;
    };
    p.api
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"rollout": {"analysis": {"maxP99LatencyMilliseconds": 200}}}}),
            ),
        )
        .await
        .unwrap();
    report(&p, "b", NEW, Traffic::FAST);
    p.upgrade_all(NEW).await;
    p.wait("B live at the new version", |all| {
        status(&all["b"]).active_version.as_deref() == Some(NEW)
    })
    .await;
    report(
        &p,
        "b",
        NEW,
        Traffic {
            latency_millis: 400,
            ..Traffic::FAST
        },
    );
    p.wait("B rolled back", |all| {
        status(&all["b"]).failed_version.as_deref() == Some(NEW)
    })
    .await;
    let events = p.events("b").await;
    assert!(
        events.contains(&("Rollback".into(), "AnalysisFailed".into())),
        "{events:?}"
    );
    let all = p.all().await;
    assert_eq!(status(&all["b"]).active_version.as_deref(), Some(OLD));
    assert_eq!(status(&all["a"]).active_version.as_deref(), Some(NEW));
    for held in ["c", "d", "e", "f"] {
        assert_eq!(
            status(&all[held]).active_version.as_deref(),
            Some(OLD),
            "{held}"
        );
        assert_eq!(status(&all[held]).preview_version, None, "{held}");
    }
    p.stop().await;
}

#[tokio::test]
async fn a_rollback_across_a_marked_migration_is_held_and_force_completes_it() {
    let Some(p) = Platform::start().await else {
        return;
    };
    let Some(stand) = &p.stand else {
        eprintln!(
            "schema barrier cluster test skipped: it needs a bare API server, whose stand \
             answers /health with a schema; whoami's has none"
        );
        p.stop().await;
        return;
    };
    stand.set_schema("a", OLD, json!({"version": 10, "incompatible": []}));
    stand.set_schema(
        "a",
        NEW,
        json!({"version": 20, "incompatible": [{"version": 20, "description": "drop legacy name"}]}),
    );
    p.set_version("a", NEW).await;
    p.wait(
        "A live at the new version behind its schema barrier",
        |all| {
            let s = status(&all["a"]);
            s.active_version.as_deref() == Some(NEW)
                && s.phase == Some(Phase::Ready)
                && s.schema_barrier.is_some()
        },
    )
    .await;
    let s = status(&p.api.get("a").await.unwrap());
    let barrier = s.schema_barrier.unwrap();
    assert_eq!(
        (barrier.migration.version, barrier.release.as_str()),
        (20, NEW)
    );
    let schemas: Vec<_> = s
        .history
        .iter()
        .map(|r| (r.version.as_str(), r.schema_version))
        .collect();
    assert_eq!(
        schemas.last(),
        Some(&(NEW, Some(20))),
        "the revision records its schema: {schemas:?}"
    );
    assert!(
        s.schemas
            .iter()
            .any(|r| r.release == OLD && r.schema_version == 10),
        "the old version's schema was learned while it was live: {:?}",
        s.schemas
    );

    p.request(
        "a",
        Request::Rollback {
            cascade: false,
            force: false,
        },
    )
    .await;
    p.wait("A's rollback held by the schema barrier", |all| {
        status(&all["a"]).step.as_deref() == Some("BlockedBySchema")
    })
    .await;
    let held = status(&p.api.get("a").await.unwrap());
    let degraded = held
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "IncompatibleMigration")
    );
    assert!(
        degraded.message.contains("migration 20 (drop legacy name)"),
        "{}",
        degraded.message
    );
    assert_eq!(held.active_version.as_deref(), Some(NEW), "still live");
    assert!(
        p.events("a")
            .await
            .contains(&("BlockedBySchema".into(), "IncompatibleMigration".into()))
    );

    p.request(
        "a",
        Request::Rollback {
            cascade: false,
            force: true,
        },
    )
    .await;
    p.wait("A rolled back as forced", |all| {
        status(&all["a"]).active_version.as_deref() == Some(OLD)
    })
    .await;
    let events = p.events("a").await;
    assert!(
        events.contains(&("Rollback".into(), "IncompatibleMigrationForced".into())),
        "{events:?}"
    );
    p.wait("the crossing recorded on the barrier", |all| {
        status(&all["a"])
            .schema_barrier
            .is_some_and(|b| b.overridden_by.as_deref() == Some(OLD))
    })
    .await;
    p.stop().await;
}
