//! `amqps://` and `rediss://` against the real RabbitMQ and Redis, behind TLS as a
//! managed service offers it (a [`TlsProxy`] under a CA of its own), configured the way
//! a deployment is: `AMQP_CA_FILE`, `REDIS_CA_FILE`.

use clap::Parser;
use finflow_platform::config::{AmqpConfig, RedisConfig};
use finflow_platform::events::{self, Broker};
use finflow_platform::testing::{TempFile, TlsProxy};
use finflow_platform::{cache, client};
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use secrecy::{ExposeSecret, SecretString};

/// The settings of the backing services, as a service's command line reads them.
#[derive(Parser)]
struct Backing {
    #[command(flatten)]
    amqp: AmqpConfig,
    #[command(flatten)]
    redis: RedisConfig,
}

/// A TLS proxy in front of the server of `url`, and `url` rewritten to reach it, with
/// `scheme`.
async fn behind_tls(url: &SecretString, scheme: &str, default_port: u16) -> (TlsProxy, String) {
    let mut url = reqwest::Url::parse(url.expose_secret()).expect("a URL");
    let upstream = format!(
        "{}:{}",
        url.host_str().expect("a host"),
        url.port().unwrap_or(default_port)
    );
    let proxy = TlsProxy::start(upstream).await;
    // `Url` refuses to change a special scheme into another, so the scheme is swapped
    // as text.
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(proxy.port)).unwrap();
    let rest = url
        .as_str()
        .split_once("://")
        .expect("a scheme")
        .1
        .to_owned();
    (proxy, format!("{scheme}://{rest}"))
}

fn settings(amqp_url: &str, redis_url: &str, ca_file: &str) -> Backing {
    Backing::parse_from([
        "finflow-test",
        "--amqp-url",
        amqp_url,
        "--amqp-ca-file",
        ca_file,
        "--redis-url",
        redis_url,
        "--redis-ca-file",
        ca_file,
    ])
}

#[tokio::test]
async fn an_amqps_broker_under_a_private_ca_carries_messages_when_amqp_ca_file_names_the_ca() {
    client::use_ring();
    let (proxy, amqps) = behind_tls(&events::test_url(), "amqps", 5672).await;
    let ca_file = proxy.certificate.ca_file();
    let config = settings(&amqps, "redis://localhost", &ca_file.arg());

    let broker = config.amqp.broker().expect("AMQP_CA_FILE is read");
    let connection = broker
        .connect("tls-test")
        .await
        .expect("the broker is reached over TLS");
    let channel = connection.create_channel().await.unwrap();
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            queue.name().as_str().into(),
            BasicPublishOptions::default(),
            b"over tls",
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let got = channel
        .basic_get(
            queue.name().as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the message came back");
    assert_eq!(got.delivery.data, b"over tls");

    // The system's roots know nothing of the proxy's CA: whoever answers could be a man
    // in the middle.
    let untrusted = Broker::new(amqps.into()).connect("tls-test").await;
    let error = untrusted.expect_err("a certificate no root vouches for is refused");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
}

#[tokio::test]
async fn a_rediss_server_under_a_private_ca_answers_when_redis_ca_file_names_the_ca() {
    client::use_ring();
    let (proxy, rediss) = behind_tls(&cache::test_url(), "rediss", 6379).await;
    let ca_file = proxy.certificate.ca_file();
    let config = settings("amqp://localhost", &rediss, &ca_file.arg());

    let mut redis = config
        .redis
        .connect()
        .await
        .expect("Redis is reached over TLS");
    let key = format!("finflow-tls-test-{}", uuid::Uuid::new_v4());
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("over tls")
        .arg("EX")
        .arg(60)
        .query_async(&mut redis)
        .await
        .unwrap();
    let value: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(value, "over tls");

    let untrusted = cache::connect(&rediss.into(), None).await;
    let error = untrusted.expect_err("a certificate no root vouches for is refused");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
}

#[test]
fn a_ca_file_that_holds_no_certificate_stops_start_up_naming_its_setting() {
    let empty = TempFile::with("not a certificate\n");
    let config = settings("amqps://localhost", "rediss://localhost", &empty.arg());
    let error = config.amqp.broker().err().expect("refused");
    assert!(
        error.starts_with("AMQP_CA_FILE") && error.contains("holds no certificate"),
        "{error}"
    );
}
