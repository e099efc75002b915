//! `FinService`: one FinFlow service, deployed blue-green behind its sidecar.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Phase, SecretKeyRef};

/// Desired state of one FinFlow service.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "finflow.dev",
    version = "v1alpha1",
    kind = "FinService",
    plural = "finservices",
    shortname = "fsvc",
    category = "finflow",
    namespaced,
    status = "FinServiceStatus",
    derive = "PartialEq",
    doc = "A FinFlow service: blue and green Deployments behind Services `<name>` (active color) and `<name>-preview` (the other), with the FinFlow sidecar in front of the app.",
    printcolumn(name = "Module", type_ = "string", json_path = ".spec.module"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(name = "Active", type_ = "string", json_path = ".status.activeColor"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.ready"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("!(self.metadata.name in self.spec.dependsOn)").message("a FinService cannot depend on itself"),
    validation = Rule::new("self.metadata.name.size() <= 55").message("the name must leave room for the `-preview` Service suffix (at most 55 characters)"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("the name becomes Service names: lower-case letters, digits and '-', starting with a letter and ending with a letter or digit (DNS-1035)")
)]
#[x_kube(
    validation = Rule::new("!has(self.sidecar.appPort) || self.sidecar.appPort != self.port").message("sidecar.appPort must differ from port: the sidecar owns port")
)]
#[serde(rename_all = "camelCase")]
pub struct FinServiceSpec {
    /// Container image repository of the application, without a tag (for example
    /// `ghcr.io/finflow/wallet`). The tag is `version`. An image that already names a
    /// tag or digest (as Tilt substitutes its builds) is used as it is.
    #[schemars(length(max = 512))]
    #[x_kube(validation = Rule::new("self.size() > 0").message("image must not be empty"))]
    pub image: String,
    /// Version to run: the image tag, for example `1.4.2`. Changing it rolls out a new
    /// version. It labels the pods (`finflow.dev/version`), so it is a label value: at
    /// most 63 letters, digits, `-`, `_` and `.`, starting and ending with a letter or
    /// digit.
    #[schemars(
        length(max = 63),
        regex(pattern = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
    )]
    #[x_kube(validation = Rule::new("self.size() > 0").message("version must not be empty"))]
    pub version: String,
    /// Number of pods of the active color.
    #[serde(default = "default_replicas")]
    #[x_kube(validation = Rule::new("self >= 0").message("replicas cannot be negative"))]
    pub replicas: i32,
    /// Port the service is reached on: the Services' port and the pod's container port
    /// named `http`. With the sidecar enabled the sidecar listens here and the app moves
    /// to `sidecar.appPort` on 127.0.0.1.
    #[serde(default = "default_port")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("port must be between 1 and 65535"))]
    pub port: i32,
    /// The service's letter in the FinFlow design (A: auth ... F: reporting); shown by
    /// `kubectl get`, not used for decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<Module>,
    /// Names of the FinServices (same namespace) this service depends on. A new version
    /// is not rolled out while any of them is missing or not Ready.
    #[serde(default)]
    #[schemars(length(max = 32), inner(length(min = 1, max = 63)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub depends_on: Vec<String>,
    /// Extra environment variables for the application container (at most 256).
    // Every list the operator reads is bounded: the operator holds every FinService of
    // the cluster, and reads a namespace's at each reconcile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub env: Vec<EnvVar>,
    /// Secret key holding the PostgreSQL URL; given to the app as `DATABASE_URL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_secret_ref: Option<SecretKeyRef>,
    /// Name of the MessageQueue (same namespace) the service uses; its URL is given to
    /// the app as `AMQP_URL`. The service waits while it is missing or not Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_ref: Option<String>,
    /// Name of the RedisCache (same namespace) the service uses; its URL is given to the
    /// app as `REDIS_URL`. The service waits while it is missing or not Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ref: Option<String>,
    /// The sidecar in front of the app (JWT validation, identity headers, proxying).
    /// Required: an enabled sidecar must say how it validates tokens (`jwksUri` or
    /// `hs256SecretRef`), and running without one (`enabled: false`) is a choice to
    /// write down, not a default.
    pub sidecar: SidecarSpec,
    /// How new versions are rolled out: blue-green, gated on `/health` and, with the
    /// sidecar, on traffic. Whatever is set here, no release goes live again whose
    /// database schema is older than an incompatible migration a live version brought
    /// (marked `-- finflow: incompatible-with-previous`, reported in the app's
    /// `/health`): such a rollback or spec version is held (`status.schemaBarrier`)
    /// until `kubectl finflow rollback --force` or `promote --force`.
    #[serde(default)]
    pub rollout: RolloutSpec,
    /// CPU and memory for the application container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Secrets mounted read-only into the application container, one file per key (for
    /// example the auth service's signing keys in `JWT_KEYS_DIR`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub secret_mounts: Vec<SecretMount>,
}

