//! A preview pod, or one whose role the operator has not set yet, consumes nothing
//! until it is promoted.

use std::sync::Arc;
use std::time::Duration;

use finflow_platform::db::{self, TestDb};
use finflow_platform::events::consumer::{self, ConsumerSpec, Handler, HandlerError};
use finflow_platform::events::{self, Event, Publisher, QueueSpec, TestVhost};
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

struct Count;

impl Handler for Count {
    async fn handle(&self, tx: &mut PgConnection, _: &Event) -> Result<(), HandlerError> {
        sqlx::query("UPDATE seen SET n = n + 1")
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

#[tokio::test]
async fn a_preview_pod_leaves_the_queue_alone_until_it_is_promoted() {
    let db = TestDb::new(None).await;
    for sql in [
        "CREATE TABLE seen (n INT NOT NULL)",
        "INSERT INTO seen VALUES (0)",
    ] {
        sqlx::query(sql).execute(&db.pool).await.unwrap();
    }
    let vhost = TestVhost::new();
    let role = std::env::temp_dir().join(format!("finflow-role-{}", uuid::Uuid::new_v4()));
    // A pod the operator has not labelled yet: the downward API file is empty.
    std::fs::write(&role, "").unwrap();
    let mut spec = ConsumerSpec::new(QueueSpec::new("preview.test", &["test.preview"]));
    spec.role_file = Some(role.clone());
    let conn = vhost.broker().connect("preview-test").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    events::declare_queue(&ch, &spec.queue).await.unwrap();
    let stop = CancellationToken::new();
    let runner = tokio::spawn(consumer::run(
        db.pool.clone(),
        vhost.url.clone(),
        spec,
        Arc::new(Count),
        stop.clone(),
    ));
    let event = Event::new("test", "test.preview", &serde_json::json!({})).unwrap();
    Publisher::new(&conn)
        .await
        .unwrap()
        .publish(&event, Default::default())
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen =
        |pool: sqlx::PgPool| async move { db::scalar::<i32>(&pool, "SELECT n FROM seen").await };
    assert_eq!(
        seen(db.pool.clone()).await,
        0,
        "an unlabelled pod consumes nothing"
    );
    std::fs::write(&role, "preview\n").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(seen(db.pool.clone()).await, 0, "a preview consumes nothing");

    std::fs::write(&role, "active\n").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen(db.pool.clone()).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the promoted pod never consumed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen(db.pool.clone()).await, 1);
    stop.cancel();
    runner.await.unwrap();
    std::fs::remove_file(&role).ok();
}
