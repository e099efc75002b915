//! Ed25519 signing keys, their rotation and the JWKS.
//!
//! Keys live in a directory as `<kid>.pem` (PKCS#8), where the kid starts with the key's
//! creation time in Unix seconds. In a cluster the directory is a mounted Secret and a
//! new key is rotated in by adding a file; in development the service generates keys
//! itself (`JWT_KEYS_GENERATE`) and, with `JWT_KEY_ROTATION_DAYS`, rotates them.
//!
//! The newest key signs. An older key stays in the JWKS until every token it signed
//! has expired: until its successor has been active for one access-token lifetime
//! plus the verifiers' clock leeway. Only then is it dropped from the published set.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::EncodingKey;
use serde::Serialize;

/// Clock leeway verifiers allow; a retired key is published this much longer.
pub const VERIFIER_LEEWAY: Duration = Duration::from_secs(60);

/// One signing key.
#[derive(Clone)]
pub struct Key {
    pub kid: String,
    pub created: DateTime<Utc>,
    pub encoding: EncodingKey,
    public: [u8; 32],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key directory {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0} is not a PKCS#8 Ed25519 private key")]
    Invalid(PathBuf),
    #[error("{0} is not named <unix-seconds>-<suffix>.pem")]
    BadName(PathBuf),
    #[error("no signing key in {0} (set JWT_KEYS_GENERATE=true in development)")]
    Empty(PathBuf),
    #[error("cannot encode a key: {0}")]
    Encode(String),
}

impl Key {
    fn from_signing_key(
        kid: String,
        created: DateTime<Utc>,
        key: &SigningKey,
    ) -> Result<Self, KeyError> {
        let der = key
            .to_pkcs8_der()
            .map_err(|e| KeyError::Encode(e.to_string()))?;
        Ok(Self {
            kid,
            created,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            public: key.verifying_key().to_bytes(),
        })
    }

    /// The public half as a JWK.
    pub fn jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP",
            crv: "Ed25519",
            alg: "EdDSA",
            key_use: "sig",
            kid: self.kid.clone(),
            x: URL_SAFE_NO_PAD.encode(self.public),
        }
    }
}

/// A public key in JWK form (RFC 8037).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Jwk {
    pub kty: &'static str,
    pub crv: &'static str,
    pub alg: &'static str,
    #[serde(rename = "use")]
    pub key_use: &'static str,
    pub kid: String,
    pub x: String,
}

/// The document served at `/.well-known/jwks.json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

/// All known keys, oldest first.
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: Vec<Key>,
}

impl Keyring {
    /// A keyring of the given keys (any order).
    pub fn new(mut keys: Vec<Key>) -> Option<Self> {
        keys.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.kid.cmp(&b.kid)));
        (!keys.is_empty()).then_some(Self { keys })
    }

    /// The key that signs new tokens: the newest.
    pub fn active(&self) -> &Key {
        self.keys
            .last()
            .unwrap_or_else(|| unreachable!("a keyring is never empty"))
    }

    /// Keys verifiers must know at `now`: the active one, and each older key whose
    /// successor became active less than `token_ttl + VERIFIER_LEEWAY` ago.
    pub fn published(&self, now: DateTime<Utc>, token_ttl: Duration) -> Vec<&Key> {
        let grace = chrono::Duration::from_std(token_ttl + VERIFIER_LEEWAY)
            .unwrap_or(chrono::Duration::MAX);
        self.keys
            .iter()
            .enumerate()
            .filter(|(i, _)| match self.keys.get(i + 1) {
                None => true,
                Some(successor) => now < successor.created + grace,
            })
            .map(|(_, k)| k)
            .collect()
    }

    pub fn jwks(&self, now: DateTime<Utc>, token_ttl: Duration) -> JwkSet {
        JwkSet {
            keys: self
                .published(now, token_ttl)
                .into_iter()
                .map(Key::jwk)
                .collect(),
        }
    }

    /// Loads every `<kid>.pem` in `dir`; generates a key when there is none (or when
    /// the active one is older than `rotate_after`) if `generate` allows.
    pub fn load_dir(
        dir: &Path,
        generate: bool,
        rotate_after: Option<Duration>,
        now: DateTime<Utc>,
    ) -> Result<Self, KeyError> {
        let io = |e| KeyError::Io(dir.to_owned(), e);
        if generate {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut keys = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("pem") {
                continue;
            }
            keys.push(read_key(&path)?);
        }
        let mut ring = Self::new(keys);
        let stale = |r: &Self| {
            rotate_after.is_some_and(|age| {
                now.signed_duration_since(r.active().created)
                    > chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX)
            })
        };
        if generate && ring.as_ref().is_none_or(stale) {
            let key = generate_into(dir, now)?;
            tracing::info!(kid = %key.kid, "generated a new signing key");
            let mut keys = ring.map(|r| r.keys).unwrap_or_default();
            keys.push(key);
            ring = Self::new(keys);
        }
        ring.ok_or_else(|| KeyError::Empty(dir.to_owned()))
    }
}

