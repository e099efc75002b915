//! The event pipeline against real PostgreSQL and RabbitMQ: outbox, relay, consumer.

use std::sync::Arc;
use std::time::Duration;

use finflow_platform::db::{self, TestDb};
use finflow_platform::events::consumer::{self, ConsumerSpec, Handler, HandlerError, Outcome};
use finflow_platform::events::outbox::{self, Relay};
use finflow_platform::events::{self, Event, Publisher, QueueSpec};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicGetOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgConnection;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

/// A consumer handler that adds the event's `amount` to a counter row, so applying an
/// event twice would show.
struct AddToCounter;

impl Handler for AddToCounter {
    async fn handle(&self, tx: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        let amount = event.data["amount"]
            .as_i64()
            .ok_or_else(|| HandlerError::Permanent("no amount".into()))?;
        sqlx::query("UPDATE counter SET total = total + $1, applied = applied + 1")
            .bind(amount)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

/// Fails transiently a given number of times before applying.
struct FlakyThenAdd {
    failures_left: std::sync::Mutex<u32>,
}

impl Handler for FlakyThenAdd {
    async fn handle(&self, tx: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        {
            let mut left = self.failures_left.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return Err(HandlerError::Transient("dependency down".into()));
            }
        }
        AddToCounter.handle(tx, event).await
    }
}

async fn counter_db() -> TestDb {
    let db = TestDb::new(None).await;
    sqlx::query("CREATE TABLE counter (total BIGINT NOT NULL, applied INT NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO counter VALUES (0, 0)")
        .execute(&db.pool)
        .await
        .unwrap();
    db
}

async fn counter(db: &TestDb) -> (i64, i32) {
    sqlx::query_as("SELECT total, applied FROM counter")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

fn unique(prefix: &str) -> String {
    format!("test.{prefix}.{}", uuid::Uuid::new_v4().simple())
}

async fn channel() -> (lapin::Connection, lapin::Channel) {
    let conn = events::Broker::new(events::test_url())
        .connect("platform-test")
        .await
        .expect("RabbitMQ answers");
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

async fn delete_queues(ch: &lapin::Channel, spec: &QueueSpec) {
    for q in [spec.name.clone(), spec.dead_letter_queue()] {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .ok();
    }
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP forwarder to RabbitMQ that is switched on late: until then its port refuses
/// connections, exactly like a broker that is down.
struct LateProxy {
    port: u16,
    closed: std::sync::Mutex<Option<finflow_platform::testing::ClosedPort>>,
}

impl LateProxy {
    async fn reserve() -> Self {
        let closed = finflow_platform::testing::ClosedPort::new().unwrap();
        Self {
            port: closed.port,
            closed: std::sync::Mutex::new(Some(closed)),
        }
    }

    fn url(&self) -> SecretString {
        let real = events::test_url();
        let real = real.expose_secret();
        let (scheme_auth, rest) = real.split_once('@').unwrap_or(("amqp://guest:guest", real));
        let vhost = rest.split_once('/').map_or("%2f", |(_, v)| v);
        format!("{scheme_auth}@127.0.0.1:{}/{vhost}", self.port).into()
    }

    async fn start(&self) {
        let real = events::test_url();
        let upstream = real
            .expose_secret()
            .rsplit_once('@')
            .map_or("127.0.0.1:5672", |(_, r)| r)
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let closed = self.closed.lock().unwrap().take().expect("started once");
        let listener = closed.open().unwrap();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
    }
}

#[tokio::test]
async fn an_event_committed_while_rabbitmq_is_down_is_published_once_it_is_back() {
    finflow_platform::telemetry::init_for_tests();
    let db = TestDb::new(None).await;
    let (_conn, ch) = channel().await;
    let event_type = unique("outbox");
    let spec = QueueSpec::new(unique("outbox-q"), &[&event_type]);
    events::declare_queue(&ch, &spec).await.unwrap();

    // The broker is unreachable: the relay points at a port nobody listens on yet.
    let proxy = LateProxy::reserve().await;
    let shutdown = CancellationToken::new();
    let relay = Relay::new(db.pool.clone(), proxy.url(), "test");
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));

    let event = Event::new("test", &event_type, &serde_json::json!({"amount": 7})).unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, &event).await.unwrap();
    tx.commit().await.unwrap();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        outbox::pending(&db.pool).await.unwrap(),
        1,
        "nothing can be published yet"
    );
    assert!(!outbox::is_published(&db.pool, event.id).await.unwrap());

