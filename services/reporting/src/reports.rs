//! Reports over the read models, and the dashboard page.

use std::sync::{Arc, PoisonError, RwLock};

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use finflow_platform::error::{self, ErrorEnvelope};
use finflow_platform::events::depth::QueueDepth;
use finflow_platform::{Amount, ApiError, ApiResult, Identity, Query, UserId};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub queues: QueueHealth,
}

/// The newest queue depths read from RabbitMQ, shared with the sampling task.
#[derive(Debug, Clone, Default)]
pub struct QueueHealth(Arc<RwLock<Option<QueueSample>>>);

/// One reading of every watched queue.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueueSample {
    pub sampled_at: DateTime<Utc>,
    /// Queues that exist, in the order watched (each followed by its dead letters).
    pub queues: Vec<QueueDepth>,
}

impl QueueHealth {
    pub fn record(&self, queues: Vec<QueueDepth>) {
        let sample = QueueSample {
            sampled_at: Utc::now(),
            queues,
        };
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(sample);
    }

    pub fn latest(&self) -> Option<QueueSample> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// What the document has beside what the routes' attributes bring: schemas no route
/// names; its title and description come from the service catalog
/// ([`finflow_platform::service::run`] sets them).
#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(ReportFormat)))]
pub(crate) struct ApiDoc;

/// The route table; the dashboard's page and script are not API.
pub fn routes() -> OpenApiRouter<AppState> {
    finflow_platform::route_table!(ApiDoc: transactions; users; compliance; summary; statement)
        .route("/dashboard", get(dashboard))
        .route("/dashboard/app.js", get(dashboard_js))
}

/// The reporting period: `from` inclusive, `to` exclusive; defaults to the last 30 days.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Period {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    status: Option<String>,
    currency: Option<String>,
    format: Option<String>,
}

/// The first instant PostgreSQL's `timestamptz` holds, in Unix seconds:
/// 4714-11-24T00:00:00Z BC (year -4713 in ISO 8601 and chrono), Julian day 0.
const PG_TIMESTAMP_MIN_SECS: i64 = -210_866_803_200;
/// The first instant past PostgreSQL's `timestamptz` range, in Unix seconds:
/// 294277-01-01T00:00:00Z (the last one held is 294276-12-31T23:59:59.999999Z). Beyond
/// chrono's last year (262143), so today only the lower end can refuse a bound.
const PG_TIMESTAMP_END_SECS: i64 = 9_224_318_016_000;

/// Whether PostgreSQL can hold `t` as a `timestamptz` (chrono reaches further, and a
/// bound outside the range is a database error, not an empty report).
fn storable(t: DateTime<Utc>) -> bool {
    (PG_TIMESTAMP_MIN_SECS..PG_TIMESTAMP_END_SECS).contains(&t.timestamp())
}

const OUT_OF_RANGE: &str =
    "must be between -4713-11-24T00:00:00Z (4714 BC) and 294276-12-31T23:59:59.999999Z";

impl Period {
    fn bounds(&self) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
        // `to` is checked before the default `from` is derived from it: 30 days before
        // chrono's first date would overflow.
        if let Some(to) = self.to.filter(|t| !storable(*t)) {
            return Err(ApiError::invalid_field(
                "to",
                format!("to {OUT_OF_RANGE}, not {}", to.to_rfc3339()),
            ));
        }
        let to = self
            .to
            .unwrap_or_else(|| Utc::now() + chrono::Duration::seconds(1));
        let from = self.from.unwrap_or(to - chrono::Duration::days(30));
        if !storable(from) {
            return Err(ApiError::invalid_field(
                "from",
                format!("from {OUT_OF_RANGE}, not {}", from.to_rfc3339()),
            ));
        }
        // A `from` at or after `to` is a period with nothing in it, not an error: no
        // document can state that one parameter comes before another.
        Ok((from, to.max(from)))
    }
}