/// A Secret mounted into the application container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretMount {
    /// Name of the Secret, in the FinService's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Directory in the application container; each key of the Secret becomes a file.
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("mountPath must be an absolute path"))]
    pub mount_path: String,
}

fn default_replicas() -> i32 {
    2
}

fn default_port() -> i32 {
    8080
}

/// The service letters of the FinFlow design.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Module {
    A,
    B,
    C,
    D,
    E,
    F,
}

/// Settings of the FinFlow sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("!(has(self.jwksUri) && has(self.hs256SecretRef))").message("set jwksUri or hs256SecretRef, not both"),
    validation = Rule::new("!self.enabled || has(self.jwksUri) || has(self.hs256SecretRef)").message("an enabled sidecar needs jwksUri or hs256SecretRef to validate tokens")
)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Put the sidecar in front of the app. Without it the app listens on `port` itself
    /// and no token is checked.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Sidecar image; defaults to the image the operator is configured with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Port the app listens on, on 127.0.0.1, behind the sidecar. Defaults to `port` +
    /// 1000 (or `port` - 1000 when that would exceed 65535).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("appPort must be between 1 and 65535"))]
    pub app_port: Option<i32>,
    /// Expected `iss` claim of access tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_issuer: Option<String>,
    /// Accepted `aud` values; a token must name at least one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 253)))]
    pub audiences: Vec<String>,
    /// URL of the issuer's JWKS (EdDSA keys), for example
    /// `http://auth.finflow.svc/.well-known/jwks.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Secret key holding a shared HS256 secret, for simple setups without a JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hs256_secret_ref: Option<SecretKeyRef>,
    /// Paths served without a token (`*` at the end: a prefix). Empty: the sidecar's
    /// own default, the platform's public paths (probes, the OpenAPI document, the JWK
    /// set and the sign-up and login routes), kept in one place with the sidecar.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 256)))]
    pub public_paths: Vec<String>,
    /// Verified claim name to the request header it is forwarded in. Client-supplied
    /// copies of these headers are always removed.
    #[serde(default = "default_claim_headers")]
    #[schemars(extend("maxProperties" = 32))]
    pub claim_headers: BTreeMap<String, String>,
    /// Addresses or CIDRs of the proxies in front of this service (the ingress, the
    /// gateway) whose `X-Forwarded-For` is believed: the client (`X-Real-IP`, per-address
    /// rate limits) is then the rightmost forwarded address that is not one of them.
    /// Empty: the connection's peer is the client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 64)))]
    pub trusted_proxies: Vec<String>,
}

impl Default for SidecarSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            image: None,
            app_port: None,
            jwt_issuer: None,
            audiences: Vec::new(),
            jwks_uri: None,
            hs256_secret_ref: None,
            public_paths: Vec::new(),
            claim_headers: default_claim_headers(),
            trusted_proxies: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// The identity headers an app may rely on (`docs/architecture.md`, Identity).
fn default_claim_headers() -> BTreeMap<String, String> {
    [
        ("sub", "X-User-Id"),
        ("email", "X-User-Email"),
        ("roles", "X-User-Roles"),
        ("kyc_status", "X-Kyc-Status"),
        ("tier", "X-Account-Tier"),
    ]
    .into_iter()
    .map(|(c, h)| (c.to_owned(), h.to_owned()))
    .collect()
}

/// How a new version goes live.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Switch traffic to the new color as soon as it is healthy; when false, wait for a
    /// user to promote.
    #[serde(default = "default_true")]
    pub auto_promote: bool,
    /// Path probed on the app (through the sidecar) for liveness and for the health of a
    /// new color before promotion.
    #[serde(default = "default_health_path")]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("healthPath must start with /"))]
    pub health_path: String,
    /// How long a new version may take to become ready before the rollout counts as failed.
    #[serde(default = "default_readiness_timeout")]
    #[x_kube(validation = Rule::new("self > 0").message("readinessTimeoutSeconds must be positive"))]
    pub readiness_timeout_seconds: i32,
    /// How long the previous color stays scaled up after a promotion, so a rollback is instant.
    #[serde(default = "default_scale_down_delay")]
    #[x_kube(validation = Rule::new("self >= 0").message("scaleDownDelaySeconds cannot be negative"))]
    pub scale_down_delay_seconds: i32,
    /// How long after a promotion the new version is watched; failing in that window
    /// rolls it back.
    #[serde(default = "default_observation_window")]
    #[x_kube(validation = Rule::new("self >= 0").message("observationWindowSeconds cannot be negative"))]
    pub observation_window_seconds: i32,
    /// Judging a version by its traffic: the FinFlow sidecars' counts (admin port 15020,
    /// read through the API server's pod proxy) of that version's pods, summed, while it
    /// is in preview and during its observation window. Probes (`/health`, `/ready`,
    /// `/live`) are not traffic; a custom `healthPath` is counted as traffic. A failed
    /// analysis aborts the preview, or rolls the
    /// version back (and its dependents with it) in the observation window, as a failed
    /// `/health` does. Without the sidecar there is nothing to read and nothing is
    /// judged; with fewer requests than `minRequests` nothing is judged either, and
    /// nothing is held back. The last analysis is in `status.analysis`.
    #[serde(default)]
    pub analysis: AnalysisSpec,
}

