//! The `payments` benchmark: payments through the gateway against pgbench's TPC-B on
//! the same PostgreSQL, and what one payment costs ([`finflow_e2e::cost`]).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use finflow_e2e::client::User;
use finflow_e2e::cost;
use finflow_e2e::launcher::Platform;
use finflow_e2e::tools::{ensure_tool, which};
use reqwest::StatusCode;
use serde_json::json;
use tokio::process::Command;

pub(crate) async fn payments(
    platform: &Platform,
    seconds: u64,
    concurrency: usize,
) -> anyhow::Result<()> {
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

    let http = finflow_platform::client::default_client();
    let payments_db = platform
        .backing
        .database_url(&format!("{}_payment", platform.options.database_prefix));

    // Baseline: TPC-B on the same server, same concurrency.
    // Not under the platform's prefix, whose databases the cost table counts.
    let pgbench_db = format!("pgbench_{}", platform.options.database_prefix);
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

    // Rounds of payments, each followed by TPC-B: this machine's speed drifts by a
    // fifth from one minute to the next (every process at once), and TPC-B's CPU a
    // transaction by a tenth from one run to the next (the clients queue on the one
    // branch row of scale 1, and how they queue is chance). A round's ratio compares
    // phases a minute apart at most; the median round is the figure.
    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 1..=ROUNDS {
        let paid = pay_round(platform, &http, &payments_db, &pairs, seconds).await?;
        let tpcb = tpcb_round(&pgbench, &url, concurrency, seconds).await?;
        #[allow(clippy::float_arithmetic)]
        let ratio = paid.cost.total_ms() / tpcb.ms;
        println!(
            "round {round}: {:.1} payments/s, {:.3} CPU ms a payment; TPC-B {:.1} tps, {:.3} CPU ms a transaction; cost ratio {ratio:.2}",
            paid.rate(),
            paid.cost.total_ms(),
            tpcb.tps,
            tpcb.ms
        );
        rounds.push((ratio, paid, tpcb));
    }
    run_psql(&server, &format!("DROP DATABASE IF EXISTS {pgbench_db}")).await?;
    rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let ratios: Vec<String> = rounds.iter().map(|r| format!("{:.2}", r.0)).collect();
    let (ratio, paid, tpcb) = &rounds[rounds.len() / 2];

    #[allow(clippy::float_arithmetic)]
    {
        println!(
            "\nthe median round of {ROUNDS} (cost ratios {}):",
            ratios.join(" / ")
        );
        println!("{concurrency} concurrent clients, {seconds} s of submissions");
        println!(
            "payments accepted: {}, refused: {}, completed: {} in {:.1} s",
            paid.latencies.len(),
            paid.refused,
            paid.completed,
            paid.elapsed.as_secs_f64()
        );
        println!(
            "completed payments/s through the gateway: {:.1}",
            paid.rate()
        );
        println!(
            "accept latency p50 {:.1} ms, p99 {:.1} ms",
            paid.percentile(50).as_secs_f64() * 1000.0,
            paid.percentile(99).as_secs_f64() * 1000.0
        );
        println!(
            "pgbench TPC-B on the same PostgreSQL, -c {concurrency}: {:.1} tps",
            tpcb.tps
        );
        println!(
            "throughput ratio (payments/s : TPC-B tps) = {:.3}",
            paid.rate() / tpcb.tps
        );
        println!("\n{}", paid.cost);
        println!(
            "PostgreSQL CPU per payment: {:.3} ms; per TPC-B transaction (PostgreSQL + pgbench): {:.3} ms",
            paid.cost.part_ms("postgres"),
            tpcb.ms
        );
        println!("cost ratio (CPU per payment / CPU per TPC-B transaction) = {ratio:.2}");
        let shown = |s: Option<f64>| s.map_or_else(|| "unknown".to_owned(), |s| format!("{s:.1}%"));
        println!(
            "CPU stolen by the host (virtual machines): {} while paying, {} during TPC-B; \
             the ratios compare like with like only when both are low",
            shown(paid.steal),
            shown(tpcb.steal)
        );
    }
    Ok(())
}

/// Rounds of payments and TPC-B the figures are the median of.
const ROUNDS: usize = 3;

/// What one round of payments did and cost.
struct PayRound {
    /// Accept latencies, sorted.
    latencies: Vec<Duration>,
    refused: usize,
    completed: u64,
    elapsed: Duration,
    cost: cost::Cost,
    steal: Option<f64>,
}

