//! What A tells the others about accounts: `user.created`, the two mails D sends for a
//! sign-up (`user.verification_requested`, `user.registration_repeated`), and the two
//! about the password (`user.password_reset_requested`, `user.password_changed`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::identity::{KycStatus, Tier};

/// The data of `user.created`, published when the address is verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCreated {
    pub user_id: Uuid,
    pub email: String,
    pub full_name: String,
    pub kyc_status: KycStatus,
    pub account_tier: Tier,
}

/// The data of `user.verification_requested`: D mails the token to `email`, and only
/// there. The token is a credential, so `Debug` leaves it out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationRequested {
    pub user_id: Uuid,
    pub email: String,
    pub full_name: String,
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for VerificationRequested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationRequested")
            .field("user_id", &self.user_id)
            .field("email", &self.email)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The data of `user.password_reset_requested`: D mails the token to `email`, the
/// account's address, and only there. The token is a credential, so `Debug` leaves it
/// out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordResetRequested {
    pub user_id: Uuid,
    pub email: String,
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for PasswordResetRequested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordResetRequested")
            .field("user_id", &self.user_id)
            .field("email", &self.email)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The data of `user.registration_repeated`: D tells the owner of `email` that someone
/// tried to sign up with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationRepeated {
    pub user_id: Uuid,
    pub email: String,
}

/// The data of `user.password_changed`: D tells the owner of `email`, the account's
/// address, that its password changed and its sessions ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordChanged {
    pub user_id: Uuid,
    pub email: String,
    pub changed_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verification_requests_token_travels_but_is_never_debug_printed() {
        let requested = VerificationRequested {
            user_id: Uuid::nil(),
            email: "ada@example.com".into(),
            full_name: "Ada".into(),
            token: "s3cret-token".into(),
            expires_at: DateTime::UNIX_EPOCH,
        };
        let json = serde_json::to_value(&requested).unwrap();
        assert_eq!(json["token"], "s3cret-token");
        assert_eq!(
            serde_json::from_value::<VerificationRequested>(json).unwrap(),
            requested
        );
        assert!(!format!("{requested:?}").contains("s3cret-token"));
    }

    #[test]
    fn a_reset_requests_token_is_never_debug_printed() {
        let requested = PasswordResetRequested {
            user_id: Uuid::nil(),
            email: "ada@example.com".into(),
            token: "s3cret-token".into(),
            expires_at: DateTime::UNIX_EPOCH,
        };
        assert!(!format!("{requested:?}").contains("s3cret-token"));
    }
}
