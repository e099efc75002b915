//! The edge: reconcilers that read the cluster, call the pure decisions, and write.
//!
//! Every reconciler follows the same shape: read what it depends on and what it owns,
//! decide (pure functions in [`crate::finservice`], [`crate::messagequeue`],
//! [`crate::rediscache`]), apply only the objects whose desired state differs from the
//! cluster ([`crate::meta::needs_apply`]), write the status only when it changed, and
//! record an Event for each step that changed something. So a reconcile of a world that
//! already matches the spec makes no write at all.
//!
//! Writes are server-side applies with field manager `finflow-operator` and `force`,
//! so the operator owns the fields it sets, of objects it controls: one of the same
//! name that it did not make is left alone and reported ([`Error::NotOwned`]). Two writes are not applies, by the nature of
//! the libraries that make them: kube-runtime's finalizer helper adds and removes its
//! finalizer with a JSON patch (with a `test` precondition), and its event recorder
//! creates Events.
//!
//! A reconcile that fails says so before it is retried ([`report_failure`]): the
//! resource's status gets Ready=False and Stalled (or Reconciling, for a failure a
//! retry can get past, [`Error::failure`]) with the API server's message, and a Warning
//! Event names it; both only when the failure is new.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::conditions::{Failure, Reason};
use crate::dns::ClusterDomain;
use crate::finservice::Settings;
use crate::meta::{self, FIELD_MANAGER};

pub mod finservice;
pub mod messagequeue;
pub mod rediscache;
pub mod rollout;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
pub(crate) mod mock;
#[cfg(test)]
mod scenarios;

/// Why a reconcile failed. Every variant is retried by [`error_policy`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The API server refused (or did not answer) an apply of `object` (`Kind/name`).
    #[error("applying {object}: {source}")]
    Apply {
        object: String,
        #[source]
        source: kube::Error,
    },
    /// `object` (`Kind/name`) exists and is not the resource's own: `holder` says whose.
    #[error(
        "{object} exists and is not this resource's ({holder}): the operator does not take \
         over an object it did not make; delete or rename it"
    )]
    NotOwned { object: String, holder: String },
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    #[error("{0} has no namespace")]
    MissingNamespace(String),
    #[error("building a patch: {0}")]
    Patch(#[from] serde_json::Error),
    /// The object changed after this reconcile read it, so its status was not written:
    /// the change has queued a reconcile that starts from the newer object.
    #[error("{0} changed since it was read; its status is computed again")]
    StaleStatus(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Names `object` (`Kind/name`) in the error of its apply.
pub fn applying(object: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Apply {
        object: object.into(),
        source,
    }
}

impl Error {
    /// Whether this is [`Error::StaleStatus`], also inside the finalizer's wrapping.
    pub fn is_stale_status(&self) -> bool {
        match self {
            Self::StaleStatus(_) => true,
            Self::Finalizer(e) => matches!(
                e.as_ref(),
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e)
                    if e.is_stale_status()
            ),
            _ => false,
        }
    }

    /// How the resource's status reports this error: what failed with the server's
    /// message, and whether a retry can get past it with nothing else changed.
    pub fn failure(&self) -> Failure {
        let (reason, what, source) = match self {
            Self::Apply { object, source } => {
                (Reason::APPLY_FAILED, format!("applying {object}: "), source)
            }
            Self::Kube(source) => (Reason::RECONCILE_FAILED, String::new(), source),
            Self::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => {
                    return e.failure();
                }
                finalizer::Error::AddFinalizer(source)
                | finalizer::Error::RemoveFinalizer(source) => (
                    Reason::RECONCILE_FAILED,
                    "writing the finalizer: ".to_owned(),
                    source,
                ),
                other => return permanent(other.to_string()),
            },
            Self::MissingNamespace(_) | Self::Patch(_) => return permanent(self.to_string()),
            // Stalled until someone removes the object; the retries then get past it.
            Self::NotOwned { .. } => {
                return Failure {
                    transient: false,
                    reason: Reason::NOT_OWNED,
                    message: self.to_string(),
                };
            }
            Self::StaleStatus(_) => {
                return Failure {
                    transient: true,
                    reason: Reason::RECONCILE_FAILED,
                    message: self.to_string(),
                };
            }
        };
        let (transient, message) = match source {
            kube::Error::Api(status) => (
                transient_answer(status.code, &status.message),
                if status.message.is_empty() {
                    source.to_string()
                } else {
                    status.message.clone()
                },
            ),
            // The answer could not be read or the request not built: a retry sends the same.
            kube::Error::SerdeError(_) | kube::Error::BuildRequest(_) => {
                (false, source.to_string())
            }
            // No answer (connection, TLS, timeout): the server may answer next time.
            _ => (true, source.to_string()),
        };
        Failure {
            transient,
            reason,
            message: format!("{what}{message}"),
        }
    }
}

