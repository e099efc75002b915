//! Configuration: clap derive with `env` for every setting, checked as a whole.
//!
//! [`Config`] is what an operator writes (flags or environment). [`Config::prepare`]
//! turns it into [`Settings`], the parsed form the proxy runs on, and collects every
//! problem on the way; [`Validate`] reports that same list, so `config::load` prints
//! all mistakes at once and `run` can never start on a configuration `load` refused.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use finflow_contracts::sidecar::SidecarFile;
use finflow_platform::config::{TelemetryConfig, Validate};
use http::Uri;
use http::uri::{Authority, Scheme};
use secrecy::{ExposeSecret, SecretString};

use crate::headers::ClaimHeaders;
use crate::jwt::Policy;
use crate::paths::{PathPatterns, Service};

/// Paths that pass without a token unless configured otherwise.
pub const DEFAULT_PUBLIC_PATHS: &str = finflow_platform::openapi::PUBLIC_PATHS;

/// Which verified claim becomes which header, unless configured otherwise.
pub const DEFAULT_CLAIM_HEADERS: &str = "sub:x-user-id,email:x-user-email,roles:x-user-roles,\
kyc_status:x-kyc-status,tier:x-account-tier";

/// The shortest HS256 secret accepted, in bytes (RFC 7518 section 3.2).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// What the process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// In front of one app: validates tokens, forwards identity.
    Sidecar,
    /// The single entry point: routes by path prefix to each service's sidecar.
    Gateway,
}

/// FinFlow sidecar (JWT validation and identity headers in front of one app) or gateway.
#[derive(Debug, Clone, Parser)]
#[command(version)]
pub struct Config {
    /// Do not serve: wait until the sidecar beside this process answers on its admin
    /// port's `/live`, then exit 0 (exit 1 after a minute). Without native sidecars the
    /// operator runs this as the sidecar's postStart hook, which holds the app's start
    /// until the sidecar serves.
    #[arg(long)]
    pub wait_live: bool,

    /// `sidecar` (in front of one app) or `gateway` (the local entry point).
    #[arg(long, env = "MODE", value_enum, default_value_t = Mode::Sidecar)]
    pub mode: Mode,

    /// A JSON file with the JWT and path settings, as the operator mounts it
    /// (`sidecar.json`: `issuer`, `audiences`, `jwksUri`, `hs256`, `publicPaths`,
    /// `claimHeaders`). Issuer, audiences and JWKS URI set in the environment win; the
    /// file's non-empty path and claim lists replace the defaults.
    #[arg(long = "config-file", env = "SIDECAR_CONFIG")]
    pub config_file: Option<std::path::PathBuf>,

    /// Address the proxy binds: the service's public port (8001..8006, the gateway 8000).
    #[arg(long = "listen", env = "LISTEN_ADDR")]
    pub listen: SocketAddr,

    /// Address of the admin port serving /live, /ready and /metrics, e.g.
    /// 127.0.0.1:18001. Required in sidecar mode, optional in gateway mode.
    #[arg(long = "admin", env = "ADMIN_ADDR")]
    pub admin: Option<SocketAddr>,

    /// Sidecar mode: base URL of the one app behind this sidecar, e.g. http://127.0.0.1:9001.
    #[arg(long, env = "UPSTREAM")]
    pub upstream: Option<String>,

    /// How long an upstream may take to answer with its response head once it has the
    /// whole request, in milliseconds; after that the proxy answers 504. A client has as
    /// long to send its whole body; after that the proxy answers 408.
    #[arg(long, env = "UPSTREAM_TIMEOUT_MS", default_value_t = 30_000)]
    pub upstream_timeout_ms: u64,

    /// Sidecar mode: URL of the issuer's JWK set (Ed25519 keys, EdDSA tokens), e.g.
    /// http://127.0.0.1:9001/.well-known/jwks.json. Exclusive with JWT_HS256_SECRET.
    #[arg(long, env = "JWKS_URI")]
    pub jwks_uri: Option<String>,