/// A sum of amounts, as PostgreSQL's text of it (`sum(amount)::text`). Not an
/// [`Amount`]: a few payments together pass what one may be (under 10^16), and such a
/// total read as one failed the whole report.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::Type, PartialEq, Eq)]
#[sqlx(transparent)]
#[schema(value_type = String, example = "18000000000000000.0000")]
pub struct Total(String);

impl Total {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Money moved per currency and kind, from B's ledger as posted.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow, PartialEq, Eq)]
pub struct LedgerTotal {
    pub currency: String,
    pub kind: String,
    pub entries: i64,
    pub amount: Total,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct PaymentLine {
    pub payment_id: Uuid,
    /// Who made the payment. Absent on a statement's line for money someone else sent
    /// the caller: a statement does not tell its reader who the sender is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    pub kind: String,
    pub status: String,
    #[schema(value_type = String)]
    pub amount: Amount,
    pub currency: String,
    pub failure_code: Option<String>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// `?format=` of `GET /api/v1/reports/transactions` (documentation only: the handler
/// reads the string and refuses anything else with 400).
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReportFormat {
    Json,
    Csv,
}

#[derive(Serialize, ToSchema)]
struct TransactionReport {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    ledger_totals: Vec<LedgerTotal>,
    /// The period's payments, oldest first, at most [`MAX_REPORT_LINES`].
    payments: Vec<PaymentLine>,
    /// More payments fell in the period than `payments` lists: narrow the period (the
    /// totals count them all).
    truncated: bool,
}

/// The most payments one transactions report lists.
pub const MAX_REPORT_LINES: usize = 10_000;

/// The header a CSV transactions report carries, `true`, when it lists only the first
/// [`MAX_REPORT_LINES`] of the period's payments.
pub const TRUNCATED_HEADER: &str = "finflow-report-truncated";

fn staff(who: &Identity) -> Result<(), ApiError> {
    who.require_any_role(&["ops", "compliance"])
}

pub async fn ledger_totals(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    currency: Option<&str>,
) -> Result<Vec<LedgerTotal>, sqlx::Error> {
    sqlx::query_as(
        "SELECT currency, kind, count(*) AS entries, sum(amount)::text AS amount FROM ledger_rm \
         WHERE posted_at >= $1 AND posted_at < $2 AND ($3::text IS NULL OR currency = $3) \
         GROUP BY currency, kind ORDER BY currency, kind",
    )
    .bind(from)
    .bind(to)
    .bind(currency)
    .fetch_all(pool)
    .await
}

const PAYMENT_LINE: &str =
    "payment_id, user_id, kind, status, amount, currency, failure_code, created_at, completed_at";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Payments and ledger totals for a period (`ops`, `compliance`); `?format=csv` gives
/// the payments as CSV.
#[utoipa::path(get, path = "/api/v1/reports/transactions", tag = "reports",
    params(
        ("from" = Option<DateTime<Utc>>, Query,
            description = "inclusive, RFC 3339; default 30 days before `to` (at or after `to`, nothing is selected); within \
                -4713-11-24T00:00:00Z..294276-12-31T23:59:59.999999Z"),
        ("to" = Option<DateTime<Utc>>, Query,
            description = "exclusive, RFC 3339; default now; within -4713-11-24T00:00:00Z..294276-12-31T23:59:59.999999Z"),
        ("status" = Option<String>, Query,
            description = "only payments in exactly this status (PENDING, ON_HOLD, COMPLETED, FAILED, REVERSED); \
                any other value is accepted and matches nothing"),
        ("currency" = Option<String>, Query,
            description = "only this currency code (matched exactly); any other value is accepted and matches nothing"),
        ("format" = Option<ReportFormat>, Query, description = "json (default) or csv (the payments only, as text/csv)")),
    responses(
        (status = 200, description = "the report; with `format=csv`, the payments as CSV. At most 10,000 payments, \
            oldest first: `truncated` (CSV: the header `finflow-report-truncated: true`) when the period holds more",
            content((TransactionReport = "application/json"), (String = "text/csv"))),
        (status = 400, body = ErrorEnvelope,
            description = "a bad or unknown query parameter, a bound outside PostgreSQL's range, or another format"),
        (status = 403, body = ErrorEnvelope, description = "requires the role ops or compliance")))]
async fn transactions(
    State(s): State<AppState>,
    who: Identity,
    Query(q): Query<Period>,
) -> ApiResult {
    staff(&who)?;
    let (from, to) = q.bounds()?;
    // Before any work: a report in a format nobody reads costs nothing.
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::invalid_field("format", "format is json or csv")),
    };
    let mut payments: Vec<PaymentLine> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PAYMENT_LINE} FROM payments_rm WHERE created_at >= $1 AND created_at < $2 \
           AND ($3::text IS NULL OR status = $3) AND ($4::text IS NULL OR currency = $4) \
         ORDER BY created_at, payment_id LIMIT {}",
        MAX_REPORT_LINES + 1
    )))
    .bind(from)
    .bind(to)
    .bind(q.status.as_deref())
    .bind(q.currency.as_deref())
    .fetch_all(&s.pool)
    .await?;
    let truncated = payments.len() > MAX_REPORT_LINES;
    payments.truncate(MAX_REPORT_LINES);
    if !csv {
        let ledger_totals = ledger_totals(&s.pool, from, to, q.currency.as_deref()).await?;
        return Ok(error::ok(TransactionReport {
            from,
            to,
            ledger_totals,
            payments,
            truncated,
        }));
    }
    let mut out = String::from(
        "payment_id,user_id,kind,status,amount,currency,failure_code,created_at,completed_at\n",
    );
    for p in &payments {
        let fields = [
            p.payment_id.to_string(),
            p.user_id.map(|u| u.to_string()).unwrap_or_default(),
            p.kind.clone(),
            p.status.clone(),
            p.amount.to_string(),
            p.currency.clone(),
            p.failure_code.clone().unwrap_or_default(),
            p.created_at.to_rfc3339(),
            p.completed_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
        ];
        out.push_str(
            &fields
                .iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push('\n');
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::HeaderName::from_static(TRUNCATED_HEADER),
                if truncated { "true" } else { "false" },
            ),
        ],
        out,
    )
        .into_response())
}

