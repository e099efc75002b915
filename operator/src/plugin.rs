//! The pure half of the `kubectl-finflow` plugin: choosing the kubeconfig, context and
//! namespace as kubectl does, rendering the dependency tree and the history, translating
//! commands into the apply patch that carries the request, deciding whether everything
//! is healthy, parsing `--timeout`. The binary (`src/bin/kubectl-finflow.rs`) only reads
//! files and talks to the cluster through kube's client.
//!
//! Requests are annotations on the FinService ([`crate::rollout`]): the operator acts on
//! them at its next reconcile and clears them, so the plugin never needs more than
//! `patch` on `finservices`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::ResourceExt;
use kube::config::Kubeconfig;
use serde_json::{Value, json};

use crate::conditions;
use crate::crd::{AnalysisStage, AnalysisStatus, AnalysisVerdict, FinService, Phase};
use crate::rollout::Request;

/// Field manager of the plugin's applies: a user's request is the user's field, not the
/// operator's, so `managedFields` tell who asked.
pub const FIELD_MANAGER: &str = "kubectl-finflow";

/// Where the cluster settings come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeconfigSource {
    /// Kubeconfig files, merged in this order (the first to set a value wins).
    Files(Vec<PathBuf>),
    /// No kubeconfig anywhere: the service account of the pod the plugin runs in.
    InCluster,
}

/// The kubeconfig as kubectl finds it: `--kubeconfig`, else the files `KUBECONFIG`
/// lists (those that exist), else `~/.kube/config` if it exists, else in-cluster.
/// `exists` is the filesystem's answer, passed in so the choice stays testable.
pub fn kubeconfig_source(
    flag: Option<&Path>,
    env: Option<&OsStr>,
    home: Option<&Path>,
    exists: impl Fn(&Path) -> bool,
) -> KubeconfigSource {
    if let Some(path) = flag.filter(|p| !p.as_os_str().is_empty()) {
        return KubeconfigSource::Files(vec![path.to_owned()]);
    }
    if let Some(list) = env.filter(|v| !v.is_empty()) {
        return KubeconfigSource::Files(
            std::env::split_paths(list)
                .filter(|p| !p.as_os_str().is_empty() && exists(p))
                .collect(),
        );
    }
    match home.map(|h| h.join(".kube").join("config")) {
        Some(path) if exists(&path) => KubeconfigSource::Files(vec![path]),
        _ => KubeconfigSource::InCluster,
    }
}

/// The context and namespace the plugin works in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub context: String,
    pub namespace: String,
}

/// As kubectl picks them: the context from `--context`, else the kubeconfig's
/// current-context; the namespace from `-n/--namespace`, else the context's, else
/// `default`. An empty flag counts as unset, as it does for kubectl.
pub fn target(
    config: &Kubeconfig,
    context: Option<&str>,
    namespace: Option<&str>,
) -> Result<Target, String> {
    let given = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(str::to_owned);
    let name = given(context)
        .or_else(|| given(config.current_context.as_deref()))
        .ok_or("the kubeconfig sets no current-context; pass --context")?;
    let found = config
        .contexts
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| format!("context {name:?} is not in the kubeconfig"))?;
    let namespace = given(namespace)
        .or_else(|| given(found.context.as_ref()?.namespace.as_deref()))
        .unwrap_or_else(|| "default".to_owned());
    Ok(Target {
        context: name,
        namespace,
    })
}

/// The server-side apply body for `request` on FinService `name`: only the one
/// annotation ([`Request::annotation`]), so the apply owns nothing else.
pub fn request_patch(name: &str, request: Request) -> Value {
    let (key, value) = request.annotation();
    json!({
        "apiVersion": "finflow.dev/v1alpha1",
        "kind": "FinService",
        "metadata": { "name": name, "annotations": { key: value } },
    })
}