    /// Sidecar mode: shared HS256 secret (at least 32 bytes) for simple setups.
    /// Exclusive with JWKS_URI.
    #[arg(long, env = "JWT_HS256_SECRET", value_parser = secret, hide_env_values = true)]
    pub jwt_hs256_secret: Option<SecretString>,

    /// Sidecar mode: the `iss` every token must carry.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Sidecar mode: accepted audiences, comma separated; a token's `aud` must name one.
    #[arg(long, env = "JWT_AUDIENCES", value_delimiter = ',')]
    pub jwt_audiences: Vec<String>,

    /// Clock skew allowed when checking `exp` and `nbf`, in seconds.
    #[arg(long, env = "JWT_LEEWAY_SECS", default_value_t = 30)]
    pub jwt_leeway_secs: u64,

    /// How often the JWK set is refetched in the background, in seconds.
    #[arg(long, env = "JWKS_REFRESH_SECS", default_value_t = 300)]
    pub jwks_refresh_secs: u64,

    /// Least time between two refetches triggered by tokens with an unknown `kid`, in seconds.
    #[arg(long, env = "JWKS_MIN_REFRESH_SECS", default_value_t = 5)]
    pub jwks_min_refresh_secs: u64,

    /// A file whose content changes when the token issuer goes live with another version
    /// (a promotion or a rollback of the auth service; the operator writes it into the
    /// sidecar's ConfigMap). When it changes, the JWK set is refetched at once and
    /// tokens verified so far are checked again.
    #[arg(long, env = "JWKS_EPOCH_FILE")]
    pub jwks_epoch_file: Option<std::path::PathBuf>,

    /// PEM certificates trusted for an https `JWKS_URI` besides the system's roots (a
    /// cluster's own CA).
    #[arg(long, env = "JWKS_CA_FILE")]
    pub jwks_ca_file: Option<std::path::PathBuf>,

    /// Paths that pass without a token, comma separated; an entry ending in `*` is a prefix.
    /// `/internal/*` is never public, and `/metrics` is never forwarded (admin port only).
    #[arg(long, env = "PUBLIC_PATHS", value_delimiter = ',', default_value = DEFAULT_PUBLIC_PATHS)]
    pub public_paths: Vec<String>,

    /// Which verified claim is forwarded in which header, as `claim:header` pairs, comma
    /// separated; array claims are joined with ",". Client copies of these headers are
    /// always removed.
    #[arg(long, env = "CLAIM_HEADERS", value_delimiter = ',', default_value = DEFAULT_CLAIM_HEADERS)]
    pub claim_headers: Vec<String>,

    /// Event loops serving connections, each a thread of its own with a single-threaded
    /// runtime (as nginx's workers): a connection stays on the loop that accepted it, so
    /// a request never wakes a second thread. 0 means one per CPU the process may use.
    #[arg(long, env = "WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,

    /// Proxies whose `X-Forwarded-For` is believed, as CIDRs, comma separated (the
    /// gateway's or the ingress's addresses). A request from one of them is from the
    /// rightmost forwarded address that is not a trusted proxy: that is the client
    /// `X-Real-IP` names and anonymous callers are limited by. From anyone else the
    /// connection's address is the client and its `X-Forwarded-For` is dropped.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,

    /// Sidecar mode: sustained requests per second allowed per user (anonymous: per client
    /// IP; service tokens are not limited).
    #[arg(long, env = "RATE_LIMIT_PER_SECOND", default_value_t = 50)]
    pub rate_limit_per_second: u32,

    /// Sidecar mode: requests a user may send at once above the sustained rate.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 100)]
    pub rate_limit_burst: u32,

    /// Gateway mode: where each service's sidecar is, as `name=base-url` (for example
    /// `wallet=http://127.0.0.1:8002`); repeat the flag, or separate entries with commas
    /// in the variable. The path prefixes each service answers are the catalog's
    /// (`docs/architecture.md`, Parts and ports); a service without an entry answers
    /// 503 `no_upstream`.
    #[arg(long = "route", env = "ROUTES", value_delimiter = ',')]
    pub routes: Vec<String>,

    /// After a shutdown signal, how long to keep serving while `/ready` answers 503, so
    /// Kubernetes takes the pod out of its Service before connections close, in seconds.
    #[arg(long, env = "SHUTDOWN_DRAIN_SECS", default_value_t = 0)]
    pub shutdown_drain_secs: u64,