#[derive(Serialize, ToSchema, sqlx::FromRow)]
struct Count {
    key: Option<String>,
    count: i64,
}

#[derive(Serialize, ToSchema)]
struct UsersReport {
    signups: i64,
    kyc_funnel: Vec<Count>,
    tiers: Vec<Count>,
}

async fn counts(pool: &PgPool, sql: &'static str) -> Result<Vec<Count>, sqlx::Error> {
    sqlx::query_as(sql).fetch_all(pool).await
}

async fn users_report(pool: &PgPool) -> Result<UsersReport, sqlx::Error> {
    let signups: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users_rm WHERE created_at IS NOT NULL")
            .fetch_one(pool)
            .await?;
    Ok(UsersReport {
        signups,
        kyc_funnel: counts(
            pool,
            "SELECT kyc_status AS key, count(*) AS count FROM users_rm GROUP BY 1 ORDER BY 1",
        )
        .await?,
        tiers: counts(
            pool,
            "SELECT account_tier AS key, count(*) AS count FROM users_rm GROUP BY 1 ORDER BY 1",
        )
        .await?,
    })
}

/// Sign-ups, the KYC funnel and the tier mix (`ops`, `compliance`).
#[utoipa::path(get, path = "/api/v1/reports/users", tag = "reports",
    responses((status = 200, body = UsersReport), (status = 403, body = ErrorEnvelope)))]
async fn users(State(s): State<AppState>, who: Identity) -> ApiResult {
    staff(&who)?;
    Ok(error::ok(users_report(&s.pool).await?))
}

#[derive(Serialize, ToSchema, sqlx::FromRow)]
struct HoldVolume {
    currency: String,
    payments: i64,
    amount: Total,
}

#[derive(Serialize, ToSchema)]
pub struct ComplianceReport {
    decisions: Vec<Count>,
    on_hold: Vec<HoldVolume>,
}

