//! Typed configuration: clap derive with `env`, secrets in [`SecretString`].
//!
//! A service's config struct flattens the pieces below it needs. [`load`] parses flags
//! and environment, then runs every [`Validate`] check and reports *all* the problems
//! at once before exiting, so an operator fixes a broken deployment in one round trip
//! instead of one crash loop per mistake.

use std::net::SocketAddr;

use clap::{Args, Parser, ValueEnum};
use secrecy::{ExposeSecret, SecretString};

/// Checks that clap cannot express (URL schemes, ranges, combinations).
pub trait Validate {
    /// Pushes one message per problem found.
    fn validate(&self, errors: &mut Vec<String>);
}

/// A comma-separated setting of `key=value` entries, each key and value trimmed and
/// given to `parse`; `form` names an entry's form in errors (`CODE=rate`). Empty entries
/// (a trailing comma, a variable set to "") are skipped. The errors quote the entry: not
/// for settings that hold secrets.
pub fn pairs<T>(
    text: &str,
    form: &str,
    parse: impl Fn(&str, &str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (key, value) = entry
                .split_once('=')
                .ok_or_else(|| format!("`{entry}` is not {form}"))?;
            parse(key.trim(), value.trim())
        })
        .collect()
}

/// Parses the command line and environment, validates, and exits with every error
/// listed if anything is wrong.
pub fn load<C: Parser + Validate>() -> C {
    exit_on_error(try_load_from(std::env::args_os()))
}

/// [`load`] for a command whose name and description are set here rather than in its
/// derive: the shared [`crate::service::Config`] is one type for every service.
pub fn load_as<C: Parser + Validate>(name: String, about: String) -> C {
    // clap names commands with static strings; this runs once per process.
    let name: &'static str = Box::leak(name.into_boxed_str());
    let command = C::command().name(name).about(about);
    exit_on_error(
        command
            .try_get_matches()
            .and_then(|mut matches| C::from_arg_matches_mut(&mut matches))
            .map_err(LoadError::Clap)
            .and_then(validated),
    )
}

fn exit_on_error<C>(loaded: Result<C, LoadError>) -> C {
    match loaded {
        Ok(config) => config,
        Err(LoadError::Clap(e)) => e.exit(),
        Err(LoadError::Invalid(errors)) => {
            eprintln!("configuration is invalid:");
            for e in &errors {
                eprintln!("  - {e}");
            }
            std::process::exit(2);
        }
    }
}

/// Why configuration could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// Missing or unparsable flags and variables (clap lists every missing one).
    Clap(clap::Error),
    /// Every failed [`Validate`] check.
    Invalid(Vec<String>),
}

/// [`load`] without exiting, for tests and embedding.
pub fn try_load_from<C, I, T>(args: I) -> Result<C, LoadError>
where
    C: Parser + Validate,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    validated(C::try_parse_from(args).map_err(LoadError::Clap)?)
}

fn validated<C: Validate>(config: C) -> Result<C, LoadError> {
    let mut errors = Vec::new();
    config.validate(&mut errors);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(LoadError::Invalid(errors))
    }
}

fn secret(s: &str) -> Result<SecretString, String> {
    if s.trim().is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(SecretString::from(s.to_owned()))
    }
}

fn check_scheme(errors: &mut Vec<String>, name: &str, url: &SecretString, schemes: &[&str]) {
    let url = url.expose_secret();
    let ok = schemes.iter().any(|s| {
        url.strip_prefix(s)
            .is_some_and(|rest| rest.starts_with("://"))
    });
    if !ok {
        // The URL may hold a password: name the variable, never echo the value.
        errors.push(format!("{name} must be a {} URL", schemes.join(" or ")));
    }
}

/// A clap value parser from `parse` whose error names the setting and the reason but
/// never repeats the value, which may hold a secret (clap's own "invalid value" message
/// quotes it). `parse`'s errors must not quote it either.
#[derive(Clone, Copy)]
pub struct Quiet<T>(pub fn(&str) -> Result<T, String>);

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for Quiet<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let setting = arg
            .and_then(|a| a.get_env())
            .map(|env| env.to_string_lossy().into_owned())
            .unwrap_or_else(|| "a setting".to_owned());
        let refused = |reason: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("{setting}: {reason}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| refused("not UTF-8".to_owned()))?;
        (self.0)(text).map_err(refused)
    }
}

/// An http(s) base URL with a host and no user name or password: where another service,
/// its sidecar or a collector is reached. Parsed once, by clap; it reads as the URL
/// without a trailing slash, so that a path appends to it as is. Its errors never quote
/// the URL (it may hold a password): give it to clap as `Quiet(HttpUrl::parse)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(String);

