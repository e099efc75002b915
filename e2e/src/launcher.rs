//! The local launcher: the whole platform on loopback, no cluster.
//!
//! [`Platform::start`] brings up the backing services (through `dev/backing-services`),
//! builds the binaries, then starts each service in dependency order: its app on
//! 127.0.0.1, its sidecar in front of it, and waits for the service's `/health` through
//! the sidecar before starting the next wave. The gateway comes last. Every process
//! logs to its own file under the log directory. [`Platform::stop`] sends SIGTERM to
//! everything in reverse order and waits.
//!
//! `dev/up` runs it with the fixed ports of the design (gateway 8000, sidecars 800x,
//! apps 900x); the e2e tests run it with ephemeral ports and databases of their own,
//! so they never collide with a platform a developer is running.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// Every consumer queue of the platform (each service's `QueueSpec`, as in reporting's
/// `DEFAULT_WATCHED_QUEUES`).
pub const CONSUMER_QUEUES: [&str; 6] = [
    "auth.kyc-updates",
    "payment.requests",
    "payment.aml-decisions",
    "kyc.payment-monitoring",
    "notification.events",
    "reporting.events",
];

/// The repository root (the launcher is compiled inside it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// JWT issuer and audience shared by A and every sidecar.
pub const JWT_ISSUER: &str = "finflow-auth";
pub const JWT_AUDIENCE: &str = "finflow";
/// The sidecar's default public paths (to extend for one service), as
/// `finflow_platform::openapi::PUBLIC_PATHS`: `/metrics` is read on the admin port only.
pub const SIDECAR_PUBLIC_PATHS: &str = finflow_platform::openapi::PUBLIC_PATHS;
/// The staff accounts `finflow-up` creates, with the role each is granted (by A's
/// `grant-role` command: no email carries a role by itself).
pub const STAFF: &[(&str, &str)] = &[
    ("ops@finflow.local", "ops"),
    // A reversal takes two operators: one asks, the other makes it.
    ("ops-second@finflow.local", "ops"),
    ("compliance@finflow.local", "compliance"),
];

/// One service of the platform as the launcher knows it.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Short name (`auth`): database `<prefix>_auth`, log files, gateway route variable.
    pub name: &'static str,
    /// The design's letter (A-F).
    pub id: char,
    /// Package and binary of the app.
    pub package: String,
    pub binary: String,
    /// The design's fixed ports.
    pub sidecar_port: u16,
    pub app_port: u16,
    /// Services that must be healthy first.
    pub depends_on: Vec<&'static str>,
    /// Also run a second process of the binary with `ROLE=worker` (its queue consumers),
    /// named `<name>-worker`, so it can be killed and restarted on its own.
    pub worker: bool,
}

/// The six services of the catalog, in its order (each after its dependencies).
pub fn services() -> Vec<ServiceSpec> {
    finflow_contracts::catalog::SERVICES
        .iter()
        .map(|s| ServiceSpec {
            name: s.name,
            id: s.module.to_ascii_uppercase().chars().next().unwrap_or('?'),
            package: format!("finflow-{}", s.name),
            binary: format!("finflow-{}", s.name),
            sidecar_port: s.sidecar_port,
            app_port: s.app_port,
            depends_on: s
                .depends_on
                .iter()
                .filter_map(|m| finflow_contracts::catalog::of_module(m))
                .map(|d| d.name)
                .collect(),
            // C's queue consumers run in a process of their own (`ROLE=worker`), as its
            // chart deploys them.
            worker: s.name == "payment",
        })
        .collect()
}

/// How ports are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// The design's ports: gateway 8000, sidecars 800x, apps 900x, sidecar admin 1800x.
    Fixed,
    /// Free ports picked at start (tests).
    Ephemeral,
}

