//! HTTP handlers of service E.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use finflow_contracts::catalog;
use finflow_contracts::identity;
use finflow_contracts::kyc::{AmlDecision, HoldDecision, HoldOutcome, KycDecision, KycUpdated};
use finflow_platform::error::{self, ErrorEnvelope, unique_violation};
use finflow_platform::events::{Event, outbox, types};
use finflow_platform::{ApiError, ApiResult, Identity, Json, Path, Query, UserId};
use finflow_platform::{page, text};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::router::UtoipaMethodRouterExt;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::documents::{Checked, Submission, SubmissionShape};
use crate::notices::{self, Target};
use crate::reason::Reason;

pub struct Settings {
    /// Approve well-formed documents without a reviewer (development default).
    pub auto_approve: bool,
}

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    /// A and C, told of each decision before the client is answered ([`tell_auth`],
    /// [`decide_alert`]), and again by the notifier until they take it.
    pub recipients: notices::Recipients,
}

/// The largest submission body: a [`MAX_DOCUMENT_BYTES`] file in base64 with room for
/// the other fields.
///
/// [`MAX_DOCUMENT_BYTES`]: crate::documents::MAX_DOCUMENT_BYTES
pub const SUBMIT_BODY_BYTES: usize = crate::documents::MAX_DOCUMENT_BYTES / 3 * 4 + 64 * 1024;

/// What the document has beside what the routes' attributes bring: schemas no route
/// names; its title and description come from the service catalog
/// ([`finflow_platform::service::run`] sets them).
#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(AlertStatus, crate::documents::Upload)))]
pub(crate) struct ApiDoc;

/// The route table.
pub fn routes() -> OpenApiRouter<AppState> {
    finflow_platform::route_table!(ApiDoc: status; review; revoke; alerts; clear; flag; risk)
        // A document travels base64 in JSON: 4/3 of its bytes plus the other fields,
        // more than the platform's default body limit allows.
        .routes(routes!(submit).layer(DefaultBodyLimit::max(SUBMIT_BODY_BYTES)))
}

#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct SubmissionView {
    pub id: Uuid,
    pub user_id: Uuid,
    pub document_type: String,
    pub document_number: String,
    pub status: String,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    /// Who revoked a `revoked` submission's verification, why and when.
    pub revoked_by: Option<String>,
    pub revoked_reason: Option<String>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const SUBMISSION_COLUMNS: &str = "id, user_id, document_type, document_number, status, decided_by, reason, created_at, decided_at, \
     revoked_by, revoked_reason, revoked_at";

/// A decision for A, as the event carries it and [`tell_auth`] sends it.
#[derive(Debug, Clone)]
struct Told {
    user_id: Uuid,
    decision: KycDecision,
}

impl Told {
    /// When it was decided (E dates every decision it makes; an undated one counts as
    /// made now).
    fn decided_at(&self) -> DateTime<Utc> {
        self.decision.decided_at.unwrap_or_else(Utc::now)
    }
}

/// Records `told` as its user's notice for A ([`crate::notices`]) and queues
/// `user.kyc_updated` (for D and F; A does not take decisions from the bus), in the
/// caller's transaction.
async fn enqueue_decision(
    tx: &mut PgConnection,
    told: &Told,
    submission_id: Uuid,
) -> Result<(), ApiError> {
    notices::record(
        tx,
        Target::Auth,
        told.user_id,
        &told.decision,
        told.decided_at(),
    )
    .await?;
    let event = Event::new(
        catalog::KYC.name,
        types::USER_KYC_UPDATED,
        &KycUpdated {
            user_id: told.user_id,
            submission_id,
            decision: told.decision.clone(),
        },
    )
    .map_err(|e| ApiError::internal(&e))?;
    outbox::enqueue(tx, &event).await?;
    Ok(())
}

/// How long a client's answer waits for A or C before the notifier alone tells them.
const TELL_TIMEOUT: Duration = Duration::from_secs(2);

