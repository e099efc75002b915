//! Service D, notification: email, signed webhooks and in-app notifications from events.
//!
//! The model:
//! - One queue (`notification.events`) receives the events users hear about. For each,
//!   in one transaction with the consumer's dedupe record: learn contacts
//!   (`user.created`), render the event's [`templates`] message, store the in-app
//!   notification and queue email and webhook deliveries, per the user's preferences
//!   (everything on unless turned off). Contacts are learned from `user.created` only,
//!   which A emits once the address is verified.
//! - Mails about access to the account (`user.verification_requested` with A's token,
//!   `user.registration_repeated` for an address that has an account,
//!   `user.password_reset_requested` with A's token, `user.password_changed`) are
//!   transactional ([`consumer::TRANSACTIONAL`]): one email
//!   to the address in the event, no in-app notification or webhook, whatever the
//!   preferences.
//! - The [`delivery`] worker sends queued deliveries: email over SMTP (lettre), webhooks
//!   as JSON POSTs signed with HMAC-SHA256 over timestamp and body; failures retry with
//!   backoff and are given up after `DELIVERY_MAX_ATTEMPTS`. Each delivery is recorded
//!   (the delivery log), and a delivery that succeeded is never sent again.
//! - Users read in-app notifications, mark them read, set preferences, and register
//!   webhooks through the API.

pub mod api;
pub mod consumer;
pub mod delivery;
pub mod targets;
pub mod templates;

use std::time::Duration;

use clap::Args;
use finflow_contracts::catalog::{self, ServiceInfo};
use finflow_contracts::sealed::SealKey;
use finflow_platform::config::{Quiet, Validate};
use finflow_platform::service::{Api, Service, Start};
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use sqlx::migrate::Migrator;

/// Service D's migrations (`migrations/notification`).
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/notification");

/// Service D: what `finflow-notification` runs ([`Service`], below).
pub struct Notification;

/// Service D's own settings, beside what every service is configured with.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// SMTP server as smtp://host:port. Plain SMTP: in a cluster it is a relay next to
    /// the service (TLS to the outside world is the relay's job).
    #[arg(long, env = "SMTP_URL", default_value = "smtp://127.0.0.1:2525")]
    pub smtp_url: SmtpUrl,
    /// Sender of emails.
    #[arg(
        long,
        env = "MAIL_FROM",
        default_value = "FinFlow <no-reply@finflow.local>"
    )]
    pub mail_from: lettre::message::Mailbox,
    /// Attempts per delivery before it is given up.
    #[arg(long, env = "DELIVERY_MAX_ATTEMPTS", default_value_t = 8)]
    pub delivery_max_attempts: i32,
    /// First retry delay, in milliseconds (doubles each attempt, with jitter).
    #[arg(long, env = "DELIVERY_RETRY_BASE_MS", default_value_t = 1000)]
    pub delivery_retry_base_ms: u64,
    /// Milliseconds a sender waits, when nothing is due, before it looks again.
    #[arg(long, env = "DELIVERY_POLL_MS", default_value_t = 500)]
    pub delivery_poll_ms: u64,
    /// Senders working at once, for mails and as many again for webhooks (each claims
    /// up to 16 due deliveries and sends them together): a receiver that hangs holds up
    /// one place in one sender's batch, never a mail.
    #[arg(long, env = "DELIVERY_SENDERS", default_value_t = 8)]
    pub delivery_senders: usize,
    /// Milliseconds a whole SMTP conversation or webhook call may take before it
    /// counts as a failed attempt (a claimed delivery is its sender's for this long
    /// plus 30 s).
    #[arg(long, env = "DELIVERY_TIMEOUT_MS", default_value_t = 10_000)]
    pub delivery_timeout_ms: u64,
    /// Networks webhooks may reach although they are not public (comma-separated
    /// CIDRs or addresses). Empty by default: only the local platform and tests, whose
    /// receivers run on 127.0.0.1, name any.
    #[arg(long, env = "WEBHOOK_ALLOW_NETS", default_value = "")]
    pub webhook_allow_nets: targets::AllowedNets,
    /// PEM file of CA certificates trusted for https webhooks beside the system's roots,
    /// for receivers under a private CA. Unset: the system's roots alone.
    #[arg(long, env = "WEBHOOK_CA_FILE")]
    pub webhook_ca_file: Option<std::path::PathBuf>,
    /// The secret A and D alone share (A's `MAIL_SEAL_KEY`): the verification and reset
    /// tokens A publishes are sealed with it, and D opens them to mail them.
    #[arg(long, env = "MAIL_SEAL_KEY", hide_env_values = true, value_parser = Quiet(SealKey::from_setting))]
    pub mail_seal_key: SealKey,
    /// The key before `MAIL_SEAL_KEY`, while a new one is rolled out: D takes the new
    /// one (and keeps this), then A seals with it, then this is dropped once the queue
    /// holds nothing older.
    #[arg(long, env = "MAIL_SEAL_KEY_PREVIOUS", hide_env_values = true, value_parser = Quiet(SealKey::from_setting))]
    pub mail_seal_key_previous: Option<SealKey>,
}

