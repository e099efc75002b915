//! Tests of the rollout engine: single decisions, the multi-service scenarios of `docs/architecture.md` (Blue-green rollouts)
//! driven through [`plan`] and [`apply`] with a simulated cluster, and properties over
//! random dependency graphs.

use super::*;
use proptest::prelude::*;

const TIMING: Timing = Timing {
    readiness_timeout: 60,
    observation_window: 30,
    scale_down_delay: 40,
};

fn svc(version: &str) -> Observed {
    Observed {
        timing: TIMING,
        ..Observed::steady(version, 0)
    }
}

/// The FinFlow graph with the letters as names: B on A, C on B, D and
/// E on A and C, F on B, C and E.
fn six() -> DependencyGraph {
    DependencyGraph::new([
        ("a", vec![]),
        ("b", vec!["a"]),
        ("c", vec!["b"]),
        ("d", vec!["a", "c"]),
        ("e", vec!["a", "c"]),
        ("f", vec!["b", "c", "e"]),
    ])
    .unwrap()
}

/// How the simulated cluster answers: per service, whether its preview becomes available
/// and healthy one tick after it is deployed.
#[derive(Default)]
struct Cluster {
    never_ready: BTreeSet<String>,
}

impl Cluster {
    /// Pods come up and the health probe answers: the edge's part, done between ticks.
    fn settle(&self, world: &mut BTreeMap<String, Observed>) {
        for (name, o) in world.iter_mut() {
            if !self.never_ready.contains(name) {
                o.active_ready = true;
            }
            if let Some(p) = &mut o.preview
                && !self.never_ready.contains(name)
            {
                p.available = true;
                p.healthy = Some(true);
            }
        }
    }
}

/// Runs the engine tick by tick (10 s each) until nothing acts for a few ticks; returns
/// the acting steps in order with their tick, and the last tick's time.
fn run(
    graph: &DependencyGraph,
    world: &mut BTreeMap<String, Observed>,
    cluster: &Cluster,
    start: i64,
    mut hook: impl FnMut(i64, &mut BTreeMap<String, Observed>),
) -> (Vec<(i64, String, Step)>, i64) {
    let mut log = Vec::new();
    let mut idle = 0;
    let mut now = start;
    for _ in 0..500 {
        hook(now, world);
        let decisions = plan(graph, world, now);
        let mut acted = false;
        for (name, d) in &decisions {
            if d.step.acts() {
                acted = true;
                log.push((now, name.clone(), d.step));
                apply(world.get_mut(name).unwrap(), d, now);
            }
        }
        cluster.settle(world);
        idle = if acted { 0 } else { idle + 1 };
        if idle > 12 {
            break;
        }
        now += 10;
    }
    (log, now)
}

fn upgraded(graph: &DependencyGraph) -> BTreeMap<String, Observed> {
    graph
        .services()
        .map(|s| {
            let mut o = svc("1.0.0");
            o.spec_version = "2.0.0".into();
            (s.to_owned(), o)
        })
        .collect()
}

fn times_of(log: &[(i64, String, Step)], step: Step) -> BTreeMap<String, i64> {
    log.iter()
        .filter(|(_, _, s)| *s == step)
        .map(|(t, n, _)| (n.clone(), *t))
        .collect()
}

fn names(log: &[(i64, String, Step)], step: Step) -> Vec<String> {
    log.iter()
        .filter(|(_, _, s)| *s == step)
        .map(|(_, n, _)| n.clone())
        .collect()
}

#[test]
fn six_services_upgrade_in_dependency_order() {
    let graph = six();
    let mut world = upgraded(&graph);
    let (log, _) = run(&graph, &mut world, &Cluster::default(), 0, |_, _| {});
    let promoted = times_of(&log, Step::Promote);
    assert_eq!(promoted.len(), 6, "{log:?}");
    assert!(promoted["a"] < promoted["b"]);
    assert!(promoted["b"] < promoted["c"]);
    assert!(promoted["c"] < promoted["d"]);
    assert_eq!(
        promoted["d"], promoted["e"],
        "D and E roll out side by side"
    );
    assert!(promoted["e"] < promoted["f"]);
    // The next wave starts only after the observation window of the previous one.
    let deployed = times_of(&log, Step::DeployPreview);
    assert!(deployed["b"] >= promoted["a"] + TIMING.observation_window);
    assert_eq!(names(&log, Step::ScaleDownOld).len(), 6);
    assert!(world.values().all(|o| o.healthy(10_000)));
}

