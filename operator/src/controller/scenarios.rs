//! The rollout scenarios (`docs/architecture.md`, Blue-green rollouts) through the FinService reconciler against the stateful fake API
//! ([`super::fake`]): every FinService of the namespace is reconciled once per 10 s
//! tick, then the simulated Deployment controller and kubelet catch up.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{Value, json};

use super::fake::{Fake, Recorded};
use super::finservice::reconcile;
use crate::analysis::Traffic;
use crate::conditions::Reason;
use crate::crd::{AnalysisStage, AnalysisVerdict, Color, FinService, Phase};
use crate::finservice::fixtures::settings;
use crate::rollout;

const TICK: i64 = 10;

use crate::graph::SIX_SERVICES as SIX;

fn manifest(name: &str, depends_on: &[&str]) -> Value {
    json!({
        "apiVersion": "finflow.dev/v1alpha1",
        "kind": "FinService",
        "metadata": {"name": name, "namespace": "finflow"},
        "spec": {
            "image": format!("ghcr.io/finflow/{name}"),
            "version": "1.0.0",
            "replicas": 2,
            "port": 8080,
            "module": name.to_uppercase(),
            "dependsOn": depends_on,
            "sidecar": {"jwksUri": "http://a:8080/.well-known/jwks.json"},
            "rollout": {
                "readinessTimeoutSeconds": 60,
                "observationWindowSeconds": 30,
                "scaleDownDelaySeconds": 40,
            },
        },
    })
}

struct World {
    fake: Fake,
    ctx: Arc<super::Context>,
}

impl World {
    fn new(services: &[(&str, &[&str])]) -> Self {
        let (fake, ctx) = Fake::start(settings());
        for (name, deps) in services {
            fake.create(super::fake::finservices(), manifest(name, deps));
        }
        Self { fake, ctx }
    }

    /// One reconcile of every FinService (in name order), then the cluster settles and
    /// time moves on.
    async fn tick(&self) {
        let mut services = self.fake.finservices();
        services.sort_by_key(|fs| fs.metadata.name.clone());
        for fs in services {
            Box::pin(reconcile(Arc::new(fs), self.ctx.clone()))
                .await
                .unwrap();
        }
        self.fake.settle();
        self.fake.advance(TICK);
    }

    /// Ticks until `done` holds (then a few more, so nothing is left mid-step), at most
    /// `limit` ticks.
    async fn run_until(&self, limit: usize, done: impl Fn(&World) -> bool) {
        for _ in 0..limit {
            if done(self) {
                return;
            }
            self.tick().await;
        }
        panic!(
            "not done after {limit} ticks; statuses:\n{:#?}",
            self.fake
                .finservices()
                .iter()
                .map(|f| (f.metadata.name.clone(), f.status.clone()))
                .collect::<Vec<_>>()
        );
    }

    fn fs(&self, name: &str) -> FinService {
        self.fake.finservice(name)
    }

    /// Live at the spec's version, Ready, with nothing pending and the old color down.
    fn settled(&self) -> bool {
        self.fake.finservices().iter().all(|fs| {
            let s = fs.status.clone().unwrap_or_default();
            s.phase == Some(Phase::Ready)
                && s.active_version.as_deref() == Some(fs.spec.version.as_str())
                && s.preview_version.is_none()
                && !s.previous_retained
        })
    }

    fn set_versions(&self, version: &str) {
        for (name, _) in SIX {
            self.fake
                .edit_finservice(name, json!({"spec": {"version": version}}));
        }
    }

    fn events(&self, action: &str) -> BTreeMap<String, Vec<Recorded>> {
        let mut by: BTreeMap<String, Vec<Recorded>> = BTreeMap::new();
        for e in &self.fake.state().events {
            if e.action == action {
                by.entry(e.object.clone()).or_default().push(e.clone());
            }
        }
        by
    }

    /// When each service first took `action`.
    fn first(&self, action: &str) -> BTreeMap<String, i64> {
        self.events(action)
            .into_iter()
            .map(|(name, events)| (name, events[0].at))
            .collect()
    }

    fn live(&self, name: &str) -> (String, Color) {
        let s = self.fs(name).status.unwrap_or_default();
        (
            s.active_version.unwrap_or_default(),
            s.active_color.unwrap(),
        )
    }

