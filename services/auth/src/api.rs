//! HTTP handlers of service A.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use finflow_contracts::catalog;
use finflow_contracts::identity::client_network;
use finflow_contracts::user::{
    MailedCredential, RegistrationRepeated, UserCreated, VerificationRequested,
};
use finflow_platform::error::{self, ErrorEnvelope};
use finflow_platform::events::{Event, outbox, types};
use finflow_platform::identity::{ClientIp, KycStatus, Tier};
use finflow_platform::text;
use finflow_platform::{ApiError, ApiResult, Email, Identity, Json, Path, UserId};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

use crate::domain::{FullName, Password, Phone};
use crate::passwords::{DUMMY_HASH, Passwords};
use crate::tokens::{self, Issuer, MailedToken};
use crate::verification::{self, SignUp};
use finflow_contracts::sealed::{Addressee, SealKey};

/// Settings the handlers need besides connections.
pub struct Settings {
    pub refresh_ttl: Duration,
    /// How long a session lasts from its first token, however often refreshed.
    pub session_max_age: Duration,
    pub login_limit_per_account: u32,
    pub login_limit_per_address: u32,
    pub register_limit_per_address: u32,
    pub refresh_limit_per_address: u32,
    pub service_token_failures_per_address: u32,
    /// Service name -> SHA-256 of its client secret.
    pub service_clients: HashMap<String, [u8; 32]>,
    /// Seals the tokens mailed through D ([`finflow_contracts::sealed`]).
    pub mail_seal: SealKey,
}

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub redis: ConnectionManager,
    pub issuer: Issuer,
    pub settings: Arc<Settings>,
    pub passwords: Passwords,
}

/// What the document has beside what the routes' attributes bring: schemas no route
/// names; its title and description come from the service catalog
/// ([`finflow_platform::service::run`] sets them).
#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(GrantType, RegistrationStatus, crate::reset::ResetStatus)))]
pub(crate) struct ApiDoc;

/// The route table.
pub fn routes() -> OpenApiRouter<AppState> {
    finflow_platform::route_table!(ApiDoc:
        register; verify; login; refresh; logout; crate::account::logout_all;
        crate::account::change_password; crate::reset::request_reset;
        crate::reset::confirm_reset; service_token; me, update_me;
        internal_user; internal_users; crate::kyc::set_kyc; jwks)
}

/// A user as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub full_name: String,
    pub phone: String,
    pub kyc_status: KycStatus,
    pub account_tier: Tier,
    pub roles: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub(crate) const USER_COLUMNS: &str =
    "id, email, full_name, phone, kyc_status, account_tier, roles, created_at, updated_at";

impl User {
    /// The identity its tokens carry.
    fn identity(&self) -> Identity {
        Identity {
            subject: self.id.to_string(),
            email: Some(self.email.clone()),
            roles: self.roles.clone(),
            kyc_status: Some(self.kyc_status),
            tier: Some(self.account_tier),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// An address without display text, quoted local part or IP literal, with a `.` in
    /// it; at most 254 characters once trimmed (compared trimmed and lower-cased).
    #[schema(format = Email, max_length = 254, example = "ada@example.com")]
    pub email: String,
    #[schema(schema_with = text::schema::<Password>)]
    pub password: String,
    #[schema(schema_with = text::schema::<FullName>)]
    pub full_name: String,
    #[schema(schema_with = text::schema::<Phone>)]
    pub phone: String,
}

/// What a sign-up answers. The same for an address with no account, one with an
/// unverified account and one with an account: only the mailbox learns which it was.
#[derive(Debug, Serialize, ToSchema)]
pub struct Registration {
    /// The address as it is compared and mailed (trimmed, lower-cased).
    #[schema(example = "ada@example.com")]
    pub email: String,
    pub status: RegistrationStatus,
}

/// `status` of a sign-up: a mail is on its way to the address.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RegistrationStatus {
    VerificationSent,
}

const LOGIN_LIMITED: &str = "too many login attempts, try again later";

pub(crate) fn parse_email(raw: &str) -> Result<Email, ApiError> {
    Email::parse(raw).map_err(|e| ApiError::invalid_field("email", e.to_string()))
}

/// Signs up, or repeats a sign-up. Always 202 with the same body: whether the address
/// has an account is told only to its mailbox. A new address gets an unverified account
/// and a mail with a verification token; a sign-up of an address with an unverified
/// account gets a token of its own mailed, and leaves the account and earlier tokens as
/// they are (the token redeemed, with its sign-up's password, decides); an address with
/// a verified account changes nothing and its owner is mailed that someone tried.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = RegisterRequest,
    responses((status = 202, body = Registration,
            description = "a mail is on its way to the address: a token to confirm it (POST /api/v1/auth/verify), or, if the address has an account, a notice to its owner; the answer is the same either way"),
        (status = 400, body = ErrorEnvelope, description = "email, password, full_name or phone breaks its rule"),
        (status = 429, body = ErrorEnvelope, description = "too many sign-ups from this client address; see Retry-After")))]
