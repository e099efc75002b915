//! One template per event type: who is told, and what.

use finflow_platform::events::{Event, types};
use serde_json::Value;
use uuid::Uuid;

/// A rendered message for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub user_id: Uuid,
    pub title: String,
    pub body: String,
}

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

fn money(v: &Value) -> String {
    format!("{} {}", text(v, "amount"), text(v, "currency"))
}

/// The message for `event`, or `None` if D does not notify about it (or it is malformed).
pub fn render(event: &Event) -> Option<Message> {
    let d = &event.data;
    let user_id: Uuid = serde_json::from_value(d["user_id"].clone()).ok()?;
    let kind = text(d, "kind");
    let (title, body) = match event.event_type.as_str() {
        types::USER_CREATED => (
            "Welcome to FinFlow".to_owned(),
            format!(
                "Hello {}, your account is ready. Verify your identity to open a wallet.",
                text(d, "full_name")
            ),
        ),
        // Sign-up mails go to an address whose owner may not have asked for them: only
        // D's own words and A's token, nothing the sign-up typed (its name could be a
        // phishing text mailed to a stranger).
        types::USER_VERIFICATION_REQUESTED => {
            let token = d["token"].as_str().filter(|t| !t.is_empty())?;
            (
                "Confirm your email address".to_owned(),
                // Lines of at most 76 characters: the mail then travels as 7bit, and
                // the token line is never folded by quoted-printable.
                format!(
                    "Someone, we hope you, signed up for FinFlow with this email address.\n\n\
                     Confirm your address: POST /api/v1/auth/verify with the body\n\n\
                     {}\n\n\
                     plus \"password\": the password you chose when you signed up.\n\
                     If that password is refused, this mail answers somebody else's\n\
                     sign-up of your address: use the mail of yours, or sign up again.\n\
                     The token works once, until {}.\n\
                     Once the address is confirmed you can log in.\n\n\
                     If you did not sign up, ignore this mail: without this token\n\
                     nobody can use your address.",
                    serde_json::json!({ "token": token }),
                    text(d, "expires_at")
                ),
            )
        }
        types::USER_REGISTRATION_REPEATED => (
            "Someone tried to sign up with your address".to_owned(),
            "Someone just tried to create a FinFlow account with this email address,\n\
             which already has one. Nothing was changed: your account, its password\n\
             and its details are as they were.\n\n\
             If it was you, log in instead (POST /api/v1/auth/login).\n\
             If it was not you, there is nothing to do."
                .to_owned(),
        ),
        // Asked for by whoever typed the address: D's own words and A's token only.
        types::USER_PASSWORD_RESET_REQUESTED => {
            let token = d["token"].as_str().filter(|t| !t.is_empty())?;
            (
                "Reset your FinFlow password".to_owned(),
                // Lines of at most 76 characters, as the verification mail's.
                format!(
                    "Someone, we hope you, asked to reset the password of the FinFlow\n\
                     account with this email address.\n\n\
                     Choose a new password: POST /api/v1/auth/password-reset/confirm\n\
                     with the body\n\n\
                     {}\n\n\
                     plus \"new_password\": the password you want from now on.\n\
                     The token works once, until {}.\n\
                     Every session of the account is signed out when it is used.\n\n\
                     If you did not ask, ignore this mail: your password stays as it\n\
                     is, and without this token nobody can change it this way.",
                    serde_json::json!({ "token": token }),
                    text(d, "expires_at")
                ),
            )
        }
        // The owner learns it here, at the account's address, whoever replaced it, and
        // what was exposed if it was not them: the password, or their mailbox.
        types::USER_PASSWORD_CHANGED => (
            "Your FinFlow password was changed".to_owned(),
            format!(
                "The password of the FinFlow account with this email address was\n\
                 {},\n\
                 and every session of the account was signed out, at\n\
                 {}.\n\n\
                 If it was you, there is nothing to do.\n\
                 {}",
                if d["via"] == "reset" {
                    "reset with a token we mailed here"
                } else {
                    "changed by someone who knew the password before"
                },
                text(d, "changed_at"),
                if d["via"] == "reset" {
                    "If it was not you, someone can read this mailbox: secure it, then\n\
                     reset your password again (POST /api/v1/auth/password-reset)."
                } else {
                    "If it was not you, someone knew your password: reset it now\n\
                     (POST /api/v1/auth/password-reset) and tell FinFlow support."
                }
            ),
        ),
        types::USER_KYC_UPDATED => match d["kyc_status"].as_str()? {
            "verified" => (
                "Your identity is verified".to_owned(),
                "Your KYC verification is complete: you can now open wallets and send money."
                    .to_owned(),
            ),
            "rejected" => (
                "We could not verify your identity".to_owned(),
                "Your KYC document was rejected. Please submit a new one.".to_owned(),
            ),
            _ => return None,
        },
        types::WALLET_STATUS_CHANGED => (
            format!(
                "Your {} wallet is now {}",
                text(d, "currency"),
                text(d, "status")
            ),
            format!(
                "Wallet {} changed from {} to {}.",
                text(d, "wallet_id"),
                text(d, "previous_status"),
                text(d, "status")
            ),
        ),
        types::PAYMENT_COMPLETED => (
            format!("Your {kind} of {} is complete", money(d)),
            format!("Payment {} completed.", text(d, "payment_id")),
        ),
        types::PAYMENT_FAILED => (
            format!("Your {kind} of {} failed", money(d)),
            format!(
                "Payment {} failed: {}.",
                text(d, "payment_id"),
                d["failure"]["reason"].as_str().unwrap_or("unknown reason")
            ),
        ),
        types::PAYMENT_ON_HOLD => (
            format!("Your {kind} of {} is on hold", money(d)),
            format!(
                "Payment {} is being reviewed by our compliance team. We will tell you when it moves on.",
                text(d, "payment_id")
            ),
        ),
        types::PAYMENT_REVERSED => (
            format!("Your {kind} of {} was reversed", money(d)),
            format!(
                "Payment {} was reversed and the money returned.",
                text(d, "payment_id")
            ),
        ),
        _ => return None,
    };
    Some(Message {
        user_id,
        title,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(kind: &str, data: Value) -> Event {
        Event::new("test", kind, &data).unwrap()
    }

    /// `kind`'s message for `data`, which must travel as 7bit and never be folded by
    /// quoted-printable, so that a token line reaches the reader whole: ASCII, no line
    /// over 76 characters.
    fn unfolded(kind: &str, data: Value) -> Message {
        let message = render(&event(kind, data)).unwrap();
        let fits = message.body.is_ascii() && message.body.lines().all(|l| l.len() <= 76);
        assert!(fits, "{kind} would be folded: {}", message.body);
        message
    }

    /// Fails unless `text` is in the message's title or body.
    fn says(message: &Message, text: &str) {
        let said = message.title.contains(text) || message.body.contains(text);
        assert!(said, "{text:?} is not in {message:?}");
    }

    #[test]
    fn every_notified_event_type_has_a_template() {
        let user = Uuid::new_v4();
        let payment = json!({"user_id": user, "payment_id": Uuid::new_v4(), "kind": "transfer",
                             "amount": "15000.00", "currency": "USD", "failure": {"reason": "insufficient funds"}});
        for kind in [
            types::PAYMENT_COMPLETED,
            types::PAYMENT_FAILED,
            types::PAYMENT_ON_HOLD,
            types::PAYMENT_REVERSED,
        ] {
            let m = render(&event(kind, payment.clone())).unwrap();
            assert_eq!(m.user_id, user);
            assert!(m.title.contains("15000.00 USD"), "{kind}: {}", m.title);
        }
        let hold = render(&event(types::PAYMENT_ON_HOLD, payment)).unwrap();
        assert!(hold.title.contains("on hold"));
        let welcome = render(&event(
            types::USER_CREATED,
            json!({"user_id": user, "full_name": "Ada"}),
        ))
        .unwrap();
        assert!(welcome.body.contains("Ada"));
        let verification = unfolded(
            types::USER_VERIFICATION_REQUESTED,
            json!({"user_id": user, "email": "ada@example.com", "full_name": "Click evil.example",
                   "token": "abc-_123", "expires_at": "2026-12-06T10:00:00Z"}),
        );
        assert_eq!(verification.user_id, user);
        says(
            &verification,
            "POST /api/v1/auth/verify with the body\n\n{\"token\":\"abc-_123\"}\n",
        );
        says(&verification, "2026-12-06T10:00:00Z");
        says(
            &verification,
            "plus \"password\": the password you chose when you signed up.",
        );
        assert!(
            !verification.body.contains("evil"),
            "nothing the sign-up typed is mailed"
        );
        let repeated = unfolded(
            types::USER_REGISTRATION_REPEATED,
            json!({"user_id": user, "email": "ada@example.com"}),
        );
        says(&repeated, "Someone tried");
        says(&repeated, "log in");
        let reset = unfolded(
            types::USER_PASSWORD_RESET_REQUESTED,
            json!({"user_id": user, "email": "ada@example.com", "token": "t0ken",
                   "expires_at": "2026-12-07T04:00:00.123456Z"}),
        );
        says(&reset, "Reset your FinFlow password");
        says(
            &reset,
            "POST /api/v1/auth/password-reset/confirm\nwith the body\n\n{\"token\":\"t0ken\"}\n",
        );
        let changed = unfolded(
            types::USER_PASSWORD_CHANGED,
            json!({"user_id": user, "email": "ada@example.com", "changed_at": "2026-12-07T03:00:00Z"}),
        );
        assert_eq!(changed.user_id, user);
        says(&changed, "password was changed");
        says(&changed, "2026-12-07T03:00:00Z");
        says(&changed, "someone knew your password");
        let reset_done = unfolded(
            types::USER_PASSWORD_CHANGED,
            json!({"user_id": user, "email": "ada@example.com", "changed_at": "2026-12-07T03:00:00Z",
                   "via": "reset"}),
        );
        says(&reset_done, "reset with a token we mailed here");
        says(&reset_done, "someone can read this mailbox");
        for kind in [
            types::USER_VERIFICATION_REQUESTED,
            types::USER_PASSWORD_RESET_REQUESTED,
        ] {
            let tokenless = json!({"user_id": user, "email": "ada@example.com"});
            assert_eq!(
                render(&event(kind, tokenless)),
                None,
                "{kind}: no token, no mail"
            );
        }
        let kyc = render(&event(
            types::USER_KYC_UPDATED,
            json!({"user_id": user, "kyc_status": "verified"}),
        ))
        .unwrap();
        assert!(kyc.title.contains("verified"));
    }

    #[test]
    fn events_d_does_not_handle_or_cannot_read_render_nothing() {
        assert!(
            render(&event(
                types::PAYMENT_REQUESTED,
                json!({"user_id": Uuid::new_v4()})
            ))
            .is_none()
        );
        assert!(render(&event(types::PAYMENT_COMPLETED, json!({"no": "user"}))).is_none());
    }
}