    /// How long a client has to send a request's head, from its first byte (a new
    /// connection's first request: from the connection), in milliseconds. Slower
    /// connections are closed.
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// How long a kept-alive connection may wait for its next request, in seconds.
    /// Longer than the 60 s load balancers commonly keep idle connections to a backend,
    /// so that they close first and never reuse one this end is closing.
    #[arg(long, env = "IDLE_TIMEOUT_SECS", default_value_t = 75)]
    pub idle_timeout_secs: u64,

    /// Client connections open at once; more are answered 503 and closed.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    #[command(flatten)]
    pub telemetry: TelemetryConfig,
}

fn secret(s: &str) -> Result<SecretString, String> {
    if s.is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(SecretString::from(s.to_owned()))
    }
}

/// An upstream's scheme and authority; the request's path and query are appended as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    scheme: Scheme,
    authority: Authority,
}

impl BaseUrl {
    /// Parses `http://host:port` (a trailing `/` is allowed; a path or query is not).
    pub fn parse(name: &str, value: &str) -> Result<Self, String> {
        let uri: Uri = value
            .trim()
            .parse()
            .map_err(|_| format!("{name} is not a URL"))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(format!("{name} must be an http:// URL"));
        }
        let Some(authority) = uri.authority().cloned() else {
            return Err(format!("{name} must name a host"));
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "{name} must be a base URL without path or query (paths are never rewritten)"
            ));
        }
        Ok(Self {
            scheme: Scheme::HTTP,
            authority,
        })
    }

    /// Where connections to the upstream go.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// `http://host:port`, as the health checks want it.
    pub fn as_base(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

/// Where a sidecar gets its verification keys.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A JWK set of Ed25519 keys; only EdDSA tokens are accepted.
    Jwks {
        uri: Uri,
        refresh_every: Duration,
        min_refresh: Duration,
        /// Watched for the issuer's epoch ([`Config::jwks_epoch_file`]).
        epoch_file: Option<std::path::PathBuf>,
        /// Trusted besides the system's roots for an https URI.
        ca_file: Option<std::path::PathBuf>,
    },
    /// A shared secret; only HS256 tokens are accepted.
    Hs256(SecretString),
}

/// Sidecar mode, parsed.
#[derive(Debug, Clone)]
pub struct SidecarSettings {
    pub upstream: BaseUrl,
    pub keys: KeySource,
    pub policy: Policy,
    pub public_paths: PathPatterns,
    pub rate_per_second: NonZeroU32,
    pub rate_burst: NonZeroU32,
}

/// Gateway mode, parsed: the base URL of each configured service's sidecar.
#[derive(Debug, Clone, Default)]
pub struct GatewaySettings {
    pub routes: Vec<(Service, BaseUrl)>,
}

impl GatewaySettings {
    pub fn base(&self, service: Service) -> Option<&BaseUrl> {
        self.routes
            .iter()
            .find(|(s, _)| *s == service)
            .map(|(_, b)| b)
    }
}

/// What each mode runs on.
#[derive(Debug, Clone)]
pub enum ModeSettings {
    Sidecar(Box<SidecarSettings>),
    Gateway(GatewaySettings),
}

/// The configuration, parsed and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: ModeSettings,
    /// Traces are exported: each request gets a span of its own. Without export the
    /// proxy only makes the request a hop in the caller's trace ([`telemetry::hop_http`]),
    /// which costs far less than a span.
    ///
    /// [`telemetry::hop_http`]: finflow_platform::telemetry::hop_http
    pub spans: bool,
    pub claim_headers: ClaimHeaders,
    pub upstream_timeout: Duration,
    pub shutdown_drain: Duration,
    /// Event loops serving the proxy listener (`WORKER_THREADS`, 0 resolved to the CPUs).
    pub event_loops: usize,
    /// Proxies whose `X-Forwarded-For` is believed (`TRUSTED_PROXIES`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `HEADER_READ_TIMEOUT_MS`, `IDLE_TIMEOUT_SECS`, `MAX_CONNECTIONS`.
    pub limits: crate::connections::Limits,
}

