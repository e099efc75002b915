//! `finflow-bench`: figures, each with a baseline measured in the same run.
//!
//! - `edge`: requests/s and p50/p99 of `GET /api/v1/users/me` on service A directly
//!   (identity headers set by wrk, as a sidecar would), through its sidecar with a real
//!   JWT, and through an nginx hop (the baseline: a proxy that validates nothing, set up
//!   to forward the same headers), each path handing the app the same request.
//! - `payments`: completed transfers/s and accept p50/p99 through the gateway, against
//!   pgbench's TPC-B tps on the same PostgreSQL at the same concurrency; and what one
//!   payment costs (CPU per process on the path, commits and rollbacks per database,
//!   broker deliveries: [`finflow_e2e::cost`]) against the CPU of one TPC-B transaction
//!   (PostgreSQL's and pgbench's), the cost ratio.
//!
//! Both start an isolated platform with the launcher. wrk, nginx and pgbench come from
//! Debian packages; they are installed with apt-get when missing.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use finflow_e2e::client::Client;
use finflow_e2e::cost;
use finflow_e2e::launcher::{Options, Platform};
use finflow_e2e::tools::{command_under, ensure_tool, which};
use reqwest::StatusCode;
use serde_json::json;
use tokio::process::Command;

#[derive(Parser)]
#[command(about = "FinFlow benchmarks with same-run baselines")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
    /// Seconds each load runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent connections / clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Rounds of the edge benchmark (each measures every path once); 6 or more give
    /// the 95% interval of the sidecar's difference to nginx.
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// edge: another build of the sidecar, run beside the launcher's with the same
    /// settings and measured in the same rounds (the A/B of a change: figures of
    /// separate runs on a shared machine are not comparable).
    #[arg(long, value_name = "BINARY")]
    compare: Option<std::path::PathBuf>,
    /// edge: event loops of the measured sidecar and worker processes of nginx, the
    /// same number for both. Unset, each runs as it ships: the sidecar with its own
    /// default (`WORKER_THREADS` unset), and nginx twice, with its built-in default of
    /// one worker and with Debian's packaged `worker_processes auto` (one per CPU).
    #[arg(long)]
    workers: Option<usize>,
    /// edge: load every path at the same time in each round, each by a wrk of its own
    /// on its share of `--concurrency` connections, instead of one path after another:
    /// on a shared machine whose speed drifts, paths measured at the same moments
    /// compare more closely.
    #[arg(long)]
    together: bool,
    /// The build of `finflow-sidecar` run as every sidecar and the gateway (and so
    /// measured): `dev/pgo-proxy`'s profile-guided build, which is how the proxy ships.
    /// Default: the launcher's own `proxy`-profile build.
    #[arg(long, value_name = "BINARY")]
    sidecar: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Bench {
    /// App directly vs through the sidecar (JWT) vs through nginx.
    Edge,
    /// User-space instructions per proxied request, sidecar (JWT) vs nginx, counted by
    /// callgrind: a figure that, unlike latency on a shared machine, repeats run to run.
    Instructions,
    /// Payments through the gateway vs pgbench TPC-B on the same PostgreSQL.
    Payments,
    /// The training load of `dev/pgo-proxy` for an instrumented proxy build (given by
    /// `--sidecar`): not a measurement.
    PgoTrain,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut options = Options::isolated();
    options.drop_databases = true;
    // Measured as shipped: optimized binaries (debug builds verify signatures 100x slower).
    options.release = true;
    // The sidecars' per-user rate limit would measure itself, not the path.
    for key in ["RATE_LIMIT_PER_SECOND", "RATE_LIMIT_BURST"] {
        options
            .env_overrides
            .push(("*-sidecar".to_owned(), key.to_owned(), "1000000".to_owned()));
    }
    options.proxy_binary.clone_from(&cli.sidecar);
    match cli.bench {
        // Asked for, the measured sidecar gets as many event loops as nginx gets workers.
        Bench::Edge => {
            if let Some(workers) = cli.workers {
                options.env_overrides.push((
                    "auth-sidecar".to_owned(),
                    "WORKER_THREADS".to_owned(),
                    workers.max(1).to_string(),
                ));
            }
        }
        Bench::Instructions => {
            ensure_tool("valgrind", "valgrind").await?;
            // valgrind runs one thread at a time anyway; one loop, like one nginx worker.
            options.env_overrides.push((
                "auth-sidecar".to_owned(),
                "WORKER_THREADS".to_owned(),
                "1".to_owned(),
            ));
            let out = sidecar_callgrind(&options.log_dir);
            options
                .wrappers
                .push(("auth-sidecar".to_owned(), callgrind_wrapper(&out)));
        }
        Bench::Payments | Bench::PgoTrain => {}
    }
    let mut platform = Platform::start(options).await?;
    let result = match cli.bench {
        Bench::Edge => {
            edge(
                &mut platform,
                cli.seconds,
                cli.concurrency,
                cli.rounds.max(1),
                cli.workers.map(|n| n.max(1)),
                cli.together,
                cli.compare.as_deref(),
            )
            .await
        }
        Bench::Instructions => instructions(&platform, cli.seconds).await,
        Bench::Payments => payments(&platform, cli.seconds, cli.concurrency).await,
        Bench::PgoTrain => pgo_train(&platform, cli.seconds).await,
    };
    platform.stop().await;
    result
}

/// wrk started on `seconds` of requests to `url` over `connections` connections on
/// `threads` threads; [`wrk_report`] reads its report.
fn spawn_wrk(
    url: &str,
    headers: &[(String, String)],
    seconds: u64,
    threads: usize,
    connections: usize,
) -> anyhow::Result<tokio::process::Child> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        &format!("-t{threads}"),
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    cmd.arg("-s").arg(latency_script()?);
    cmd.arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running wrk")
}

/// What the wrk script of [`latency_script`] prints before its figures.
const LATENCY_LINE: &str = "finflow-latency-us";

