//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! `kube-leader-election` (0.44, its newest release) is built on kube 4, so its client
//! type cannot take our kube 5 client; this is the same algorithm on kube's Lease API.
//! [`decide`] is pure: given the Lease as read, who we are and how long we have seen it
//! unchanged, create, acquire, renew or follow.
//!
//! Every write has a precondition, so of two candidates racing for the Lease the API
//! server accepts one and answers the other 409: a missing Lease is created (409
//! AlreadyExists when another candidate created it first), an existing one is replaced
//! carrying the resourceVersion it was read at (409 Conflict when anyone wrote since).
//!
//! Time is each candidate's own monotonic clock, never another node's wall clock: a
//! candidate takes over another holder's Lease once it has seen it unchanged for the
//! Lease's duration ([`Observation`]), and a leader stops leading when it has not
//! renewed within the renew deadline, counted from when it sent its last successful
//! renewal ([`Timing`]). The deadline is shorter than the duration, so the leader has
//! stopped before any other candidate can see its Lease expire. The process then exits
//! (see `app`), so a fresh start rejoins the election instead of reasoning about
//! controllers stopped halfway.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::meta::FIELD_MANAGER;

/// What to do with the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAction {
    /// There is none: create it.
    Create,
    /// Nobody holds it (or the holder let it expire): take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it and is renewing.
    Follow { holder: String },
}

/// The election's pace, all on the candidate's own clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a Lease nobody renews keeps others waiting.
    pub lease_duration: Duration,
    /// How long a leader keeps leading after it sent its last successful renewal.
    pub renew_deadline: Duration,
    /// How often every candidate reads (and a leader renews) the Lease.
    pub retry_period: Duration,
}

impl Timing {
    /// client-go's proportions: a 15 s Lease is renewed every 2.5 s and given up 10 s
    /// after the last renewal that got through.
    pub fn new(lease_duration: Duration) -> Self {
        Self {
            lease_duration,
            renew_deadline: lease_duration * 2 / 3,
            retry_period: lease_duration / 6,
        }
    }

    /// Until when a leader whose last successful renewal was sent at `renewal_sent`
    /// may act as leader.
    pub fn leads_until(&self, renewal_sent: Instant) -> Instant {
        renewal_sent + self.renew_deadline
    }

    /// The duration written into the Lease, in whole seconds (rounded up, at least 1).
    pub fn lease_duration_seconds(&self) -> i32 {
        let seconds =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(seconds.max(1)).unwrap_or(i32::MAX)
    }
}

/// What a candidate last saw of the Lease, and since when (its own clock) it has seen
/// it unchanged. The holder's `renewTime` is read only to notice that it changed: it
/// was written by another node's clock, which may be minutes off ours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    record: Option<Record>,
    since: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    resource_version: Option<String>,
    holder: Option<String>,
    renew_time: Option<MicroTime>,
}

impl Observation {
    /// The observation after reading `lease` at `now`.
    #[must_use]
    pub fn observe(&self, lease: Option<&Lease>, now: Instant) -> Self {
        let record = lease.map(|l| {
            let spec = l.spec.as_ref();
            Record {
                resource_version: l.metadata.resource_version.clone(),
                holder: spec.and_then(|s| s.holder_identity.clone()),
                renew_time: spec.and_then(|s| s.renew_time.clone()),
            }
        });
        if record == self.record && self.since.is_some() {
            self.clone()
        } else {
            Self {
                record,
                since: Some(now),
            }
        }
    }

    /// How long the Lease has been seen unchanged at `now`.
    pub fn unchanged_for(&self, now: Instant) -> Duration {
        self.since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }
}

/// What to do with `lease`, read at `now` and folded into `seen`.
pub fn decide(lease: Option<&Lease>, me: &str, seen: &Observation, now: Instant) -> LeaseAction {
    let Some(lease) = lease else {
        return LeaseAction::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == me {
        return LeaseAction::Renew;
    }
    if holder.is_empty() {
        return LeaseAction::Acquire;
    }
    let duration =
        Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0));
    if seen.unchanged_for(now) >= duration {
        LeaseAction::Acquire
    } else {
        LeaseAction::Follow {
            holder: holder.to_owned(),
        }
    }
}

/// The Lease to write after `decision`: a new one when there is no `current`, else
/// `current` held by `me`, carrying its resourceVersion as the precondition of the
/// replace.
pub fn desired(
    name: &str,
    namespace: &str,
    me: &str,
    duration_seconds: i32,
    current: Option<&Lease>,
    now: Timestamp,
) -> Lease {
    let spec = current.and_then(|l| l.spec.clone()).unwrap_or_default();
    let ours = spec.holder_identity.as_deref() == Some(me);
    let transitions = spec.lease_transitions.unwrap_or(0);
    let metadata = match current {
        Some(current) => ObjectMeta {
            managed_fields: None,
            ..current.metadata.clone()
        },
        None => ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
    };
    Lease {
        metadata,
        spec: Some(LeaseSpec {
            holder_identity: Some(me.to_owned()),
            lease_duration_seconds: Some(duration_seconds),
            acquire_time: if ours {
                spec.acquire_time
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if ours || current.is_none() {
                transitions
            } else {
                transitions + 1
            }),
            ..LeaseSpec::default()
        }),
    }
}