impl Config {
    /// `SIDECAR_CONFIG`'s settings, when a file is named. Where the file and a flag
    /// both set something, the flag wins, except for the public paths and the claim
    /// headers: the FinService's own lists, which the operator writes there.
    fn config_file(&self) -> Result<Option<SidecarFile>, Vec<String>> {
        let Some(path) = &self.config_file else {
            return Ok(None);
        };
        let problem =
            |e: &dyn std::fmt::Display| vec![format!("SIDECAR_CONFIG {}: {e}", path.display())];
        let text = std::fs::read_to_string(path).map_err(|e| problem(&e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| problem(&e))
    }

    /// Parses every setting the mode uses (with `SIDECAR_CONFIG`'s), reporting every
    /// problem found.
    pub fn prepare(&self) -> Result<Settings, Vec<String>> {
        let file = self.config_file()?;
        let file = file.as_ref();
        let mut errors = Vec::new();
        let claim_headers = match file.filter(|f| !f.claim_headers.is_empty()) {
            Some(f) => ClaimHeaders::from_pairs(
                f.claim_headers
                    .iter()
                    .map(|(claim, header)| (claim.as_str(), header.as_str())),
            ),
            None => ClaimHeaders::parse(&self.claim_headers),
        };
        let claim_headers = claim_headers
            .map_err(|e| errors.extend(e.into_iter().map(|e| format!("CLAIM_HEADERS: {e}"))))
            .ok();
        let proxies = match file.filter(|_| blank(&self.trusted_proxies)) {
            Some(f) => &f.trusted_proxies,
            None => &self.trusted_proxies,
        };
        let trusted_proxies: Vec<ipnet::IpNet> = proxies
            .iter()
            .map(|entry| entry.trim())
            .filter(|entry| !entry.is_empty())
            .filter_map(|entry| {
                // A bare address is a network of one.
                let parsed = entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
                parsed
                    .map_err(|_| {
                        errors.push(format!(
                            "TRUSTED_PROXIES: {entry:?} is neither an address nor a CIDR"
                        ));
                    })
                    .ok()
            })
            .collect();
        for (name, value) in [
            ("UPSTREAM_TIMEOUT_MS", self.upstream_timeout_ms),
            ("HEADER_READ_TIMEOUT_MS", self.header_read_timeout_ms),
            ("IDLE_TIMEOUT_SECS", self.idle_timeout_secs),
        ] {
            if value == 0 {
                errors.push(format!("{name} must be greater than zero"));
            }
        }
        if self.max_connections == 0 {
            errors.push("MAX_CONNECTIONS must be greater than zero".to_owned());
        }
        let mode = match self.mode {
            Mode::Sidecar => self
                .sidecar(file, &mut errors)
                .map(|s| ModeSettings::Sidecar(Box::new(s))),
            Mode::Gateway => self.gateway(&mut errors).map(ModeSettings::Gateway),
        };
        match (mode, claim_headers) {
            (Some(mode), Some(claim_headers)) if errors.is_empty() => Ok(Settings {
                mode,
                spans: self.telemetry.otlp_endpoint.is_some(),
                claim_headers,
                upstream_timeout: Duration::from_millis(self.upstream_timeout_ms),
                shutdown_drain: Duration::from_secs(self.shutdown_drain_secs),
                trusted_proxies,
                limits: crate::connections::Limits {
                    header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
                    idle_timeout: Duration::from_secs(self.idle_timeout_secs),
                    max_connections: self.max_connections,
                },
                event_loops: match self.worker_threads {
                    0 => std::thread::available_parallelism().map_or(1, usize::from),
                    n => n,
                },
            }),
            _ => Err(errors),
        }
    }

    fn sidecar(
        &self,
        file: Option<&SidecarFile>,
        errors: &mut Vec<String>,
    ) -> Option<SidecarSettings> {
        let before = errors.len();
        if self.admin.is_none() {
            errors.push("ADMIN_ADDR is required in sidecar mode".to_owned());
        }
        let upstream = match &self.upstream {
            None => {
                errors.push("UPSTREAM is required in sidecar mode".to_owned());
                None
            }
            Some(u) => BaseUrl::parse("UPSTREAM", u)
                .map_err(|e| errors.push(e))
                .ok(),
        };
        let jwks_uri = self
            .jwks_uri
            .as_ref()
            .or(file.and_then(|f| f.jwks_uri.as_ref()));
        let keys = match (jwks_uri, &self.jwt_hs256_secret) {
            (Some(_), Some(_)) => {
                errors.push("set only one of JWKS_URI and JWT_HS256_SECRET".to_owned());
                None
            }
            (None, None) => {
                errors.push("one of JWKS_URI and JWT_HS256_SECRET is required".to_owned());
                None
            }
            (Some(uri), None) => self.jwks_source(uri, errors),
            (None, Some(secret)) => {
                if secret.expose_secret().len() < MIN_HS256_SECRET_BYTES {
                    // Name the variable, never echo the value.
                    errors.push(format!(
                        "JWT_HS256_SECRET must be at least {MIN_HS256_SECRET_BYTES} bytes"
                    ));
                    None
                } else {
                    Some(KeySource::Hs256(secret.clone()))
                }
            }
        };
        let issuer = self
            .jwt_issuer
            .as_deref()
            .or(file.and_then(|f| f.issuer.as_deref()));
        let issuer = match issuer.map(str::trim) {
            Some(i) if !i.is_empty() => Some(i.to_owned()),
            _ => {
                errors.push("JWT_ISSUER is required in sidecar mode".to_owned());
                None
            }
        };
        // Set at all (even to ""), the setting shadows the file, as JWT_ISSUER does.
        let audiences = match file.filter(|_| self.jwt_audiences.is_empty()) {
            Some(f) => &f.audiences,
            None => &self.jwt_audiences,
        };
        let audiences: Vec<String> = audiences
            .iter()
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        if audiences.is_empty() {
            errors.push("JWT_AUDIENCES is required in sidecar mode (comma separated)".to_owned());
        }
        let public_paths = match file.filter(|f| !f.public_paths.is_empty()) {
            Some(f) => &f.public_paths,
            None => &self.public_paths,
        };
        let public_paths = PathPatterns::parse(public_paths)
            .map_err(|e| errors.extend(e.into_iter().map(|e| format!("PUBLIC_PATHS: {e}"))))
            .ok();
        let rate_per_second = NonZeroU32::new(self.rate_limit_per_second);
        if rate_per_second.is_none() {
            errors.push("RATE_LIMIT_PER_SECOND must be greater than zero".to_owned());
        }
        let rate_burst = NonZeroU32::new(self.rate_limit_burst);
        if rate_burst.is_none() {
            errors.push("RATE_LIMIT_BURST must be greater than zero".to_owned());
        }
        if errors.len() > before {
            return None;
        }
        Some(SidecarSettings {
            upstream: upstream?,
            keys: keys?,
            policy: Policy {
                issuer: issuer?,
                audiences,
                leeway_secs: self.jwt_leeway_secs,
            },
            public_paths: public_paths?,
            rate_per_second: rate_per_second?,
            rate_burst: rate_burst?,
        })
    }

    fn jwks_source(&self, uri: &str, errors: &mut Vec<String>) -> Option<KeySource> {
        let parsed: Option<Uri> = uri.trim().parse().ok();
        let Some(uri) = parsed.filter(|u| {
            (u.scheme() == Some(&Scheme::HTTP) || u.scheme() == Some(&Scheme::HTTPS))
                && u.host().is_some()
        }) else {
            errors.push("JWKS_URI must be an http:// or https:// URL".to_owned());
            return None;
        };
        if self.jwks_refresh_secs == 0 {
            errors.push("JWKS_REFRESH_SECS must be greater than zero".to_owned());
            return None;
        }
        Some(KeySource::Jwks {
            uri,
            refresh_every: Duration::from_secs(self.jwks_refresh_secs),
            min_refresh: Duration::from_secs(self.jwks_min_refresh_secs),
            epoch_file: self.jwks_epoch_file.clone(),
            ca_file: self.jwks_ca_file.clone(),
        })
    }

    fn gateway(&self, errors: &mut Vec<String>) -> Option<GatewaySettings> {
        let before = errors.len();
        let mut routes: Vec<(Service, BaseUrl)> = Vec::new();
        for entry in self
            .routes
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
        {
            let Some((name, url)) = entry.split_once('=') else {
                errors.push(format!("ROUTES: `{entry}` is not name=base-url"));
                continue;
            };
            let name = name.trim();
            let Some(service) = finflow_contracts::catalog::named(name) else {
                let known: Vec<&str> = finflow_contracts::catalog::SERVICES
                    .iter()
                    .map(|s| s.name)
                    .collect();
                errors.push(format!(
                    "ROUTES: `{name}` is not a service ({})",
                    known.join(", ")
                ));
                continue;
            };
            if routes.iter().any(|(s, _)| *s == service) {
                errors.push(format!("ROUTES: {name} is routed twice"));
                continue;
            }
            match BaseUrl::parse(&format!("ROUTES: {name}"), url.trim()) {
                Ok(base) => routes.push((service, base)),
                Err(e) => errors.push(e),
            }
        }
        (errors.len() == before).then_some(GatewaySettings { routes })
    }
}

/// No entry, or only empty ones (a variable set to "").
fn blank(entries: &[String]) -> bool {
    entries.iter().all(|e| e.trim().is_empty())
}

impl Validate for Config {
    fn validate(&self, errors: &mut Vec<String>) {
        if let Err(found) = self.prepare() {
            errors.extend(found);
        }
    }
}

#[cfg(test)]
mod tests {
    use finflow_platform::config::{LoadError, try_load_from};