/// The path of a wrk script, written once per process, that prints [`LATENCY_LINE`]
/// and p50 and p99 in microseconds once the run is done. wrk's own report gives a
/// latency of a millisecond or more to 10 µs ("1.62ms"), coarser than the differences
/// between two proxies; `done` runs once, after the requests, so the requests
/// themselves stay on wrk's script-free path.
fn latency_script() -> anyhow::Result<&'static std::path::Path> {
    static SCRIPT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    if let Some(path) = SCRIPT.get() {
        return Ok(path);
    }
    let script = format!(
        "done = function(summary, latency, requests)\n  \
         io.write(string.format(\"{LATENCY_LINE} %.1f %.1f\\n\", latency:percentile(50), latency:percentile(99)))\nend\n"
    );
    let path = std::env::temp_dir().join(format!("finflow-bench-{}.lua", std::process::id()));
    std::fs::write(&path, script).context("writing the wrk latency script")?;
    Ok(SCRIPT.get_or_init(|| path))
}

/// The report of a wrk started by [`spawn_wrk`] against `url`; an error if any answer
/// was not 2xx.
async fn wrk_report(wrk: tokio::process::Child, url: &str) -> anyhow::Result<String> {
    let out = wrk.wait_with_output().await.context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if let Some(line) = text.lines().find(|l| l.contains("Non-2xx")) {
        bail!("wrk saw errors against {url}: {line}\n{text}");
    }
    Ok(text)
}

/// wrk's report of `seconds` of requests to `url` over `connections` connections on
/// `threads` threads; an error if any answer was not 2xx.
async fn run_wrk(
    url: &str,
    headers: &[(String, String)],
    seconds: u64,
    threads: usize,
    connections: usize,
) -> anyhow::Result<String> {
    wrk_report(spawn_wrk(url, headers, seconds, threads, connections)?, url).await
}

/// Runs wrk and returns (requests/s, p50 ms, p99 ms).
async fn wrk(
    url: &str,
    headers: &[(String, String)],
    seconds: u64,
    concurrency: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    // wrk needs at least one connection per thread.
    parse_wrk(&run_wrk(url, headers, seconds, concurrency.clamp(1, 2), concurrency).await?)
}

/// (requests/s, p50 ms, p99 ms) of a wrk report.
#[allow(clippy::float_arithmetic)]
fn parse_wrk(text: &str) -> anyhow::Result<(f64, f64, f64)> {
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    // The script's microseconds, else wrk's own rounded figures.
    let exact: Option<Vec<f64>> =
        text.lines()
            .find_map(|l| l.strip_prefix(LATENCY_LINE))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|n| n.parse::<f64>().ok())
                    .collect()
            });
    if let Some([p50, p99]) = exact.as_deref() {
        return Ok((rps, p50 / 1000.0, p99 / 1000.0));
    }
    let percentile = |p: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .map(|v| to_ms(v.trim()))
            .unwrap_or(f64::NAN)
    };
    Ok((rps, percentile("50%"), percentile("99%")))
}

#[allow(clippy::float_arithmetic)] // latency figures for people, not money
fn to_ms(v: &str) -> f64 {
    let (number, factor) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    number.parse::<f64>().unwrap_or(f64::NAN) * factor
}

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;

/// One wrk run through one path: requests/s, p50 and p99 latency (ms), and the CPU
/// the proxy and the app spent per request (µs).
#[derive(Clone, Copy, Default)]
struct Round {
    rps: f64,
    p50: f64,
    p99: f64,
    proxy_cpu: f64,
    app_cpu: f64,
}

/// The median (the mean of the two middle values of an even count), NaN for none.
#[allow(clippy::float_arithmetic)]
fn middle(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match (values.get(n.wrapping_sub(1) / 2), values.get(n / 2)) {
        (Some(low), Some(high)) => (low + high) / 2.0,
        _ => f64::NAN,
    }
}

/// Each figure's median over the rounds.
fn median(rounds: &[Round]) -> Round {
    let of = |f: fn(&Round) -> f64| middle(rounds.iter().map(f).collect());
    Round {
        rps: of(|r| r.rps),
        p50: of(|r| r.p50),
        p99: of(|r| r.p99),
        proxy_cpu: of(|r| r.proxy_cpu),
        app_cpu: of(|r| r.app_cpu),
    }
}

/// What the sidecar and one nginx configuration added to the app's p50, compared
/// within each round (the paths of a round run back to back, or at once with
/// `--together`, so they share the machine's state of the moment).
struct Added {
    /// Which nginx: "nginx, 1 worker".
    nginx_label: String,
    /// (sidecar, nginx) per round, ms.
    per_round: Vec<(f64, f64)>,
    sidecar: f64,
    nginx: f64,
    /// Rounds in which the sidecar added no more than nginx.
    sidecar_not_worse: usize,
}

#[allow(clippy::float_arithmetic)]
fn added_latency(direct: &[Round], sidecar: &[Round], nginx: &[Round], nginx_label: &str) -> Added {
    let per_round: Vec<(f64, f64)> = direct
        .iter()
        .zip(sidecar)
        .zip(nginx)
        .map(|((d, s), n)| (s.p50 - d.p50, n.p50 - d.p50))
        .collect();
    let median_of = |f: fn(&(f64, f64)) -> f64| middle(per_round.iter().map(f).collect());
    Added {
        nginx_label: nginx_label.to_owned(),
        sidecar: median_of(|r| r.0),
        nginx: median_of(|r| r.1),
        sidecar_not_worse: per_round.iter().filter(|(s, n)| s <= n).count(),
        per_round,
    }
}

impl Added {
    /// Whether the sidecar added more or less than this nginx, or the run cannot tell:
    /// by the median of the per-round differences and its 95% interval.
    #[allow(clippy::float_arithmetic)]
    fn verdict(&self) -> String {
        let nginx = &self.nginx_label;
        interval_verdict(
            &format!("sidecar - {nginx} per round"),
            self.per_round.iter().map(|(s, n)| s - n).collect(),
            [
                &format!("the sidecar added less latency than {nginx}"),
                &format!("the sidecar added more latency than {nginx}"),
                &format!("no difference between the sidecar and {nginx} is measurable in this run"),
            ],
        )
    }
}

/// The compared build's p50 minus the launcher's sidecar's, per round: their median
/// and 95% interval, and what they say.
#[allow(clippy::float_arithmetic)]
fn compared_verdict(compared: &[Round], sidecar: &[Round]) -> String {
    interval_verdict(
        "compared - sidecar p50 per round",
        compared
            .iter()
            .zip(sidecar)
            .map(|(b, a)| b.p50 - a.p50)
            .collect(),
        [
            "the compared build is faster",
            "the compared build is slower",
            "no difference between the builds is measurable in this run",
        ],
    )
}