/// Tells A a committed decision before the client hears it, so the client that is told
/// "verified" (or whose verification was revoked) finds B, which asks A, agreeing at
/// once. The decision's notice tells A again whatever happens here
/// ([`notices::Notifier`]): when A cannot be reached the decision still arrives, later.
async fn tell_auth(s: &AppState, told: &Told) {
    notices::tell_now(
        &s.pool,
        &s.recipients,
        Target::Auth,
        told.user_id,
        &told.decision,
        told.decided_at(),
        TELL_TIMEOUT,
    )
    .await;
}

/// Records a decision and queues `user.kyc_updated`, in the caller's transaction.
///
/// Decisions are dated by `clock_timestamp()`, when the row is written under its lock,
/// not `now()` (the transaction's start): A keeps the newest, so dates must follow the
/// order in which decisions on a user's submissions take effect.
async fn decide(
    tx: &mut PgConnection,
    id: Uuid,
    status: identity::KycStatus,
    by: &str,
    reason: Option<&str>,
) -> Result<(SubmissionView, Told), ApiError> {
    let view: SubmissionView = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE kyc_submissions SET status = $2, decided_by = $3, reason = $4, decided_at = clock_timestamp() \
         WHERE id = $1 AND status = 'pending' RETURNING {SUBMISSION_COLUMNS}"
    )))
    .bind(id)
    .bind(status.as_str())
    .bind(by)
    .bind(reason)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::conflict("this submission was already decided"))?;
    let told = Told {
        user_id: view.user_id,
        decision: KycDecision {
            kyc_status: status,
            decided_at: Some(
                view.decided_at
                    .ok_or_else(|| ApiError::internal(&"a decision without a time"))?,
            ),
        },
    };
    enqueue_decision(tx, &told, id).await?;
    Ok((view, told))
}

/// Whether the document of submission `id` may not verify its user: another account
/// holds it (pending or verified, or its verification was revoked), or a verification
/// on it was revoked, the user's own included. One passport would otherwise verify any
/// number of accounts, each with its own tier limits and its own velocity count, and a
/// revoked one would verify its holder again on a new account. A number is the same
/// document however its dashes fall (`D-1234-5678`, `D12345678`: only a driving
/// licence's may have them). Takes the document's
/// lock, then the user's submissions, until the transaction ends: two decisions on one
/// document come one after the other, and so do a decision and a revocation of the
/// user (which locks the same rows).
async fn document_spoken_for(tx: &mut PgConnection, id: Uuid) -> Result<bool, sqlx::Error> {
    // The number without dashes, then as written: the key the release before takes,
    // so a decision here and one there on the same spelling still take turns.
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended( \
           'kyc-document:' || document_type || ':' || replace(document_number, '-', ''), 0)), \
         pg_advisory_xact_lock(hashtextextended( \
           'kyc-document:' || document_type || ':' || document_number, 0)) \
         FROM kyc_submissions WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "SELECT id FROM kyc_submissions \
         WHERE user_id = (SELECT user_id FROM kyc_submissions WHERE id = $1) FOR UPDATE",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM kyc_submissions mine JOIN kyc_submissions other \
           ON other.document_type = mine.document_type \
          AND replace(other.document_number, '-', '') = replace(mine.document_number, '-', '') \
          AND other.id <> mine.id \
         WHERE mine.id = $1 AND (other.status = 'revoked' \
           OR (other.user_id <> mine.user_id AND other.status IN ('pending', 'verified'))))",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await
}

/// Submits a document. With automatic approval on, a well-formed document is verified
/// at once; otherwise it waits for a `compliance` reviewer.
#[utoipa::path(post, path = "/api/v1/kyc/submit", tag = "kyc", request_body = SubmissionShape,
    responses((status = 201, body = SubmissionView),
        (status = 400, body = ErrorEnvelope, description = "the number, URL or file breaks its rule, or neither or both of URL and file"),
        (status = 403, body = ErrorEnvelope, description = "not a user token"),
        (status = 409, body = ErrorEnvelope, description = "a submission is already waiting for review")))]