    use super::*;

    #[test]
    fn the_operators_sidecar_json_supplies_the_jwt_and_path_settings() {
        let path = std::env::temp_dir().join(format!("sidecar-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(
            &path,
            r#"{"issuer": "finflow-auth", "audiences": ["finflow"], "jwksUri": "http://auth:8001/.well-known/jwks.json",
                "hs256": false, "publicPaths": ["/health", "/api/v1/auth/*"], "claimHeaders": {"sub": "x-user-id"},
                "trustedProxies": ["10.42.0.0/16", "10.0.0.7"]}"#,
        )
        .unwrap();
        let config: Config = try_load_from([
            "finflow-sidecar",
            "--listen",
            "0.0.0.0:8001",
            "--admin",
            "0.0.0.0:15020",
            "--upstream",
            "http://127.0.0.1:9001",
            "--config-file",
            path.to_str().unwrap(),
        ])
        .unwrap_or_else(|e| panic!("{e:?}"));
        let settings = config.prepare().unwrap_or_else(|e| panic!("{e:?}"));
        let ModeSettings::Sidecar(sidecar) = &settings.mode else {
            panic!("sidecar mode expected")
        };
        assert_eq!(sidecar.policy.issuer, "finflow-auth");
        assert_eq!(sidecar.policy.audiences, ["finflow"]);
        assert!(matches!(&sidecar.keys, KeySource::Jwks { uri, .. } if uri.host() == Some("auth")));
        assert_eq!(
            sidecar.public_paths,
            PathPatterns::parse(["/health", "/api/v1/auth/*"]).unwrap()
        );
        assert_eq!(settings.claim_headers.pairs().len(), 1);
        assert_eq!(settings.claim_headers.pairs()[0].0, "sub");
        assert_eq!(settings.claim_headers.pairs()[0].1.as_str(), "x-user-id");
        assert_eq!(settings.trusted_proxies.len(), 2);
        assert_eq!(settings.trusted_proxies[1].to_string(), "10.0.0.7/32");

        // A flag wins over the file, except for the FinService's own lists.
        let flagged: Config = try_load_from([
            "finflow-sidecar",
            "--listen=0.0.0.0:8001",
            "--admin=0.0.0.0:15020",
            "--upstream=http://127.0.0.1:9001",
            "--jwt-audiences=flagged",
            "--public-paths=/flagged",
            "--trusted-proxies=192.168.0.0/16",
            "--config-file",
            path.to_str().unwrap(),
        ])
        .unwrap_or_else(|e| panic!("{e:?}"));
        let settings = flagged.prepare().unwrap_or_else(|e| panic!("{e:?}"));
        let ModeSettings::Sidecar(sidecar) = &settings.mode else {
            panic!("sidecar mode expected")
        };
        assert_eq!(sidecar.policy.audiences, ["flagged"]);
        assert_eq!(
            sidecar.public_paths,
            PathPatterns::parse(["/health", "/api/v1/auth/*"]).unwrap()
        );
        assert_eq!(settings.trusted_proxies.len(), 1);
        // Set, even to nothing, the audiences shadow the file's, as the issuer does.
        let emptied = try_load_from::<Config, _, _>([
            "finflow-sidecar",
            "--listen=0.0.0.0:8001",
            "--admin=0.0.0.0:15020",
            "--upstream=http://127.0.0.1:9001",
            "--jwt-audiences=",
            "--config-file",
            path.to_str().unwrap(),
        ]);
        let Err(LoadError::Invalid(refused)) = emptied else {
            panic!("an emptied JWT_AUDIENCES was accepted")
        };
        assert_eq!(
            refused,
            ["JWT_AUDIENCES is required in sidecar mode (comma separated)"]
        );
        std::fs::write(&path, "{not json").unwrap();
        assert!(config.prepare().is_err(), "a broken file is reported");
        std::fs::remove_file(&path).unwrap();
    }

