//! Reporting through the gateway: F's reports agree with B's ledger, and the dashboard
//! renders its charts in a real (headless) browser.

use std::collections::BTreeMap;
use std::time::Duration;

use finflow_e2e::client::User;
use finflow_e2e::journey::key;
use finflow_e2e::launcher::{Options, Platform, repo_root};
use finflow_e2e::tools::ensure_tool;
use finflow_platform::testing::body_of;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::process::Command;

/// B's ledger, read from B's own database (the ground truth the report must match).
async fn ledger_in_b(platform: &Platform) -> BTreeMap<(String, String), (i64, String)> {
    let wallet = platform
        .services
        .iter()
        .find(|s| s.name == "wallet")
        .unwrap();
    let out = Command::new("psql")
        .args([
            &platform.backing.database_url(&wallet.database),
            "-AtF|",
            "-c",
            "SELECT currency, kind, count(*), sum(amount)::numeric(20,4) FROM journal_entries GROUP BY 1, 2 ORDER BY 1, 2",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (
                (f[0].to_owned(), f[1].to_owned()),
                (f[2].parse().unwrap(), f[3].to_owned()),
            )
        })
        .collect()
}

fn normalize(amount: &str) -> String {
    // "10.5000" and "10.5" are the same amount.
    let t = if amount.contains('.') {
        amount.trim_end_matches('0').trim_end_matches('.')
    } else {
        amount
    };
    t.to_owned()
}

