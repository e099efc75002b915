//! The ledger against real PostgreSQL: money invariants under concurrency.

use finflow_platform::db::TestDb;
use finflow_platform::{Amount, Currency, ErrorCode};
use finflow_wallet::ledger::{self, Applied, Spend, TransferKind, TransferRequest};
use finflow_wallet::limits::Limit;
use rand::Rng;
use sqlx::PgPool;
use uuid::Uuid;

fn amount(s: &str) -> Amount {
    Amount::parse(s).unwrap()
}

fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

async fn ledger_db() -> TestDb {
    TestDb::new(Some(&finflow_wallet::MIGRATIONS)).await
}

async fn wallet(pool: &PgPool, status: &str) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO wallets (id, user_id, kind, currency, status) VALUES ($1, $2, 'user', 'USD', $3)")
        .bind(id)
        .bind(Uuid::new_v4())
        .bind(status)
        .execute(pool)
        .await
        .unwrap();
    id
}

fn request(
    kind: TransferKind,
    from: Option<Uuid>,
    to: Option<Uuid>,
    value: &str,
) -> TransferRequest {
    TransferRequest {
        transfer_id: Uuid::new_v4(),
        kind,
        from_wallet_id: from,
        to_wallet_id: to,
        amount: amount(value),
        currency: usd(),
    }
}

/// What a USD transfer is worth in the reference currency (USD), under limits no test
/// here reaches.
fn unlimited(req: &TransferRequest) -> Option<Spend> {
    Some(Spend {
        value: req.amount,
        limit: Limit {
            per_transaction: amount("1000000"),
            per_day: amount("1000000000"),
        },
    })
}

async fn deposit(pool: &PgPool, to: Uuid, value: &str) {
    ledger::apply(
        pool,
        &request(TransferKind::Deposit, None, Some(to), value),
        None,
    )
    .await
    .unwrap();
}

async fn balance(pool: &PgPool, id: Uuid) -> Amount {
    sqlx::query_scalar("SELECT balance FROM wallets WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The books: every invariant of DESIGN section 6 that B owns.
async fn assert_books_balance(pool: &PgPool, deposited: Amount) {
    let user_total: Amount =
        sqlx::query_scalar("SELECT coalesce(sum(balance), 0) FROM wallets WHERE kind = 'user'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(user_total, deposited, "money is conserved");
    let all_total: Amount = sqlx::query_scalar("SELECT coalesce(sum(balance), 0) FROM wallets")
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(
        all_total.is_zero(),
        "user money is mirrored by the system account: {all_total}"
    );
    let negative: i64 =
        sqlx::query_scalar("SELECT count(*) FROM wallets WHERE kind = 'user' AND balance < 0")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(negative, 0, "no user balance is negative");
    let drifted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM wallets w WHERE w.balance <> \
         (SELECT coalesce(sum(amount), 0) FROM ledger_lines l WHERE l.wallet_id = w.id)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        drifted, 0,
        "every balance equals the sum of its ledger lines"
    );
    let unbalanced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT entry_id FROM ledger_lines GROUP BY entry_id \
         HAVING sum(amount) <> 0 OR count(*) <> 2) e",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        unbalanced, 0,
        "every journal entry's debits equal its credits"
    );
    let miscounted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ( \
           SELECT w.user_id, (l.created_at AT TIME ZONE 'UTC')::date AS day, \
                  sum(e.reference_value) AS spent \
             FROM ledger_lines l JOIN journal_entries e ON e.id = l.entry_id \
             JOIN wallets w ON w.id = l.wallet_id \
            WHERE l.amount < 0 AND e.kind IN ('transfer', 'withdrawal') GROUP BY 1, 2) t \
         FULL JOIN user_daily_spend s USING (user_id, day) \
         WHERE s.spent IS DISTINCT FROM t.spent",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        miscounted, 0,
        "each user's daily spend counter equals the value of their day's limited debits"
    );
}

#[tokio::test]
async fn two_hundred_concurrent_random_transfers_keep_every_invariant() {
    let db = ledger_db().await;
    let mut wallets = Vec::new();
    for _ in 0..10 {
        let w = wallet(&db.pool, "active").await;
        deposit(&db.pool, w, "100.00").await;
        wallets.push(w);
    }
    let mut rng = rand::rng();
    let requests: Vec<TransferRequest> = (0..200)
        .map(|_| {
            let from = wallets[rng.random_range(0..10)];
            let mut to = wallets[rng.random_range(0..10)];
            while to == from {
                to = wallets[rng.random_range(0..10)];
            }
            let cents: u32 = rng.random_range(1..6000);
            request(
                TransferKind::Transfer,
                Some(from),
                Some(to),
                &format!("{}.{:02}", cents / 100, cents % 100),
            )
        })
        .collect();
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|req| {
            let pool = db.pool.clone();
            tokio::spawn(async move { ledger::apply(&pool, &req, unlimited(&req)).await })
        })
        .collect();
    let mut applied = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok((_, Applied::Now)) => applied += 1,
            Err(e) if e.code == ErrorCode::InsufficientFunds => refused += 1,
            other => panic!("a caller saw {other:?}"),
        }
    }
    assert_eq!(applied + refused, 200);
    assert!(applied > 0);
    assert_books_balance(&db.pool, amount("1000.00")).await;
}