#[test]
fn c_never_ready_aborts_and_holds_its_dependents_only() {
    let graph = six();
    let mut world = upgraded(&graph);
    let cluster = Cluster {
        never_ready: BTreeSet::from(["c".to_owned()]),
    };
    let (log, now) = run(&graph, &mut world, &cluster, 0, |_, _| {});
    assert_eq!(names(&log, Step::Promote), ["a", "b"]);
    assert_eq!(names(&log, Step::Abort), ["c"]);
    let aborted = times_of(&log, Step::Abort)["c"];
    let deployed = times_of(&log, Step::DeployPreview)["c"];
    assert!(aborted > deployed + TIMING.readiness_timeout);
    assert!(names(&log, Step::Rollback).is_empty());
    let decisions = plan(&graph, &world, now);
    assert_eq!(decisions["c"].step, Step::Held);
    assert_eq!(decisions["c"].reason, Reason::VERSION_FAILED);
    for held in ["d", "e", "f"] {
        assert_eq!(decisions[held].step, Step::WaitForDependencies, "{held}");
        assert!(world[held].preview.is_none(), "{held} never deployed");
    }
    for untouched in ["a", "b"] {
        assert_eq!(decisions[untouched].step, Step::Steady);
        assert_eq!(world[untouched].active.as_ref().unwrap().version, "2.0.0");
    }
    // Abort is visible in the conditions: Degraded with the reason.
    let degraded = &plan(&graph, &world, now)["c"].conditions()[1];
    assert_eq!(degraded.status, crate::conditions::TRUE);

    // A new spec version releases the hold.
    world.get_mut("c").unwrap().spec_version = "2.0.1".into();
    assert_eq!(plan(&graph, &world, now)["c"].step, Step::DeployPreview);
}

#[test]
fn f_failing_its_observation_window_rolls_back_alone() {
    let graph = six();
    let mut world = upgraded(&graph);
    let mut f_promoted = false;
    let (log, now) = run(&graph, &mut world, &Cluster::default(), 0, |_, w| {
        let f = w.get_mut("f").unwrap();
        if f.previous.is_some() && f.failed_version.is_none() && !f_promoted {
            f_promoted = true;
            f.window.restarts = 3;
        }
    });
    assert_eq!(names(&log, Step::Promote).len(), 6);
    assert_eq!(names(&log, Step::Rollback), ["f"]);
    assert!(
        names(&log, Step::ScaleUpOld).is_empty(),
        "old color still up"
    );
    let f = &world["f"];
    assert_eq!(f.active.as_ref().unwrap().version, "1.0.0");
    assert_eq!(plan(&graph, &world, now)["f"].step, Step::Held);
    for other in ["a", "b", "c", "d", "e"] {
        assert_eq!(world[other].active.as_ref().unwrap().version, "2.0.0");
    }
}

#[test]
fn cascade_rollback_of_b_walks_the_reverse_waves() {
    let graph = six();
    let mut world = upgraded(&graph);
    let (_, now) = run(&graph, &mut world, &Cluster::default(), 0, |_, _| {});
    world.get_mut("b").unwrap().request = rollback(true, false);
    let (log, _) = run(&graph, &mut world, &Cluster::default(), now + 10, |_, _| {});
    let rolled = times_of(&log, Step::Rollback);
    assert_eq!(
        rolled.keys().collect::<Vec<_>>(),
        ["b", "c", "d", "e", "f"],
        "A went live before B and stays"
    );
    assert!(rolled["f"] < rolled["e"]);
    assert_eq!(rolled["d"], rolled["e"]);
    assert!(rolled["e"] < rolled["c"]);
    assert!(rolled["c"] < rolled["b"]);
    // The old colors were scaled down long ago: each is scaled up before the flip.
    assert_eq!(names(&log, Step::ScaleUpOld).len(), 5);
    assert_eq!(world["a"].active.as_ref().unwrap().version, "2.0.0");
    for s in ["b", "c", "d", "e", "f"] {
        assert_eq!(world[s].active.as_ref().unwrap().version, "1.0.0", "{s}");
    }
}

/// F, first deployed after C's release went live, has no version to roll back to: the
/// cascade of C waited for it forever, C's release live all the while.
#[test]
fn a_cascade_leaves_a_dependent_deployed_first_after_its_root_as_it_is() {
    let graph = six();
    let mut world = upgraded(&graph);
    let (_, now) = run(&graph, &mut world, &Cluster::default(), 0, |_, _| {});
    let f = world.get_mut("f").unwrap();
    f.previous = None;
    f.active.as_mut().unwrap().since = now;
    world.get_mut("c").unwrap().request = rollback(true, false);
    let (log, _) = run(&graph, &mut world, &Cluster::default(), now + 10, |_, _| {});
    assert_eq!(
        times_of(&log, Step::Rollback).keys().collect::<Vec<_>>(),
        ["c", "d", "e"],
        "{log:?}"
    );
    assert_eq!(world["c"].active.as_ref().unwrap().version, "1.0.0");
    assert_eq!(world["f"].active.as_ref().unwrap().version, "2.0.0");
    assert!(
        world["c"].request.is_none(),
        "the request is done: {:?}",
        world["c"].request
    );
}

#[test]
fn a_single_rollback_leaves_dependents_alone() {
    let graph = six();
    let mut world = upgraded(&graph);
    let (_, now) = run(&graph, &mut world, &Cluster::default(), 0, |_, _| {});
    world.get_mut("b").unwrap().request = rollback(false, false);
    let (log, _) = run(&graph, &mut world, &Cluster::default(), now + 10, |_, _| {});
    assert_eq!(names(&log, Step::Rollback), ["b"]);
}