/// `what`: the median of `differences` (ms) and its 95% interval, then the first of
/// `[below, above, neither]` when the interval lies below zero, the second when above,
/// else the third.
fn interval_verdict(
    what: &str,
    differences: Vec<f64>,
    [below, above, neither]: [&str; 3],
) -> String {
    let median = middle(differences.clone());
    match median_interval(differences) {
        None => format!("{what}: median {median:+.3} ms (6 or more rounds give a 95% interval)"),
        Some((low, high)) => {
            let verdict = if high < 0.0 {
                below
            } else if low > 0.0 {
                above
            } else {
                neither
            };
            format!(
                "{what}: median {median:+.3} ms, 95% interval [{low:+.3}, {high:+.3}] ms: {verdict}"
            )
        }
    }
}

/// A distribution-free 95% confidence interval for the median of `values`: the `k`-th
/// smallest and largest, with `k` the largest such that a fair coin gives fewer than
/// `k` heads in `n` tosses with probability at most 2.5% (the sign test's interval).
/// `None` for fewer than 6 values, where no such `k` exists.
#[allow(clippy::float_arithmetic, clippy::cast_precision_loss)]
fn median_interval(mut values: Vec<f64>) -> Option<(f64, f64)> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let mut k = 0;
    // P(heads = j) for j = 0, 1, ... as C(n, j) / 2^n, summed while the tail allows.
    let (mut term, mut below) = (0.5f64.powi(i32::try_from(n).ok()?), 0.0);
    for j in 0..n {
        below += term;
        if below > 0.025 {
            break;
        }
        k = j + 1;
        term *= (n - j) as f64 / (j + 1) as f64;
    }
    (k > 0).then(|| (values[k - 1], values[n - k]))
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces,
/// hence the last `)`): `[0]` is the state, `[1]` the parent, `[11]`/`[12]` user and
/// system ticks.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// User plus system CPU ticks of `pids` (all threads of each), from `/proc`.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&pid| {
            let fields = stat_fields(pid)?;
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .sum()
}

/// `pid` and its children (nginx's workers).
fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.filter_map(Result::ok) {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let parent = stat_fields(child).and_then(|f| f.get(1)?.parse::<u32>().ok());
            if parent == Some(pid) {
                pids.push(child);
            }
        }
    }
    pids
}

/// CPU µs per request of `ticks` spent over `seconds` at `rps` requests/s.
#[allow(clippy::float_arithmetic, clippy::cast_precision_loss)]
fn cpu_per_request(ticks: u64, rps: f64, seconds: u64) -> f64 {
    ticks as f64 / USER_HZ * 1_000_000.0 / (rps * seconds as f64).max(1.0)
}

/// wrk against `url`, with the CPU `proxy` and `app` spent meanwhile.
async fn measured(
    url: &str,
    headers: &[(String, String)],
    seconds: u64,
    concurrency: usize,
    proxy: &[u32],
    app: &[u32],
) -> anyhow::Result<Round> {
    let (proxy_before, app_before) = (cpu_ticks(proxy), cpu_ticks(app));
    let (rps, p50, p99) = wrk(url, headers, seconds, concurrency).await?;
    let (proxy_after, app_after) = (cpu_ticks(proxy), cpu_ticks(app));
    Ok(Round {
        rps,
        p50,
        p99,
        proxy_cpu: cpu_per_request(proxy_after.saturating_sub(proxy_before), rps, seconds),
        app_cpu: cpu_per_request(app_after.saturating_sub(app_before), rps, seconds),
    })
}

/// A path the edge benchmark loads: its URL, the headers wrk sends, the proxy's
/// processes (none for the app directly).
type Target<'a> = (&'a String, &'a Vec<(String, String)>, Vec<u32>);

/// Every target loaded at the same time, each by a wrk of its own (one thread,
/// `connections` connections), so that all of them meet the same moments of a shared
/// machine; the app's CPU is shared out over all the requests of the window.
async fn measured_together(
    targets: &[Target<'_>],
    seconds: u64,
    connections: usize,
    app: &[u32],
) -> anyhow::Result<Vec<Round>> {
    let app_before = cpu_ticks(app);
    let before: Vec<u64> = targets
        .iter()
        .map(|(_, _, proxy)| cpu_ticks(proxy))
        .collect();
    let running = targets
        .iter()
        .map(|(url, headers, _)| spawn_wrk(url, headers, seconds, 1, connections))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut reports = Vec::new();
    for (wrk, (url, _, _)) in running.into_iter().zip(targets) {
        reports.push(parse_wrk(&wrk_report(wrk, url).await?)?);
    }
    let app_ticks = cpu_ticks(app).saturating_sub(app_before);
    let all_rps: f64 = reports.iter().map(|(rps, _, _)| rps).sum();
    Ok(reports
        .into_iter()
        .zip(targets.iter().zip(before))
        .map(|((rps, p50, p99), ((_, _, proxy), proxy_before))| Round {
            rps,
            p50,
            p99,
            proxy_cpu: cpu_per_request(cpu_ticks(proxy).saturating_sub(proxy_before), rps, seconds),
            app_cpu: cpu_per_request(app_ticks, all_rps, seconds),
        })
        .collect())
}

/// The identity headers the sidecar makes of `token` with its default claim map
/// (`sub`, `email`, `roles` joined with `,`, `kyc_status`, `tier`), for the paths that
/// have no sidecar to make them.
fn identity_headers(token: &str) -> anyhow::Result<Vec<(String, String)>> {
    use base64::Engine as _;
    let payload = token
        .split('.')
        .nth(1)
        .context("the token has no payload")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?)?;
    let text = |claim: &str| match &claims[claim] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => None,
    };
    Ok([
        ("sub", "x-user-id"),
        ("email", "x-user-email"),
        ("roles", "x-user-roles"),
        ("kyc_status", "x-kyc-status"),
        ("tier", "x-account-tier"),
    ]
    .into_iter()
    .filter_map(|(claim, header)| Some((header.to_owned(), text(claim)?)))
    .collect())
}

/// The request every edge path measures, and the headers each path is sent with so
/// that all of them hand the app the same request.
struct EdgeRequests {
    /// The app's own URL of the path.
    app_url: String,
    /// Where the auth sidecar listens.
    sidecar_url: String,
    app_port: String,
    /// To the app directly: everything a proxy would have set.
    direct: Vec<(String, String)>,
    /// To the sidecar: the token and a caller's trace context, nothing else.
    bearer: Vec<(String, String)>,
    /// To nginx: the identity headers the sidecar would make, the token, the trace
    /// context; nginx sets the forwarding headers and request id.
    identity: Vec<(String, String)>,
}

