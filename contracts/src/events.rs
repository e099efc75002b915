//! Event names (the envelope's `type`) and the values some payloads carry.

/// An account's email address is verified: the account exists for everyone else now.
pub const USER_CREATED: &str = "user.created";
/// A sign-up (or a repeated sign-up of an unverified address) asks the mailbox's
/// owner to confirm: `{user_id, email, full_name, token, expires_at}`. The token is
/// a credential: only the mail to `email` may carry it.
pub const USER_VERIFICATION_REQUESTED: &str = "user.verification_requested";
/// The fields of an event's `data` that are a credential for its consumer alone (the
/// tokens D mails: a verification, a password reset), by event type: the producer's outbox table keeps them
/// only until the broker has the event, so a reader of the live table or a dump of it
/// finds none (the write-ahead log and dead row versions until vacuum still hold them).
pub const SECRET_DATA: &[(&str, &str)] = &[
    (USER_VERIFICATION_REQUESTED, "token"),
    (USER_PASSWORD_RESET_REQUESTED, "token"),
];
/// Someone signed up with the address of a verified account, which did not change:
/// `{user_id, email}`, so its owner is told.
pub const USER_REGISTRATION_REPEATED: &str = "user.registration_repeated";
/// The owner of a verified account asked to reset a forgotten password: `{user_id,
/// email, token, expires_at}`. The token is a credential: only the mail to `email` may
/// carry it.
pub const USER_PASSWORD_RESET_REQUESTED: &str = "user.password_reset_requested";
/// The account's password was replaced and every session of it ended: `{user_id,
/// email, changed_at, via}` (`via`: `change` or `reset`), so its owner is told at the
/// account's address, whoever replaced it.
pub const USER_PASSWORD_CHANGED: &str = "user.password_changed";
pub const USER_KYC_UPDATED: &str = "user.kyc_updated";
pub const WALLET_CREATED: &str = "wallet.created";
pub const WALLET_STATUS_CHANGED: &str = "wallet.status_changed";
pub const PAYMENT_REQUESTED: &str = "payment.requested";
pub const PAYMENT_COMPLETED: &str = "payment.completed";
pub const PAYMENT_FAILED: &str = "payment.failed";
pub const PAYMENT_ON_HOLD: &str = "payment.on_hold";
pub const PAYMENT_REVERSED: &str = "payment.reversed";
pub const AML_FLAGGED: &str = "aml.flagged";
pub const AML_CLEARED: &str = "aml.cleared";

/// The `rule` of the AML alert that holds a payment (`ON_HOLD`): only a decision on
/// this alert releases or fails the payment. Decisions on pattern alerts (velocity,
/// structuring) are about the user and leave a held payment as it is.
pub const AML_HOLD_RULE: &str = "amount_threshold";