    const SIDECAR: [&str; 9] = [
        "finflow-sidecar",
        "--listen=127.0.0.1:0",
        "--admin=127.0.0.1:0",
        "--upstream=http://127.0.0.1:9001",
        "--jwks-uri=http://127.0.0.1:9001/.well-known/jwks.json",
        "--jwt-issuer=finflow-auth",
        "--jwt-audiences=finflow",
        "--log-format=pretty",
        "--mode=sidecar",
    ];

    fn errors(args: &[&str]) -> Vec<String> {
        match try_load_from::<Config, _, _>(args.iter().copied()) {
            Err(LoadError::Invalid(errors)) => errors,
            Err(LoadError::Clap(e)) => panic!("clap refused the arguments: {e}"),
            Ok(_) => panic!("the configuration was accepted"),
        }
    }

    #[test]
    fn a_complete_sidecar_configuration_loads_with_the_documented_defaults() {
        let config: Config = try_load_from(SIDECAR).unwrap();
        let settings = config.prepare().unwrap();
        let ModeSettings::Sidecar(sidecar) = settings.mode else {
            panic!("sidecar mode expected")
        };
        assert_eq!(sidecar.rate_per_second.get(), 50);
        assert_eq!(sidecar.rate_burst.get(), 100);
        assert_eq!(sidecar.policy.leeway_secs, 30);
        assert_eq!(settings.upstream_timeout, Duration::from_secs(30));
        assert!(matches!(
            sidecar.keys,
            KeySource::Jwks { refresh_every, min_refresh, .. }
                if refresh_every == Duration::from_secs(300) && min_refresh == Duration::from_secs(5)
        ));
        assert!(crate::paths::is_public(
            "/api/v1/auth/login",
            &sidecar.public_paths
        ));
        assert_eq!(settings.claim_headers.pairs().len(), 5);
    }