/// `user`'s statement as sorted (kind, direction, status, amount) lines, once it has
/// `lines` lines, all settled: F follows the events, which may land after B's ledger
/// entries. After a deadline, whatever it shows.
async fn statement_of(user: &User, lines: usize) -> Vec<(String, String, String, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = user.client.get("/api/v1/reports/me/statement").await;
        let mut got: Vec<(String, String, String, String)> = answer
            .data(StatusCode::OK)
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let text = |k: &str| l[k].as_str().unwrap_or_default().to_owned();
                (
                    text("kind"),
                    text("direction"),
                    text("status"),
                    normalize(&text("amount")),
                )
            })
            .collect();
        got.sort();
        let settled = got.len() >= lines && got.iter().all(|l| l.2 == "COMPLETED");
        if settled || tokio::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn the_transaction_report_agrees_with_the_ledger_and_the_dashboard_draws_it() {
    let mut platform = Platform::start(Options::isolated())
        .await
        .unwrap_or_else(|e| panic!("the platform did not start: {e:#}"));
    let client = platform.client();
    let ops = platform
        .staff_user(&client, "ops@finflow.local", "ops")
        .await
        .unwrap_or_else(|e| panic!("granting ops: {e:#}"));

    // A journey: deposits, a transfer, a withdrawal, one refused at the door.
    let (alice, a) = client.new_user("alice").await.with_wallet("USD").await;
    let (bob, b) = client.new_user("bob").await.with_wallet("USD").await;
    for (user, body) in [
        (
            &alice,
            json!({"to_wallet_id": a, "amount": "250.00", "currency": "USD"}),
        ),
        (
            &bob,
            json!({"to_wallet_id": b, "amount": "40.10", "currency": "USD"}),
        ),
    ] {
        let d = user.pay("deposit", body, &key(), Some(20)).await;
        assert_eq!(d.data(StatusCode::OK)["status"], "COMPLETED");
    }
    let t = alice
        .pay(
            "transfer",
            json!({"from_wallet_id": a, "to_wallet_id": b, "amount": "99.99", "currency": "USD"}),
            &key(),
            Some(20),
        )
        .await;
    assert_eq!(t.data(StatusCode::OK)["status"], "COMPLETED");
    let w = bob
        .pay(
            "withdrawal",
            json!({"from_wallet_id": b, "amount": "20.00", "currency": "USD"}),
            &key(),
            Some(20),
        )
        .await;
    assert_eq!(w.data(StatusCode::OK)["status"], "COMPLETED");

    // The report (built from events only) converges to B's ledger.
    let truth = ledger_in_b(&platform).await;
    assert_eq!(truth.len(), 3, "{truth:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let report = ops.client.get("/api/v1/reports/transactions").await;
        let totals: BTreeMap<(String, String), (i64, String)> =
            report.data(StatusCode::OK)["ledger_totals"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    (
                        (
                            t["currency"].as_str().unwrap().to_owned(),
                            t["kind"].as_str().unwrap().to_owned(),
                        ),
                        (
                            t["entries"].as_i64().unwrap(),
                            normalize(t["amount"].as_str().unwrap()),
                        ),
                    )
                })
                .collect();
        let expected: BTreeMap<_, _> = truth
            .iter()
            .map(|(k, (n, a))| (k.clone(), (*n, normalize(a))))
            .collect();
        if totals == expected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "report {totals:?} never matched the ledger {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let csv = ops
        .client
        .http
        .get(ops.client.url("/api/v1/reports/transactions?format=csv"))
        .bearer_auth(ops.session["access_token"].as_str().unwrap());
    let csv = body_of(csv).await;
    assert!(
        csv.starts_with("payment_id,user_id,kind,status,amount"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 5, "a header and four payments: {csv}");
    let denied = alice.client.get("/api/v1/reports/transactions").await;
    assert_eq!(denied.error(StatusCode::FORBIDDEN), "FORBIDDEN");
    // Each statement shows both sides: Bob's deposit and withdrawal, and Alice's transfer
    // as money in (F finds its receiver through the wallets' owners); Alice sees it as
    // money out.
    let line = |kind: &str, direction: &str, amount: &str| {
        (
            kind.to_owned(),
            direction.to_owned(),
            "COMPLETED".to_owned(),
            amount.to_owned(),
        )
    };
    let mut expected = vec![
        line("deposit", "in", "40.1"),
        line("transfer", "in", "99.99"),
        line("withdrawal", "out", "20"),
    ];
    expected.sort();
    assert_eq!(
        statement_of(&bob, expected.len()).await,
        expected,
        "Bob's statement"
    );
    let mut expected = vec![
        line("deposit", "in", "250"),
        line("transfer", "out", "99.99"),
    ];
    expected.sort();
    assert_eq!(
        statement_of(&alice, expected.len()).await,
        expected,
        "Alice's statement"
    );

    // Queue health as RabbitMQ reports it: every consumer queue with its consumers
    // (each service consumes its own), and every dead-letter queue, here empty.
    // F reads the depths every few seconds: its first reading may predate a queue or
    // a consumer, so wait for a reading with every queue consumed.
    let consumed = |queues: &[Value]| {
        queues.len() == 12
            && queues
                .iter()
                .filter(|q| !q["queue"].as_str().unwrap_or_default().ends_with(".dead"))
                .all(|q| q["consumers"].as_u64() >= Some(1))
    };
    let mut queues = Vec::new();
    for _ in 0..60 {
        let summary = ops.client.get("/api/v1/reports/summary").await;
        assert_eq!(summary.status, 200, "{}", summary.body);
        queues = summary.body["data"]["queue_health"]["queues"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if consumed(&queues) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let queue = |name: &str| {
        queues
            .iter()
            .find(|q| q["queue"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {queues:?}"))
            .clone()
    };
    for name in finflow_e2e::launcher::CONSUMER_QUEUES {
        let q = queue(name);
        assert!(
            q["consumers"].as_u64() >= Some(1),
            "{name} has a consumer: {q}"
        );
        let dead = queue(&format!("{name}.dead"));
        assert_eq!(dead["messages"], 0, "nothing was dead-lettered: {dead}");
    }

    // The dashboard in headless Chromium (Debian's package), with the ops token.
    ensure_tool("chromium", "chromium")
        .await
        .expect("chromium can be installed");
    let token = ops.session["access_token"].as_str().unwrap();
    let url = format!("{}/dashboard#token={token}", platform.gateway_url);
    let profile = platform.options.log_dir.join("chromium-profile");
    let chromium = |extra: Vec<String>| {
        let mut args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--no-first-run".to_owned(),
            format!("--user-data-dir={}", profile.display()),
            "--virtual-time-budget=10000".to_owned(),
        ];
        args.extend(extra);
        args.push(url.clone());
        Command::new("chromium").args(args).output()
    };
    let dom = chromium(vec!["--dump-dom".to_owned()]).await.unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page did not load its data: {dom}"
    );
    for chart in ["volume", "statuses", "funnel", "queue"] {
        let start = dom
            .find(&format!("id=\"{chart}\""))
            .unwrap_or_else(|| panic!("no {chart} chart"));
        let section = &dom[start..dom[start..].find("</svg>").map_or(dom.len(), |e| start + e)];
        assert!(
            section.contains("class=\"bar"),
            "the {chart} chart has no bars: {section}"
        );
    }
    assert!(dom.contains("COMPLETED"), "the status chart names its bars");
    assert!(
        dom.contains("payment.requests (") && dom.contains("dead letters"),
        "the queue chart names each queue and the dead letters"
    );
    let shot = repo_root().join("target/dashboard.png");
    let taken = chromium(vec![
        "--window-size=1280,900".to_owned(),
        format!("--screenshot={}", shot.display()),
    ])
    .await
    .unwrap();
    assert!(
        taken.status.success(),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false),
        "no screenshot at {}",
        shot.display()
    );
    platform.stop().await;
}
