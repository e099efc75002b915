//! Who is calling, as told by the sidecar.
//!
//! An app never sees a token: its sidecar validates the JWT, strips any client-supplied
//! identity headers and sets its own (`docs/architecture.md`, Identity). This module reads those headers
//! into an [`Identity`]. Apps bind to localhost, so only the sidecar can set them.

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;
use uuid::Uuid;

use crate::error::ApiError;

pub use finflow_contracts::identity::{
    ACCOUNT_TIER, IDENTITY_HEADERS, KYC_STATUS, KycStatus, SERVICE_ROLE_PREFIX, STAFF_ROLES, Tier,
    USER_EMAIL, USER_ID, USER_ROLES,
};

/// The verified caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`: a user id, or `service:<name>` for a service token.
    pub subject: String,
    pub email: Option<String>,
    pub roles: Vec<String>,
    pub kyc_status: Option<KycStatus>,
    pub tier: Option<Tier>,
}

impl Identity {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether the caller has a staff role ([`STAFF_ROLES`]).
    pub fn is_staff(&self) -> bool {
        STAFF_ROLES.iter().any(|role| self.has_role(role))
    }

    /// `403 FORBIDDEN` unless the caller has `role`.
    pub fn require_role(&self, role: &str) -> Result<(), ApiError> {
        self.require_any_role(&[role])
    }

    /// `403 FORBIDDEN` unless the caller has one of `roles`.
    pub fn require_any_role(&self, roles: &[&str]) -> Result<(), ApiError> {
        if roles.iter().any(|r| self.has_role(r)) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "requires one of the roles: {}",
                roles.join(", ")
            )))
        }
    }

    /// The service name if this is a service token (`service:payment` gives `payment`).
    pub fn service(&self) -> Option<&str> {
        self.roles
            .iter()
            .find_map(|r| r.strip_prefix(SERVICE_ROLE_PREFIX))
    }

    /// `403 FORBIDDEN` unless the caller is a service; a user token never opens `/internal/*`.
    pub fn require_service(&self) -> Result<&str, ApiError> {
        self.service()
            .ok_or_else(|| ApiError::forbidden("requires a service token"))
    }

    /// `403 FORBIDDEN` unless the caller is one of the services `allowed`: an
    /// `/internal/*` route opens only to the services that need it, so a leaked secret
    /// of one service opens only what that service may do.
    pub fn require_service_of(&self, allowed: &[&str]) -> Result<&str, ApiError> {
        let service = self.require_service()?;
        if allowed.contains(&service) {
            Ok(service)
        } else {
            Err(ApiError::forbidden(format!(
                "this route is open to the services {}, not to {service}",
                allowed.join(", ")
            ))
            .with_details(serde_json::json!({ "reason": "service_not_allowed" })))
        }
    }

    /// The caller as a user. A service token has no user id: `403 FORBIDDEN`.
    pub fn user_id(&self) -> Result<Uuid, ApiError> {
        Uuid::parse_str(&self.subject).map_err(|_| ApiError::forbidden("requires a user token"))
    }

    fn from_parts(parts: &Parts) -> Result<Option<Self>, ApiError> {
        let header = |name: &str| -> Result<Option<String>, ApiError> {
            match parts.headers.get(name) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .map(|s| Some(s.trim().to_owned()).filter(|s| !s.is_empty()))
                    .map_err(|_| ApiError::unauthorized(format!("malformed {name} header"))),
            }
        };
        let Some(subject) = header(USER_ID)? else {
            return Ok(None);
        };
        let roles = header(USER_ROLES)?
            .map(|r| {
                r.split(',')
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let kyc_status = match header(KYC_STATUS)? {
            None => None,
            Some(s) => Some(
                KycStatus::parse(&s)
                    .ok_or_else(|| ApiError::unauthorized(format!("unknown {KYC_STATUS} value")))?,
            ),
        };
        let tier =
            match header(ACCOUNT_TIER)? {
                None => None,
                Some(s) => Some(Tier::parse(&s).ok_or_else(|| {
                    ApiError::unauthorized(format!("unknown {ACCOUNT_TIER} value"))
                })?),
            };
        Ok(Some(Self {
            subject,
            email: header(USER_EMAIL)?,
            roles,
            kyc_status,
            tier,
        }))
    }
}

/// Requires a caller: `401 UNAUTHORIZED` without one.
impl<S: Send + Sync> FromRequestParts<S> for Identity {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Self::from_parts(parts)?.ok_or_else(|| ApiError::unauthorized("authentication required"))
    }
}

