//! Storage helpers against a real PostgreSQL server.

use finflow_platform::db::{self, TestDb};
use finflow_platform::{Amount, ApiError, Currency, ErrorCode, Money};
use secrecy::SecretString;
use sqlx::ConnectOptions as _;
use sqlx::postgres::PgSslMode;

#[tokio::test]
async fn each_test_database_is_fresh_migrated_and_dropped_afterwards() {
    let db = TestDb::new(None).await;
    let name: String = db::scalar(&db.pool, "SELECT current_database()").await;
    assert!(name.starts_with("finflow_test_"));
    let pending: i64 = db::scalar(&db.pool, "SELECT count(*) FROM outbox").await;
    assert_eq!(pending, 0, "the platform tables exist and are empty");
    let server = db.options();
    drop(db);
    let mut admin =
        <sqlx::PgConnection as sqlx::Connection>::connect_with(&server.database("postgres"))
            .await
            .unwrap();
    let exists: bool = db::scalar_of(
        &mut admin,
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
        &name,
    )
    .await;
    assert!(!exists, "{name} was not dropped");
}

/// The test database's URL with `sslmode` (and more query parameters) set.
fn url_with(db: &TestDb, mode: PgSslMode, more: &str) -> SecretString {
    let url = db.options().ssl_mode(mode).to_url_lossy().to_string();
    SecretString::from(format!("{url}{more}"))
}

async fn encrypted(pool: &sqlx::PgPool) -> bool {
    db::scalar(
        pool,
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .await
}

#[tokio::test]
async fn a_database_url_with_sslmode_require_is_served_over_tls() {
    let db = TestDb::new(None).await;
    let pool = db::connect(&url_with(&db, PgSslMode::Require, ""), 1)
        .await
        .expect("the server offers TLS (dev/backing-services' own server turns it on)");
    assert!(encrypted(&pool).await, "the session is encrypted");
}

#[tokio::test]
async fn verify_ca_trusts_the_root_it_names_and_verify_full_also_the_name_it_certifies() {
    let db = TestDb::new(None).await;
    // The test server's certificate is self-signed, its own root (Debian's snakeoil
    // certificate, or the one dev/backing-services makes), and neither names an address.
    let cert: String = db::scalar(
        &db.pool,
        "SELECT CASE WHEN left(setting, 1) = '/' THEN setting \
         ELSE current_setting('data_directory') || '/' || setting END \
         FROM pg_settings WHERE name = 'ssl_cert_file'",
    )
    .await;
    let root = format!("&sslrootcert={cert}");
    let pool = db::connect(&url_with(&db, PgSslMode::VerifyCa, &root), 1)
        .await
        .expect("the server's certificate is verified against the root named");
    assert!(encrypted(&pool).await, "the session is encrypted");
    // At 127.0.0.1 a certificate that does not name the address proves nothing: whoever
    // answers there could be a man in the middle holding it.
    let by_address = db::connect(&url_with(&db, PgSslMode::VerifyFull, &root), 1).await;
    let error = by_address.expect_err("a certificate for another name is refused");
    assert!(error.to_string().contains("certificate"), "{error}");
    // A root that cannot be read is an error, not a silent fallback.
    let missing = db::connect(
        &url_with(
            &db,
            PgSslMode::VerifyCa,
            "&sslrootcert=/nonexistent/root.pem",
        ),
        1,
    )
    .await;
    assert!(missing.is_err(), "a missing root file is refused");
}

#[tokio::test]
async fn money_round_trips_through_numeric_20_4_without_loss() {
    let db = TestDb::new(None).await;
    sqlx::query("CREATE TABLE m (amount NUMERIC(20,4) NOT NULL, currency TEXT NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    let money = Money::parse("9999999999999999.99", "USD").unwrap();
    sqlx::query("INSERT INTO m VALUES ($1, $2)")
        .bind(money.amount())
        .bind(money.currency())
        .execute(&db.pool)
        .await
        .unwrap();
    let (amount, currency): (Amount, Currency) = sqlx::query_as("SELECT amount, currency FROM m")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(Money::new(amount, currency).unwrap(), money);
    let sum: Amount = db::scalar(&db.pool, "SELECT sum(amount) - 0.01 FROM m").await;
    assert_eq!(sum, Amount::parse("9999999999999999.98").unwrap());
}

#[tokio::test]
async fn a_unique_violation_becomes_conflict_naming_the_constraint_not_the_sql() {
    let db = TestDb::new(None).await;
    sqlx::query("CREATE TABLE u (email TEXT CONSTRAINT users_email_key UNIQUE)")
        .execute(&db.pool)
        .await
        .unwrap();
    let insert = || sqlx::query("INSERT INTO u VALUES ('a@b.c')").execute(&db.pool);
    insert().await.unwrap();
    let err = ApiError::from(insert().await.unwrap_err());
    assert_eq!(err.code, ErrorCode::Conflict);
    assert_eq!(err.details.unwrap()["constraint"], "users_email_key");
    assert!(!err.message.contains("INSERT"));
}

#[tokio::test]
async fn ensure_database_creates_a_missing_database_and_tolerates_an_existing_one() {
    let server = db::test_server_url();
    let name = format!("finflow_ensure_{}", uuid::Uuid::new_v4().simple());
    let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
    let url: SecretString = format!("{base}/{name}").into();
    db::ensure_database(&url).await.unwrap();
    db::ensure_database(&url).await.unwrap();
    let pool = db::connect(&url, 1).await.expect("the database exists now");
    db::migrate(&pool, None).await.unwrap();
    db::migrate(&pool, None)
        .await
        .expect("migrations are idempotent");
    pool.close().await;
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&server)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}