async fn register(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<RegisterRequest>,
) -> ApiResult {
    // Counted before any work: a refused sign-up still costs the attacker an attempt.
    crate::limits::per_address(
        &s.redis,
        "register-address",
        ip,
        s.settings.register_limit_per_address,
        "too many sign-ups from this address, try again later",
    )
    .await?;
    let email = parse_email(&req.email)?;
    let password = Password::parse(&req.password)?;
    let full_name = FullName::parse(&req.full_name)?;
    let phone = Phone::parse(&req.phone)?;
    // Hashed on every path, before anything tells them apart: a sign-up takes as long
    // for an address with an account as for a new one.
    let hash = s.passwords.hash(password).await?;
    // Every account starts as a user whatever its email: staff roles are granted by
    // an operator (`admin`), never by choosing an address.
    let roles = vec!["user".to_owned()];

    let mut tx = s.pool.begin().await?;
    // A new address gets an account. For an address that has one the insert does
    // nothing (after waiting for a concurrent sign-up of it to commit or roll back).
    let created: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO users (id, email, password_hash, full_name, phone, roles, email_verified_at) \
         VALUES ($1, $2, $3, $4, $5, $6, NULL) ON CONFLICT (email) DO NOTHING RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(email.as_str())
    .bind(&hash)
    .bind(full_name.as_str())
    .bind(phone.as_str())
    .bind(&roles)
    .fetch_optional(&mut *tx)
    .await?;
    let sign_up = SignUp {
        password_hash: &hash,
        full_name: full_name.as_str(),
        phone: phone.as_str(),
    };
    let (user_id, verified) = match created {
        Some(user_id) => (user_id, false),
        None => sqlx::query_as(
            "SELECT id, email_verified_at IS NOT NULL FROM users WHERE email = $1 FOR UPDATE",
        )
        .bind(email.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| ApiError::internal(&"the account vanished during sign-up"))?,
    };
    if !sign_up_mail_allowed(&mut tx, user_id).await? {
        // Answered as any sign-up, with nothing done: a token no mail carries is of no
        // use, and the account is left as it is.
        tx.commit().await?;
        tracing::info!(%user_id, "sign-up accepted; this hour's mails to its address were sent");
        return Ok(accepted(&email));
    }
    let event = if verified {
        // The account stays as it is; its owner hears that someone tried.
        Event::new(
            catalog::AUTH.name,
            types::USER_REGISTRATION_REPEATED,
            &RegistrationRepeated {
                user_id,
                email: email.as_str().to_owned(),
            },
        )
        .map_err(|e| ApiError::internal(&e))?
    } else {
        // A new account, or one nobody has proven the mailbox of yet: this sign-up gets a
        // token of its own, and the account is left as it is. Whichever sign-up's token
        // is redeemed, with that sign-up's password, gives the account its password,
        // name and phone (`verification`).
        verification_requested(&mut tx, &s.settings.mail_seal, user_id, &email, &sign_up).await?
    };
    outbox::enqueue(&mut tx, &event).await?;
    tx.commit().await?;
    tracing::info!(%user_id, outcome = %event.event_type, "sign-up accepted");
    Ok(accepted(&email))
}

