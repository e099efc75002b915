//! The events D consumes: one queue, one transaction per event.
//!
//! Most events tell a user what happened, on the channels they chose (`wants`). Mails
//! about access to the account ([`TRANSACTIONAL`]) are different: they go by email
//! only, to the address the event names (which no contact may have yet), whatever the
//! preferences.

use finflow_contracts::sealed::{self, Addressee, SealKey};
use finflow_contracts::user::{
    PasswordChanged, PasswordResetRequested, RegistrationRepeated, UserCreated,
    VerificationRequested,
};
use finflow_platform::events::consumer::{Handler, HandlerError};
use finflow_platform::events::{Event, QueueSpec, types};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::templates;

pub fn queue() -> QueueSpec {
    QueueSpec::new(
        "notification.events",
        &[
            types::USER_CREATED,
            types::USER_VERIFICATION_REQUESTED,
            types::USER_REGISTRATION_REPEATED,
            types::USER_PASSWORD_RESET_REQUESTED,
            types::USER_PASSWORD_CHANGED,
            types::USER_KYC_UPDATED,
            types::WALLET_STATUS_CHANGED,
            types::PAYMENT_COMPLETED,
            types::PAYMENT_FAILED,
            types::PAYMENT_ON_HOLD,
            types::PAYMENT_REVERSED,
        ],
    )
}

/// Event types whose mail is about access to the account (signing up, resetting or
/// changing the password): sent by email only (no in-app notification, no webhook), to the address
/// in the event, whatever the preferences, which cannot name them
/// (`api::set_preference`): whoever took an account must not be able to silence them.
/// The address may not be verified (a verification request) or may not be the caller's
/// (someone else's sign-up), so D learns no contact from them and mails only text of
/// its own besides A's token.
pub const TRANSACTIONAL: [&str; 4] = [
    types::USER_VERIFICATION_REQUESTED,
    types::USER_REGISTRATION_REPEATED,
    types::USER_PASSWORD_RESET_REQUESTED,
    types::USER_PASSWORD_CHANGED,
];

/// Where a transactional mail goes: the user and the address the event names.
fn addressee(event: &Event) -> Result<(Uuid, String), serde_json::Error> {
    match event.event_type.as_str() {
        types::USER_VERIFICATION_REQUESTED => {
            let requested: VerificationRequested = event.data_as()?;
            Ok((requested.user_id, requested.email))
        }
        types::USER_PASSWORD_RESET_REQUESTED => {
            let requested: PasswordResetRequested = event.data_as()?;
            Ok((requested.user_id, requested.email))
        }
        types::USER_PASSWORD_CHANGED => {
            let changed: PasswordChanged = event.data_as()?;
            Ok((changed.user_id, changed.email))
        }
        _ => {
            let repeated: RegistrationRepeated = event.data_as()?;
            Ok((repeated.user_id, repeated.email))
        }
    }
}

