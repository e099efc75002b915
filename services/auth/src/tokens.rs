//! Access tokens (EdDSA JWTs) and refresh tokens (opaque, stored hashed).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use finflow_contracts::identity::{Audience, TokenClaims};
use finflow_platform::Identity;
use finflow_platform::text::{self, Documented};
use jsonwebtoken::{Algorithm, Header};
use sha2::{Digest, Sha256};
use utoipa::openapi::schema::ObjectBuilder;

use crate::keys::{JwkSet, Keyring};

/// A signed access token and when it expires.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// Signs access tokens with the keyring's active key.
#[derive(Clone)]
pub struct Issuer {
    pub issuer: String,
    pub audience: String,
    pub ttl: Duration,
    keyring: Arc<RwLock<Keyring>>,
}

impl Issuer {
    pub fn new(issuer: String, audience: String, ttl: Duration, keyring: Keyring) -> Self {
        Self {
            issuer,
            audience,
            ttl,
            keyring: Arc::new(RwLock::new(keyring)),
        }
    }

    /// Replaces the keyring (after a reload picked up a rotated key).
    pub fn set_keyring(&self, keyring: Keyring) {
        *self
            .keyring
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = keyring;
    }

    fn with_keyring<T>(&self, f: impl FnOnce(&Keyring) -> T) -> T {
        f(&self
            .keyring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub fn jwks(&self, now: DateTime<Utc>) -> JwkSet {
        self.with_keyring(|k| k.jwks(now, self.ttl))
    }

    /// A token for `identity`: what a sidecar will forward as its bearer's identity.
    pub fn issue(
        &self,
        identity: Identity,
        now: DateTime<Utc>,
    ) -> Result<AccessToken, jsonwebtoken::errors::Error> {
        let expires_at =
            now + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::MAX);
        let claims = TokenClaims {
            sub: identity.subject,
            email: identity.email,
            roles: identity.roles,
            kyc_status: identity.kyc_status.map(|k| k.as_str().to_owned()),
            tier: identity.tier.map(|t| t.as_str().to_owned()),
            iss: self.issuer.clone(),
            aud: Audience::One(self.audience.clone()),
            iat: now.timestamp(),
            nbf: Some(now.timestamp()),
            exp: expires_at.timestamp(),
            jti: uuid::Uuid::new_v4().to_string(),
        };
        self.with_keyring(|ring| {
            let key = ring.active();
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = Some(key.kid.clone());
            let token = jsonwebtoken::encode(&header, &claims, &key.encoding)?;
            Ok(AccessToken { token, expires_at })
        })
    }
}

/// A new opaque token (a refresh token, an email verification token): what its holder
/// keeps, 32 random bytes in unpadded base64url, and the hash we store.
pub fn new_opaque_token() -> (String, Vec<u8>) {
    let token = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let hash = hash_opaque_token(&token);
    (token, hash)
}

/// The stored form of an opaque token (SHA-256: with 256 bits of entropy a slow hash
/// buys nothing).
pub fn hash_opaque_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The one answer to every well-formed mailed token that does nothing: which of unknown,
/// used, revoked or expired it was is not said. `what` it was for: a verification, a
/// reset.
pub fn invalid_mailed_token(what: &str) -> finflow_platform::ApiError {
    finflow_platform::ApiError::not_found(format!(
        "no such {what}: the token is unknown, used or expired"
    ))
    .with_details(serde_json::json!({ "field": "token", "reason": "invalid_token" }))
}

/// The shape of a token a mail carries (a verification, a password reset): 32 bytes,
/// unpadded base64url, 43 characters.
pub struct MailedToken;

impl MailedToken {
    /// Whether `token` has the shape; a token without it is a 400, not an unknown one.
    pub fn shaped(token: &str) -> bool {
        finflow_contracts::sealed::is_plain_token(token)
    }
}

impl Documented for MailedToken {
    fn documented() -> ObjectBuilder {
        text::described(
            "The token of the mail: 32 bytes, unpadded base64url.",
            // The last character carries 2 bits of the 32nd byte and 4 zero bits.
            "^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$".to_owned(),
            "RmluRmxvdzogYW4gZXhhbXBsZSB0b2tlbiBvZiAzMmI",
        )
        .min_length(Some(43))
        .max_length(Some(43))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use finflow_platform::identity::{KycStatus, Tier};
    use jsonwebtoken::{DecodingKey, Validation};

    /// The published example must meet the published length and pattern (it was 47
    /// characters once).
    #[test]
    fn the_documented_mailed_token_takes_what_shaped_takes_and_so_does_its_example() {
        let schema = text::schema::<MailedToken>();
        let documented = text::matcher(&schema);
        let example = schema.examples[0].as_str().unwrap();
        assert!(
            MailedToken::shaped(example) && documented(example),
            "{example}"
        );
        for _ in 0..200 {
            let (token, _) = new_opaque_token();
            assert!(MailedToken::shaped(&token) && documented(&token), "{token}");
        }
        let long = URL_SAFE_NO_PAD.encode([7_u8; 33]);
        // 43 characters whose last carries bits past the 32nd byte.
        let stray = format!("{}B", &example[..42]);
        for bad in [
            "",
            "short",
            long.as_str(),
            stray.as_str(),
            &format!("{}=", &example[..42]),
        ] {
            assert!(!MailedToken::shaped(bad), "{bad}");
            assert!(!documented(bad), "{bad}");
        }
    }

    #[test]
    fn an_issued_token_verifies_with_the_published_key_and_names_its_kid() {
        let dir = std::env::temp_dir().join(format!("finflow-tok-{}", uuid::Uuid::new_v4()));
        let ring = Keyring::load_dir(&dir, true, None, Utc::now()).unwrap();
        let issuer = Issuer::new("iss".into(), "aud".into(), Duration::from_secs(60), ring);
        let token = issuer
            .issue(
                Identity {
                    subject: "u1".into(),
                    email: Some("a@b.co".into()),
                    roles: vec!["user".into()],
                    kyc_status: Some(KycStatus::Pending),
                    tier: Some(Tier::Bronze),
                },
                Utc::now(),
            )
            .unwrap();
        let header = jsonwebtoken::decode_header(&token.token).unwrap();
        let jwks = issuer.jwks(Utc::now());
        assert_eq!(header.kid.as_deref(), Some(jwks.keys[0].kid.as_str()));
        let key = DecodingKey::from_ed_components(&jwks.keys[0].x).unwrap();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&["aud"]);
        validation.set_issuer(&["iss"]);
        let data = jsonwebtoken::decode::<TokenClaims>(&token.token, &key, &validation).unwrap();
        assert_eq!(data.claims.sub, "u1");
        assert_eq!(data.claims.exp - data.claims.iat, 60);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn opaque_tokens_are_random_url_safe_and_stored_only_as_hashes() {
        let (a, hash_a) = new_opaque_token();
        let (b, _) = new_opaque_token();
        assert_ne!(a, b);
        // 256 bits of entropy; the verify route takes exactly this shape.
        assert_eq!(a.len(), 43, "32 bytes, base64 without padding");
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "{a}"
        );
        assert_eq!(hash_opaque_token(&a), hash_a);
        assert_ne!(hash_a, a.as_bytes());
    }
}