    #[test]
    fn every_sidecar_mistake_is_reported_at_once_without_echoing_the_secret() {
        let found = errors(&[
            "finflow-sidecar",
            "--listen=127.0.0.1:0",
            "--upstream=ftp://app",
            "--jwks-uri=not a url",
            "--jwt-hs256-secret=short-secret-hunter2",
            "--claim-headers=sub:x-user-id,nocolon,email:bad header",
            "--public-paths=relative,/ok*",
            "--rate-limit-burst=0",
            "--trusted-proxies=10.0.0.0/8,10.0.0.1/33,127.0.0.1",
        ]);
        let expected = [
            "TRUSTED_PROXIES: \"10.0.0.1/33\"",
            "ADMIN_ADDR",
            "UPSTREAM must be an http",
            "only one of JWKS_URI and JWT_HS256_SECRET",
            "JWT_ISSUER",
            "JWT_AUDIENCES",
            "CLAIM_HEADERS: `nocolon`",
            "CLAIM_HEADERS: `email:bad header`",
            "PUBLIC_PATHS: `relative`",
            "RATE_LIMIT_BURST",
        ];
        for e in expected {
            assert!(
                found.iter().any(|f| f.contains(e)),
                "{e} missing from {found:#?}"
            );
        }
        assert_eq!(found.len(), expected.len(), "{found:#?}");
        assert!(found.iter().all(|f| !f.contains("hunter2")));
    }

