//! Idempotency claims against real Redis: the key of a request whose process died is
//! free again within seconds, and a request that is alive keeps its key however long
//! it takes.

use std::time::Duration;

use finflow_payment::idempotency::{Claim, IN_FLIGHT_LEASE, Keys, Stored};
use finflow_platform::cache;
use uuid::Uuid;

const HASH: &[u8] = b"the request's fingerprint";

async fn keys() -> Keys {
    Keys::new(cache::connect(&cache::test_url(), None).await.unwrap())
}

#[tokio::test]
async fn the_key_of_a_request_whose_process_died_is_free_again_within_seconds() {
    let (user, key) = (Uuid::now_v7(), Uuid::now_v7().to_string());
    // The holder runs in a runtime of its own, dropped mid-request as a killed process
    // would be: its renewals stop with it, and it neither completes nor releases.
    let held_key = key.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let claim = keys()
                .await
                .claim(user, &held_key, HASH, Duration::ZERO)
                .await;
            assert!(matches!(claim, Claim::Fresh(_)), "{claim:?}");
            std::mem::forget(claim);
        });
    })
    .join()
    .unwrap();

    let keys = keys().await;
    let claim = keys.claim(user, &key, HASH, Duration::ZERO).await;
    assert!(matches!(claim, Claim::InFlight), "{claim:?}");
    let started = tokio::time::Instant::now();
    loop {
        match keys.claim(user, &key, HASH, Duration::ZERO).await {
            Claim::Fresh(_) => break,
            Claim::InFlight => {
                assert!(
                    started.elapsed() < IN_FLIGHT_LEASE + Duration::from_secs(1),
                    "the dead request's key is still held after {:?}",
                    started.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_request_that_is_alive_keeps_its_key_past_the_lease_and_its_answer_is_replayed() {
    let (user, key) = (Uuid::now_v7(), Uuid::now_v7().to_string());
    let keys = keys().await;
    let lease = keys.claim(user, &key, HASH, Duration::ZERO).await;
    assert!(matches!(lease, Claim::Fresh(_)), "{lease:?}");

    tokio::time::sleep(IN_FLIGHT_LEASE * 2).await;
    let duplicate = keys.claim(user, &key, HASH, Duration::ZERO).await;
    assert!(
        matches!(duplicate, Claim::InFlight),
        "renewed while alive: {duplicate:?}"
    );

    let answer = Stored {
        status: 202,
        body: serde_json::json!({"success": true, "data": {"id": "p"}}),
    };
    keys.complete(user, &key, HASH, answer.clone()).await;
    drop(lease);
    match keys.claim(user, &key, HASH, Duration::ZERO).await {
        Claim::Done(stored) => assert_eq!(stored, answer),
        other => panic!("{other:?}"),
    }
    let other_body = keys
        .claim(user, &key, b"another body", Duration::ZERO)
        .await;
    assert!(matches!(other_body, Claim::Mismatch), "{other_body:?}");
}
