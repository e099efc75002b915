//! Who is calling: the claims of an access token as A signs them and a sidecar
//! verifies them, and the headers in which the sidecar tells its app
//! (`docs/architecture.md`, Identity).

use serde::{Deserialize, Serialize};

pub const USER_ID: &str = "x-user-id";
pub const USER_EMAIL: &str = "x-user-email";
pub const USER_ROLES: &str = "x-user-roles";
pub const KYC_STATUS: &str = "x-kyc-status";
pub const ACCOUNT_TIER: &str = "x-account-tier";
/// Every header that carries identity; the sidecar strips all of them from clients.
pub const IDENTITY_HEADERS: [&str; 5] = [USER_ID, USER_EMAIL, USER_ROLES, KYC_STATUS, ACCOUNT_TIER];

/// What a client address counts as in per-address limits: an IPv4 address (also written
/// IPv4-mapped) is itself, an IPv6 address its /64, the block one subscriber is given:
/// counted per address, a client holding a /64 would use a new address per request.
pub fn client_network(address: std::net::IpAddr) -> String {
    match address {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The staff roles: granted by an operator, never by signing up, and never used on the
/// staff member's own money.
pub const STAFF_ROLES: &[&str] = &["ops", "compliance"];

/// Prefix of the roles carried by service tokens (`service:payment`).
pub const SERVICE_ROLE_PREFIX: &str = "service:";

/// The service a `service:<name>` role names, if `role` is one.
pub fn service_of_role(role: &str) -> Option<&str> {
    role.strip_prefix(SERVICE_ROLE_PREFIX)
        .filter(|name| !name.is_empty())
}

/// A user's KYC state as of the token (services that gate on it ask A for the current one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum KycStatus {
    Pending,
    Verified,
    Rejected,
}

/// Account tier, which sets transaction limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Bronze,
    Silver,
    Gold,
}

impl KycStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Verified => "verified",
            Self::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "verified" => Some(Self::Verified),
            "rejected" => Some(Self::Rejected),
            _ => None,
        }
    }
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bronze => "bronze",
            Self::Silver => "silver",
            Self::Gold => "gold",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "bronze" => Some(Self::Bronze),
            "silver" => Some(Self::Silver),
            "gold" => Some(Self::Gold),
            _ => None,
        }
    }
}

/// Stores a string enum as TEXT (the column's CHECK constraint lists the values).
#[cfg(feature = "sqlx")]
macro_rules! text_column {
    ($ty:ty) => {
        impl sqlx::Type<sqlx::Postgres> for $ty {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'_, sqlx::Postgres>>::encode_by_ref(&self.as_str(), buf)
            }
        }

        impl sqlx::Decode<'_, sqlx::Postgres> for $ty {
            fn decode(
                value: sqlx::postgres::PgValueRef<'_>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let s = <&str as sqlx::Decode<'_, sqlx::Postgres>>::decode(value)?;
                Self::parse(s).ok_or_else(|| format!("unknown {} `{s}`", stringify!($ty)).into())
            }
        }
    };
}

#[cfg(feature = "sqlx")]
text_column!(KycStatus);
#[cfg(feature = "sqlx")]
text_column!(Tier);

/// The claims of an access token. A signs `aud` as one string and always sets `nbf`;
/// a sidecar also takes tokens of other issuers, so it reads `aud` as a string or an
/// array and `nbf` as optional. `kyc_status` and `tier` are the `as_str` of
/// [`KycStatus`] and [`Tier`]; they stay text here because a sidecar forwards what a
/// token says and the app decides what it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kyc_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    pub iss: String,
    pub aud: Audience,
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub exp: i64,
    pub jti: String,
}

impl TokenClaims {
    /// A `service:<name>` role: the token of a service, which opens `/internal/*`.
    pub fn is_service(&self) -> bool {
        self.roles.iter().any(|r| service_of_role(r).is_some())
    }
}

/// A token's `aud`: one audience as a string, or several as an array (RFC 7519, 4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn as_slice(&self) -> &[String] {
        match self {
            Self::One(a) => std::slice::from_ref(a),
            Self::Many(a) => a,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_client_counts_as_its_slash_64_and_an_ipv4_one_as_itself() {
        let network = |s: &str| client_network(s.parse().unwrap());
        assert_eq!(network("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_eq!(
            network("2001:db8:1:2:ffff:ffff:ffff:ffff"),
            "2001:db8:1:2::/64"
        );
        assert_ne!(network("2001:db8:1:3::1"), network("2001:db8:1:2::1"));
        assert_eq!(network("203.0.113.7"), "203.0.113.7");
        assert_eq!(network("::ffff:203.0.113.7"), "203.0.113.7");
        assert_ne!(network("203.0.113.8"), network("203.0.113.7"));
    }

    #[test]
    fn a_token_of_a_signs_its_audience_as_a_string_and_leaves_out_absent_claims() {
        let claims = TokenClaims {
            sub: "u1".into(),
            email: None,
            roles: vec!["user".into()],
            kyc_status: Some(KycStatus::Verified.as_str().into()),
            tier: None,
            iss: "finflow-auth".into(),
            aud: Audience::One("finflow".into()),
            iat: 1,
            nbf: Some(1),
            exp: 2,
            jti: "j".into(),
        };
        assert_eq!(
            serde_json::to_string(&claims).unwrap(),
            r#"{"sub":"u1","roles":["user"],"kyc_status":"verified","iss":"finflow-auth","aud":"finflow","iat":1,"nbf":1,"exp":2,"jti":"j"}"#
        );
    }

    #[test]
    fn another_issuers_token_may_name_several_audiences_and_no_nbf() {
        let claims: TokenClaims = serde_json::from_str(
            r#"{"sub":"u1","iss":"x","aud":["a","b"],"iat":1,"exp":2,"jti":"j"}"#,
        )
        .unwrap();
        assert_eq!(claims.aud.as_slice(), ["a", "b"]);
        assert_eq!(claims.nbf, None);
        assert!(claims.roles.is_empty());
        assert!(!claims.is_service());
    }

    #[test]
    fn only_a_named_service_role_makes_a_service_token() {
        assert_eq!(service_of_role("service:payment"), Some("payment"));
        assert_eq!(service_of_role("service:"), None);
        assert_eq!(service_of_role("user"), None);
    }

    #[test]
    fn every_status_and_tier_reads_back_from_its_text() {
        for k in [KycStatus::Pending, KycStatus::Verified, KycStatus::Rejected] {
            assert_eq!(KycStatus::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        for t in [Tier::Bronze, Tier::Silver, Tier::Gold] {
            assert_eq!(Tier::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
    }
}
