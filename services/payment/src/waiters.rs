//! `Prefer: wait`: requests waiting for a payment to settle.
//!
//! A trigger notifies `payment_settled` with the payment's id when its status becomes
//! terminal (`migrations/payment/20261205000002_settled_notify.sql`); one connection
//! listens ([`Waiters::listen`]) and wakes the requests waiting for that payment. A wait
//! reads the payment when it starts and again when woken or out of time: two queries
//! however long it lasts. While the listening connection is down, waits read the row
//! once a second instead, so a lost notification costs at most that.
//!
//! At most `max_waiters` requests wait at once; past that a request is answered at
//! once, as if it had not asked to wait (`Prefer` is a preference, RFC 7240), so waits
//! can neither hold every connection of the pool nor every task of the process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The channel the trigger notifies.
pub const CHANNEL: &str = "payment_settled";

/// How often a wait reads its payment while notifications are not being received.
const RECHECK_WITHOUT_LISTENER: Duration = Duration::from_secs(1);

/// The requests waiting for payments to settle.
#[derive(Clone)]
pub struct Waiters {
    inner: Arc<Inner>,
}

struct Inner {
    /// Per awaited payment, a counter bumped on each notification for it.
    watched: Mutex<HashMap<Uuid, watch::Sender<u64>>>,
    slots: Arc<Semaphore>,
    listening: AtomicBool,
}

/// One request's wait for one payment. Dropped, it stops watching.
pub struct Wait {
    inner: Arc<Inner>,
    id: Uuid,
    woken: watch::Receiver<u64>,
    _slot: OwnedSemaphorePermit,
}

impl Waiters {
    pub fn new(max_waiters: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                watched: Mutex::new(HashMap::new()),
                slots: Arc::new(Semaphore::new(max_waiters)),
                listening: AtomicBool::new(false),
            }),
        }
    }

    /// Starts watching payment `id`, if a slot is free. Call before reading the
    /// payment: a notification after this is not missed.
    pub fn watch(&self, id: Uuid) -> Option<Wait> {
        let slot = Arc::clone(&self.inner.slots).try_acquire_owned().ok()?;
        let mut watched = self.inner.watched.lock().expect("waiters lock");
        let woken = watched
            .entry(id)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Some(Wait {
            inner: Arc::clone(&self.inner),
            id,
            woken,
            _slot: slot,
        })
    }

    /// Whether settlements are being heard now.
    pub fn is_listening(&self) -> bool {
        self.inner.listening.load(Ordering::SeqCst)
    }

    /// Wakes the waits for payment `id`.
    pub fn settled(&self, id: Uuid) {
        if let Some(sender) = self.inner.watched.lock().expect("waiters lock").get(&id) {
            sender.send_modify(|n| *n += 1);
        }
    }

    /// Wakes every wait, to read its payment again (notifications may have been lost).
    fn wake_all(&self) {
        for sender in self.inner.watched.lock().expect("waiters lock").values() {
            sender.send_modify(|n| *n += 1);
        }
    }

    /// Listens for settled payments until `stop`, reconnecting after a failure.
    pub async fn listen(self, pool: PgPool, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let mut listener = match PgListener::connect_with(&pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for settled payments; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if let Err(e) = listener.listen(CHANNEL).await {
                tracing::warn!(error = %e, "LISTEN {CHANNEL} failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            self.inner.listening.store(true, Ordering::SeqCst);
            // Whatever settled before LISTEN took effect was not heard.
            self.wake_all();
            loop {
                let received = tokio::select! {
                    () = stop.cancelled() => return,
                    r = listener.try_recv() => r,
                };
                match received {
                    Ok(Some(notification)) => match notification.payload().parse() {
                        Ok(id) => self.settled(id),
                        Err(_) => tracing::warn!(
                            payload = notification.payload(),
                            "bad {CHANNEL} payload"
                        ),
                    },
                    // The connection was lost; the next receive reconnects and listens
                    // again, and what settled meanwhile was not heard.
                    Ok(None) => self.wake_all(),
                    Err(e) => {
                        tracing::warn!(error = %e, "listening for settled payments failed");
                        break;
                    }
                }
            }
            self.inner.listening.store(false, Ordering::SeqCst);
            self.wake_all();
        }
    }
}

impl Wait {
    /// Until the payment may have settled (a notification, or a second without a
    /// listener) or `deadline`; whether the deadline passed.
    pub async fn next(&mut self, deadline: tokio::time::Instant) -> bool {
        let until = if self.inner.listening.load(Ordering::SeqCst) {
            deadline
        } else {
            deadline.min(tokio::time::Instant::now() + RECHECK_WITHOUT_LISTENER)
        };
        let _ = tokio::time::timeout_at(until, self.woken.changed()).await;
        tokio::time::Instant::now() >= deadline
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        let mut watched = self.inner.watched.lock().expect("waiters lock");
        // This receiver is the last one of the payment's.
        if watched
            .get(&self.id)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            watched.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_notification_after_watching_wakes_the_wait() {
        let waiters = Waiters::new(8);
        waiters.inner.listening.store(true, Ordering::SeqCst);
        let id = Uuid::new_v4();
        let mut wait = waiters.watch(id).unwrap();
        // Settled between the watch and the wait: still seen.
        waiters.settled(id);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        assert!(!wait.next(deadline).await, "woken before the deadline");
        assert!(tokio::time::Instant::now() < deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_listener_a_wait_rechecks_every_second() {
        let waiters = Waiters::new(8);
        let mut wait = waiters.watch(Uuid::new_v4()).unwrap();
        let start = tokio::time::Instant::now();
        assert!(!wait.next(start + Duration::from_secs(30)).await);
        assert_eq!(start.elapsed(), RECHECK_WITHOUT_LISTENER);
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_listener_a_wait_sleeps_to_its_deadline_unless_woken() {
        let waiters = Waiters::new(8);
        waiters.inner.listening.store(true, Ordering::SeqCst);
        let mut wait = waiters.watch(Uuid::new_v4()).unwrap();
        waiters.settled(Uuid::new_v4());
        let start = tokio::time::Instant::now();
        assert!(wait.next(start + Duration::from_secs(30)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(30));
    }

    #[test]
    fn past_the_slots_a_request_does_not_wait_and_a_finished_wait_frees_its_slot() {
        let waiters = Waiters::new(2);
        let id = Uuid::new_v4();
        let first = waiters.watch(id).unwrap();
        let second = waiters.watch(id).unwrap();
        assert!(waiters.watch(Uuid::new_v4()).is_none());
        drop(first);
        assert_eq!(
            waiters.inner.watched.lock().unwrap().len(),
            1,
            "one still waits"
        );
        drop(second);
        assert!(waiters.inner.watched.lock().unwrap().is_empty());
        assert!(waiters.watch(id).is_some());
    }
}