/// Sign-up mails (a verification token, or a notice that someone tried) one address is
/// sent an hour, whoever signs up with it from wherever: past them a sign-up is
/// answered as any other and mails nothing, or anyone could have FinFlow mail any
/// address as often as they can sign up.
pub const SIGN_UP_MAILS_PER_HOUR: i64 = 3;

/// Whether the account `user` (locked, or new in `tx`) may be sent one more sign-up mail
/// this hour ([`SIGN_UP_MAILS_PER_HOUR`]), counting it; forgets the older ones.
async fn sign_up_mail_allowed(tx: &mut PgConnection, user: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "WITH recent AS ( \
           SELECT count(*) AS sent FROM sign_up_mails \
           WHERE user_id = $1 AND sent_at > now() - interval '1 hour'), \
         counted AS ( \
           INSERT INTO sign_up_mails (user_id) SELECT $1 FROM recent WHERE sent < $2 \
           RETURNING 1), \
         forgotten AS ( \
           DELETE FROM sign_up_mails WHERE user_id = $1 AND sent_at <= now() - interval '1 hour') \
         SELECT EXISTS (SELECT 1 FROM counted)",
    )
    .bind(user)
    .bind(SIGN_UP_MAILS_PER_HOUR)
    .fetch_one(&mut *tx)
    .await
}

/// The one answer to every sign-up that passes its checks, whatever became of it.
fn accepted(email: &Email) -> axum::response::Response {
    error::with_status(
        StatusCode::ACCEPTED,
        Registration {
            email: email.as_str().to_owned(),
            status: RegistrationStatus::VerificationSent,
        },
    )
}

/// Issues a verification token for `sign_up` of `user` and the event that has it
/// mailed to `email`.
async fn verification_requested(
    tx: &mut PgConnection,
    seal: &SealKey,
    user_id: Uuid,
    email: &Email,
    sign_up: &SignUp<'_>,
) -> Result<Event, ApiError> {
    let (token, expires_at) = verification::issue(tx, user_id, sign_up).await?;
    let to = Addressee {
        event_type: types::USER_VERIFICATION_REQUESTED,
        user_id,
        email: email.as_str(),
    };
    Event::new(
        catalog::AUTH.name,
        types::USER_VERIFICATION_REQUESTED,
        &VerificationRequested {
            user_id,
            email: email.as_str().to_owned(),
            full_name: sign_up.full_name.to_owned(),
            token: MailedCredential(seal.seal(&token, &to)),
            expires_at,
        },
    )
    .map_err(|e| ApiError::internal(&e))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    #[schema(schema_with = text::schema::<MailedToken>)]
    pub token: String,
    /// The password the sign-up that was mailed this token chose (a wrong one is 401).
    #[schema(example = "correct horse battery")]
    pub password: String,
}

/// Confirms an address with the token mailed to it and the password of the sign-up it
/// was mailed for: the account takes that sign-up's password, name and phone and can
/// log in from now on, and `user.created` tells the other services it exists.
#[utoipa::path(post, path = "/api/v1/auth/verify", tag = "auth", request_body = VerifyRequest,
    responses((status = 200, body = User, description = "the address is confirmed: the account can log in"),
        (status = 400, body = ErrorEnvelope, description = "not the shape of a verification token, or no password"),
        (status = 401, body = ErrorEnvelope, description = "not the password of the sign-up this token was mailed for (the token stays usable)"),
        (status = 404, body = ErrorEnvelope,
            description = "the token is unknown, already used or expired, or the address is verified already (details.reason = invalid_token; which one is not said)"),
        (status = 429, body = ErrorEnvelope, description = "too many attempts from this client address; see Retry-After")))]
