//! Service A, auth: identity, sessions and the JWT issuer.
//!
//! The model:
//! - Users register with email, password (Argon2id), full name and phone; each has a
//!   `kyc_status` (changed only by E's decisions, newest wins: [`kyc`]) and an
//!   `account_tier`. A sign-up answers 202 with the same body whatever the address
//!   ([`api`]'s `register`): a new address gets an unverified account and a mailed
//!   token (`user.verification_requested`), each further sign-up of an unverified one
//!   a token of its own, a verified one is left alone and its owner told
//!   (`user.registration_repeated`). A token with its sign-up's password (`POST
//!   /api/v1/auth/verify`, [`verification`]) verifies the address, gives the account
//!   that sign-up's password, name and phone, and emits `user.created`; until then the
//!   account cannot log in, and login answers it as it answers a wrong password.
//! - Login returns a short-lived EdDSA access token and an opaque refresh token. Each
//!   refresh rotates the refresh token within its *family*; presenting a rotated token
//!   again revokes the family (a stolen token is useless once either party refreshes).
//!   Logout revokes the family. A user ends all their sessions by signing out
//!   everywhere, or by changing their password, which needs the current one
//!   ([`account`]), or by resetting a forgotten one with a token mailed to the
//!   account's address ([`reset`]).
//! - Signing keys are Ed25519, kept in a directory ([`keys`]); the JWKS at
//!   `/.well-known/jwks.json` publishes the active key and any retired key whose tokens
//!   may still be live. The directory is re-read every minute to pick up rotations.
//! - Services get tokens by client credentials (`POST /api/v1/auth/token`) with the
//!   role `service:<name>`; `/internal/users/{id}` answers them with a user's current
//!   state.
//! - Every account registers with the role `user`; staff roles are granted out of
//!   band by an operator ([`admin`]), never by what an account chose at sign-up.
//! - Login attempts are limited per client address, and failures per account and
//!   client address, in Redis ([`limits`]).

pub mod account;
pub mod admin;
pub mod api;
pub mod consumers;
pub mod domain;
pub mod keys;
pub mod kyc;
pub mod limits;
pub mod passwords;
pub mod reset;
pub mod tokens;
pub mod verification;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use finflow_contracts::catalog::{self, ServiceInfo};
use finflow_contracts::sealed::SealKey;
use finflow_platform::config::{Quiet, RedisConfig, Validate};
use finflow_platform::health::{self};
use finflow_platform::service::{Api, Service, Start};
use sha2::{Digest, Sha256};
use sqlx::migrate::Migrator;

/// Service A's migrations (`migrations/auth`).
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/auth");

/// Service A: what `finflow-auth` runs ([`Service`], below).
pub struct Auth;