fn permanent(message: String) -> Failure {
    Failure {
        transient: false,
        reason: Reason::RECONCILE_FAILED,
        message,
    }
}

/// Whether the API server may accept the same request later: a conflict, an expired
/// list, throttling, a timeout or an unavailable server may pass; the rest of 4xx
/// (invalid, forbidden, not found) needs a change first. A 500 usually passes, but not
/// the one server-side apply answers for an object it cannot type (a keyed list that
/// repeats a key): that one comes back every time.
pub fn transient_answer(code: u16, message: &str) -> bool {
    match code {
        408 | 409 | 410 | 429 => true,
        400..=499 => false,
        500 => !message.contains("failed to create typed"),
        _ => true,
    }
}

/// Where reconciles read the time: the wall clock, or a test's clock.
pub type Clock = Arc<dyn Fn() -> Time + Send + Sync>;

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub settings: Settings,
    /// The domain fully qualified Service names end in (RabbitMQ's node names).
    pub cluster_domain: ClusterDomain,
    pub clock: Clock,
}

impl Context {
    pub fn new(client: Client, settings: Settings, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            cluster_domain: ClusterDomain::default(),
            clock: Arc::new(now),
        }
    }

    /// The same context in a cluster whose DNS domain is `domain` (default `cluster.local`).
    pub fn with_cluster_domain(mut self, domain: ClusterDomain) -> Self {
        self.cluster_domain = domain;
        self
    }

    /// The same context reading time from `clock` (rollout timings in tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The time of this reconcile.
    pub fn now(&self) -> Time {
        (self.clock)()
    }

    /// Records an Event on `object`. Events are advisory: a failure to record one is
    /// logged and does not fail the reconcile that already did the work.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not record an event");
        }
    }
}

/// The wall clock, as Kubernetes writes times.
pub fn now() -> Time {
    Time(Timestamp::now())
}

/// How every write is made: server-side apply, our field manager, forced ownership.
pub fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// The namespace of a namespaced custom resource.
pub fn namespace<K: Resource>(object: &K) -> Result<String> {
    object
        .namespace()
        .ok_or_else(|| Error::MissingNamespace(object.name_any()))
}

/// A desired object next to what the cluster holds under its name.
pub struct Target<K> {
    api: Api<K>,
    pub desired: K,
    pub current: Option<K>,
}

impl<K> Target<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
{
    /// A desired object whose current state the caller already read.
    pub fn new(api: Api<K>, desired: K) -> Self {
        Self {
            api,
            desired,
            current: None,
        }
    }

    /// Reads the current object (one GET).
    pub async fn read(api: Api<K>, desired: K) -> Result<Self> {
        let current = api.get_opt(&desired.name_any()).await?;
        Ok(Self {
            api,
            desired,
            current,
        })
    }

    /// Whether applying would change anything.
    pub fn stale(&self) -> bool {
        meta::needs_apply(&self.desired, self.current.as_ref())
    }

    /// `Kind/name`, for events and logs.
    pub fn describe(&self) -> String {
        format!("{}/{}", K::kind(&()), self.desired.name_any())
    }

