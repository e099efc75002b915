//! KYC decisions reaching A, against real PostgreSQL: from E's authenticated call only
//! (never from the bus, where any service could publish one), possibly more than once
//! and out of order (the request's call and E's notifier): the newest decision stands.

use chrono::{DateTime, Duration, Utc};
use finflow_auth::consumers::{KycUpdates, kyc_queue};
use finflow_auth::kyc::{self, Decision, Outcome};
use finflow_platform::db::{self, TestDb};
use finflow_platform::events::consumer::{Outcome as Consumed, apply_once};
use finflow_platform::events::{Event, types};
use finflow_platform::identity::KycStatus;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

async fn user(pool: &PgPool) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO users (id, email, password_hash, full_name, phone) \
         VALUES ($1, $2, 'x', 'Ada Lovelace', '+14155550100')",
    )
    .bind(id)
    .bind(format!("u-{}@finflow.test", id.simple()))
    .execute(pool)
    .await
    .unwrap();
    id
}

async fn status(pool: &PgPool, user: Uuid) -> String {
    db::scalar_of(pool, "SELECT kyc_status FROM users WHERE id = $1", user).await
}

fn decision(status: KycStatus, at: DateTime<Utc>) -> Decision {
    Decision {
        kyc_status: status,
        decided_at: Some(at),
    }
}

/// `event` delivered to A's KYC consumer once, as its queue would deliver it.
async fn deliver(pool: &PgPool, event: &Event) -> Consumed {
    apply_once(pool, &kyc_queue().name, &KycUpdates, event)
        .await
        .unwrap()
}

fn event(user: Uuid, status: &str, at: Option<DateTime<Utc>>) -> Event {
    let mut data = json!({"user_id": user, "kyc_status": status, "submission_id": Uuid::now_v7()});
    if let Some(at) = at {
        data["decided_at"] = json!(at);
    }
    Event::new("kyc", types::USER_KYC_UPDATED, &data).unwrap()
}

#[tokio::test]
async fn a_kyc_decision_from_the_bus_changes_no_one_s_standing() {
    let db = TestDb::new(Some(&finflow_auth::MIGRATIONS)).await;
    let (forger, victim) = (user(&db.pool).await, user(&db.pool).await);
    let mut conn = db.pool.acquire().await.unwrap();
    kyc::apply(
        &mut conn,
        victim,
        &decision(KycStatus::Verified, Utc::now()),
    )
    .await
    .unwrap();

    // Published by whoever holds the broker's credentials (D's, F's): a user declared
    // verified would move money, one declared rejected could not.
    for (who, forged) in [(forger, "verified"), (victim, "rejected")] {
        let later = Utc::now() + Duration::seconds(1);
        let consumed = deliver(&db.pool, &event(who, forged, Some(later))).await;
        assert!(matches!(consumed, Consumed::Applied), "{consumed:?}");
    }
    assert_eq!(status(&db.pool, forger).await, "pending");
    assert_eq!(status(&db.pool, victim).await, "verified");
}

#[tokio::test]
async fn a_late_approval_does_not_undo_a_revocation_that_came_first() {
    let db = TestDb::new(Some(&finflow_auth::MIGRATIONS)).await;
    let who = user(&db.pool).await;
    let approved = Utc::now();
    let revoked = approved + Duration::milliseconds(5);
    let mut conn = db.pool.acquire().await.unwrap();

    // The revocation's call arrives before the approval's (told again by E's notifier).
    let told = kyc::apply(&mut conn, who, &decision(KycStatus::Rejected, revoked)).await;
    assert_eq!(told.unwrap(), Some(Outcome::Applied));
    let late = kyc::apply(&mut conn, who, &decision(KycStatus::Verified, approved)).await;
    assert_eq!(late.unwrap(), Some(Outcome::Superseded));
    assert_eq!(status(&db.pool, who).await, "rejected");

    // The same decision again changes nothing either.
    let again = kyc::apply(&mut conn, who, &decision(KycStatus::Rejected, revoked)).await;
    assert_eq!(again.unwrap(), Some(Outcome::Superseded));

    // A newer verification stands.
    let reverified = revoked + Duration::seconds(60);
    let newer = kyc::apply(&mut conn, who, &decision(KycStatus::Verified, reverified)).await;
    assert_eq!(newer.unwrap(), Some(Outcome::Applied));
    assert_eq!(status(&db.pool, who).await, "verified");
}

#[tokio::test]
async fn a_decision_about_nobody_is_not_found() {
    let db = TestDb::new(Some(&finflow_auth::MIGRATIONS)).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let nobody = Uuid::now_v7();
    let direct = kyc::apply(
        &mut conn,
        nobody,
        &decision(KycStatus::Verified, Utc::now()),
    )
    .await;
    assert_eq!(
        direct.unwrap(),
        None,
        "the route answers 404; E tells it again"
    );
}

#[tokio::test]
async fn a_decision_dated_in_the_future_counts_as_dated_at_most_the_clock_skew_ahead() {
    let db = TestDb::new(Some(&finflow_auth::MIGRATIONS)).await;
    let who = user(&db.pool).await;
    let mut conn = db.pool.acquire().await.unwrap();
    // A mis-clocked "verified" dated years ahead: taken at its word, it would make every
    // real decision until then, a compliance revocation included, superseded.
    let far = Utc::now() + Duration::days(3650);
    let ahead = kyc::apply(&mut conn, who, &decision(KycStatus::Verified, far)).await;
    assert_eq!(ahead.unwrap(), Some(Outcome::Applied));
    assert_eq!(status(&db.pool, who).await, "verified");

    // A revocation made once the skew has passed stands.
    let revoked = Utc::now() + kyc::CLOCK_SKEW + Duration::seconds(1);
    let revocation = kyc::apply(&mut conn, who, &decision(KycStatus::Rejected, revoked)).await;
    assert_eq!(revocation.unwrap(), Some(Outcome::Applied));
    assert_eq!(status(&db.pool, who).await, "rejected");
}