#[test]
fn manual_promotion_waits_for_the_request() {
    let graph = DependencyGraph::new([("a", Vec::<String>::new())]).unwrap();
    let mut o = svc("1.0.0");
    o.spec_version = "2.0.0".into();
    o.auto_promote = false;
    o.preview = Some(Preview {
        version: "2.0.0".into(),
        since: 0,
        available: true,
        healthy: Some(true),
        analysis: Verdict::Unavailable,
    });
    let mut world = BTreeMap::from([("a".to_owned(), o)]);
    assert_eq!(plan(&graph, &world, 10)["a"].step, Step::AwaitPromotion);
    world.get_mut("a").unwrap().request = Some(Request::Promote { force: false });
    let d = &plan(&graph, &world, 10)["a"];
    assert_eq!(
        (d.step, d.reason),
        (Step::Promote, Reason::PROMOTION_REQUESTED)
    );
}

#[test]
fn the_gate_needs_availability_and_a_healthy_probe() {
    let graph = DependencyGraph::new([("a", Vec::<String>::new())]).unwrap();
    let mut o = svc("1.0.0");
    o.spec_version = "2.0.0".into();
    o.preview = Some(Preview {
        version: "2.0.0".into(),
        since: 0,
        available: true,
        healthy: None,
        analysis: Verdict::Unavailable,
    });
    let at = |o: &Observed, now| {
        plan(&graph, &BTreeMap::from([("a".to_owned(), o.clone())]), now)["a"].clone()
    };
    assert_eq!(at(&o, 10).reason, Reason::PREVIEW_HEALTH_PENDING);
    o.preview.as_mut().unwrap().healthy = Some(false);
    assert_eq!(at(&o, 10).step, Step::AwaitPreview);
    assert_eq!(
        (at(&o, 61).step, at(&o, 61).reason),
        (Step::Abort, Reason::HEALTH_CHECK_FAILED)
    );
    o.request = Some(Request::Abort);
    assert_eq!(at(&o, 10).reason, Reason::ABORT_REQUESTED);
    // A rollback asked for while nothing new is live only aborts the preview.
    o.request = rollback(true, false);
    assert_eq!(
        (at(&o, 10).step, at(&o, 10).reason),
        (Step::Abort, Reason::ABORT_REQUESTED)
    );
}

#[test]
fn a_preview_failing_its_traffic_analysis_is_aborted_even_when_healthy() {
    let graph = DependencyGraph::new([("a", Vec::<String>::new())]).unwrap();
    let mut o = svc("1.0.0");
    o.spec_version = "2.0.0".into();
    o.preview = Some(Preview {
        version: "2.0.0".into(),
        since: 0,
        available: true,
        healthy: Some(true),
        analysis: Verdict::Failed,
    });
    let at = |o: &Observed| {
        plan(&graph, &BTreeMap::from([("a".to_owned(), o.clone())]), 10)["a"].clone()
    };
    let d = at(&o);
    assert_eq!((d.step, d.reason), (Step::Abort, Reason::ANALYSIS_FAILED));
    // Too few requests to judge, or no sidecar to read: the gate is what it was.
    for verdict in [Verdict::Inconclusive, Verdict::Unavailable, Verdict::Passed] {
        o.preview.as_mut().unwrap().analysis = verdict;
        assert_eq!(at(&o).step, Step::Promote, "{verdict:?}");
    }
}

#[test]
fn a_window_failed_by_its_traffic_rolls_back_as_analysis_failed_with_its_later_dependents() {
    let graph = DependencyGraph::new([("a", vec![]), ("b", vec!["a"])]).unwrap();
    let mut world = upgraded(&graph);
    let (_, now) = run(&graph, &mut world, &Cluster::default(), 0, |_, _| {});
    // a is back in an observation window (promoted again at `now`), and b went live
    // after it: the traffic of a's new version fails.
    let a = world.get_mut("a").unwrap();
    a.active.as_mut().unwrap().since = now;
    a.previous_up = true;
    a.window.analysis_failed = true;
    let b = world.get_mut("b").unwrap();
    b.active.as_mut().unwrap().since = now + 1;
    b.previous_up = true;
    let decisions = plan(&graph, &world, now + 5);
    assert_eq!(
        (decisions["a"].step, decisions["a"].reason),
        (Step::WaitForDependents, Reason::DEPENDENTS_ROLLING_BACK)
    );
    assert_eq!(decisions["b"].reason, Reason::CASCADE_ROLLBACK);
    let (log, _) = run(&graph, &mut world, &Cluster::default(), now + 5, |_, _| {});
    assert_eq!(names(&log, Step::Rollback), ["b", "a"]);
    // With a restart as well, the window failed for more than its traffic.
    let mut o = svc("2.0.0");
    o.previous = Some(Live {
        color: Color::Green,
        version: "1.0.0".into(),
        since: 0,
    });
    o.previous_up = true;
    o.window = Window {
        restarts: 1,
        analysis_failed: true,
        ..Window::default()
    };
    let alone = DependencyGraph::new([("a", Vec::<String>::new())]).unwrap();
    let d = &plan(&alone, &BTreeMap::from([("a".to_owned(), o.clone())]), 5)["a"];
    assert_eq!(
        (d.step, d.reason),
        (Step::Rollback, Reason::OBSERVATION_FAILED)
    );
    o.window.restarts = 0;
    let d = &plan(&alone, &BTreeMap::from([("a".to_owned(), o.clone())]), 5)["a"];
    assert_eq!(
        (d.step, d.reason),
        (Step::Rollback, Reason::ANALYSIS_FAILED)
    );
    // Kept in the status while it waited, the rollback comes back as a request: the
    // window still says why.
    o.request = rollback(true, false);
    let d = &plan(&alone, &BTreeMap::from([("a".to_owned(), o)]), 50)["a"];
    assert_eq!(
        (d.step, d.reason),
        (Step::Rollback, Reason::ANALYSIS_FAILED)
    );
}