    // The broker comes back: the relay reconnects on its own and publishes.
    proxy.start().await;
    eventually("the relay to publish", || async {
        outbox::is_published(&db.pool, event.id).await.unwrap()
    })
    .await;

    let delivered = ch
        .basic_get(spec.name.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the event reached the queue");
    let received: Event = serde_json::from_slice(&delivered.delivery.data).unwrap();
    assert_eq!(received, event);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = ch
        .basic_get(spec.name.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(second.is_none(), "published exactly once");

    shutdown.cancel();
    relay_task.await.unwrap();
    delete_queues(&ch, &spec).await;
}

#[tokio::test]
async fn a_credential_an_event_carries_leaves_the_outbox_once_the_broker_has_it() {
    let db = TestDb::new(None).await;
    let vhost = events::TestVhost::new();
    let connection = vhost.broker().connect("outbox-secret-test").await.unwrap();
    let ch = connection.create_channel().await.unwrap();
    let spec = QueueSpec::new(
        "outbox-test.mail",
        &[events::types::USER_VERIFICATION_REQUESTED],
    );
    events::declare_queue(&ch, &spec).await.unwrap();
    let event = Event::new(
        "auth",
        events::types::USER_VERIFICATION_REQUESTED,
        &serde_json::json!({"email": "ada@example.com", "token": "s3cret-token"}),
    )
    .unwrap();
    // A `data` that is not an object has no field to remove, and must not stall the
    // batch that carries it.
    let odd = Event::new(
        "auth",
        events::types::USER_VERIFICATION_REQUESTED,
        &serde_json::json!(["token"]),
    )
    .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, &event).await.unwrap();
    outbox::enqueue(&mut tx, &odd).await.unwrap();
    tx.commit().await.unwrap();
    let kept = || outbox::written(&db.pool, events::types::USER_VERIFICATION_REQUESTED);
    assert_eq!(
        kept().await[0]["data"]["token"],
        "s3cret-token",
        "kept until published"
    );

    let shutdown = CancellationToken::new();
    let relay =
        tokio::spawn(Relay::new(db.pool.clone(), vhost.url.clone(), "test").run(shutdown.clone()));
    eventually("the relay to publish both", || async {
        outbox::is_published(&db.pool, event.id).await.unwrap()
            && outbox::is_published(&db.pool, odd.id).await.unwrap()
    })
    .await;
    let get = BasicGetOptions { no_ack: true };
    let message = ch.basic_get(spec.name.as_str().into(), get).await.unwrap();
    let sent =
        events::decode(&message.expect("the event reached the queue").delivery.data).unwrap();
    assert_eq!(sent[0].data["token"], "s3cret-token", "the consumer has it");
    let stored = kept().await;
    assert_eq!(stored[0]["data"]["email"], "ada@example.com");
    assert!(stored[0]["data"].get("token").is_none(), "{stored:?}");
    assert_eq!(
        stored[1]["data"],
        serde_json::json!(["token"]),
        "left as it was"
    );

    shutdown.cancel();
    relay.await.unwrap();
}

#[tokio::test]
async fn an_event_rolled_back_with_its_transaction_is_never_published() {
    let db = TestDb::new(None).await;
    let event = Event::new("test", "test.rollback", &serde_json::json!({})).unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, &event).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(outbox::pending(&db.pool).await.unwrap(), 0);
}