impl PayRound {
    #[allow(clippy::float_arithmetic, clippy::cast_precision_loss)]
    fn rate(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: usize) -> Duration {
        self.latencies
            .get(self.latencies.len().saturating_sub(1) * p / 100)
            .copied()
            .unwrap_or_default()
    }
}

/// Each sender pays its receiver for `seconds`, as fast as it is answered; then waits
/// until every accepted payment is settled and the consumers that follow them are
/// quiet, and reads what it all cost.
async fn pay_round(
    platform: &Platform,
    http: &reqwest::Client,
    payments_db: &str,
    pairs: &[(User, String, String)],
    seconds: u64,
) -> anyhow::Result<PayRound> {
    // C's clock, which stamps the payments.
    let started_at = psql_value(payments_db, "SELECT now()").await?;
    let before = cost::snapshot(platform, http).await?;
    let machine_before = cost::machine_ticks();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = pairs
        .iter()
        .cloned()
        .map(|(sender, from, to)| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut refused = 0usize;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let a = sender
                        .pay("transfer", json!({"from_wallet_id": from, "to_wallet_id": to, "amount": "1.00", "currency": "USD"}), &uuid::Uuid::new_v4().to_string(), None)
                        .await;
                    // Only accepted payments count: a refusal is not an accept latency.
                    if a.status == StatusCode::ACCEPTED {
                        latencies.push(t.elapsed());
                    } else {
                        refused += 1;
                    }
                }
                (latencies, refused)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut refused = 0usize;
    for t in tasks {
        let (l, r) = t.await?;
        latencies.extend(l);
        refused += r;
    }
    latencies.sort();
    // Completed = the moment the last accepted payment is terminal, read from C's
    // database: asking through the gateway would add its own load to what is measured.
    let completed = loop {
        let counts = psql_value(
            payments_db,
            &format!(
                "SELECT count(*) FILTER (WHERE status IN ('PENDING', 'ON_HOLD')) || '|' || \
                 count(*) FILTER (WHERE status = 'COMPLETED') \
                 FROM payments WHERE kind = 'transfer' AND created_at >= '{started_at}'"
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
    let mut after = cost::snapshot(platform, http).await?;
    let mut quiet = 0;
    while quiet < 4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = cost::snapshot(platform, http).await?;
        quiet = if now.consumed == after.consumed {
            quiet + 1
        } else {
            0
        };
        after = now;
    }
    // Backends report their commits at most once a second: give the last ones time.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    after.xacts = cost::snapshot(platform, http).await?.xacts;
    Ok(PayRound {
        latencies,
        refused,
        completed,
        elapsed,
        cost: cost::Cost::between(&before, &after, completed),
        steal: cost::steal_percent(machine_before, cost::machine_ticks()),
    })
}

/// One TPC-B round's figures.
struct TpcbRound {
    tps: f64,
    /// PostgreSQL's and pgbench's CPU milliseconds a transaction.
    ms: f64,
    steal: Option<f64>,
}

/// Runs pgbench's TPC-B for `seconds` at `concurrency` and reads the CPU it and
/// PostgreSQL spent around it.
async fn tpcb_round(
    pgbench: &str,
    url: &str,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<TpcbRound> {
    let (postgres_before, children_before) = (
        cost::backing_now().get("postgres").copied().unwrap_or(0),
        cost::own_children_ticks(),
    );
    let machine_before = cost::machine_ticks();
    let out = Command::new(pgbench)
        .args([
            "-c",
            &concurrency.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            url,
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
    let steal = cost::steal_percent(machine_before, cost::machine_ticks());
    let text = String::from_utf8_lossy(&out.stdout);
    let transactions = cost::pgbench_transactions(&text)
        .with_context(|| format!("no transaction count in pgbench output:\n{text}"))?;
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("no tps in pgbench output:\n{text}"))?;
    Ok(TpcbRound {
        tps,
        ms: cost::tpcb_ms(postgres_ticks, pgbench_ticks, transactions),
        steal,
    })
}

pub(crate) fn pgbench_path() -> String {
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
pub(crate) async fn psql_value(url: &str, sql: &str) -> anyhow::Result<String> {
    let out = Command::new("psql")
        .args([url, "-Atc", sql])
        .output()
        .await?;
    if !out.status.success() {
        bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub(crate) async fn run_psql(url: &str, sql: &str) -> anyhow::Result<()> {
    psql_value(url, sql).await.map(drop)
}