#[test]
fn an_old_abort_does_not_exempt_a_service_from_a_later_cascade() {
    let graph = DependencyGraph::new([("a", vec![]), ("b", vec!["a"])]).unwrap();
    let mut world = upgraded(&graph);
    // b once aborted 1.5.0; then 2.0.0 went live everywhere.
    world.get_mut("b").unwrap().failed_version = Some("1.5.0".into());
    let (_, now) = run(&graph, &mut world, &Cluster::default(), 0, |_, _| {});
    assert_eq!(world["b"].failed_version, None, "the promotion cleared it");
    world.get_mut("a").unwrap().request = rollback(true, false);
    let (log, _) = run(&graph, &mut world, &Cluster::default(), now + 10, |_, _| {});
    assert_eq!(names(&log, Step::Rollback), ["b", "a"]);
}

#[test]
fn requests_stay_only_while_they_are_still_being_carried_out() {
    let promote = Request::Promote { force: false };
    assert!(!promote.handled_after(Step::AwaitPromotion));
    assert!(promote.handled_after(Step::Promote));
    assert!(promote.handled_after(Step::Steady));
    assert!(Request::Abort.handled_after(Step::Abort));
    let cascade = Request::Rollback {
        cascade: true,
        force: false,
    };
    assert!(!cascade.handled_after(Step::WaitForDependents));
    assert!(!cascade.handled_after(Step::ScaleUpOld));
    assert!(cascade.handled_after(Step::Rollback));
    assert!(cascade.handled_after(Step::Held));
    // A rollback the schema barrier holds is kept in the status, not the annotation.
    assert!(cascade.handled_after(Step::BlockedBySchema));
}

#[test]
fn pods_are_labelled_with_their_role_only_when_it_differs() {
    let labels = |role: &str| BTreeMap::from([(ROLE_LABEL.to_owned(), role.to_owned())]);
    assert_eq!(
        pod_role_apply("p", None, &labels("active"), Color::Blue, Color::Blue),
        None
    );
    assert_eq!(
        pod_role_apply("p", None, &labels("active"), Color::Blue, Color::Green).unwrap()["metadata"]
            ["labels"][ROLE_LABEL],
        "preview"
    );
    assert_eq!(
        pod_role_apply("p", None, &BTreeMap::new(), Color::Green, Color::Green).unwrap()["metadata"]
            ["labels"][ROLE_LABEL],
        "active"
    );
}

#[test]
fn a_role_label_applies_only_to_the_pod_that_was_listed() {
    let body = pod_role_apply(
        "p",
        Some("uid-p"),
        &BTreeMap::new(),
        Color::Blue,
        Color::Blue,
    );
    assert_eq!(
        body.unwrap()["metadata"],
        serde_json::json!({ "name": "p", "uid": "uid-p", "labels": { ROLE_LABEL: "active" } })
    );
}

#[test]
fn the_preview_is_probed_through_the_service_proxy() {
    assert_eq!(
        health_proxy_path("finflow", "payment-preview", "/health"),
        "/api/v1/namespaces/finflow/services/payment-preview:http/proxy/health"
    );
}

#[test]
fn annotations_become_requests() {
    for (key, value, request) in [
        (ROLLBACK_ANNOTATION, "cascade", rollback(true, false)),
        (ROLLBACK_ANNOTATION, "single", rollback(false, false)),
        (ROLLBACK_ANNOTATION, "cascade,force", rollback(true, true)),
        (ROLLBACK_ANNOTATION, "single,force", rollback(false, true)),
        (
            PROMOTE_ANNOTATION,
            "true",
            Some(Request::Promote { force: false }),
        ),
        (
            PROMOTE_ANNOTATION,
            "force",
            Some(Request::Promote { force: true }),
        ),
        (ABORT_ANNOTATION, "true", Some(Request::Abort)),
        (ABORT_ANNOTATION, "no", None),
        // A value the operator does not know asks for nothing, least of all a force.
        (ROLLBACK_ANNOTATION, "cascade,forced", None),
        (ROLLBACK_ANNOTATION, "force", None),
    ] {
        let annotations = BTreeMap::from([(key.to_owned(), value.to_owned())]);
        assert_eq!(
            request_from_annotations(&annotations),
            request,
            "{key}: {value}"
        );
    }
}