/// The limits a version's traffic is judged by (see `RolloutSpec::analysis`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// Read and judge the sidecars' counts; false: only `/health`, restarts and
    /// readiness decide.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Requests the version's pods must have answered (since they started, probes
    /// excepted) before anything is judged.
    #[serde(default = "default_min_requests")]
    #[x_kube(validation = Rule::new("self >= 1").message("minRequests must be at least 1"))]
    pub min_requests: i32,
    /// Highest share, in percent, of the requests sent to the app that may fail: answered
    /// 5xx by the app, or not answered (the sidecar's 502 and 504). Judged once at least
    /// `minRequests` were sent to it.
    #[serde(default = "default_max_app_error_percent")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("maxAppErrorPercent must be between 0 and 100"))]
    pub max_app_error_percent: i32,
    /// Highest 99th percentile, in milliseconds, of the time to the app's response head
    /// (interpolated within the sidecar's histogram buckets, 1 ms to 10 s; slower than
    /// 10 s exceeds any value). Unset: latency is not judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("maxP99LatencyMilliseconds must be positive"))]
    pub max_p99_latency_milliseconds: Option<i32>,
    /// Highest share, in percent, of requests refused for their token. Unset: not judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("maxJwtRejectionPercent must be between 0 and 100"))]
    pub max_jwt_rejection_percent: Option<i32>,
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            min_requests: default_min_requests(),
            max_app_error_percent: default_max_app_error_percent(),
            max_p99_latency_milliseconds: None,
            max_jwt_rejection_percent: None,
        }
    }
}

fn default_min_requests() -> i32 {
    100
}

fn default_max_app_error_percent() -> i32 {
    5
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            auto_promote: true,
            health_path: default_health_path(),
            readiness_timeout_seconds: default_readiness_timeout(),
            scale_down_delay_seconds: default_scale_down_delay(),
            observation_window_seconds: default_observation_window(),
            analysis: AnalysisSpec::default(),
        }
    }
}

fn default_health_path() -> String {
    "/health".to_owned()
}

fn default_readiness_timeout() -> i32 {
    300
}

fn default_scale_down_delay() -> i32 {
    300
}

fn default_observation_window() -> i32 {
    300
}

/// One of the two Deployments of a FinService.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    pub fn other(self) -> Self {
        match self {
            Self::Blue => Self::Green,
            Self::Green => Self::Blue,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Blue => "blue",
            Self::Green => "green",
        }
    }
}