async fn submit(
    State(s): State<AppState>,
    UserId(user): UserId,
    Json(req): Json<Submission>,
) -> ApiResult {
    let Checked {
        document_type,
        document_number,
        document_url,
        file,
    } = req.check()?;
    let mut tx = s.pool.begin().await?;
    let id = Uuid::now_v7();
    let inserted = sqlx::query(
        "INSERT INTO kyc_submissions (id, user_id, document_type, document_number, document_url, \
           document_content_type, document_size, document_sha256, document_bytes, status) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending')",
    )
    .bind(id)
    .bind(user)
    .bind(document_type.as_str())
    .bind(&document_number)
    .bind(document_url.as_deref())
    .bind(file.as_ref().map(|f| f.content_type))
    .bind(
        file.as_ref()
            .map(|f| i32::try_from(f.bytes.len()).unwrap_or(i32::MAX)),
    )
    .bind(file.as_ref().map(|f| f.sha256.clone()))
    .bind(file.as_ref().map(|f| f.bytes.clone()))
    .execute(&mut *tx)
    .await;
    if let Err(e) = inserted {
        return Err(match unique_violation(&e) {
            Some("kyc_submissions_one_pending") => {
                ApiError::conflict("a submission is already waiting for review")
            }
            _ => e.into(),
        });
    }
    // A document another account holds, or one revoked, waits for a reviewer (who is
    // then refused its approval): the customer is not told why, since that would tell
    // whoever holds someone's passport number whether its owner is a customer.
    let (view, told) = if s.settings.auto_approve && !document_spoken_for(&mut tx, id).await? {
        let (view, told) = decide(
            &mut tx,
            id,
            identity::KycStatus::Verified,
            AUTO,
            Some("well-formed document"),
        )
        .await?;
        (view, Some(told))
    } else {
        let view = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {SUBMISSION_COLUMNS} FROM kyc_submissions WHERE id = $1"
        )))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        (view, None)
    };
    tx.commit().await?;
    if let Some(told) = told {
        tell_auth(&s, &told).await;
    }
    Ok(error::with_status(StatusCode::CREATED, view))
}

#[derive(Serialize, ToSchema)]
struct KycStatus {
    user_id: Uuid,
    /// `none` before the first submission, then the latest submission's status.
    kyc_status: String,
    /// The latest submission; who decided or revoked it is `compliance` (an officer) or
    /// `auto`, never the officer's own name.
    latest: Option<SubmissionView>,
}

/// A user's AML risk, for compliance only: a customer who could watch it rise would
/// learn which of their payments raised an alert.
#[derive(Serialize, ToSchema)]
struct Risk {
    user_id: Uuid,
    /// 0 (no concern) to 100: ten points per open alert, forty per flagged one.
    risk_score: i64,
}

#[utoipa::path(get, path = "/api/v1/kyc/status", tag = "kyc",
    responses((status = 200, body = KycStatus), (status = 403, body = ErrorEnvelope, description = "not a user token")))]
async fn status(State(s): State<AppState>, UserId(user): UserId) -> ApiResult {
    let latest: Option<SubmissionView> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {SUBMISSION_COLUMNS} FROM kyc_submissions WHERE user_id = $1 ORDER BY created_at DESC LIMIT 1"
    )))
    .bind(user)
    .fetch_optional(&s.pool)
    .await?;
    // The customer learns that an officer decided, not which one: a name is a lead for
    // whoever wants to pressure or impersonate them. Nor why a verification was revoked:
    // "sanctions match" would tip them off. A rejection's reason stays, since it says
    // what to send instead.
    let latest = latest.map(|l| SubmissionView {
        decided_by: l.decided_by.map(as_the_customer_sees_it),
        revoked_by: l.revoked_by.map(as_the_customer_sees_it),
        revoked_reason: None,
        ..l
    });
    Ok(error::ok(KycStatus {
        user_id: user,
        kyc_status: latest
            .as_ref()
            .map_or_else(|| "none".to_owned(), |l| l.status.clone()),
        latest,
    }))
}