    /// Refuses to go on when an object of this name exists that is not the owner's
    /// ([`meta::held_by_another`]).
    pub fn ours(&self) -> Result<()> {
        match meta::held_by_another(&self.desired, self.current.as_ref()) {
            None => Ok(()),
            Some(holder) => Err(Error::NotOwned {
                object: self.describe(),
                holder,
            }),
        }
    }

    /// Applies the desired object if it is stale and [`Self::ours`]; returns the object as
    /// the cluster now has it, and whether a write happened.
    pub async fn sync(self) -> Result<(Option<K>, bool)> {
        self.ours()?;
        if !self.stale() {
            return Ok((self.current, false));
        }
        let applied = self
            .api
            .patch(
                &self.desired.name_any(),
                &apply_params(),
                &Patch::Apply(&self.desired),
            )
            .await
            .map_err(applying(self.describe()))?;
        Ok((Some(applied), true))
    }
}

/// Writes `status` through the status subresource when it differs from `current`.
/// Returns whether a write happened.
///
/// The write carries the resourceVersion of `object`, the one the status was computed
/// from: if the object changed since (a new spec, another writer), the API server
/// answers 409 Conflict and the next reconcile, woken by that change, computes again,
/// instead of a status about an older spec overwriting what a newer one said.
pub async fn apply_status<K, S>(
    api: &Api<K>,
    object: &K,
    current: Option<&S>,
    status: &S,
) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(false);
    }
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"resourceVersion": object.resource_version()},
        "status": status,
    });
    match api
        .patch_status(&object.name_any(), &apply_params(), &Patch::Apply(&body))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::StaleStatus(object.name_any())),
        Err(e) => Err(e.into()),
    }
}

/// Shows a failed reconcile on `object`: the status `status_after` makes of the
/// failure (the kind's pure `status_after_failure`), written when it differs from
/// `current`, and then a Warning Event with the same message. A failure already
/// reported (the same status) writes and records nothing. What goes wrong here is only
/// logged: the reconcile's own error is what gets retried.
pub async fn report_failure<K, S>(
    ctx: &Context,
    object: &K,
    current: Option<&S>,
    error: &Error,
    status_after: impl FnOnce(&Failure, &Time) -> S,
) where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
    S: Serialize + PartialEq,
{
    let Some(ns) = object.namespace() else {
        return;
    };
    // Not a failure: a newer version of the object is already queued.
    if error.is_stale_status() {
        return;
    }
    let failure = error.failure();
    let status = status_after(&failure, &ctx.now());
    if current == Some(&status) {
        return;
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    if let Err(e) = apply_status(&api, object, current, &status).await {
        tracing::warn!(error = %e, name = %object.name_any(), "could not report a failed reconcile in the status");
    }
    let action = if [Reason::APPLY_FAILED, Reason::NOT_OWNED].contains(&failure.reason) {
        "Apply"
    } else {
        "Reconcile"
    };
    ctx.event(
        object,
        EventType::Warning,
        failure.reason.as_str(),
        action,
        failure.message,
    )
    .await;
}

/// A random alphanumeric secret of `len` characters.
pub fn random_secret(len: usize) -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Failed reconciles are retried after a short pause; the watch brings back anything
/// that changes meanwhile.
pub fn error_policy<K: Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &Error,
    _ctx: Arc<Context>,
) -> Action {
    tracing::warn!(kind = %K::kind(&()), name = %object.name_any(), %error, "reconcile failed");
    metrics::counter!("finflow_operator_reconcile_errors_total", "kind" => K::kind(&()).to_string())
        .increment(1);
    Action::requeue(Duration::from_secs(15))
}

/// Times and counts a reconcile, for `/metrics`.
pub async fn measured<K: Resource<DynamicType = ()>, F: Future<Output = Result<Action>>>(
    fut: F,
) -> Result<Action> {
    let kind = K::kind(&()).to_string();
    let started = Instant::now();
    let result = fut.await;
    metrics::counter!("finflow_operator_reconciliations_total", "kind" => kind.clone())
        .increment(1);
    metrics::histogram!("finflow_operator_reconcile_duration_seconds", "kind" => kind)
        .record(started.elapsed());
    result
}

