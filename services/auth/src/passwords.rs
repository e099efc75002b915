//! Argon2id hashing and checking of passwords, a bounded number at once.
//!
//! Each run holds about 19 MiB for its duration and a core: unbounded, a burst of
//! logins from one address (each counted only per minute) runs them all together and
//! has the pod killed for its memory. Past [`Passwords::new`]'s `at_once`, a request
//! waits at most `wait` for a turn, then is answered 503 with `Retry-After`.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use finflow_platform::error::{ApiError, ErrorCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::Password;

const BUSY: &str = "too many password checks at once, try again shortly";

/// The refusal of a request that found no turn within the wait: 503, `Retry-After: 1`.
pub(crate) fn busy() -> ApiError {
    let mut busy = ApiError::new(ErrorCode::DependencyUnavailable, BUSY);
    busy.retry_after = Some(1);
    busy
}

/// Whether `e` is the refusal of a request that found no turn: no password was checked.
pub fn is_busy(e: &ApiError) -> bool {
    e.code == ErrorCode::DependencyUnavailable && e.message == BUSY
}

/// How long a request waits for a turn before it is answered 503.
pub const WAIT: Duration = Duration::from_secs(5);

/// The turns at Argon2 of one process.
#[derive(Clone, Debug)]
pub struct Passwords {
    turns: Arc<Semaphore>,
    wait: Duration,
}

impl Passwords {
    pub fn new(at_once: std::num::NonZeroUsize, wait: Duration) -> Self {
        Self {
            turns: Arc::new(Semaphore::new(at_once.get())),
            wait,
        }
    }

    async fn turn(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        match tokio::time::timeout(self.wait, Arc::clone(&self.turns).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // Timed out (the semaphore is never closed).
            _ => Err(busy()),
        }
    }

    /// A new Argon2id hash of `password`, in its PHC string form.
    pub async fn hash(&self, password: Password) -> Result<String, ApiError> {
        let turn = self.turn().await?;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            argon2()
                .hash_password(password.expose().as_bytes(), &salt)
                .map(|h| h.to_string())
        })
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::internal(&e))
    }

    /// Whether `password` is the one `hash` was made of.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, ApiError> {
        let turn = self.turn().await?;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let parsed = PasswordHash::new(&hash).map_err(|e| ApiError::internal(&e))?;
            Ok(argon2()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok())
        })
        .await
        .map_err(|e| ApiError::internal(&e))?
    }
}

fn argon2() -> Argon2<'static> {
    // Argon2id v19 with the library's defaults (m = 19 MiB, t = 2, p = 1), OWASP's baseline.
    Argon2::default()
}

/// A real Argon2id hash of a random password, checked when the email is unknown.
pub static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    argon2()
        .hash_password(uuid::Uuid::new_v4().as_bytes(), &salt)
        .map(|h| h.to_string())
        .unwrap_or_default()
});

#[cfg(test)]
mod tests {
    use super::*;

    fn one_at_a_time() -> Passwords {
        Passwords::new(1.try_into().unwrap(), Duration::from_millis(50))
    }

    #[tokio::test]
    async fn a_check_that_finds_every_turn_taken_is_refused_with_503_and_retry_after() {
        let passwords = one_at_a_time();
        let hash = passwords
            .hash(Password::parse("correct horse battery").unwrap())
            .await
            .unwrap();
        // A check under way holds the only turn.
        let held = Arc::clone(&passwords.turns).acquire_owned().await.unwrap();
        let refused = passwords
            .verify("correct horse battery".to_owned(), hash.clone())
            .await
            .expect_err("no turn free within the wait");
        assert_eq!(refused.code, ErrorCode::DependencyUnavailable);
        assert_eq!(refused.code.status().as_u16(), 503);
        assert_eq!(refused.retry_after, Some(1));
        drop(held);
        assert!(
            passwords
                .verify("correct horse battery".to_owned(), hash)
                .await
                .unwrap()
        );
    }
}
