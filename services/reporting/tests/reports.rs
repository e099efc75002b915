//! F's reports over HTTP on a real socket against real PostgreSQL, the identity headers
//! as a sidecar sets them.

use finflow_platform::testing::TestService;
use finflow_reporting::Reporting;
use finflow_reporting::reports::{MAX_REPORT_LINES, TRUNCATED_HEADER};
use uuid::Uuid;

fn ops() -> [(&'static str, String); 2] {
    [
        ("x-user-id", Uuid::new_v4().to_string()),
        ("x-user-roles", "user,ops".to_owned()),
    ]
}

/// `n` completed deposits in the read model, a second apart, the newest a minute ago.
async fn payments(f: &TestService, n: i64) {
    sqlx::query(
        "INSERT INTO payments_rm (payment_id, user_id, kind, status, amount, currency, created_at, last_event_at) \
         SELECT gen_random_uuid(), gen_random_uuid(), 'deposit', 'COMPLETED', 1, 'USD', \
                now() - interval '1 minute' - i * interval '1 second', now() \
         FROM generate_series(1, $1) AS i",
    )
    .bind(n)
    .execute(&f.db.pool)
    .await
    .unwrap();
}

async fn report(f: &TestService, query: &str) -> (u16, Option<String>, String) {
    let mut req = f
        .http
        .get(f.url(&format!("/api/v1/reports/transactions{query}")));
    for (name, value) in ops() {
        req = req.header(name, value);
    }
    let r = req.send().await.unwrap();
    let truncated = r
        .headers()
        .get(TRUNCATED_HEADER)
        .map(|v| v.to_str().unwrap().to_owned());
    (r.status().as_u16(), truncated, r.text().await.unwrap())
}

#[tokio::test]
async fn a_transactions_report_over_its_limit_lists_the_oldest_and_says_it_is_cut() {
    let f = TestService::spawn::<Reporting>(&[]).await;
    payments(&f, MAX_REPORT_LINES as i64).await;
    let (status, _, body) = report(&f, "").await;
    assert_eq!(status, 200, "{body}");
    let whole: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(whole["data"]["truncated"], false);
    assert_eq!(
        whole["data"]["payments"].as_array().unwrap().len(),
        MAX_REPORT_LINES
    );

    // One more, the newest: listed no longer, and the report says so.
    let newest = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO payments_rm (payment_id, user_id, kind, status, amount, currency, created_at, last_event_at) \
         VALUES ($1, gen_random_uuid(), 'deposit', 'COMPLETED', 1, 'USD', now() - interval '1 second', now())",
    )
    .bind(newest)
    .execute(&f.db.pool)
    .await
    .unwrap();
    let (status, _, body) = report(&f, "").await;
    assert_eq!(status, 200);
    let cut: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(cut["data"]["truncated"], true);
    let lines = cut["data"]["payments"].as_array().unwrap();
    assert_eq!(lines.len(), MAX_REPORT_LINES);
    assert!(
        lines.iter().all(|l| l["payment_id"] != newest.to_string()),
        "the oldest are listed"
    );
    let (status, truncated, csv) = report(&f, "?format=csv").await;
    assert_eq!(status, 200);
    assert_eq!(truncated.as_deref(), Some("true"));
    assert_eq!(
        csv.lines().count(),
        MAX_REPORT_LINES + 1,
        "a header and the lines"
    );
    let (_, truncated, _) = report(&f, "?format=csv&status=FAILED").await;
    assert_eq!(truncated.as_deref(), Some("false"));
}

#[tokio::test]
async fn a_report_in_an_unknown_format_is_refused() {
    let f = TestService::spawn::<Reporting>(&[]).await;
    let (status, _, body) = report(&f, "?format=xml").await;
    assert_eq!(status, 400, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "VALIDATION_ERROR");
    assert_eq!(body["error"]["details"]["field"], "format");
}