#[tokio::test]
async fn one_transfer_id_sent_twenty_times_concurrently_is_applied_once() {
    let db = ledger_db().await;
    let (a, b) = (
        wallet(&db.pool, "active").await,
        wallet(&db.pool, "active").await,
    );
    deposit(&db.pool, a, "50.00").await;
    let req = request(TransferKind::Transfer, Some(a), Some(b), "20.00");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let pool = db.pool.clone();
            let req = req.clone();
            tokio::spawn(async move { ledger::apply(&pool, &req, unlimited(&req)).await.unwrap() })
        })
        .collect();
    let mut now = 0;
    let mut entries = std::collections::BTreeSet::new();
    for t in tasks {
        let (result, applied) = t.await.unwrap();
        now += usize::from(applied == Applied::Now);
        entries.insert(result.entry_id);
    }
    assert_eq!(now, 1, "applied exactly once");
    assert_eq!(entries.len(), 1, "every caller got the original result");
    assert_eq!(balance(&db.pool, a).await, amount("30"));
    assert_eq!(balance(&db.pool, b).await, amount("20"));
    assert_books_balance(&db.pool, amount("50")).await;
}

#[tokio::test]
async fn a_transfer_id_reused_for_a_different_transfer_is_a_conflict() {
    let db = ledger_db().await;
    let (a, b) = (
        wallet(&db.pool, "active").await,
        wallet(&db.pool, "active").await,
    );
    deposit(&db.pool, a, "50.00").await;
    let mut req = request(TransferKind::Transfer, Some(a), Some(b), "20.00");
    ledger::apply(&db.pool, &req, unlimited(&req))
        .await
        .unwrap();
    req.amount = amount("21.00");
    let err = ledger::apply(&db.pool, &req, unlimited(&req))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Conflict);
    assert_eq!(balance(&db.pool, a).await, amount("30"));
}

#[tokio::test]
async fn a_frozen_wallet_can_neither_send_nor_receive() {
    let db = ledger_db().await;
    let active = wallet(&db.pool, "active").await;
    let frozen = wallet(&db.pool, "active").await;
    deposit(&db.pool, active, "10").await;
    deposit(&db.pool, frozen, "10").await;
    sqlx::query("UPDATE wallets SET status = 'frozen' WHERE id = $1")
        .bind(frozen)
        .execute(&db.pool)
        .await
        .unwrap();
    for (from, to) in [(frozen, active), (active, frozen)] {
        let req = request(TransferKind::Transfer, Some(from), Some(to), "1");
        let err = ledger::apply(&db.pool, &req, unlimited(&req))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::WalletNotActive);
    }
    let err = ledger::apply(
        &db.pool,
        &request(TransferKind::Deposit, None, Some(frozen), "1"),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::WalletNotActive, "not even a deposit");
    assert_books_balance(&db.pool, amount("20")).await;
}

#[tokio::test]
async fn a_withdrawal_beyond_the_balance_is_insufficient_funds_and_moves_nothing() {
    let db = ledger_db().await;
    let w = wallet(&db.pool, "active").await;
    deposit(&db.pool, w, "10.00").await;
    let over = request(TransferKind::Withdrawal, Some(w), None, "10.01");
    let err = ledger::apply(&db.pool, &over, unlimited(&over))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InsufficientFunds);
    let all = request(TransferKind::Withdrawal, Some(w), None, "10.00");
    ledger::apply(&db.pool, &all, unlimited(&all))
        .await
        .unwrap();
    assert_eq!(balance(&db.pool, w).await, amount("0"));
    assert_books_balance(&db.pool, amount("0")).await;
}

#[tokio::test]
async fn amounts_with_more_decimals_than_the_currency_or_zero_are_refused() {
    let db = ledger_db().await;
    let w = wallet(&db.pool, "active").await;
    for bad in ["0.001", "0", "-5"] {
        let err = ledger::apply(
            &db.pool,
            &request(TransferKind::Deposit, None, Some(w), bad),
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::ValidationError, "{bad}");
    }
}