/// For routes open to anonymous callers that behave differently for known ones.
impl<S: Send + Sync> OptionalFromRequestParts<S> for Identity {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Self::from_parts(parts)
    }
}

/// The caller as a user, for the routes only a user token opens: `401 UNAUTHORIZED`
/// without a caller, `403 FORBIDDEN` for a service token ([`Identity::user_id`]). Taken
/// before the body is read, so a caller who may not use the route learns nothing of
/// what it validates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for UserId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let who = <Identity as FromRequestParts<S>>::from_request_parts(parts, state).await?;
        who.user_id().map(Self)
    }
}

/// The client's address: `X-Real-IP` as set by the sidecar (apps are reached only
/// through it), else the peer address of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub std::net::IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let real_ip = parts
            .headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse().ok());
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        real_ip
            .or(peer)
            .map(Self)
            .ok_or_else(|| ApiError::internal(&"no client address: serve with connect info"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut req = Request::builder();
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    async fn extract(headers: &[(&str, &str)]) -> Result<Identity, ApiError> {
        <Identity as FromRequestParts<()>>::from_request_parts(&mut parts(headers), &()).await
    }

    #[tokio::test]
    async fn a_request_without_identity_is_unauthorized() {
        let err = extract(&[]).await.unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn sidecar_headers_become_an_identity() {
        let id = Uuid::new_v4().to_string();
        let who = extract(&[
            (USER_ID, &id),
            (USER_EMAIL, "ada@example.com"),
            (USER_ROLES, "user, ops"),
            (KYC_STATUS, "verified"),
            (ACCOUNT_TIER, "gold"),
        ])
        .await
        .unwrap();
        assert_eq!(who.user_id().unwrap().to_string(), id);
        assert_eq!(who.roles, ["user", "ops"]);
        assert_eq!(who.kyc_status, Some(KycStatus::Verified));
        assert_eq!(who.tier, Some(Tier::Gold));
        assert!(who.require_role("ops").is_ok());
        assert_eq!(
            who.require_role("compliance").unwrap_err().status(),
            axum::http::StatusCode::FORBIDDEN
        );
        assert!(
            who.require_service().is_err(),
            "a user token never opens /internal"
        );
    }

    #[tokio::test]
    async fn an_internal_route_opens_only_to_the_services_it_names() {
        let who = extract(&[
            (USER_ID, "service:notification"),
            (USER_ROLES, "service:notification"),
        ])
        .await
        .unwrap();
        assert_eq!(
            who.require_service_of(&["notification"]).unwrap(),
            "notification"
        );
        let refused = who.require_service_of(&["payment"]).unwrap_err();
        assert_eq!(refused.status(), axum::http::StatusCode::FORBIDDEN);
        assert_eq!(refused.details.unwrap()["reason"], "service_not_allowed");
    }

    #[tokio::test]
    async fn a_service_token_is_a_service_and_not_a_user() {
        let who = extract(&[
            (USER_ID, "service:payment"),
            (USER_ROLES, "service:payment"),
        ])
        .await
        .unwrap();
        assert_eq!(who.require_service().unwrap(), "payment");
        assert!(who.user_id().is_err());
    }

    #[tokio::test]
    async fn a_user_only_route_refuses_a_service_token_with_403_and_no_caller_with_401() {
        async fn user(headers: &[(&str, &str)]) -> Result<UserId, ApiError> {
            <UserId as FromRequestParts<()>>::from_request_parts(&mut parts(headers), &()).await
        }
        let id = Uuid::now_v7().to_string();
        assert_eq!(
            user(&[(USER_ID, &id), (USER_ROLES, "user")])
                .await
                .unwrap()
                .0
                .to_string(),
            id
        );
        let service = user(&[
            (USER_ID, "service:payment"),
            (USER_ROLES, "service:payment"),
        ]);
        let refused = service.await.unwrap_err();
        assert_eq!(refused.status(), axum::http::StatusCode::FORBIDDEN);
        let anonymous = user(&[]).await.unwrap_err();
        assert_eq!(anonymous.status(), axum::http::StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn an_unknown_kyc_value_is_refused_rather_than_guessed() {
        let err = extract(&[(USER_ID, "u"), (KYC_STATUS, "approved")])
            .await
            .unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::UNAUTHORIZED);
    }
}