pub async fn compliance_report(pool: &PgPool) -> Result<ComplianceReport, sqlx::Error> {
    Ok(ComplianceReport {
        decisions: counts(
            pool,
            "SELECT decision AS key, count(*) AS count FROM aml_rm GROUP BY 1 ORDER BY 1",
        )
        .await?,
        on_hold: sqlx::query_as(
            "SELECT currency, count(*) AS payments, sum(amount)::text AS amount FROM payments_rm \
             WHERE status = 'ON_HOLD' GROUP BY currency ORDER BY currency",
        )
        .fetch_all(pool)
        .await?,
    })
}

/// AML decisions and the volume waiting on hold (`compliance`, `ops`).
#[utoipa::path(get, path = "/api/v1/reports/compliance", tag = "reports",
    responses((status = 200, body = ComplianceReport), (status = 403, body = ErrorEnvelope)))]
async fn compliance(State(s): State<AppState>, who: Identity) -> ApiResult {
    who.require_any_role(&["compliance", "ops"])?;
    Ok(error::ok(compliance_report(&s.pool).await?))
}

#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct DayVolume {
    day: String,
    currency: String,
    payments: i64,
    amount: Total,
}

/// Settled payments (completed, or reversed after) per day and currency, the last 30
/// days.
pub async fn volume_by_day(pool: &PgPool) -> Result<Vec<DayVolume>, sqlx::Error> {
    sqlx::query_as(
        "SELECT to_char(date_trunc('day', created_at), 'YYYY-MM-DD') AS day, currency, count(*) AS payments, \
                sum(amount)::text AS amount \
         FROM payments_rm WHERE status IN ('COMPLETED', 'REVERSED') AND created_at > now() - interval '30 days' \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
}

#[derive(Serialize, ToSchema)]
struct Summary {
    volume_by_day: Vec<DayVolume>,
    by_status: Vec<Count>,
    users: UsersReport,
    compliance: ComplianceReport,
    /// Events processed by F and the newest one's time: how fresh the reports are.
    events_processed: i64,
    last_event_at: Option<DateTime<Utc>>,
    /// The event queues as RabbitMQ last reported them (absent until the first reading).
    queue_health: Option<QueueSample>,
}

/// Everything the dashboard draws (`ops`, `compliance`).
#[utoipa::path(get, path = "/api/v1/reports/summary", tag = "reports",
    responses((status = 200, body = Summary), (status = 403, body = ErrorEnvelope)))]
async fn summary(State(s): State<AppState>, who: Identity) -> ApiResult {
    staff(&who)?;
    let volume_by_day = volume_by_day(&s.pool).await?;
    let (events_processed, last_event_at): (i64, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT count(*), max(processed_at) FROM processed_events")
            .fetch_one(&s.pool)
            .await?;
    Ok(error::ok(Summary {
        volume_by_day,
        by_status: counts(
            &s.pool,
            "SELECT status AS key, count(*) AS count FROM payments_rm GROUP BY 1 ORDER BY 1",
        )
        .await?,
        users: users_report(&s.pool).await?,
        compliance: compliance_report(&s.pool).await?,
        events_processed,
        last_event_at,
        queue_health: s.queues.latest(),
    }))
}

/// One line of a user's statement: a payment as it touched the user's wallets.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct StatementLine {
    /// `in`: money into one of the user's wallets (their deposit, a transfer they
    /// received); `out`: money out of them (their transfer, their withdrawal).
    #[schema(example = "in")]
    pub direction: String,
    /// The payment; `user_id` is the caller on payments they made and absent on
    /// transfers they received.
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub payment: PaymentLine,
}

