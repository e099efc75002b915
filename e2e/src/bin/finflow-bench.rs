//! `finflow-bench`: figures, each with a baseline measured in the same run.
//!
//! - `edge`: requests/s and p50/p99 of `GET /api/v1/users/me` on service A directly
//!   (identity headers set by wrk, as a sidecar would), through its sidecar with a real
//!   JWT, and through an nginx hop (the baseline: a proxy that validates nothing, set up
//!   to forward the same headers), each path handing the app the same request.
//! - `payments`: completed transfers/s and accept p50/p99 through the gateway, against
//!   pgbench's TPC-B tps on the same PostgreSQL at the same concurrency.
//!
//! Both start an isolated platform with the launcher. wrk, nginx and pgbench come from
//! Debian packages; they are installed with apt-get when missing.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use finflow_e2e::client::Client;
use finflow_e2e::launcher::{Options, Platform};
use finflow_e2e::tools::{ensure_tool, which};
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
    /// Rounds of the edge benchmark (each measures every path once).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

#[derive(Subcommand)]
enum Bench {
    /// App directly vs through the sidecar (JWT) vs through nginx.
    Edge,
    /// Payments through the gateway vs pgbench TPC-B on the same PostgreSQL.
    Payments,
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
    if matches!(cli.bench, Bench::Edge) {
        // The measured sidecar gets as many event loops as nginx gets workers.
        options.env_overrides.push((
            "auth-sidecar".to_owned(),
            "WORKER_THREADS".to_owned(),
            PROXY_WORKERS.to_string(),
        ));
    }
    let mut platform = Platform::start(options).await?;
    let result = match cli.bench {
        Bench::Edge => edge(&platform, cli.seconds, cli.concurrency, cli.rounds.max(1)).await,
        Bench::Payments => payments(&platform, cli.seconds, cli.concurrency).await,
    };
    platform.stop().await;
    result
}