/// Service A's own settings, beside what every service is configured with.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub redis: RedisConfig,
    /// `iss` of issued tokens; sidecars must expect the same value.
    #[arg(long, env = "JWT_ISSUER", default_value = "finflow-auth")]
    pub jwt_issuer: String,
    /// `aud` of issued tokens; sidecars must list it in their audiences.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "finflow")]
    pub jwt_audience: String,
    /// Lifetime of access tokens, in seconds.
    #[arg(long, env = "ACCESS_TOKEN_TTL_SECS", default_value_t = 900)]
    pub access_token_ttl_secs: u64,
    /// Lifetime of a refresh token, in seconds (each rotation starts a new one, up to
    /// the session's end: `SESSION_MAX_AGE_SECS`).
    #[arg(long, env = "REFRESH_TOKEN_TTL_SECS", default_value_t = 30 * 24 * 3600)]
    pub refresh_token_ttl_secs: u64,
    /// How long a session lasts from its login (or password change), however often it
    /// is refreshed, in seconds: then its owner logs in again. Without an end, a refresh
    /// token taken from a device its owner no longer uses, refreshed once a month, kept
    /// the account for good.
    #[arg(long, env = "SESSION_MAX_AGE_SECS", default_value_t = 30 * 24 * 3600)]
    pub session_max_age_secs: u64,
    /// Directory of Ed25519 signing keys, one `<unix-seconds>-<suffix>.pem` (PKCS#8) each.
    #[arg(long, env = "JWT_KEYS_DIR")]
    pub jwt_keys_dir: PathBuf,
    /// Generate a key when the directory has none (development; in a cluster keys come
    /// from a Secret).
    #[arg(long, env = "JWT_KEYS_GENERATE", default_value_t = false)]
    pub jwt_keys_generate: bool,
    /// With key generation on, rotate in a new key when the active one is this many days old.
    #[arg(long, env = "JWT_KEY_ROTATION_DAYS")]
    pub jwt_key_rotation_days: Option<u32>,
    /// Service clients for client credentials, `name=secret` pairs separated by commas.
    #[arg(
        long,
        env = "SERVICE_CLIENTS",
        hide_env_values = true,
        value_parser = Quiet(parse_service_clients)
    )]
    pub service_clients: Option<ServiceClients>,
    /// The secret (32 characters or more) A and D alone share: the verification and
    /// reset tokens A publishes for D to mail are sealed with it, so no other service
    /// reading the bus learns them.
    #[arg(long, env = "MAIL_SEAL_KEY", hide_env_values = true, value_parser = Quiet(SealKey::from_setting))]
    pub mail_seal_key: SealKey,
    /// Login attempts allowed per account from one client address per minute (a
    /// successful login there starts the count again), and password changes likewise
    /// (successes counted too: each costs two Argon2 runs).
    #[arg(long, env = "LOGIN_LIMIT_PER_ACCOUNT", default_value_t = 10)]
    pub login_limit_per_account: u32,
    /// Login attempts allowed per client address per minute; password changes and reset
    /// confirmations each have a count of their own at this limit.
    #[arg(long, env = "LOGIN_LIMIT_PER_ADDRESS", default_value_t = 50)]
    pub login_limit_per_address: u32,
    /// Sign-ups allowed per client address per minute. Each costs an Argon2 hash and
    /// sends a mail: unthrottled, a sign-up is both a CPU sink and a way to flood
    /// anyone's mailbox. Password reset requests, which may send a mail too, have a
    /// count of their own at this limit.
    #[arg(long, env = "REGISTER_LIMIT_PER_ADDRESS", default_value_t = 10)]
    pub register_limit_per_address: u32,
    /// Refreshes allowed per client address per minute. Each keeps a row for the
    /// token's lifetime (a used one is how a replay is caught); a client refreshes once
    /// per access token, every few minutes at most.
    #[arg(long, env = "REFRESH_LIMIT_PER_ADDRESS", default_value_t = 60)]
    pub refresh_limit_per_address: u32,
    /// Wrong client credentials (`POST /api/v1/auth/token`) allowed per client address
    /// per minute. The route is public, and a service token opens `/internal`: without
    /// a count, a secret was guessed as fast as the sidecar let requests through.
    /// Right secrets give their attempt back, so they do not add up; but past the limit
    /// the right secret waits too (it is not compared), as does an eleventh request at
    /// once from one address.
    #[arg(long, env = "SERVICE_TOKEN_FAILURES_PER_ADDRESS", default_value_t = 10)]
    pub service_token_failures_per_address: u32,
    /// Argon2 runs (logins, sign-ups, password changes) at once, each holding about
    /// 19 MiB: 4 keep them under 80 MiB. More wait their turn up to 5 seconds, then are
    /// answered 503.
    #[arg(long, env = "PASSWORD_HASHES_AT_ONCE", default_value = "4")]
    pub password_hashes_at_once: std::num::NonZeroUsize,
}

impl Validate for Settings {
    fn validate(&self, errors: &mut Vec<String>) {
        self.redis.validate(errors);
        if self.access_token_ttl_secs < 60 || self.access_token_ttl_secs > 3600 {
            errors.push("ACCESS_TOKEN_TTL_SECS must be between 60 and 3600".to_owned());
        }
        if self.refresh_token_ttl_secs < self.access_token_ttl_secs {
            errors.push(
                "REFRESH_TOKEN_TTL_SECS must not be shorter than ACCESS_TOKEN_TTL_SECS".to_owned(),
            );
        }
        if self.session_max_age_secs < self.access_token_ttl_secs {
            errors.push(
                "SESSION_MAX_AGE_SECS must not be shorter than ACCESS_TOKEN_TTL_SECS".to_owned(),
            );
        }
        if self.jwt_key_rotation_days.is_some() && !self.jwt_keys_generate {
            errors.push("JWT_KEY_ROTATION_DAYS needs JWT_KEYS_GENERATE=true".to_owned());
        }
    }
}

/// `SERVICE_CLIENTS`: each service client's name and the SHA-256 of its secret.
#[derive(Clone, Default)]
pub struct ServiceClients(pub HashMap<String, [u8; 32]>);

impl std::fmt::Debug for ServiceClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.0.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_tuple("ServiceClients").field(&names).finish()
    }
}

/// `SERVICE_CLIENTS`; its errors never repeat a secret.
fn parse_service_clients(raw: &str) -> Result<ServiceClients, String> {
    let mut clients = HashMap::new();
    for pair in raw.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, secret) = pair.split_once('=').ok_or("entries must be name=secret")?;
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
            return Err(format!("`{name}` is not a service name (a-z and -)"));
        }
        if secret.len() < 16 {
            return Err(format!(
                "the secret of `{name}` must be at least 16 characters"
            ));
        }
        clients.insert(name.to_owned(), Sha256::digest(secret.as_bytes()).into());
    }
    Ok(ServiceClients(clients))
}

/// How often the key directory is re-read for rotations.
const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(60);

impl Service for Auth {
    const INFO: &'static ServiceInfo = &catalog::AUTH;
    const MIGRATIONS: &'static Migrator = &MIGRATIONS;
    type Settings = Settings;