#[tokio::test]
async fn tier_limits_count_what_already_left_today() {
    let db = ledger_db().await;
    let (a, b) = (
        wallet(&db.pool, "active").await,
        wallet(&db.pool, "active").await,
    );
    deposit(&db.pool, a, "1000").await;
    // The day is the database's UTC day: start well clear of its end, or the transfers
    // below could fall on two days and the last one be allowed.
    let left_today: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM (date_trunc('day', now() AT TIME ZONE 'UTC') \
         + interval '1 day' - now() AT TIME ZONE 'UTC'))::float8",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    if left_today < 30.0 {
        tokio::time::sleep(std::time::Duration::from_secs_f64(left_today + 1.0)).await;
    }
    let limit = Limit {
        per_transaction: amount("100"),
        per_day: amount("150"),
    };
    let send = |v: &str| request(TransferKind::Transfer, Some(a), Some(b), v);
    // In USD, the reference currency: a transfer's value is its amount.
    let spend = |v: &str| {
        Some(Spend {
            value: amount(v),
            limit,
        })
    };
    assert_eq!(
        ledger::apply(&db.pool, &send("100.01"), spend("100.01"))
            .await
            .unwrap_err()
            .code,
        ErrorCode::Forbidden
    );
    ledger::apply(&db.pool, &send("100"), spend("100"))
        .await
        .unwrap();
    ledger::apply(&db.pool, &send("50"), spend("50"))
        .await
        .unwrap();
    assert_eq!(
        ledger::apply(&db.pool, &send("0.01"), spend("0.01"))
            .await
            .unwrap_err()
            .code,
        ErrorCode::Forbidden,
        "the daily limit is spent"
    );
}

#[tokio::test]
async fn the_database_refuses_to_break_the_books_even_if_the_code_tried() {
    let db = ledger_db().await;
    let (a, b) = (
        wallet(&db.pool, "active").await,
        wallet(&db.pool, "active").await,
    );
    deposit(&db.pool, a, "10").await;

    let direct = sqlx::query("UPDATE wallets SET balance = 1000000 WHERE id = $1")
        .bind(a)
        .execute(&db.pool)
        .await;
    assert!(
        direct.is_err(),
        "a balance changes only through ledger lines"
    );

    let unvalued = sqlx::query(
        "INSERT INTO journal_entries (id, transfer_id, kind, currency, amount, from_wallet_id, to_wallet_id) \
         VALUES ($1, $2, 'transfer', 'USD', 5, $3, $4)",
    )
    .bind(Uuid::now_v7())
    .bind(Uuid::new_v4())
    .bind(a)
    .bind(b)
    .execute(&db.pool)
    .await;
    assert!(
        unvalued.is_err(),
        "money leaving a user is valued, so it counts against their limits"
    );

    let mut tx = db.pool.begin().await.unwrap();
    let entry = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO journal_entries (id, transfer_id, kind, currency, amount, from_wallet_id, to_wallet_id, \
           reference_value) \
         VALUES ($1, $2, 'transfer', 'USD', 5, $3, $4, 5)",
    )
    .bind(entry)
    .bind(Uuid::new_v4())
    .bind(a)
    .bind(b)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("INSERT INTO ledger_lines (entry_id, wallet_id, amount, balance_after) VALUES ($1, $2, 5, 0)")
        .bind(entry)
        .bind(b)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert!(
        tx.commit().await.is_err(),
        "a one-sided entry does not commit"
    );

    let overdraw = sqlx::query(
        "INSERT INTO ledger_lines (entry_id, wallet_id, amount, balance_after) \
         SELECT id, $1, -1000, 0 FROM journal_entries LIMIT 1",
    )
    .bind(a)
    .execute(&db.pool)
    .await;
    assert!(overdraw.is_err(), "a user balance cannot go negative");

    let rewrite = sqlx::query("UPDATE ledger_lines SET amount = amount * 2")
        .execute(&db.pool)
        .await;
    assert!(rewrite.is_err(), "the ledger is append-only");
    assert_books_balance(&db.pool, amount("10")).await;
}

#[tokio::test]
async fn a_voided_transfer_id_can_never_be_applied_and_an_applied_one_cannot_be_voided() {
    let db = ledger_db().await;
    let (a, b) = (
        wallet(&db.pool, "active").await,
        wallet(&db.pool, "active").await,
    );
    deposit(&db.pool, a, "50").await;
    let stuck = request(TransferKind::Transfer, Some(a), Some(b), "5");
    assert!(matches!(
        ledger::void(&db.pool, stuck.transfer_id, "timed out")
            .await
            .unwrap(),
        ledger::VoidOutcome::Voided
    ));
    let err = ledger::apply(&db.pool, &stuck, unlimited(&stuck))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Conflict);
    assert_eq!(err.details.unwrap()["reason"], "voided");

    let done = request(TransferKind::Transfer, Some(a), Some(b), "7");
    ledger::apply(&db.pool, &done, unlimited(&done))
        .await
        .unwrap();
    assert!(matches!(
        ledger::void(&db.pool, done.transfer_id, "timed out")
            .await
            .unwrap(),
        ledger::VoidOutcome::Applied { .. }
    ));
    assert_eq!(balance(&db.pool, b).await, amount("7"));
    assert_books_balance(&db.pool, amount("50")).await;
}