/// Launcher options.
#[derive(Debug, Clone)]
pub struct Options {
    pub ports: Ports,
    /// Database names are `<prefix>_<service>`.
    pub database_prefix: String,
    /// Drop those databases on stop (tests).
    pub drop_databases: bool,
    /// Where each process writes `<name>.log`.
    pub log_dir: PathBuf,
    /// Where A keeps its signing keys.
    pub keys_dir: PathBuf,
    /// Run `cargo build` for the binaries first.
    pub build: bool,
    /// Build and run optimized binaries (benchmarks).
    pub release: bool,
    /// How long one service may take to become healthy.
    pub health_timeout: Duration,
    /// Put a switchable TCP proxy between the services and RabbitMQ, so a test can
    /// cut the broker off ([`Platform::broker_outage`]) without stopping it.
    pub amqp_proxy: bool,
    /// Extra environment for processes: (process name or `*-sidecar` for every sidecar,
    /// variable, value). Applied last, so it overrides the launcher's own settings.
    pub env_overrides: Vec<(String, String, String)>,
    /// Run on a RabbitMQ vhost of its own (created at start, deleted at stop), so
    /// platforms running side by side never consume each other's events.
    pub amqp_vhost: Option<String>,
    /// Processes run under a wrapper command: (process name, the wrapper's program and
    /// arguments, the binary coming last). The benchmarks count a proxy's instructions
    /// under valgrind this way.
    pub wrappers: Vec<(String, Vec<String>)>,
    /// Another build of `finflow-sidecar` to run as every sidecar and the gateway
    /// instead of the one the launcher builds: `dev/pgo-proxy`'s profile-guided build,
    /// or its instrumented build while it trains.
    pub proxy_binary: Option<PathBuf>,
}

impl Options {
    /// `dev/up`: fixed ports, databases `finflow_<service>`, state under `target/finflow`.
    pub fn local() -> Self {
        let state = repo_root().join("target/finflow");
        Self {
            ports: Ports::Fixed,
            database_prefix: "finflow".to_owned(),
            drop_databases: false,
            log_dir: state.join("logs"),
            keys_dir: state.join("keys"),
            build: true,
            release: false,
            health_timeout: Duration::from_secs(120),
            amqp_proxy: false,
            env_overrides: Vec::new(),
            amqp_vhost: None,
            wrappers: Vec::new(),
            proxy_binary: None,
        }
    }

    /// Tests: ephemeral ports, databases and files of their own.
    pub fn isolated() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let state = repo_root().join("target/e2e").join(&id[..12]);
        Self {
            ports: Ports::Ephemeral,
            database_prefix: format!("finflow_e2e_{}", &id[..12]),
            drop_databases: true,
            log_dir: state.join("logs"),
            keys_dir: state.join("keys"),
            build: true,
            release: false,
            health_timeout: Duration::from_secs(120),
            amqp_proxy: false,
            env_overrides: Vec::new(),
            amqp_vhost: Some(format!("finflow_e2e_{}", &id[..12])),
            wrappers: Vec::new(),
            proxy_binary: None,
        }
    }
}

/// URLs of the backing services, as `dev/backing-services` found or started them.
#[derive(Debug, Clone)]
pub struct Backing {
    pub postgres_url: String,
    pub redis_url: String,
    pub amqp_url: String,
}

/// Runs `dev/backing-services` with `args`.
async fn backing_services(args: &[&str]) -> anyhow::Result<()> {
    let root = repo_root();
    let status = Command::new(root.join("dev/backing-services"))
        .args(args)
        .current_dir(&root)
        .status()
        .await
        .context("running dev/backing-services")?;
    if !status.success() {
        bail!("dev/backing-services {} failed ({status})", args.join(" "));
    }
    Ok(())
}

impl Backing {
    /// Runs `dev/backing-services` (idempotent) and reads the env file it writes.
    pub async fn ensure() -> anyhow::Result<Self> {
        let root = repo_root();
        backing_services(&[]).await?;
        let text = tokio::fs::read_to_string(root.join("target/backing/env"))
            .await
            .context("reading target/backing/env")?;
        let vars: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('\'')))
            .collect();
        let get = |k: &str| {
            vars.get(k)
                .map(|v| (*v).to_owned())
                .with_context(|| format!("{k} missing from target/backing/env"))
        };
        Ok(Self {
            postgres_url: get("FINFLOW_POSTGRES_URL")?,
            redis_url: get("FINFLOW_REDIS_URL")?,
            amqp_url: get("FINFLOW_AMQP_URL")?,
        })
    }

    /// The URL of database `name` on the same server.
    pub fn database_url(&self, name: &str) -> String {
        let (base, query) = match self.postgres_url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (self.postgres_url.as_str(), None),
        };
        let server = base.rsplit_once('/').map_or(base, |(s, _)| s);
        match query {
            Some(q) => format!("{server}/{name}?{q}"),
            None => format!("{server}/{name}"),
        }
    }
}

struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    binary: PathBuf,
    env: Vec<(String, String)>,
}

/// A running service: where to reach it.
#[derive(Debug, Clone)]
pub struct RunningService {
    pub name: &'static str,
    pub id: char,
    pub app_url: String,
    pub sidecar_url: String,
    pub admin_url: String,
    pub database: String,
}