#[tokio::test]
async fn the_relay_carries_the_producers_trace_context_into_amqp_headers() {
    finflow_platform::telemetry::init_for_tests();
    let db = TestDb::new(None).await;
    let (_conn, ch) = channel().await;
    let event_type = unique("trace");
    let spec = QueueSpec::new(unique("trace-q"), &[&event_type]);
    events::declare_queue(&ch, &spec).await.unwrap();

    let span = tracing::info_span!("producer");
    let event = Event::new("test", &event_type, &serde_json::json!({})).unwrap();
    let traceparent = {
        let _guard = span.enter();
        let mut tx = db.pool.begin().await.unwrap();
        outbox::enqueue(&mut tx, &event).await.unwrap();
        tx.commit().await.unwrap();
        finflow_platform::telemetry::current_traceparent().expect("the span has a context")
    };

    let shutdown = CancellationToken::new();
    let relay =
        tokio::spawn(Relay::new(db.pool.clone(), events::test_url(), "test").run(shutdown.clone()));
    let mut consumer = ch
        .basic_consume(
            spec.name.as_str().into(),
            "trace-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("delivered in time")
        .unwrap()
        .unwrap();
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    let headers = delivery.properties.headers().clone().unwrap();
    let carried = headers
        .inner()
        .get("traceparent")
        .expect("traceparent header");
    let lapin::types::AMQPValue::LongString(carried) = carried else {
        panic!("traceparent is not a string: {carried:?}")
    };
    assert_eq!(carried.to_string(), traceparent);

    shutdown.cancel();
    relay.await.unwrap();
    delete_queues(&ch, &spec).await;
}

#[tokio::test]
async fn a_message_delivered_twice_changes_state_once() {
    let db = counter_db().await;
    let (_conn, ch) = channel().await;
    let event_type = unique("dup");
    let spec = ConsumerSpec::new(QueueSpec::new(unique("dup-q"), &[&event_type]));
    events::declare_queue(&ch, &spec.queue).await.unwrap();

    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(consumer::run(
        db.pool.clone(),
        events::test_url(),
        spec.clone(),
        Arc::new(AddToCounter),
        shutdown.clone(),
    ));

    let publisher = Publisher::new(&_conn).await.unwrap();
    let event = Event::new("test", &event_type, &serde_json::json!({"amount": 5})).unwrap();
    let other = Event::new("test", &event_type, &serde_json::json!({"amount": 100})).unwrap();
    // The same event twice (a relay that crashed before marking it), then another one.
    publisher
        .publish(&event, FieldTable::default())
        .await
        .unwrap();
    publisher
        .publish(&event, FieldTable::default())
        .await
        .unwrap();
    publisher
        .publish(&other, FieldTable::default())
        .await
        .unwrap();

    eventually("both events to be applied", || async {
        counter(&db).await.1 >= 2
    })
    .await;
    // Give a wrongly applied duplicate time to show up before asserting it did not.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(counter(&db).await, (105, 2));
    let processed: i64 = db::scalar(&db.pool, "SELECT count(*) FROM processed_events").await;
    assert_eq!(processed, 2);

    shutdown.cancel();
    runner.await.unwrap();
    delete_queues(&ch, &spec.queue).await;
}

#[tokio::test]
async fn concurrent_deliveries_of_one_event_apply_it_once() {
    let db = counter_db().await;
    let event = Event::new("test", "test.concurrent", &serde_json::json!({"amount": 3})).unwrap();
    let attempts = (0..20).map(|_| consumer::apply_once(&db.pool, "c", &AddToCounter, &event));
    let outcomes = futures_util::future::join_all(attempts).await;
    let applied = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Outcome::Applied)))
        .count();
    assert_eq!(applied, 1, "{outcomes:?}");
    assert!(outcomes.iter().all(Result::is_ok));
    assert_eq!(counter(&db).await, (3, 1));
}

#[tokio::test]
async fn a_failed_handler_leaves_no_trace_so_the_retry_can_apply_it() {
    let db = counter_db().await;
    let event = Event::new("test", "test.retry", &serde_json::json!({"amount": 4})).unwrap();
    let flaky = FlakyThenAdd {
        failures_left: std::sync::Mutex::new(1),
    };
    assert!(matches!(
        consumer::apply_once(&db.pool, "c", &flaky, &event).await,
        Err(HandlerError::Transient(_))
    ));
    assert_eq!(
        counter(&db).await,
        (0, 0),
        "the failed attempt's dedupe row rolled back too"
    );
    assert_eq!(
        consumer::apply_once(&db.pool, "c", &flaky, &event)
            .await
            .unwrap(),
        Outcome::Applied
    );
    assert_eq!(counter(&db).await, (4, 1));
}

