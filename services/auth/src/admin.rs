//! Operator commands of the auth binary: `finflow-auth grant-role EMAIL ROLE` and
//! `finflow-auth revoke-role EMAIL ROLE`.
//!
//! Staff roles open other users' wallets, payments and cases, so no request to the API
//! can confer one, and nothing about an account (its email least of all: anyone may
//! register any address that is still free) implies one. An operator with access to
//! A's database grants a role to an account that already exists; it applies from the
//! account's next login or refresh. A revocation ends the account's sessions as well:
//! what still carries the role is an access token already issued, for at most
//! `ACCESS_TOKEN_TTL_SECS`.

use clap::Parser;
use finflow_platform::Email;
use finflow_platform::config::DatabaseConfig;
use sqlx::PgPool;

/// The roles an operator may grant: the staff roles the services check for.
pub use finflow_contracts::identity::STAFF_ROLES;

/// A role an operator may grant (one of [`STAFF_ROLES`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaffRole(&'static str);

impl StaffRole {
    pub fn parse(raw: &str) -> Result<Self, String> {
        STAFF_ROLES
            .iter()
            .find(|role| **role == raw.trim())
            .map(|role| Self(role))
            .ok_or_else(|| {
                format!(
                    "`{raw}` is not a staff role (one of {})",
                    STAFF_ROLES.join(", ")
                )
            })
    }

    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

/// Adds `role` to the account registered as `email`, once its address is verified;
/// returns its roles. Granting a role the account has is no change. Not before: until
/// then the account is a placeholder whose password whoever verifies the address
/// decides.
pub async fn grant_role(
    pool: &PgPool,
    email: &Email,
    role: &StaffRole,
) -> anyhow::Result<Vec<String>> {
    let roles: Option<(Vec<String>,)> = sqlx::query_as(
        "UPDATE users SET roles = CASE WHEN $2 = ANY (roles) THEN roles ELSE array_append(roles, $2) END, \
         updated_at = now() WHERE email = $1 AND email_verified_at IS NOT NULL RETURNING roles",
    )
    .bind(email.as_str())
    .bind(role.as_str())
    .fetch_optional(pool)
    .await?;
    let Some((roles,)) = roles else {
        let registered: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE email = $1)")
                .bind(email.as_str())
                .fetch_one(pool)
                .await?;
        anyhow::bail!(if registered {
            format!(
                "the account of {email} has not verified its address: grant the role once it has"
            )
        } else {
            format!("no account is registered as {email}")
        });
    };
    tracing::info!(%email, role = role.as_str(), "role granted");
    Ok(roles)
}

/// Removes `role` from the account registered as `email` and ends every session of it
/// (a refresh would no longer carry the role, but an ex-operator keeps no session the
/// role was granted to); returns its roles. Revoking a role the account lacks ends its
/// sessions all the same.
pub async fn revoke_role(
    pool: &PgPool,
    email: &Email,
    role: &StaffRole,
) -> anyhow::Result<Vec<String>> {
    let mut tx = pool.begin().await?;
    // The account's row first, as every change of its sessions takes it
    // (`account::hold_sessions`).
    let revoked: Option<(uuid::Uuid, Vec<String>)> = sqlx::query_as(
        "UPDATE users SET roles = array_remove(roles, $2), updated_at = now() \
         WHERE email = $1 RETURNING id, roles",
    )
    .bind(email.as_str())
    .bind(role.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some((user, roles)) = revoked else {
        anyhow::bail!("no account is registered as {email}");
    };
    let sessions = crate::account::end_sessions(&mut tx, user).await?;
    tx.commit().await?;
    tracing::info!(%email, role = role.as_str(), sessions, "role revoked, sessions ended");
    Ok(roles)
}

/// Which way [`RoleCommand`] changes the account's roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Grant,
    Revoke,
}

/// `finflow-auth grant-role|revoke-role EMAIL ROLE`: grants a staff role to a registered
/// account, or revokes it.
#[derive(Debug, Parser)]
pub struct RoleCommand {
    /// The account's email, as registered.
    #[arg(value_parser = |s: &str| Email::parse(s).map_err(|e| e.to_string()))]
    pub email: Email,
    /// The role: ops or compliance.
    #[arg(value_parser = StaffRole::parse)]
    pub role: StaffRole,
    #[command(flatten)]
    pub db: DatabaseConfig,
}

impl RoleCommand {
    /// Runs the command; the roles the account has now.
    pub async fn run(self, change: Change) -> anyhow::Result<Vec<String>> {
        let pool = finflow_platform::db::connect(&self.db.database_url, 1).await?;
        let roles = match change {
            Change::Grant => grant_role(&pool, &self.email, &self.role).await,
            Change::Revoke => revoke_role(&pool, &self.email, &self.role).await,
        };
        pool.close().await;
        roles
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_staff_roles_can_be_granted() {
        assert_eq!(StaffRole::parse("ops").unwrap().as_str(), "ops");
        assert_eq!(
            StaffRole::parse("compliance").unwrap().as_str(),
            "compliance"
        );
        for role in ["user", "service:payment", "admin", ""] {
            assert!(StaffRole::parse(role).is_err(), "{role}");
        }
    }
}
