//! The release that made A and C take E's decisions from its calls alone, applied to a
//! database an earlier E used (real PostgreSQL): the decisions of the last day, which
//! A and C may have left on the bus they no longer read, become notices to tell again.

use std::borrow::Cow;

use finflow_contracts::kyc::{HoldDecision, HoldOutcome, KycDecision};
use finflow_platform::db::{self, TestDb};
use finflow_platform::identity::KycStatus;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use uuid::Uuid;

/// The first migration of the release.
const NOTICES: i64 = 20261207160000;

async fn submission(pool: &PgPool, user: Uuid, status: &str, decided: &str, revoked: Option<&str>) {
    sqlx::query(
        "INSERT INTO kyc_submissions (id, user_id, document_type, document_number, document_url, \
           status, decided_by, decided_at, revoked_by, revoked_reason, revoked_at) \
         VALUES ($1, $2, 'passport', 'AB123456', 'https://docs.example/1', $3, 'auto', \
           now() - $4::text::interval, $5, $5, now() - $6::text::interval)",
    )
    .bind(Uuid::now_v7())
    .bind(user)
    .bind(status)
    .bind(decided)
    .bind(revoked.map(|_| "officer"))
    .bind(revoked)
    .execute(pool)
    .await
    .unwrap();
}

async fn alert(pool: &PgPool, payment: Uuid, rule: &str, status: &str, decided: &str) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO aml_alerts (id, user_id, payment_id, rule, status, decided_by, reason, decided_at) \
         VALUES ($1, $2, $3, $4, $5, 'officer', 'checked', now() - $6::text::interval)",
    )
    .bind(id)
    .bind(Uuid::now_v7())
    .bind(payment)
    .bind(rule)
    .bind(status)
    .bind(decided)
    .execute(pool)
    .await
    .unwrap();
    id
}

async fn notice(pool: &PgPool, target: &str, subject: Uuid) -> Option<Value> {
    sqlx::query_scalar("SELECT body FROM notices WHERE target = $1 AND subject = $2")
        .bind(target)
        .bind(subject)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_upgrade_tells_a_and_c_again_the_decisions_of_the_last_day() {
    let before = Migrator {
        migrations: Cow::Owned(
            finflow_kyc::MIGRATIONS
                .migrations
                .iter()
                .filter(|m| m.version < NOTICES)
                .cloned()
                .collect(),
        ),
        ..Migrator::DEFAULT
    };
    let db = TestDb::new(Some(&before)).await;
    let (verified, revoked, long_ago) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    submission(&db.pool, verified, "verified", "1 hour", None).await;
    submission(&db.pool, revoked, "revoked", "3 hours", Some("1 hour")).await;
    submission(&db.pool, long_ago, "rejected", "2 days", None).await;
    let (cleared, by_pattern, undecided) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let hold = alert(&db.pool, cleared, "amount_threshold", "cleared", "1 hour").await;
    alert(&db.pool, by_pattern, "velocity", "flagged", "1 hour").await;
    sqlx::query(
        "INSERT INTO aml_alerts (id, user_id, payment_id, rule, status) \
         VALUES ($1, $2, $3, 'amount_threshold', 'open')",
    )
    .bind(Uuid::now_v7())
    .bind(Uuid::now_v7())
    .bind(undecided)
    .execute(&db.pool)
    .await
    .unwrap();

    db::migrate(&db.pool, Some(&finflow_kyc::MIGRATIONS))
        .await
        .unwrap();

    let told = |body: Option<Value>| -> KycDecision {
        serde_json::from_value(body.expect("a notice")).unwrap()
    };
    let decision = told(notice(&db.pool, "auth", verified).await);
    assert_eq!(decision.kyc_status, KycStatus::Verified);
    let decision = told(notice(&db.pool, "auth", revoked).await);
    assert_eq!(
        decision.kyc_status,
        KycStatus::Rejected,
        "the revocation, newer than the verification"
    );
    assert!(
        notice(&db.pool, "auth", long_ago).await.is_none(),
        "older than a day"
    );

    let held: HoldDecision =
        serde_json::from_value(notice(&db.pool, "payment", cleared).await.unwrap()).unwrap();
    assert_eq!((held.alert_id, held.outcome), (hold, HoldOutcome::Cleared));
    assert!(
        notice(&db.pool, "payment", by_pattern).await.is_none(),
        "not a hold"
    );
    assert!(
        notice(&db.pool, "payment", undecided).await.is_none(),
        "not decided"
    );
    let due: i64 = db::scalar(
        &db.pool,
        "SELECT count(*) FROM notices WHERE next_attempt_at <= now()",
    )
    .await;
    assert_eq!(due, 3, "all told at the notifier's next round");
}