impl HttpUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = reqwest::Url::parse(text.trim()).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must be an http(s) URL".to_owned());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not hold a user name or password".to_owned());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("must be a base URL, without query or fragment".to_owned());
        }
        Ok(Self(url.as_str().trim_end_matches('/').to_owned()))
    }
}

impl std::ops::Deref for HttpUrl {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the app listens and how much it accepts.
#[derive(Debug, Clone, Args)]
pub struct HttpConfig {
    /// Address the app binds. In a pod this is 127.0.0.1: only the sidecar reaches it.
    #[arg(long = "listen", env = "LISTEN_ADDR")]
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes; larger bodies get 400 VALIDATION_ERROR.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,
}

impl Validate for HttpConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        if self.max_body_bytes == 0 {
            errors.push("MAX_BODY_BYTES must be greater than zero".to_owned());
        }
    }
}

/// The service's own PostgreSQL database.
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL URL of this service's database, e.g. postgres://user:pass@host/finflow_wallet.
    #[arg(long = "database-url", env = "DATABASE_URL", value_parser = secret, hide_env_values = true)]
    pub database_url: SecretString,
    /// Most connections the pool opens.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,
    /// Create the database if it is missing (local runs; in a cluster a Job owns this).
    #[arg(long, env = "DATABASE_CREATE", default_value_t = false)]
    pub database_create: bool,
}

impl Validate for DatabaseConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        check_scheme(
            errors,
            "DATABASE_URL",
            &self.database_url,
            &["postgres", "postgresql"],
        );
        if self.database_max_connections == 0 {
            errors.push("DATABASE_MAX_CONNECTIONS must be greater than zero".to_owned());
        }
    }
}

/// Calling other services as this one: A's address, which issues service tokens, and
/// this service's client credentials there.
#[derive(Debug, Clone, Args)]
pub struct ClientConfig {
    /// Base URL of service A (its sidecar).
    #[arg(long, env = "AUTH_URL", value_parser = Quiet(HttpUrl::parse))]
    pub auth_url: HttpUrl,
    /// This service's client id at A; the service's name when unset.
    #[arg(long, env = "SERVICE_CLIENT_ID")]
    pub service_client_id: Option<String>,
    /// This service's client secret at A.
    #[arg(long, env = "SERVICE_CLIENT_SECRET", hide_env_values = true)]
    pub service_client_secret: SecretString,
}

impl ClientConfig {
    /// The token source of service `name` (its client id unless one is configured).
    pub fn tokens(&self, name: &str, http: reqwest::Client) -> crate::client::TokenSource {
        crate::client::TokenSource::new(
            &self.auth_url,
            self.service_client_id.as_deref().unwrap_or(name),
            self.service_client_secret.clone(),
            http,
        )
    }
}

/// Redis.
#[derive(Debug, Clone, Args)]
pub struct RedisConfig {
    /// Redis URL, e.g. redis://127.0.0.1:6379/0 (rediss:// for TLS).
    #[arg(long = "redis-url", env = "REDIS_URL", value_parser = secret, hide_env_values = true)]
    pub redis_url: SecretString,
    /// PEM file of the CA certificates trusted for a `rediss://` server, in place of the
    /// system's roots (a server under a private CA).
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,
}

impl Validate for RedisConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        check_scheme(errors, "REDIS_URL", &self.redis_url, &["redis", "rediss"]);
    }
}

/// RabbitMQ.
#[derive(Debug, Clone, Args)]
pub struct AmqpConfig {
    /// AMQP URL, e.g. amqp://guest:guest@127.0.0.1:5672/%2f.
    #[arg(long = "amqp-url", env = "AMQP_URL", value_parser = secret, hide_env_values = true)]
    pub amqp_url: SecretString,
    /// Unacknowledged messages a consumer may hold at once.
    #[arg(long, env = "AMQP_PREFETCH", default_value_t = 16)]
    pub amqp_prefetch: u16,
    /// Most events the outbox relay puts in one message (a bundle of consecutive events
    /// of one type). 1 sends each alone, which consumers from before bundles need; raise
    /// it (to 64) once every service runs a version that reads bundles.
    #[arg(long, env = "EVENT_BUNDLE_MAX", default_value_t = 1)]
    pub event_bundle_max: u16,
    /// Milliseconds a consumer's batch waits after its first delivery for more (up to
    /// the prefetch), so that one transaction applies what several relay scans
    /// published: fewer commits for that much latency. 0 takes only what is already
    /// there. A queue a client may be waiting on is consumed at once whatever this says.
    #[arg(long, env = "AMQP_BATCH_LINGER_MS", default_value_t = 20)]
    pub amqp_batch_linger_ms: u64,
    /// PEM file of CA certificates trusted for an `amqps://` broker beside the system's
    /// roots (a broker under a private CA).
    #[arg(long, env = "AMQP_CA_FILE")]
    pub amqp_ca_file: Option<std::path::PathBuf>,
}