/// The running platform.
pub struct Platform {
    processes: Vec<Process>,
    pub services: Vec<RunningService>,
    pub gateway_url: String,
    pub gateway_admin_url: String,
    pub backing: Backing,
    pub options: Options,
    /// Client secrets of the services, by name (for service tokens in tests).
    pub service_secrets: BTreeMap<String, String>,
    /// The secret A and D share to seal the tokens A publishes for D (`MAIL_SEAL_KEY`).
    pub mail_seal_key: String,
    broker: Option<tokio::sync::watch::Sender<bool>>,
    /// Every mail service D sent: the platform's SMTP server is a sink, never the world.
    /// Sign-ups read their verification token here ([`crate::mail`], [`Platform::client`]).
    pub mailbox: finflow_platform::testing::Mailbox,
    smtp_port: u16,
}

/// Sets `key` in `env`, replacing any value it had.
fn set_env(env: &mut Vec<(String, String)>, key: &str, value: String) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_owned(), value));
}

/// A port no one listens on, for a process the launcher starts.
///
/// Not the kernel's `bind(0)`: that port comes from the ephemeral range, and between
/// our choosing it and the service binding it any outgoing connection on the machine
/// may take it (a platform that then fails to start, now and then). Ports below that
/// range are never handed out to outgoing connections; this process never hands out
/// one twice, so platforms started side by side by one test binary do not collide.
fn free_port() -> anyhow::Result<u16> {
    static HANDED_OUT: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let range = 10_000..ephemeral_start.max(10_001);
    let span = u32::from(range.end - range.start);
    let offset = rand::random::<u32>() % span;
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for i in 0..span {
        let Ok(step) = u16::try_from((offset + i) % span) else {
            continue;
        };
        let port = range.start + step;
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    bail!("no free port below the ephemeral range ({range:?})")
}

fn port(ports: Ports, fixed: u16) -> anyhow::Result<u16> {
    match ports {
        Ports::Fixed => Ok(fixed),
        Ports::Ephemeral => free_port(),
    }
}

/// The cargo profile a package is built with: `dev`, or for optimized builds the
/// proxy's own profile for the sidecar and `release` for everything else.
fn profile(package: &str, release: bool) -> &'static str {
    match (release, package == PROXY_PACKAGE) {
        (false, _) => "dev",
        (true, true) => "proxy",
        (true, false) => "release",
    }
}

/// The package (and binary) of the sidecar and gateway.
const PROXY_PACKAGE: &str = "finflow-sidecar";

fn binary_path(name: &str, release: bool) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo_root().join("target"), PathBuf::from);
    // Every binary has its package's name; `dev` builds land in `debug`.
    let dir = match profile(name, release) {
        "dev" => "debug",
        other => other,
    };
    target.join(dir).join(name)
}

/// Builds `packages`, one cargo run per profile they need.
async fn build(packages: &[&str], release: bool) -> anyhow::Result<()> {
    let mut profiles: Vec<&str> = packages.iter().map(|p| profile(p, release)).collect();
    profiles.sort_unstable();
    profiles.dedup();
    for wanted in profiles {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
        cmd.current_dir(repo_root())
            .args(["build", "--bins", "--profile", wanted]);
        for p in packages.iter().filter(|p| profile(p, release) == wanted) {
            cmd.args(["-p", p]);
        }
        // cargo's own progress bar shows on our stderr while it builds.
        let status = cmd.status().await.context("running cargo build")?;
        if !status.success() {
            bail!("cargo build --profile {wanted} failed ({status})");
        }
    }
    Ok(())
}