impl Validate for Settings {
    fn validate(&self, errors: &mut Vec<String>) {
        if self.delivery_max_attempts < 1 {
            errors.push("DELIVERY_MAX_ATTEMPTS must be at least 1".to_owned());
        }
        if !(1..=256).contains(&self.delivery_senders) {
            errors.push("DELIVERY_SENDERS must be from 1 to 256".to_owned());
        }
        if !(1..=600_000).contains(&self.delivery_timeout_ms) {
            errors.push("DELIVERY_TIMEOUT_MS must be from 1 to 600000 (ten minutes)".to_owned());
        }
    }
}

/// The client webhooks are sent with: it connects only to addresses `policy` permits
/// (its resolver drops the others), follows no redirect (a receiver could otherwise
/// send the signed body to an address of its choosing) and ignores proxy settings in
/// the environment. An https receiver must present a certificate the system's roots or
/// `ca_file` vouch for.
fn webhook_client(
    policy: &targets::Policy,
    timeout: Duration,
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<reqwest::Client> {
    let mut client = finflow_platform::client::builder();
    if let Some(path) = ca_file {
        for cert in finflow_platform::client::pem_certificates("WEBHOOK_CA_FILE", path)
            .map_err(anyhow::Error::msg)?
        {
            client = client.add_root_certificate(reqwest::Certificate::from_der(&cert)?);
        }
    }
    Ok(client
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(policy.resolver())
        .build()?)
}

/// `SMTP_URL`: `smtp://host:port` (no user name or password: the relay is local).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpUrl {
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for SmtpUrl {
    type Err = &'static str;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let parts = || {
            let rest = url.strip_prefix("smtp://")?.trim_end_matches('/');
            let (host, port) = rest.rsplit_once(':')?;
            let port: u16 = port.parse().ok()?;
            (!host.is_empty() && !host.contains('@')).then(|| Self {
                host: host.to_owned(),
                port,
            })
        };
        parts().ok_or("must be smtp://host:port")
    }
}

impl Service for Notification {
    const INFO: &'static ServiceInfo = &catalog::NOTIFICATION;
    const MIGRATIONS: &'static Migrator = &MIGRATIONS;
    type Settings = Settings;

    /// Starts service D: its consumer, its senders and the notifications' API.
    async fn start(config: &Settings, start: &mut Start) -> anyhow::Result<Api> {
        let send_timeout = Duration::from_millis(config.delivery_timeout_ms);
        let smtp = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.smtp_url.host)
            .port(config.smtp_url.port)
            .timeout(Some(send_timeout))
            .build();
        let policy = targets::Policy::new(config.webhook_allow_nets.clone());
        start.consume(
            consumer::queue(),
            consumer::Notifier {
                seal: config.mail_seal_key.clone(),
                previous_seal: config.mail_seal_key_previous.clone(),
            },
        );
        let sender = delivery::Sender {
            pool: start.pool.clone(),
            smtp,
            mail_from: config.mail_from.clone(),
            http: webhook_client(&policy, send_timeout, config.webhook_ca_file.as_deref())?,
            policy: policy.clone(),
            max_attempts: config.delivery_max_attempts,
            retry_base: Duration::from_millis(config.delivery_retry_base_ms),
            retry_cap: Duration::from_secs(300),
            send_timeout,
        };
        start.spawn(sender.run(
            config.delivery_senders,
            Duration::from_millis(config.delivery_poll_ms),
            start.stop_token(),
        ));
        let state = api::AppState {
            pool: start.pool.clone(),
            policy,
        };
        Ok(Api::of(api::routes(), state))
    }
}

#[cfg(test)]
mod tests {
    use super::SmtpUrl;

    #[test]
    fn smtp_urls_name_a_host_and_port() {
        let url = |host: &str, port| SmtpUrl {
            host: host.to_owned(),
            port,
        };
        assert_eq!("smtp://127.0.0.1:2525".parse(), Ok(url("127.0.0.1", 2525)));
        assert_eq!("smtp://mail:25/".parse(), Ok(url("mail", 25)));
        assert!("smtps://mail:465".parse::<SmtpUrl>().is_err());
        assert!("smtp://mail".parse::<SmtpUrl>().is_err());
        assert!("smtp://user@mail:25".parse::<SmtpUrl>().is_err());
    }

    #[test]
    fn the_sender_and_the_relay_are_parsed_once_at_start() {
        let load = |flag: &str, value: &str| {
            finflow_platform::testing::load::<super::Notification>(&[
                flag,
                value,
                "--mail-seal-key=a-secret-only-a-and-d-are-given-0123",
            ])
        };
        let config = load("--mail-from", "Ops <ops@example.com>").unwrap();
        assert_eq!(
            config.settings.mail_from.email.to_string(),
            "ops@example.com"
        );
        for (flag, value) in [("--mail-from", "not a mailbox"), ("--smtp-url", "mail:25")] {
            let Err(finflow_platform::config::LoadError::Clap(e)) = load(flag, value) else {
                panic!("{flag} {value} was accepted");
            };
            assert!(e.to_string().contains(flag), "{e}");
        }
    }
}