/// Runs wrk and returns (requests/s, p50 ms, p99 ms).
async fn wrk(
    url: &str,
    headers: &[(String, String)],
    seconds: u64,
    concurrency: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let mut cmd = Command::new("wrk");
    // wrk needs at least one connection per thread.
    cmd.args([
        &format!("-t{}", concurrency.clamp(1, 2)),
        &format!("-c{concurrency}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    let out = cmd.arg(url).output().await.context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let non2xx = text
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .map(str::to_owned);
    if let Some(line) = non2xx {
        bail!("wrk saw errors against {url}: {line}\n{text}");
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
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

/// Event loops of the measured sidecar and worker processes of nginx: both proxies get
/// the same share of the machine's two cores.
const PROXY_WORKERS: usize = 2;

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

/// The median (the upper one of an even count), NaN for none.
fn middle(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
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

/// What each proxy added to the app's p50, compared within each round (the paths of a
/// round run back to back, so they share the machine's state of the moment).
struct Added {
    /// (sidecar, nginx) per round, ms.
    per_round: Vec<(f64, f64)>,
    sidecar: f64,
    nginx: f64,
    /// Rounds in which the sidecar added no more than nginx.
    sidecar_not_worse: usize,
}

#[allow(clippy::float_arithmetic)]
fn added_latency([direct, sidecar, nginx]: &[Vec<Round>; 3]) -> Added {
    let per_round: Vec<(f64, f64)> = direct
        .iter()
        .zip(sidecar)
        .zip(nginx)
        .map(|((d, s), n)| (s.p50 - d.p50, n.p50 - d.p50))
        .collect();
    let median_of = |f: fn(&(f64, f64)) -> f64| middle(per_round.iter().map(f).collect());
    Added {
        sidecar: median_of(|r| r.0),
        nginx: median_of(|r| r.1),
        sidecar_not_worse: per_round.iter().filter(|(s, n)| s <= n).count(),
        per_round,
    }
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

/// wrk against `url`, with the CPU `proxy` and `app` spent meanwhile.
#[allow(clippy::float_arithmetic, clippy::cast_precision_loss)]
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
    let requests = rps * seconds as f64;
    let per_request = |ticks: u64| ticks as f64 / USER_HZ * 1_000_000.0 / requests.max(1.0);
    Ok(Round {
        rps,
        p50,
        p99,
        proxy_cpu: per_request(proxy_after.saturating_sub(proxy_before)),
        app_cpu: per_request(app_after.saturating_sub(app_before)),
    })
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

async fn edge(
    platform: &Platform,
    seconds: u64,
    concurrency: usize,
    rounds_wanted: usize,
) -> anyhow::Result<()> {
    ensure_tool("wrk", "wrk").await?;
    ensure_tool("nginx", "nginx").await?;
    let user = Client::new(&platform.gateway_url).new_user("bench").await;
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

    // nginx: one keep-alive proxy hop to the app, nothing else.
    let dir = platform.options.log_dir.join("nginx");
    std::fs::create_dir_all(&dir)?;
    let nginx_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let conf = format!(
        "daemon off; worker_processes {PROXY_WORKERS}; pid {dir}/nginx.pid; error_log {dir}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; client_body_temp_path {dir}; proxy_temp_path {dir};\n\
           upstream app {{ server 127.0.0.1:{app_port}; keepalive 64; }}\n\
           server {{ listen 127.0.0.1:{nginx_port};\n\
             location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
               proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Host $http_host;\n\
               proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Real-IP $remote_addr;\n\
               proxy_set_header X-Request-Id $request_id; add_header X-Request-Id $request_id always; }} }} }}\n",
        dir = dir.display()
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let nginx_bin = if which("nginx") && std::path::Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    };
    let conf_arg = conf_path.display().to_string();
    let error_log = dir.join("error.log").display().to_string();
    // nginx's workers must not inherit our stdout: they would outlive the master's kill.
    let mut nginx = Command::new(nginx_bin)
        .args(["-c", &conf_arg, "-e", &error_log])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting nginx")?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Every path hands the app the same request, so the app's own work is the same and
    // the difference is the hop: the identity headers the sidecar makes of this token,
    // the forwarding headers and request id a proxy sets, and a caller's trace context.
    let traceparent = (
        "traceparent".to_owned(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
    );
    // The sidecar passes the token on too (the app may read it): the others carry it.
    let authorization = ("authorization".to_owned(), format!("Bearer {token}"));
    let mut identity = identity_headers(&token)?;
    identity.push(traceparent.clone());
    identity.push(authorization.clone());
    let mut direct_headers = identity.clone();
    direct_headers.extend([
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
    let bearer = vec![authorization, traceparent];
    let path = "/api/v1/users/me";
    // Warm-up, then rounds of the three measurements interleaved (so drift in the
    // machine's load hits all three alike); each figure's median is reported.
    wrk(
        &format!("{}{path}", auth.app_url),
        &direct_headers,
        2,
        concurrency,
    )
    .await?;
    let app: Vec<u32> = platform.pid("auth").into_iter().collect();
    let sidecar_pid: Vec<u32> = platform.pid("auth-sidecar").into_iter().collect();
    let nginx_pids = nginx.id().map(with_children).unwrap_or_default();
    let targets = [
        (
            format!("{}{path}", auth.app_url),
            &direct_headers,
            Vec::new(),
        ),
        (format!("{}{path}", auth.sidecar_url), &bearer, sidecar_pid),
        (
            format!("http://127.0.0.1:{nginx_port}{path}"),
            &identity,
            nginx_pids,
        ),
    ];
    let mut rounds: [Vec<Round>; 3] = Default::default();
    for round in 0..rounds_wanted {
        // The two proxies swap places every round, so a machine getting slower or
        // faster during a round favours neither.
        let order: [usize; 3] = if round % 2 == 0 { [0, 1, 2] } else { [0, 2, 1] };
        for i in order {
            let (url, headers, proxy) = &targets[i];
            rounds[i].push(measured(url, headers, seconds, concurrency, proxy, &app).await?);
        }
    }
    let added = added_latency(&rounds);
    let [direct, sidecar, via_nginx] = rounds.map(|r| median(&r));
    // A graceful stop takes the workers down with the master.
    let _ = Command::new(nginx_bin)
        .args(["-c", &conf_arg, "-e", &error_log, "-s", "stop"])
        .status()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(5), nginx.wait()).await;
    nginx.kill().await.ok();

    println!(
        "\nGET {path}, {concurrency} connections, {seconds} s each (wrk), medians of {rounds_wanted} interleaved rounds"
    );
    println!("sidecar: {PROXY_WORKERS} event loops; nginx: {PROXY_WORKERS} worker processes");
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>14} {:>12}",
        "path", "req/s", "p50 ms", "p99 ms", "proxy CPU µs", "app CPU µs"
    );
    for (name, r) in [
        ("app directly", direct),
        ("sidecar (JWT validated) -> app", sidecar),
        ("nginx (no auth) -> app", via_nginx),
    ] {
        let proxy = if r.proxy_cpu > 0.0 {
            format!("{:.1}", r.proxy_cpu)
        } else {
            "-".to_owned()
        };
        println!(
            "{name:<34} {:>8.0} {:>8.2} {:>8.2} {proxy:>14} {:>12.1}",
            r.rps, r.p50, r.p99, r.app_cpu
        );
    }
    println!(
        "\nadded p50 latency per round (ms, sidecar / nginx): {}",
        added
            .per_round
            .iter()
            .map(|(s, n)| format!("{s:.2}/{n:.2}"))
            .collect::<Vec<_>>()
            .join("  ")
    );
    println!(
        "added p50 latency, median of the rounds: sidecar {:.2} ms, nginx {:.2} ms; the sidecar added no more than nginx in {} of {} rounds",
        added.sidecar,
        added.nginx,
        added.sidecar_not_worse,
        added.per_round.len()
    );
    println!(
        "proxy CPU per request (the cost behind that latency on a busy machine): sidecar {:.1} µs, nginx {:.1} µs (the app's own: {:.1} µs)",
        sidecar.proxy_cpu, via_nginx.proxy_cpu, direct.app_cpu
    );
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
    let client = Client::new(&platform.gateway_url);
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
                    if a.status == reqwest::StatusCode::ACCEPTED {
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
    let mut pending = Vec::new();
    let mut refused = 0usize;
    for t in tasks {
        let (sender, l, ids, r) = t.await?;
        latencies.extend(l);
        refused += r;
        pending.push((sender, ids));
    }
    // Completed = the moment the last accepted payment is terminal.
    let mut completed = 0usize;
    for (sender, ids) in &pending {
        for id in ids {
            loop {
                let p = sender.client.get(&format!("/api/v1/payments/{id}")).await;
                let status = p.body["data"]["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if status == "COMPLETED" {
                    completed += 1;
                    break;
                }
                if status != "PENDING" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let elapsed = started.elapsed();
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
    let text = String::from_utf8_lossy(&out.stdout);
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
        println!("ratio payments/s : TPC-B tps = {:.2}", rate / tps);
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

async fn run_psql(url: &str, sql: &str) -> anyhow::Result<()> {
    let out = Command::new("psql")
        .args([url, "-qc", sql])
        .output()
        .await?;
    if !out.status.success() {
        bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