/// Reconciles one controller runs at once. Without a bound, one change that wakes every
/// FinService of a namespace (each reading the namespace's FinServices) starts them all
/// together, and a tenant with many large FinServices could take the operator's memory
/// for every namespace. Not fewer: a reconcile waits on its pods' probes (5 s each at
/// most), and a tenant whose apps hang them holds its slots meanwhile.
pub const RECONCILES_AT_ONCE: u16 = 16;

/// Runs the three controllers until `shutdown` resolves. `namespace` limits what they
/// watch; `None` watches every namespace.
pub async fn run<F>(ctx: Arc<Context>, namespace: Option<String>, shutdown: F)
where
    F: Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + Sync>>,
{
    let bounded = || kube::runtime::controller::Config::default().concurrency(RECONCILES_AT_ONCE);
    let finservices = finservice::controller(ctx.client.clone(), namespace.as_deref())
        .with_config(bounded())
        .graceful_shutdown_on(shutdown())
        .run(finservice::reconcile, error_policy, ctx.clone())
        .for_each(|r| log_outcome("finservice", r));
    let queues = messagequeue::controller(ctx.client.clone(), namespace.as_deref())
        .with_config(bounded())
        .graceful_shutdown_on(shutdown())
        .run(messagequeue::reconcile, error_policy, ctx.clone())
        .for_each(|r| log_outcome("messagequeue", r));
    let caches = rediscache::controller(ctx.client.clone(), namespace.as_deref())
        .with_config(bounded())
        .graceful_shutdown_on(shutdown())
        .run(rediscache::reconcile, error_policy, ctx.clone())
        .for_each(|r| log_outcome("rediscache", r));
    tokio::join!(finservices, queues, caches);
}

async fn log_outcome<K, E>(
    controller: &'static str,
    result: std::result::Result<(kube::runtime::reflector::ObjectRef<K>, Action), E>,
) where
    K: Resource,
    K::DynamicType: Debug,
    E: std::fmt::Display,
{
    match result {
        Ok((object, _)) => tracing::debug!(controller, object = %object.name, "reconciled"),
        Err(e) => tracing::debug!(controller, error = %e, "reconcile error"),
    }
}

/// An Api for `K` in `namespace`, or in every namespace.
pub fn scoped_api<K>(client: Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}