    fn selector_color(&self, service: &str) -> String {
        self.fake.service(service).unwrap()["spec"]["selector"]["finflow.dev/color"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The issuer epoch in `name`'s sidecar ConfigMap.
    fn epoch(&self, name: &str) -> String {
        self.fake.config_map(&format!("{name}-sidecar")).unwrap()["data"][crate::inject::EPOCH_FILE]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn condition(&self, name: &str, type_: &str) -> (String, String, String) {
        let s = self.fs(name).status.unwrap_or_default();
        // As a user reads it: by the type's name in the status.
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("the condition is reported");
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }
}

fn ordered(times: &BTreeMap<String, i64>) {
    assert!(times["a"] < times["b"], "{times:?}");
    assert!(times["b"] < times["c"], "{times:?}");
    assert!(times["c"] < times["d"], "{times:?}");
    assert_eq!(times["d"], times["e"], "D and E go side by side: {times:?}");
    assert!(times["e"] < times["f"], "{times:?}");
}

async fn deployed_at_one(services: &[(&str, &[&str])]) -> World {
    let world = World::new(services);
    world.run_until(80, World::settled).await;
    world
}

#[tokio::test]
async fn six_services_deploy_and_then_upgrade_in_order_a_b_c_d_and_e_f() {
    let world = deployed_at_one(&SIX).await;
    ordered(&world.first("DeployFirst"));
    for (name, _) in SIX {
        assert_eq!(world.live(name), ("1.0.0".into(), Color::Blue));
        assert_eq!(world.condition(name, "Ready").0, "True");
        assert_eq!(world.epoch(name), "1.0.0/blue", "{name}");
    }

    world.set_versions("2.0.0");
    world.run_until(150, World::settled).await;
    let promoted = world.first("Promote");
    ordered(&promoted);
    // A dependent's new version goes out only after the dependency's observation window.
    let previewed = world.first("DeployPreview");
    assert!(
        previewed["b"] >= promoted["a"] + 30,
        "{previewed:?} {promoted:?}"
    );
    for (name, _) in SIX {
        assert_eq!(world.live(name), ("2.0.0".into(), Color::Green), "{name}");
        assert_eq!(world.selector_color(name), "green");
        assert_eq!(world.selector_color(&format!("{name}-preview")), "blue");
        assert_eq!(
            world.epoch(name),
            "2.0.0/green",
            "{name}: sidecars follow A"
        );
        let blue = world.fake.deployment(&format!("{name}-blue")).unwrap();
        assert_eq!(blue["spec"]["replicas"], 0, "{name}: old color scaled down");
        let green = world.fake.deployment(&format!("{name}-green")).unwrap();
        let image = &green["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "app")
            .unwrap()["image"];
        assert_eq!(image, &json!(format!("ghcr.io/finflow/{name}:2.0.0")));
        for action in ["DeployPreview", "Promote", "ScaleDownOld"] {
            assert_eq!(world.events(action)[name].len(), 1, "{name} {action}");
        }
        let history: Vec<String> = world
            .fs(name)
            .status
            .unwrap()
            .history
            .iter()
            .map(|r| format!("{}@{}", r.version, r.color.as_str()))
            .collect();
        assert_eq!(history, ["1.0.0@blue", "2.0.0@green"], "{name}");
    }
    // Every running pod knows it is active (the blue ones are gone).
    let pods = world.fake.pods();
    assert_eq!(pods.len(), 12);
    assert!(
        pods.iter()
            .all(|p| p["metadata"]["labels"][rollout::ROLE_LABEL] == "active")
    );
    assert!(world.events("Rollback").is_empty());
    assert!(world.events("Abort").is_empty());
}

#[tokio::test]
async fn the_preview_pods_are_labelled_preview_until_promotion() {
    let world = deployed_at_one(&[("a", &[])]).await;
    world
        .fake
        .state()
        .unhealthy
        .insert(("a".into(), "2.0.0".into()));
    world
        .fake
        .edit_finservice("a", json!({"spec": {"version": "2.0.0"}}));
    for _ in 0..3 {
        world.tick().await;
    }
    let roles: BTreeMap<String, String> = world
        .fake
        .pods()
        .iter()
        .map(|p| {
            (
                p["metadata"]["labels"]["finflow.dev/version"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                p["metadata"]["labels"][rollout::ROLE_LABEL]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(roles["1.0.0"], "active");
    assert_eq!(
        roles["2.0.0"], "preview",
        "green never consumes before promotion"
    );
    let s = world.fs("a").status.unwrap();
    assert_eq!(s.preview_version.as_deref(), Some("2.0.0"));
    assert_eq!(s.step.as_deref(), Some("AwaitPreview"));
    assert_eq!(
        world.condition("a", "Progressing").1,
        Reason::PREVIEW_UNHEALTHY
    );
    assert_eq!(
        world.selector_color("a"),
        "blue",
        "not promoted while unhealthy"
    );
}

#[tokio::test]
async fn a_promotion_goes_on_when_old_pods_go_between_the_list_and_their_relabel() {
    let world = deployed_at_one(&[("a", &[])]).await;
    world
        .fake
        .edit_finservice("a", json!({"spec": {"version": "2.0.0"}}));
    let pod_name = |p: &Value| p["metadata"]["name"].as_str().unwrap().to_owned();
    for _ in 0..6 {
        if world.selector_color("a") == "green" {
            break;
        }
        // Every blue pod is deleted right after the operator lists it.
        let blue: BTreeSet<String> = world
            .fake
            .pods()
            .iter()
            .filter(|p| p["metadata"]["labels"]["finflow.dev/color"] == "blue")
            .map(pod_name)
            .collect();
        world.fake.state().vanishing = blue;
        world.tick().await;
    }
    assert_eq!(world.selector_color("a"), "green");
    assert_eq!(world.first("Promote").len(), 1);
    // The relabels of the vanished pods were tried with their uid, so none was re-created
    // from the labels alone.
    let tried: Vec<Value> = world
        .fake
        .state()
        .sent
        .iter()
        .filter(|w| w.path.contains("/pods/") && w.path.contains("-blue-"))
        .map(|w| w.body.clone())
        .collect();
    assert!(!tried.is_empty());
    assert!(
        tried.iter().all(|b| b["metadata"]["uid"].is_string()),
        "{tried:?}"
    );
    let green: Vec<Value> = world
        .fake
        .pods()
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["finflow.dev/color"] == "green")
        .collect();
    assert!(!green.is_empty());
    for p in &green {
        assert_eq!(
            p["metadata"]["labels"][rollout::ROLE_LABEL],
            "active",
            "{p}"
        );
    }
}

#[tokio::test]
async fn c_never_ready_aborts_d_e_f_are_held_and_a_b_are_untouched() {
    let world = deployed_at_one(&SIX).await;
    world
        .fake
        .state()
        .never_ready
        .insert(("c".into(), "2.0.0".into()));
    world.set_versions("2.0.0");
    world
        .run_until(120, |w| {
            w.fs("c").status.unwrap().failed_version.as_deref() == Some("2.0.0")
        })
        .await;
    for _ in 0..8 {
        world.tick().await;
    }

    let aborts = world.events("Abort");
    assert_eq!(aborts.keys().collect::<Vec<_>>(), ["c"]);
    let abort = &aborts["c"][0];
    assert_eq!(
        (abort.type_.as_str(), abort.reason.as_str()),
        ("Warning", Reason::READINESS_TIMEOUT.as_str())
    );
    assert!(abort.at >= world.first("DeployPreview")["c"] + 60);
    assert_eq!(world.live("c"), ("1.0.0".into(), Color::Blue));
    assert_eq!(world.selector_color("c"), "blue");
    let green = world.fake.deployment("c-green").unwrap();
    assert_eq!(
        green["spec"]["replicas"], 0,
        "the failed preview is scaled away"
    );
    let (degraded, why, _) = world.condition("c", "Degraded");
    assert_eq!(
        (degraded.as_str(), why.as_str()),
        ("True", Reason::VERSION_FAILED.as_str())
    );
    assert_eq!(world.fs("c").status.unwrap().phase, Some(Phase::Degraded));
    assert_eq!(
        world.events("Held")["c"].len(),
        1,
        "a hold is reported once"
    );

    for held in ["d", "e", "f"] {
        assert!(
            !world.events("DeployPreview").contains_key(held),
            "{held} never deployed 2.0.0"
        );
        assert_eq!(world.live(held), ("1.0.0".into(), Color::Blue));
        let s = world.fs(held).status.unwrap();
        assert_eq!(s.phase, Some(Phase::Waiting), "{held}");
        assert_eq!(s.step.as_deref(), Some("WaitForDependencies"));
        let (status, why, message) = world.condition(held, "DependenciesReady");
        assert_eq!(
            (status.as_str(), why.as_str()),
            ("False", "DependencyNotReady")
        );
        assert!(message.contains('c'), "{message}");
    }
    for untouched in ["a", "b"] {
        assert_eq!(world.live(untouched), ("2.0.0".into(), Color::Green));
        assert_eq!(
            world.fs(untouched).status.unwrap().phase,
            Some(Phase::Ready)
        );
    }
    assert!(world.events("Rollback").is_empty());

    // A new version of C releases the hold; everything then goes out.
    world
        .fake
        .edit_finservice("c", json!({"spec": {"version": "2.0.1"}}));
    world.run_until(150, World::settled).await;
    assert_eq!(world.live("c").0, "2.0.1");
    for s in ["d", "e", "f"] {
        assert_eq!(world.live(s).0, "2.0.0");
    }
}

#[tokio::test]
async fn f_failing_its_observation_window_rolls_back_alone() {
    let world = deployed_at_one(&SIX).await;
    world
        .fake
        .state()
        .crashing
        .insert(("f".into(), "2.0.0".into()));
    world.set_versions("2.0.0");
    world
        .run_until(150, |w| {
            w.fs("f").status.unwrap().failed_version.is_some()
                && ["a", "b", "c", "d", "e"]
                    .iter()
                    .all(|s| w.live(s).0 == "2.0.0")
        })
        .await;
    world.tick().await;

    let rollbacks = world.events("Rollback");
    assert_eq!(rollbacks.keys().collect::<Vec<_>>(), ["f"]);
    assert_eq!(rollbacks["f"][0].reason, Reason::OBSERVATION_FAILED);
    assert!(
        rollbacks["f"][0].at < world.first("Promote")["f"] + 30,
        "within the window"
    );
    assert!(
        !world.events("ScaleUpOld").contains_key("f"),
        "the old color was still up: an instant switch"
    );
    assert_eq!(world.live("f"), ("1.0.0".into(), Color::Blue));
    assert_eq!(world.selector_color("f"), "blue");
    let s = world.fs("f").status.unwrap();
    assert_eq!(s.failed_version.as_deref(), Some("2.0.0"));
    assert_eq!(s.phase, Some(Phase::Degraded));
    for other in ["a", "b", "c", "d", "e"] {
        assert_eq!(world.live(other), ("2.0.0".into(), Color::Green), "{other}");
    }
}

/// What each pod of `service` at `version` counted, from now on.
fn traffic(world: &World, service: &str, version: &str, traffic: Traffic) {
    world
        .fake
        .state()
        .traffic
        .insert((service.into(), version.into()), traffic);
}

#[tokio::test]
async fn a_preview_whose_sidecars_report_twenty_percent_5xx_is_aborted_with_its_figures() {
    let world = deployed_at_one(&SIX).await;
    traffic(&world, "a", "2.0.0", Traffic::FAILING);
    world.set_versions("2.0.0");
    world
        .run_until(60, |w| {
            w.fs("a").status.unwrap().failed_version.as_deref() == Some("2.0.0")
        })
        .await;
    world.tick().await;

    let abort = &world.events("Abort")["a"][0];
    assert_eq!(
        (abort.type_.as_str(), abort.reason.as_str()),
        ("Warning", Reason::ANALYSIS_FAILED.as_str())
    );
    let analyzed = &world.events("Analyze")["a"];
    assert_eq!(analyzed.len(), 1, "{analyzed:?}");
    assert_eq!(
        (analyzed[0].type_.as_str(), analyzed[0].reason.as_str()),
        ("Warning", Reason::ANALYSIS_FAILED.as_str())
    );
    assert_eq!(
        analyzed[0].note,
        "2.0.0 (preview): 40 of 200 requests failed at the app (20.0% > 5%)"
    );
    let figures = world.fs("a").status.unwrap().analysis.unwrap();
    assert_eq!(
        (
            figures.stage,
            figures.verdict,
            figures.pods,
            figures.requests,
            figures.app_server_errors
        ),
        (AnalysisStage::Preview, AnalysisVerdict::Failed, 2, 200, 40)
    );
    assert_eq!(figures.p99_latency_milliseconds, Some(4));
    assert_eq!(world.live("a"), ("1.0.0".into(), Color::Blue));
    assert!(world.events("Promote").is_empty(), "nothing went live");
    for held in ["b", "c", "d", "e", "f"] {
        assert!(!world.events("DeployPreview").contains_key(held), "{held}");
    }
}

#[tokio::test]
async fn a_preview_under_the_thresholds_is_promoted_and_its_figures_are_in_the_status() {
    let world = deployed_at_one(&SIX).await;
    traffic(&world, "a", "2.0.0", Traffic::HEALTHY);
    world.set_versions("2.0.0");
    world.run_until(60, |w| w.live("a").0 == "2.0.0").await;

    let promote = &world.events("Promote")["a"][0];
    assert_eq!(promote.reason, Reason::PREVIEW_HEALTHY);
    let analyzed = &world.events("Analyze")["a"];
    assert_eq!(analyzed[0].reason, "AnalysisPassed");
    assert_eq!(
        analyzed[0].note,
        "2.0.0 (preview): 200 requests on 2 pods, 6 of 200 failed at the app, p99 4.9 ms"
    );
    let figures = world.fs("a").status.unwrap().analysis.unwrap();
    assert_eq!(
        (figures.verdict, figures.requests),
        (AnalysisVerdict::Passed, 200)
    );
    // Its window is judged too, and passes; the rollout goes on to the end. (An Event
    // of the same verdict is a repeat: the recorder counts it in the first one's series.)
    world.run_until(150, World::settled).await;
    let figures = world.fs("a").status.unwrap().analysis.unwrap();
    assert_eq!(
        (figures.stage, figures.verdict),
        (AnalysisStage::Observation, AnalysisVerdict::Passed)
    );
    assert!(world.events("Rollback").is_empty());
}

#[tokio::test]
async fn a_version_previewed_during_the_last_ones_window_is_judged_on_its_own_traffic() {
    let world = deployed_at_one(&SIX).await;
    let good = Traffic {
        ok: 200,
        latency_millis: 4,
        ..Traffic::default()
    };
    traffic(&world, "a", "2.0.0", good);
    traffic(
        &world,
        "a",
        "3.0.0",
        Traffic {
            ok: 80,
            app_errors: 20,
            ..good
        },
    );
    world
        .fake
        .edit_finservice("a", json!({"spec": {"version": "2.0.0"}}));
    world.run_until(30, |w| w.live("a").0 == "2.0.0").await;
    // 2.0.0 is in its window, judged Passed; 3.0.0 previews meanwhile.
    world
        .fake
        .edit_finservice("a", json!({"spec": {"version": "3.0.0"}}));
    world
        .run_until(10, |w| {
            w.fs("a").status.unwrap().failed_version.as_deref() == Some("3.0.0")
        })
        .await;
    let abort = &world.events("Abort")["a"][0];
    assert_eq!(abort.reason, Reason::ANALYSIS_FAILED);
    assert!(
        abort.at < world.first("Promote")["a"] + 30,
        "within 2.0.0's window"
    );
    assert_eq!(world.live("a").0, "2.0.0");
    let figures = world.fs("a").status.unwrap().analysis.unwrap();
    assert_eq!(
        (figures.version.as_str(), figures.stage, figures.verdict),
        ("3.0.0", AnalysisStage::Preview, AnalysisVerdict::Failed)
    );
}

#[tokio::test]
async fn a_latency_regression_in_bs_window_rolls_b_back_and_holds_its_dependents() {
    let world = deployed_at_one(&SIX).await;
    world.fake.edit_finservice(
        "b",
        json!({"spec": {"rollout": {"analysis": {"maxP99LatencyMilliseconds": 200}}}}),
    );
    traffic(&world, "b", "2.0.0", Traffic::FAST);
    world.set_versions("2.0.0");
    world.run_until(100, |w| w.live("b").0 == "2.0.0").await;
    // Live, and slower: each of its requests now takes 400 ms.
    traffic(
        &world,
        "b",
        "2.0.0",
        Traffic {
            latency_millis: 400,
            ..Traffic::FAST
        },
    );
    world
        .run_until(10, |w| w.fs("b").status.unwrap().failed_version.is_some())
        .await;
    world.tick().await;

    let rollback = &world.events("Rollback")["b"][0];
    assert_eq!(rollback.reason, Reason::ANALYSIS_FAILED);
    assert!(
        rollback.at < world.first("Promote")["b"] + 30,
        "within the window"
    );
    let figures = world.fs("b").status.unwrap().analysis.unwrap();
    assert_eq!(
        (figures.stage, figures.verdict),
        (AnalysisStage::Observation, AnalysisVerdict::Failed)
    );
    assert!(
        figures.message.contains("p99 latency 497.5 ms > 200.0 ms"),
        "{}",
        figures.message
    );
    assert_eq!(world.live("b"), ("1.0.0".into(), Color::Blue));
    assert_eq!(
        world.live("a"),
        ("2.0.0".into(), Color::Green),
        "A went live before B"
    );
    for held in ["c", "d", "e", "f"] {
        assert!(!world.events("DeployPreview").contains_key(held), "{held}");
        assert_eq!(world.live(held).0, "1.0.0");
        assert_eq!(
            world.fs(held).status.unwrap().phase,
            Some(Phase::Waiting),
            "{held}"
        );
    }
}

#[tokio::test]
async fn rollback_cascade_of_b_rolls_back_f_then_d_and_e_then_c_then_b() {
    let world = deployed_at_one(&SIX).await;
    world.set_versions("2.0.0");
    world.run_until(150, World::settled).await;
    world.fake.edit_finservice(
        "b",
        json!({"metadata": {"annotations": {rollout::ROLLBACK_ANNOTATION: "cascade"}}}),
    );
    world.run_until(80, |w| w.live("b").0 == "1.0.0").await;
    world.tick().await;

    let rolled = world.first("Rollback");
    assert_eq!(
        rolled.keys().collect::<Vec<_>>(),
        ["b", "c", "d", "e", "f"],
        "A went live before B and stays"
    );
    assert!(rolled["f"] < rolled["e"], "{rolled:?}");
    assert_eq!(rolled["d"], rolled["e"], "{rolled:?}");
    assert!(rolled["e"] < rolled["c"], "{rolled:?}");
    assert!(rolled["c"] < rolled["b"], "{rolled:?}");
    let scaled_up = world.first("ScaleUpOld");
    assert_eq!(
        scaled_up.len(),
        5,
        "the old colors were down: each scaled up first"
    );
    for s in ["b", "c", "d", "e", "f"] {
        assert_eq!(world.live(s), ("1.0.0".into(), Color::Blue), "{s}");
        assert!(scaled_up[s] < rolled[s]);
        let status = world.fs(s).status.unwrap();
        assert_eq!(status.failed_version.as_deref(), Some("2.0.0"));
        assert_eq!(world.condition(s, "Degraded").0, "True");
        // It serves 1.0.0 on every replica, but 2.0.0, its spec, is held: not Ready,
        // Stalled until someone changes spec.version.
        let (ready, why, message) = world.condition(s, "Ready");
        assert_eq!(
            (ready.as_str(), why.as_str()),
            ("False", Reason::VERSION_FAILED.as_str())
        );
        assert!(message.contains("version 1.0.0 ready on blue"), "{message}");
        assert_eq!(world.condition(s, "Stalled").0, "True", "{s}");
        assert_eq!(world.condition(s, "Reconciling").0, "False", "{s}");
    }
    assert_eq!(
        world.events("Rollback")["b"][0].reason,
        Reason::ROLLBACK_REQUESTED
    );
    assert_eq!(
        world.events("Rollback")["c"][0].reason,
        Reason::CASCADE_ROLLBACK
    );
    assert_eq!(world.live("a"), ("2.0.0".into(), Color::Green));
    assert!(
        !world
            .fs("b")
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(rollout::ROLLBACK_ANNOTATION),
        "the handled request is cleared"
    );
    assert!(world.fs("b").status.unwrap().rollback.is_none());
}

/// What every service's `/health` reports for 1.0.0 and 2.0.0: schema 10, then 20;
/// D's 2.0.0 drops what 1.0.0 reads (its migration 20 is marked).
fn report_schemas(world: &World) {
    let mut state = world.fake.state();
    for (name, _) in SIX {
        let marked = if name == "d" {
            json!([{"version": 20, "description": "drop legacy name"}])
        } else {
            json!([])
        };
        state.schemas.insert(
            (name.to_owned(), "1.0.0".to_owned()),
            json!({"version": 10, "incompatible": []}),
        );
        state.schemas.insert(
            (name.to_owned(), "2.0.0".to_owned()),
            json!({"version": 20, "incompatible": marked}),
        );
    }
}

#[tokio::test]
async fn a_cascade_across_a_marked_migration_is_held_whole_and_force_completes_it() {
    let world = World::new(&SIX);
    report_schemas(&world);
    world.run_until(80, World::settled).await;
    world.set_versions("2.0.0");
    world.run_until(150, World::settled).await;
    let d = world.fs("d").status.unwrap();
    let barrier = d
        .schema_barrier
        .clone()
        .expect("D's 2.0.0 brought the mark live");
    assert_eq!(
        (
            barrier.migration.version,
            barrier.release.as_str(),
            barrier.overridden_by
        ),
        (20, "2.0.0", None)
    );
    let schemas: Vec<_> = d
        .history
        .iter()
        .map(|r| (r.version.as_str(), r.schema_version))
        .collect();
    assert_eq!(schemas, [("1.0.0", Some(10)), ("2.0.0", Some(20))]);
    assert!(
        world.fs("c").status.unwrap().schema_barrier.is_none(),
        "C has no mark"
    );

    // `kubectl finflow rollback b --cascade`: D would run 1.0.0 against migration 20.
    world.fake.edit_finservice(
        "b",
        json!({"metadata": {"annotations": {rollout::ROLLBACK_ANNOTATION: "cascade"}}}),
    );
    for _ in 0..6 {
        world.tick().await;
    }
    assert!(world.events("Rollback").is_empty(), "nothing rolled back");
    assert!(
        world.events("ScaleUpOld").is_empty(),
        "nothing even scaled up"
    );
    for s in ["b", "c", "d", "e", "f"] {
        let status = world.fs(s).status.unwrap();
        assert_eq!(status.active_version.as_deref(), Some("2.0.0"), "{s}");
        assert_eq!(status.step.as_deref(), Some("BlockedBySchema"), "{s}");
        let (degraded, why, message) = world.condition(s, "Degraded");
        assert_eq!(
            (degraded.as_str(), why.as_str()),
            ("True", Reason::INCOMPATIBLE_MIGRATION.as_str()),
            "{s}"
        );
        assert!(
            message.contains("migration 20 (drop legacy name)"),
            "{s}: {message}"
        );
        assert!(
            message.contains("kubectl finflow rollback b --cascade --force"),
            "{s}: {message}"
        );
        assert_eq!(world.condition(s, "Stalled").0, "True", "{s}");
    }
    let held = world.events("BlockedBySchema");
    assert_eq!(
        held["d"].len(),
        1,
        "one Warning, not one per reconcile: {held:?}"
    );
    assert_eq!(held["d"][0].type_, "Warning");
    assert_eq!(world.live("a"), ("2.0.0".into(), Color::Green));
    let b = world.fs("b");
    assert!(
        !b.metadata
            .annotations
            .unwrap_or_default()
            .contains_key(rollout::ROLLBACK_ANNOTATION),
        "the held request moved to the status"
    );
    let kept = b
        .status
        .unwrap()
        .rollback
        .expect("b's rollback is kept while held");
    assert_eq!(
        (kept.cascade, kept.force, kept.from.as_deref()),
        (true, false, Some("2.0.0"))
    );

    // `kubectl finflow rollback b --cascade --force`.
    world.fake.edit_finservice(
        "b",
        json!({"metadata": {"annotations": {rollout::ROLLBACK_ANNOTATION: "cascade,force"}}}),
    );
    world.run_until(80, |w| w.live("b").0 == "1.0.0").await;
    world.tick().await;
    let rolled = world.first("Rollback");
    assert_eq!(rolled.keys().collect::<Vec<_>>(), ["b", "c", "d", "e", "f"]);
    assert!(
        rolled["f"] < rolled["d"] && rolled["d"] < rolled["c"] && rolled["c"] < rolled["b"],
        "{rolled:?}"
    );
    let forced = &world.events("Rollback")["d"][0];
    assert_eq!(
        (forced.reason.as_str(), forced.type_.as_str()),
        (Reason::INCOMPATIBLE_MIGRATION_FORCED.as_str(), "Warning")
    );
    assert!(
        forced
            .note
            .contains("past migration 20 (drop legacy name) as forced"),
        "{}",
        forced.note
    );
    assert_eq!(
        world.events("Rollback")["c"][0].reason,
        Reason::CASCADE_ROLLBACK,
        "C crossed nothing"
    );
    let d = world.fs("d").status.unwrap();
    assert_eq!(
        d.schema_barrier.unwrap().overridden_by.as_deref(),
        Some("1.0.0")
    );
    assert!(world.fs("b").status.unwrap().rollback.is_none());
}

#[tokio::test]
async fn a_reverted_spec_older_than_the_barrier_waits_for_a_forced_promotion() {
    let world = World::new(&[("a", &[])]);
    {
        let mut state = world.fake.state();
        state.schemas.insert(
            ("a".into(), "1.0.0".into()),
            json!({"version": 10, "incompatible": []}),
        );
        state.schemas.insert(
            ("a".into(), "2.0.0".into()),
            json!({"version": 20, "incompatible": [{"version": 20, "description": "drop legacy name"}]}),
        );
    }
    world.run_until(80, World::settled).await;
    world
        .fake
        .edit_finservice("a", json!({"spec": {"version": "2.0.0"}}));
    world.run_until(80, World::settled).await;
    // A GitOps revert of spec.version.
    world
        .fake
        .edit_finservice("a", json!({"spec": {"version": "1.0.0"}}));
    for _ in 0..4 {
        world.tick().await;
    }
    let status = world.fs("a").status.unwrap();
    assert_eq!(
        (status.step.as_deref(), status.preview_version),
        (Some("BlockedBySchema"), None)
    );
    let (_, why, message) = world.condition("a", "Degraded");
    assert_eq!(why, Reason::INCOMPATIBLE_MIGRATION);
    assert!(
        message.contains("kubectl finflow promote a --force"),
        "{message}"
    );

    world.fake.edit_finservice(
        "a",
        json!({"metadata": {"annotations": {rollout::PROMOTE_ANNOTATION: "force"}}}),
    );
    world.run_until(40, |w| w.live("a").0 == "1.0.0").await;
    let promoted = &world.events("Promote")["a"];
    assert_eq!(
        promoted.last().unwrap().reason,
        Reason::INCOMPATIBLE_MIGRATION_FORCED
    );
    let barrier = world.fs("a").status.unwrap().schema_barrier.unwrap();
    assert_eq!(barrier.overridden_by.as_deref(), Some("1.0.0"));
}

#[tokio::test]
async fn manual_promotion_waits_for_the_promote_request() {
    let world = deployed_at_one(&[("a", &[])]).await;
    world.fake.edit_finservice(
        "a",
        json!({"spec": {"version": "2.0.0", "rollout": {"autoPromote": false}}}),
    );
    for _ in 0..4 {
        world.tick().await;
    }
    assert_eq!(
        world.fs("a").status.unwrap().step.as_deref(),
        Some("AwaitPromotion")
    );
    assert_eq!(world.live("a").0, "1.0.0");
    world.fake.edit_finservice(
        "a",
        json!({"metadata": {"annotations": {rollout::PROMOTE_ANNOTATION: "true"}}}),
    );
    world.tick().await;
    assert_eq!(world.live("a"), ("2.0.0".into(), Color::Green));
    assert_eq!(
        world.events("Promote")["a"][0].reason,
        Reason::PROMOTION_REQUESTED
    );
    assert!(
        world
            .fs("a")
            .metadata
            .annotations
            .unwrap_or_default()
            .is_empty()
    );
}

#[tokio::test]
async fn a_new_service_waits_for_a_missing_dependency_and_writes_only_its_status() {
    let world = World::new(&[("b", &["a"])]);
    world.tick().await;
    let s = world.fs("b").status.unwrap();
    assert_eq!(s.phase, Some(Phase::Waiting));
    let (status, why, message) = world.condition("b", "DependenciesReady");
    assert_eq!(
        (status.as_str(), why.as_str(), message.as_str()),
        ("False", "DependencyMissing", "FinService a does not exist")
    );
    assert_eq!(
        world.fake.state().writes,
        ["PATCH /apis/finflow.dev/v1alpha1/namespaces/finflow/finservices/b/status"],
        "no Deployment, Service, ConfigMap or ServiceAccount"
    );
}

#[tokio::test]
async fn a_new_service_waits_for_a_dependency_that_is_not_ready() {
    let world = World::new(&[("a", &[]), ("b", &["a"])]);
    world
        .fake
        .state()
        .never_ready
        .insert(("a".into(), "1.0.0".into()));
    for _ in 0..3 {
        world.tick().await;
    }
    let s = world.fs("b").status.unwrap();
    assert_eq!(s.phase, Some(Phase::Waiting));
    assert_eq!(s.step.as_deref(), Some("WaitForDependencies"));
    assert_eq!(
        world.condition("b", "DependenciesReady").1,
        "DependencyNotReady"
    );
    assert!(
        world.fake.deployment("b-blue").is_none(),
        "nothing created yet"
    );
    assert!(world.fake.deployment("a-blue").is_some());
}

#[tokio::test]
async fn a_reconcile_of_a_settled_world_writes_nothing() {
    let world = deployed_at_one(&[("a", &[]), ("b", &["a"])]).await;
    world.fake.state().writes.clear();
    let events = world.fake.state().events.len();
    world.tick().await;
    world.tick().await;
    assert!(
        world.fake.state().writes.is_empty(),
        "{:?}",
        world.fake.state().writes
    );
    assert_eq!(world.fake.state().events.len(), events);
}

#[tokio::test]
async fn a_new_finservice_gets_its_six_objects_applied_by_the_operator() {
    let world = World::new(&[("a", &[])]);
    world.tick().await;

    let v1 = "/api/v1/namespaces/finflow";
    let apps = "/apis/apps/v1/namespaces/finflow";
    let owned = [
        ("ServiceAccount", format!("{v1}/serviceaccounts/a")),
        ("ConfigMap", format!("{v1}/configmaps/a-sidecar")),
        ("Deployment", format!("{apps}/deployments/a-blue")),
        ("Deployment", format!("{apps}/deployments/a-green")),
        ("Service", format!("{v1}/services/a")),
        ("Service", format!("{v1}/services/a-preview")),
    ];
    let status = format!("{}/a/status", super::fake::finservices());
    let (writes, sent) = {
        let state = world.fake.state();
        (state.writes.clone(), state.sent.clone())
    };
    let expected: Vec<String> = owned
        .iter()
        .map(|(_, path)| path)
        .chain([&status])
        .map(|path| format!("PATCH {path}"))
        .collect();
    assert_eq!(
        writes, expected,
        "the six objects, then the status, and nothing else"
    );

    // Every write is a forced server-side apply by the operator's field manager.
    let apply_params = BTreeSet::from([
        "force=true".to_owned(),
        format!("fieldManager={}", crate::meta::FIELD_MANAGER),
    ]);
    assert_eq!(sent.len(), expected.len());
    for write in &sent {
        assert_eq!(write.method, http::Method::PATCH, "{}", write.path);
        assert_eq!(
            write.content_type, "application/apply-patch+yaml",
            "{}",
            write.path
        );
        let params: BTreeSet<String> = write.params().into_iter().map(str::to_owned).collect();
        assert_eq!(params, apply_params, "{}", write.path);
    }

    // Each object is owned by the FinService, so deleting it deletes them.
    let uid = world.fs("a").metadata.uid.expect("the fake sets a uid");
    let owner = json!([{
        "apiVersion": "finflow.dev/v1alpha1",
        "kind": "FinService",
        "name": "a",
        "uid": uid,
        "controller": true,
    }]);
    let mut bodies: BTreeMap<String, Value> = BTreeMap::new();
    for (write, (kind, path)) in sent.iter().zip(&owned) {
        assert_eq!(&write.path, path);
        let name = path.rsplit('/').next().unwrap();
        let api_version = if *kind == "Deployment" {
            "apps/v1"
        } else {
            "v1"
        };
        let body = &write.body;
        assert_eq!(
            (&body["apiVersion"], &body["kind"]),
            (&json!(api_version), &json!(kind)),
            "{path}"
        );
        assert_eq!(body["metadata"]["name"], name, "{path}");
        assert_eq!(body["metadata"]["namespace"], "finflow", "{path}");
        assert_eq!(body["metadata"]["ownerReferences"], owner, "{path}");
        bodies.insert(name.to_owned(), body.clone());
    }
    assert_eq!(sent[6].path, status);

    assert!(
        bodies["a-sidecar"]["data"][crate::inject::CONFIG_FILE].is_string(),
        "the sidecar's configuration"
    );
    // The first version goes live on blue; green stands by at zero replicas.
    for (deployment, color, replicas) in [("a-blue", "blue", 2), ("a-green", "green", 0)] {
        let spec = &bodies[deployment]["spec"];
        assert_eq!(spec["replicas"], replicas, "{deployment}");
        let labels = &spec["template"]["metadata"]["labels"];
        assert_eq!(labels["finflow.dev/color"], color, "{deployment}");
        assert_eq!(labels["finflow.dev/version"], "1.0.0", "{deployment}");
    }
    assert_eq!(
        bodies["a"]["spec"]["selector"]["finflow.dev/color"], "blue",
        "the Service sends traffic to the live color"
    );
    assert_eq!(
        bodies["a-preview"]["spec"]["selector"]["finflow.dev/color"], "green",
        "the preview Service to the other"
    );

    // And it reports progress.
    let s = world.fs("a").status.unwrap();
    assert_eq!(s.phase, Some(Phase::Progressing));
    assert_eq!(s.active_version.as_deref(), Some("1.0.0"));
    assert_eq!(s.active_color, Some(Color::Blue));
    let applies = world.events("Apply");
    let applied = &applies["a"];
    assert_eq!(applied.len(), 1);
    assert_eq!(
        applied[0].note,
        "applied ServiceAccount/a, ConfigMap/a-sidecar, Deployment/a-blue, \
         Deployment/a-green, Service/a, Service/a-preview"
    );
    assert!(world.first("DeployFirst").contains_key("a"));
}

/// The app container's `env` entries named `name` in Deployment `deployment`.
fn app_env(world: &World, deployment: &str, name: &str) -> Vec<Value> {
    let d = world
        .fake
        .deployment(deployment)
        .expect("the Deployment exists");
    let app = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "app")
        .cloned()
        .unwrap();
    app["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == name)
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_users_database_url_replaces_the_operators_in_both_colors() {
    let world = World::new(&[]);
    let mut a = manifest("a", &[]);
    a["spec"]["databaseSecretRef"] = json!({"name": "a-db", "key": "url"});
    a["spec"]["env"] = json!([
        {"name": "DATABASE_URL", "value": "postgres://override/a"},
        {"name": "RUST_LOG", "value": "debug"},
    ]);
    world.fake.create(super::fake::finservices(), a);
    world.run_until(20, World::settled).await;
    for deployment in ["a-blue", "a-green"] {
        assert_eq!(
            app_env(&world, deployment, "DATABASE_URL"),
            [json!({"name": "DATABASE_URL", "value": "postgres://override/a"})],
            "{deployment}"
        );
        assert_eq!(app_env(&world, deployment, "RUST_LOG").len(), 1);
    }
}

const A_BLUE: &str = "/apis/apps/v1/namespaces/finflow/deployments/a-blue";

/// One reconcile of FinService `name`, as the controller runs it; its result.
async fn reconcile_once(world: &World, name: &str) -> super::Result<()> {
    Box::pin(reconcile(Arc::new(world.fs(name)), world.ctx.clone()))
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_refused_apply_shows_in_the_status_and_an_event_within_one_reconcile() {
    let world = deployed_at_one(&[("a", &[])]).await;
    let refusal = "Deployment.apps \"a-blue\" is invalid: spec.template.spec.containers[0].image: Invalid value: \"bad image\"";
    world.fake.refuse(A_BLUE, 422, "Invalid", refusal);
    world
        .fake
        .edit_finservice("a", json!({"spec": {"replicas": 3}}));

    assert!(
        reconcile_once(&world, "a").await.is_err(),
        "the reconcile fails"
    );
    let s = world.fs("a").status.unwrap();
    let generation = world.fs("a").metadata.generation;
    assert_eq!(s.observed_generation, generation);
    assert_eq!(s.phase, Some(Phase::Degraded));
    let expected = format!("applying Deployment/a-blue: {refusal}");
    for type_ in ["Ready", "Stalled"] {
        let c = s.conditions.iter().find(|c| c.type_ == type_).unwrap();
        let want = if type_ == "Ready" { "False" } else { "True" };
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
            (want, "ApplyFailed", expected.as_str()),
            "{type_}"
        );
        assert_eq!(c.observed_generation, generation, "{type_}");
    }
    assert_eq!(world.condition("a", "Reconciling").0, "False");
    let failed = world.events("Apply")["a"]
        .iter()
        .filter(|e| e.reason == "ApplyFailed")
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0].type_.as_str(), failed[0].note.as_str()),
        ("Warning", expected.as_str())
    );

    // The same refusal again: already reported, so no status write and no Event.
    let (writes, events) = {
        let state = world.fake.state();
        (state.writes.len(), state.events.len())
    };
    assert!(reconcile_once(&world, "a").await.is_err());
    {
        let state = world.fake.state();
        let since = &state.writes[writes..];
        assert!(!since.iter().any(|w| w.ends_with("/status")), "{since:?}");
        assert_eq!(state.events.len(), events);
    }

    // Once the server accepts it, the next reconcile clears the failure.
    world.fake.state().refusals.clear();
    world.run_until(10, World::settled).await;
    let (ready, _, _) = world.condition("a", "Ready");
    assert_eq!(ready, "True");
    assert_eq!(world.condition("a", "Stalled").0, "False");
}

#[tokio::test]
async fn a_finservice_named_like_a_service_someone_made_leaves_it_alone_and_says_so() {
    const SERVICES: &str = "/api/v1/namespaces/finflow/services";
    let world = World::new(&[]);
    // A Service made by hand in the tenant's namespace: the database's address.
    let theirs = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "a", "namespace": "finflow"},
        "spec": {"selector": {"app": "postgres"}, "ports": [{"port": 5432}]},
    });
    world.fake.create(SERVICES, theirs.clone());
    world
        .fake
        .create(super::fake::finservices(), manifest("a", &[]));

    for _ in 0..2 {
        assert!(reconcile_once(&world, "a").await.is_err());
    }
    let service = world.fake.service("a").unwrap();
    assert_eq!(
        service["spec"], theirs["spec"],
        "its traffic goes where it went"
    );
    assert!(service["metadata"]["ownerReferences"].is_null());
    let writes = world.fake.state().writes.clone();
    assert!(
        writes.iter().all(|w| w.ends_with("/finservices/a/status")),
        "nothing of the FinService's is written while one of them is someone else's: {writes:?}"
    );
    let (stalled, reason, message) = world.condition("a", "Stalled");
    assert_eq!(
        (stalled.as_str(), reason.as_str()),
        ("True", "ObjectNotOwned")
    );
    assert!(
        message.starts_with("Service/a exists and is not this resource's (controlled by no one"),
        "{message}"
    );
    assert_eq!(world.condition("a", "Ready").0, "False");
    let warned = world.events("Apply")["a"]
        .iter()
        .filter(|e| e.reason == "ObjectNotOwned" && e.type_ == "Warning")
        .count();
    assert_eq!(warned, 1, "one Warning, not one per retry");

    // Once its maker removes it, the FinService gets a Service of its own.
    world.fake.delete(SERVICES, "a");
    world.run_until(10, World::settled).await;
    let ours = world.fake.service("a").unwrap();
    assert_eq!(ours["metadata"]["ownerReferences"][0]["kind"], "FinService");
    assert_eq!(world.condition("a", "Stalled").0, "False");
}

#[tokio::test]
async fn a_server_that_does_not_answer_makes_the_service_reconciling_not_stalled() {
    let world = World::new(&[("a", &[])]);
    world.fake.refuse(
        A_BLUE,
        503,
        "ServiceUnavailable",
        "the server is currently unable to handle the request",
    );
    assert!(reconcile_once(&world, "a").await.is_err());
    let (reconciling, why, message) = world.condition("a", "Reconciling");
    assert_eq!(
        (reconciling.as_str(), why.as_str()),
        ("True", "ApplyFailed")
    );
    assert!(
        message.contains("unable to handle the request"),
        "{message}"
    );
    assert_eq!(world.condition("a", "Stalled").0, "False");
    assert_eq!(world.condition("a", "Ready").0, "False");
    assert_eq!(
        world.fs("a").status.unwrap().phase,
        Some(Phase::Progressing)
    );
}

#[tokio::test]
async fn a_rollout_in_progress_is_reconciling_and_not_ready_until_it_settles() {
    let world = deployed_at_one(&[("a", &[])]).await;
    for type_ in ["Reconciling", "Stalled"] {
        assert_eq!(world.condition("a", type_).0, "False", "{type_}");
    }
    world
        .fake
        .edit_finservice("a", json!({"spec": {"version": "2.0.0"}}));
    world.tick().await;
    let (ready, _, message) = world.condition("a", "Ready");
    assert_eq!(ready, "False", "{message}");
    assert!(
        message.contains("version 1.0.0 ready on blue"),
        "what still serves: {message}"
    );
    assert_eq!(world.condition("a", "Reconciling").0, "True");
    world
        .run_until(40, |w| w.condition("a", "Ready").0 == "True")
        .await;
    assert_eq!(world.live("a").0, "2.0.0");
    assert!(world.fs("a").status.unwrap().preview_version.is_none());
    assert_eq!(world.condition("a", "Reconciling").0, "False");
    assert_eq!(world.condition("a", "Stalled").0, "False");
}
