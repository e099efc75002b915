//! Token validation, as a pure function of the token, the keys, the policy and the clock.
//!
//! The checks run in an order that never lets an attacker choose how a token is checked:
//!
//! 1. shape: three base64url segments, a JSON header with a string `alg`;
//! 2. algorithm: the one algorithm of the key source (`EdDSA` for a JWK set, `HS256`
//!    for a shared secret), decided *before* any key is touched, so `none` and an
//!    `HS256` token meant to be checked against a public key are refused as
//!    `algorithm_not_allowed` and a public key is never used as an HMAC secret;
//! 3. key: by `kid` in a JWK set (a token without one is `malformed`, an unknown one is
//!    `unknown_kid`, which the caller may answer by refetching the set);
//! 4. signature (through `jsonwebtoken`'s crypto provider), then the claims are parsed;
//! 5. `exp` and `nbf` with leeway, `iss`, `aud`.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use finflow_contracts::identity::TokenClaims;
use http::HeaderValue;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Why a token was refused; [`Rejection::reason`] is what clients see in
/// `error.details.reason` and what the rejection metric is labelled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    MissingToken,
    Malformed,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    UnknownKid,
    AlgorithmNotAllowed,
}

impl Rejection {
    pub const fn reason(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::Malformed => "malformed",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::UnknownKid => "unknown_kid",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// What a token must say besides being well signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The one accepted `iss`.
    pub issuer: String,
    /// A token's `aud` must name at least one of these.
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

/// Verification keys; the variant fixes the one algorithm accepted.
#[derive(Clone)]
pub enum Keys {
    /// A shared secret: `HS256` only.
    Hs256(DecodingKey),
    /// Ed25519 public keys by `kid`: `EdDSA` only.
    EdDsa(HashMap<String, DecodingKey>),
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hs256(_) => f.write_str("Keys::Hs256([redacted])"),
            Self::EdDsa(keys) => f
                .debug_tuple("Keys::EdDsa")
                .field(&keys.keys().collect::<Vec<_>>())
                .finish(),
        }
    }
}

impl Keys {
    pub fn hs256(secret: &[u8]) -> Self {
        Self::Hs256(DecodingKey::from_secret(secret))
    }

    /// The usable keys of a JWK set document: Ed25519 (`OKP`) keys with a `kid`, whose
    /// `alg` is absent or `EdDSA`, not marked for encryption, and whose `x` is a valid
    /// 32-byte point. Other entries are skipped (and counted), so one key of another
    /// type does not hide the rest. An error when nothing usable is left.
    pub fn from_jwks(document: &[u8]) -> Result<(Self, usize), String> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<Value>,
        }
        let document: Document =
            serde_json::from_slice(document).map_err(|e| format!("not a JWK set: {e}"))?;
        let total = document.keys.len();
        let keys: HashMap<String, DecodingKey> = document
            .keys
            .into_iter()
            .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
            .filter_map(|jwk| ed25519_key(&jwk))
            .collect();
        if keys.is_empty() {
            return Err(format!("none of the {total} keys is a usable Ed25519 key"));
        }
        let skipped = total - keys.len();
        Ok((Self::EdDsa(keys), skipped))
    }

    fn algorithm(&self) -> (Algorithm, &'static str) {
        match self {
            Self::Hs256(_) => (Algorithm::HS256, "HS256"),
            Self::EdDsa(_) => (Algorithm::EdDSA, "EdDSA"),
        }
    }

    /// How many keys there are (a shared secret counts as one).
    pub fn len(&self) -> usize {
        match self {
            Self::Hs256(_) => 1,
            Self::EdDsa(keys) => keys.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn ed25519_key(jwk: &Jwk) -> Option<(String, DecodingKey)> {
    let kid = jwk.common.key_id.clone()?;
    if jwk
        .common
        .key_algorithm
        .is_some_and(|alg| alg != KeyAlgorithm::EdDSA)
        || matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
    {
        return None;
    }
    let AlgorithmParameters::OctetKeyPair(params) = &jwk.algorithm else {
        return None;
    };
    if params.curve != EllipticCurve::Ed25519 {
        return None;
    }
    let bytes: [u8; 32] = URL_SAFE_NO_PAD.decode(&params.x).ok()?.try_into().ok()?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()?;
    Some((kid, DecodingKey::from_ed_der(&bytes)))
}

/// The verified claims of a token (`docs/architecture.md`, Identity).
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub token: TokenClaims,
    /// Every claim as sent, for the claim-to-header map.
    pub raw: Map<String, Value>,
}

/// Verified claims of user `sub` (issuer `i`, audience `a`), for unit tests that need
/// a verified token without signing one.
#[cfg(test)]
pub(crate) fn claims_for_tests(sub: &str, exp: i64, raw: Map<String, Value>) -> Claims {
    Claims {
        token: TokenClaims {
            sub: sub.to_owned(),
            email: None,
            roles: vec![],
            kyc_status: None,
            tier: None,
            iss: "i".into(),
            aud: finflow_contracts::identity::Audience::One("a".into()),
            iat: 0,
            nbf: None,
            exp,
            jti: "j".into(),
        },
        raw,
    }
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// Extensions a verifier must understand; this one understands none.
    #[serde(default)]
    crit: Option<Value>,
}

fn segment<T: DeserializeOwned>(part: &str) -> Result<T, Rejection> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Rejection::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| Rejection::Malformed)
}