/// Watches only what the operator made, so the caches stay small.
pub fn owned_objects() -> kube::runtime::watcher::Config {
    kube::runtime::watcher::Config::default()
        .labels(&format!("{}={FIELD_MANAGER}", meta::MANAGED_BY_LABEL))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    #[tokio::test]
    async fn a_status_computed_from_an_older_resource_version_is_refused() {
        use crate::crd::{FinService, FinServiceStatus, Phase};
        let (fake, ctx) = fake::Fake::start(crate::finservice::fixtures::settings());
        let api: Api<FinService> = Api::namespaced(ctx.client.clone(), fake::NS);
        let fs: FinService = serde_json::from_value(serde_json::json!({
            "apiVersion": "finflow.dev/v1alpha1", "kind": "FinService",
            "metadata": {"name": "a"},
            "spec": {"image": "x", "version": "1", "sidecar": {"enabled": false}},
        }))
        .unwrap();
        let read = api.create(&Default::default(), &fs).await.unwrap();
        // Someone changes the spec after the reconcile read the object.
        api.patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"version": "2"}})),
        )
        .await
        .unwrap();
        let status = FinServiceStatus {
            phase: Some(Phase::Ready),
            ..FinServiceStatus::default()
        };
        let stale = apply_status(&api, &read, None, &status).await;
        assert!(
            matches!(&stale, Err(Error::StaleStatus(name)) if name == "a"),
            "{stale:?}"
        );
        assert_eq!(fake.finservice("a").status, None, "nothing written");
        let fresh = api.get("a").await.unwrap();
        assert!(apply_status(&api, &fresh, None, &status).await.unwrap());
        assert_eq!(fake.finservice("a").status, Some(status));

        // A stale status is not a failure to show: no condition, no Warning Event.
        let stale = fake.finservice("a");
        api.patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"version": "3"}})),
        )
        .await
        .unwrap();
        let error = apply_status(&api, &stale, None, &FinServiceStatus::default())
            .await
            .unwrap_err();
        assert!(error.is_stale_status());
        report_failure(&ctx, &stale, stale.status.as_ref(), &error, |f, now| {
            crate::finservice::status_after_failure(&stale, f, now)
        })
        .await;
        assert_eq!(fake.finservice("a").status, stale.status);
        assert!(fake.state().events.is_empty(), "{:?}", fake.state().events);
    }

    fn answer(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Status::failure(message, reason).with_code(code).boxed())
    }

    #[test]
    fn a_refused_apply_names_the_object_and_keeps_the_servers_message() {
        let error = applying("Deployment/a-blue")(answer(
            422,
            "Invalid",
            "Deployment.apps \"a-blue\" is invalid: spec.replicas: Invalid value: -1",
        ));
        assert_eq!(
            error.failure(),
            Failure {
                transient: false,
                reason: Reason::APPLY_FAILED,
                message: "applying Deployment/a-blue: Deployment.apps \"a-blue\" is invalid: \
                          spec.replicas: Invalid value: -1"
                    .into(),
            }
        );
    }

    #[test]
    fn a_repeated_key_refused_by_server_side_apply_stalls_though_it_is_a_500() {
        let message = "failed to create typed patch object (finflow/a-blue; apps/v1, \
                       Kind=Deployment): .spec.template.spec.containers[name=\"app\"].env: \
                       duplicate entries for key [name=\"DATABASE_URL\"]";
        let failure = applying("Deployment/a-blue")(answer(500, "", message)).failure();
        assert!(!failure.transient);
        assert!(failure.message.ends_with("[name=\"DATABASE_URL\"]"));
    }

    #[test]
    fn only_answers_a_retry_can_get_past_are_transient() {
        for code in [408, 409, 410, 429, 500, 502, 503, 504] {
            assert!(
                transient_answer(code, "etcdserver: request timed out"),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 405, 415, 422] {
            assert!(!transient_answer(code, "no"), "{code}");
        }
    }

    #[test]
    fn a_failed_read_is_a_reconcile_failure_and_an_unreachable_server_is_retried() {
        let forbidden = Error::Kube(answer(
            403,
            "Forbidden",
            "finservices.finflow.dev is forbidden",
        ))
        .failure();
        assert_eq!(
            (forbidden.transient, forbidden.reason),
            (false, Reason::RECONCILE_FAILED)
        );
        assert_eq!(forbidden.message, "finservices.finflow.dev is forbidden");
        let unreachable = Error::Kube(kube::Error::Service("connection refused".into())).failure();
        assert!(unreachable.transient);
        assert!(unreachable.message.contains("connection refused"));
    }

    #[test]
    fn an_object_someone_else_holds_stalls_the_resource_with_its_name_and_holder() {
        let failure = Error::NotOwned {
            object: "Service/ledger".into(),
            holder: "controlled by no one (made outside the operator)".into(),
        }
        .failure();
        assert_eq!(
            (failure.transient, failure.reason),
            (false, Reason::NOT_OWNED)
        );
        assert!(
            failure.message.starts_with(
                "Service/ledger exists and is not this resource's (controlled by no one"
            ),
            "{}",
            failure.message
        );
    }

    #[test]
    fn a_finalizer_wrapped_failure_reads_as_the_failure_inside() {
        let inner = applying("StatefulSet/events")(answer(422, "Invalid", "bad"));
        let wrapped = Error::Finalizer(Box::new(finalizer::Error::ApplyFailed(inner)));
        let failure = wrapped.failure();
        assert_eq!(failure.reason, Reason::APPLY_FAILED);
        assert_eq!(failure.message, "applying StatefulSet/events: bad");
    }
}