/// Schemas of releases `"k.0.0"`: schema `k * 10`, and marked incompatible where `k` is
/// in `marked`.
fn schemas(upto: i64, marked: &[i64]) -> BTreeMap<String, Schema> {
    (1..=upto)
        .map(|k| {
            let schema = Schema {
                version: k * 10,
                incompatible: marked
                    .iter()
                    .filter(|m| **m <= k)
                    .max()
                    .map(|m| MigrationRef {
                        version: m * 10,
                        description: format!("drop what {} read", m - 1),
                    }),
            };
            (format!("{k}.0.0"), schema)
        })
        .collect()
}

/// `version` live in green since `since` after `previous`, whose blue still runs; the
/// barrier as a promotion of `version` leaves it.
fn promoted(
    version: &str,
    previous: &str,
    since: i64,
    schemas: &BTreeMap<String, Schema>,
) -> Observed {
    let mut o = svc(version);
    o.active = Some(Live {
        color: Color::Green,
        version: version.into(),
        since,
    });
    o.previous = Some(Live {
        color: Color::Blue,
        version: previous.into(),
        since: 0,
    });
    o.previous_up = true;
    o.schemas = schemas.clone();
    o.barrier = barrier_after(None, schemas, previous, false);
    o.barrier = barrier_after(o.barrier.as_ref(), schemas, version, false);
    o
}

/// A rollback request.
fn rollback(cascade: bool, force: bool) -> Option<Request> {
    Some(Request::Rollback { cascade, force })
}

fn one(o: Observed) -> (DependencyGraph, BTreeMap<String, Observed>) {
    let graph = DependencyGraph::new([("a", Vec::<String>::new())]).unwrap();
    (graph, BTreeMap::from([("a".to_owned(), o)]))
}

#[test]
fn a_rollback_past_an_applied_incompatible_migration_is_held_and_force_completes_it() {
    let (graph, mut world) = one(promoted("2.0.0", "1.0.0", 0, &schemas(2, &[2])));
    let barrier = world["a"].barrier.clone().unwrap();
    assert_eq!(
        (barrier.migration.version, barrier.release.as_str()),
        (20, "2.0.0")
    );

    world.get_mut("a").unwrap().request = rollback(false, false);
    let d = &plan(&graph, &world, 100)["a"];
    assert_eq!(
        (d.step, d.reason),
        (Step::BlockedBySchema, Reason::INCOMPATIBLE_MIGRATION)
    );
    assert!(
        d.message.contains("migration 20 (drop what 1 read)"),
        "{}",
        d.message
    );
    assert!(
        d.message.contains("kubectl finflow rollback a --force"),
        "{}",
        d.message
    );
    assert!(
        !world["a"].healthy(100),
        "a rollback pending is not a healthy dependency"
    );

    world.get_mut("a").unwrap().request = rollback(false, true);
    let d = plan(&graph, &world, 100).remove("a").unwrap();
    assert_eq!(
        (d.step, d.reason),
        (Step::Rollback, Reason::INCOMPATIBLE_MIGRATION_FORCED)
    );
    assert!(d.forced());
    apply(world.get_mut("a").unwrap(), &d, 100);
    let a = &world["a"];
    assert_eq!(a.active.as_ref().unwrap().version, "1.0.0");
    assert_eq!(
        a.barrier.as_ref().unwrap().overridden_by.as_deref(),
        Some("1.0.0")
    );
}

#[test]
fn a_rollback_that_crosses_no_marked_migration_is_not_held() {
    // 2.0.0 is marked, 3.0.0 is not: back to 2.0.0 reads the schema it wrote.
    let (graph, mut world) = one(promoted("3.0.0", "2.0.0", 0, &schemas(3, &[2])));
    world.get_mut("a").unwrap().request = rollback(false, false);
    let d = &plan(&graph, &world, 100)["a"];
    assert_eq!(
        (d.step, d.reason),
        (Step::Rollback, Reason::ROLLBACK_REQUESTED)
    );
    assert!(
        !d.forced(),
        "a force is recorded only where it crossed something"
    );
}

#[test]
fn a_rollback_to_a_release_whose_schema_is_unknown_is_held_once_a_barrier_stands() {
    let mut known = schemas(2, &[2]);
    known.remove("1.0.0");
    let (graph, mut world) = one(promoted("2.0.0", "1.0.0", 0, &known));
    world.get_mut("a").unwrap().request = rollback(false, false);
    let d = &plan(&graph, &world, 100)["a"];
    assert_eq!(d.step, Step::BlockedBySchema);
    assert!(d.message.contains("an unknown schema"), "{}", d.message);
}