const EDGE_PATH: &str = "/api/v1/users/me";

impl EdgeRequests {
    async fn new(platform: &Platform) -> anyhow::Result<Self> {
        let user = platform.client().new_user("bench").await;
        let token = user.session["access_token"]
            .as_str()
            .context("no token")?
            .to_owned();
        let auth = platform
            .services
            .iter()
            .find(|s| s.name == "auth")
            .context("no auth")?;
        let app_port = auth
            .app_url
            .rsplit(':')
            .next()
            .context("app port")?
            .to_owned();
        // Every path hands the app the same request, so the app's own work is the same
        // and the difference is the hop: the identity headers the sidecar makes of this
        // token, the forwarding headers and request id a proxy sets, and a caller's
        // trace context.
        let traceparent = (
            "traceparent".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        );
        // The sidecar passes the token on too (the app may read it): the others carry it.
        let authorization = ("authorization".to_owned(), format!("Bearer {token}"));
        let mut identity = identity_headers(&token)?;
        identity.push(traceparent.clone());
        identity.push(authorization.clone());
        let mut direct = identity.clone();
        direct.extend([
            ("x-forwarded-for".to_owned(), "127.0.0.1".to_owned()),
            (
                "x-forwarded-host".to_owned(),
                format!("127.0.0.1:{app_port}"),
            ),
            ("x-forwarded-proto".to_owned(), "http".to_owned()),
            ("x-real-ip".to_owned(), "127.0.0.1".to_owned()),
            (
                "x-request-id".to_owned(),
                "3f2b7c1e-9a4d-4e8b-8f6a-2d1c0b9e7a54".to_owned(),
            ),
        ]);
        Ok(Self {
            app_url: format!("{}{EDGE_PATH}", auth.app_url),
            sidecar_url: format!("{}{EDGE_PATH}", auth.sidecar_url),
            app_port,
            direct,
            bearer: vec![authorization, traceparent],
            identity,
        })
    }
}

/// An nginx proxy hop to the app: keep-alive upstream connections, the forwarding
/// headers and a request id, nothing else.
struct Nginx {
    child: tokio::process::Child,
    bin: &'static str,
    conf: String,
    error_log: String,
    url: String,
}

impl Nginx {
    /// Starts nginx with `workers` worker processes, or (`wrapper` given) as one
    /// process without a master, under `wrapper`.
    async fn start(
        dir: &std::path::Path,
        app_port: &str,
        workers: usize,
        wrapper: Option<Vec<String>>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let processes = if wrapper.is_some() {
            "master_process off; worker_processes 1;".to_owned()
        } else {
            format!("worker_processes {workers};")
        };
        let conf = format!(
            "daemon off; {processes} pid {dir}/nginx.pid; error_log {dir}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; client_body_temp_path {dir}; proxy_temp_path {dir};\n\
               upstream app {{ server 127.0.0.1:{app_port}; keepalive 64; }}\n\
               server {{ listen 127.0.0.1:{port};\n\
                 location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
                   proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Host $http_host;\n\
                   proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Real-IP $remote_addr;\n\
                   proxy_set_header X-Request-Id $request_id; add_header X-Request-Id $request_id always; }} }} }}\n",
            dir = dir.display()
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let bin = if which("nginx") && std::path::Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx"
        } else {
            "nginx"
        };
        let conf = conf_path.display().to_string();
        let error_log = dir.join("error.log").display().to_string();
        // nginx's workers must not inherit our stdout: they would outlive the master's kill.
        let child = command_under(wrapper.as_deref(), bin)
            .args(["-c", &conf, "-e", &error_log])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting nginx")?;
        let url = format!("http://127.0.0.1:{port}{EDGE_PATH}");
        // Up when it answers (under valgrind that takes seconds).
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while client.get(&url).send().await.is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not start; see {error_log}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Self {
            child,
            bin,
            conf,
            error_log,
            url,
        })
    }

    /// The master and its workers, or the one process.
    fn pids(&self) -> Vec<u32> {
        self.child.id().map(with_children).unwrap_or_default()
    }

    async fn stop(mut self) {
        // A graceful stop takes the workers down with the master.
        let _ = Command::new(self.bin)
            .args(["-c", &self.conf, "-e", &self.error_log, "-s", "stop"])
            .status()
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        self.child.kill().await.ok();
    }
}

/// The URL and process id of the sidecar build `--compare` names, started beside the
/// launcher's auth sidecar with its settings.
async fn start_compared(
    platform: &mut Platform,
    binary: &std::path::Path,
) -> anyhow::Result<(String, u32)> {
    const NAME: &str = "auth-sidecar-compared";
    let base = platform.start_sidecar_like("auth", NAME, binary).await?;
    let pid = platform
        .pid(NAME)
        .context("the compared sidecar has no pid")?;
    Ok((format!("{base}{EDGE_PATH}"), pid))
}

/// The nginx configurations the sidecar is measured against: `workers` when asked
/// for, else nginx's built-in default (one worker) and Debian's packaged `auto` (one
/// per CPU), the second left out where the machine has one CPU.
fn nginx_workers(workers: Option<usize>) -> Vec<usize> {
    match workers {
        Some(n) => vec![n],
        None => {
            let cpus = std::thread::available_parallelism().map_or(1, usize::from);
            let mut counts = vec![1, cpus];
            counts.dedup();
            counts
        }
    }
}

/// "nginx, 1 worker", "nginx, 2 workers".
fn nginx_label(workers: usize) -> String {
    let plural = if workers == 1 { "" } else { "s" };
    format!("nginx, {workers} worker{plural}")
}