/// Events to their users in one statement, since each round trip costs PostgreSQL CPU.
/// Per event (`$1`..`$8` are arrays, one entry an event, in order): `reach` is what its
/// user wants (each channel on unless turned off), their address and, by the join,
/// their webhooks. PostgreSQL runs every data-modifying CTE, used or not, so each insert
/// is gated by `reach` in its WHERE. `deliveries_once_key` keeps a delivery once per
/// event, channel and target. A webhook with `$9` ([`MAX_PENDING_PER_WEBHOOK`])
/// deliveries pending is sent no more until they drain. Returns the users whose email
/// was wanted but whose address is not known.
const NOTIFY: &str = "\
    WITH told AS ( \
      SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], \
                           $6::jsonb[], $7::uuid[], $8::uuid[]) \
        WITH ORDINALITY AS t(user_id, event_type, event_id, title, body, payload, \
                             notification_id, delivery_id, n) \
    ), reach AS ( \
      SELECT told.*, \
        coalesce((SELECT enabled FROM preferences p WHERE p.user_id = told.user_id \
                   AND p.event_type = told.event_type AND p.channel = 'in_app'), true) AS in_app, \
        coalesce((SELECT enabled FROM preferences p WHERE p.user_id = told.user_id \
                   AND p.event_type = told.event_type AND p.channel = 'email'), true) AS email, \
        coalesce((SELECT enabled FROM preferences p WHERE p.user_id = told.user_id \
                   AND p.event_type = told.event_type AND p.channel = 'webhook'), true) AS webhook, \
        (SELECT email FROM contacts c WHERE c.user_id = told.user_id) AS address \
      FROM told \
    ), in_app_rows AS ( \
      INSERT INTO notifications (id, user_id, event_id, event_type, title, body) \
      SELECT notification_id, user_id, event_id, event_type, title, body FROM reach \
      WHERE reach.in_app ORDER BY n \
    ), email_rows AS ( \
      INSERT INTO deliveries (id, user_id, event_id, event_type, channel, target, subject, body, payload, status) \
      SELECT delivery_id, user_id, event_id, event_type, 'email', address, title, body, payload, 'pending' \
      FROM reach WHERE reach.email AND reach.address IS NOT NULL ORDER BY n \
      ON CONFLICT DO NOTHING \
    ), webhook_rows AS ( \
      INSERT INTO deliveries (id, user_id, event_id, event_type, channel, target, webhook_id, subject, body, payload, status) \
      SELECT gen_random_uuid(), r.user_id, r.event_id, r.event_type, 'webhook', w.url, w.id, r.title, r.body, r.payload, 'pending' \
      FROM reach r JOIN webhooks w ON w.user_id = r.user_id \
      WHERE r.webhook AND (SELECT count(*) FROM deliveries p \
                           WHERE p.webhook_id = w.id AND p.status = 'pending') < $9 \
      ORDER BY r.n \
      ON CONFLICT DO NOTHING \
    ) \
    SELECT user_id FROM reach WHERE reach.email AND reach.address IS NULL ORDER BY n";

/// Deliveries one webhook may have pending: past them its events are not queued for it.
/// A receiver that never answers keeps its deliveries pending through all their
/// attempts, and a user can cause events at will (freezing and unfreezing a wallet):
/// without a bound the table would grow by every event for as long as they kept it up.
pub const MAX_PENDING_PER_WEBHOOK: i64 = 1000;

/// What an event tells its user ([`templates::render`]), as [`tell`] takes it.
struct Told {
    event_id: Uuid,
    event_type: String,
    message: templates::Message,
    payload: serde_json::Value,
}

impl Told {
    /// What `event` tells its user, if anything.
    fn of(event: &Event) -> Result<Option<Self>, HandlerError> {
        let Some(message) = templates::render(event) else {
            return Ok(None);
        };
        let mut payload =
            serde_json::to_value(event).map_err(|e| HandlerError::Permanent(e.to_string()))?;
        // Whom a payment pays is there for E's four eyes: C's API does not show it to
        // the payer, and a webhook or the stored copy must not either (two wallets paid,
        // one owner, would be linked).
        if let Some(data) = payload
            .get_mut("data")
            .and_then(serde_json::Value::as_object_mut)
        {
            data.remove("payee_user_id");
        }
        Ok(Some(Self {
            event_id: event.id,
            event_type: event.event_type.clone(),
            message,
            payload,
        }))
    }
}