async fn verify(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<VerifyRequest>,
) -> ApiResult {
    if !MailedToken::shaped(&req.token) {
        return Err(ApiError::invalid_field(
            "token",
            "a verification token is 43 characters of unpadded base64url",
        ));
    }
    // Each attempt with a valid token costs an Argon2 check: limited where they come
    // from, as logins are.
    crate::limits::per_address(
        &s.redis,
        "verify-address",
        ip,
        s.settings.login_limit_per_address,
        "too many verification attempts from this address, try again later",
    )
    .await?;
    let Some(peeked) = verification::peek(&s.pool, &req.token).await? else {
        return Err(tokens::invalid_mailed_token("verification"));
    };
    // The mailbox holds the tokens of every sign-up of the address; its owner knows the
    // password of theirs alone. Checked before any lock is taken: Argon2 is slow.
    if !s
        .passwords
        .verify(req.password, peeked.password_hash.clone())
        .await?
    {
        return Err(ApiError::unauthorized(
            "not the password of the sign-up this token was mailed for",
        ));
    }
    let mut tx = s.pool.begin().await?;
    // Still outstanding, and still what was checked (a concurrent use, or an older
    // release rewriting the account a legacy token stands for, makes it not).
    let token = match verification::find(&mut tx, &req.token).await? {
        Some(token) if token == peeked => token,
        _ => return Err(tokens::invalid_mailed_token("verification")),
    };
    verification::use_up(&mut tx, &token).await?;
    let user: Option<User> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE users SET email_verified_at = now(), updated_at = now(), password_hash = $2, \
           full_name = COALESCE($3, full_name), phone = COALESCE($4, phone) \
         WHERE id = $1 AND email_verified_at IS NULL RETURNING {USER_COLUMNS}"
    )))
    .bind(token.user_id)
    .bind(&token.password_hash)
    .bind(token.full_name.as_deref())
    .bind(token.phone.as_deref())
    .fetch_optional(&mut *tx)
    .await?;
    // Verified already (or gone): the token is refused like any other, and dropping the
    // transaction leaves it as it was.
    let Some(user) = user else {
        return Err(tokens::invalid_mailed_token("verification"));
    };
    verification::revoke_outstanding(&mut tx, user.id).await?;
    let event = Event::new(
        catalog::AUTH.name,
        types::USER_CREATED,
        &UserCreated {
            user_id: user.id,
            email: user.email.clone(),
            full_name: user.full_name.clone(),
            kyc_status: user.kyc_status,
            account_tier: user.account_tier,
        },
    )
    .map_err(|e| ApiError::internal(&e))?;
    outbox::enqueue(&mut tx, &event).await?;
    tx.commit().await?;
    tracing::info!(user_id = %user.id, "email verified; user created");
    Ok(error::ok(user))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// An address without display text, quoted local part or IP literal, with a `.` in
    /// it; at most 254 characters once trimmed (compared trimmed and lower-cased).
    #[schema(format = Email, max_length = 254, example = "ada@example.com")]
    pub email: String,
    /// Any string (a wrong one is 401).
    #[schema(example = "correct horse battery")]
    pub password: String,
}

/// Tokens for a session.
#[derive(Serialize, ToSchema)]
pub struct Session {
    pub access_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    pub expires_at: DateTime<Utc>,
    pub refresh_token: String,
    pub refresh_expires_at: DateTime<Utc>,
    pub user: User,
}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = Session), (status = 400, body = ErrorEnvelope, description = "not a valid email address"),
        (status = 401, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope)))]