async fn edge(
    platform: &mut Platform,
    seconds: u64,
    concurrency: usize,
    rounds_wanted: usize,
    workers: Option<usize>,
    together: bool,
    compare: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    ensure_tool("wrk", "wrk").await?;
    ensure_tool("nginx", "nginx").await?;
    let compared = match compare {
        Some(binary) => Some(start_compared(platform, binary).await?),
        None => None,
    };
    let platform = &*platform;
    let requests = EdgeRequests::new(platform).await?;
    let nginx_counts = nginx_workers(workers);
    let mut nginxes = Vec::new();
    for &count in &nginx_counts {
        let dir = platform.options.log_dir.join(format!("nginx-{count}"));
        nginxes.push(Nginx::start(&dir, &requests.app_port, count, None).await?);
    }

    // Warm-up, then rounds of the measurements interleaved (so drift in the machine's
    // load hits all of them alike); each figure's median is reported.
    wrk(&requests.app_url, &requests.direct, 2, concurrency).await?;
    let app: Vec<u32> = platform.pid("auth").into_iter().collect();
    let sidecar_pid: Vec<u32> = platform.pid("auth-sidecar").into_iter().collect();
    let mut targets: Vec<Target<'_>> = vec![
        (&requests.app_url, &requests.direct, Vec::new()),
        (&requests.sidecar_url, &requests.bearer, sidecar_pid),
    ];
    for nginx in &nginxes {
        targets.push((&nginx.url, &requests.identity, nginx.pids()));
    }
    if let Some((url, pid)) = &compared {
        targets.push((url, &requests.bearer, vec![*pid]));
    }
    let mut rounds: Vec<Vec<Round>> = vec![Vec::new(); targets.len()];
    let paths = targets.len();
    // Loaded together, the paths share the connections, so the machine is about as
    // loaded as by one path at a time.
    let together_connections = (concurrency / paths).max(1);
    if together {
        for _ in 0..rounds_wanted {
            let measured = measured_together(&targets, seconds, together_connections, &app).await?;
            for (path, round) in rounds.iter_mut().zip(measured) {
                path.push(round);
            }
        }
    } else {
        for round in 0..rounds_wanted {
            // The proxies take turns at going first, so a machine getting slower or
            // faster during a round favours none of them.
            let proxies = paths - 1;
            let order = std::iter::once(0).chain((0..proxies).map(|k| 1 + (k + round) % proxies));
            for i in order {
                let (url, headers, proxy) = &targets[i];
                rounds[i].push(measured(url, headers, seconds, concurrency, proxy, &app).await?);
            }
        }
    }
    for nginx in nginxes {
        nginx.stop().await;
    }
    let compared_rounds = compared.is_some().then(|| rounds.pop()).flatten();
    let (Some(direct_rounds), Some(sidecar_rounds)) = (rounds.first(), rounds.get(1)) else {
        bail!("the edge paths start with the app directly and the sidecar");
    };
    let nginx_rounds = rounds.get(2..).unwrap_or_default();
    let nginx_labels: Vec<String> = nginx_counts.iter().map(|&n| nginx_label(n)).collect();
    let added: Vec<Added> = nginx_rounds
        .iter()
        .zip(&nginx_labels)
        .map(|(n, label)| added_latency(direct_rounds, sidecar_rounds, n, label))
        .collect();
    let (direct, sidecar) = (median(direct_rounds), median(sidecar_rounds));

    if together {
        println!(
            "\nGET {EDGE_PATH}, all {paths} paths loaded at once in each round, {together_connections} connections each (wrk), {seconds} s, medians of {rounds_wanted} rounds"
        );
    } else {
        println!(
            "\nGET {EDGE_PATH}, {concurrency} connections, {seconds} s each (wrk), medians of {rounds_wanted} interleaved rounds"
        );
    }
    let loops = workers.map_or_else(
        || "its default event loops (WORKER_THREADS unset)".to_owned(),
        |n| format!("{n} event loops"),
    );
    let nginx_configs = nginx_labels.join(" and ");
    println!("sidecar: {loops}; measured against {nginx_configs}");
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>14} {:>12}",
        "path", "req/s", "p50 ms", "p99 ms", "proxy CPU µs", "app CPU µs"
    );
    let mut rows = vec![
        ("app directly".to_owned(), direct),
        ("sidecar (JWT validated) -> app".to_owned(), sidecar),
    ];
    for (n, label) in nginx_rounds.iter().zip(&nginx_labels) {
        rows.push((format!("{label} (no auth) -> app"), median(n)));
    }
    for (name, r) in &rows {
        let proxy = if r.proxy_cpu > 0.0 {
            format!("{:.1}", r.proxy_cpu)
        } else {
            "-".to_owned()
        };
        println!(
            "{name:<34} {:>8.0} {:>8.3} {:>8.3} {proxy:>14} {:>12.1}",
            r.rps, r.p50, r.p99, r.app_cpu
        );
    }
    for (added, (_, r)) in added.iter().zip(rows.iter().skip(2)) {
        let nginx = &added.nginx_label;
        println!(
            "\nadded p50 latency per round (ms, sidecar / {nginx}): {}",
            added
                .per_round
                .iter()
                .map(|(s, n)| format!("{s:.3}/{n:.3}"))
                .collect::<Vec<_>>()
                .join("  ")
        );
        println!(
            "added p50 latency, median of the rounds: sidecar {:.3} ms, {nginx} {:.3} ms; the sidecar added no more in {} of {} rounds",
            added.sidecar,
            added.nginx,
            added.sidecar_not_worse,
            added.per_round.len()
        );
        println!("{}", added.verdict());
        println!(
            "proxy CPU per request (the cost behind that latency on a busy machine): sidecar {:.1} µs, {nginx} {:.1} µs (the app's own: {:.1} µs)",
            sidecar.proxy_cpu, r.proxy_cpu, direct.app_cpu
        );
    }
    if let (Some(other), Some(binary)) = (&compared_rounds, compare) {
        let other_median = median(other);
        println!(
            "\ncompared build {}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, proxy CPU {:.1} µs",
            binary.display(),
            other_median.rps,
            other_median.p50,
            other_median.p99,
            other_median.proxy_cpu
        );
        println!("{}", compared_verdict(other, sidecar_rounds));
    }
    Ok(())
}

/// Where the auth sidecar's callgrind counts go, in the instructions mode.
fn sidecar_callgrind(log_dir: &std::path::Path) -> String {
    log_dir.join("sidecar.callgrind").display().to_string()
}