/// The Lease a leader leaves behind on a clean shutdown: no holder, so a standby takes
/// over at its next try instead of waiting out the duration. It carries the
/// resourceVersion it was read at, like every other write.
pub fn released(current: &Lease) -> Lease {
    let mut lease = current.clone();
    lease.metadata.managed_fields = None;
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
    }
    lease
}

/// Whether a write won: 409 (AlreadyExists or Conflict) means another candidate wrote
/// first, which is losing, not failing.
fn won(result: kube::Result<Lease>) -> kube::Result<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

const UNRENEWED: &str = "no renewal got through within the renew deadline";

fn step_down(leading: &watch::Sender<bool>, why: &str) {
    tracing::warn!(why, "stepping down as leader");
    let _ = leading.send(false);
}

/// `fut`, unless `deadline` passes first.
async fn before<T>(deadline: Option<Instant>, fut: impl Future<Output = T>) -> Option<T> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, fut).await.ok(),
        None => Some(fut.await),
    }
}

/// One candidate in the election.
pub struct Elector {
    pub api: Api<Lease>,
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub timing: Timing,
    seen: Observation,
}

impl Elector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            identity: identity.to_owned(),
            timing,
            seen: Observation::default(),
        }
    }

    fn params() -> PostParams {
        PostParams {
            dry_run: false,
            field_manager: Some(FIELD_MANAGER.to_owned()),
        }
    }

    /// Reads the Lease and notes whether it changed.
    async fn read(&mut self) -> kube::Result<Option<Lease>> {
        let current = self.api.get_opt(&self.name).await?;
        self.seen = self.seen.observe(current.as_ref(), Instant::now());
        Ok(current)
    }

    /// Decides on `current` and writes. Returns whether we lead afterwards.
    async fn write(&self, current: Option<&Lease>) -> kube::Result<bool> {
        let decision = decide(current, &self.identity, &self.seen, Instant::now());
        let lease = || {
            desired(
                &self.name,
                &self.namespace,
                &self.identity,
                self.timing.lease_duration_seconds(),
                current,
                Timestamp::now(),
            )
        };
        match decision {
            LeaseAction::Follow { .. } => Ok(false),
            LeaseAction::Create => won(self.api.create(&Self::params(), &lease()).await),
            LeaseAction::Acquire | LeaseAction::Renew => won(self
                .api
                .replace(&self.name, &Self::params(), &lease())
                .await),
        }
    }

    /// One round: read, decide, write.
    async fn round(&mut self) -> kube::Result<bool> {
        let current = self.read().await?;
        self.write(current.as_ref()).await
    }

    /// Campaigns until `shutdown` turns true, publishing whether we lead on `leading`.
    /// Once it has led, losing the Lease (another candidate took it, or no renewal got
    /// through within the renew deadline, however long a request hangs) ends the
    /// campaign with `leading` false.
    pub async fn run(mut self, leading: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        // When the last successful write as leader was sent.
        let mut renewal_sent: Option<Instant> = None;
        loop {
            let deadline = renewal_sent.map(|t| self.timing.leads_until(t));
            let started = Instant::now();
            let round = tokio::select! {
                round = before(deadline, self.round()) => round,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            match round {
                Some(Ok(true)) => {
                    renewal_sent = Some(started);
                    leading.send_if_modified(|l| !std::mem::replace(l, true));
                }
                Some(Ok(false)) if renewal_sent.is_some() => {
                    return step_down(&leading, "another candidate holds the lease");
                }
                Some(Ok(false)) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "leader election round failed"),
                None => return step_down(&leading, UNRENEWED),
            }
            let deadline = renewal_sent.map(|t| self.timing.leads_until(t));
            tokio::select! {
                slept = before(deadline, tokio::time::sleep(self.timing.retry_period)) => {
                    if slept.is_none() {
                        return step_down(&leading, UNRENEWED);
                    }
                }
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        if *leading.borrow() {
            self.release().await;
            let _ = leading.send(false);
        }
    }

    async fn release(&self) {
        let Ok(Some(current)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let holder = current
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref());
        if holder != Some(self.identity.as_str()) {
            return;
        }
        if let Err(e) = self
            .api
            .replace(&self.name, &Self::params(), &released(&current))
            .await
        {
            tracing::warn!(error = %e, "could not release the lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fake::{Fake, NS};
    use crate::finservice::fixtures::settings;

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/finflow/leases";

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn held_by(holder: &str, renewed: i64) -> Lease {
        let mut lease = desired("op", "ns", holder, 15, None, at(renewed));
        lease.metadata.resource_version = Some("5".into());
        lease
    }

    /// `lease` as the holder's next renewal leaves it.
    fn renewed(lease: &Lease, renewed: i64) -> Lease {
        let mut next = lease.clone();
        next.spec.as_mut().unwrap().renew_time = Some(MicroTime(at(renewed)));
        next.metadata.resource_version = Some(format!(
            "{}0",
            lease.metadata.resource_version.clone().unwrap_or_default()
        ));
        next
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// What `me` decides on `lease` having seen it unchanged for `unchanged`.
    fn decide_after(lease: &Lease, me: &str, unchanged: Duration) -> LeaseAction {
        let t0 = Instant::now();
        let seen = Observation::default().observe(Some(lease), t0);
        decide(Some(lease), me, &seen, t0 + unchanged)
    }

    #[test]
    fn a_missing_lease_is_created_and_an_empty_one_acquired() {
        assert_eq!(
            decide(None, "a", &Observation::default(), Instant::now()),
            LeaseAction::Create
        );
        let mut lease = held_by("b", 100);
        lease.spec.as_mut().unwrap().holder_identity = None;
        assert_eq!(
            decide_after(&lease, "a", Duration::ZERO),
            LeaseAction::Acquire
        );
    }

    #[test]
    fn a_live_lease_of_another_holder_is_followed() {
        assert_eq!(
            decide_after(&held_by("b", 100), "a", secs(10)),
            LeaseAction::Follow { holder: "b".into() }
        );
    }

    #[test]
    fn another_holders_lease_expires_by_our_clock_not_by_its_renew_time() {
        // The holder's clock is an hour behind ours, or an hour ahead: its renewTime
        // says nothing about how long ago it renewed.
        let now = Timestamp::now().as_second();
        for skew in [-3600, 3600] {
            let lease = held_by("b", now + skew);
            assert_eq!(
                decide_after(&lease, "a", secs(1)),
                LeaseAction::Follow { holder: "b".into() },
                "skew {skew}"
            );
            assert_eq!(decide_after(&lease, "a", secs(15)), LeaseAction::Acquire);
        }
    }

    #[test]
    fn a_renewal_seen_restarts_the_wait_for_expiry() {
        let t0 = Instant::now();
        let lease = held_by("b", 100);
        let seen = Observation::default().observe(Some(&lease), t0);
        let seen = seen.observe(Some(&lease), t0 + secs(10));
        assert_eq!(seen.unchanged_for(t0 + secs(10)), secs(10), "unchanged");
        let next = renewed(&lease, 90);
        let seen = seen.observe(Some(&next), t0 + secs(10));
        assert_eq!(
            decide(Some(&next), "a", &seen, t0 + secs(20)),
            LeaseAction::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&next), "a", &seen, t0 + secs(25)),
            LeaseAction::Acquire
        );
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_counts_a_transition() {
        let old = held_by("b", 100);
        assert_eq!(decide_after(&old, "a", secs(15)), LeaseAction::Acquire);
        let new = desired("op", "ns", "a", 15, Some(&old), at(116));
        let spec = new.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(116))));
        // The replace is conditional on the Lease not having changed since it was read.
        assert_eq!(new.metadata.resource_version.as_deref(), Some("5"));
    }

    #[test]
    fn our_own_lease_is_renewed_keeping_its_acquire_time() {
        let mine = held_by("a", 100);
        assert_eq!(decide_after(&mine, "a", secs(100)), LeaseAction::Renew);
        let renewed = desired("op", "ns", "a", 15, Some(&mine), at(105));
        assert_eq!(renewed.metadata.resource_version.as_deref(), Some("5"));
        let spec = renewed.spec.unwrap();
        assert_eq!(spec.acquire_time, Some(MicroTime(at(100))));
        assert_eq!(spec.renew_time, Some(MicroTime(at(105))));
        assert_eq!(spec.lease_transitions, Some(0));
    }

    #[test]
    fn a_released_lease_is_free_for_the_next_candidate() {
        let released = released(&held_by("a", 100));
        assert_eq!(released.metadata.resource_version.as_deref(), Some("5"));
        assert_eq!(
            decide_after(&released, "b", Duration::ZERO),
            LeaseAction::Acquire
        );
    }

    #[test]
    fn a_leader_stops_leading_before_anyone_can_see_its_lease_expire() {
        for seconds in [3, 15, 60] {
            let timing = Timing::new(secs(seconds));
            assert!(timing.retry_period < timing.renew_deadline);
            assert!(timing.renew_deadline < timing.lease_duration);
            // Another candidate sees the renewal no earlier than it was sent, and waits
            // a whole duration from then.
            let sent = Instant::now();
            assert!(timing.leads_until(sent) < sent + timing.lease_duration);
        }
        assert_eq!(
            Timing::new(Duration::from_millis(1500)).lease_duration_seconds(),
            2
        );
        assert_eq!(
            Timing::new(Duration::from_millis(10)).lease_duration_seconds(),
            1
        );
    }

    fn elector(fake: &Fake, me: &str, timing: Timing) -> (Elector, usize) {
        let (client, id) = fake.client();
        (Elector::new(client, NS, "op", me, timing), id)
    }

    fn holder(fake: &Fake) -> Option<String> {
        fake.get(LEASES, "op")?["spec"]["holderIdentity"]
            .as_str()
            .map(str::to_owned)
    }

    #[tokio::test]
    async fn two_candidates_starting_together_cannot_both_lead() {
        let (fake, _) = Fake::start(settings());
        let timing = Timing::new(secs(15));
        let (mut a, _) = elector(&fake, "a", timing);
        let (mut b, _) = elector(&fake, "b", timing);
        // Both read before either writes: neither sees a Lease.
        let seen_by_a = a.read().await.unwrap();
        let seen_by_b = b.read().await.unwrap();
        assert!(seen_by_a.is_none() && seen_by_b.is_none());
        assert!(a.write(seen_by_a.as_ref()).await.unwrap());
        assert!(!b.write(seen_by_b.as_ref()).await.unwrap(), "b must lose");
        assert_eq!(holder(&fake).as_deref(), Some("a"));
        assert!(!b.round().await.unwrap(), "and then follows");
        let writes = fake.state().writes.clone();
        assert_eq!(writes, [format!("POST {LEASES}"), format!("POST {LEASES}")]);
    }

    #[tokio::test]
    async fn a_takeover_loses_to_a_renewal_made_since_the_lease_was_read() {
        let (fake, _) = Fake::start(settings());
        let timing = Timing::new(secs(1));
        let (mut a, _) = elector(&fake, "a", timing);
        let (mut b, _) = elector(&fake, "b", timing);
        assert!(a.round().await.unwrap());
        assert!(!b.round().await.unwrap());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // b has seen the Lease unchanged for its duration, then a renews.
        let stale = b.read().await.unwrap();
        assert_eq!(
            decide(stale.as_ref(), "b", &b.seen, Instant::now()),
            LeaseAction::Acquire
        );
        assert!(a.round().await.unwrap());
        assert!(!b.write(stale.as_ref()).await.unwrap(), "b must lose");
        assert_eq!(holder(&fake).as_deref(), Some("a"));
        let last = fake.state().sent.last().cloned().unwrap();
        assert_eq!(last.method, http::Method::PUT, "a replace, not an apply");
        assert_eq!(
            last.body["metadata"]["resourceVersion"],
            stale.unwrap().metadata.resource_version.unwrap()
        );
    }

    #[tokio::test]
    async fn a_cut_off_leader_steps_down_before_another_candidate_takes_over() {
        let (fake, _) = Fake::start(settings());
        let timing = Timing::new(secs(1));
        let (a, a_id) = elector(&fake, "a", timing);
        let (b, _) = elector(&fake, "b", timing);
        let (stop, shutdown) = watch::channel(false);
        let (a_tx, mut a_leads) = watch::channel(false);
        let (b_tx, mut b_leads) = watch::channel(false);
        let a_run = tokio::spawn(a.run(a_tx, shutdown.clone()));
        a_leads.wait_for(|l| *l).await.unwrap();
        let b_run = tokio::spawn(b.run(b_tx, shutdown));
        tokio::time::sleep(timing.lease_duration).await;
        assert!(!*b_leads.borrow(), "b follows while a renews");

        fake.state().cut_off.insert(a_id);
        let cut = Instant::now();
        let within = timing.lease_duration * 5;
        tokio::time::timeout(within, a_leads.wait_for(|l| !*l))
            .await
            .expect("a steps down although its requests hang")
            .unwrap();
        let a_stopped = Instant::now();
        tokio::time::timeout(within, b_leads.wait_for(|l| *l))
            .await
            .expect("b takes over")
            .unwrap();
        let b_started = Instant::now();
        assert!(a_stopped < b_started);
        assert!(a_stopped < cut + timing.lease_duration);
        // Measured from a's last write the server accepted, as b measures.
        let last_write = fake
            .state()
            .sent
            .iter()
            .filter(|w| w.body["spec"]["holderIdentity"] == "a")
            .map(|w| w.when)
            .max()
            .unwrap();
        assert!(a_stopped < last_write + timing.lease_duration);
        assert!(b_started >= last_write + timing.lease_duration);
        assert_eq!(holder(&fake).as_deref(), Some("b"));

        stop.send(true).unwrap();
        b_run.await.unwrap();
        a_run.abort();
    }
}