/// The token of an `Authorization: Bearer <jwt>` header.
pub fn bearer(header: Option<&HeaderValue>) -> Result<&str, Rejection> {
    let value = header
        .ok_or(Rejection::MissingToken)?
        .as_bytes()
        .trim_ascii();
    let space = value
        .iter()
        .position(|&b| b == b' ')
        .ok_or(Rejection::Malformed)?;
    let (scheme, token) = (&value[..space], value[space..].trim_ascii());
    if !scheme.eq_ignore_ascii_case(b"bearer") || token.is_empty() {
        return Err(Rejection::Malformed);
    }
    // Checked as UTF-8 (fast for ASCII) rather than as visible ASCII byte by byte: a
    // token is used only when it verifies or equals one that did, and no byte outside
    // the base64url alphabet ever verifies.
    std::str::from_utf8(token).map_err(|_| Rejection::Malformed)
}

/// Validates `token` against `keys` and `policy` at `now` (Unix seconds).
pub fn validate(token: &str, keys: &Keys, policy: &Policy, now: i64) -> Result<Claims, Rejection> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::Malformed);
    };
    if header.is_empty() || payload.is_empty() {
        return Err(Rejection::Malformed);
    }
    let jose: JoseHeader = segment(header)?;
    if jose.crit.is_some() {
        return Err(Rejection::Malformed);
    }
    let (algorithm, algorithm_name) = keys.algorithm();
    if jose.alg != algorithm_name {
        return Err(Rejection::AlgorithmNotAllowed);
    }
    let key = match keys {
        Keys::Hs256(key) => key,
        Keys::EdDsa(keys) => {
            let kid = jose.kid.ok_or(Rejection::Malformed)?;
            keys.get(&kid).ok_or(Rejection::UnknownKid)?
        }
    };
    let message = &token[..header.len() + 1 + payload.len()];
    match jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, algorithm) {
        Ok(true) => {}
        Ok(false) => return Err(Rejection::BadSignature),
        Err(_) => return Err(Rejection::Malformed),
    }

    let raw: Map<String, Value> = segment(payload)?;
    let token: TokenClaims =
        serde_json::from_value(Value::Object(raw.clone())).map_err(|_| Rejection::Malformed)?;
    if token.sub.is_empty() {
        return Err(Rejection::Malformed);
    }
    let leeway = i64::try_from(policy.leeway_secs).unwrap_or(i64::MAX);
    if token.exp < now.saturating_sub(leeway) {
        return Err(Rejection::Expired);
    }
    if token
        .nbf
        .is_some_and(|nbf| nbf > now.saturating_add(leeway))
    {
        return Err(Rejection::NotYetValid);
    }
    if token.iss != policy.issuer {
        return Err(Rejection::WrongIssuer);
    }
    if !token
        .aud
        .as_slice()
        .iter()
        .any(|a| policy.audiences.contains(a))
    {
        return Err(Rejection::WrongAudience);
    }
    Ok(Claims { token, raw })
}