fn line(fs: &FinService) -> String {
    let status = fs.status.clone().unwrap_or_default();
    let mut out = format!("{} {}", fs.name_any(), fs.spec.version);
    match (&status.active_version, status.active_color) {
        (Some(v), Some(c)) => {
            let _ = write!(out, " [live {v} {}]", c.as_str());
        }
        _ => out.push_str(" [not live]"),
    }
    if let Some(p) = &status.preview_version {
        let _ = write!(out, " [preview {p}]");
    }
    if let Some(f) = &status.failed_version {
        let _ = write!(out, " [failed {f}]");
    }
    if let Some(a) = &status.analysis {
        let _ = write!(out, " [{}]", render_analysis(a));
    }
    if let Some(b) = &status.schema_barrier {
        let _ = write!(
            out,
            " [schema barrier {} from {}",
            b.migration.version, b.release
        );
        if let Some(o) = &b.overridden_by {
            let _ = write!(out, ", overridden by {o}");
        }
        out.push(']');
    }
    // A status older than the spec says nothing about the spec yet.
    let phase = if current(fs) {
        status.phase.map_or("Unknown", Phase::as_str)
    } else {
        "Reconciling"
    };
    let _ = write!(out, " {phase}");
    if let Some(step) = status.step.as_deref().filter(|s| *s != "Steady") {
        let _ = write!(out, " ({step})");
    }
    out
}

/// The last traffic analysis in a few figures: `analysis 2.0.0 preview Failed: 200 req,
/// 20% 5xx, p99 4 ms, 0 jwt`.
pub fn render_analysis(a: &AnalysisStatus) -> String {
    let stage = match a.stage {
        AnalysisStage::Preview => "preview",
        AnalysisStage::Observation => "window",
    };
    let verdict = match a.verdict {
        AnalysisVerdict::Passed => "Passed",
        AnalysisVerdict::Failed => "Failed",
        AnalysisVerdict::Inconclusive => "Inconclusive",
        AnalysisVerdict::Unavailable => "Unavailable",
    };
    let mut out = format!("analysis {} {stage} {verdict}", a.version);
    if a.verdict != AnalysisVerdict::Unavailable {
        // The share judged: of the requests sent to the app.
        let share = a.app_server_errors.saturating_mul(100) / a.forwarded.max(1);
        let _ = write!(out, ": {} req, {share}% 5xx", a.requests);
        if let Some(p99) = a.p99_latency_milliseconds {
            let _ = write!(out, ", p99 {p99} ms");
        }
        let _ = write!(out, ", {} jwt", a.jwt_rejections);
    }
    out
}

/// The services as a tree: roots are services without dependencies, children are direct
/// dependents. A service with several dependencies appears under each; below its first
/// appearance it is marked `(see above)` instead of repeating its subtree.
pub fn render_tree(services: &[FinService]) -> String {
    let by_name: BTreeMap<String, &FinService> =
        services.iter().map(|fs| (fs.name_any(), fs)).collect();
    let mut dependents: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for fs in services {
        for dep in &fs.spec.depends_on {
            if let Some((name, _)) = by_name.get_key_value(dep) {
                dependents
                    .entry(name.as_str())
                    .or_default()
                    .insert(by_name.get_key_value(&fs.name_any()).map_or("", |(k, _)| k));
            }
        }
    }
    let mut out = String::new();
    let mut shown = BTreeSet::new();
    let roots = by_name.iter().filter(|(_, fs)| {
        !fs.spec
            .depends_on
            .iter()
            .any(|d| by_name.contains_key(d.as_str()))
    });
    for (name, _) in roots {
        walk(name, "", "", &by_name, &dependents, &mut shown, &mut out);
    }
    // Services in a cycle (refused by the operator) have no root; show them anyway.
    for (name, fs) in &by_name {
        if !shown.contains(name.as_str()) {
            let _ = writeln!(out, "{} (unreachable: dependency cycle)", line(fs));
        }
    }
    out
}