    /// Starts service A: its relay, the KYC consumer, the signing keys' reload and the
    /// accounts' API.
    async fn start(config: &Settings, start: &mut Start) -> anyhow::Result<Api> {
        let redis = config.redis.connect().await?;
        let rotation = config
            .jwt_key_rotation_days
            .map(|d| Duration::from_secs(u64::from(d) * 86_400));
        let load_keys = {
            let dir = config.jwt_keys_dir.clone();
            let generate = config.jwt_keys_generate;
            move || keys::Keyring::load_dir(&dir, generate, rotation, chrono::Utc::now())
        };
        let issuer = tokens::Issuer::new(
            config.jwt_issuer.clone(),
            config.jwt_audience.clone(),
            Duration::from_secs(config.access_token_ttl_secs),
            load_keys()?,
        );
        let settings = api::Settings {
            refresh_ttl: Duration::from_secs(config.refresh_token_ttl_secs),
            session_max_age: Duration::from_secs(config.session_max_age_secs),
            login_limit_per_account: config.login_limit_per_account,
            login_limit_per_address: config.login_limit_per_address,
            register_limit_per_address: config.register_limit_per_address,
            refresh_limit_per_address: config.refresh_limit_per_address,
            service_token_failures_per_address: config.service_token_failures_per_address,
            service_clients: config.service_clients.clone().unwrap_or_default().0,
            mail_seal: config.mail_seal_key.clone(),
        };

        start.relay();
        start.consume(consumers::kyc_queue(), consumers::KycUpdates);
        {
            let issuer = issuer.clone();
            let stop = start.stop_token();
            start.spawn(async move {
                while finflow_platform::service::tick(&stop, KEY_RELOAD_INTERVAL).await {
                    match tokio::task::spawn_blocking(load_keys.clone()).await {
                        Ok(Ok(ring)) => issuer.set_keyring(ring),
                        Ok(Err(e)) => tracing::error!(error = %e, "signing keys could not be reloaded; keeping the current ones"),
                        Err(e) => tracing::error!(error = %e, "key reload panicked"),
                    }
                }
            });
        }
        start.critical("redis", health::Redis(redis.clone()));
        let state = api::AppState {
            pool: start.pool.clone(),
            redis,
            issuer,
            passwords: passwords::Passwords::new(config.password_hashes_at_once, passwords::WAIT),
            settings: Arc::new(settings),
        };
        Ok(Api::of(api::routes(), state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use finflow_platform::testing::{self, Loaded};

    fn load(service_clients: &str) -> Loaded<Auth> {
        testing::load::<Auth>(&[
            "--redis-url=redis://localhost",
            "--jwt-keys-dir=/tmp/keys",
            "--mail-seal-key=a-secret-only-a-and-d-are-given-0123",
            "--service-clients",
            service_clients,
        ])
    }

    #[test]
    fn service_clients_are_parsed_once_into_hashed_secrets() {
        let config = load("payment=0123456789abcdef,wallet=fedcba9876543210").unwrap();
        let clients = config.settings.service_clients.unwrap().0;
        assert_eq!(clients.len(), 2);
        let expected: [u8; 32] = Sha256::digest(b"0123456789abcdef").into();
        assert_eq!(clients["payment"], expected);
    }

    #[test]
    fn password_hashes_run_at_least_one_at_a_time() {
        let config = load("payment=0123456789abcdef").unwrap();
        assert_eq!(config.settings.password_hashes_at_once.get(), 4);
        let zero = testing::load::<Auth>(&[
            "--redis-url=redis://localhost",
            "--jwt-keys-dir=/tmp/keys",
            "--mail-seal-key=a-secret-only-a-and-d-are-given-0123",
            "--password-hashes-at-once=0",
        ]);
        let Err(finflow_platform::config::LoadError::Clap(e)) = zero else {
            panic!("no password check could ever run");
        };
        assert!(e.to_string().contains("PASSWORD_HASHES_AT_ONCE"), "{e}");
    }

    #[test]
    fn a_short_mail_seal_key_is_refused_and_never_printed() {
        let short = testing::load::<Auth>(&[
            "--redis-url=redis://localhost",
            "--jwt-keys-dir=/tmp/keys",
            "--mail-seal-key=short-secret-of-31-characters!",
        ]);
        let Err(finflow_platform::config::LoadError::Clap(e)) = short else {
            panic!("a short secret was taken");
        };
        let message = e.to_string();
        assert!(message.contains("MAIL_SEAL_KEY"), "{message}");
        assert!(
            !message.contains("short-secret"),
            "the secret leaked: {message}"
        );
    }

    #[test]
    fn a_refused_service_client_is_named_and_its_secret_never_printed() {
        for (value, secret) in [
            ("payment=short-secret", "short-secret"),
            ("Payment=0123456789abcdef", "0123456789abcdef"),
            ("payment:0123456789abcdef", "0123456789abcdef"),
        ] {
            let Err(finflow_platform::config::LoadError::Clap(e)) = load(value) else {
                panic!("{value} was accepted");
            };
            let message = e.to_string();
            assert!(message.contains("SERVICE_CLIENTS"), "{message}");
            assert!(!message.contains(secret), "the secret leaked: {message}");
        }
    }
}