async fn login(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<LoginRequest>,
) -> ApiResult {
    let email = parse_email(&req.email)?;
    let mut redis = s.redis.clone();
    // Brute force is throttled where it comes from: every attempt counts against the
    // client address, and each attempt against (account, address) until a success
    // clears it. Nothing is counted per account alone, so failures from one address
    // never lock the owner out from another.
    let address = client_network(ip);
    crate::limits::hit(
        &mut redis,
        "address",
        &address,
        s.settings.login_limit_per_address,
        LOGIN_LIMITED,
    )
    .await?;
    let pair = crate::limits::account_address(&email, &address);
    let by_pair = crate::limits::hit(
        &mut redis,
        "account-address",
        &pair,
        s.settings.login_limit_per_account,
        LOGIN_LIMITED,
    )
    .await?;

    let row: Option<(String, bool)> = sqlx::query_as(
        "SELECT password_hash, email_verified_at IS NOT NULL FROM users WHERE email = $1",
    )
    .bind(email.as_str())
    .fetch_optional(&s.pool)
    .await?;
    // An unknown email costs the same Argon2 work as a wrong password, and an account
    // whose address is not verified yet is checked like any other and refused with the
    // same answer: no oracle of which addresses have accounts, or verified ones.
    let (hash, usable) = row.unwrap_or_else(|| (DUMMY_HASH.clone(), false));
    let checked = s.passwords.verify(req.password, hash.clone()).await;
    let matches = crate::limits::unless_busy(&redis, by_pair, checked).await?;
    if !(usable && matches) {
        return Err(ApiError::unauthorized("invalid email or password"));
    }
    // The attempts from here were the owner's: their count starts again.
    crate::limits::clear(&mut redis, "account-address", &pair).await;
    let mut tx = s.pool.begin().await?;
    let user = user_if_password_is(&mut tx, &email, &hash)
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid email or password"))?;
    let family = Family::begin(&mut tx).await?;
    let session = start_session(&s, &mut tx, user, family).await?;
    tx.commit().await?;
    Ok(error::ok(session))
}

/// The verified account of `email` if `password_hash` is still its password, its row
/// share-locked until `tx` ends. A login checks the password before it starts its
/// transaction (Argon2 is slow); a password change in that gap ends every session, and
/// this one would outlive it. With the lock, a change that came first leaves the login
/// without an account, and one that comes later waits for the session and ends it.
/// Public for the tests that hold a login in that gap.
pub async fn user_if_password_is(
    tx: &mut PgConnection,
    email: &Email,
    password_hash: &str,
) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users \
         WHERE email = $1 AND email_verified_at IS NOT NULL AND password_hash = $2 FOR SHARE"
    )))
    .bind(email.as_str())
    .bind(password_hash)
    .fetch_optional(&mut *tx)
    .await
}

async fn user_by_id<'e>(
    db: impl sqlx::PgExecutor<'e>,
    id: Uuid,
) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// A session: the family its refresh tokens share, and when it began (its login).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Family {
    pub id: Uuid,
    pub started_at: DateTime<Utc>,
}

impl Family {
    /// The family of a session beginning now, by the database's clock: the time its
    /// first token's row records (`created_at`, the transaction's), which is what a
    /// refresh reads back as the session's start.
    pub async fn begin(tx: &mut sqlx::PgConnection) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: Uuid::now_v7(),
            started_at: sqlx::query_scalar("SELECT now()").fetch_one(tx).await?,
        })
    }

    /// When the session ends, however often it is refreshed.
    pub fn ends_at(&self, max_age: Duration) -> DateTime<Utc> {
        after(self.started_at, max_age)
    }
}