#[utoipa::path(get, path = "/api/v1/aml/users/{id}/risk", tag = "aml", params(("id" = Uuid, Path)),
    responses((status = 200, body = Risk), (status = 400, body = ErrorEnvelope, description = "the id is not a UUID"),
        (status = 403, body = ErrorEnvelope, description = "requires the role compliance, and not about the officer themselves")))]
async fn risk(State(s): State<AppState>, who: Identity, Path(user): Path<Uuid>) -> ApiResult {
    who.require_role("compliance")?;
    if who.user_id().ok() == Some(user) {
        return Err(ApiError::forbidden(
            "an officer does not read their own AML risk; another compliance officer may",
        ));
    }
    Ok(error::ok(Risk {
        user_id: user,
        risk_score: crate::aml::risk_score(&s.pool, user).await?,
    }))
}

/// `decided_by` of a submission `KYC_AUTO_APPROVE` approved.
const AUTO: &str = "auto";

/// Who decided, as the customer is told: `auto`, or `compliance` for any officer.
fn as_the_customer_sees_it(decided_by: String) -> String {
    if decided_by == AUTO {
        decided_by
    } else {
        "compliance".to_owned()
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Review {
    pub decision: Decision,
    #[schema(schema_with = text::schema::<Reason>)]
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Reject,
}

fn reviewer(who: &Identity) -> Result<String, ApiError> {
    who.require_role("compliance")?;
    Ok(who.email.clone().unwrap_or_else(|| who.subject.clone()))
}

/// Whom the case `id` in `table` (a submission or an alert) is about: `404` when there
/// is no such case, `403` when it is the reviewer or someone they exchanged money with.
/// Four eyes: a reviewer never decides their own submission or an alert about a
/// payment they made or are paid by, or one compliance officer could verify or clear
/// themselves; nor an alert about someone they paid or were paid by
/// ([`exchanged_money_with`]).
async fn case_for_another(
    tx: &mut sqlx::PgConnection,
    who: &Identity,
    table: CaseTable,
    id: Uuid,
) -> Result<(), ApiError> {
    // An alert is about its payment's payer and, when C named one, its payee: an
    // officer paid by a held transfer is as interested in it as the one who sent it.
    let (query, missing) = match table {
        CaseTable::Submissions => (
            "SELECT user_id, NULL::uuid FROM kyc_submissions WHERE id = $1",
            "submission not found",
        ),
        CaseTable::Alerts => (
            "SELECT user_id, payee_user_id FROM aml_alerts WHERE id = $1",
            "alert not found",
        ),
    };
    let (subject_of_case, payee): (Uuid, Option<Uuid>) = sqlx::query_as(query)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| ApiError::not_found(missing))?;
    // As ids, not text: the same id spelled otherwise (upper case, no hyphens) is the
    // same person.
    let me = who.user_id().ok();
    if me.is_some() && (me == Some(subject_of_case) || me == payee) {
        return Err(ApiError::forbidden(
            "a reviewer cannot decide a case about themselves; another compliance officer must",
        ));
    }
    let parties: Vec<Uuid> = std::iter::once(subject_of_case).chain(payee).collect();
    if let (CaseTable::Alerts, Some(me)) = (table, me)
        && exchanged_money_with(tx, me, &parties).await?
    {
        return Err(ApiError::counterparty("a party to this alert"));
    }
    Ok(())
}

/// Whether any payment E observed went between `officer` and one of `parties`, either
/// way, at any time. A user who paid the officer (a dollar to be noticed, a reward after
/// the fact), or whom the officer paid, has an interest the officer shares, whichever
/// end of the held transfer they are; a pattern (velocity, structuring) stands for the
/// user's payments, any of which may be to the officer. C's release of a held payment
/// refuses the same officers (services/payment's `for_another`).
async fn exchanged_money_with(
    tx: &mut sqlx::PgConnection,
    officer: Uuid,
    parties: &[Uuid],
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM payment_observations \
           WHERE (user_id = ANY($2) AND payee_user_id = $1) \
              OR (user_id = $1 AND payee_user_id = ANY($2)))",
    )
    .bind(officer)
    .bind(parties)
    .fetch_one(&mut *tx)
    .await
}

