//! Per-caller token buckets (GCRA, through `governor`): keyed by the token's `sub`, or
//! by the client address for anonymous requests.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Whom a request counts against: a token's `sub`, or the address of an anonymous
/// caller. Made once per verified token, not per request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallerKey(String);

impl CallerKey {
    pub fn user(sub: &str) -> Self {
        Self(format!("sub:{sub}"))
    }

    /// An anonymous caller, by its network (`client_network`: an IPv6 caller's /64).
    pub fn anonymous(address: IpAddr) -> Self {
        Self(format!(
            "ip:{}",
            finflow_contracts::identity::client_network(address)
        ))
    }
}

/// The per-caller limiter.
pub struct RateLimit {
    limiter: DefaultKeyedRateLimiter<CallerKey>,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("callers", &self.limiter.len())
            .finish()
    }
}

impl RateLimit {
    /// `per_second` sustained, `burst` at once.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
        }
    }

    /// `Err(seconds)` when the caller is over its limit: when to try again, at least 1.
    pub fn check(&self, caller: &CallerKey) -> Result<(), u64> {
        self.limiter.check_key(caller).map_err(|not_until| {
            retry_after_secs(not_until.wait_time_from(self.limiter.clock().now()))
        })
    }

    /// Forgets callers whose buckets are full again, so idle callers cost no memory.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// A wait as whole seconds for `Retry-After`: rounded up, never 0.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn a_caller_gets_its_burst_then_is_limited_and_others_are_not() {
        let limit = RateLimit::new(nz(1), nz(2));
        let ada = CallerKey::user("ada");
        assert!(limit.check(&ada).is_ok());
        assert!(limit.check(&ada).is_ok());
        assert_eq!(limit.check(&ada), Err(1));
        assert!(limit.check(&CallerKey::user("bob")).is_ok());
        let anonymous = CallerKey::anonymous("127.0.0.1".parse().unwrap());
        assert!(limit.check(&anonymous).is_ok());
        assert_ne!(
            anonymous,
            CallerKey::user("127.0.0.1"),
            "users and addresses never share a bucket"
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }
}