/// `from` plus `d`, or the end of time where that is past it.
fn after(from: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| from.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Issues an access token and a refresh token in `family`.
pub(crate) async fn start_session(
    s: &AppState,
    tx: &mut sqlx::PgConnection,
    user: User,
    family: Family,
) -> Result<Session, ApiError> {
    let now = Utc::now();
    let access = s
        .issuer
        .issue(user.identity(), now)
        .map_err(|e| ApiError::internal(&e))?;
    let (refresh_token, hash) = tokens::new_opaque_token();
    // Never past the session's end: a refresh there is refused all the same, and the
    // client is told when it must log in again.
    let refresh_expires_at =
        after(now, s.settings.refresh_ttl).min(family.ends_at(s.settings.session_max_age));
    sqlx::query(
        "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(Uuid::now_v7())
    .bind(family.id)
    .bind(user.id)
    .bind(hash)
    .bind(refresh_expires_at)
    .execute(&mut *tx)
    .await?;
    Ok(Session {
        access_token: access.token,
        token_type: "Bearer",
        expires_in: (access.expires_at - now).num_seconds(),
        expires_at: access.expires_at,
        refresh_token,
        refresh_expires_at,
        user,
    })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(sqlx::FromRow)]
struct RefreshRow {
    family_id: Uuid,
    user_id: Uuid,
    expires_at: DateTime<Utc>,
    used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    /// A token of the family was revoked, so the family was ([`revoke_family`]),
    /// whenever this token was written.
    family_revoked: bool,
    /// When the family's first token was written: the session's login.
    started_at: DateTime<Utc>,
}

#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = Session), (status = 401, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope, description = "too many refreshes from this address (REFRESH_LIMIT_PER_ADDRESS a minute); see Retry-After")))]
async fn refresh(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<RefreshRequest>,
) -> ApiResult {
    // Each rotation keeps a row for the token's 30 days (a used one is how a replay is
    // caught): counted where they come from, or one address in a loop writes millions
    // a day.
    crate::limits::per_address(
        &s.redis,
        "refresh-address",
        ip,
        s.settings.refresh_limit_per_address,
        "too many refreshes from this address, try again later",
    )
    .await?;
    let invalid = || ApiError::unauthorized("the refresh token is invalid or expired");
    let hash = tokens::hash_opaque_token(&req.refresh_token);
    let mut tx = s.pool.begin().await?;
    if hold_sessions_of_token(&mut tx, &hash).await?.is_none() {
        return Err(invalid());
    }
    // The row lock makes concurrent uses of one token take turns: only one can rotate it.
    let row: Option<RefreshRow> = sqlx::query_as(
        "SELECT family_id, user_id, expires_at, used_at, revoked_at, \
                f.family_revoked, f.started_at \
         FROM refresh_tokens t, LATERAL ( \
             SELECT bool_or(r.revoked_at IS NOT NULL) AS family_revoked, \
                    min(r.created_at) AS started_at \
             FROM refresh_tokens r WHERE r.family_id = t.family_id \
           ) f \
         WHERE token_hash = $1 FOR UPDATE OF t",
    )
    .bind(&hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(invalid());
    };
    if row.revoked_at.is_some() || row.family_revoked {
        return Err(invalid());
    }
    let family = Family {
        id: row.family_id,
        started_at: row.started_at,
    };
    // Before the token's own expiry, which is no later (so the client is told why), and
    // apart from it: a token issued under a longer SESSION_MAX_AGE_SECS, or by a release
    // before it, may outlive the session.
    if family.ends_at(s.settings.session_max_age) <= Utc::now() {
        return Err(ApiError::unauthorized(
            "the session has reached its maximum age (SESSION_MAX_AGE_SECS): log in again",
        ));
    }
    if row.expires_at <= Utc::now() {
        return Err(invalid());
    }
    if row.used_at.is_some() {
        // A rotated token came back: it was stolen or replayed. End the whole session.
        revoke_family(&mut tx, row.family_id).await?;
        tx.commit().await?;
        tracing::warn!(user_id = %row.user_id, family = %row.family_id, "refresh token reuse; family revoked");
        return Err(ApiError::unauthorized(
            "the refresh token was already used; the session has been revoked",
        ));
    }
    sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1")
        .bind(&hash)
        .execute(&mut *tx)
        .await?;
    // Through the transaction's connection: one from the pool while this one is held
    // would let as many refreshes at once as the pool has connections take them all and
    // wait for one more, which nothing returns.
    let user = user_by_id(&mut *tx, row.user_id)
        .await?
        .ok_or_else(invalid)?;
    let session = start_session(&s, &mut tx, user, family).await?;
    tx.commit().await?;
    Ok(error::ok(session))
}

/// Holds the sessions of the account a refresh token (by its hash) belongs to, and
/// returns the token's family; `None` for a token that does not exist. The owner is
/// read before any lock (a token never changes owner): the account's sessions come
/// first, then its tokens (`account::hold_sessions`).
async fn hold_sessions_of_token(
    tx: &mut sqlx::PgConnection,
    hash: &[u8],
) -> Result<Option<Uuid>, sqlx::Error> {
    let token: Option<(Uuid, Uuid)> =
        sqlx::query_as("SELECT family_id, user_id FROM refresh_tokens WHERE token_hash = $1")
            .bind(hash)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((family, owner)) = token else {
        return Ok(None);
    };
    crate::account::hold_sessions(&mut *tx, owner).await?;
    Ok(Some(family))
}

/// Ends a session: marks the family's tokens revoked, and [`refresh`] refuses every
/// token of a family with a revoked one. Callers hold the account's sessions
/// ([`crate::account::hold_sessions`]), so no rotation of the family is midway; were one
/// writing a token this UPDATE does not see, that token would be refused all the same,
/// its family holding a revoked one.
async fn revoke_family(tx: &mut sqlx::PgConnection, family: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
    )
    .bind(family)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Ends the session the refresh token belongs to. Holding the refresh token is the
/// credential, so an expired access token does not stop a user from logging out.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, description = "the session is revoked"), (status = 401, body = ErrorEnvelope)))]
async fn logout(State(s): State<AppState>, Json(req): Json<RefreshRequest>) -> ApiResult {
    let hash = tokens::hash_opaque_token(&req.refresh_token);
    let mut tx = s.pool.begin().await?;
    let Some(family) = hold_sessions_of_token(&mut tx, &hash).await? else {
        return Err(ApiError::unauthorized("the refresh token is invalid"));
    };
    revoke_family(&mut tx, family).await?;
    tx.commit().await?;
    Ok(error::ok(serde_json::json!({ "revoked": true })))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Must be `client_credentials`.
    #[schema(value_type = GrantType)]
    pub grant_type: String,
    /// The service name (`payment`), which becomes the role `service:payment`.
    pub client_id: String,
    pub client_secret: String,
}

/// `grant_type` of `POST /api/v1/auth/token` (documentation only: the handler compares
/// the string).
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    ClientCredentials,
}

#[derive(Serialize, ToSchema)]
pub struct ServiceToken {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub expires_at: DateTime<Utc>,
}

#[utoipa::path(post, path = "/api/v1/auth/token", tag = "auth", request_body = TokenRequest,
    responses((status = 200, body = ServiceToken),
        (status = 400, body = ErrorEnvelope, description = "grant_type is not client_credentials"),
        (status = 401, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope, description = "too many wrong credentials from this address (SERVICE_TOKEN_FAILURES_PER_ADDRESS a minute); see Retry-After")))]