/// Observed state of a FinService.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FinServiceStatus {
    /// Where the service stands: Pending, Waiting, Progressing, Ready or Degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The color the Service `<name>` sends traffic to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_color: Option<Color>,
    /// Version running in the active color.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_version: Option<String>,
    /// Version running in the other color, reachable through `<name>-preview`, while a
    /// rollout is under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_version: Option<String>,
    /// Last version that was Ready at full strength.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_version: Option<String>,
    /// When the active version went live (first deploy, promotion or rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_since: Option<Time>,
    /// When the preview version was deployed to the idle color.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_since: Option<Time>,
    /// What ran before the last promotion, in the idle color: what a rollback returns to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    /// The idle color still runs `previousVersion` at full strength, so a rollback is a
    /// selector switch; false once the scale-down delay has passed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub previous_retained: bool,
    /// A version that failed here (aborted or rolled back). The service holds, and its
    /// dependents wait, until `spec.version` names another version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_version: Option<String>,
    /// What the observation window after the last promotion has seen so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observation: Option<Observation>,
    /// A rollback of this service under way, kept until it has switched back so that
    /// its dependents (which roll back first with `cascade`) see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackState>,
    /// The rollout engine's last step for this service and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Ready pods of the active color over desired replicas, for example `2/2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// Versions that went live, oldest first (at most the last 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Revision>,
    /// The last traffic analysis (`spec.rollout.analysis`): of the preview, or of the
    /// live version in its observation window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStatus>,
    /// The schema each recent release reported in its `/health` (`schema`): its newest
    /// embedded migration and its newest one marked incompatible with the release
    /// before it (`-- finflow: incompatible-with-previous`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["release"]))]
    pub schemas: Vec<ReleaseSchema>,
    /// The newest incompatible migration a live version brought. A rollback, by hand,
    /// by cascade or after a failed observation window, to a release whose schema is
    /// older (or unknown), and a spec version known to be older, are refused (step
    /// BlockedBySchema, condition Degraded with reason IncompatibleMigration) unless
    /// forced: `kubectl finflow rollback --force` or `promote --force`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_barrier: Option<SchemaBarrier>,
    /// Ready (the spec's version is live and settled), Progressing, Degraded and
    /// DependenciesReady, following the Kubernetes API conventions, and kstatus'
    /// Reconciling (a rollout or a retry under way) and Stalled (a failed version held,
    /// or a write the API server refuses, with its message), which Flux, Argo CD and
    /// `kubectl wait` read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The observation window after a promotion.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    /// Container restarts of the new color's pods when it was promoted (the baseline).
    pub restarts_at_promotion: i32,
    /// Container restarts of the new color's pods since the promotion.
    #[serde(default)]
    pub restarts: i32,
    /// A pod of the new color was not ready.
    #[serde(default)]
    pub unready: bool,
    /// `/health` of the Service failed.
    #[serde(default)]
    pub health_failed: bool,
    /// The traffic analysis of the new version failed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub analysis_failed: bool,
}

/// What a traffic analysis judged, on which figures.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// The version judged.
    pub version: String,
    /// Preview (before promotion) or Observation (in the window after it).
    pub stage: AnalysisStage,
    /// Passed, Failed, Inconclusive (fewer requests than `minRequests`: nothing judged)
    /// or Unavailable (no sidecar answered with the counts the analysis reads).
    pub verdict: AnalysisVerdict,
    /// Pods whose sidecar answered.
    pub pods: i32,
    /// Requests answered since the pods started, probes excepted.
    pub requests: i64,
    /// Of them, sent to the app (answered by it, or not answered in time).
    #[serde(default)]
    pub forwarded: i64,
    /// Of those, answered 5xx by the app, or not answered (the sidecar's 502 and 504):
    /// the share judged against `maxAppErrorPercent`.
    pub app_server_errors: i64,
    /// Other 5xx the sidecar answered for itself (503: no keys to check tokens).
    pub proxy_server_errors: i64,
    /// Requests refused for their token.
    pub jwt_rejections: i64,
    /// The 99th percentile of the time to the app's response head, in milliseconds;
    /// absent without requests or beyond the histogram's last bound (10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_latency_milliseconds: Option<i64>,
    /// The verdict in words, with the limits it was held against.
    pub message: String,
    /// When the counts were read.
    pub analyzed_at: Time,
}

/// When an analysis was made.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AnalysisStage {
    Preview,
    Observation,
}

/// What an analysis concluded.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AnalysisVerdict {
    Passed,
    Failed,
    Inconclusive,
    Unavailable,
}

/// A rollback in progress, or held by the schema barrier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackState {
    /// Dependents promoted after this service's version roll back too, first.
    pub cascade: bool,
    /// Crosses the schema barrier (`kubectl finflow rollback --force`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// The spec version it rolls back from; a rollback the barrier holds gives way
    /// once `spec.version` names another release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// The schema a release expects, as its `/health` reported it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseSchema {
    /// The version (image tag).
    pub release: String,
    /// Its newest embedded migration.
    pub schema_version: i64,
    /// Its newest migration marked incompatible with the release before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incompatible_migration: Option<MigrationRef>,
}

/// A migration by version and description.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct MigrationRef {
    /// Its version (the number its file name starts with).
    pub version: i64,
    /// Its description (the rest of its file name).
    pub description: String,
}

/// An applied migration no older release may run against.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchemaBarrier {
    /// The migration.
    pub migration: MigrationRef,
    /// The version that brought it live.
    pub release: String,
    /// The older release a forced rollback or promotion put live despite it, while it
    /// is live (an Event with reason IncompatibleMigrationForced recorded the force).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overridden_by: Option<String>,
}

/// A version that went live.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    /// Increases by one with every version that goes live.
    pub revision: i64,
    /// The version (image tag).
    pub version: String,
    /// The color it ran in.
    pub color: Color,
    /// When it became Ready.
    pub deployed_at: Time,
    /// The newest migration it embeds, as its `/health` reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<i64>,
}
