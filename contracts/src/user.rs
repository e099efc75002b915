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

/// A token that is a credential for the mailbox it is mailed to, sealed by A for D
/// alone (`finflow_contracts::sealed`, feature `sealing`): on the bus it is `v1.` and
/// ciphertext, and `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MailedCredential(pub String);

impl std::fmt::Debug for MailedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MailedCredential(..)")
    }
}

/// The data of `user.verification_requested`: D opens the token and mails it to
/// `email`, and only there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationRequested {
    pub user_id: Uuid,
    pub email: String,
    pub full_name: String,
    pub token: MailedCredential,
    pub expires_at: DateTime<Utc>,
}

/// The data of `user.password_reset_requested`: D opens the token and mails it to
/// `email`, the account's address, and only there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordResetRequested {
    pub user_id: Uuid,
    pub email: String,
    pub token: MailedCredential,
    pub expires_at: DateTime<Utc>,
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
    /// What the one who replaced it had: the password, or a reset mail.
    #[serde(default)]
    pub via: PasswordReplacedVia,
}

/// How a password was replaced, which tells its owner what was exposed if it was not
/// them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PasswordReplacedVia {
    /// With the current password (`POST /api/v1/auth/password`).
    #[default]
    Change,
    /// With the token of a reset mail (`POST /api/v1/auth/password-reset/confirm`).
    Reset,
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
            token: MailedCredential("s3cret-token".into()),
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

    /// An event from before `via` existed reads as a change, the only way there was.
    #[test]
    fn a_password_changed_without_via_was_a_change() {
        let older = serde_json::json!({"user_id": Uuid::nil(), "email": "ada@example.com",
                                       "changed_at": "2026-12-07T03:00:00Z"});
        let changed: PasswordChanged = serde_json::from_value(older).unwrap();
        assert_eq!(changed.via, PasswordReplacedVia::Change);
        let reset = PasswordChanged {
            via: PasswordReplacedVia::Reset,
            ..changed
        };
        assert_eq!(serde_json::to_value(&reset).unwrap()["via"], "reset");
    }
}