#[tokio::test]
async fn transient_failures_are_retried_and_poison_messages_are_dead_lettered() {
    let db = counter_db().await;
    let (conn, ch) = channel().await;
    let event_type = unique("retry");
    let mut spec = ConsumerSpec::new(QueueSpec::new(unique("retry-q"), &[&event_type]));
    spec.retry_base = Duration::from_millis(20);
    spec.retry_for = Duration::from_millis(300);
    events::declare_queue(&ch, &spec.queue).await.unwrap();

    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(consumer::run(
        db.pool.clone(),
        events::test_url(),
        spec.clone(),
        Arc::new(FlakyThenAdd {
            failures_left: std::sync::Mutex::new(2),
        }),
        shutdown.clone(),
    ));
    let publisher = Publisher::new(&conn).await.unwrap();
    let good = Event::new("test", &event_type, &serde_json::json!({"amount": 9})).unwrap();
    let refused = Event::new("test", &event_type, &serde_json::json!({"no": "amount"})).unwrap();
    publisher
        .publish(&good, FieldTable::default())
        .await
        .unwrap();
    publisher
        .publish(&refused, FieldTable::default())
        .await
        .unwrap();
    // Not even an envelope.
    ch.basic_publish(
        events::EVENTS_EXCHANGE.into(),
        event_type.as_str().into(),
        lapin::options::BasicPublishOptions::default(),
        b"{not json",
        lapin::BasicProperties::default(),
    )
    .await
    .unwrap();

    eventually("the retried event to apply", || async {
        counter(&db).await.1 == 1
    })
    .await;
    assert_eq!(counter(&db).await, (9, 1));

    let mut dead = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while dead.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for dead letters"
        );
        let dlq = spec.queue.dead_letter_queue();
        match ch
            .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(m) => dead.push(m.delivery.data.clone()),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(dead.iter().any(|d| d.as_slice() == b"{not json"));
    assert!(
        dead.iter()
            .any(|d| serde_json::from_slice::<Event>(d).is_ok_and(|e| e.id == refused.id))
    );

    shutdown.cancel();
    runner.await.unwrap();
    delete_queues(&ch, &spec.queue).await;
}

/// Fails transiently every time, recording when it was tried.
struct AlwaysDown {
    tried: std::sync::Mutex<Vec<tokio::time::Instant>>,
}

impl Handler for AlwaysDown {
    async fn handle(&self, _: &mut PgConnection, _: &Event) -> Result<(), HandlerError> {
        self.tried.lock().unwrap().push(tokio::time::Instant::now());
        Err(HandlerError::Transient("wallet service restarting".into()))
    }
}