/// The tables whose rows are cases a compliance officer decides.
#[derive(Clone, Copy)]
enum CaseTable {
    Submissions,
    Alerts,
}

#[utoipa::path(post, path = "/api/v1/kyc/{id}/review", tag = "kyc", params(("id" = Uuid, Path)), request_body = Review,
    responses((status = 200, body = SubmissionView),
        (status = 400, body = ErrorEnvelope, description = "the id is not a UUID, or the reason is not 1 to 500 characters or is all white space"),
        (status = 403, body = ErrorEnvelope, description = "requires the role compliance; never the reviewer's own submission"),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope, description = "already decided, or an approval of a document another account holds (pending or verified) or one whose verification was revoked (`details.reason` `document_spoken_for`)")))]
async fn review(
    State(s): State<AppState>,
    who: Identity,
    Path(id): Path<Uuid>,
    Json(req): Json<Review>,
) -> ApiResult {
    let by = reviewer(&who)?;
    let why = Reason::parse(&req.reason)?;
    let status = match req.decision {
        Decision::Approve => identity::KycStatus::Verified,
        Decision::Reject => identity::KycStatus::Rejected,
    };
    let mut tx = s.pool.begin().await?;
    case_for_another(&mut tx, &who, CaseTable::Submissions, id).await?;
    if status == identity::KycStatus::Verified && document_spoken_for(&mut tx, id).await? {
        return Err(ApiError::conflict(
            "this document is pending or verified for another account, or a verification on it \
             was revoked: reject this submission",
        )
        .with_details(serde_json::json!({"reason": "document_spoken_for"})));
    }
    let (view, told) = decide(&mut tx, id, status, &by, Some(why.as_str())).await?;
    tx.commit().await?;
    tell_auth(&s, &told).await;
    Ok(error::ok(view))
}

/// Revokes a user's verification: their verified submission becomes `revoked`, A is
/// told (`user.kyc_updated` with `rejected`), and from then on B refuses the user a new
/// wallet and any payment, deposit or withdrawal until a new document is verified.
/// Four eyes: never the officer's own.
#[utoipa::path(post, path = "/api/v1/kyc/users/{user_id}/revoke", tag = "kyc", params(("user_id" = Uuid, Path)),
    request_body = Reasoned,
    responses((status = 200, body = SubmissionView, description = "the submission whose verification was revoked"),
        (status = 400, body = ErrorEnvelope, description = "the id is not a UUID, or the reason is not 1 to 500 characters or is all white space"),
        (status = 403, body = ErrorEnvelope, description = "requires the role compliance; never the officer's own verification"),
        (status = 404, body = ErrorEnvelope, description = "the user never submitted a document"),
        (status = 409, body = ErrorEnvelope, description = "the user is not verified")))]
async fn revoke(
    State(s): State<AppState>,
    who: Identity,
    Path(user_id): Path<Uuid>,
    Json(req): Json<Reasoned>,
) -> ApiResult {
    let by = reviewer(&who)?;
    let why = Reason::parse(&req.reason)?;
    if who.user_id().ok() == Some(user_id) {
        return Err(ApiError::forbidden(
            "an officer cannot revoke their own verification; another compliance officer must",
        ));
    }
    let mut tx = s.pool.begin().await?;
    // Serializes with a review of the same user's submissions.
    sqlx::query("SELECT id FROM kyc_submissions WHERE user_id = $1 FOR UPDATE")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let revoked: Option<SubmissionView> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE kyc_submissions SET status = 'revoked', revoked_by = $2, revoked_reason = $3, \
           revoked_at = clock_timestamp() \
         WHERE user_id = $1 AND status = 'verified' RETURNING {SUBMISSION_COLUMNS}"
    )))
    .bind(user_id)
    .bind(&by)
    .bind(why.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(view) = revoked else {
        let any: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM kyc_submissions WHERE user_id = $1)")
                .bind(user_id)
                .fetch_one(&mut *tx)
                .await?;
        return Err(if any {
            ApiError::conflict("this user's KYC is not verified")
        } else {
            ApiError::not_found("this user never submitted a document")
        });
    };
    let told = Told {
        user_id,
        decision: KycDecision {
            kyc_status: identity::KycStatus::Rejected,
            decided_at: Some(
                view.revoked_at
                    .ok_or_else(|| ApiError::internal(&"a revocation without a time"))?,
            ),
        },
    };
    enqueue_decision(&mut tx, &told, view.id).await?;
    tx.commit().await?;
    tell_auth(&s, &told).await;
    Ok(error::ok(view))
}