fn walk<'a>(
    name: &'a str,
    first: &str,
    rest: &str,
    by_name: &BTreeMap<String, &FinService>,
    dependents: &BTreeMap<&'a str, BTreeSet<&'a str>>,
    shown: &mut BTreeSet<&'a str>,
    out: &mut String,
) {
    let Some(fs) = by_name.get(name) else { return };
    if !shown.insert(name) {
        let _ = writeln!(out, "{first}{name} (see above)");
        return;
    }
    let _ = writeln!(out, "{first}{}", line(fs));
    let children: Vec<&str> = dependents
        .get(name)
        .into_iter()
        .flatten()
        .copied()
        .collect();
    for (i, child) in children.iter().enumerate() {
        let last = i + 1 == children.len();
        let (branch, next) = if last {
            ("└── ", "    ")
        } else {
            ("├── ", "│   ")
        };
        walk(
            child,
            &format!("{rest}{branch}"),
            &format!("{rest}{next}"),
            by_name,
            dependents,
            shown,
            out,
        );
    }
}

/// `status.history`, newest first.
pub fn render_history(fs: &FinService) -> String {
    let mut out = String::from("REVISION  VERSION  COLOR  SCHEMA          DEPLOYED\n");
    let history = fs
        .status
        .as_ref()
        .map(|s| s.history.clone())
        .unwrap_or_default();
    for r in history.iter().rev() {
        let schema = r
            .schema_version
            .map_or_else(|| "-".to_owned(), |v| v.to_string());
        let _ = writeln!(
            out,
            "{:<9} {:<8} {:<6} {:<15} {}",
            r.revision,
            r.version,
            r.color.as_str(),
            schema,
            r.deployed_at.0
        );
    }
    out
}

/// Whether the status describes the FinService's latest spec: its `observedGeneration`,
/// and its Ready condition's, reached `metadata.generation`. Until then the operator
/// has not reconciled the change, whatever the status says.
pub fn current(fs: &FinService) -> bool {
    let Some(s) = &fs.status else { return false };
    let generation = fs.metadata.generation;
    let reached =
        |observed: Option<i64>| generation.is_none_or(|g| observed.is_some_and(|o| o >= g));
    reached(s.observed_generation)
        && conditions::find(&s.conditions, conditions::Type::Ready)
            .is_none_or(|c| c.observed_generation.is_none() || reached(c.observed_generation))
}

/// The names of the services that are not healthy, for the message: healthy is a
/// current status ([`current`]), phase Ready at the spec's version with nothing in
/// preview, the Ready condition true and neither Reconciling nor Stalled.
pub fn unhealthy(services: &[FinService]) -> Vec<String> {
    use conditions::Type::{Ready, Reconciling, Stalled};
    services
        .iter()
        .filter(|fs| {
            let Some(s) = &fs.status else { return true };
            !(current(fs)
                && s.phase == Some(Phase::Ready)
                && s.active_version.as_deref() == Some(fs.spec.version.as_str())
                && s.preview_version.is_none()
                && conditions::is_true(&s.conditions, Ready)
                && !conditions::is_true(&s.conditions, Reconciling)
                && !conditions::is_true(&s.conditions, Stalled))
        })
        .map(ResourceExt::name_any)
        .collect()
}

