//! The operator process: what runs on every replica, and what only the leader does.
//!
//! Every replica serves `/metrics` and `/healthz`, serves the webhook with the
//! certificate from the Secret (reloading it when it changes), and campaigns for the
//! Lease. The leader also keeps the certificate and the caBundle current and runs the
//! three controllers. Losing the Lease drops the controllers at once and ends the
//! process with an error, so the pod restarts as a clean candidate; a shutdown lets
//! them finish and only then releases the Lease.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::routing::get;
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use futures_util::Future;
use kube::Client;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;

use crate::certs;
use crate::config::{Backoff, Config, LogFormat, NativeSidecars, supports_native_sidecars};
use crate::controller::{self, Context};
use crate::finservice::Settings;
use crate::leader::{Elector, Timing};
use crate::webhook::{self, WebhookSettings};

/// Installs the log subscriber (`RUST_LOG` filters, default `info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    if let Err(e) = result {
        eprintln!("logging was already initialised: {e}");
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested");
}

async fn wait_true(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn wait_false(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| !*v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn health_router(metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
}

async fn serve_health(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    axum::serve(listener, health_router(metrics))
        .with_graceful_shutdown(async move { wait_true(&mut shutdown).await })
        .await?;
    Ok(())
}

/// Serves the webhook once the Secret holds a certificate; reloads it when it changes.
async fn serve_webhook(
    client: Client,
    config: Config,
    settings: WebhookSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let handle: Handle<SocketAddr> = Handle::new();
    let router = webhook::router(Arc::new(settings));
    let mut current: Option<certs::Bundle> = None;
    let mut tls: Option<RustlsConfig> = None;
    let mut server = None;
    loop {
        match certs::load(&client, &config.namespace).await {
            Ok(Some(bundle)) if current.as_ref() != Some(&bundle) => {
                let (cert, key) = (
                    bundle.cert_pem.clone().into_bytes(),
                    bundle.key_pem.clone().into_bytes(),
                );
                let loaded = match &tls {
                    Some(tls) => tls.reload_from_pem(cert, key).await.map(|()| None),
                    None => RustlsConfig::from_pem(cert, key).await.map(Some),
                };
                match loaded {
                    Ok(Some(fresh)) => {
                        tracing::info!(addr = %config.webhook_addr, "serving the injection webhook");
                        server = Some(tokio::spawn(webhook::serve(
                            config.webhook_addr,
                            router.clone(),
                            fresh.clone(),
                            handle.clone(),
                        )));
                        tls = Some(fresh);
                        current = Some(bundle);
                    }
                    Ok(None) => {
                        tracing::info!("reloaded the webhook certificate");
                        current = Some(bundle);
                    }
                    Err(e) => tracing::error!(error = %e, "the webhook certificate does not load"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not read the webhook certificate"),
        }
        let wait = if current.is_some() { 60 } else { 5 };
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(wait)) => {}
            () = wait_true(&mut shutdown) => break,
        }
    }
    handle.graceful_shutdown(Some(Duration::from_secs(10)));
    if let Some(server) = server
        && let Ok(Err(e)) = server.await
    {
        tracing::error!(error = %e, "webhook server failed");
    }
}

/// Leader only: certificate and caBundle, now and every hour (every minute after a
/// failure).
async fn keep_certificate(client: Client, config: Config, mut stop: watch::Receiver<bool>) {
    loop {
        let every = match certs::ensure(
            &client,
            &config.namespace,
            &config.webhook_service,
            &config.cluster_domain,
            k8s_openapi::jiff::Timestamp::now(),
        )
        .await
        {
            Ok(_) => 3600,
            Err(e) => {
                tracing::error!(error = %e, "could not ensure the webhook certificate");
                60
            }
        };
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(every)) => {}
            () = wait_true(&mut stop) => break,
        }
    }
}

/// Whether pods get native sidecars. `auto` asks the API server's version, retrying with
/// `backoff`; when no attempt gets an answer it is an error, not a guess: a wrong guess
/// would switch every pod template to the other form of sidecar and so restart every
/// pod, while the process exiting is retried by its restart.
async fn native_sidecars(
    client: &Client,
    setting: NativeSidecars,
    backoff: Backoff,
) -> anyhow::Result<bool> {
    match setting {
        NativeSidecars::On => Ok(true),
        NativeSidecars::Off => Ok(false),
        NativeSidecars::Auto => {
            let mut pauses = backoff.pauses();
            loop {
                match client.apiserver_version().await {
                    Ok(v) => return Ok(supports_native_sidecars(&v.major, &v.minor)),
                    Err(e) => {
                        let Some(pause) = pauses.next() else {
                            return Err(e).context(
                                "reading the API server version to detect native sidecars \
                                 (NATIVE_SIDECARS=on or off skips detection)",
                            );
                        };
                        tracing::warn!(error = %e, retry_in = ?pause, "could not read the API server version");
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }
}

/// How often metrics upkeep runs (the exporter's own default).
const METRICS_UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the operator until SIGTERM or until it loses the Lease (an error).
pub async fn run(config: Config) -> anyhow::Result<()> {
    // One crypto provider for every rustls user in the process (kube's client, the webhook).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    // Histogram samples (reconcile durations) are folded into buckets by a scrape or by
    // upkeep; a recorder installed this way gets no upkeep of its own, so unscraped
    // samples would pile up in memory.
    {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(METRICS_UPKEEP_EVERY);
            loop {
                every.tick().await;
                metrics.run_upkeep();
            }
        });
    }
    let client = Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let identity = config
        .identity
        .clone()
        .unwrap_or_else(|| format!("finflow-operator-{}", std::process::id()));
    let settings = Settings {
        sidecar_image: config.sidecar_image.clone(),
        native_sidecars: native_sidecars(&client, config.native_sidecars, Backoff::DETECTION)
            .await?,
    };
    tracing::info!(
        %identity,
        native_sidecars = settings.native_sidecars,
        cluster_domain = %config.cluster_domain,
        "starting"
    );

    let (shutdown_tx, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = shutdown_tx.send(true);
    });
    let health = tokio::spawn(serve_health(config.metrics_addr, metrics, shutdown.clone()));
    let webhook = config.webhook_enabled.then(|| {
        tokio::spawn(serve_webhook(
            client.clone(),
            config.clone(),
            WebhookSettings {
                sidecar_image: settings.sidecar_image.clone(),
                native_sidecars: settings.native_sidecars,
            },
            shutdown.clone(),
        ))
    });
    let (leading_tx, mut leading) = watch::channel(false);
    let elector = Elector::new(
        client.clone(),
        &config.namespace,
        // The one Lease the operator's ClusterRole lets it read and replace.
        crate::rbac::LEASE_NAME,
        &identity,
        Timing::new(Duration::from_secs(config.lease_duration_seconds)),
    );
    // The campaign ends only once the leader's duties have stopped, so the Lease is
    // released when nothing acts on it any more.
    let (end_campaign, campaign_ends) = watch::channel(false);
    let election = tokio::spawn(elector.run(leading_tx, campaign_ends));

    let mut stopping = shutdown.clone();
    let led = tokio::select! {
        () = wait_true(&mut leading) => true,
        () = wait_true(&mut stopping) => false,
    };
    let mut lost = false;
    if led {
        tracing::info!("leading: running the controllers");
        metrics::gauge!("finflow_operator_leader").set(1);
        // On shutdown the leader's duties stop gracefully: reconciles under way finish.
        let (stop_tx, stop) = watch::channel(false);
        {
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                wait_true(&mut shutdown).await;
                let _ = stop_tx.send(true);
            });
        }
        if config.webhook_enabled {
            tokio::spawn(keep_certificate(
                client.clone(),
                config.clone(),
                stop.clone(),
            ));
        }
        let ctx = Arc::new(
            Context::new(client.clone(), settings, Some(identity))
                .with_cluster_domain(config.cluster_domain.clone()),
        );
        let trigger = move || -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
            let mut stop = stop.clone();
            Box::pin(async move { wait_true(&mut stop).await })
        };
        let mut still_leading = leading.clone();
        lost = tokio::select! {
            () = controller::run(ctx, config.watch_namespace.clone(), trigger) => false,
            // Stepping down is not graceful: the controllers are dropped at once, reconciles
            // under way included, since another replica may lead from now on.
            () = wait_false(&mut still_leading) => true,
        };
        metrics::gauge!("finflow_operator_leader").set(0);
    }

    if lost {
        anyhow::bail!("lost the leader lease; exiting so the pod restarts as a candidate");
    }
    let mut stopping = shutdown.clone();
    wait_true(&mut stopping).await;
    // The elector releases the Lease on its way out, so a standby takes over at once.
    let _ = end_campaign.send(true);
    let _ = election.await;
    if let Some(webhook) = webhook {
        let _ = webhook.await;
    }
    health.await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use http::StatusCode;
    use serde_json::json;

    use super::*;
    use crate::controller::mock::{Expect, Reply, Verifier};
    use crate::finservice::fixtures::settings;

    fn version(minor: &str) -> Reply {
        Reply::Json(json!({
            "major": "1", "minor": minor, "gitVersion": format!("v1.{minor}.0"),
            "gitCommit": "", "gitTreeState": "clean", "buildDate": "", "goVersion": "",
            "compiler": "gc", "platform": "linux/amd64"
        }))
    }

    /// Pauses short enough for a test.
    fn quick(attempts: u32) -> Backoff {
        Backoff {
            attempts,
            first: Duration::from_millis(1),
            max: Duration::from_millis(4),
        }
    }

    #[tokio::test]
    async fn a_failed_version_call_is_retried_before_native_sidecars_are_decided() {
        let (ctx, verifier) = Verifier::context(settings());
        let server = verifier.run(vec![
            Expect::get("/version", Reply::Status(StatusCode::SERVICE_UNAVAILABLE)),
            Expect::get("/version", Reply::Status(StatusCode::INTERNAL_SERVER_ERROR)),
            Expect::get("/version", version("36")),
        ]);
        let native = native_sidecars(&ctx.client, NativeSidecars::Auto, quick(8)).await;
        assert!(native.unwrap());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_detection_that_never_gets_an_answer_fails_instead_of_guessing() {
        let (ctx, verifier) = Verifier::context(settings());
        let unavailable =
            || Expect::get("/version", Reply::Status(StatusCode::SERVICE_UNAVAILABLE));
        // Exactly the bounded number of attempts, then no further request.
        let server = verifier.run(vec![unavailable(), unavailable(), unavailable()]);
        let native = native_sidecars(&ctx.client, NativeSidecars::Auto, quick(3)).await;
        assert!(native.is_err(), "no guess: {native:?}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_set_mode_asks_nothing() {
        let (ctx, verifier) = Verifier::context(settings());
        let server = verifier.run(vec![]);
        assert!(
            native_sidecars(&ctx.client, NativeSidecars::On, quick(3))
                .await
                .unwrap()
        );
        assert!(
            !native_sidecars(&ctx.client, NativeSidecars::Off, quick(3))
                .await
                .unwrap()
        );
        server.await.unwrap();
    }
}