#[test]
fn a_cascade_is_held_whole_when_one_member_would_cross_and_force_walks_it_in_reverse() {
    let graph = six();
    let plain = schemas(2, &[]);
    let marked = schemas(2, &[2]);
    let mut world: BTreeMap<String, Observed> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .zip(1..)
        .map(|(s, i)| {
            let schemas = if *s == "d" { &marked } else { &plain };
            (s.to_string(), promoted("2.0.0", "1.0.0", i * 100, schemas))
        })
        .collect();
    world.get_mut("b").unwrap().request = rollback(true, false);
    let decisions = plan(&graph, &world, 1000);
    for s in ["b", "c", "d", "e", "f"] {
        let d = &decisions[s];
        assert_eq!(d.step, Step::BlockedBySchema, "{s}: {d:?}");
        assert!(
            d.message.contains("rolling d back to 1.0.0"),
            "{s}: {}",
            d.message
        );
    }
    assert_eq!(
        decisions["a"].step,
        Step::ScaleDownOld,
        "A went live before B: not in the set"
    );

    world.get_mut("b").unwrap().request = rollback(true, true);
    let (log, _) = run(&graph, &mut world, &Cluster::default(), 1000, |_, _| {});
    let rolled = times_of(&log, Step::Rollback);
    assert_eq!(rolled.keys().collect::<Vec<_>>(), ["b", "c", "d", "e", "f"]);
    assert!(rolled["f"] < rolled["d"] && rolled["d"] < rolled["c"] && rolled["c"] < rolled["b"]);
    assert_eq!(
        world["d"]
            .barrier
            .as_ref()
            .unwrap()
            .overridden_by
            .as_deref(),
        Some("1.0.0"),
        "the member that crossed records it"
    );
    assert!(world["c"].barrier.is_none());
}

#[test]
fn a_failed_window_held_by_the_barrier_stays_held_after_the_window_until_forced() {
    let (graph, mut world) = one(promoted("2.0.0", "1.0.0", 0, &schemas(2, &[2])));
    world.get_mut("a").unwrap().window.restarts = 2;
    let mut now = 10;
    while now < 200 {
        let d = plan(&graph, &world, now).remove("a").unwrap();
        assert_eq!(
            (d.step, d.reason),
            (Step::BlockedBySchema, Reason::INCOMPATIBLE_MIGRATION),
            "at {now}"
        );
        apply(world.get_mut("a").unwrap(), &d, now);
        now += 10;
    }
    assert!(now > TIMING.observation_window);
    world.get_mut("a").unwrap().request = rollback(true, true);
    let d = plan(&graph, &world, now).remove("a").unwrap();
    assert_eq!(d.step, Step::Rollback);
    apply(world.get_mut("a").unwrap(), &d, now);
    assert_eq!(world["a"].active.as_ref().unwrap().version, "1.0.0");
    assert_eq!(
        plan(&graph, &world, now + 10)["a"].step,
        Step::Held,
        "2.0.0 failed"
    );
}

#[test]
fn a_reverted_spec_older_than_the_barrier_is_not_deployed_unless_promoted_with_force() {
    let mut o = promoted("2.0.0", "1.0.0", 0, &schemas(2, &[2]));
    o.spec_version = "1.0.0".into();
    let (graph, mut world) = one(o);
    let d = &plan(&graph, &world, 1000)["a"];
    assert_eq!(
        (d.step, d.reason),
        (Step::BlockedBySchema, Reason::INCOMPATIBLE_MIGRATION)
    );
    assert!(
        d.message
            .contains("1.0.0 expects schema 10, older than migration 20"),
        "{}",
        d.message
    );
    assert!(
        d.message.contains("kubectl finflow promote a --force"),
        "{}",
        d.message
    );

    world.get_mut("a").unwrap().request = Some(Request::Promote { force: true });
    let (log, _) = run(&graph, &mut world, &Cluster::default(), 1000, |_, _| {});
    assert_eq!(names(&log, Step::Promote), ["a"]);
    let a = &world["a"];
    assert_eq!(a.active.as_ref().unwrap().version, "1.0.0");
    assert_eq!(
        a.barrier.as_ref().unwrap().overridden_by.as_deref(),
        Some("1.0.0")
    );
}

#[test]
fn a_preview_that_reports_a_schema_older_than_the_barrier_is_held_not_promoted() {
    // 0.9.0 was never seen here: it is deployed, and its health tells its schema.
    let mut o = promoted("2.0.0", "1.0.0", 0, &schemas(2, &[2]));
    o.spec_version = "0.9.0".into();
    let (graph, mut world) = one(o);
    let d = plan(&graph, &world, 1000).remove("a").unwrap();
    assert_eq!(d.step, Step::DeployPreview);
    apply(world.get_mut("a").unwrap(), &d, 1000);
    let a = world.get_mut("a").unwrap();
    let preview = a.preview.as_mut().unwrap();
    preview.available = true;
    preview.healthy = Some(true);
    // Healthy, but its `/health` says nothing of its schema: it may not read it either.
    let d = plan(&graph, &world, 1005).remove("a").unwrap();
    assert_eq!(d.step, Step::BlockedBySchema, "{d:?}");
    assert!(
        d.message.contains("0.9.0 reports no schema"),
        "{}",
        d.message
    );
    let a = world.get_mut("a").unwrap();
    a.schemas.insert(
        "0.9.0".into(),
        Schema {
            version: 9,
            incompatible: None,
        },
    );
    let d = &plan(&graph, &world, 1010)["a"];
    assert_eq!(d.step, Step::BlockedBySchema, "{d:?}");
    // A newer release instead: deployed and promoted as usual.
    world.get_mut("a").unwrap().spec_version = "3.0.0".into();
    assert_eq!(
        plan(&graph, &world, 1020)["a"].step,
        Step::Abort,
        "the held preview goes"
    );
}

