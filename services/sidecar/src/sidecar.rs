//! Sidecar mode: who may pass, and as whom.

use std::net::IpAddr;
use std::sync::Arc;

use finflow_platform::error::ErrorCode;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use http::request::Parts;

use crate::config::BaseUrl;
use crate::headers::{ClaimHeaders, identity_headers};
use crate::jwks::JwksCache;
use crate::jwt::{self, Claims, Keys, Policy, Rejection};
use crate::limit::{CallerKey, RateLimit};
use crate::paths::{PathPatterns, is_admin_only, is_internal, is_public};
use crate::proxy::ProxyError;

/// Where the keys come from.
pub enum Verifier {
    /// A shared secret (HS256), fixed for the process.
    Fixed(Keys),
    /// A JWK set (EdDSA), fetched and refreshed.
    Jwks(Arc<JwksCache>),
}

/// Why no claims could be had.
enum Refusal {
    Token(Rejection),
    /// The JWK set has never been fetched.
    NoKeys,
}

/// The decisions of sidecar mode, in order: `/metrics` never forwarded, token (unless
/// public), service role for `/internal/*`, rate limit, identity headers.
pub struct SidecarGate {
    pub upstream: BaseUrl,
    pub verifier: Verifier,
    pub policy: Policy,
    pub public_paths: PathPatterns,
    pub limit: Arc<RateLimit>,
    pub claim_headers: ClaimHeaders,
    pub verified: Arc<VerifiedTokens>,
}

/// What a verified token lets through, worked out once per token: its claims, the
/// identity headers they become, and whom its requests count against.
pub struct Admitted {
    pub claims: Claims,
    headers: Vec<(HeaderName, HeaderValue)>,
    caller: CallerKey,
}

impl Admitted {
    pub fn new(claims: Claims, map: &ClaimHeaders) -> Self {
        Self {
            headers: identity_headers(&claims, map),
            caller: CallerKey::user(&claims.token.sub),
            claims,
        }
    }
}

/// Tokens already verified, so a client sending the same token again costs a lookup
/// instead of a signature check (the expensive part of a request) and the claim
/// headers it carries. An entry lives until the token expires, and at most
/// [`VerifiedTokens::MAX_AGE_SECS`]: a key removed from the JWK set stops admitting
/// new tokens at once and cached ones within that bound. Keyed by the whole token, so
/// only the identical token hits. Hashed with foldhash (seeded per process): SipHash
/// over a token of several hundred bytes was the largest part of a lookup, and only
/// tokens that verified are ever stored, so flooding the map with chosen keys takes
/// the issuer's key.
#[derive(Default)]
pub struct VerifiedTokens {
    entries: std::sync::Mutex<
        std::collections::HashMap<String, (Arc<Admitted>, i64), foldhash::fast::RandomState>,
    >,
}

impl VerifiedTokens {
    pub const MAX_AGE_SECS: i64 = 60;
    /// Past this many entries the cache is emptied (a crude bound against token spraying).
    pub const MAX_ENTRIES: usize = 50_000;

    fn get(&self, token: &str, now: i64) -> Option<Arc<Admitted>> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .get(token)
            .filter(|(_, until)| now < *until)
            .map(|(admitted, _)| Arc::clone(admitted))
    }

    /// Forgets every verified token: the keys they were checked against may be gone.
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    fn put(&self, token: &str, admitted: &Arc<Admitted>, now: i64) {
        let until = admitted.claims.token.exp.min(now + Self::MAX_AGE_SECS);
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= Self::MAX_ENTRIES {
            entries.retain(|_, (_, u)| now < *u);
            if entries.len() >= Self::MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(token.to_owned(), (Arc::clone(admitted), until));
    }
}

