//! The operator's configuration: flags, each with an environment variable (the chart
//! sets the variables).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::certs::WEBHOOK_SERVICE;
use crate::dns::ClusterDomain;

/// Sidecar image used when a FinService names none (and by the webhook).
pub const DEFAULT_SIDECAR_IMAGE: &str =
    concat!("ghcr.io/finflow/sidecar:", env!("CARGO_PKG_VERSION"));

/// Reconciles FinService, MessageQueue and RedisCache; injects the FinFlow sidecar.
#[derive(Debug, Clone, Parser)]
#[command(version)]
pub struct Config {
    /// Namespace the operator runs in: its Lease and webhook certificate live there.
    #[arg(long, env = "POD_NAMESPACE", default_value = "finflow-system")]
    pub namespace: String,
    /// This replica's name in the leader election (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Watch only this namespace; every namespace when unset.
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Address of `/metrics` and `/healthz`.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Address of the admission webhook (TLS).
    #[arg(long, env = "WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    pub webhook_addr: SocketAddr,
    /// Service in front of the webhook, named in its certificate and configuration.
    #[arg(long, env = "WEBHOOK_SERVICE", default_value = WEBHOOK_SERVICE)]
    pub webhook_service: String,
    /// Serve the injection webhook (and manage its certificate).
    #[arg(long, env = "WEBHOOK_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub webhook_enabled: bool,
    /// Default sidecar image.
    #[arg(long, env = "SIDECAR_IMAGE", default_value = DEFAULT_SIDECAR_IMAGE)]
    pub sidecar_image: String,
    /// Native sidecars (init containers with restartPolicy Always): on, off, or auto
    /// (on when the API server is 1.29 or later).
    #[arg(long, env = "NATIVE_SIDECARS", value_enum, default_value_t = NativeSidecars::Auto)]
    pub native_sidecars: NativeSidecars,
    /// Seconds others wait on a Lease nobody renews; the leader renews every sixth of
    /// it and stops leading after two thirds of it without a renewal.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..))]
    pub lease_duration_seconds: u64,
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// The cluster's DNS domain (the kubelets' `--cluster-domain`): RabbitMQ nodes and
    /// the webhook certificate name Services by their fully qualified names.
    #[arg(long, env = "CLUSTER_DOMAIN", default_value_t = ClusterDomain::default())]
    pub cluster_domain: ClusterDomain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NativeSidecars {
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Whether an API server of this version runs native sidecars (on by default since 1.29).
pub fn supports_native_sidecars(major: &str, minor: &str) -> bool {
    let digits = |s: &str| {
        s.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .ok()
    };
    match (digits(major), digits(minor)) {
        (Some(1), Some(minor)) => minor >= 29,
        (Some(major), _) => major > 1,
        _ => false,
    }
}

/// Retries of a call at startup: how many attempts, and the pause before each retry,
/// doubling from `first` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub attempts: u32,
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Native-sidecar detection: eight attempts within about a minute.
    pub const DETECTION: Self = Self {
        attempts: 8,
        first: Duration::from_millis(500),
        max: Duration::from_secs(30),
    };

    /// The pauses between attempts, one fewer than the attempts.
    pub fn pauses(&self) -> impl Iterator<Item = Duration> + use<> {
        let (first, max) = (self.first, self.max);
        (0..self.attempts.saturating_sub(1))
            .map(move |i| first.saturating_mul(2_u32.saturating_pow(i)).min(max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_flags() {
        let c = Config::try_parse_from(["finflow-operator"]).unwrap();
        assert_eq!(c.native_sidecars, NativeSidecars::Auto);
        assert!(c.webhook_enabled);
        assert_eq!(c.metrics_addr.port(), 8080);
        assert_eq!(c.cluster_domain.as_str(), "cluster.local");
    }

    #[test]
    fn the_cluster_domain_is_validated_once_when_parsed() {
        let c = Config::try_parse_from(["finflow-operator", "--cluster-domain", "Corp.Example."])
            .unwrap();
        assert_eq!(c.cluster_domain.to_string(), "corp.example");
        for bad in [
            "",
            ".",
            "cluster..local",
            "-cluster.local",
            "cluster_local",
            "a b",
        ] {
            assert!(bad.parse::<ClusterDomain>().is_err(), "{bad:?}");
            assert!(
                Config::try_parse_from(["finflow-operator", "--cluster-domain", bad]).is_err(),
                "{bad:?}"
            );
        }
        assert!("k8s-1.internal".parse::<ClusterDomain>().is_ok());
    }

    #[test]
    fn detection_retries_a_bounded_number_of_times_with_doubling_pauses() {
        let pauses: Vec<Duration> = Backoff::DETECTION.pauses().collect();
        assert_eq!(pauses.len(), 7);
        assert_eq!(pauses[0], Duration::from_millis(500));
        assert_eq!(pauses[1], Duration::from_secs(1));
        assert_eq!(pauses[6], Duration::from_secs(30), "capped");
        assert!(pauses.iter().sum::<Duration>() < Duration::from_secs(90));
        let once = Backoff {
            attempts: 1,
            ..Backoff::DETECTION
        };
        assert_eq!(once.pauses().count(), 0);
    }

    #[test]
    fn native_sidecars_start_with_kubernetes_1_29() {
        assert!(supports_native_sidecars("1", "29"));
        assert!(supports_native_sidecars("1", "33+"));
        assert!(!supports_native_sidecars("1", "28"));
        assert!(!supports_native_sidecars("", ""));
    }
}
