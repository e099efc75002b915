//! FinService decisions: the objects a FinService should own, whether it must wait
//! for its dependencies, and the status that follows from what was observed.
//!
//! Everything here is a pure function of the resources; the controller
//! (`controller::finservice`) reads the cluster, calls these, and writes the result.
//!
//! Blue-green: the status holds the rollout state (the active color and its
//! version, the preview or the previous version in the idle color, a failed version),
//! [`color_plans`] turns it into the version and replica count of each color, and
//! [`advance`] moves it by one step of [`crate::rollout`]. `<name>` selects the active
//! color and `<name>-preview` the idle one.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, SeccompProfile, SecretKeySelector, SecretVolumeSource, Service, ServiceAccount,
    ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::analysis::{self, Judgement, P99, Verdict};
use crate::conditions::{self, Desired, Failure, Reason, Type};
use crate::crd::{AnalysisStage, AnalysisStatus, AnalysisVerdict};
use crate::crd::{Color, FinService, FinServiceStatus, MessageQueue, Phase, RedisCache, Revision};
use crate::crd::{ReleaseSchema, RollbackState};
use crate::inject::{self, SidecarSettings};
use crate::meta::{self, labels, owned_meta, with_spec_hash};
use crate::{listmap, messagequeue, rediscache, rollout};

/// Label on pods and Deployments telling blue from green.
pub const COLOR_LABEL: &str = "finflow.dev/color";
/// Label on pods carrying the version they run.
pub const VERSION_LABEL: &str = "finflow.dev/version";
/// Pod annotation with the hash of the sidecar configuration, so a change rolls the pods.
pub const SIDECAR_CONFIG_HASH: &str = "finflow.dev/sidecar-config-hash";
/// How many revisions `status.history` keeps.
pub const HISTORY_LIMIT: usize = 10;
const COMPONENT: &str = "finservice";

/// Operator-wide settings the desired objects depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Sidecar image when a FinService does not name one.
    pub sidecar_image: String,
    /// Whether the cluster runs native sidecars (Kubernetes 1.29 and later).
    pub native_sidecars: bool,
}

pub fn deployment_name(name: &str, color: Color) -> String {
    format!("{name}-{}", color.as_str())
}

pub fn preview_service_name(name: &str) -> String {
    format!("{name}-preview")
}

pub fn config_map_name(name: &str) -> String {
    format!("{name}-sidecar")
}

/// The color `<name>` sends traffic to: the recorded one, blue for a new service.
pub fn active_color(fs: &FinService) -> Color {
    fs.status
        .as_ref()
        .and_then(|s| s.active_color)
        .unwrap_or(Color::Blue)
}

/// Everything a FinService owns, each with its spec hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Owned {
    pub service_account: ServiceAccount,
    pub config_map: ConfigMap,
    /// Blue, then green.
    pub deployments: [Deployment; 2],
    /// `<name>` (active color), then `<name>-preview` (the other).
    pub services: [Service; 2],
}

/// The sidecar's `sidecar.json` for `fs`.
fn sidecar_config_json(fs: &FinService) -> String {
    let s = &fs.spec.sidecar;
    let config = finflow_contracts::sidecar::SidecarFile {
        issuer: s.jwt_issuer.clone(),
        audiences: s.audiences.clone(),
        jwks_uri: s.jwks_uri.clone(),
        hs256: s.hs256_secret_ref.is_some(),
        public_paths: s.public_paths.clone(),
        claim_headers: s.claim_headers.clone(),
        trusted_proxies: s.trusted_proxies.clone(),
    };
    serde_json::to_string_pretty(&config).unwrap_or_default()
}

/// The desired objects. `cache_password` says whether the referenced RedisCache
/// requires a password (its URL then comes from its Secret).
pub fn desired(fs: &FinService, settings: &Settings, cache_password: bool) -> Owned {
    desired_with_epoch(fs, settings, cache_password, None)
}

/// The token issuer's epoch among `services`: the live version and color of the
/// FinService of module A, once it has one.
pub fn issuer_epoch<'a>(services: impl IntoIterator<Item = &'a FinService>) -> Option<String> {
    services
        .into_iter()
        .filter(|f| f.spec.module == Some(crate::crd::Module::A))
        .find_map(|f| {
            let s = f.status.as_ref()?;
            Some(format!(
                "{}/{}",
                s.active_version.as_deref()?,
                s.active_color?.as_str()
            ))
        })
}