fn random_secret() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Platform {
    /// Starts everything; on failure stops what was started and says which process
    /// failed, with the end of its log.
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        if let Some(binary) = &options.proxy_binary
            && !binary.is_file()
        {
            bail!("the proxy binary {} does not exist", binary.display());
        }
        let backing = Backing::ensure().await?;
        let specs = services();
        if options.build {
            let mut packages: Vec<&str> = specs.iter().map(|s| s.package.as_str()).collect();
            packages.push(PROXY_PACKAGE);
            build(&packages, options.release).await?;
        }
        tokio::fs::create_dir_all(&options.log_dir).await?;
        let service_secrets: BTreeMap<String, String> =
            ["wallet", "payment", "notification", "kyc", "reporting"]
                .into_iter()
                .map(|s| (s.to_owned(), random_secret()))
                .collect();
        let mut backing = backing;
        if let Some(vhost) = &options.amqp_vhost {
            backing_services(&["vhost", "add", vhost]).await?;
            let server = backing
                .amqp_url
                .rsplit_once('/')
                .map_or(backing.amqp_url.as_str(), |(s, _)| s)
                .to_owned();
            backing.amqp_url = format!("{server}/{vhost}");
        }
        let broker = if options.amqp_proxy {
            let (url, switch) = start_amqp_proxy(&backing.amqp_url).await?;
            backing.amqp_url = url;
            Some(switch)
        } else {
            None
        };
        let (smtp_port, mailbox) = finflow_platform::testing::smtp_sink().await;
        let mut platform = Self {
            mailbox,
            smtp_port,
            broker,
            processes: Vec::new(),
            services: Vec::new(),
            gateway_url: String::new(),
            gateway_admin_url: String::new(),
            backing,
            options,
            service_secrets,
            mail_seal_key: format!("{}{}", random_secret(), random_secret()),
        };
        if let Err(e) = platform.start_all(&specs).await {
            platform.stop().await;
            return Err(e);
        }
        Ok(platform)
    }

    /// Grants `role` to the registered account `email`, as an operator does: A's
    /// `finflow-auth grant-role` against A's database.
    pub async fn grant_role(&self, email: &str, role: &str) -> anyhow::Result<()> {
        let auth = self
            .services
            .iter()
            .find(|s| s.name == "auth")
            .context("auth is not running")?;
        let output = Command::new(binary_path("finflow-auth", self.options.release))
            .args(["grant-role", email, role])
            .env("DATABASE_URL", self.backing.database_url(&auth.database))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .await
            .context("running finflow-auth grant-role")?;
        if !output.status.success() {
            bail!(
                "finflow-auth grant-role {email} {role}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// A client of the gateway that signs up as a person does, reading its
    /// verification mail from [`Platform::mailbox`].
    pub fn client(&self) -> crate::client::Client {
        crate::client::Client::new(&self.gateway_url).with_mailbox(self.mailbox.clone())
    }

    /// Creates the [`STAFF`] accounts with one new random password and grants each its
    /// role; the password. For `finflow-up`, whose dashboard wants an `ops` sign-in.
    /// Each sign-up is verified with the token D mails to the sink. An account kept from
    /// an earlier run, verified, is only granted its role again and keeps its password
    /// (signing it up again would mail its owner that someone tried, and an address is
    /// sent three sign-up mails an hour at most).
    pub async fn create_staff(&self) -> anyhow::Result<String> {
        let password = random_secret();
        let http = finflow_platform::client::default_client();
        for (email, role) in STAFF {
            if self.grant_role(email, role).await.is_ok() {
                continue;
            }
            let since = crate::mail::mark(&self.mailbox);
            let answer = http
                .post(format!("{}/api/v1/auth/register", self.gateway_url))
                .json(&serde_json::json!({"email": email, "password": password,
                    "full_name": "FinFlow Staff", "phone": "+14155550123"}))
                .send()
                .await
                .with_context(|| format!("registering {email}"))?;
            if answer.status() != reqwest::StatusCode::ACCEPTED {
                bail!(
                    "registering {email}: {}",
                    answer.text().await.unwrap_or_default()
                );
            }
            // The first mail to a staff address after its sign-up is the answer to it.
            let mail = crate::mail::next_mail_to(
                &self.mailbox,
                email,
                since,
                crate::mail::MAIL_PATIENCE,
                |_| true,
            )
            .await
            .with_context(|| {
                format!(
                    "no mail to {email} within {:?} of signing it up (see the notification log)",
                    crate::mail::MAIL_PATIENCE
                )
            })?;
            if let Some(token) = crate::mail::mailed_token(&mail) {
                let verified = http
                    .post(format!("{}/api/v1/auth/verify", self.gateway_url))
                    .json(&serde_json::json!({ "token": token, "password": password }))
                    .send()
                    .await
                    .with_context(|| format!("verifying {email}"))?;
                if !verified.status().is_success() {
                    bail!(
                        "verifying {email}: {}",
                        verified.text().await.unwrap_or_default()
                    );
                }
            }
            self.grant_role(email, role).await?;
        }
        Ok(password)
    }

    /// Registers `email` through the gateway (verifying it with the mailed token),
    /// grants it `role` and logs it in.
    pub async fn staff_user(
        &self,
        client: &crate::client::Client,
        email: &str,
        role: &str,
    ) -> anyhow::Result<crate::client::User> {
        let id = client
            .with_mailbox(self.mailbox.clone())
            .register(email)
            .await;
        self.grant_role(email, role).await?;
        Ok(client.sign_in(email, &id).await)
    }

    async fn start_all(&mut self, specs: &[ServiceSpec]) -> anyhow::Result<()> {
        let ports = self.options.ports;
        let mut jwks_uri = String::new();
        for spec in specs {
            let app_port = port(ports, spec.app_port)?;
            let sidecar_port = port(ports, spec.sidecar_port)?;
            let admin_port = port(ports, 10_000 + spec.sidecar_port)?;
            let database = format!("{}_{}", self.options.database_prefix, spec.name);
            let app_url = format!("http://127.0.0.1:{app_port}");
            if spec.name == "auth" {
                jwks_uri = format!("{app_url}/.well-known/jwks.json");
            }
            let mut env = vec![
                ("LISTEN_ADDR".to_owned(), format!("127.0.0.1:{app_port}")),
                (
                    "DATABASE_URL".to_owned(),
                    self.backing.database_url(&database),
                ),
                ("DATABASE_CREATE".to_owned(), "true".to_owned()),
                ("REDIS_URL".to_owned(), self.backing.redis_url.clone()),
                ("AMQP_URL".to_owned(), self.backing.amqp_url.clone()),
                // Every service here is this version: all of them read bundles.
                ("EVENT_BUNDLE_MAX".to_owned(), "64".to_owned()),
                ("LOG_FORMAT".to_owned(), "pretty".to_owned()),
            ];
            env.extend(self.service_env(spec));
            let mut app_env = env.clone();
            if spec.worker {
                app_env.push(("ROLE".to_owned(), "api".to_owned()));
            }
            self.spawn(
                spec.name,
                &binary_path(&spec.binary, self.options.release),
                &app_env,
            )?;
            let mut sidecar_env = vec![
                ("MODE".to_owned(), "sidecar".to_owned()),
                (
                    "LISTEN_ADDR".to_owned(),
                    format!("127.0.0.1:{sidecar_port}"),
                ),
                ("ADMIN_ADDR".to_owned(), format!("127.0.0.1:{admin_port}")),
                ("UPSTREAM".to_owned(), app_url.clone()),
                ("JWKS_URI".to_owned(), jwks_uri.clone()),
                ("JWT_ISSUER".to_owned(), JWT_ISSUER.to_owned()),
                ("JWT_AUDIENCES".to_owned(), JWT_AUDIENCE.to_owned()),
                ("LOG_FORMAT".to_owned(), "pretty".to_owned()),
                // The gateway runs on loopback: its X-Forwarded-For names the client, so
                // per-address limits (anonymous callers here, logins at A) see clients,
                // not the gateway.
                ("TRUSTED_PROXIES".to_owned(), "127.0.0.1/32".to_owned()),
            ];
            if spec.name == "reporting" {
                // The dashboard page is public; the reports it reads are not.
                sidecar_env.push((
                    "PUBLIC_PATHS".to_owned(),
                    format!("{SIDECAR_PUBLIC_PATHS},/dashboard,/dashboard/app.js"),
                ));
            }
            self.spawn(
                &format!("{}-sidecar", spec.name),
                &self.proxy_binary(),
                &sidecar_env,
            )?;
            let service = RunningService {
                name: spec.name,
                id: spec.id,
                app_url,
                sidecar_url: format!("http://127.0.0.1:{sidecar_port}"),
                admin_url: format!("http://127.0.0.1:{admin_port}"),
                database,
            };
            eprintln!("  waiting for {} ({}) ...", spec.name, spec.id);
            let started = self.processes.len();
            self.wait_healthy(
                &format!("{}/health", service.sidecar_url),
                &[started - 2, started - 1],
            )
            .await?;
            if spec.worker {
                let worker_port = port(ports, spec.app_port + 100)?;
                let mut worker_env = env.clone();
                for (k, v) in &mut worker_env {
                    if k == "LISTEN_ADDR" {
                        *v = format!("127.0.0.1:{worker_port}");
                    }
                }
                worker_env.push(("ROLE".to_owned(), "worker".to_owned()));
                self.spawn(
                    &format!("{}-worker", spec.name),
                    &binary_path(&spec.binary, self.options.release),
                    &worker_env,
                )?;
                let worker = self.processes.len() - 1;
                self.wait_healthy(&format!("http://127.0.0.1:{worker_port}/health"), &[worker])
                    .await?;
            }
            self.services.push(service);
        }

        let gateway_port = port(ports, 8000)?;
        let gateway_admin = port(ports, 18_000)?;
        let mut env = vec![
            ("MODE".to_owned(), "gateway".to_owned()),
            (
                "LISTEN_ADDR".to_owned(),
                format!("127.0.0.1:{gateway_port}"),
            ),
            (
                "ADMIN_ADDR".to_owned(),
                format!("127.0.0.1:{gateway_admin}"),
            ),
            ("JWKS_URI".to_owned(), jwks_uri),
            ("JWT_ISSUER".to_owned(), JWT_ISSUER.to_owned()),
            ("JWT_AUDIENCES".to_owned(), JWT_AUDIENCE.to_owned()),
            ("LOG_FORMAT".to_owned(), "pretty".to_owned()),
        ];
        let routes: Vec<String> = self
            .services
            .iter()
            .map(|s| format!("{}={}", s.name, s.sidecar_url))
            .collect();
        env.push(("ROUTES".to_owned(), routes.join(",")));
        self.spawn("gateway", &self.proxy_binary(), &env)?;
        self.gateway_url = format!("http://127.0.0.1:{gateway_port}");
        self.gateway_admin_url = format!("http://127.0.0.1:{gateway_admin}");
        eprintln!("  waiting for the gateway ...");
        let gateway = self.processes.len() - 1;
        self.wait_healthy(&format!("{}/live", self.gateway_admin_url), &[gateway])
            .await?;
        self.wait_consumers().await
    }

    /// Waits until every consumer queue has a consumer. A service answers `/health`
    /// before its consumer has declared and bound its queue, and an event published
    /// before the binding is unroutable: lost to that consumer. A consumer subscribes
    /// only after binding, so one consumer per queue means every queue is bound.
    async fn wait_consumers(&self) -> anyhow::Result<()> {
        let stop = tokio_util::sync::CancellationToken::new();
        let queues: Vec<String> = CONSUMER_QUEUES.iter().map(|q| (*q).to_owned()).collect();
        let missing = std::sync::Arc::new(std::sync::Mutex::new(queues.clone()));
        let (done, seen) = (stop.clone(), std::sync::Arc::clone(&missing));
        let watching = finflow_platform::events::depth::watch(
            finflow_platform::events::Broker::new(self.backing.amqp_url.clone().into()),
            "finflow-launcher".to_owned(),
            queues,
            Duration::from_millis(100),
            stop.clone(),
            move |round| {
                let mut missing = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                missing.retain(|q| !round.iter().any(|d| d.queue == *q && d.consumers > 0));
                if missing.is_empty() {
                    done.cancel();
                }
            },
        );
        if tokio::time::timeout(Duration::from_secs(60), watching)
            .await
            .is_err()
        {
            let missing = missing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .join(", ");
            bail!("no consumer on {missing} after 60 s (see the service logs)");
        }
        Ok(())
    }

    /// Per-service settings beyond the common ones.
    fn service_env(&self, spec: &ServiceSpec) -> Vec<(String, String)> {
        match spec.name {
            "auth" => vec![
                ("JWT_ISSUER".to_owned(), JWT_ISSUER.to_owned()),
                ("JWT_AUDIENCE".to_owned(), JWT_AUDIENCE.to_owned()),
                (
                    "JWT_KEYS_DIR".to_owned(),
                    self.options.keys_dir.display().to_string(),
                ),
                ("JWT_KEYS_GENERATE".to_owned(), "true".to_owned()),
                (
                    "SERVICE_CLIENTS".to_owned(),
                    self.service_secrets
                        .iter()
                        .map(|(name, secret)| format!("{name}={secret}"))
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                ("MAIL_SEAL_KEY".to_owned(), self.mail_seal_key.clone()),
                // Locally every client is 127.0.0.1: a per-address limit would be per machine.
                ("LOGIN_LIMIT_PER_ADDRESS".to_owned(), "10000".to_owned()),
                ("REGISTER_LIMIT_PER_ADDRESS".to_owned(), "10000".to_owned()),
                ("REFRESH_LIMIT_PER_ADDRESS".to_owned(), "10000".to_owned()),
            ],
            // A local platform verifies well-formed documents itself (a reviewer is optional).
            "kyc" => {
                let mut env = self.client_env(spec.name);
                env.push(("KYC_AUTO_APPROVE".to_owned(), "true".to_owned()));
                env
            }
            "reporting" => vec![(
                "UPSTREAMS".to_owned(),
                self.services
                    .iter()
                    .map(|s| format!("{}={}", s.name, s.sidecar_url))
                    .collect::<Vec<_>>()
                    .join(","),
            )],
            "notification" => vec![
                (
                    "SMTP_URL".to_owned(),
                    format!("smtp://127.0.0.1:{}", self.smtp_port),
                ),
                ("DELIVERY_RETRY_BASE_MS".to_owned(), "200".to_owned()),
                ("MAIL_SEAL_KEY".to_owned(), self.mail_seal_key.clone()),
                // Receivers of a local platform and its tests run on this machine,
                // which webhooks may reach only when it is named.
                ("WEBHOOK_ALLOW_NETS".to_owned(), "127.0.0.1".to_owned()),
            ],
            "wallet" => {
                let mut env = self.client_env(spec.name);
                // Room for the e2e journeys (a 1500 transfer) on a new bronze account.
                env.push((
                    "TIER_LIMITS".to_owned(),
                    "bronze=5000/50000,silver=20000/200000,gold=100000/1000000".to_owned(),
                ));
                env
            }
            name => self.client_env(name),
        }
    }

    /// A service's client credentials at A and the URLs of the services started before it.
    fn client_env(&self, name: &str) -> Vec<(String, String)> {
        let mut env = vec![
            ("SERVICE_CLIENT_ID".to_owned(), name.to_owned()),
            (
                "SERVICE_CLIENT_SECRET".to_owned(),
                self.service_secrets.get(name).cloned().unwrap_or_default(),
            ),
        ];
        for s in &self.services {
            env.push((
                format!("{}_URL", s.name.to_uppercase()),
                s.sidecar_url.clone(),
            ));
        }
        env
    }

    fn spawn(&mut self, name: &str, binary: &Path, env: &[(String, String)]) -> anyhow::Result<()> {
        let mut env = env.to_vec();
        for (target, key, value) in &self.options.env_overrides {
            let applies = target == name || (target == "*-sidecar" && name.ends_with("-sidecar"));
            if applies {
                set_env(&mut env, key, value.clone());
            }
        }
        let process = self.start_process(name, binary, &env, false)?;
        self.processes.push(process);
        Ok(())
    }

    fn start_process(
        &self,
        name: &str,
        binary: &Path,
        env: &[(String, String)],
        append: bool,
    ) -> anyhow::Result<Process> {
        let log = self.options.log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let wrapper = self
            .options
            .wrappers
            .iter()
            .find(|(process, _)| process == name)
            .map(|(_, argv)| argv.as_slice());
        let child = crate::tools::command_under(wrapper, binary)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} ({})", name, binary.display()))?;
        Ok(Process {
            name: name.to_owned(),
            child,
            log,
            binary: binary.to_owned(),
            env: env.to_vec(),
        })
    }

    fn index_of(&self, name: &str) -> anyhow::Result<usize> {
        self.processes
            .iter()
            .position(|p| p.name == name)
            .with_context(|| format!("no process named {name}"))
    }

    /// Every running process by name, with its process id.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.processes
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.child.id()?)))
            .collect()
    }

    /// The process id of a running process (`auth`, `auth-sidecar`, `gateway`, ...).
    pub fn pid(&self, name: &str) -> Option<u32> {
        let i = self.index_of(name).ok()?;
        self.processes[i].child.id()
    }

    /// SIGKILLs a process (crash tests) and waits until it is gone.
    pub async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let i = self.index_of(name)?;
        let p = &mut self.processes[i];
        p.child.kill().await?;
        Ok(())
    }

    /// The binary every sidecar and the gateway run.
    fn proxy_binary(&self) -> PathBuf {
        self.options
            .proxy_binary
            .clone()
            .unwrap_or_else(|| binary_path(PROXY_PACKAGE, self.options.release))
    }

    /// Starts `binary` as a second sidecar of `service`, named `name`: the settings of
    /// `<service>-sidecar` (overrides included) on ports of its own, waited for as the
    /// first was, stopped with the others. Returns its proxy's URL. For the edge
    /// benchmark's A/B of two sidecar builds in one run, where both meet the same
    /// machine.
    pub async fn start_sidecar_like(
        &mut self,
        service: &str,
        name: &str,
        binary: &Path,
    ) -> anyhow::Result<String> {
        let first = self.index_of(&format!("{service}-sidecar"))?;
        let mut env = self.processes[first].env.clone();
        let listen = free_port()?;
        set_env(&mut env, "LISTEN_ADDR", format!("127.0.0.1:{listen}"));
        set_env(
            &mut env,
            "ADMIN_ADDR",
            format!("127.0.0.1:{}", free_port()?),
        );
        let process = self.start_process(name, binary, &env, false)?;
        self.processes.push(process);
        let url = format!("http://127.0.0.1:{listen}");
        self.wait_healthy(&format!("{url}/health"), &[self.processes.len() - 1])
            .await?;
        Ok(url)
    }

    /// Starts a killed process again with the same settings, appending to its log.
    pub async fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let i = self.index_of(name)?;
        let (binary, env) = (
            self.processes[i].binary.clone(),
            self.processes[i].env.clone(),
        );
        let fresh = self.start_process(name, &binary, &env, true)?;
        self.processes[i] = fresh;
        Ok(())
    }

    /// Polls `url` until it answers 2xx, failing early if one of `watch` exits.
    async fn wait_healthy(&mut self, url: &str, watch: &[usize]) -> anyhow::Result<()> {
        let client = finflow_platform::client::builder()
            .timeout(Duration::from_secs(3))
            .build()?;
        let started = Instant::now();
        loop {
            for &i in watch {
                let p = &mut self.processes[i];
                if let Some(status) = p.child.try_wait()? {
                    bail!(
                        "{} exited during start-up ({status}); end of {}:\n{}",
                        p.name,
                        p.log.display(),
                        tail(&p.log, 40)
                    );
                }
            }
            let last = match client.get(url).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => format!(
                    "{} answered {}: {}",
                    url,
                    r.status(),
                    r.text().await.unwrap_or_default()
                ),
                Err(e) => format!("{url}: {e}"),
            };
            if started.elapsed() > self.options.health_timeout {
                let logs: Vec<String> = watch
                    .iter()
                    .map(|&i| {
                        let p = &self.processes[i];
                        format!("--- end of {} ---\n{}", p.log.display(), tail(&p.log, 30))
                    })
                    .collect();
                bail!(
                    "not healthy after {:?}: {last}\n{}",
                    self.options.health_timeout,
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops every process in reverse start order (SIGTERM, then SIGKILL after 10 s),
    /// and drops the databases if the options say so.
    pub async fn stop(&mut self) {
        while let Some(mut p) = self.processes.pop() {
            if let Some(pid) = p.child.id() {
                let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(0));
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(10), p.child.wait())
                .await
                .is_err()
            {
                eprintln!("{} did not stop within 10 s; killing it", p.name);
                let _ = p.child.kill().await;
            }
        }
        if let Some(vhost) = &self.options.amqp_vhost
            && let Err(e) = backing_services(&["vhost", "delete", vhost]).await
        {
            eprintln!("could not delete the vhost {vhost}: {e:#}");
        }
        if self.options.drop_databases {
            for s in &self.services {
                let admin = self.backing.database_url("postgres");
                let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", s.database);
                let _ = Command::new("psql")
                    .args([admin.as_str(), "-qc", sql.as_str()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await;
            }
        }
    }

    /// What runs where, for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "service        sidecar (public)          app (localhost)           database\n",
        );
        for s in &self.services {
            out.push_str(&format!(
                "{} {:<12} {:<25} {:<25} {}\n",
                s.id, s.name, s.sidecar_url, s.app_url, s.database
            ));
        }
        out.push_str(&format!("- {:<12} {:<25}\n", "gateway", self.gateway_url));
        out.push_str(&format!("\nlogs: {}\n", self.options.log_dir.display()));
        out
    }
}

impl Platform {
    /// Cuts every service off RabbitMQ (`true`: existing connections drop, new ones are
    /// refused) or restores it (`false`). Needs `Options::amqp_proxy`.
    pub fn broker_outage(&self, down: bool) -> anyhow::Result<()> {
        let switch = self
            .broker
            .as_ref()
            .context("the platform runs without an AMQP proxy")?;
        switch.send_replace(!down);
        Ok(())
    }
}

/// A TCP proxy to the broker that forwards while the switch is on. Returns the AMQP
/// URL through it.
async fn start_amqp_proxy(
    real: &str,
) -> anyhow::Result<(String, tokio::sync::watch::Sender<bool>)> {
    let (prefix, rest) = real
        .split_once('@')
        .context("AMQP URL without credentials")?;
    let (hostport, vhost) = rest.split_once('/').unwrap_or((rest, "%2f"));
    let upstream = hostport.to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (switch, on) = tokio::sync::watch::channel(true);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            if !*on.borrow() {
                continue; // dropped: refused
            }
            let upstream = upstream.clone();
            let mut on = on.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = on.wait_for(|up| !*up) => {} // outage: both ends drop
                }
            });
        }
    });
    Ok((format!("{prefix}@127.0.0.1:{port}/{vhost}"), switch))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_keep_the_server_and_its_options() {
        let b = Backing {
            postgres_url: "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".into(),
            redis_url: String::new(),
            amqp_url: String::new(),
        };
        assert_eq!(
            b.database_url("finflow_auth"),
            "postgres://postgres@127.0.0.1:5432/finflow_auth?sslmode=disable"
        );
    }

    #[test]
    fn services_are_listed_after_their_dependencies() {
        let specs = services();
        for (i, s) in specs.iter().enumerate() {
            for d in &s.depends_on {
                assert!(
                    specs[..i].iter().any(|e| e.name == *d),
                    "{} before {d}",
                    s.name
                );
            }
        }
    }
}