/// The current time in Unix seconds.
pub fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_750_000_000;

    fn policy() -> Policy {
        Policy {
            issuer: "finflow-auth".into(),
            audiences: vec!["finflow".into(), "other".into()],
            leeway_secs: 30,
        }
    }

    fn claims() -> Value {
        json!({
            "sub": "7f1c0a52-0000-4000-8000-000000000001",
            "email": "ada@example.com",
            "roles": ["user"],
            "kyc_status": "verified",
            "tier": "gold",
            "iss": "finflow-auth",
            "aud": "finflow",
            "iat": NOW - 10,
            "nbf": NOW - 10,
            "exp": NOW + 900,
            "jti": "j1",
        })
    }

    struct Signer {
        key: SigningKey,
        kid: &'static str,
    }

    impl Signer {
        fn new(seed: u8, kid: &'static str) -> Self {
            Self {
                key: SigningKey::from_bytes(&[seed; 32]),
                kid,
            }
        }

        fn jwks(&self) -> Vec<u8> {
            json!({"keys": [
                {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "rsa"},
                {
                    "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": self.kid,
                    "x": URL_SAFE_NO_PAD.encode(self.key.verifying_key().to_bytes()),
                },
            ]})
            .to_string()
            .into_bytes()
        }

        fn keys(&self) -> Keys {
            let (keys, skipped) = Keys::from_jwks(&self.jwks()).unwrap();
            assert_eq!(skipped, 1);
            keys
        }

        fn sign(&self, claims: &Value) -> String {
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = Some(self.kid.to_owned());
            let der = self.key.to_pkcs8_der().unwrap();
            jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes()))
                .unwrap()
        }
    }

    fn unsigned(header: &Value, claims: &Value) -> String {
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    #[test]
    fn a_well_signed_token_yields_its_claims() {
        let signer = Signer::new(1, "k1");
        let claims = validate(&signer.sign(&claims()), &signer.keys(), &policy(), NOW).unwrap();
        assert_eq!(claims.token.sub, "7f1c0a52-0000-4000-8000-000000000001");
        assert_eq!(claims.token.roles, ["user"]);
        assert_eq!(claims.token.aud.as_slice(), ["finflow"]);
        assert_eq!(claims.token.tier.as_deref(), Some("gold"));
        assert!(!claims.token.is_service());
    }

    #[test]
    fn alg_none_is_never_accepted() {
        let token = unsigned(&json!({"alg": "none", "kid": "k1"}), &claims());
        let signer = Signer::new(1, "k1");
        assert_eq!(
            validate(&token, &signer.keys(), &policy(), NOW),
            Err(Rejection::AlgorithmNotAllowed)
        );
        assert_eq!(
            validate(&token, &Keys::hs256(&[7; 32]), &policy(), NOW),
            Err(Rejection::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn an_hs256_token_keyed_with_the_public_key_is_refused_before_verification() {
        let signer = Signer::new(1, "k1");
        let public = signer.key.verifying_key().to_bytes();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let token =
            jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&public)).unwrap();
        assert_eq!(
            validate(&token, &signer.keys(), &policy(), NOW),
            Err(Rejection::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn an_eddsa_token_is_refused_in_shared_secret_mode() {
        let signer = Signer::new(1, "k1");
        assert_eq!(
            validate(
                &signer.sign(&claims()),
                &Keys::hs256(&[7; 32]),
                &policy(),
                NOW
            ),
            Err(Rejection::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn a_shared_secret_token_validates_in_shared_secret_mode() {
        let secret = [7u8; 32];
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(&secret),
        )
        .unwrap();
        assert!(validate(&token, &Keys::hs256(&secret), &policy(), NOW).is_ok());
        assert_eq!(
            validate(&token, &Keys::hs256(&[8; 32]), &policy(), NOW),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn another_key_under_the_same_kid_is_a_bad_signature() {
        let trusted = Signer::new(1, "k1");
        let forger = Signer::new(2, "k1");
        assert_eq!(
            validate(&forger.sign(&claims()), &trusted.keys(), &policy(), NOW),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn a_kid_missing_from_the_set_is_unknown_and_a_missing_kid_is_malformed() {
        let trusted = Signer::new(1, "k1");
        let other = Signer::new(2, "k2");
        assert_eq!(
            validate(&other.sign(&claims()), &trusted.keys(), &policy(), NOW),
            Err(Rejection::UnknownKid)
        );
        let der = trusted.key.to_pkcs8_der().unwrap();
        let no_kid = jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &claims(),
            &EncodingKey::from_ed_der(der.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            validate(&no_kid, &trusted.keys(), &policy(), NOW),
            Err(Rejection::Malformed)
        );
    }

    #[test]
    fn time_claims_are_checked_with_leeway() {
        let signer = Signer::new(1, "k1");
        let keys = signer.keys();
        let at = |field: &str, value: i64| {
            let mut c = claims();
            c[field] = json!(value);
            signer.sign(&c)
        };
        assert!(validate(&at("exp", NOW - 30), &keys, &policy(), NOW).is_ok());
        assert_eq!(
            validate(&at("exp", NOW - 31), &keys, &policy(), NOW),
            Err(Rejection::Expired)
        );
        assert!(validate(&at("nbf", NOW + 30), &keys, &policy(), NOW).is_ok());
        assert_eq!(
            validate(&at("nbf", NOW + 31), &keys, &policy(), NOW),
            Err(Rejection::NotYetValid)
        );
    }

    #[test]
    fn issuer_and_audience_must_match() {
        let signer = Signer::new(1, "k1");
        let keys = signer.keys();
        let mut c = claims();
        c["iss"] = json!("someone-else");
        assert_eq!(
            validate(&signer.sign(&c), &keys, &policy(), NOW),
            Err(Rejection::WrongIssuer)
        );
        let mut c = claims();
        c["aud"] = json!(["x", "y"]);
        assert_eq!(
            validate(&signer.sign(&c), &keys, &policy(), NOW),
            Err(Rejection::WrongAudience)
        );
        c["aud"] = json!(["x", "other"]);
        assert!(validate(&signer.sign(&c), &keys, &policy(), NOW).is_ok());
    }

    #[test]
    fn tokens_of_the_wrong_shape_are_malformed() {
        let signer = Signer::new(1, "k1");
        let keys = signer.keys();
        let good = signer.sign(&claims());
        let mut missing_jti = claims();
        missing_jti.as_object_mut().unwrap().remove("jti");
        let mut crit = Header::new(Algorithm::EdDSA);
        crit.kid = Some("k1".into());
        for token in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "!!!.e30.sig",
            &format!("{good}.x"),
            &format!(".{}", good.split_once('.').unwrap().1),
            &signer.sign(&missing_jti),
            &unsigned(&json!({"kid": "k1"}), &claims()),
            &format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","kid":"k1","crit":["exp"]}"#),
                good.split_once('.').unwrap().1
            ),
        ] {
            assert_eq!(
                validate(token, &keys, &policy(), NOW),
                Err(Rejection::Malformed),
                "{token}"
            );
        }
    }

    #[test]
    fn a_service_role_is_recognized() {
        let signer = Signer::new(1, "k1");
        let mut c = claims();
        c["roles"] = json!(["service:payment"]);
        let claims = validate(&signer.sign(&c), &signer.keys(), &policy(), NOW).unwrap();
        assert!(claims.token.is_service());
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(bearer(None), Err(Rejection::MissingToken));
        assert_eq!(bearer(Some(&v("Bearer abc"))), Ok("abc"));
        assert_eq!(bearer(Some(&v("bearer  abc "))), Ok("abc"));
        assert_eq!(bearer(Some(&v("Basic abc"))), Err(Rejection::Malformed));
        assert_eq!(bearer(Some(&v("Bearer"))), Err(Rejection::Malformed));
        assert_eq!(bearer(Some(&v("Bearer\tabc"))), Err(Rejection::Malformed));
        let not_utf8 = HeaderValue::from_bytes(b"Bearer ab\xffc").unwrap();
        assert_eq!(bearer(Some(&not_utf8)), Err(Rejection::Malformed));
    }

    #[test]
    fn a_jwks_without_usable_keys_is_an_error() {
        assert!(Keys::from_jwks(br#"{"keys": []}"#).is_err());
        assert!(Keys::from_jwks(b"[]").is_err());
        let short = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": "AQID"}]});
        assert!(Keys::from_jwks(short.to_string().as_bytes()).is_err());
    }
}