fn read_key(path: &Path) -> Result<Key, KeyError> {
    let kid = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| KeyError::BadName(path.to_owned()))?
        .to_owned();
    let created = kid
        .split_once('-')
        .and_then(|(secs, _)| secs.parse::<i64>().ok())
        .and_then(|secs| DateTime::from_timestamp(secs, 0))
        .ok_or_else(|| KeyError::BadName(path.to_owned()))?;
    let pem = std::fs::read_to_string(path).map_err(|e| KeyError::Io(path.to_owned(), e))?;
    let key = SigningKey::from_pkcs8_pem(&pem).map_err(|_| KeyError::Invalid(path.to_owned()))?;
    Key::from_signing_key(kid, created, &key)
}

/// Generates a key, writes it as `<kid>.pem` readable by the owner only, returns it.
fn generate_into(dir: &Path, now: DateTime<Utc>) -> Result<Key, KeyError> {
    let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let kid = format!("{}-{:08x}", now.timestamp(), rand::random::<u32>());
    let pem = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| KeyError::Encode(e.to_string()))?;
    let path = dir.join(format!("{kid}.pem"));
    write_private(&path, pem.as_bytes()).map_err(|e| KeyError::Io(path.clone(), e))?;
    Key::from_signing_key(kid, now, &key)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_at(secs: i64) -> Key {
        let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        Key::from_signing_key(
            format!("{secs}-test"),
            DateTime::from_timestamp(secs, 0).unwrap(),
            &key,
        )
        .unwrap()
    }

    const TTL: Duration = Duration::from_secs(900);

    #[test]
    fn the_newest_key_signs() {
        let ring = Keyring::new(vec![key_at(2_000), key_at(1_000)]).unwrap();
        assert_eq!(ring.active().kid, "2000-test");
    }

    #[test]
    fn an_old_key_is_published_until_its_tokens_have_expired() {
        let ring = Keyring::new(vec![key_at(1_000), key_at(2_000)]).unwrap();
        let at = |secs| DateTime::from_timestamp(secs, 0).unwrap();
        let kids = |secs| -> Vec<String> {
            ring.published(at(secs), TTL)
                .iter()
                .map(|k| k.kid.clone())
                .collect()
        };
        // Just after rotation, tokens signed by the old key are still live.
        assert_eq!(kids(2_001), ["1000-test", "2000-test"]);
        let expiry = 2_000 + 900 + i64::try_from(VERIFIER_LEEWAY.as_secs()).unwrap();
        assert_eq!(kids(expiry - 1), ["1000-test", "2000-test"]);
        assert_eq!(kids(expiry), ["2000-test"]);
    }

    #[test]
    fn a_jwk_carries_the_public_key_in_base64url() {
        let key = key_at(1);
        let jwk = key.jwk();
        assert_eq!((jwk.kty, jwk.crv, jwk.alg), ("OKP", "Ed25519", "EdDSA"));
        assert_eq!(URL_SAFE_NO_PAD.decode(&jwk.x).unwrap(), key.public);
    }

    #[test]
    fn keys_are_generated_once_kept_on_disk_and_rotated_when_old() {
        let dir = std::env::temp_dir().join(format!("finflow-keys-{}", uuid::Uuid::new_v4()));
        let day = Duration::from_secs(86_400);
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let first = Keyring::load_dir(&dir, true, Some(day), t0).unwrap();
        let again = Keyring::load_dir(&dir, true, Some(day), t0).unwrap();
        assert_eq!(
            first.active().kid,
            again.active().kid,
            "kept, not regenerated"
        );
        let later = t0 + chrono::Duration::days(2);
        let rotated = Keyring::load_dir(&dir, true, Some(day), later).unwrap();
        assert_ne!(rotated.active().kid, first.active().kid);
        assert_eq!(rotated.keys.len(), 2);
        assert!(Keyring::load_dir(&dir.join("missing"), false, None, t0).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