/// valgrind's command line that counts instructions with callgrind into `out`
/// (dumps, on request, to `<out>.<n>`).
fn callgrind_wrapper(out: &str) -> Vec<String> {
    [
        "valgrind",
        "--tool=callgrind",
        "--dump-instr=no",
        "--quiet",
        &format!("--callgrind-out-file={out}"),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Instructions the process under callgrind at `pid` executed while wrk sent
/// requests to `url`, and the requests wrk completed: counters zeroed, a measured wrk
/// run, a dump to `<out>.<n>`.
async fn counted(
    pid: u32,
    out: &str,
    url: &str,
    headers: &[(String, String)],
    seconds: u64,
) -> anyhow::Result<(u64, u64)> {
    // Warm: connections open, the token verified, code translated by valgrind.
    wrk_requests(url, headers, 3).await?;
    callgrind_control("-z", pid).await?;
    let requests = wrk_requests(url, headers, seconds).await?;
    let before = dumps(out);
    callgrind_control("-d", pid).await?;
    // The dump is written by the process itself once it sees the request.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let fresh = dumps(out).into_iter().find(|d| !before.contains(d));
        if let Some(total) = fresh
            .and_then(|path| std::fs::read_to_string(path).ok())
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("summary:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
        {
            return Ok((total, requests));
        }
        if Instant::now() > deadline {
            bail!("no callgrind dump of {out} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The dump files of `out` (`<out>.<n>`).
fn dumps(out: &str) -> Vec<std::path::PathBuf> {
    let path = std::path::Path::new(out);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_prefix(name))
                        .and_then(|rest| rest.strip_prefix('.'))
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn callgrind_control(action: &str, pid: u32) -> anyhow::Result<()> {
    let out = Command::new("callgrind_control")
        .args([action, &pid.to_string()])
        .output()
        .await
        .context("running callgrind_control")?;
    if !out.status.success() {
        bail!(
            "callgrind_control {action} {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Requests wrk completed against `url` in `seconds` (one thread, a few connections:
/// under valgrind a proxy is some 50 times slower, and the count is what matters).
async fn wrk_requests(
    url: &str,
    headers: &[(String, String)],
    seconds: u64,
) -> anyhow::Result<u64> {
    let text = run_wrk(url, headers, seconds, 1, 4).await?;
    text.lines()
        .find_map(|l| {
            let (count, rest) = l.trim().split_once(' ')?;
            rest.starts_with("requests in")
                .then(|| count.parse::<u64>().ok())?
        })
        .filter(|&n| n > 0)
        .with_context(|| format!("no requests counted in wrk output:\n{text}"))
}

#[allow(clippy::float_arithmetic, clippy::cast_precision_loss)]
async fn instructions(platform: &Platform, seconds: u64) -> anyhow::Result<()> {
    ensure_tool("wrk", "wrk").await?;
    ensure_tool("nginx", "nginx").await?;
    let requests = EdgeRequests::new(platform).await?;
    let sidecar_out = sidecar_callgrind(&platform.options.log_dir);
    let sidecar_pid = platform.pid("auth-sidecar").context("no auth sidecar")?;
    let sidecar = counted(
        sidecar_pid,
        &sidecar_out,
        &requests.sidecar_url,
        &requests.bearer,
        seconds,
    )
    .await?;

    let dir = platform.options.log_dir.join("nginx");
    let nginx_out = dir.join("nginx.callgrind").display().to_string();
    let nginx = Nginx::start(
        &dir,
        &requests.app_port,
        1,
        Some(callgrind_wrapper(&nginx_out)),
    )
    .await?;
    let nginx_pid = nginx.child.id().context("nginx has no pid")?;
    let via_nginx = counted(
        nginx_pid,
        &nginx_out,
        &nginx.url,
        &requests.identity,
        seconds,
    )
    .await;
    nginx.stop().await;
    let via_nginx = via_nginx?;

    println!(
        "\nGET {EDGE_PATH}: user-space instructions per proxied request (callgrind; the kernel's work for the sockets is not counted)"
    );
    println!("{:<40} {:>14} {:>10}", "proxy", "instructions", "requests");
    for (name, (total, count)) in [
        ("sidecar (JWT validated), 1 event loop", sidecar),
        ("nginx (no auth), 1 worker", via_nginx),
    ] {
        println!(
            "{name:<40} {:>14.0} {count:>10}",
            total as f64 / count as f64
        );
    }
    let ratio = (sidecar.0 as f64 / sidecar.1 as f64) / (via_nginx.0 as f64 / via_nginx.1 as f64);
    println!("sidecar / nginx: {ratio:.3}");
    Ok(())
}

/// What `dev/pgo-proxy`'s profile is made of. Mostly what the proxy does most: a known
/// token on keep-alive connections, through a sidecar and through the gateway (at 16
/// connections and at 1). Then, so that the profile-guided build does not treat them as
/// never run, its other paths: users signing up, in, refreshing and out through the
/// gateway (public paths with bodies, new tokens verified, every service's sidecar; no
/// logout, which would revoke the session the rounds use),
/// and refusals (no token, a bad token, a user token on an internal path).
async fn pgo_train(platform: &Platform, seconds: u64) -> anyhow::Result<()> {
    ensure_tool("wrk", "wrk").await?;
    let requests = EdgeRequests::new(platform).await?;
    let gateway = platform.client();
    let auth_sidecar = platform
        .services
        .iter()
        .find(|s| s.name == "auth")
        .context("no auth")?
        .sidecar_url
        .clone();
    for round in 0..8 {
        let user = gateway.new_user(&format!("pgo{round}")).await;
        let me = user.client.get(EDGE_PATH).await;
        me.data(StatusCode::OK);
        user.client
            .put(
                EDGE_PATH,
                json!({"full_name": format!("Trained User {round}")}),
            )
            .await
            .data(StatusCode::OK);
        let refresh = user.session["refresh_token"].as_str().unwrap_or_default();
        gateway
            .post("/api/v1/auth/refresh", json!({"refresh_token": refresh}))
            .await
            .data(StatusCode::OK);
        for path in [
            "/api/v1/wallets",
            "/api/v1/payments",
            "/api/v1/notifications",
        ] {
            user.client.get(path).await;
        }
        gateway.get(EDGE_PATH).await.error(StatusCode::UNAUTHORIZED);
        gateway
            .with_token("not.a.token")
            .get(EDGE_PATH)
            .await
            .error(StatusCode::UNAUTHORIZED);
        Client::new(&auth_sidecar)
            .with_token(user.session["access_token"].as_str().unwrap_or_default())
            .get("/internal/v1/users")
            .await
            .error(StatusCode::FORBIDDEN);
    }
    let through_gateway = format!("{}{EDGE_PATH}", platform.gateway_url);
    for (url, connections, secs) in [
        (&requests.sidecar_url, 16, seconds),
        (&requests.sidecar_url, 1, seconds.div_ceil(2)),
        (&through_gateway, 16, seconds.div_ceil(2)),
    ] {
        let (rps, _, _) = wrk(url, &requests.bearer, secs, connections).await?;
        eprintln!("trained {url} at {connections} connections: {rps:.0} req/s");
    }
    Ok(())
}

async fn payments(platform: &Platform, seconds: u64, concurrency: usize) -> anyhow::Result<()> {
    ensure_tool("pgbench", "postgresql-contrib")
        .await
        .or_else(|_| {
            if which("pgbench") || std::path::Path::new("/usr/lib/postgresql").exists() {
                Ok(())
            } else {
                bail!("pgbench missing")
            }
        })?;
    let client = platform.client();
    // Senders with enough money for the whole run; each sends to a receiver.
    let mut pairs = Vec::new();
    for i in 0..concurrency {
        let (sender, from) = client
            .new_user(&format!("bench-s{i}"))
            .await
            .with_wallet("USD")
            .await;
        for _ in 0..4 {
            let deposit = sender
                .pay(
                    "deposit",
                    json!({"to_wallet_id": from, "amount": "9000.00", "currency": "USD"}),
                    &uuid::Uuid::new_v4().to_string(),
                    Some(30),
                )
                .await;
            if deposit.body["data"]["status"] != "COMPLETED" {
                bail!("funding failed: {}", deposit.body);
            }
        }
        let (_, to) = client
            .new_user(&format!("bench-r{i}"))
            .await
            .with_wallet("USD")
            .await;
        pairs.push((sender, from, to));
    }

    let http = reqwest::Client::new();
    let payments_db = platform
        .backing
        .database_url(&format!("{}_payment", platform.options.database_prefix));
    // C's clock, which stamps the payments.
    let started_at = psql_value(&payments_db, "SELECT now()").await?;
    let before = cost::snapshot(platform, &http).await?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = pairs
        .into_iter()
        .map(|(sender, from, to)| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut ids = Vec::new();
                let mut refused = 0usize;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let a = sender
                        .pay("transfer", json!({"from_wallet_id": from, "to_wallet_id": to, "amount": "1.00", "currency": "USD"}), &uuid::Uuid::new_v4().to_string(), None)
                        .await;
                    // Only accepted payments count: a refusal is not an accept latency.
                    if a.status == StatusCode::ACCEPTED {
                        latencies.push(t.elapsed());
                        ids.push(a.body["data"]["id"].as_str().unwrap_or_default().to_owned());
                    } else {
                        refused += 1;
                    }
                }
                (sender, latencies, ids, refused)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut refused = 0usize;
    for t in tasks {
        let (_sender, l, _ids, r) = t.await?;
        latencies.extend(l);
        refused += r;
    }
    // Completed = the moment the last accepted payment is terminal, read from C's
    // database: asking through the gateway would add its own load to what is measured.
    let completed = loop {
        let counts = psql_value(
            &payments_db,
            &format!(
                "SELECT count(*) FILTER (WHERE status IN ('PENDING', 'ON_HOLD')) || '|' || \
                 count(*) FILTER (WHERE status = 'COMPLETED') \
                 FROM payments WHERE kind = 'transfer' AND created_at >= '{}'",
                started_at
            ),
        )
        .await?;
        let (open, done) = counts.split_once('|').unwrap_or(("0", "0"));
        if open == "0" {
            break done.parse::<u64>().unwrap_or(0);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elapsed = started.elapsed();
    // The payments are settled; the consumers that follow them (D, E, F) may still be
    // working through their queues: their work is the payments' cost too. Done when no
    // event has been consumed for a second.
    let mut after = cost::snapshot(platform, &http).await?;
    let mut quiet = 0;
    while quiet < 4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = cost::snapshot(platform, &http).await?;
        quiet = if now.consumed == after.consumed {
            quiet + 1
        } else {
            0
        };
        after = now;
    }
    // Backends report their commits at most once a second: give the last ones time.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    after.xacts = cost::snapshot(platform, &http).await?.xacts;
    let paid = cost::Cost::between(&before, &after, completed);
    latencies.sort();
    let pct = |p: usize| {
        latencies
            .get(latencies.len().saturating_sub(1) * p / 100)
            .copied()
            .unwrap_or_default()
    };

    // Baseline: TPC-B on the same server, same concurrency.
    let pgbench_db = format!("{}_pgbench", platform.options.database_prefix);
    let server = platform.backing.database_url("postgres");
    run_psql(&server, &format!("DROP DATABASE IF EXISTS {pgbench_db}")).await?;
    run_psql(&server, &format!("CREATE DATABASE {pgbench_db}")).await?;
    let url = platform.backing.database_url(&pgbench_db);
    let pgbench = pgbench_path();
    let init = Command::new(&pgbench)
        .args(["-i", "-q", "-s", "1", &url])
        .output()
        .await?;
    if !init.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    let (postgres_before, children_before) = (
        cost::backing_now().get("postgres").copied().unwrap_or(0),
        cost::own_children_ticks(),
    );
    let out = Command::new(&pgbench)
        .args([
            "-c",
            &concurrency.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            &url,
        ])
        .output()
        .await?;
    // pgbench has exited and been reaped: its ticks are this process's children's.
    let postgres_ticks = cost::backing_now()
        .get("postgres")
        .copied()
        .unwrap_or(0)
        .saturating_sub(postgres_before);
    let pgbench_ticks = cost::own_children_ticks().saturating_sub(children_before);
    let text = String::from_utf8_lossy(&out.stdout);
    let transactions = cost::pgbench_transactions(&text)
        .with_context(|| format!("no transaction count in pgbench output:\n{text}"))?;
    let tpcb_ms = cost::tpcb_ms(postgres_ticks, pgbench_ticks, transactions);
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("no tps in pgbench output:\n{text}"))?;
    run_psql(&server, &format!("DROP DATABASE IF EXISTS {pgbench_db}")).await?;

    #[allow(clippy::float_arithmetic, clippy::cast_precision_loss)]
    {
        let rate = completed as f64 / elapsed.as_secs_f64();
        println!("\n{concurrency} concurrent clients, {seconds} s of submissions");
        println!(
            "payments accepted: {}, refused: {refused}, completed: {completed} in {:.1} s",
            latencies.len(),
            elapsed.as_secs_f64()
        );
        println!("completed payments/s through the gateway: {rate:.1}");
        println!(
            "accept latency p50 {:.1} ms, p99 {:.1} ms",
            pct(50).as_secs_f64() * 1000.0,
            pct(99).as_secs_f64() * 1000.0
        );
        println!("pgbench TPC-B on the same PostgreSQL, -c {concurrency}: {tps:.1} tps");
        println!(
            "throughput ratio (payments/s : TPC-B tps) = {:.3}",
            rate / tps
        );
        println!("\n{paid}");
        println!(
            "PostgreSQL CPU per payment: {:.3} ms; per TPC-B transaction (PostgreSQL + pgbench): {tpcb_ms:.3} ms",
            paid.part_ms("postgres")
        );
        println!(
            "cost ratio (CPU per payment / CPU per TPC-B transaction) = {:.2}",
            paid.total_ms() / tpcb_ms
        );
    }
    Ok(())
}

fn pgbench_path() -> String {
    if which("pgbench") {
        return "pgbench".to_owned();
    }
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("bin/pgbench"))
                .find(|p| p.exists())
        })
        .map_or_else(|| "pgbench".to_owned(), |p| p.display().to_string())
}

/// The single value `sql` answers, as psql prints it unaligned.
async fn psql_value(url: &str, sql: &str) -> anyhow::Result<String> {
    let out = Command::new("psql")
        .args([url, "-Atc", sql])
        .output()
        .await?;
    if !out.status.success() {
        bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn run_psql(url: &str, sql: &str) -> anyhow::Result<()> {
    psql_value(url, sql).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_two_middle_values() {
        assert_eq!(middle(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(middle(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(middle(Vec::new()).is_nan());
    }

    #[test]
    fn the_median_interval_needs_six_values_and_widens_to_the_sign_test_bounds() {
        assert_eq!(median_interval(vec![1.0; 5]), None);
        let six: Vec<f64> = (1..=6).map(f64::from).collect();
        // P(no heads in 6) = 1/64 <= 2.5% < P(at most one) = 7/64.
        assert_eq!(median_interval(six), Some((1.0, 6.0)));
        let nine: Vec<f64> = [9, 1, 8, 2, 7, 3, 6, 4, 5]
            .into_iter()
            .map(f64::from)
            .collect();
        // 10/512 <= 2.5% < 46/512: the 2nd smallest and the 2nd largest.
        assert_eq!(median_interval(nine), Some((2.0, 8.0)));
        let sixteen: Vec<f64> = (1..=16).map(f64::from).collect();
        // 697/65536 <= 2.5% < 2517/65536.
        assert_eq!(median_interval(sixteen), Some((4.0, 13.0)));
    }

    #[test]
    fn the_verdict_says_which_proxy_added_less_only_when_the_interval_excludes_zero() {
        let added = |per_round: Vec<(f64, f64)>| Added {
            nginx_label: "nginx, 2 workers".to_owned(),
            per_round,
            sidecar: 0.0,
            nginx: 0.0,
            sidecar_not_worse: 0,
        };
        let faster = added(vec![(0.2, 0.3); 9]);
        assert!(
            faster
                .verdict()
                .ends_with("the sidecar added less latency than nginx, 2 workers")
        );
        let slower = added(vec![(0.4, 0.3); 9]);
        assert!(
            slower
                .verdict()
                .ends_with("the sidecar added more latency than nginx, 2 workers")
        );
        let mixed = added(
            [(0.2, 0.3), (0.4, 0.3)]
                .into_iter()
                .cycle()
                .take(9)
                .collect(),
        );
        assert!(mixed.verdict().ends_with("measurable in this run"));
    }

    #[test]
    fn latency_is_read_in_microseconds_from_the_script_line_and_else_from_wrks_report() {
        let report = "Latency Distribution\n     50%    1.62ms\n     99%    6.30ms\nRequests/sec:   2203.50\n";
        assert_eq!(parse_wrk(report).unwrap(), (2203.5, 1.62, 6.3));
        let scripted = format!("{report}{LATENCY_LINE} 1617.0 6304.0\n");
        assert_eq!(parse_wrk(&scripted).unwrap(), (2203.5, 1.617, 6.304));
        assert!(parse_wrk("no figures").is_err());
    }

    #[test]
    fn the_latency_script_prints_the_line_the_parser_reads_in_done() {
        let script = std::fs::read_to_string(latency_script().unwrap()).unwrap();
        assert!(script.starts_with("done = function(summary, latency, requests)\n"));
        assert!(script.contains(&format!(
            "io.write(string.format(\"{LATENCY_LINE} %.1f %.1f\\n\", latency:percentile(50), latency:percentile(99)))"
        )));
        assert!(script.ends_with("\nend\n"));
    }

    #[test]
    fn nginx_is_measured_at_the_asked_workers_or_else_at_one_and_at_one_per_cpu() {
        assert_eq!(nginx_workers(Some(3)), vec![3]);
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let defaults = nginx_workers(None);
        assert_eq!(defaults.first(), Some(&1));
        assert_eq!(defaults.last(), Some(&cpus));
        assert_eq!(defaults.len(), if cpus == 1 { 1 } else { 2 });
        assert_eq!(nginx_label(1), "nginx, 1 worker");
        assert_eq!(nginx_label(2), "nginx, 2 workers");
    }

    #[test]
    fn the_compared_build_is_called_faster_only_when_its_rounds_say_so() {
        let rounds = |p50s: &[f64]| -> Vec<Round> {
            p50s.iter()
                .map(|&p50| Round {
                    p50,
                    ..Round::default()
                })
                .collect()
        };
        let sidecar = rounds(&[1.0; 9]);
        assert!(
            compared_verdict(&rounds(&[0.9; 9]), &sidecar)
                .ends_with("the compared build is faster")
        );
        assert!(
            compared_verdict(&rounds(&[1.1; 9]), &sidecar)
                .ends_with("the compared build is slower")
        );
        let mixed = rounds(&[0.9, 1.1, 0.9, 1.1, 0.9, 1.1, 0.9, 1.1, 1.0]);
        assert!(compared_verdict(&mixed, &sidecar).ends_with("measurable in this run"));
        assert!(compared_verdict(&rounds(&[0.9; 3]), &sidecar[..3]).contains("6 or more rounds"));
    }
}