    #[test]
    fn a_short_hs256_secret_and_a_bad_jwks_uri_are_refused() {
        let found = errors(&[
            "finflow-sidecar",
            "--listen=127.0.0.1:0",
            "--admin=127.0.0.1:0",
            "--upstream=http://127.0.0.1:9001",
            "--jwt-hs256-secret=0123456789",
            "--jwt-issuer=i",
            "--jwt-audiences=a",
        ]);
        assert_eq!(found, ["JWT_HS256_SECRET must be at least 32 bytes"]);

        let found = errors(&[
            "finflow-sidecar",
            "--listen=127.0.0.1:0",
            "--admin=127.0.0.1:0",
            "--upstream=http://127.0.0.1:9001/api",
            "--jwks-uri=ftp://auth/.well-known/jwks.json",
            "--jwt-issuer=i",
            "--jwt-audiences=a",
        ]);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("UPSTREAM must be a base URL"));
        assert!(found[1].contains("JWKS_URI must be an http:// or https:// URL"));
    }

    #[test]
    fn neither_key_source_is_an_error() {
        let found = errors(&[
            "finflow-sidecar",
            "--listen=127.0.0.1:0",
            "--admin=127.0.0.1:0",
            "--upstream=http://127.0.0.1:9001",
            "--jwt-issuer=i",
            "--jwt-audiences=a",
        ]);
        assert_eq!(found, ["one of JWKS_URI and JWT_HS256_SECRET is required"]);
    }

    #[test]
    fn the_gateway_needs_no_token_settings_and_checks_its_routes() {
        let config: Config = try_load_from([
            "finflow-sidecar",
            "--mode=gateway",
            "--listen=127.0.0.1:0",
            "--route=auth=http://127.0.0.1:8001",
            "--route=wallet=http://127.0.0.1:8002/",
        ])
        .unwrap();
        let ModeSettings::Gateway(gateway) = config.prepare().unwrap().mode else {
            panic!("gateway mode expected")
        };
        assert_eq!(gateway.routes.len(), 2);
        let service = |name| finflow_contracts::catalog::named(name).unwrap();
        assert!(gateway.base(service("payment")).is_none());
        assert_eq!(
            gateway.base(service("wallet")).unwrap().as_base(),
            "http://127.0.0.1:8002"
        );

        let found = errors(&[
            "finflow-sidecar",
            "--mode=gateway",
            "--listen=127.0.0.1:0",
            "--route=kyc=kyc:8005",
            "--route=ledger=http://127.0.0.1:8009",
            "--route=auth=http://127.0.0.1:8001",
            "--route=auth=http://127.0.0.1:8011",
            "--route=wallet",
        ]);
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(found[0].starts_with("ROUTES: kyc"), "{found:?}");
        assert!(
            found[1].starts_with("ROUTES: `ledger` is not a service (auth, wallet"),
            "{found:?}"
        );
        assert_eq!(found[2], "ROUTES: auth is routed twice");
        assert_eq!(found[3], "ROUTES: `wallet` is not name=base-url");
    }

    #[test]
    fn a_base_url_is_only_a_scheme_and_an_authority() {
        let base = BaseUrl::parse("UPSTREAM", "http://127.0.0.1:9001/").unwrap();
        assert_eq!(base.authority().as_str(), "127.0.0.1:9001");
        assert_eq!(base.as_base(), "http://127.0.0.1:9001");
        assert!(BaseUrl::parse("UPSTREAM", "http://127.0.0.1:9001/api").is_err());
        assert!(BaseUrl::parse("UPSTREAM", "https://127.0.0.1:9001").is_err());
    }
}
