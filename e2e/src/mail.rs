//! Reading the platform's mail: the launcher's SMTP sink ([`Platform::mailbox`]) keeps
//! every message D sent. Signing up needs it: A answers every sign-up the same and
//! mails the verification token (`user.verification_requested`) to the address.
//!
//! [`Platform::mailbox`]: crate::launcher::Platform::mailbox

use std::time::Duration;

use finflow_platform::testing::Mailbox;

/// How long a sign-up waits for its verification mail (outbox, broker, D's consumer
/// and its sender: normally well under a second).
pub const MAIL_PATIENCE: Duration = Duration::from_secs(10);

/// The token in a mail's text (D's verification and reset templates: a line
/// `{"token":"<token>"}` after the request to send it with), if the mail has one.
pub fn mailed_token(mail: &str) -> Option<String> {
    let marker = r#"{"token":""#;
    let start = mail.find(marker)? + marker.len();
    let rest = &mail[start..];
    let token = &rest[..rest.find('"')?];
    (!token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then(|| token.to_owned())
}

/// The `Subject:` of a mail's text.
pub fn subject(mail: &str) -> Option<&str> {
    mail.lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .map(str::trim)
}

/// How many mails the sink holds now: a mark to wait for newer ones from.
pub fn mark(mailbox: &Mailbox) -> usize {
    mailbox.lock().map(|m| m.len()).unwrap_or_default()
}

/// The first mail to `address` among those received after `since` ([`mark`]) that
/// `wanted` accepts, waiting up to `patience` for it; `None` if none came.
pub async fn next_mail_to(
    mailbox: &Mailbox,
    address: &str,
    since: usize,
    patience: Duration,
    wanted: impl Fn(&str) -> bool,
) -> Option<String> {
    let address = address.trim().to_lowercase();
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let found = mailbox.lock().ok().and_then(|mails| {
            mails
                .iter()
                .skip(since)
                .find(|(to, data)| to.contains(&address) && wanted(data.as_str()))
                .map(|(_, data)| data.clone())
        });
        if found.is_some() || tokio::time::Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the verification mail to `address` received after `since` and returns its
/// token; panics after [`MAIL_PATIENCE`] saying what is missing.
pub async fn verification_token_for(mailbox: &Mailbox, address: &str, since: usize) -> String {
    let mail = next_mail_to(mailbox, address, since, MAIL_PATIENCE, |m| {
        mailed_token(m).is_some()
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no verification mail to {address} within {MAIL_PATIENCE:?} after signing up: \
             A emits user.verification_requested, D mails it to the launcher's SMTP sink \
             (see the auth and notification logs)"
        )
    });
    mailed_token(&mail).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_from_the_verification_line() {
        let mail = "Subject: Confirm your email address\n\n\
                    Confirm your address: POST /api/v1/auth/verify with the body\r\n\r\n{\"token\":\"aB3-_x\"}\r\n";
        assert_eq!(mailed_token(mail).as_deref(), Some("aB3-_x"));
        assert_eq!(subject(mail), Some("Confirm your email address"));
        assert_eq!(mailed_token("Subject: Welcome to FinFlow\n\nHello"), None);
        assert_eq!(mailed_token(r#"{"token":"a b"}"#), None);
    }
}