async fn service_token(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<TokenRequest>,
) -> ApiResult {
    if req.grant_type != "client_credentials" {
        return Err(ApiError::invalid_field(
            "grant_type",
            "grant_type must be client_credentials",
        ));
    }
    // Counted before the secret is compared, so requests at once cannot all slip under
    // the limit; a right secret gives its attempt back, so only failures add up.
    let counted = crate::limits::per_address(
        &s.redis,
        "service-token-address",
        ip,
        s.settings.service_token_failures_per_address,
        "too many wrong client credentials from this address, try again later",
    )
    .await?;
    let presented: [u8; 32] = Sha256::digest(req.client_secret.as_bytes()).into();
    // Comparing digests: the time taken reveals nothing about the secret itself.
    let known = s.settings.service_clients.get(&req.client_id);
    if known != Some(&presented) {
        tracing::warn!(client_id = %req.client_id.escape_debug(), client = %ip, "wrong client credentials");
        return Err(ApiError::unauthorized("invalid client credentials"));
    }
    crate::limits::give_back(&s.redis, counted).await;
    let now = Utc::now();
    let role = format!(
        "{}{}",
        finflow_platform::identity::SERVICE_ROLE_PREFIX,
        req.client_id
    );
    let access = s
        .issuer
        .issue(
            Identity {
                subject: role.clone(),
                email: None,
                roles: vec![role],
                kyc_status: None,
                tier: None,
            },
            now,
        )
        .map_err(|e| ApiError::internal(&e))?;
    Ok(error::ok(ServiceToken {
        access_token: access.token,
        token_type: "Bearer",
        expires_in: (access.expires_at - now).num_seconds(),
        expires_at: access.expires_at,
    }))
}

#[utoipa::path(get, path = "/api/v1/users/me", tag = "users",
    responses((status = 200, body = User), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope, description = "not a user token"),
        (status = 404, body = ErrorEnvelope, description = "the user no longer exists")))]