/// A user's statement, newest first: the payments they made, whatever their status, and
/// the transfers into their wallets (the wallets read model knows each wallet's owner).
/// A received transfer shows once it moved money (`COMPLETED`, or `REVERSED` after):
/// until then, and why it was held or failed, is the sender's business.
pub async fn statement_lines(pool: &PgPool, user: Uuid) -> Result<Vec<StatementLine>, sqlx::Error> {
    sqlx::query_as(
        "SELECT CASE WHEN kind = 'deposit' THEN 'in' ELSE 'out' END AS direction, \
                payment_id, user_id, kind, status, amount, currency, failure_code, created_at, completed_at \
         FROM payments_rm WHERE user_id = $1 \
         UNION ALL \
         SELECT 'in', p.payment_id, NULL::uuid, p.kind, p.status, p.amount, p.currency, p.failure_code, \
                p.created_at, p.completed_at \
         FROM payments_rm p JOIN wallets_rm w ON w.wallet_id = p.to_wallet_id \
         WHERE w.user_id = $1 AND p.user_id <> $1 AND p.kind = 'transfer' \
           AND p.status IN ('COMPLETED', 'REVERSED') \
         ORDER BY created_at DESC, payment_id, direction LIMIT 1000",
    )
    .bind(user)
    .fetch_all(pool)
    .await
}

/// The caller's own statement: money sent and received, each line with its direction.
#[utoipa::path(get, path = "/api/v1/reports/me/statement", tag = "reports",
    responses((status = 200, body = Vec<StatementLine>), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope, description = "not a user token")))]
async fn statement(State(s): State<AppState>, UserId(me): UserId) -> ApiResult {
    Ok(error::ok(statement_lines(&s.pool, me).await?))
}

const DASHBOARD_HTML: &str = include_str!("../assets/dashboard.html");
const DASHBOARD_JS: &str = include_str!("../assets/dashboard.js");

/// The dashboard: a page with its script embedded in the binary (no CDN, works offline).
/// The page is public; the data it fetches needs an `ops` or `compliance` token.
async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD_HTML)
}

async fn dashboard_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        DASHBOARD_JS,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(year: i32, month: u32, day: u32) -> DateTime<Utc> {
        chrono::NaiveDate::from_ymd_opt(year, month, day)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .unwrap()
            .and_utc()
    }

    fn period(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Period {
        Period {
            from,
            to,
            status: None,
            currency: None,
            format: None,
        }
    }

    fn refused_field(p: &Period) -> Option<String> {
        let err = p.bounds().err()?;
        assert_eq!(err.code, finflow_platform::ErrorCode::ValidationError);
        Some(err.details?["field"].as_str()?.to_owned())
    }

    #[test]
    fn bounds_outside_postgres_timestamptz_are_a_validation_error() {
        let pg_min = at(-4713, 11, 24);
        assert_eq!(pg_min.timestamp(), PG_TIMESTAMP_MIN_SECS);
        // chrono ends (year 262143) before PostgreSQL does.
        assert!(DateTime::<Utc>::MAX_UTC.timestamp() < PG_TIMESTAMP_END_SECS);
        assert!(storable(DateTime::<Utc>::MAX_UTC));
        // The survey's 500: 4714 BC before November 24th.
        assert_eq!(
            refused_field(&period(Some(at(-4713, 1, 1)), None)).as_deref(),
            Some("from")
        );
        let before_min = pg_min - chrono::Duration::microseconds(1);
        assert_eq!(
            refused_field(&period(Some(before_min), None)).as_deref(),
            Some("from")
        );
        // `to` near chrono's first date: refused, not 30 days subtracted into a panic.
        assert_eq!(
            refused_field(&period(None, Some(at(-262_143, 1, 5)))).as_deref(),
            Some("to")
        );
        // A default `from` 30 days before a `to` near the minimum falls outside.
        assert_eq!(
            refused_field(&period(None, Some(at(-4713, 12, 1)))).as_deref(),
            Some("from")
        );
        // The range's ends themselves are fine.
        let last = DateTime::<Utc>::MAX_UTC;
        assert_eq!(
            period(Some(pg_min), Some(last)).bounds().ok(),
            Some((pg_min, last))
        );
        assert!(period(Some(at(1, 1, 1)), None).bounds().is_ok());
        assert!(period(None, None).bounds().is_ok());
        // An inverted period is empty, not refused.
        let (from, to) = period(Some(at(2026, 1, 2)), Some(at(2026, 1, 1)))
            .bounds()
            .unwrap();
        assert_eq!(from, to, "nothing is at or after from and before to");
    }

    #[test]
    fn csv_fields_with_separators_are_quoted() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
