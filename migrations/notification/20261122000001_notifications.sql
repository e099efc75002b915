-- Notifications (service D): who to reach, how, and what was sent.

-- Contacts learned from `user.created` (D never reads A's database).
CREATE TABLE contacts (
    user_id    UUID        PRIMARY KEY,
    email      TEXT        NOT NULL,
    full_name  TEXT        NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A row per explicit choice; no row means the default (email and in-app on).
CREATE TABLE preferences (
    user_id    UUID    NOT NULL,
    event_type TEXT    NOT NULL,
    channel    TEXT    NOT NULL CHECK (channel IN ('email', 'webhook', 'in_app')),
    enabled    BOOLEAN NOT NULL,
    PRIMARY KEY (user_id, event_type, channel)
);

CREATE TABLE webhooks (
    id         UUID        PRIMARY KEY,
    user_id    UUID        NOT NULL,
    url        TEXT        NOT NULL CHECK (length(url) <= 2048),
    secret     TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX webhooks_user_idx ON webhooks (user_id);

CREATE TABLE notifications (
    id         UUID        PRIMARY KEY,
    user_id    UUID        NOT NULL,
    event_id   UUID        NOT NULL,
    event_type TEXT        NOT NULL,
    title      TEXT        NOT NULL,
    body       TEXT        NOT NULL,
    read_at    TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX notifications_user_idx ON notifications (user_id, created_at DESC);

-- Email and webhook deliveries, worked off like an outbox, retried with backoff.
CREATE TABLE deliveries (
    id              UUID        PRIMARY KEY,
    user_id         UUID        NOT NULL,
    event_id        UUID        NOT NULL,
    event_type      TEXT        NOT NULL,
    channel         TEXT        NOT NULL CHECK (channel IN ('email', 'webhook')),
    target          TEXT        NOT NULL,
    webhook_id      UUID,
    subject         TEXT        NOT NULL,
    body            TEXT        NOT NULL,
    payload         JSONB       NOT NULL,
    status          TEXT        NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER     NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at    TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX deliveries_once_key ON deliveries (event_id, channel, target);
CREATE INDEX deliveries_due_idx ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_user_idx ON deliveries (user_id, created_at DESC);