#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Alert {
    pub id: Uuid,
    pub user_id: Uuid,
    pub payment_id: Option<Uuid>,
    pub rule: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub status: String,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
}

/// An alert's columns, its `details` with `since_raised` (`{count, total}`) when
/// payments were added to it while it was open ([`crate::aml`]'s `OBSERVE`).
pub const ALERT_COLUMNS: &str = "id, user_id, payment_id, rule, \
    details || coalesce((SELECT jsonb_build_object('since_raised', jsonb_build_object( \
        'count', count(*), 'total', trim_scale(sum(p.reference_value))::text)) \
      FROM aml_alert_payments p WHERE p.alert_id = aml_alerts.id HAVING count(*) > 0), \
      '{}'::jsonb) AS details, \
    status, decided_by, reason, created_at, decided_at";

/// `?status=` of `GET /api/v1/aml/alerts` (documentation only: the handler checks the
/// string).
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Open,
    Cleared,
    Flagged,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertQuery {
    status: Option<String>,
    user_id: Option<Uuid>,
    cursor: Option<Uuid>,
    limit: Option<u16>,
}

/// A page of alerts, oldest first.
#[derive(Serialize, ToSchema)]
pub struct AlertPage {
    pub items: Vec<Alert>,
    /// Pass as `cursor` for the next (newer) page; absent on the last page.
    pub next_cursor: Option<Uuid>,
}

/// The alerts, oldest first, in pages: every alert is reachable however many come
/// after it (a newest-first list of fixed length let a flood of held deposits push the
/// alerts an officer should see off its end).
#[utoipa::path(get, path = "/api/v1/aml/alerts", tag = "aml",
    params(("status" = Option<AlertStatus>, Query),
        ("user_id" = Option<Uuid>, Query, description = "only the alerts about this user"),
        ("cursor" = Option<Uuid>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<u16>, Query, minimum = 0, maximum = 65535,
            description = "page size, default 100; any value is clamped to 1..=500")),
    responses((status = 200, body = AlertPage),
        (status = 400, body = ErrorEnvelope, description = "status is not open, cleared or flagged, or a bad or unknown query parameter"),
        (status = 403, body = ErrorEnvelope, description = "requires the role compliance")))]
async fn alerts(
    State(s): State<AppState>,
    who: Identity,
    Query(q): Query<AlertQuery>,
) -> ApiResult {
    who.require_role("compliance")?;
    if let Some(st) = &q.status
        && !["open", "cleared", "flagged"].contains(&st.as_str())
    {
        return Err(ApiError::invalid_field(
            "status",
            "status is open, cleared or flagged",
        ));
    }
    let size = page::size(q.limit, 100, 500);
    // Never the alerts about the officer (as payer or payee): they would learn that,
    // and why, their own payments are watched. A cursor that names no alert starts
    // nowhere: an empty page, not the first one again.
    let rows: Vec<Alert> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ALERT_COLUMNS} FROM aml_alerts WHERE ($1::text IS NULL OR status = $1) \
           AND ($2::uuid IS NULL OR (user_id <> $2 AND payee_user_id IS DISTINCT FROM $2)) \
           AND ($3::uuid IS NULL OR user_id = $3) \
           AND ($4::uuid IS NULL OR (created_at, id) > \
             (SELECT created_at, id FROM aml_alerts WHERE id = $4)) \
         ORDER BY created_at, id LIMIT $5"
    )))
    .bind(q.status)
    .bind(who.user_id().ok())
    .bind(q.user_id)
    .bind(q.cursor)
    .bind(page::fetch(size))
    .fetch_all(&s.pool)
    .await?;
    let (items, next_cursor) = page::split(rows, size, |a| a.id);
    Ok(error::ok(AlertPage { items, next_cursor }))
}