/// Tells each its user on the channels they want, in one statement ([`NOTIFY`]).
async fn tell(tx: &mut PgConnection, told: Vec<Told>) -> Result<(), sqlx::Error> {
    if told.is_empty() {
        return Ok(());
    }
    let n = told.len();
    let (mut users, mut kinds, mut ids) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut titles, mut bodies, mut payloads) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for t in told {
        users.push(t.message.user_id);
        kinds.push(t.event_type);
        ids.push(t.event_id);
        titles.push(t.message.title);
        bodies.push(t.message.body);
        payloads.push(t.payload);
    }
    let fresh = || (0..n).map(|_| Uuid::now_v7()).collect::<Vec<_>>();
    let skipped: Vec<Uuid> = sqlx::query_scalar(NOTIFY)
        .bind(users)
        .bind(kinds)
        .bind(ids)
        .bind(titles)
        .bind(bodies)
        .bind(payloads)
        .bind(fresh()) // the notifications
        .bind(fresh()) // the email deliveries
        .bind(MAX_PENDING_PER_WEBHOOK)
        .fetch_all(&mut *tx)
        .await?;
    for user in skipped {
        tracing::warn!(%user, "no email known for the user; email skipped");
    }
    Ok(())
}

/// Queues `message` as an email of `event` to `to`, once per event and address.
async fn queue_email(
    tx: &mut PgConnection,
    user: Uuid,
    event: &Event,
    to: &str,
    message: &templates::Message,
    payload: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO deliveries (id, user_id, event_id, event_type, channel, target, subject, body, payload, status) \
         VALUES ($1, $2, $3, $4, 'email', $5, $6, $7, $8, 'pending') ON CONFLICT DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(user)
    .bind(event.id)
    .bind(&event.event_type)
    .bind(to)
    .bind(&message.title)
    .bind(&message.body)
    .bind(payload)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn malformed(event: &Event, why: impl std::fmt::Display) -> HandlerError {
    HandlerError::Permanent(format!("malformed {}: {why}", event.event_type))
}

/// A mail about access ([`TRANSACTIONAL`]): one email to the event's address, nothing else.
/// A malformed one is dead-lettered, not dropped: someone waits for it.
async fn transactional(
    tx: &mut PgConnection,
    keys: &Notifier,
    event: &Event,
) -> Result<(), HandlerError> {
    let (user_id, email) = addressee(event).map_err(|e| malformed(event, e))?;
    let opened = open_token(keys, event, user_id, &email)?;
    let mut message = templates::render(opened.as_ref().unwrap_or(event))
        .ok_or_else(|| malformed(event, "no message to send"))?;
    if event.event_type == types::USER_PASSWORD_CHANGED {
        let removed = remove_webhooks(tx, user_id).await?;
        if removed > 0 {
            let (count, verb, it) = if removed == 1 {
                ("1 webhook", "was", "it")
            } else {
                (&*format!("{removed} webhooks"), "were", "them")
            };
            message.body.push_str(&format!(
                "\n\nThe account's {count} {verb} removed too: a webhook is a standing feed\n\
                 of the account's activity, and whoever replaced the password may not be\n\
                 you. Add {it} again in an hour if you need {it} (until then no webhook\n\
                 can be added, so that a session from before the change cannot add one)."
            ));
        }
    }
    // The token is a credential: the mail carries it, the stored payload does not.
    let mut payload =
        serde_json::to_value(event).map_err(|e| HandlerError::Permanent(e.to_string()))?;
    if let Some(data) = payload
        .get_mut("data")
        .and_then(serde_json::Value::as_object_mut)
    {
        data.remove("token");
    }
    queue_email(tx, user_id, event, &email, &message, &payload).await?;
    Ok(())
}

/// Removes `user`'s webhooks, failing what was still to be sent to them; how many. A
/// password replaced (changed, or reset through the mailbox) ends them as A ends the
/// sessions: each is a standing feed of the account's activity, and a stolen access
/// token was enough to add one.
async fn remove_webhooks(tx: &mut PgConnection, user: Uuid) -> Result<i64, sqlx::Error> {
    // After a registration under way, and before any for an hour: an access token
    // issued before the change lives at most that long (A's ACCESS_TOKEN_TTL_SECS is
    // at most 3600), and whoever held it must not add the webhook back.
    crate::api::hold_webhooks(tx, user).await?;
    sqlx::query_scalar(
        "WITH gone AS (DELETE FROM webhooks WHERE user_id = $1 RETURNING id), \
         stopped AS ( \
           UPDATE deliveries SET status = 'failed', claim = NULL, \
             last_error = 'the webhook was removed when the password was replaced' \
           WHERE status = 'pending' AND webhook_id IN (SELECT id FROM gone)) \
         SELECT count(*) FROM gone",
    )
    .bind(user)
    .fetch_one(&mut *tx)
    .await
}

/// `event` with its sealed token opened (A seals it for D alone:
/// [`finflow_contracts::sealed`]), for the mail; `None` for an event without one. A
/// token that does not open for this addressee under the key or the previous one
/// (copied from an event to someone else, or sealed under another key) is never mailed:
/// dead-lettered. A token in the clear, as releases of A before sealing published it,
/// is mailed as it is if it has the form of A's tokens ([`sealed::is_plain_token`]),
/// so that what they left on the bus during a rollout still reaches its owner.
fn open_token(
    keys: &Notifier,
    event: &Event,
    user_id: Uuid,
    email: &str,
) -> Result<Option<Event>, HandlerError> {
    let Some(sealed) = event.data.get("token").and_then(serde_json::Value::as_str) else {
        return Ok(None);
    };
    let to = Addressee {
        event_type: &event.event_type,
        user_id,
        email,
    };
    let token = if sealed::is_sealed(sealed) {
        let with = |key: &SealKey| key.open(sealed, &to);
        with(&keys.seal)
            .or_else(|refused| keys.previous_seal.as_ref().map_or(Err(refused), with))
            .map_err(|e| malformed(event, e))?
    } else if sealed::is_plain_token(sealed) {
        tracing::warn!(event_id = %event.id, "a token in the clear, from a release of A before sealing");
        sealed.to_owned()
    } else {
        return Err(malformed(event, "the token is neither sealed nor A's"));
    };
    let mut opened = event.clone();
    opened.data["token"] = serde_json::Value::String(token);
    Ok(Some(opened))
}

/// D's consumer: the keys A's tokens are sealed under, the previous one while a new
/// one is rolled out (`MAIL_SEAL_KEY_PREVIOUS`).
pub struct Notifier {
    pub seal: SealKey,
    pub previous_seal: Option<SealKey>,
}

impl Handler for Notifier {
    async fn handle(&self, tx: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        if TRANSACTIONAL.contains(&event.event_type.as_str()) {
            return transactional(tx, self, event).await;
        }
        if event.event_type == types::USER_CREATED {
            let user: UserCreated = event
                .data_as()
                .map_err(|e| HandlerError::Permanent(format!("malformed user.created: {e}")))?;
            sqlx::query(
                "INSERT INTO contacts (user_id, email, full_name) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id) DO UPDATE SET email = EXCLUDED.email, full_name = EXCLUDED.full_name, updated_at = now()",
            )
            .bind(user.user_id)
            .bind(&user.email)
            .bind(&user.full_name)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(told) = Told::of(event)? {
            tell(tx, vec![told]).await?;
        }
        Ok(())
    }

    /// The events that only tell their users, told in one statement per run of them.
    /// A mail about access ([`TRANSACTIONAL`]) or a `user.created` (which records the
    /// address the next events mail to) is applied alone, in its place, so every event sees what the ones
    /// before it wrote. A failure fails the batch, as [`each_in_turn`] does.
    ///
    /// [`each_in_turn`]: finflow_platform::events::consumer::each_in_turn
    async fn handle_batch(
        &self,
        tx: &mut PgConnection,
        events: &[&Event],
    ) -> Result<Vec<Result<(), HandlerError>>, HandlerError> {
        let mut run = Vec::new();
        for event in events {
            if TRANSACTIONAL.contains(&event.event_type.as_str())
                || event.event_type == types::USER_CREATED
            {
                tell(tx, std::mem::take(&mut run)).await?;
                self.handle(tx, event).await?;
            } else if let Some(told) = Told::of(event)? {
                run.push(told);
            }
        }
        tell(tx, run).await?;
        Ok(events.iter().map(|_| Ok(())).collect())
    }
}