impl SidecarGate {
    /// Admits the request (adding its identity headers) or says why not. Client
    /// identity headers are already gone.
    pub async fn admit(&self, parts: &mut Parts, client: IpAddr) -> Result<&BaseUrl, ProxyError> {
        let path = parts.uri.path();
        // Before the token is looked at: the same 404 with a token or without.
        if is_admin_only(path) {
            return Err(ProxyError::no_route());
        }
        let token = jwt::bearer(parts.headers.get(AUTHORIZATION));
        let admitted = if is_public(path, &self.public_paths) {
            // A valid token on a public path still says who is calling; an invalid
            // one is ignored, never forwarded.
            match token {
                Ok(token) => self.verify(token).await.ok(),
                Err(_) => None,
            }
        } else {
            let verified = match token {
                Ok(token) => self.verify(token).await,
                Err(rejection) => Err(Refusal::Token(rejection)),
            };
            match verified {
                Ok(admitted) => Some(admitted),
                Err(Refusal::Token(rejection)) => {
                    metrics::counter!(
                        "finflow_sidecar_jwt_rejections_total",
                        "reason" => rejection.reason()
                    )
                    .increment(1);
                    return Err(ProxyError::unauthorized(rejection));
                }
                Err(Refusal::NoKeys) => {
                    return Err(ProxyError::new(
                        ErrorCode::DependencyUnavailable,
                        "jwks_unavailable",
                        "token verification keys are not available yet, try again later",
                    ));
                }
            }
        };
        if is_internal(path)
            && !admitted
                .as_deref()
                .is_some_and(|a| a.claims.token.is_service())
        {
            return Err(ProxyError::new(
                ErrorCode::Forbidden,
                "service_token_required",
                "internal routes require a service token",
            ));
        }
        match &admitted {
            // A service calls on behalf of many users, each already held to their own
            // limit at the sidecar they came in through; one bucket for all of them
            // would refuse the platform's own traffic (payment to wallet) under load.
            Some(admitted) if admitted.claims.token.is_service() => Ok(()),
            Some(admitted) => self.limit.check(&admitted.caller),
            None => self.limit.check(&CallerKey::anonymous(client)),
        }
        .map_err(ProxyError::rate_limited)?;
        if let Some(admitted) = &admitted {
            for (name, value) in &admitted.headers {
                parts.headers.insert(name.clone(), value.clone());
            }
        }
        Ok(&self.upstream)
    }

    async fn verify(&self, token: &str) -> Result<Arc<Admitted>, Refusal> {
        let now = jwt::now();
        if let Some(admitted) = self.verified.get(token, now) {
            return Ok(admitted);
        }
        let claims = self.verify_signature(token).await?;
        let admitted = Arc::new(Admitted::new(claims, &self.claim_headers));
        self.verified.put(token, &admitted, now);
        Ok(admitted)
    }

    async fn verify_signature(&self, token: &str) -> Result<Claims, Refusal> {
        let check = |keys: &Keys| jwt::validate(token, keys, &self.policy, jwt::now());
        match &self.verifier {
            Verifier::Fixed(keys) => check(keys).map_err(Refusal::Token),
            Verifier::Jwks(cache) => {
                let keys = cache.current().ok_or(Refusal::NoKeys)?;
                match check(&keys) {
                    Err(Rejection::UnknownKid) => {
                        match cache.refresh_for_unknown_kid(&keys).await {
                            Some(fresh) => check(&fresh).map_err(Refusal::Token),
                            None => Err(Refusal::Token(Rejection::UnknownKid)),
                        }
                    }
                    other => other.map_err(Refusal::Token),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        crate::jwt::claims_for_tests("u", exp, serde_json::Map::new())
    }

    #[test]
    fn a_verified_token_is_reused_until_it_expires_and_never_for_another_token() {
        let cache = VerifiedTokens::default();
        let admitted = |exp| {
            Arc::new(Admitted::new(
                claims(exp),
                &ClaimHeaders::parse::<&str>([]).unwrap(),
            ))
        };
        cache.put("t1", &admitted(1_000), 900);
        assert!(cache.get("t1", 950).is_some());
        assert!(cache.get("t1", 1_000).is_none(), "expired");
        assert!(cache.get("t2", 950).is_none());
        cache.put("t3", &admitted(10_000), 900);
        assert!(
            cache
                .get("t3", 900 + VerifiedTokens::MAX_AGE_SECS)
                .is_none(),
            "bounded age"
        );
    }
}