/// A compliance decision's reason: clearing or flagging an alert, revoking a
/// verification.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reasoned {
    #[schema(schema_with = text::schema::<Reason>)]
    pub reason: String,
}

#[utoipa::path(post, path = "/api/v1/aml/alerts/{id}/clear", tag = "aml", params(("id" = Uuid, Path)), request_body = Reasoned,
    responses((status = 200, body = Alert),
        (status = 400, body = ErrorEnvelope, description = "the id is not a UUID, or the reason is not 1 to 500 characters or is all white space"),
        (status = 403, body = ErrorEnvelope, description = "requires the role compliance; never an alert about the officer's own payment"),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope, description = "already decided")))]
async fn clear(
    s: State<AppState>,
    who: Identity,
    id: Path<Uuid>,
    body: Json<Reasoned>,
) -> ApiResult {
    decide_alert(s, who, id, body, "cleared").await
}

#[utoipa::path(post, path = "/api/v1/aml/alerts/{id}/flag", tag = "aml", params(("id" = Uuid, Path)), request_body = Reasoned,
    responses((status = 200, body = Alert),
        (status = 400, body = ErrorEnvelope, description = "the id is not a UUID, or the reason is not 1 to 500 characters or is all white space"),
        (status = 403, body = ErrorEnvelope, description = "requires the role compliance; never an alert about the officer's own payment"),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope, description = "already decided")))]
async fn flag(
    s: State<AppState>,
    who: Identity,
    id: Path<Uuid>,
    body: Json<Reasoned>,
) -> ApiResult {
    decide_alert(s, who, id, body, "flagged").await
}

/// A compliance decision on an open alert; its event releases or fails the payment.
async fn decide_alert(
    State(s): State<AppState>,
    who: Identity,
    Path(id): Path<Uuid>,
    Json(req): Json<Reasoned>,
    status: &str,
) -> ApiResult {
    let by = reviewer(&who)?;
    let why = Reason::parse(&req.reason)?;
    let mut tx = s.pool.begin().await?;
    case_for_another(&mut tx, &who, CaseTable::Alerts, id).await?;
    let alert: Alert = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE aml_alerts SET status = $2, decided_by = $3, reason = $4, decided_at = now() \
         WHERE id = $1 AND status = 'open' RETURNING {ALERT_COLUMNS}"
    )))
    .bind(id)
    .bind(status)
    .bind(&by)
    .bind(why.as_str())
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::conflict("this alert was already decided"))?;
    let (event_type, outcome) = if status == "cleared" {
        (types::AML_CLEARED, HoldOutcome::Cleared)
    } else {
        (types::AML_FLAGGED, HoldOutcome::Flagged)
    };
    let decision = AmlDecision {
        alert_id: alert.id,
        payment_id: alert.payment_id,
        user_id: alert.user_id,
        rule: alert.rule.clone(),
        reason: why.as_str().to_owned(),
    };
    // C releases or fails the payment this alert holds on E's call alone (the event is
    // for F): a notice tells it until it has.
    let held = decision.held_payment().map(|payment| {
        let hold = HoldDecision {
            alert_id: alert.id,
            outcome,
            decided_at: alert.decided_at.unwrap_or_else(Utc::now),
        };
        (payment, hold)
    });
    if let Some((payment, hold)) = &held {
        notices::record(&mut tx, Target::Payment, *payment, hold, hold.decided_at).await?;
    }
    let event =
        Event::new(catalog::KYC.name, event_type, &decision).map_err(|e| ApiError::internal(&e))?;
    outbox::enqueue(&mut tx, &event).await?;
    tx.commit().await?;
    if let Some((payment, hold)) = &held {
        notices::tell_now(
            &s.pool,
            &s.recipients,
            Target::Payment,
            *payment,
            hold,
            hold.decided_at,
            TELL_TIMEOUT,
        )
        .await;
    }
    Ok(error::ok(alert))
}