#[test]
fn the_barrier_rises_with_each_newer_mark_and_a_forced_crossing_is_cleared_by_going_past_it() {
    let s = schemas(4, &[2, 3]);
    let b = barrier_after(None, &s, "1.0.0", false);
    assert_eq!(b, None, "nothing marked yet");
    let b = barrier_after(b.as_ref(), &s, "3.0.0", false).unwrap();
    assert_eq!((b.migration.version, b.release.as_str()), (30, "3.0.0"));
    // Back to 2.0.0 (schema 20 < 30): only a forced request records a crossing.
    assert_eq!(
        barrier_after(Some(&b), &s, "2.0.0", false)
            .unwrap()
            .overridden_by,
        None
    );
    let crossed = barrier_after(Some(&b), &s, "2.0.0", true).unwrap();
    assert_eq!(crossed.overridden_by.as_deref(), Some("2.0.0"));
    assert_eq!(
        crossed.migration.version, 30,
        "a crossing does not lower the barrier"
    );
    let past = barrier_after(Some(&crossed), &s, "4.0.0", false).unwrap();
    assert_eq!((past.migration.version, past.overridden_by), (30, None));
}

#[test]
fn the_schema_is_read_from_the_platforms_health_body() {
    // As `finflow_platform::health` writes it (services/platform/tests/http.rs).
    let body = r#"{"service":"wallet","version":"0.1.0","status":"up","dependencies":[],
        "schema":{"version":20270101000002,"incompatible":[
            {"version":20270101000001,"description":"older mark"},
            {"version":20270101000002,"description":"drop legacy name"}]}}"#;
    assert_eq!(
        schema_from_health(body),
        Some(Schema {
            version: 20_270_101_000_002,
            incompatible: Some(MigrationRef {
                version: 20_270_101_000_002,
                description: "drop legacy name".into(),
            }),
        })
    );
    let unmarked = r#"{"status":"up","schema":{"version":7,"incompatible":[]}}"#;
    assert_eq!(schema_from_health(unmarked).unwrap().incompatible, None);
    assert_eq!(schema_from_health(r#"{"status":"up"}"#), None);
    assert_eq!(schema_from_health("ok"), None);
}

/// Random DAGs as in `graph`'s tests: `i` depends only on smaller indices.
fn dag() -> impl Strategy<Value = Vec<(String, Vec<String>)>> {
    (1_usize..9).prop_flat_map(|n| {
        proptest::collection::vec(proptest::bool::weighted(0.35), n * n).prop_map(move |edges| {
            (0..n)
                .map(|i| {
                    let deps = (0..i)
                        .filter(|j| edges[i * n + j])
                        .map(|j| format!("s{j}"))
                        .collect();
                    (format!("s{i}"), deps)
                })
                .collect()
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever fails, no service deploys, probes or promotes a new version while one of
    /// its dependencies is not healthy at that moment.
    #[test]
    fn never_rolls_out_past_an_unhealthy_dependency(
        services in dag(),
        failing in proptest::collection::btree_set(0_usize..9, 0..3),
    ) {
        let graph = DependencyGraph::new(services.clone()).unwrap();
        let mut world = upgraded(&graph);
        let cluster = Cluster {
            never_ready: failing.iter().map(|i| format!("s{i}")).collect(),
        };
        let mut now = 0;
        for _ in 0..200 {
            let decisions = plan(&graph, &world, now);
            for (name, d) in &decisions {
                if matches!(d.step, Step::DeployPreview | Step::Promote | Step::AwaitPreview | Step::DeployFirst) {
                    for dep in graph.dependencies(name) {
                        prop_assert!(world[dep].healthy(now), "{} moved while {} was not healthy", name, dep);
                    }
                }
            }
            for (name, d) in &decisions {
                apply(world.get_mut(name).unwrap(), d, now);
            }
            cluster.settle(&mut world);
            now += 10;
        }
        // Everything not downstream of a failure went live.
        let blocked: BTreeSet<String> = cluster.never_ready.iter()
            .filter(|s| world.contains_key(*s))
            .flat_map(|s| {
                let mut all = graph.transitive_dependents(s);
                all.insert(s.clone());
                all
            })
            .collect();
        for (name, o) in &world {
            prop_assert_eq!(
                o.active.as_ref().unwrap().version == "2.0.0",
                !blocked.contains(name),
                "{}", name
            );
        }
    }

    /// Whatever users and failures do (new versions, some with marked migrations;
    /// reverted specs; rollbacks with or without cascade and force; failed windows;
    /// forced promotions), no service is ever live on a release older than an applied
    /// incompatible migration unless a forced request put it there, and then the barrier
    /// records which release it let through.
    #[test]
    fn no_release_older_than_an_applied_incompatible_migration_goes_live_unforced(
        services in dag(),
        marked in proptest::collection::btree_set(2_i64..7, 0..3),
        events in proptest::collection::vec((0_usize..9, 0_u8..6, any::<bool>(), any::<bool>()), 1..30),
    ) {
        let graph = DependencyGraph::new(services.clone()).unwrap();
        let marked: Vec<i64> = marked.into_iter().collect();
        let known = schemas(6, &marked);
        let mut world: BTreeMap<String, Observed> = graph
            .services()
            .map(|s| {
                let mut o = svc("1.0.0");
                o.schemas = known.clone();
                (s.to_owned(), o)
            })
            .collect();
        let k = |v: &str| v.split('.').next().unwrap().parse::<i64>().unwrap();
        let mut now = 0;
        for (target, kind, cascade, force) in events {
            let o = world.get_mut(&format!("s{}", target % services.len())).unwrap();
            let spec = k(&o.spec_version);
            match kind {
                0 | 1 => o.spec_version = format!("{}.0.0", (spec + 1).min(6)),
                2 => o.spec_version = format!("{}.0.0", (spec - 1).max(1)),
                3 => o.request = Some(Request::Rollback { cascade, force }),
                4 => o.window.restarts += 1,
                _ => o.request = Some(Request::Promote { force }),
            }
            for _ in 0..8 {
                let decisions = plan(&graph, &world, now);
                for (name, d) in &decisions {
                    let o = world.get_mut(name).unwrap();
                    let request = o.request;
                    apply(o, d, now);
                    // The edge clears a handled annotation; a held rollback stays in the
                    // status (which `apply` keeps as the request).
                    if let Some(r) = request
                        && o.request == Some(r)
                        && d.step != Step::BlockedBySchema
                        && r.handled_after(d.step)
                    {
                        o.request = None;
                    }
                }
                Cluster::default().settle(&mut world);
                now += 10;
                for (name, o) in &world {
                    let (Some(b), Some(live)) = (&o.barrier, &o.active) else { continue };
                    if o.schemas[&live.version].version < b.migration.version {
                        prop_assert_eq!(
                            b.overridden_by.as_deref(),
                            Some(live.version.as_str()),
                            "{} runs {} against migration {} unforced", name, live.version, b.migration.version
                        );
                    }
                }
            }
        }
    }

    /// A cascade rollback of a random root after random promotion times: exactly the root
    /// and the dependents promoted after it roll back, in reverse deploy waves.
    #[test]
    fn cascade_rolls_back_exactly_the_later_dependents_in_reverse_order(
        services in dag(),
        root in 0_usize..9,
        promoted_at in proptest::collection::vec(1_i64..1000, 9),
        first_deployed in proptest::collection::vec(any::<bool>(), 9),
    ) {
        let graph = DependencyGraph::new(services.clone()).unwrap();
        let root = format!("s{}", root % services.len());
        let mut world: BTreeMap<String, Observed> = services.iter().enumerate().map(|(i, (s, _))| {
            let mut o = svc("2.0.0");
            let since = promoted_at[i];
            o.active = Some(Live { color: Color::Green, version: "2.0.0".into(), since });
            // Some were deployed for the first time: nothing to roll back to.
            o.previous = (*s == root || !first_deployed[i])
                .then(|| Live { color: Color::Blue, version: "1.0.0".into(), since: 0 });
            o.previous_up = i % 2 == 0;
            (s.clone(), o)
        }).collect();
        let root_since = world[&root].active.as_ref().unwrap().since;
        let expected: BTreeSet<String> = graph.transitive_dependents(&root).into_iter()
            .filter(|d| world[d].active.as_ref().unwrap().since > root_since)
            .filter(|d| world[d].previous.is_some())
            .chain([root.clone()])
            .collect();
        world.get_mut(&root).unwrap().request = rollback(true, false);
        let (log, _) = run(&graph, &mut world, &Cluster::default(), 5000, |_, _| {});
        let rolled = times_of(&log, Step::Rollback);
        prop_assert_eq!(rolled.keys().cloned().collect::<BTreeSet<_>>(), expected);
        let waves = graph.deploy_waves();
        let wave_of = |s: &str| waves.iter().position(|w| w.iter().any(|x| x == s)).unwrap();
        for (a, ta) in &rolled {
            for (b, tb) in &rolled {
                if wave_of(a) > wave_of(b) {
                    prop_assert!(ta < tb, "{} (wave {}) rolled back after {}", a, wave_of(a), b);
                }
            }
            prop_assert!(graph.transitive_dependents(a).iter().all(|d| !rolled.contains_key(d) || rolled[d] < *ta));
        }
    }
}
