//! A mailed credential sealed by A for D alone.
//!
//! Every service connects to the broker as one user, so any of them can bind a queue
//! to any event: a verification or reset token in the clear on the bus is an account
//! to whoever holds D's, E's or F's broker credentials. A seals it with a key only A
//! and D are given (`MAIL_SEAL_KEY`): ChaCha20-Poly1305 under a key derived from the
//! secret with HKDF-SHA256, a random nonce, and the event's type, user and address as
//! associated data, so a sealed token copied into an event addressed elsewhere does
//! not open. The form is `v1.` and the unpadded base64url of nonce, ciphertext and tag.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use uuid::Uuid;

const PREFIX: &str = "v1.";
const SALT: &[u8] = b"finflow mailed credential v1";
/// The shortest secret taken: 32 characters (`openssl rand -base64 32` gives 44).
pub const MIN_SECRET_LEN: usize = 32;

/// Whether `text` is a sealed credential, the form [`SealKey::seal`] writes.
pub fn is_sealed(text: &str) -> bool {
    text.starts_with(PREFIX)
}

/// Whether `text` has the form of a token A mails, in the clear: 32 bytes, unpadded
/// base64url, 43 characters.
pub fn is_plain_token(text: &str) -> bool {
    text.len() == 43 && URL_SAFE_NO_PAD.decode(text).is_ok_and(|b| b.len() == 32)
}

/// The key, derived once from the configured secret.
#[derive(Clone)]
pub struct SealKey([u8; 32]);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

/// Why a sealed credential did not open, or a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the secret must be at least {MIN_SECRET_LEN} characters")]
    ShortSecret,
    #[error("not a sealed credential (v1.<base64url>)")]
    Malformed,
    #[error("the credential does not open with this key for this event")]
    Refused,
}

/// Whom a sealed credential is for: what the event says besides it. Sealed and opened
/// with the same three, or it does not open.
#[derive(Debug, Clone, Copy)]
pub struct Addressee<'a> {
    pub event_type: &'a str,
    pub user_id: Uuid,
    pub email: &'a str,
}

impl Addressee<'_> {
    fn aad(&self) -> String {
        format!("{}\n{}\n{}", self.event_type, self.user_id, self.email)
    }
}

struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

impl SealKey {
    /// The key of `secret` (at least [`MIN_SECRET_LEN`] characters; its errors never
    /// repeat it).
    pub fn parse(secret: &str) -> Result<Self, SealError> {
        if secret.chars().count() < MIN_SECRET_LEN {
            return Err(SealError::ShortSecret);
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(secret.as_bytes());
        let mut key = [0u8; 32];
        prk.expand(&[b"chacha20-poly1305"], Len32)
            .and_then(|okm| okm.fill(&mut key))
            .map_err(|_| SealError::ShortSecret)?;
        Ok(Self(key))
    }

    /// [`SealKey::parse`] for a setting (clap's `Quiet` parser in `finflow_platform`):
    /// the error as text, without the secret.
    pub fn from_setting(text: &str) -> Result<Self, String> {
        Self::parse(text).map_err(|e| e.to_string())
    }

    fn aead(&self) -> LessSafeKey {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &self.0)
            .unwrap_or_else(|_| unreachable!("a 32-byte key is ChaCha20-Poly1305's length"));
        LessSafeKey::new(unbound)
    }

    /// `credential` sealed for `to`.
    pub fn seal(&self, credential: &str, to: &Addressee<'_>) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .unwrap_or_else(|_| panic!("the system's random source failed"));
        let mut sealed = credential.as_bytes().to_vec();
        self.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(to.aad()),
                &mut sealed,
            )
            .unwrap_or_else(|_| unreachable!("a token is far shorter than ChaCha20's limit"));
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(out))
    }

    /// The credential `sealed` holds for `to`.
    pub fn open(&self, sealed: &str, to: &Addressee<'_>) -> Result<String, SealError> {
        let bytes = sealed
            .strip_prefix(PREFIX)
            .and_then(|b64| URL_SAFE_NO_PAD.decode(b64).ok())
            .filter(|b| b.len() > NONCE_LEN)
            .ok_or(SealError::Malformed)?;
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Malformed)?;
        let mut buffer = sealed.to_vec();
        let plain = self
            .aead()
            .open_in_place(nonce, Aad::from(to.aad()), &mut buffer)
            .map_err(|_| SealError::Refused)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-secret-only-a-and-d-are-given-0123";

    fn to(email: &str, user_id: Uuid) -> Addressee<'_> {
        Addressee {
            event_type: "user.password_reset_requested",
            user_id,
            email,
        }
    }

    #[test]
    fn a_sealed_credential_opens_for_its_addressee_with_the_key_and_nothing_else() {
        let key = SealKey::parse(SECRET).unwrap();
        let victim = Uuid::new_v4();
        let sealed = key.seal("the-token", &to("victim@example.com", victim));
        assert!(sealed.starts_with("v1.") && !sealed.contains("the-token"));
        assert_eq!(
            key.open(&sealed, &to("victim@example.com", victim)),
            Ok("the-token".to_owned())
        );
        // Copied into an event addressed to someone else, or of another kind.
        let thief = to("thief@example.com", victim);
        assert_eq!(key.open(&sealed, &thief), Err(SealError::Refused));
        assert_eq!(
            key.open(&sealed, &to("victim@example.com", Uuid::new_v4())),
            Err(SealError::Refused)
        );
        let verification = Addressee {
            event_type: "user.verification_requested",
            ..to("victim@example.com", victim)
        };
        assert_eq!(key.open(&sealed, &verification), Err(SealError::Refused));
        // Another key.
        let other = SealKey::parse("another-secret-of-thirty-two-characters").unwrap();
        assert_eq!(
            other.open(&sealed, &to("victim@example.com", victim)),
            Err(SealError::Refused)
        );
    }

    #[test]
    fn the_same_credential_sealed_twice_reads_differently() {
        let key = SealKey::parse(SECRET).unwrap();
        let user = Uuid::new_v4();
        let once = key.seal("t", &to("a@example.com", user));
        assert_ne!(once, key.seal("t", &to("a@example.com", user)));
    }

    #[test]
    fn a_short_secret_and_a_malformed_seal_are_refused() {
        assert_eq!(
            SealKey::parse("too-short").map(drop),
            Err(SealError::ShortSecret)
        );
        let key = SealKey::parse(SECRET).unwrap();
        let user = Uuid::new_v4();
        for bad in ["", "plain-token", "v1.", "v1.!!!", "v2.AAAA"] {
            assert_eq!(
                key.open(bad, &to("a@example.com", user)),
                Err(SealError::Malformed),
                "{bad}"
            );
        }
    }
}