/// [`desired`], with the issuer's `epoch` in the sidecar ConfigMap
/// ([`inject::EPOCH_FILE`]). It is not part of the pod template: a new epoch reaches
/// running sidecars through the mounted file, without restarting any pod.
pub fn desired_with_epoch(
    fs: &FinService,
    settings: &Settings,
    cache_password: bool,
    epoch: Option<&str>,
) -> Owned {
    let name = fs.name_any();
    let active = active_color(fs);
    let config_json = sidecar_config_json(fs);

    let service_account = with_spec_hash(ServiceAccount {
        metadata: owned_meta(fs, &name, labels(&name, COMPONENT)),
        // The apps do not call the Kubernetes API.
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    });
    let config_map = with_spec_hash(ConfigMap {
        metadata: owned_meta(fs, config_map_name(&name), labels(&name, COMPONENT)),
        data: Some(
            [(inject::CONFIG_FILE.to_owned(), config_json.clone())]
                .into_iter()
                .chain(epoch.map(|e| (inject::EPOCH_FILE.to_owned(), e.to_owned())))
                .collect(),
        ),
        ..ConfigMap::default()
    });
    let plans = color_plans(fs);
    let deployment = |color: Color| {
        let plan = if color == active {
            &plans[0]
        } else {
            &plans[1]
        };
        with_spec_hash(deployment_for(
            fs,
            settings,
            cache_password,
            color,
            plan,
            &config_json,
        ))
    };
    let service = |service_name: String, color: Color| {
        with_spec_hash(Service {
            metadata: owned_meta(fs, service_name, labels(&name, COMPONENT)),
            spec: Some(ServiceSpec {
                selector: Some(selector(&name, color)),
                ports: Some(vec![ServicePort {
                    name: Some(inject::HTTP_PORT.to_owned()),
                    port: fs.spec.port,
                    target_port: Some(IntOrString::String(inject::HTTP_PORT.to_owned())),
                    protocol: Some("TCP".to_owned()),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        })
    };
    Owned {
        service_account,
        config_map,
        deployments: [deployment(Color::Blue), deployment(Color::Green)],
        services: [
            service(name.clone(), active),
            service(preview_service_name(&name), active.other()),
        ],
    }
}

fn selector(name: &str, color: Color) -> BTreeMap<String, String> {
    [
        (meta::INSTANCE_LABEL.to_owned(), name.to_owned()),
        (COLOR_LABEL.to_owned(), color.as_str().to_owned()),
    ]
    .into()
}

/// Downward API volume with the pod's rollout role, kept current by the kubelet.
pub const PODINFO_VOLUME: &str = "finflow-podinfo";
/// Where the app finds it: `role` holds `preview` or `active`.
pub const PODINFO_PATH: &str = "/etc/finflow/podinfo";

fn podinfo_volume() -> Volume {
    Volume {
        name: PODINFO_VOLUME.to_owned(),
        downward_api: Some(DownwardAPIVolumeSource {
            items: Some(vec![DownwardAPIVolumeFile {
                path: "role".to_owned(),
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.labels['{}']", rollout::ROLE_LABEL),
                }),
                ..DownwardAPIVolumeFile::default()
            }]),
            ..DownwardAPIVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn value_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        value_from: None,
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

/// What one color runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColorPlan {
    pub version: String,
    pub replicas: i32,
}

/// The active color's plan, then the idle color's, from the rollout state in the
/// status. The active color runs the live version (the spec's, before the first
/// deploy). The idle color runs the preview at full strength during a rollout, else the
/// previous version, at full strength while it is retained for an instant rollback and
/// at zero after the scale-down delay (so a later rollback only has to scale it up).
pub fn color_plans(fs: &FinService) -> [ColorPlan; 2] {
    let status = fs.status.clone().unwrap_or_default();
    let replicas = fs.spec.replicas;
    let live = status
        .active_version
        .clone()
        .unwrap_or_else(|| fs.spec.version.clone());
    let idle = match (&status.preview_version, &status.previous_version) {
        (Some(preview), _) => ColorPlan {
            version: preview.clone(),
            replicas,
        },
        (None, Some(previous)) => ColorPlan {
            version: previous.clone(),
            replicas: if status.previous_retained {
                replicas
            } else {
                0
            },
        },
        (None, None) => ColorPlan {
            version: live.clone(),
            replicas: 0,
        },
    };
    [
        ColorPlan {
            version: live,
            replicas,
        },
        idle,
    ]
}

/// Seconds since the epoch, the rollout engine's clock.
pub fn seconds(time: &Time) -> i64 {
    time.0.as_second()
}

fn time_or_zero(time: Option<&Time>) -> i64 {
    time.map_or(0, seconds)
}

/// What this reconcile saw of the FinService's own workloads; other services are seen
/// through their status only ([`observed`] with `None`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fresh {
    /// The active color runs the live version with every replica available.
    pub active_ready: bool,
    /// The idle color runs the preview with every replica available.
    pub preview_available: bool,
    /// The preview's `/health` through `<name>-preview`, when it was probed.
    pub preview_healthy: Option<bool>,
    /// The traffic analysis of the preview's pods, when it was made.
    pub preview_analysis: rollout::Verdict,
    /// The idle color runs the previous version with every replica available.
    pub previous_up: bool,
    /// The observation window's findings, when the service is in one.
    pub window: Option<rollout::Window>,
    /// Schemas releases reported in this reconcile's `/health` probes, by release.
    pub schemas: BTreeMap<String, rollout::Schema>,
}

/// The rollout engine's view of a FinService: its spec, the rollout state in its status
/// and its request annotation, with `fresh` observations for the service being
/// reconciled. For the others, readiness is their Ready condition, a preview counts as
/// not yet available and the window is what their status recorded.
pub fn observed(fs: &FinService, fresh: Option<&Fresh>) -> rollout::Observed {
    let status = fs.status.clone().unwrap_or_default();
    let color = status.active_color.unwrap_or(Color::Blue);
    let spec = &fs.spec.rollout;
    let recorded_window = status
        .observation
        .as_ref()
        .map(|o| rollout::Window {
            restarts: o.restarts,
            unready: o.unready,
            health_failed: o.health_failed,
            analysis_failed: o.analysis_failed,
        })
        .unwrap_or_default();
    // A rollback kept in the status (under way, or held) stands until it is done, the
    // spec names another release, or a user asks for another rollback or an abort; a
    // promotion request does not cancel it.
    let kept = status
        .rollback
        .as_ref()
        .filter(|r| r.from.as_ref().is_none_or(|f| *f == fs.spec.version))
        .map(|r| rollout::Request::Rollback {
            cascade: r.cascade,
            force: r.force,
        });
    let request = match rollout::request_from_annotations(fs.annotations()) {
        Some(rollout::Request::Promote { .. }) if kept.is_some() => kept,
        asked => asked.or(kept),
    };
    let mut schemas = schemas_of(&status);
    if let Some(f) = fresh {
        schemas.extend(f.schemas.clone());
    }
    rollout::Observed {
        spec_version: fs.spec.version.clone(),
        auto_promote: spec.auto_promote,
        timing: rollout::Timing {
            readiness_timeout: i64::from(spec.readiness_timeout_seconds),
            observation_window: i64::from(spec.observation_window_seconds),
            scale_down_delay: i64::from(spec.scale_down_delay_seconds),
        },
        active: status.active_version.as_ref().map(|v| rollout::Live {
            color,
            version: v.clone(),
            since: time_or_zero(status.active_since.as_ref()),
        }),
        active_ready: match fresh {
            Some(f) => f.active_ready,
            None => conditions::is_true(&status.conditions, Type::Ready),
        },
        previous: status.previous_version.as_ref().map(|v| rollout::Live {
            color: color.other(),
            version: v.clone(),
            since: 0,
        }),
        previous_up: fresh.map_or(status.previous_retained, |f| f.previous_up),
        preview: status.preview_version.as_ref().map(|v| rollout::Preview {
            version: v.clone(),
            since: time_or_zero(status.preview_since.as_ref()),
            available: fresh.is_some_and(|f| f.preview_available),
            healthy: fresh.and_then(|f| f.preview_healthy),
            analysis: fresh.map_or(rollout::Verdict::Unavailable, |f| f.preview_analysis),
        }),
        window: fresh.and_then(|f| f.window).unwrap_or(recorded_window),
        failed_version: status.failed_version.clone(),
        request,
        schemas,
        barrier: status.schema_barrier.clone(),
    }
}

/// The schemas `status` recorded, by release.
fn schemas_of(status: &FinServiceStatus) -> BTreeMap<String, rollout::Schema> {
    status
        .schemas
        .iter()
        .map(|r| {
            let schema = rollout::Schema {
                version: r.schema_version,
                incompatible: r.incompatible_migration.clone(),
            };
            (r.release.clone(), schema)
        })
        .collect()
}

/// How many releases' schemas the status keeps: the history's, the preview's and a
/// spec version's held for its schema.
pub const SCHEMAS_LIMIT: usize = HISTORY_LIMIT + 2;

/// Records what `learned` says of the releases' schemas in `s` (the state after this
/// reconcile's step, [`advance`]) and moves the schema barrier by what is live now; a
/// crossing is recorded as overridden when `forced_step` (a Promote or Rollback carried
/// out for a forced request). Releases no longer live, previewed, previous or in the
/// history are forgotten first, the oldest first.
pub fn record_schemas(
    s: &mut FinServiceStatus,
    spec_version: &str,
    learned: &BTreeMap<String, rollout::Schema>,
    forced_step: bool,
) {
    let mut schemas = schemas_of(s);
    schemas.extend(learned.clone());
    if let Some(live) = s.active_version.as_deref() {
        s.schema_barrier =
            rollout::barrier_after(s.schema_barrier.as_ref(), &schemas, live, forced_step);
    }
    let wanted: Vec<&str> = [
        s.active_version.as_deref(),
        s.preview_version.as_deref(),
        s.previous_version.as_deref(),
        Some(spec_version),
    ]
    .into_iter()
    .flatten()
    .chain(s.history.iter().rev().map(|r| r.version.as_str()))
    .collect();
    let mut kept: Vec<ReleaseSchema> = Vec::new();
    for release in wanted {
        if kept.len() == SCHEMAS_LIMIT || kept.iter().any(|k| k.release == release) {
            continue;
        }
        if let Some(schema) = schemas.get(release) {
            kept.push(ReleaseSchema {
                release: release.to_owned(),
                schema_version: schema.version,
                incompatible_migration: schema.incompatible.clone(),
            });
        }
    }
    kept.sort_by(|a, b| a.release.cmp(&b.release));
    s.schemas = kept;
}

/// What the status keeps of the service's own rollback trigger after `step`: kept while
/// dependents roll back first, the old color scales up, or the schema barrier holds it;
/// kept as it was when no step was decided (a missing queue or cache, a cycle), so a
/// held rollback is not forgotten by a blip elsewhere.
pub fn rollback_after(
    trigger: Option<rollout::Trigger>,
    step: Option<rollout::Step>,
    spec_version: &str,
    kept: Option<RollbackState>,
) -> Option<RollbackState> {
    use rollout::Step;
    match step {
        Some(Step::WaitForDependents | Step::ScaleUpOld | Step::BlockedBySchema) => trigger
            .map(|t| RollbackState {
                cascade: t.cascade,
                force: t.force,
                from: Some(spec_version.to_owned()),
            })
            .or(kept),
        None => kept,
        Some(_) => None,
    }
}

/// The limits of `spec.rollout.analysis`; `None` when analysis is off or no sidecar is
/// injected (there is nothing to read).
pub fn analysis_thresholds(fs: &FinService) -> Option<analysis::Thresholds> {
    let a = &fs.spec.rollout.analysis;
    let percent = |p: i32| u32::try_from(p).unwrap_or(0);
    (fs.spec.sidecar.enabled && a.enabled).then(|| analysis::Thresholds {
        min_requests: u64::try_from(a.min_requests).unwrap_or(1),
        max_app_error_percent: Some(percent(a.max_app_error_percent)),
        max_p99_micros: a
            .max_p99_latency_milliseconds
            .map(|ms| u64::try_from(ms).unwrap_or(1).saturating_mul(1000)),
        max_jwt_rejection_percent: a.max_jwt_rejection_percent.map(percent),
    })
}

/// How long an analysis record stands while its verdict does not change: every status
/// write wakes each FinService of the namespace, so the figures are not rewritten at
/// every reconcile.
pub const ANALYSIS_RECORD_SECONDS: i64 = 30;

/// The record of `judgement` of `version` at `stage`, made at `now`: `previous` itself
/// while it judged the same version at the same stage to the same verdict less than
/// [`ANALYSIS_RECORD_SECONDS`] ago.
pub fn analysis_status(
    previous: Option<&AnalysisStatus>,
    version: &str,
    stage: AnalysisStage,
    judgement: &Judgement,
    now: &Time,
) -> AnalysisStatus {
    let verdict = match judgement.verdict {
        Verdict::Passed => AnalysisVerdict::Passed,
        Verdict::Failed => AnalysisVerdict::Failed,
        Verdict::Inconclusive => AnalysisVerdict::Inconclusive,
        Verdict::Unavailable => AnalysisVerdict::Unavailable,
    };
    if let Some(p) = previous
        && p.version == version
        && p.stage == stage
        && p.verdict == verdict
        && seconds(now) < seconds(&p.analyzed_at).saturating_add(ANALYSIS_RECORD_SECONDS)
    {
        return p.clone();
    }
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let sample = &judgement.sample;
    AnalysisStatus {
        version: version.to_owned(),
        stage,
        verdict,
        pods: i32::try_from(sample.pods).unwrap_or(i32::MAX),
        requests: count(sample.requests),
        forwarded: count(sample.forwarded),
        app_server_errors: count(sample.app_errors),
        proxy_server_errors: count(sample.proxy_errors),
        jwt_rejections: count(sample.jwt_rejections),
        p99_latency_milliseconds: match judgement.p99 {
            Some(P99::Micros(us)) => Some(count(us / 1000)),
            _ => None,
        },
        message: judgement.message.clone(),
        analyzed_at: now.clone(),
    }
}

/// The Event a new analysis record makes: `(warning, reason, note)` when it judged
/// another version or stage than `previous`, or came to another verdict.
pub fn analysis_event(
    previous: Option<&AnalysisStatus>,
    next: &AnalysisStatus,
) -> Option<(bool, Reason, String)> {
    if previous.is_some_and(|p| {
        p.version == next.version && p.stage == next.stage && p.verdict == next.verdict
    }) {
        return None;
    }
    let (warning, reason) = match next.verdict {
        AnalysisVerdict::Passed => (false, Reason::ANALYSIS_PASSED),
        AnalysisVerdict::Failed => (true, Reason::ANALYSIS_FAILED),
        AnalysisVerdict::Inconclusive => (false, Reason::ANALYSIS_INCONCLUSIVE),
        AnalysisVerdict::Unavailable => (false, Reason::ANALYSIS_UNAVAILABLE),
    };
    let stage = match next.stage {
        AnalysisStage::Preview => "preview",
        AnalysisStage::Observation => "observation window",
    };
    Some((
        warning,
        reason,
        format!("{} ({stage}): {}", next.version, next.message),
    ))
}

/// The rollout state after `step` was carried out at `now`; `restarts` are the
/// container restarts of the idle color's pods (the baseline of a promotion's
/// observation window), `window` what this reconcile's observation found.
pub fn advance(
    fs: &FinService,
    step: rollout::Step,
    now: &Time,
    restarts: i32,
    window: Option<rollout::Window>,
) -> FinServiceStatus {
    use rollout::Step;
    let mut s = fs.status.clone().unwrap_or_default();
    let color = s.active_color.unwrap_or(Color::Blue);
    if let (Some(w), Some(o)) = (window, s.observation.as_mut()) {
        o.restarts = w.restarts;
        o.unready = o.unready || w.unready;
        o.health_failed = o.health_failed || w.health_failed;
        o.analysis_failed = o.analysis_failed || w.analysis_failed;
    }
    match step {
        Step::DeployFirst => {
            go_live(&mut s, fs.spec.version.clone(), color, now);
        }
        Step::DeployPreview => {
            s.preview_version = Some(fs.spec.version.clone());
            s.preview_since = Some(now.clone());
            // The idle color now runs the preview; the previous version is still what a
            // rollback returns to, after scaling it back up.
            s.previous_retained = false;
        }
        Step::Promote => {
            if let Some(preview) = s.preview_version.take() {
                s.previous_version = go_live(&mut s, preview, color.other(), now);
                s.preview_since = None;
                s.previous_retained = true;
                s.failed_version = None;
                s.observation = Some(crate::crd::Observation {
                    restarts_at_promotion: restarts,
                    ..Default::default()
                });
            }
        }
        Step::ScaleDownOld => s.previous_retained = false,
        Step::Abort => {
            if let Some(preview) = s.preview_version.take()
                && preview == fs.spec.version
            {
                s.failed_version = Some(preview);
            }
            s.preview_since = None;
        }
        Step::ScaleUpOld => s.previous_retained = true,
        Step::Rollback => {
            if let Some(previous) = s.previous_version.take() {
                s.failed_version = go_live(&mut s, previous, color.other(), now);
                s.previous_retained = false;
                s.observation = None;
                s.rollback = None;
            }
        }
        Step::Steady
        | Step::WaitForDependencies
        | Step::Held
        | Step::AwaitPreview
        | Step::AwaitPromotion
        | Step::Observe
        | Step::WaitForDependents
        | Step::BlockedBySchema => {}
    }
    s
}

/// Makes `version` in `color` what `<name>` serves from `now`; returns the version that
/// was live before.
fn go_live(s: &mut FinServiceStatus, version: String, color: Color, now: &Time) -> Option<String> {
    s.active_color = Some(color);
    s.active_since = Some(now.clone());
    s.active_version.replace(version)
}

/// The image of `version`: `image:version`, unless `image` already names a tag or a
/// digest (a registry port's colon does not count).
pub fn image_ref(image: &str, version: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_owned()
    } else {
        format!("{image}:{version}")
    }
}

fn secret_volume_name(index: usize) -> String {
    format!("finflow-secret-{index}")
}

fn deployment_for(
    fs: &FinService,
    settings: &Settings,
    cache_password: bool,
    color: Color,
    plan: &ColorPlan,
    config_json: &str,
) -> Deployment {
    let name = fs.name_any();
    let spec = &fs.spec;
    let port = spec.port;
    let replicas = plan.replicas;
    let version = &plan.version;

    // The platform kit's configuration contract (LISTEN_ADDR, DATABASE_URL, AMQP_URL,
    // REDIS_URL); the user's own variables come last and replace ours of the same name.
    let mut env = vec![
        value_env("LISTEN_ADDR", format!("0.0.0.0:{port}")),
        value_env("FINFLOW_SERVICE", name.clone()),
        value_env("FINFLOW_VERSION", version.clone()),
        value_env("FINFLOW_COLOR", color.as_str()),
        // `preview` or `active` as the pod started; the live value is the file
        // PODINFO_ROLE_FILE (the operator relabels pods on promotion, and only a
        // downward API volume follows label changes). Only `active` consumes work
        // queues: a new pod is empty until the operator, which watches pods, labels it
        // moments later, and until then it may be a green preview.
        EnvVar {
            name: "FINFLOW_ROLE".to_owned(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.labels['{}']", rollout::ROLE_LABEL),
                }),
                ..EnvVarSource::default()
            }),
        },
        value_env("FINFLOW_ROLE_FILE", format!("{PODINFO_PATH}/role")),
    ];
    if let Some(db) = &spec.database_secret_ref {
        env.push(secret_env("DATABASE_URL", &db.name, &db.key));
    }
    if let Some(queue) = &spec.queue_ref {
        env.push(secret_env(
            "AMQP_URL",
            &messagequeue::credentials_secret_name(queue),
            messagequeue::URL_KEY,
        ));
    }
    if let Some(cache) = &spec.cache_ref {
        env.push(if cache_password {
            secret_env(
                "REDIS_URL",
                &rediscache::password_secret_name(cache),
                rediscache::URL_KEY,
            )
        } else {
            value_env("REDIS_URL", rediscache::url(cache, None))
        });
    }
    let env = listmap::last_wins(env.into_iter().chain(spec.env.iter().cloned()), |e| {
        e.name.clone()
    });

    let http_probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(inject::HTTP_PORT.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    };
    let mounts = std::iter::once(VolumeMount {
        name: PODINFO_VOLUME.to_owned(),
        mount_path: PODINFO_PATH.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    })
    .chain(
        spec.secret_mounts
            .iter()
            .enumerate()
            .map(|(i, m)| VolumeMount {
                name: secret_volume_name(i),
                mount_path: m.mount_path.clone(),
                read_only: Some(true),
                ..VolumeMount::default()
            }),
    );
    let app = Container {
        name: "app".to_owned(),
        image: Some(image_ref(&spec.image, version)),
        ports: Some(vec![ContainerPort {
            name: Some(inject::HTTP_PORT.to_owned()),
            container_port: port,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        env: Some(env),
        resources: spec.resources.clone(),
        // A user's mount at one of our paths takes it.
        volume_mounts: Some(listmap::last_wins(mounts, |m| m.mount_path.clone())),
        // Our images run as uid 65532 and write nothing to their filesystem.
        security_context: Some(inject::restricted()),
        readiness_probe: Some(http_probe("/ready", 5)),
        liveness_probe: Some(Probe {
            initial_delay_seconds: Some(10),
            ..http_probe(&spec.rollout.health_path, 10)
        }),
        ..Container::default()
    };
    let volumes = std::iter::once(podinfo_volume()).chain(
        spec.secret_mounts.iter().enumerate().map(|(i, m)| Volume {
            name: secret_volume_name(i),
            secret: Some(SecretVolumeSource {
                secret_name: Some(m.secret_name.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        }),
    );
    let mut pod = PodSpec {
        containers: vec![app],
        volumes: Some(listmap::last_wins(volumes, |v| v.name.clone())),
        service_account_name: Some(name.clone()),
        automount_service_account_token: Some(false),
        // The images' non-root user (distroless `nonroot`); mounted Secrets are readable
        // by its group.
        security_context: Some(PodSecurityContext {
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            fs_group: Some(65532),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        termination_grace_period_seconds: Some(30),
        ..PodSpec::default()
    };
    if spec.sidecar.enabled {
        pod = inject::inject(
            &pod,
            &SidecarSettings {
                image: spec
                    .sidecar
                    .image
                    .clone()
                    .unwrap_or_else(|| settings.sidecar_image.clone()),
                app_port: spec.sidecar.app_port,
                config_map: Some(config_map_name(&name)),
                hs256_secret: spec.sidecar.hs256_secret_ref.clone(),
                native: settings.native_sidecars,
            },
        );
    }

    let mut pod_labels = labels(&name, COMPONENT);
    pod_labels.extend(selector(&name, color));
    pod_labels.insert(VERSION_LABEL.to_owned(), version.clone());
    let mut deployment_labels = labels(&name, COMPONENT);
    deployment_labels.extend(selector(&name, color));

    Deployment {
        metadata: owned_meta(fs, deployment_name(&name, color), deployment_labels),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector(&name, color)),
                match_expressions: None,
            },
            progress_deadline_seconds: Some(spec.rollout.readiness_timeout_seconds),
            revision_history_limit: Some(3),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: None,
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(
                        [(SIDECAR_CONFIG_HASH.to_owned(), meta::hash(&config_json))].into(),
                    ),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// Something a FinService depends on that keeps it from rolling out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    /// `FinService`, `MessageQueue` or `RedisCache`.
    pub kind: &'static str,
    pub name: String,
    /// `None` when it does not exist; why it is not Ready otherwise.
    pub not_ready: Option<String>,
}

impl Blocker {
    pub(crate) fn missing(kind: &'static str, name: &str) -> Self {
        Self {
            kind,
            name: name.to_owned(),
            not_ready: None,
        }
    }

    fn describe(&self) -> String {
        match &self.not_ready {
            None => format!("{} {} does not exist", self.kind, self.name),
            Some(why) => format!("{} {} is not ready ({why})", self.kind, self.name),
        }
    }
}

fn generation_observed(generation: Option<i64>, observed: Option<i64>) -> bool {
    observed.is_some() && observed >= generation
}

/// Why a FinService that others depend on is not usable yet, if it is not: missing,
/// status not yet reflecting its spec, not Ready, progressing or degraded.
pub fn service_blocker(name: &str, dep: Option<&FinService>) -> Option<Blocker> {
    let Some(dep) = dep else {
        return Some(Blocker::missing("FinService", name));
    };
    let status = dep.status.clone().unwrap_or_default();
    let c = &status.conditions;
    let why = if !generation_observed(dep.metadata.generation, status.observed_generation) {
        Some("its status does not reflect its latest spec yet".to_owned())
    } else if conditions::is_true(c, Type::Degraded) {
        Some("degraded".to_owned())
    } else if conditions::is_true(c, Type::Progressing) {
        Some("progressing".to_owned())
    } else if !conditions::is_true(c, Type::Ready) {
        Some(format!(
            "phase {}",
            status.phase.map_or("Pending", Phase::as_str)
        ))
    } else {
        None
    };
    why.map(|w| Blocker {
        kind: "FinService",
        name: name.to_owned(),
        not_ready: Some(w),
    })
}

/// Why the referenced MessageQueue is not usable yet, if it is not.
pub fn queue_blocker(name: &str, queue: Option<&MessageQueue>) -> Option<Blocker> {
    let Some(queue) = queue else {
        return Some(Blocker::missing("MessageQueue", name));
    };
    let ready = queue
        .status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, Type::Ready));
    (!ready).then(|| Blocker {
        kind: "MessageQueue",
        name: name.to_owned(),
        not_ready: Some("not Ready".to_owned()),
    })
}

/// Why the referenced RedisCache is not usable yet, if it is not.
pub fn cache_blocker(name: &str, cache: Option<&RedisCache>) -> Option<Blocker> {
    let Some(cache) = cache else {
        return Some(Blocker::missing("RedisCache", name));
    };
    let ready = cache
        .status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, Type::Ready));
    (!ready).then(|| Blocker {
        kind: "RedisCache",
        name: name.to_owned(),
        not_ready: Some("not Ready".to_owned()),
    })
}

fn dependencies_condition(blockers: &[Blocker]) -> Desired {
    if blockers.is_empty() {
        return Desired::new(
            Type::DependenciesReady,
            true,
            Reason::DEPENDENCIES_READY,
            "every dependency exists and is Ready",
        );
    }
    let reason = if blockers.iter().any(|b| b.not_ready.is_none()) {
        Reason::DEPENDENCY_MISSING
    } else {
        Reason::DEPENDENCY_NOT_READY
    };
    let message = blockers
        .iter()
        .map(Blocker::describe)
        .collect::<Vec<_>>()
        .join("; ");
    Desired::new(Type::DependenciesReady, false, reason, message)
}

/// What the active Deployment says about the rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    pub ready_replicas: i32,
    pub state: RolloutState,
    /// Version of the pod template (its `finflow.dev/version` label).
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutState {
    /// Every desired replica runs the current template and is available.
    Complete,
    /// Still moving; the message says how far it got.
    InProgress(String),
    /// The Deployment controller gave up within `progressDeadlineSeconds`.
    DeadlineExceeded(String),
}

/// Reads a Deployment's status the way `kubectl rollout status` does.
pub fn rollout(deployment: &Deployment, desired_replicas: i32) -> Rollout {
    let status = deployment.status.clone().unwrap_or_default();
    let version = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref())
        .and_then(|l| l.get(VERSION_LABEL).cloned());
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let deadline = status.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    let state = if !generation_observed(deployment.metadata.generation, status.observed_generation)
    {
        RolloutState::InProgress("waiting for the Deployment controller to see the new spec".into())
    } else if let Some(c) = deadline {
        RolloutState::DeadlineExceeded(c.message.clone().unwrap_or_default())
    } else if updated < desired_replicas {
        RolloutState::InProgress(format!("{updated}/{desired_replicas} replicas updated"))
    } else if total > updated {
        RolloutState::InProgress(format!("{} old replicas terminating", total - updated))
    } else if available < desired_replicas || ready < desired_replicas {
        RolloutState::InProgress(format!("{ready}/{desired_replicas} replicas ready"))
    } else {
        RolloutState::Complete
    };
    Rollout {
        ready_replicas: ready,
        state,
        version,
    }
}

/// The status after a reconcile that made no rollout decision (the rollout state in
/// `fs.status` stays as it is). See [`status_after`].
pub fn next_status(
    fs: &FinService,
    blockers: &[Blocker],
    held: bool,
    active: Option<&Deployment>,
    now: &Time,
) -> FinServiceStatus {
    status_after(
        fs,
        Reconciled {
            state: fs.status.clone().unwrap_or_default(),
            blockers,
            held,
            decision: None,
            active,
        },
        now,
    )
}

/// What one reconcile found and decided, from which [`status_after`] reports.
#[derive(Debug, Clone)]
pub struct Reconciled<'a> {
    /// The rollout state after this reconcile's step ([`advance`]).
    pub state: FinServiceStatus,
    /// What held the desired objects back, and the dependencies that are not Ready.
    pub blockers: &'a [Blocker],
    /// The desired objects differ from the cluster but `blockers` kept them from being
    /// applied (phase `Waiting`).
    pub held: bool,
    /// The step the engine chose, if it was asked.
    pub decision: Option<&'a rollout::Decision>,
    /// The active color's Deployment as last seen (after any apply).
    pub active: Option<&'a Deployment>,
}

/// The status after this reconcile. Times only move when something changed, so the
/// same inputs give back the same status and no write.
pub fn status_after(fs: &FinService, reconciled: Reconciled<'_>, now: &Time) -> FinServiceStatus {
    let Reconciled {
        state,
        blockers,
        held,
        decision,
        active,
    } = reconciled;
    let previous = fs.status.clone().unwrap_or_default();
    let generation = fs.metadata.generation;
    let color = state.active_color.unwrap_or(Color::Blue);
    let replicas = fs.spec.replicas;
    let observed = active.map(|d| rollout(d, replicas));
    // Before the engine recorded a live version (a status written by an older operator),
    // what the active Deployment runs is live.
    let live_version = state
        .active_version
        .clone()
        .or_else(|| observed.as_ref().and_then(|r| r.version.clone()));
    let live = live_version
        .clone()
        .unwrap_or_else(|| fs.spec.version.clone());
    let ready_replicas = observed.as_ref().map_or(0, |r| r.ready_replicas);
    let waiting_for_services = decision.filter(|d| d.step == rollout::Step::WaitForDependencies);

    let mut deps = dependencies_condition(blockers);
    if let (true, Some(d)) = (blockers.is_empty(), waiting_for_services) {
        deps = Desired::new(
            Type::DependenciesReady,
            false,
            Reason::DEPENDENCY_NOT_READY,
            d.message.clone(),
        );
    }

    // What the active Deployment says.
    let (ready, deployment_progressing, deployment_degraded) =
        match observed.as_ref().map(|r| &r.state) {
            Some(RolloutState::Complete) => {
                let (reason, message) = if replicas == 0 {
                    (
                        Reason::SCALED_TO_ZERO,
                        format!("version {live} scaled to zero"),
                    )
                } else {
                    (
                        Reason::REPLICAS_READY,
                        format!(
                            "version {live} ready on {} ({ready_replicas}/{replicas})",
                            color.as_str()
                        ),
                    )
                };
                (Desired::new(Type::Ready, true, reason, message), None, None)
            }
            Some(RolloutState::DeadlineExceeded(why)) => {
                let message = format!(
                    "version {live} did not become ready within {}s: {why}",
                    fs.spec.rollout.readiness_timeout_seconds
                );
                (
                    Desired::new(
                        Type::Ready,
                        false,
                        Reason::PROGRESS_DEADLINE_EXCEEDED,
                        &message,
                    ),
                    None,
                    Some(Desired::new(
                        Type::Degraded,
                        true,
                        Reason::PROGRESS_DEADLINE_EXCEEDED,
                        &message,
                    )),
                )
            }
            Some(RolloutState::InProgress(how)) => {
                let message = format!("rolling out version {live} on {}: {how}", color.as_str());
                (
                    Desired::new(Type::Ready, false, Reason::REPLICAS_NOT_READY, &message),
                    Some(Desired::new(
                        Type::Progressing,
                        true,
                        Reason::ROLLING_OUT,
                        &message,
                    )),
                    None,
                )
            }
            None => {
                let message = format!("rolling out version {live} on {}", color.as_str());
                (
                    Desired::new(Type::Ready, false, Reason::REPLICAS_NOT_READY, &message),
                    Some(Desired::new(
                        Type::Progressing,
                        true,
                        Reason::ROLLING_OUT,
                        &message,
                    )),
                    None,
                )
            }
        };

    // What the rollout engine decided, where it says more than the Deployment.
    let [engine_progressing, engine_degraded] = match decision.map(rollout::Decision::conditions) {
        Some(c) => [Some(c[0].clone()), Some(c[1].clone())],
        None => [None, None],
    };
    let is_true = |d: &Option<Desired>| d.as_ref().is_some_and(|d| d.status == conditions::TRUE);

    let (phase, ready, progressing, degraded) = if held || waiting_for_services.is_some() {
        let message = if held {
            format!("held until dependencies are ready: {}", deps.message)
        } else {
            deps.message.clone()
        };
        let waiting = Desired::new(
            Type::Progressing,
            false,
            Reason::WAITING_FOR_DEPENDENCIES,
            &message,
        );
        // The spec's version is not live (held, or a new version waits for its
        // dependencies), whatever the live one does meanwhile.
        let ready = if ready.status == conditions::TRUE {
            format!("{message}; {}", ready.message)
        } else {
            message
        };
        (
            Phase::Waiting,
            Desired::new(Type::Ready, false, Reason::WAITING_FOR_DEPENDENCIES, ready),
            waiting,
            deployment_degraded
                .unwrap_or_else(|| Desired::new(Type::Degraded, false, Reason::AS_EXPECTED, "")),
        )
    } else {
        let degraded = if is_true(&engine_degraded) {
            engine_degraded.clone()
        } else {
            deployment_degraded.clone()
        }
        .unwrap_or_else(|| Desired::new(Type::Degraded, false, Reason::AS_EXPECTED, ""));
        let progressing = if is_true(&engine_progressing) {
            engine_progressing.clone()
        } else {
            deployment_progressing.clone()
        }
        .unwrap_or_else(|| {
            let message = if ready.status == conditions::TRUE {
                ready.message.clone()
            } else {
                String::new()
            };
            Desired::new(Type::Progressing, false, Reason::ROLLED_OUT, message)
        });
        let phase = if degraded.status == conditions::TRUE {
            Phase::Degraded
        } else if progressing.status == conditions::TRUE {
            Phase::Progressing
        } else if ready.status == conditions::TRUE {
            Phase::Ready
        } else {
            Phase::Progressing
        };
        // Ready is what kstatus calls Current: while a step is under way or a failed
        // version is held, the live version may serve on every replica, but the spec is
        // not done; the message says both.
        let unsettled = [&degraded, &progressing]
            .into_iter()
            .find(|d| d.status == conditions::TRUE);
        let ready = match unsettled {
            Some(cause) if ready.status == conditions::TRUE => Desired::new(
                Type::Ready,
                false,
                cause.reason,
                format!("{}; {}", cause.message, ready.message),
            ),
            _ => ready,
        };
        (phase, ready, progressing, degraded)
    };
    let [reconciling, stalled] = conditions::kstatus(&ready, Some(&progressing), Some(&degraded));

    let mut history = state.history.clone();
    let mut stable_version = state.stable_version.clone();
    let schema_version = state
        .schemas
        .iter()
        .find(|r| r.release == live)
        .map(|r| r.schema_version);
    if ready.status == conditions::TRUE && live_version.is_some() {
        let last = history.last();
        if last.is_none_or(|r| r.version != live || r.color != color) {
            history.push(Revision {
                revision: last.map_or(1, |r| r.revision + 1),
                version: live.clone(),
                color,
                deployed_at: now.clone(),
                schema_version,
            });
            let excess = history.len().saturating_sub(HISTORY_LIMIT);
            history.drain(..excess);
        }
    }
    // A first version's schema is learned once it is live and ready.
    if let Some(last) = history
        .last_mut()
        .filter(|r| r.version == live && r.schema_version.is_none())
    {
        last.schema_version = schema_version;
    }
    if ready.status == conditions::TRUE && live_version.is_some() {
        stable_version = Some(live.clone());
    }

    FinServiceStatus {
        phase: Some(phase),
        active_color: Some(color),
        active_version: live_version,
        ready: Some(format!("{ready_replicas}/{replicas}")),
        history,
        stable_version,
        conditions: conditions::merge(
            &previous.conditions,
            vec![ready, progressing, degraded, deps, reconciling, stalled],
            generation,
            now,
        ),
        observed_generation: generation,
        step: decision
            .map(|d| d.step.as_str().to_owned())
            .or(state.step.clone()),
        ..state
    }
}

/// The condition whose message explains `phase` (the note of the phase's Event).
pub fn phase_condition(phase: Phase) -> Type {
    match phase {
        Phase::Waiting => Type::DependenciesReady,
        Phase::Degraded => Type::Degraded,
        Phase::Progressing => Type::Progressing,
        Phase::Ready | Phase::Pending => Type::Ready,
    }
}

/// When to reconcile again after a reconcile that ended in `phase` with `step`.
/// Rollout steps are timed (readiness timeout, observation window, scale-down delay):
/// while one is under way, look again soon.
pub fn requeue_after(
    phase: Phase,
    step: Option<rollout::Step>,
    previous_retained: bool,
) -> Duration {
    use rollout::Step;
    let seconds = match (phase, step) {
        (
            _,
            Some(Step::Observe | Step::AwaitPreview | Step::ScaleUpOld | Step::WaitForDependents),
        ) => 5,
        // The old color still runs after a promotion: its scale-down is due.
        (_, Some(Step::Steady)) if previous_retained => 15,
        (Phase::Ready, _) => 300,
        (Phase::Waiting, _) => 30,
        (Phase::Degraded, _) => 60,
        (Phase::Progressing | Phase::Pending, _) => 5,
    };
    Duration::from_secs(seconds)
}

/// The status after a reconcile that failed: the rollout state as it was (nothing this
/// reconcile decided is recorded), Ready=False with Stalled or, while a transient
/// failure is retried, Reconciling ([`conditions::after_failure`]), phase Degraded or
/// Progressing accordingly.
pub fn status_after_failure(fs: &FinService, failure: &Failure, now: &Time) -> FinServiceStatus {
    let current = fs.status.clone().unwrap_or_default();
    let generation = fs.metadata.generation;
    FinServiceStatus {
        phase: Some(failure.phase()),
        conditions: conditions::after_failure(&current.conditions, failure, generation, now),
        observed_generation: generation,
        ..current
    }
}

/// Fixtures for tests here and in the runtime crate (feature `testing`).
#[cfg(any(test, feature = "testing"))]
pub mod fixtures {
    use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
    use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::Settings;
    use crate::crd::{FinService, FinServiceSpec, SecretKeyRef, SidecarSpec};

    pub fn settings() -> Settings {
        Settings {
            sidecar_image: "finflow/sidecar:test".into(),
            native_sidecars: true,
        }
    }

    pub fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    /// A FinService as the API server would hand it over (uid, generation, defaults).
    pub fn finservice(name: &str, depends_on: &[&str]) -> FinService {
        let spec = FinServiceSpec {
            image: format!("ghcr.io/finflow/{name}"),
            version: "1.0.0".into(),
            replicas: 2,
            port: 8002,
            module: None,
            depends_on: depends_on.iter().map(|d| (*d).to_owned()).collect(),
            env: Vec::new(),
            database_secret_ref: Some(SecretKeyRef {
                name: format!("{name}-db"),
                key: "url".into(),
            }),
            queue_ref: None,
            cache_ref: None,
            sidecar: SidecarSpec {
                jwks_uri: Some("http://auth:8001/.well-known/jwks.json".into()),
                ..SidecarSpec::default()
            },
            rollout: Default::default(),
            resources: None,
            secret_mounts: Vec::new(),
        };
        let mut fs = FinService::new(name, spec);
        fs.metadata.namespace = Some("finflow".into());
        fs.metadata.uid = Some(format!("uid-{name}"));
        fs.metadata.generation = Some(1);
        fs
    }

    /// The pod template of `deployment`.
    pub fn pod(deployment: &Deployment) -> &PodSpec {
        deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
    }

    /// The container (or init container, where a native sidecar runs) called `name`.
    pub fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
        pod.containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name}"))
    }

    /// `container`'s variables called `name`, in order: one set twice shows twice.
    pub fn env_named<'a>(container: &'a Container, name: &str) -> Vec<&'a EnvVar> {
        container
            .env
            .iter()
            .flatten()
            .filter(|e| e.name == name)
            .collect()
    }

    /// `deployment` as the Deployment controller reports it once `ready` pods are up.
    pub fn with_rollout_status(mut deployment: Deployment, ready: i32) -> Deployment {
        deployment.metadata.generation = Some(1);
        let replicas = deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(0);
        deployment.status = Some(DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(replicas),
            updated_replicas: Some(replicas),
            ready_replicas: Some(ready),
            available_replicas: Some(ready),
            ..DeploymentStatus::default()
        });
        deployment
    }
}