#[tokio::test]
async fn a_dependency_that_stays_down_is_retried_for_the_whole_budget_before_dead_lettering() {
    let db = counter_db().await;
    let (conn, ch) = channel().await;
    let event_type = unique("outage");
    let mut spec = ConsumerSpec::new(QueueSpec::new(unique("outage-q"), &[&event_type]));
    // As in production the budget, not an attempt count, ends the retries (scaled down).
    spec.retry_base = Duration::from_millis(20);
    spec.retry_cap = Duration::from_millis(200);
    spec.retry_for = Duration::from_secs(2);
    events::declare_queue(&ch, &spec.queue).await.unwrap();
    let handler = Arc::new(AlwaysDown {
        tried: std::sync::Mutex::new(Vec::new()),
    });
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(consumer::run(
        db.pool.clone(),
        events::test_url(),
        spec.clone(),
        Arc::clone(&handler),
        shutdown.clone(),
    ));
    let event = Event::new("test", &event_type, &serde_json::json!({"amount": 1})).unwrap();
    Publisher::new(&conn)
        .await
        .unwrap()
        .publish(&event, FieldTable::default())
        .await
        .unwrap();

    let deadline = tokio::time::Instant::now() + WAIT;
    let dead = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered"
        );
        let got = ch
            .basic_get(
                spec.queue.dead_letter_queue().as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap();
        match got {
            Some(m) => break m.delivery.data.clone(),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_eq!(serde_json::from_slice::<Event>(&dead).unwrap().id, event.id);
    let tried = handler.tried.lock().unwrap().clone();
    // Measured at the handler, a transaction's rollback earlier than the runner's clock.
    let span = *tried.last().unwrap() - tried[0] + Duration::from_millis(50);
    assert!(
        span >= spec.retry_for,
        "dead-lettered after {span:?} of retries, before the {:?} budget",
        spec.retry_for
    );
    assert!(
        tried.len() > 5,
        "{} attempts: five used to be all",
        tried.len()
    );

    shutdown.cancel();
    runner.await.unwrap();
    delete_queues(&ch, &spec.queue).await;
}

/// Adds like [`AddToCounter`], but refuses (transiently) an amount of 13.
struct AllButThirteen;

impl Handler for AllButThirteen {
    async fn handle(&self, tx: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        // Writes before it fails: giving the batch back must take them back.
        AddToCounter.handle(tx, event).await?;
        if event.data["amount"] == 13 {
            return Err(HandlerError::Transient("unlucky".into()));
        }
        Ok(())
    }
}

fn amount_event(amount: i64) -> Event {
    Event::new(
        "test",
        "batch.tested",
        &serde_json::json!({ "amount": amount }),
    )
    .unwrap()
}

#[tokio::test]
async fn a_batch_commits_once_and_skips_what_was_applied() {
    let db = counter_db().await;
    let (one, two, four) = (amount_event(1), amount_event(2), amount_event(4));
    consumer::apply_once(&db.pool, "batch", &AddToCounter, &two)
        .await
        .unwrap();
    // `two` was applied before, `one` comes twice (a redelivery).
    let outcomes =
        consumer::apply_batch(&db.pool, "batch", &AddToCounter, &[&one, &two, &one, &four])
            .await
            .unwrap();
    assert_eq!(
        outcomes,
        vec![
            Some(Outcome::Applied),
            Some(Outcome::Duplicate),
            Some(Outcome::Duplicate),
            Some(Outcome::Applied),
        ]
    );
    // 2 before, then 1 and 4: nothing twice.
    assert_eq!(counter(&db).await, (7, 3));
}

#[tokio::test]
async fn a_batch_with_a_failing_event_commits_nothing_and_each_event_then_applies_alone() {
    let db = counter_db().await;
    let (one, unlucky, four) = (amount_event(1), amount_event(13), amount_event(4));
    let outcomes =
        consumer::apply_batch(&db.pool, "batch", &AllButThirteen, &[&one, &unlucky, &four])
            .await
            .unwrap();
    assert_eq!(outcomes, vec![None, None, None], "all given back");
    assert_eq!(
        counter(&db).await,
        (0, 0),
        "not even the writes before the failure"
    );
    let recorded: i64 = db::scalar(
        &db.pool,
        "SELECT count(*) FROM processed_events WHERE consumer = 'batch'",
    )
    .await;
    assert_eq!(recorded, 0, "no id recorded: every event will be retried");
    // Retried alone (the consumer's path for what a batch gave back): the good ones
    // apply, the failing one fails alone, then applies once it can.
    for event in [&one, &four] {
        assert_eq!(
            consumer::apply_once(&db.pool, "batch", &AllButThirteen, event)
                .await
                .unwrap(),
            Outcome::Applied
        );
    }
    assert!(
        consumer::apply_once(&db.pool, "batch", &AllButThirteen, &unlucky)
            .await
            .is_err()
    );
    assert_eq!(counter(&db).await, (5, 2));
    assert_eq!(
        consumer::apply_once(&db.pool, "batch", &AddToCounter, &unlucky)
            .await
            .unwrap(),
        Outcome::Applied
    );
    assert_eq!(counter(&db).await, (18, 3));
}

/// Records the transaction each event was applied in.
struct RecordTransaction;

impl Handler for RecordTransaction {
    async fn handle(&self, tx: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO applied_in (event_id, tx) VALUES ($1, txid_current())")
            .bind(event.id)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

/// The transactions `count` events were applied in, once they all are.
async fn transactions_of(db: &TestDb, count: i64) -> i64 {
    let applied = || async { db::scalar::<i64>(&db.pool, "SELECT count(*) FROM applied_in").await };
    eventually("the events applied", || async { applied().await >= count }).await;
    assert_eq!(applied().await, count, "each once");
    db::scalar(&db.pool, "SELECT count(DISTINCT tx) FROM applied_in").await
}

#[tokio::test]
async fn deliveries_that_arrive_while_a_batch_lingers_are_applied_in_its_transaction() {
    let db = TestDb::new(None).await;
    sqlx::query("CREATE TABLE applied_in (event_id UUID PRIMARY KEY, tx BIGINT NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    let (conn, ch) = channel().await;
    let event_type = unique("linger");
    let publisher = Publisher::new(&conn).await.unwrap();
    let publish = || async {
        let e = Event::new("test", &event_type, &serde_json::json!({})).unwrap();
        publisher.publish(&e, FieldTable::default()).await.unwrap();
    };
    let run = |linger: Duration| {
        let mut spec = ConsumerSpec::new(QueueSpec::new(unique("linger-q"), &[&event_type]));
        // The batch is full, and applied, at two deliveries: no test waits out a linger.
        spec.prefetch = 2;
        spec.linger = linger;
        let shutdown = CancellationToken::new();
        let runner = tokio::spawn(consumer::run(
            db.pool.clone(),
            events::test_url(),
            spec.clone(),
            Arc::new(RecordTransaction),
            shutdown.clone(),
        ));
        (spec, shutdown, runner)
    };

    // Lingering: the second delivery, published 100 ms after the first, joins its batch.
    let (spec, shutdown, runner) = run(Duration::from_secs(10));
    events::declare_queue(&ch, &spec.queue).await.unwrap();
    publish().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish().await;
    assert_eq!(transactions_of(&db, 2).await, 1, "one transaction for both");
    shutdown.cancel();
    runner.await.unwrap();
    delete_queues(&ch, &spec.queue).await;

    // Without lingering, a delivery that was not there yet is a batch of its own.
    sqlx::query("TRUNCATE applied_in")
        .execute(&db.pool)
        .await
        .unwrap();
    let (spec, shutdown, runner) = run(Duration::ZERO);
    events::declare_queue(&ch, &spec.queue).await.unwrap();
    publish().await;
    assert_eq!(transactions_of(&db, 1).await, 1);
    publish().await;
    assert_eq!(transactions_of(&db, 2).await, 2, "one transaction each");
    shutdown.cancel();
    runner.await.unwrap();
    delete_queues(&ch, &spec.queue).await;
}

#[tokio::test]
async fn a_batch_acknowledged_with_one_ack_leaves_nothing_to_redeliver() {
    let db = counter_db().await;
    let (conn, ch) = channel().await;
    let event_type = unique("acked");
    let spec = ConsumerSpec::new(QueueSpec::new(unique("acked-q"), &[&event_type]));
    events::declare_queue(&ch, &spec.queue).await.unwrap();
    // Waiting before the consumer starts: it takes them in batches of its prefetch.
    let publisher = Publisher::new(&conn).await.unwrap();
    let batch: Vec<(Event, FieldTable)> = (0..50)
        .map(|_| {
            let e = Event::new("test", &event_type, &serde_json::json!({"amount": 1})).unwrap();
            (e, FieldTable::default())
        })
        .collect();
    publisher.publish_all(&batch).await.unwrap();

    let run = || {
        let shutdown = CancellationToken::new();
        let runner = tokio::spawn(consumer::run(
            db.pool.clone(),
            events::test_url(),
            spec.clone(),
            Arc::new(AddToCounter),
            shutdown.clone(),
        ));
        (shutdown, runner)
    };
    let (shutdown, runner) = run();
    eventually("all 50 to be applied", || async {
        counter(&db).await.1 >= 50
    })
    .await;
    // Closing the channel gives back whatever was not acknowledged.
    shutdown.cancel();
    runner.await.unwrap();
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let left = ch
        .queue_declare(
            spec.queue.name.as_str().into(),
            passive,
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count();
    assert_eq!(left, 0, "every delivery was acknowledged");

    // A second consumer finds nothing to do.
    let (shutdown, runner) = run();
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.cancel();
    runner.await.unwrap();
    assert_eq!(counter(&db).await, (50, 50));
    delete_queues(&ch, &spec.queue).await;
}

#[tokio::test]
async fn one_relay_of_a_database_scans_and_another_takes_over_when_it_stops() {
    let db = TestDb::new(None).await;
    let (_conn, ch) = channel().await;
    let event_type = unique("leader");
    let spec = QueueSpec::new(unique("leader-q"), &[&event_type]);
    events::declare_queue(&ch, &spec).await.unwrap();
    let start = |name: &str| {
        let mut relay = Relay::new(db.pool.clone(), events::test_url(), name);
        relay.poll_interval = Duration::from_millis(200);
        let stop = CancellationToken::new();
        (stop.clone(), tokio::spawn(relay.run(stop)))
    };
    let leaders = || async {
        db::scalar::<i64>(
            &db.pool,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .await
    };
    let publish = |amount: i64| {
        let pool = db.pool.clone();
        let event_type = event_type.clone();
        async move {
            let event = Event::new(
                "test",
                &event_type,
                &serde_json::json!({ "amount": amount }),
            )
            .unwrap();
            let mut tx = pool.begin().await.unwrap();
            outbox::enqueue(&mut tx, &event).await.unwrap();
            tx.commit().await.unwrap();
            event
        }
    };
    let (first_stop, first) = start("first");
    eventually("the first relay to lead", || async { leaders().await == 1 }).await;
    let (second_stop, second) = start("second");
    let one = publish(1).await;
    eventually("the leader to publish", || async {
        outbox::is_published(&db.pool, one.id).await.unwrap()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(leaders().await, 1, "the second relay stands by");

    // The leader goes away: the one standing by takes over.
    first_stop.cancel();
    first.await.unwrap();
    let two = publish(2).await;
    eventually("the second relay to take over and publish", || async {
        outbox::is_published(&db.pool, two.id).await.unwrap()
    })
    .await;
    assert_eq!(leaders().await, 1);

    // A relay whose task is dropped mid-flight (not stopped) hands over too: its
    // listening connection, and the lock with it, go with it.
    let (third_stop, third) = start("third");
    second.abort();
    let _ = second.await;
    let three = publish(3).await;
    eventually("the third relay to take over and publish", || async {
        outbox::is_published(&db.pool, three.id).await.unwrap()
    })
    .await;
    let mut received = Vec::new();
    while let Some(m) = ch
        .basic_get(spec.name.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        received.extend(
            events::decode(&m.delivery.data)
                .unwrap()
                .into_iter()
                .map(|e| e.id),
        );
    }
    assert_eq!(
        received,
        vec![one.id, two.id, three.id],
        "each published once, in order"
    );

    drop(second_stop);
    third_stop.cancel();
    third.await.unwrap();
    delete_queues(&ch, &spec).await;
}

#[tokio::test]
async fn the_relay_sends_a_run_of_one_type_as_one_bundle_and_the_next_type_apart() {
    let db = TestDb::new(None).await;
    let (_conn, ch) = channel().await;
    let (first_type, second_type) = (unique("bundled"), unique("apart"));
    let spec = QueueSpec::new(unique("bundle-q"), &[&first_type, &second_type]);
    events::declare_queue(&ch, &spec).await.unwrap();
    let run: Vec<Event> = (1..=3)
        .map(|amount| {
            Event::new(
                "test",
                &first_type,
                &serde_json::json!({ "amount": amount }),
            )
            .unwrap()
        })
        .collect();
    let other = Event::new("test", &second_type, &serde_json::json!({ "amount": 4 })).unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    outbox::enqueue_all(&mut tx, &run).await.unwrap();
    outbox::enqueue(&mut tx, &other).await.unwrap();
    tx.commit().await.unwrap();

    let shutdown = CancellationToken::new();
    let mut relay = Relay::new(db.pool.clone(), events::test_url(), "test");
    relay.bundle_max = events::BUNDLE_MAX;
    let relay = tokio::spawn(relay.run(shutdown.clone()));
    eventually("the relay to publish", || async {
        outbox::is_published(&db.pool, other.id).await.unwrap()
    })
    .await;
    let mut messages = Vec::new();
    while let Some(m) = ch
        .basic_get(spec.name.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        messages.push(m.delivery);
    }
    assert_eq!(
        messages.len(),
        2,
        "the run in one message, the other type in its own"
    );
    let bundle = events::decode(&messages[0].data).unwrap();
    assert_eq!(bundle, run, "the run, in order");
    let count = messages[0]
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(events::BUNDLE_HEADER).cloned());
    assert_eq!(count, Some(lapin::types::AMQPValue::LongUInt(3)));
    let routed: Vec<String> = messages.iter().map(|m| m.routing_key.to_string()).collect();
    assert_eq!(routed, [first_type, second_type]);
    let alone: Event = serde_json::from_slice(&messages[1].data).unwrap();
    assert_eq!(
        alone, other,
        "a single event is an envelope, as before bundles"
    );

    shutdown.cancel();
    relay.await.unwrap();
    delete_queues(&ch, &spec).await;
}

#[tokio::test]
async fn a_bundle_applies_once_and_only_its_refused_event_is_dead_lettered_alone() {
    let db = counter_db().await;
    let (conn, ch) = channel().await;
    let event_type = unique("bundle");
    let spec = ConsumerSpec::new(QueueSpec::new(unique("bundle-c"), &[&event_type]));
    events::declare_queue(&ch, &spec.queue).await.unwrap();
    let mut batch: Vec<(Event, FieldTable)> = [1, 2, 4, 8]
        .into_iter()
        .map(|amount| (amount_event_of(&event_type, amount), FieldTable::default()))
        .collect();
    let refused = Event::new("test", &event_type, &serde_json::json!({"no": "amount"})).unwrap();
    batch.insert(2, (refused.clone(), FieldTable::default()));
    let publisher = Publisher::new(&conn).await.unwrap().bundled(64);
    publisher.publish_all(&batch).await.unwrap();
    // Published twice: the second copy is all duplicates.
    publisher.publish_all(&batch).await.unwrap();
    let waiting = ch
        .queue_declare(
            spec.queue.name.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count();
    assert_eq!(waiting, 2, "five events a message");

    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(consumer::run(
        db.pool.clone(),
        events::test_url(),
        spec.clone(),
        Arc::new(AddToCounter),
        shutdown.clone(),
    ));
    let dlq = spec.queue.dead_letter_queue();
    let mut dead = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while dead.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refused event was never dead-lettered"
        );
        match ch
            .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(m) => dead.push(m.delivery.data.clone()),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let dead_letter: Event = serde_json::from_slice(&dead[0]).expect("one event, not a bundle");
    assert_eq!(dead_letter.id, refused.id);
    // The refused event is dead-lettered in its place: the bundle's events after it are
    // applied after that, so they are awaited, and counted again below once all is still.
    eventually("the four others", || async {
        counter(&db).await == (15, 4)
    })
    .await;
    // Nothing is left waiting: both bundles were acknowledged once their events were
    // settled (the refused one dead-lettered alone each time).
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.cancel();
    runner.await.unwrap();
    let left = ch
        .basic_get(
            spec.queue.name.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap();
    assert!(left.is_none(), "everything was acknowledged");
    assert_eq!(counter(&db).await, (15, 4), "the four others, once each");
    delete_queues(&ch, &spec.queue).await;
}

fn amount_event_of(event_type: &str, amount: i64) -> Event {
    Event::new("test", event_type, &serde_json::json!({ "amount": amount })).unwrap()
}

/// Fails transiently, for good, one event; applies the others.
struct DownFor {
    event: uuid::Uuid,
    tried: std::sync::atomic::AtomicU32,
}

impl Handler for DownFor {
    async fn handle(&self, tx: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        if event.id == self.event {
            self.tried.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Err(HandlerError::Transient("wallet service restarting".into()));
        }
        AddToCounter.handle(tx, event).await
    }
}

#[tokio::test]
async fn an_event_left_to_the_broker_at_shutdown_is_not_acknowledged_by_a_later_batch() {
    let db = counter_db().await;
    let (conn, ch) = channel().await;
    let event_type = unique("stopped");
    let mut spec = ConsumerSpec::new(QueueSpec::new(unique("stopped-q"), &[&event_type]));
    spec.retry_base = Duration::from_millis(20);
    spec.retry_cap = Duration::from_millis(50);
    events::declare_queue(&ch, &spec.queue).await.unwrap();
    // One event that cannot be applied yet, then 99 and 10 more: two groups of one batch
    // (at most 100 events a group), the second of which applies.
    let stuck = amount_event_of(&event_type, 1000);
    let publisher = Publisher::new(&conn).await.unwrap();
    publisher
        .publish(&stuck, FieldTable::default())
        .await
        .unwrap();
    let bundled = Publisher::new(&conn).await.unwrap().bundled(99);
    for size in [99, 10] {
        let run: Vec<(Event, FieldTable)> = (0..size)
            .map(|_| (amount_event_of(&event_type, 1), FieldTable::default()))
            .collect();
        bundled.publish_all(&run).await.unwrap();
    }

    let handler = Arc::new(DownFor {
        event: stuck.id,
        tried: std::sync::atomic::AtomicU32::new(0),
    });
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(consumer::run(
        db.pool.clone(),
        events::test_url(),
        spec.clone(),
        Arc::clone(&handler),
        shutdown.clone(),
    ));
    eventually("the stuck event to be retried", || async {
        handler.tried.load(std::sync::atomic::Ordering::SeqCst) >= 3
    })
    .await;
    shutdown.cancel();
    runner.await.unwrap();

    // Closing the channel gave back what was not settled: the stuck event is still there.
    let mut waiting = Vec::new();
    while let Some(m) = ch
        .basic_get(
            spec.queue.name.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        waiting.extend(events::decode(&m.delivery.data).unwrap());
    }
    assert!(
        waiting.iter().any(|e| e.id == stuck.id),
        "the event that was never applied was acknowledged"
    );
    let (total, applied) = counter(&db).await;
    assert_eq!(i64::from(applied), total, "only amounts of 1 were applied");
    delete_queues(&ch, &spec.queue).await;
}
