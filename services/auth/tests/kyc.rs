//! KYC decisions reaching A twice (E's direct call and the `user.kyc_updated` event), in
//! either order, against real PostgreSQL: the newest decision stands.

use chrono::{DateTime, Duration, Utc};
use finflow_auth::consumers::{KycUpdates, kyc_queue};
use finflow_auth::kyc::{self, Decision, Outcome};
use finflow_platform::db::{self, TestDb};
use finflow_platform::events::consumer::{HandlerError, apply_once};
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
async fn deliver(
    pool: &PgPool,
    event: &Event,
) -> Result<finflow_platform::events::consumer::Outcome, HandlerError> {
    apply_once(pool, &kyc_queue().name, &KycUpdates, event).await
}

fn event(user: Uuid, status: &str, at: Option<DateTime<Utc>>) -> Event {
    let mut data = json!({"user_id": user, "kyc_status": status, "submission_id": Uuid::now_v7()});
    if let Some(at) = at {
        data["decided_at"] = json!(at);
    }
    Event::new("kyc", types::USER_KYC_UPDATED, &data).unwrap()
}

#[tokio::test]
async fn a_late_approval_does_not_undo_a_revocation_that_came_first() {
    let db = TestDb::new(Some(&finflow_auth::MIGRATIONS)).await;
    let who = user(&db.pool).await;
    let approved = Utc::now();
    let revoked = approved + Duration::milliseconds(5);
    let mut conn = db.pool.acquire().await.unwrap();

    // E's call about the revocation arrives before the event of the approval.
    let told = kyc::apply(&mut conn, who, &decision(KycStatus::Rejected, revoked)).await;
    assert_eq!(told.unwrap(), Some(Outcome::Applied));
    deliver(&db.pool, &event(who, "verified", Some(approved)))
        .await
        .unwrap();
    assert_eq!(status(&db.pool, who).await, "rejected");

    // The same decision again (the revocation's own event) changes nothing either.
    let again = kyc::apply(&mut conn, who, &decision(KycStatus::Rejected, revoked)).await;
    assert_eq!(again.unwrap(), Some(Outcome::Superseded));

    // A newer verification stands.
    let reverified = revoked + Duration::seconds(60);
    deliver(&db.pool, &event(who, "verified", Some(reverified)))
        .await
        .unwrap();
    assert_eq!(status(&db.pool, who).await, "verified");
}

#[tokio::test]
async fn an_undated_event_applies_only_where_no_dated_decision_has_arrived() {
    let db = TestDb::new(Some(&finflow_auth::MIGRATIONS)).await;
    let (fresh, decided) = (user(&db.pool).await, user(&db.pool).await);

    // An event from before decisions were dated still works on a user without one...
    deliver(&db.pool, &event(fresh, "verified", None))
        .await
        .unwrap();
    assert_eq!(status(&db.pool, fresh).await, "verified");

    // ...but never overrides a dated decision.
    let mut conn = db.pool.acquire().await.unwrap();
    kyc::apply(
        &mut conn,
        decided,
        &decision(KycStatus::Rejected, Utc::now()),
    )
    .await
    .unwrap();
    deliver(&db.pool, &event(decided, "verified", None))
        .await
        .unwrap();
    assert_eq!(status(&db.pool, decided).await, "rejected");
}

#[tokio::test]
async fn a_decision_about_nobody_is_retried_not_dropped() {
    let db = TestDb::new(Some(&finflow_auth::MIGRATIONS)).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let nobody = Uuid::now_v7();
    let direct = kyc::apply(
        &mut conn,
        nobody,
        &decision(KycStatus::Verified, Utc::now()),
    )
    .await;
    assert_eq!(direct.unwrap(), None, "the route answers 404");
    let outcome = deliver(&db.pool, &event(nobody, "verified", Some(Utc::now()))).await;
    assert!(
        matches!(outcome, Err(HandlerError::Transient(_))),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_decision_dated_in_the_future_counts_as_dated_at_most_the_clock_skew_ahead() {
    let db = TestDb::new(Some(&finflow_auth::MIGRATIONS)).await;
    let who = user(&db.pool).await;
    let mut conn = db.pool.acquire().await.unwrap();
    // A forged or mis-clocked "verified" dated years ahead: taken at its word, it would
    // make every real decision until then, a compliance revocation included, superseded.
    let far = Utc::now() + Duration::days(3650);
    deliver(&db.pool, &event(who, "verified", Some(far)))
        .await
        .unwrap();
    assert_eq!(status(&db.pool, who).await, "verified");

    // A revocation made once the skew has passed stands.
    let revoked = Utc::now() + kyc::CLOCK_SKEW + Duration::seconds(1);
    let revocation = kyc::apply(&mut conn, who, &decision(KycStatus::Rejected, revoked)).await;
    assert_eq!(revocation.unwrap(), Some(Outcome::Applied));
    assert_eq!(status(&db.pool, who).await, "rejected");
}