/// `--timeout`: `90`, `90s`, `5m` or `1h`.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let (digits, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |i| text.split_at(i));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid timeout {text:?}: expected e.g. 90s, 5m, 1h"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("invalid timeout unit in {text:?}: use s, m or h")),
    };
    Ok(Duration::from_secs(n.saturating_mul(factor)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Color, FinServiceSpec, FinServiceStatus, Revision};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn fs(name: &str, deps: &[&str], live: Option<&str>, phase: Phase) -> FinService {
        let mut spec: FinServiceSpec = serde_json::from_value(json!({
            "image": "ghcr.io/finflow/x",
            "version": "2.0.0",
            "sidecar": {"enabled": false},
        }))
        .unwrap();
        spec.depends_on = deps.iter().map(|d| (*d).to_owned()).collect();
        let mut f = FinService::new(name, spec);
        f.status = Some(FinServiceStatus {
            phase: Some(phase),
            active_color: live.map(|_| Color::Green),
            active_version: live.map(str::to_owned),
            ..FinServiceStatus::default()
        });
        f
    }

    #[test]
    fn the_tree_nests_dependents_under_their_dependencies() {
        let services = [
            fs("auth", &[], Some("2.0.0"), Phase::Ready),
            fs("wallet", &["auth"], Some("2.0.0"), Phase::Ready),
            fs("payment", &["wallet"], Some("1.0.0"), Phase::Progressing),
            fs("kyc", &["auth", "payment"], None, Phase::Waiting),
        ];
        assert_eq!(
            render_tree(&services),
            "auth 2.0.0 [live 2.0.0 green] Ready\n\
             ├── kyc 2.0.0 [not live] Waiting\n\
             └── wallet 2.0.0 [live 2.0.0 green] Ready\n\
             \u{20}   └── payment 2.0.0 [live 1.0.0 green] Progressing\n\
             \u{20}       └── kyc (see above)\n"
        );
    }

    #[test]
    fn status_shows_the_last_traffic_analysis() {
        let mut f = fs("b", &[], Some("1.0.0"), Phase::Degraded);
        let s = f.status.as_mut().unwrap();
        s.failed_version = Some("2.0.0".into());
        s.analysis = Some(AnalysisStatus {
            version: "2.0.0".into(),
            stage: AnalysisStage::Preview,
            verdict: AnalysisVerdict::Failed,
            pods: 2,
            requests: 200,
            forwarded: 200,
            app_server_errors: 40,
            proxy_server_errors: 0,
            jwt_rejections: 0,
            p99_latency_milliseconds: Some(4),
            message: "40 of 200 requests answered 5xx by the app (20% > 5%)".into(),
            analyzed_at: Time(k8s_openapi::jiff::Timestamp::from_second(0).unwrap()),
        });
        assert_eq!(
            render_tree(&[f]),
            "b 2.0.0 [live 1.0.0 green] [failed 2.0.0] \
             [analysis 2.0.0 preview Failed: 200 req, 20% 5xx, p99 4 ms, 0 jwt] Degraded\n"
        );
    }

    #[test]
    fn status_shows_the_schema_barrier_and_the_release_forced_past_it() {
        use crate::crd::{MigrationRef, SchemaBarrier};
        let mut f = fs("d", &[], Some("1.0.0"), Phase::Degraded);
        let s = f.status.as_mut().unwrap();
        s.step = Some("BlockedBySchema".into());
        s.schema_barrier = Some(SchemaBarrier {
            migration: MigrationRef {
                version: 20,
                description: "drop legacy name".into(),
            },
            release: "2.0.0".into(),
            overridden_by: None,
        });
        assert_eq!(
            render_tree(std::slice::from_ref(&f)),
            "d 2.0.0 [live 1.0.0 green] [schema barrier 20 from 2.0.0] Degraded (BlockedBySchema)\n"
        );
        let s = f.status.as_mut().unwrap();
        s.step = None;
        s.schema_barrier.as_mut().unwrap().overridden_by = Some("1.0.0".into());
        assert_eq!(
            render_tree(&[f]),
            "d 2.0.0 [live 1.0.0 green] [schema barrier 20 from 2.0.0, overridden by 1.0.0] Degraded\n"
        );
    }

    #[test]
    fn commands_become_single_annotation_applies() {
        let rollback = |cascade, force| Request::Rollback { cascade, force };
        assert_eq!(
            request_patch("b", rollback(true, false)),
            json!({
                "apiVersion": "finflow.dev/v1alpha1",
                "kind": "FinService",
                "metadata": { "name": "b", "annotations": { "finflow.dev/rollback": "cascade" } },
            })
        );
        let annotations = |request| request_patch("b", request)["metadata"]["annotations"].clone();
        assert_eq!(
            annotations(rollback(false, false)),
            json!({ "finflow.dev/rollback": "single" })
        );
        assert_eq!(
            annotations(rollback(true, true)),
            json!({ "finflow.dev/rollback": "cascade,force" })
        );
        assert_eq!(
            annotations(rollback(false, true)),
            json!({ "finflow.dev/rollback": "single,force" })
        );
        assert_eq!(
            annotations(Request::Promote { force: false }),
            json!({ "finflow.dev/promote": "true" })
        );
        assert_eq!(
            annotations(Request::Promote { force: true }),
            json!({ "finflow.dev/promote": "force" })
        );
        assert_eq!(
            annotations(Request::Abort),
            json!({ "finflow.dev/abort": "true" })
        );
    }

    #[test]
    fn the_patches_are_read_back_as_the_engine_requests() {
        use crate::rollout::request_from_annotations;
        let mut every = vec![Request::Abort];
        for force in [false, true] {
            every.push(Request::Promote { force });
            for cascade in [false, true] {
                every.push(Request::Rollback { cascade, force });
            }
        }
        for request in every {
            let annotations: BTreeMap<String, String> = serde_json::from_value(
                request_patch("x", request)["metadata"]["annotations"].clone(),
            )
            .unwrap();
            assert_eq!(request_from_annotations(&annotations), Some(request));
        }
    }

    #[test]
    fn healthy_means_ready_live_at_spec_and_no_preview() {
        let mut ready = fs("a", &[], Some("2.0.0"), Phase::Ready);
        assert_eq!(
            unhealthy(std::slice::from_ref(&ready)),
            ["a"],
            "no Ready condition"
        );
        ready.status.as_mut().unwrap().conditions = vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "ReplicasReady".into(),
            message: String::new(),
            last_transition_time: Time(Default::default()),
            observed_generation: None,
        }];
        let old = fs("b", &[], Some("1.0.0"), Phase::Ready);
        assert_eq!(unhealthy(&[ready, old]), ["b"]);
    }

    fn condition(type_: &str, status: &str, generation: Option<i64>) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "R".into(),
            message: String::new(),
            last_transition_time: Time(Default::default()),
            observed_generation: generation,
        }
    }

    /// Ready at generation 1, as the operator reports a settled service.
    fn settled(name: &str) -> FinService {
        let mut f = fs(name, &[], Some("2.0.0"), Phase::Ready);
        f.metadata.generation = Some(1);
        let s = f.status.as_mut().unwrap();
        s.observed_generation = Some(1);
        s.conditions = vec![
            condition("Ready", "True", Some(1)),
            condition("Reconciling", "False", Some(1)),
            condition("Stalled", "False", Some(1)),
        ];
        f
    }

    #[test]
    fn a_status_older_than_the_spec_is_reconciling_not_ready() {
        let mut edited = settled("a");
        assert!(current(&edited));
        assert!(unhealthy(std::slice::from_ref(&edited)).is_empty());
        edited.metadata.generation = Some(2);
        assert!(!current(&edited));
        assert_eq!(unhealthy(std::slice::from_ref(&edited)), ["a"]);
        assert_eq!(
            render_tree(&[edited]),
            "a 2.0.0 [live 2.0.0 green] Reconciling\n"
        );
    }

    #[test]
    fn a_ready_condition_from_an_older_generation_is_not_current() {
        let mut f = settled("a");
        f.metadata.generation = Some(2);
        f.status.as_mut().unwrap().observed_generation = Some(2);
        assert!(!current(&f), "Ready still speaks of generation 1");
    }

    #[test]
    fn a_stalled_or_reconciling_service_is_not_healthy() {
        for type_ in ["Stalled", "Reconciling"] {
            let mut f = settled("a");
            let s = f.status.as_mut().unwrap();
            s.conditions.retain(|c| c.type_ != type_);
            s.conditions.push(condition(type_, "True", Some(1)));
            assert_eq!(unhealthy(&[f]), ["a"], "{type_}");
        }
    }

    #[test]
    fn history_is_newest_first() {
        let mut f = fs("a", &[], Some("2.0.0"), Phase::Ready);
        f.status.as_mut().unwrap().history = ["1.0.0", "2.0.0"]
            .iter()
            .zip(1..)
            .map(|(v, r)| Revision {
                revision: r,
                version: (*v).to_owned(),
                color: Color::Blue,
                deployed_at: Time(Default::default()),
                schema_version: (r == 2).then_some(20_270_101_000_002),
            })
            .collect();
        let text = render_history(&f);
        let rows: Vec<&str> = text.lines().collect();
        assert!(rows[1].starts_with("2         2.0.0    blue   20270101000002"));
        assert!(rows[2].starts_with("1         1.0.0    blue   -"));
    }

    fn kubeconfig() -> Kubeconfig {
        Kubeconfig::from_yaml(
            "apiVersion: v1
kind: Config
current-context: dev
clusters:
- {name: c, cluster: {server: 'https://example.test'}}
users:
- {name: u, user: {token: t}}
contexts:
- {name: dev, context: {cluster: c, user: u, namespace: finflow}}
- {name: prod, context: {cluster: c, user: u}}
",
        )
        .unwrap()
    }

    #[test]
    fn the_kubeconfig_is_the_flag_else_kubeconfig_else_the_one_at_home() {
        let home = Some(Path::new("/home/me"));
        let anything = |_: &Path| true;
        let files =
            |paths: &[&str]| KubeconfigSource::Files(paths.iter().map(PathBuf::from).collect());
        let env = std::env::join_paths(["/a", "/b"]).unwrap();
        assert_eq!(
            kubeconfig_source(Some(Path::new("/f")), Some(&env), home, anything),
            files(&["/f"])
        );
        assert_eq!(
            kubeconfig_source(None, Some(&env), home, anything),
            files(&["/a", "/b"])
        );
        assert_eq!(
            kubeconfig_source(None, Some(&env), home, |p: &Path| p != Path::new("/a")),
            files(&["/b"]),
            "a listed file that does not exist is skipped"
        );
        assert_eq!(
            kubeconfig_source(None, Some(OsStr::new("")), home, anything),
            files(&["/home/me/.kube/config"]),
            "an empty KUBECONFIG is unset"
        );
        assert_eq!(
            kubeconfig_source(None, None, home, anything),
            files(&["/home/me/.kube/config"])
        );
    }

    #[test]
    fn without_any_kubeconfig_the_plugin_uses_its_pods_service_account() {
        assert_eq!(
            kubeconfig_source(None, None, Some(Path::new("/home/me")), |_| false),
            KubeconfigSource::InCluster
        );
        assert_eq!(
            kubeconfig_source(None, None, None, |_| true),
            KubeconfigSource::InCluster
        );
    }

    #[test]
    fn the_context_is_the_flag_else_the_current_context() {
        let config = kubeconfig();
        assert_eq!(target(&config, None, None).unwrap().context, "dev");
        assert_eq!(target(&config, Some(""), None).unwrap().context, "dev");
        assert_eq!(target(&config, Some("prod"), None).unwrap().context, "prod");
        assert_eq!(
            target(&config, Some("staging"), None),
            Err("context \"staging\" is not in the kubeconfig".to_owned())
        );
        let mut without = config;
        without.current_context = None;
        assert!(target(&without, None, None).is_err());
    }

    #[test]
    fn the_namespace_is_the_flag_else_the_contexts_else_default() {
        let config = kubeconfig();
        let namespace = |context, flag| target(&config, context, flag).unwrap().namespace;
        assert_eq!(namespace(None, Some("payments")), "payments");
        assert_eq!(namespace(None, None), "finflow");
        assert_eq!(namespace(Some("prod"), None), "default");
        assert_eq!(namespace(Some("prod"), Some("")), "default");
    }

    #[test]
    fn timeouts_parse() {
        assert_eq!(parse_timeout("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_timeout("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_timeout("5d").is_err());
        assert!(parse_timeout("m").is_err());
    }
}