#[cfg(test)]
mod tests {
    pub(crate) use super::fixtures::*;
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentCondition;

    /// The contract with the services: the role from the pod's label, at start in
    /// `FINFLOW_ROLE` and live in the file `FINFLOW_ROLE_FILE` names, next to the sidecar's.
    #[test]
    fn the_app_learns_its_role_from_the_downward_api() {
        let owned = desired(&finservice("wallet", &[]), &settings(), false);
        let pod = pod(&owned.deployments[1]);
        let app = container(pod, "app");
        let env = |name: &str| env_named(app, name)[0];
        assert_eq!(
            env("FINFLOW_ROLE")
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.labels['finflow.dev/role']"
        );
        assert_eq!(env("FINFLOW_COLOR").value.as_deref(), Some("green"));
        assert_eq!(
            env("FINFLOW_ROLE_FILE").value.as_deref(),
            Some("/etc/finflow/podinfo/role")
        );
        let mounts = app.volume_mounts.as_ref().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.name == PODINFO_VOLUME && m.mount_path == PODINFO_PATH)
        );
        let volumes = pod.volumes.as_ref().unwrap();
        let podinfo = volumes.iter().find(|v| v.name == PODINFO_VOLUME).unwrap();
        let file = &podinfo
            .downward_api
            .as_ref()
            .unwrap()
            .items
            .as_ref()
            .unwrap()[0];
        assert_eq!(file.path, "role");
        // The sidecar's configuration volume is still there.
        assert!(volumes.iter().any(|v| v.config_map.is_some()));
    }

    #[test]
    fn secret_mounts_reach_the_app_read_only() {
        let mut fs = finservice("auth", &[]);
        fs.spec.secret_mounts = vec![crate::crd::SecretMount {
            secret_name: "finflow-jwt-keys".into(),
            mount_path: "/var/run/finflow/jwt-keys".into(),
        }];
        let owned = desired(&fs, &settings(), false);
        let pod = pod(&owned.deployments[0]);
        let mount = container(pod, "app")
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == "/var/run/finflow/jwt-keys")
            .unwrap();
        assert_eq!(mount.read_only, Some(true));
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .unwrap();
        assert_eq!(
            volume.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("finflow-jwt-keys")
        );
        assert!(
            container(pod, inject::SIDECAR_NAME)
                .volume_mounts
                .iter()
                .flatten()
                .all(|m| m.name != mount.name),
            "the sidecar does not see the keys"
        );
    }

    #[test]
    fn a_users_variable_replaces_the_operators_of_the_same_name() {
        let mut fs = finservice("wallet", &[]);
        fs.spec.sidecar.enabled = false;
        fs.spec.env = vec![
            value_env("DATABASE_URL", "postgres://override"),
            value_env("LISTEN_ADDR", "0.0.0.0:7000"),
            value_env("RUST_LOG", "debug"),
        ];
        let owned = desired(&fs, &settings(), false);
        let app = container(pod(&owned.deployments[0]), "app");
        let env = app.env.clone().unwrap();
        assert_eq!(env_named(app, "DATABASE_URL"), [&fs.spec.env[0]]);
        assert_eq!(env_named(app, "LISTEN_ADDR"), [&fs.spec.env[1]]);
        let tail: Vec<&str> = env[env.len() - 3..]
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(
            tail,
            ["DATABASE_URL", "LISTEN_ADDR", "RUST_LOG"],
            "the user's, last, in the user's order"
        );
    }

    #[test]
    fn a_secret_mounted_where_the_operator_mounts_takes_the_path() {
        let mut fs = finservice("auth", &[]);
        fs.spec.secret_mounts = vec![crate::crd::SecretMount {
            secret_name: "role-override".into(),
            mount_path: PODINFO_PATH.into(),
        }];
        let owned = desired(&fs, &settings(), false);
        let mounts = container(pod(&owned.deployments[0]), "app")
            .volume_mounts
            .clone()
            .unwrap();
        let at_path: Vec<&str> = mounts
            .iter()
            .filter(|m| m.mount_path == PODINFO_PATH)
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(at_path, [secret_volume_name(0)]);
    }

    #[test]
    fn a_timed_step_is_looked_at_again_in_seconds_and_a_ready_service_in_minutes() {
        use rollout::Step;
        let secs = |phase, step, retained| requeue_after(phase, step, retained).as_secs();
        assert_eq!(secs(Phase::Ready, Some(Step::Observe), false), 5);
        assert_eq!(secs(Phase::Ready, Some(Step::AwaitPreview), false), 5);
        assert_eq!(secs(Phase::Ready, Some(Step::Steady), true), 15);
        assert_eq!(secs(Phase::Ready, Some(Step::Steady), false), 300);
        assert_eq!(secs(Phase::Waiting, None, false), 30);
        assert_eq!(secs(Phase::Degraded, Some(Step::Held), false), 60);
        assert_eq!(secs(Phase::Progressing, None, false), 5);
    }

    #[test]
    fn each_phase_is_explained_by_its_own_condition() {
        assert_eq!(phase_condition(Phase::Waiting), Type::DependenciesReady);
        assert_eq!(phase_condition(Phase::Degraded), Type::Degraded);
        assert_eq!(phase_condition(Phase::Progressing), Type::Progressing);
        assert_eq!(phase_condition(Phase::Ready), Type::Ready);
    }

    #[test]
    fn the_version_is_the_tag_unless_the_image_names_one() {
        assert_eq!(
            image_ref("ghcr.io/finflow/auth", "1.2.0"),
            "ghcr.io/finflow/auth:1.2.0"
        );
        assert_eq!(
            image_ref("localhost:5000/finflow/auth", "1.2.0"),
            "localhost:5000/finflow/auth:1.2.0"
        );
        assert_eq!(
            image_ref("ghcr.io/finflow/auth:tilt-1a2b", "1.2.0"),
            "ghcr.io/finflow/auth:tilt-1a2b"
        );
        assert_eq!(
            image_ref("ghcr.io/finflow/auth@sha256:abc", "1.2.0"),
            "ghcr.io/finflow/auth@sha256:abc"
        );
    }

    #[test]
    fn a_new_service_runs_on_blue_with_green_at_zero() {
        let owned = desired(&finservice("wallet", &["auth"]), &settings(), false);
        let [blue, green] = &owned.deployments;
        assert_eq!(blue.metadata.name.as_deref(), Some("wallet-blue"));
        assert_eq!(blue.spec.as_ref().unwrap().replicas, Some(2));
        assert_eq!(green.metadata.name.as_deref(), Some("wallet-green"));
        assert_eq!(green.spec.as_ref().unwrap().replicas, Some(0));
        assert_eq!(
            container(pod(blue), "app").image.as_deref(),
            Some("ghcr.io/finflow/wallet:1.0.0")
        );
    }

    #[test]
    fn the_service_selects_the_active_color_and_preview_the_other() {
        let owned = desired(&finservice("wallet", &[]), &settings(), false);
        let [active, preview] = &owned.services;
        let color =
            |s: &Service| s.spec.as_ref().unwrap().selector.as_ref().unwrap()[COLOR_LABEL].clone();
        assert_eq!(active.metadata.name.as_deref(), Some("wallet"));
        assert_eq!(color(active), "blue");
        assert_eq!(preview.metadata.name.as_deref(), Some("wallet-preview"));
        assert_eq!(color(preview), "green");
        let port = &active.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        assert_eq!(port.port, 8002);
        assert_eq!(port.target_port, Some(IntOrString::String("http".into())));
    }

    #[test]
    fn after_a_switch_to_green_the_service_follows() {
        let mut fs = finservice("wallet", &[]);
        fs.status = Some(FinServiceStatus {
            active_color: Some(Color::Green),
            ..FinServiceStatus::default()
        });
        let owned = desired(&fs, &settings(), false);
        assert_eq!(
            owned.deployments[1].spec.as_ref().unwrap().replicas,
            Some(2)
        );
        assert_eq!(
            owned.deployments[0].spec.as_ref().unwrap().replicas,
            Some(0)
        );
        let selector = owned.services[0]
            .spec
            .as_ref()
            .unwrap()
            .selector
            .clone()
            .unwrap();
        assert_eq!(selector[COLOR_LABEL], "green");
    }

    #[test]
    fn every_owned_object_points_back_to_its_finservice() {
        let owned = desired(&finservice("wallet", &[]), &settings(), false);
        let metas = [
            &owned.service_account.metadata,
            &owned.config_map.metadata,
            &owned.deployments[0].metadata,
            &owned.deployments[1].metadata,
            &owned.services[0].metadata,
            &owned.services[1].metadata,
        ];
        for m in metas {
            let owner = &m.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str()),
                ("FinService", "wallet")
            );
            assert_eq!(owner.controller, Some(true));
            assert_eq!(m.namespace.as_deref(), Some("finflow"));
            assert!(
                m.annotations
                    .as_ref()
                    .unwrap()
                    .contains_key(meta::SPEC_HASH)
            );
        }
    }

    #[test]
    fn the_sidecar_fronts_the_app_and_reads_the_config_map() {
        let owned = desired(&finservice("wallet", &[]), &settings(), false);
        let pod = pod(&owned.deployments[0]);
        let sidecar = container(pod, inject::SIDECAR_NAME);
        assert_eq!(sidecar.image.as_deref(), Some("finflow/sidecar:test"));
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
        let app = container(pod, "app");
        let listen = env_named(app, "LISTEN_ADDR");
        assert_eq!(listen.len(), 1);
        assert_eq!(listen[0].value.as_deref(), Some("127.0.0.1:9002"));
        let config = &owned.config_map.data.as_ref().unwrap()[inject::CONFIG_FILE];
        let config: serde_json::Value = serde_json::from_str(config).unwrap();
        assert_eq!(config["jwksUri"], "http://auth:8001/.well-known/jwks.json");
        assert_eq!(config["claimHeaders"]["sub"], "X-User-Id");
        assert!(config.get("trustedProxies").is_none(), "{config}");
        assert_eq!(
            owned.config_map.metadata.name.as_deref(),
            Some("wallet-sidecar")
        );
    }

    #[test]
    fn trusted_proxies_reach_the_sidecar_configuration() {
        let mut fs = finservice("wallet", &[]);
        fs.spec.sidecar.trusted_proxies = vec!["10.42.0.0/16".to_owned(), "10.0.0.7".to_owned()];
        let owned = desired(&fs, &settings(), false);
        let config = &owned.config_map.data.as_ref().unwrap()[inject::CONFIG_FILE];
        let config: serde_json::Value = serde_json::from_str(config).unwrap();
        assert_eq!(
            config["trustedProxies"],
            serde_json::json!(["10.42.0.0/16", "10.0.0.7"])
        );
    }

    #[test]
    fn without_the_sidecar_the_app_listens_on_the_public_port() {
        let mut fs = finservice("wallet", &[]);
        fs.spec.sidecar.enabled = false;
        let owned = desired(&fs, &settings(), false);
        let pod = pod(&owned.deployments[0]);
        assert_eq!(pod.containers.len(), 1);
        assert!(pod.init_containers.is_none());
        let app = container(pod, "app");
        assert_eq!(app.ports.as_ref().unwrap()[0].container_port, 8002);
    }

    #[test]
    fn connections_come_from_the_referenced_secrets() {
        let mut fs = finservice("payment", &[]);
        fs.spec.queue_ref = Some("events".into());
        fs.spec.cache_ref = Some("cache".into());
        let env_of = |owned: &Owned, name: &str| {
            env_named(container(pod(&owned.deployments[0]), "app"), name)[0].clone()
        };
        let secret_of = |e: &EnvVar| {
            let s = e
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap();
            (s.name.clone(), s.key.clone())
        };
        let owned = desired(&fs, &settings(), true);
        assert_eq!(
            secret_of(&env_of(&owned, "DATABASE_URL")),
            ("payment-db".into(), "url".into())
        );
        assert_eq!(
            secret_of(&env_of(&owned, "AMQP_URL")),
            ("events-credentials".into(), "url".into())
        );
        assert_eq!(
            secret_of(&env_of(&owned, "REDIS_URL")),
            ("cache-auth".into(), "url".into())
        );
        let without_password = desired(&fs, &settings(), false);
        assert_eq!(
            env_of(&without_password, "REDIS_URL").value.as_deref(),
            Some("redis://cache:6379")
        );
    }

    #[test]
    fn a_sidecar_config_change_changes_the_pod_template() {
        let fs = finservice("wallet", &[]);
        let mut changed = fs.clone();
        changed.spec.sidecar.public_paths.push("/docs".into());
        let annotation = |fs: &FinService| {
            let owned = desired(fs, &settings(), false);
            owned.deployments[0]
                .spec
                .clone()
                .unwrap()
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap()[SIDECAR_CONFIG_HASH]
                .clone()
        };
        assert_ne!(annotation(&fs), annotation(&changed));
    }

    #[test]
    fn the_desired_objects_are_deterministic() {
        let fs = finservice("wallet", &["auth"]);
        assert_eq!(
            desired(&fs, &settings(), false),
            desired(&fs, &settings(), false)
        );
    }

    fn ready_dependency(name: &str) -> FinService {
        let mut dep = finservice(name, &[]);
        dep.status = Some(next_status(
            &dep,
            &[],
            false,
            Some(&with_rollout_status(
                desired(&dep, &settings(), false).deployments[0].clone(),
                2,
            )),
            &at(10),
        ));
        dep
    }

    #[test]
    fn a_missing_or_unready_dependency_blocks() {
        assert_eq!(
            service_blocker("auth", None),
            Some(Blocker::missing("FinService", "auth"))
        );
        let pending = finservice("auth", &[]);
        assert!(service_blocker("auth", Some(&pending)).is_some());
        assert_eq!(
            service_blocker("auth", Some(&ready_dependency("auth"))),
            None
        );
        let mut newer_spec = ready_dependency("auth");
        newer_spec.metadata.generation = Some(2);
        assert!(service_blocker("auth", Some(&newer_spec)).is_some());
    }

    #[test]
    fn a_held_service_is_waiting_with_dependencies_not_ready() {
        let fs = finservice("wallet", &["auth"]);
        let blockers = [Blocker::missing("FinService", "auth")];
        let status = next_status(&fs, &blockers, true, None, &at(100));
        assert_eq!(status.phase, Some(Phase::Waiting));
        let deps = conditions::find(&status.conditions, Type::DependenciesReady).unwrap();
        assert_eq!(deps.status, conditions::FALSE);
        assert_eq!(deps.reason, Reason::DEPENDENCY_MISSING);
        assert!(deps.message.contains("FinService auth does not exist"));
        assert!(!conditions::is_true(&status.conditions, Type::Ready));
        assert!(!conditions::is_true(&status.conditions, Type::Progressing));
        assert_eq!(status.observed_generation, Some(1));
        assert!(status.history.is_empty());
    }

    #[test]
    fn a_fresh_deployment_is_progressing() {
        let fs = finservice("wallet", &[]);
        let blue = desired(&fs, &settings(), false).deployments[0].clone();
        let status = next_status(&fs, &[], false, Some(&blue), &at(100));
        assert_eq!(status.phase, Some(Phase::Progressing));
        assert!(conditions::is_true(&status.conditions, Type::Progressing));
        assert!(conditions::is_true(&status.conditions, Type::Reconciling));
        assert!(!conditions::is_true(&status.conditions, Type::Stalled));
        assert_eq!(status.ready.as_deref(), Some("0/2"));
        assert_eq!(status.active_color, Some(Color::Blue));
    }

    #[test]
    fn all_replicas_ready_makes_the_version_live_and_stable() {
        let fs = finservice("wallet", &[]);
        let blue = with_rollout_status(desired(&fs, &settings(), false).deployments[0].clone(), 2);
        let status = next_status(&fs, &[], false, Some(&blue), &at(100));
        assert_eq!(status.phase, Some(Phase::Ready));
        assert!(conditions::is_true(&status.conditions, Type::Ready));
        assert!(conditions::is_true(
            &status.conditions,
            Type::DependenciesReady
        ));
        for kstatus in [Type::Reconciling, Type::Stalled] {
            let c = conditions::find(&status.conditions, kstatus).unwrap();
            assert_eq!(c.status, conditions::FALSE, "{kstatus}");
        }
        assert_eq!(status.active_version.as_deref(), Some("1.0.0"));
        assert_eq!(status.stable_version.as_deref(), Some("1.0.0"));
        assert_eq!(status.ready.as_deref(), Some("2/2"));
        assert_eq!(status.history.len(), 1);
        assert_eq!(status.history[0].revision, 1);
        assert_eq!(status.history[0].deployed_at, at(100));
    }

    #[test]
    fn an_unchanged_world_gives_an_identical_status_later() {
        let mut fs = finservice("wallet", &[]);
        let blue = with_rollout_status(desired(&fs, &settings(), false).deployments[0].clone(), 2);
        let first = next_status(&fs, &[], false, Some(&blue), &at(100));
        fs.status = Some(first.clone());
        let second = next_status(&fs, &[], false, Some(&blue), &at(900));
        assert_eq!(first, second);
    }

    #[test]
    fn a_new_version_adds_a_revision_once_ready() {
        let mut fs = finservice("wallet", &[]);
        let blue = with_rollout_status(desired(&fs, &settings(), false).deployments[0].clone(), 2);
        fs.status = Some(next_status(&fs, &[], false, Some(&blue), &at(100)));
        // 1.1.0 promoted to green.
        fs.spec.version = "1.1.0".into();
        let mut promoted = fs.status.clone().unwrap();
        promoted.active_version = Some("1.1.0".into());
        promoted.active_color = Some(Color::Green);
        promoted.previous_version = Some("1.0.0".into());
        fs.status = Some(promoted);
        let green = with_rollout_status(desired(&fs, &settings(), false).deployments[1].clone(), 2);
        let status = next_status(&fs, &[], false, Some(&green), &at(200));
        let versions: Vec<_> = status
            .history
            .iter()
            .map(|r| (r.revision, r.version.as_str()))
            .collect();
        assert_eq!(versions, [(1, "1.0.0"), (2, "1.1.0")]);
    }

    #[test]
    fn a_held_service_serving_its_old_version_is_waiting_not_ready() {
        let mut fs = finservice("wallet", &["auth"]);
        let blue = with_rollout_status(desired(&fs, &settings(), false).deployments[0].clone(), 2);
        fs.status = Some(next_status(&fs, &[], false, Some(&blue), &at(100)));
        fs.spec.version = "2.0.0".into();
        fs.metadata.generation = Some(2);
        let blockers = [Blocker::missing("FinService", "auth")];
        let status = next_status(&fs, &blockers, true, Some(&blue), &at(200));
        let ready = conditions::find(&status.conditions, Type::Ready).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            (conditions::FALSE, Reason::WAITING_FOR_DEPENDENCIES.as_str())
        );
        assert!(
            ready.message.ends_with("version 1.0.0 ready on blue (2/2)"),
            "{}",
            ready.message
        );
        let reconciling = conditions::find(&status.conditions, Type::Reconciling).unwrap();
        assert_eq!(
            (reconciling.status.as_str(), reconciling.reason.as_str()),
            (conditions::TRUE, Reason::WAITING_FOR_DEPENDENCIES.as_str())
        );
    }

    #[test]
    fn a_failed_reconcile_keeps_the_rollout_state_and_says_why_it_is_not_ready() {
        let mut fs = finservice("wallet", &[]);
        let blue = with_rollout_status(desired(&fs, &settings(), false).deployments[0].clone(), 2);
        fs.status = Some(next_status(&fs, &[], false, Some(&blue), &at(100)));
        fs.metadata.generation = Some(2);
        let failure = Failure {
            transient: false,
            reason: Reason::APPLY_FAILED,
            message: "applying Deployment/wallet-blue: refused".into(),
        };
        let before = fs.status.clone().unwrap();
        let status = status_after_failure(&fs, &failure, &at(200));
        assert_eq!(status.phase, Some(Phase::Degraded));
        assert_eq!(status.observed_generation, Some(2));
        assert_eq!(
            (&status.active_version, &status.history, &status.step),
            (&before.active_version, &before.history, &before.step)
        );
        let ready = conditions::find(&status.conditions, Type::Ready).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.message.as_str()),
            (
                conditions::FALSE,
                "applying Deployment/wallet-blue: refused"
            )
        );
        assert!(conditions::is_true(&status.conditions, Type::Stalled));
        let retrying = status_after_failure(
            &fs,
            &Failure {
                transient: true,
                ..failure
            },
            &at(200),
        );
        assert_eq!(retrying.phase, Some(Phase::Progressing));
        assert!(conditions::is_true(&retrying.conditions, Type::Reconciling));
    }

    #[test]
    fn a_deployment_past_its_deadline_is_degraded() {
        let fs = finservice("wallet", &[]);
        let mut blue =
            with_rollout_status(desired(&fs, &settings(), false).deployments[0].clone(), 1);
        if let Some(s) = blue.status.as_mut() {
            s.conditions = Some(vec![DeploymentCondition {
                type_: "Progressing".into(),
                status: "False".into(),
                reason: Some("ProgressDeadlineExceeded".into()),
                message: Some("ReplicaSet has timed out progressing.".into()),
                ..DeploymentCondition::default()
            }]);
        }
        let status = next_status(&fs, &[], false, Some(&blue), &at(100));
        assert_eq!(status.phase, Some(Phase::Degraded));
        assert!(conditions::is_true(&status.conditions, Type::Degraded));
        assert!(conditions::is_true(&status.conditions, Type::Stalled));
        assert!(status.stable_version.is_none());
    }

    #[test]
    fn a_held_rollback_gives_way_to_a_new_spec_version_and_to_an_abort() {
        use crate::rollout::{Request, Step, Trigger};
        let mut fs = finservice("wallet", &[]);
        fs.spec.version = "2.0.0".into();
        let trigger = Some(Trigger {
            cascade: true,
            force: false,
        });
        let kept = rollback_after(trigger, Some(Step::BlockedBySchema), "2.0.0", None);
        assert_eq!(
            kept,
            Some(RollbackState {
                cascade: true,
                force: false,
                from: Some("2.0.0".into()),
            })
        );
        fs.status = Some(FinServiceStatus {
            active_version: Some("2.0.0".into()),
            rollback: kept,
            ..FinServiceStatus::default()
        });
        assert_eq!(
            observed(&fs, None).request,
            Some(Request::Rollback {
                cascade: true,
                force: false
            })
        );
        // Fix forward: the spec names another release.
        fs.spec.version = "3.0.0".into();
        assert_eq!(observed(&fs, None).request, None);
        // An abort asked for by hand wins over the kept rollback, which then goes.
        fs.spec.version = "2.0.0".into();
        fs.metadata
            .annotations
            .get_or_insert_default()
            .insert(rollout::ABORT_ANNOTATION.into(), "true".into());
        let me = observed(&fs, None);
        assert_eq!(me.request, Some(Request::Abort));
        assert_eq!(
            rollback_after(me.rollback_trigger(0), Some(Step::Steady), "2.0.0", None),
            None
        );
        // A promotion request does not cancel it.
        let annotations = fs.metadata.annotations.as_mut().unwrap();
        annotations.clear();
        annotations.insert(rollout::PROMOTE_ANNOTATION.into(), "force".into());
        assert_eq!(
            observed(&fs, None).request,
            Some(Request::Rollback {
                cascade: true,
                force: false
            })
        );
        // A reconcile that decided nothing (a queue not ready) keeps it as it was.
        let held = fs.status.as_ref().unwrap().rollback.clone();
        assert_eq!(rollback_after(None, None, "2.0.0", held.clone()), held);
    }

    #[test]
    fn schemas_learned_are_kept_for_the_releases_still_in_play_and_raise_the_barrier() {
        let mut s = FinServiceStatus {
            active_version: Some("3.0.0".into()),
            previous_version: Some("2.0.0".into()),
            ..FinServiceStatus::default()
        };
        let schema = |v: i64, marked: Option<i64>| rollout::Schema {
            version: v,
            incompatible: marked.map(|m| crate::crd::MigrationRef {
                version: m,
                description: "drop legacy name".into(),
            }),
        };
        let learned = BTreeMap::from([
            ("1.0.0".to_owned(), schema(10, None)),
            ("2.0.0".to_owned(), schema(20, None)),
            ("3.0.0".to_owned(), schema(30, Some(30))),
        ]);
        record_schemas(&mut s, "3.0.0", &learned, false);
        let kept: Vec<&str> = s.schemas.iter().map(|r| r.release.as_str()).collect();
        assert_eq!(kept, ["2.0.0", "3.0.0"], "1.0.0 is in play nowhere");
        let barrier = s.schema_barrier.clone().unwrap();
        assert_eq!(
            (barrier.migration.version, barrier.release.as_str()),
            (30, "3.0.0")
        );
        // Forced back to 2.0.0: the barrier stays, and says who crossed it.
        s.active_version = Some("2.0.0".into());
        record_schemas(&mut s, "3.0.0", &BTreeMap::new(), true);
        let barrier = s.schema_barrier.unwrap();
        assert_eq!(
            (barrier.migration.version, barrier.overridden_by.as_deref()),
            (30, Some("2.0.0"))
        );
    }
}
