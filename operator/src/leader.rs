//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! `kube-leader-election` (0.44, its newest release) is built on kube 4, so its client
//! type cannot take our kube 5 client; this is the same algorithm on kube's Lease API.
//! [`decide`] is pure: given the Lease as read, who we are and the time, acquire, renew
//! or follow. Writes are server-side applies that carry the Lease's `resourceVersion`,
//! which makes them compare-and-swap: when two candidates race for an expired Lease the
//! API server accepts one and answers the other 409.
//!
//! A leader that cannot renew within the lease duration steps down; the process then
//! exits (see `app`), so a fresh start rejoins the election instead of reasoning about
//! controllers stopped halfway.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, Patch};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::controller::apply_params;

/// What to do with the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it (or the holder let it expire): take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it and is renewing.
    Follow { holder: String },
}

pub fn decide(lease: Option<&Lease>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::Acquire;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    let expired = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .is_none_or(|t| t.0 + duration < now);
    if expired {
        Decision::Acquire
    } else {
        Decision::Follow {
            holder: holder.to_owned(),
        }
    }
}

/// The Lease to apply after `decision`, holding `resourceVersion` of `current` as the
/// precondition.
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
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            resource_version: current.and_then(|l| l.metadata.resource_version.clone()),
            ..ObjectMeta::default()
        },
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
/// over at its next try instead of waiting out the duration.
pub fn released(name: &str, namespace: &str, current: &Lease) -> Lease {
    let mut lease = current.clone();
    lease.metadata = ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        resource_version: current.metadata.resource_version.clone(),
        ..ObjectMeta::default()
    };
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
    }
    lease
}

/// One candidate in the election.
pub struct Elector {
    pub api: Api<Lease>,
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub duration: Duration,
}

impl Elector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            identity: identity.to_owned(),
            duration,
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// One round: read, decide, write. Returns whether we lead afterwards.
    async fn round(&self) -> kube::Result<bool> {
        let current = self.api.get_opt(&self.name).await?;
        let now = Timestamp::now();
        match decide(current.as_ref(), &self.identity, now) {
            Decision::Follow { .. } => Ok(false),
            Decision::Acquire | Decision::Renew => {
                let lease = desired(
                    &self.name,
                    &self.namespace,
                    &self.identity,
                    self.duration_seconds(),
                    current.as_ref(),
                    now,
                );
                match self
                    .api
                    .patch(&self.name, &apply_params(), &Patch::Apply(&lease))
                    .await
                {
                    Ok(_) => Ok(true),
                    // Someone else wrote first.
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Campaigns until `shutdown` turns true, publishing whether we lead on `leading`.
    /// Renews at a third of the duration; steps down when renewal has failed for a
    /// whole duration.
    pub async fn run(self, leading: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        let period = self.duration / 3;
        let mut last_renewal: Option<std::time::Instant> = None;
        loop {
            match self.round().await {
                Ok(true) => {
                    last_renewal = Some(std::time::Instant::now());
                    leading.send_if_modified(|l| !std::mem::replace(l, true));
                }
                Ok(false) => {
                    last_renewal = None;
                    leading.send_if_modified(|l| std::mem::replace(l, false));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leader election round failed");
                    if last_renewal.is_some_and(|t| t.elapsed() >= self.duration) {
                        last_renewal = None;
                        leading.send_if_modified(|l| std::mem::replace(l, false));
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(period) => {}
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
        if decide(Some(&current), &self.identity, Timestamp::now()) != Decision::Renew {
            return;
        }
        let lease = released(&self.name, &self.namespace, &current);
        if let Err(e) = self
            .api
            .patch(&self.name, &apply_params(), &Patch::Apply(&lease))
            .await
        {
            tracing::warn!(error = %e, "could not release the lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn held_by(holder: &str, renewed: i64) -> Lease {
        let mut lease = desired("op", "ns", holder, 15, None, at(renewed));
        lease.metadata.resource_version = Some("5".into());
        lease
    }

    #[test]
    fn a_missing_or_empty_lease_is_acquired() {
        assert_eq!(decide(None, "a", at(100)), Decision::Acquire);
        let mut lease = held_by("b", 100);
        lease.spec.as_mut().unwrap().holder_identity = None;
        assert_eq!(decide(Some(&lease), "a", at(101)), Decision::Acquire);
    }

    #[test]
    fn a_live_lease_of_another_holder_is_followed() {
        assert_eq!(
            decide(Some(&held_by("b", 100)), "a", at(110)),
            Decision::Follow { holder: "b".into() }
        );
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_counts_a_transition() {
        let old = held_by("b", 100);
        assert_eq!(decide(Some(&old), "a", at(116)), Decision::Acquire);
        let new = desired("op", "ns", "a", 15, Some(&old), at(116));
        let spec = new.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(116))));
        // The write is conditional on the Lease not having changed since it was read.
        assert_eq!(new.metadata.resource_version.as_deref(), Some("5"));
    }

    #[test]
    fn our_own_lease_is_renewed_keeping_its_acquire_time() {
        let mine = held_by("a", 100);
        assert_eq!(decide(Some(&mine), "a", at(200)), Decision::Renew);
        let renewed = desired("op", "ns", "a", 15, Some(&mine), at(105))
            .spec
            .unwrap();
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(100))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(105))));
        assert_eq!(renewed.lease_transitions, Some(0));
    }

    #[test]
    fn a_released_lease_is_free_for_the_next_candidate() {
        let released = released("op", "ns", &held_by("a", 100));
        assert_eq!(decide(Some(&released), "b", at(101)), Decision::Acquire);
    }
}