impl Validate for AmqpConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        check_scheme(errors, "AMQP_URL", &self.amqp_url, &["amqp", "amqps"]);
        if self.amqp_prefetch == 0 {
            errors.push("AMQP_PREFETCH must be greater than zero".to_owned());
        }
        if !(1..=64).contains(&self.event_bundle_max) {
            errors.push("EVENT_BUNDLE_MAX must be between 1 and 64".to_owned());
        }
        if self.amqp_batch_linger_ms > 1000 {
            errors.push("AMQP_BATCH_LINGER_MS must be at most 1000".to_owned());
        }
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

/// Logs and traces. Traces are exported over OTLP/HTTP only when the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set; the filter is the standard `RUST_LOG`.
#[derive(Debug, Clone, Args)]
pub struct TelemetryConfig {
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// OTLP/HTTP collector base URL, e.g. http://127.0.0.1:4318; unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_parser = Quiet(HttpUrl::parse))]
    pub otlp_endpoint: Option<HttpUrl>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Parser)]
    struct Sample {
        #[command(flatten)]
        http: HttpConfig,
        #[command(flatten)]
        db: DatabaseConfig,
        #[command(flatten)]
        redis: RedisConfig,
        #[command(flatten)]
        amqp: AmqpConfig,
    }

    impl Validate for Sample {
        fn validate(&self, errors: &mut Vec<String>) {
            self.http.validate(errors);
            self.db.validate(errors);
            self.redis.validate(errors);
            self.amqp.validate(errors);
        }
    }

    #[test]
    fn a_base_url_is_http_or_https_with_a_host_and_reads_without_its_trailing_slash() {
        assert_eq!(
            &*HttpUrl::parse(" http://wallet:8002/ ").unwrap(),
            "http://wallet:8002"
        );
        assert_eq!(
            &*HttpUrl::parse("https://gw.example/base/").unwrap(),
            "https://gw.example/base"
        );
        for (bad, why) in [
            ("wallet:8002", "http(s)"),
            ("/wallet", "not a URL"),
            ("http://", "not a URL"),
            ("ftp://wallet", "http(s)"),
            ("http://user:pw@wallet", "user name or password"),
            ("http://wallet/?a=1", "without query"),
        ] {
            let error = HttpUrl::parse(bad).expect_err(bad);
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn a_refused_base_url_is_named_by_its_setting_and_never_repeated() {
        #[derive(Debug, Parser)]
        struct Client {
            #[command(flatten)]
            client: ClientConfig,
        }
        let error = Client::try_parse_from([
            "svc",
            "--auth-url",
            "http://svc:hunter2@auth",
            "--service-client-secret",
            "s",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("AUTH_URL: must not hold a user name or password"),
            "{error}"
        );
        assert!(!error.contains("hunter2"), "the password leaked: {error}");
    }

    #[test]
    fn every_invalid_value_is_reported_at_once_without_echoing_secrets() {
        let err = try_load_from::<Sample, _, _>([
            "svc",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "mysql://root:hunter2@db/x",
            "--redis-url",
            "http://cache",
            "--amqp-url",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "--amqp-prefetch",
            "0",
        ])
        .unwrap_err();
        let LoadError::Invalid(errors) = err else {
            panic!("expected validation errors, got {err:?}")
        };
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors.iter().all(|e| !e.contains("hunter2")));
    }

    #[test]
    fn missing_required_settings_are_named_together() {
        let Err(LoadError::Clap(err)) = try_load_from::<Sample, _, _>(["svc"]) else {
            panic!("expected a clap error")
        };
        let text = err.to_string();
        for flag in ["--listen", "--database-url", "--redis-url", "--amqp-url"] {
            assert!(text.contains(flag), "{flag} not named in: {text}");
        }
    }

    #[test]
    fn a_valid_configuration_loads() {
        let config: Sample = try_load_from([
            "svc",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "postgres://localhost/x",
            "--redis-url",
            "redis://localhost",
            "--amqp-url",
            "amqp://localhost",
        ])
        .unwrap();
        assert_eq!(config.amqp.amqp_prefetch, 16);
        assert_eq!(
            config.db.database_url.expose_secret(),
            "postgres://localhost/x"
        );
    }
}