async fn me(State(s): State<AppState>, UserId(me): UserId) -> ApiResult {
    let user = user_by_id(&s.pool, me)
        .await?
        .ok_or_else(|| ApiError::not_found("user not found"))?;
    Ok(error::ok(user))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMe {
    #[schema(schema_with = text::schema_or_null::<FullName>)]
    pub full_name: Option<String>,
    #[schema(schema_with = text::schema_or_null::<Phone>)]
    pub phone: Option<String>,
}

#[utoipa::path(put, path = "/api/v1/users/me", tag = "users", request_body = UpdateMe,
    responses((status = 200, body = User),
        (status = 400, body = ErrorEnvelope, description = "full_name or phone breaks its rule"),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope, description = "not a user token"),
        (status = 404, body = ErrorEnvelope, description = "the user no longer exists")))]
async fn update_me(
    State(s): State<AppState>,
    UserId(me): UserId,
    Json(req): Json<UpdateMe>,
) -> ApiResult {
    let full_name = req.full_name.as_deref().map(FullName::parse).transpose()?;
    let phone = req.phone.as_deref().map(Phone::parse).transpose()?;
    let user: User = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE users SET full_name = COALESCE($2, full_name), phone = COALESCE($3, phone), \
         updated_at = now() WHERE id = $1 RETURNING {USER_COLUMNS}"
    )))
    .bind(me)
    .bind(full_name.as_ref().map(FullName::as_str))
    .bind(phone.as_ref().map(Phone::as_str))
    .fetch_optional(&s.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("user not found"))?;
    Ok(error::ok(user))
}

/// A user's current state for other services (B checks KYC here, not in the token).
#[utoipa::path(get, path = "/internal/users/{id}", tag = "internal", params(("id" = Uuid, Path)),
    responses((status = 200, body = User), (status = 400, body = ErrorEnvelope, description = "the id is not a UUID"),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
async fn internal_user(
    State(s): State<AppState>,
    who: Identity,
    Path(id): Path<Uuid>,
) -> ApiResult {
    // B checks KYC and tier here before it opens a wallet or moves money.
    who.require_service_of(&["wallet"])?;
    let user = user_by_id(&s.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found("user not found"))?;
    Ok(error::ok(user))
}

/// Most users one `POST /internal/users/lookup` answers.
pub const LOOKUP_MAX: usize = 100;

/// `POST /internal/users/lookup`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserLookup {
    /// 1 to 100 ids.
    pub user_ids: Vec<Uuid>,
}

/// The users of a lookup that exist; an unknown id is left out.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    pub users: Vec<User>,
}

/// Several users' current state in one read: B applying a batch of transfers asks once
/// for all their senders, not once each.
#[utoipa::path(post, path = "/internal/users/lookup", tag = "internal", request_body = UserLookup,
    responses((status = 200, body = UserList), (status = 400, body = ErrorEnvelope, description = "no ids, or more than 100"),
        (status = 403, body = ErrorEnvelope)))]
async fn internal_users(
    State(s): State<AppState>,
    who: Identity,
    Json(req): Json<UserLookup>,
) -> ApiResult {
    who.require_service_of(&["wallet"])?;
    if req.user_ids.is_empty() || req.user_ids.len() > LOOKUP_MAX {
        return Err(ApiError::invalid_field(
            "user_ids",
            format!("between 1 and {LOOKUP_MAX} ids"),
        ));
    }
    let users: Vec<User> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE id = ANY($1)"
    )))
    // Planned for these ids each time: a plan cached while the table was small
    // would go on scanning all of it once it has grown (until an analyze replans it).
    .persistent(false)
    .bind(&req.user_ids)
    .fetch_all(&s.pool)
    .await?;
    Ok(error::ok(UserList { users }))
}

#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "the JWK set of the token signing keys")))]
async fn jwks(State(s): State<AppState>) -> Response {
    (
        [(header::CACHE_CONTROL, "public, max-age=60")],
        axum::Json(s.issuer.jwks(Utc::now())),
    )
        .into_response()
}
