-- KYC submissions and AML monitoring (service E).
CREATE TABLE kyc_submissions (
    id                    UUID        PRIMARY KEY,
    user_id               UUID        NOT NULL,
    document_type         TEXT        NOT NULL
                          CHECK (document_type IN ('passport', 'national_id', 'driving_license')),
    document_number       TEXT        NOT NULL CHECK (length(document_number) BETWEEN 5 AND 20),
    document_url          TEXT        CHECK (length(document_url) <= 2048),
    document_content_type TEXT,
    document_size         INTEGER     CHECK (document_size > 0),
    document_sha256       BYTEA,
    document_bytes        BYTEA,
    status                TEXT        NOT NULL CHECK (status IN ('pending', 'verified', 'rejected')),
    decided_by            TEXT,
    reason                TEXT,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    decided_at            TIMESTAMPTZ,
    CHECK (document_url IS NOT NULL OR document_bytes IS NOT NULL)
);

CREATE INDEX kyc_submissions_user_idx ON kyc_submissions (user_id, created_at DESC);
-- One open submission per user at a time.
CREATE UNIQUE INDEX kyc_submissions_one_pending ON kyc_submissions (user_id) WHERE status = 'pending';

-- Payments as E saw them, for velocity and structuring windows.
CREATE TABLE payment_observations (
    payment_id  UUID          PRIMARY KEY,
    user_id     UUID          NOT NULL,
    amount      NUMERIC(20,4) NOT NULL,
    currency    TEXT          NOT NULL,
    observed_at TIMESTAMPTZ   NOT NULL DEFAULT now()
);

CREATE INDEX payment_observations_user_idx ON payment_observations (user_id, observed_at DESC);

CREATE TABLE aml_alerts (
    id          UUID        PRIMARY KEY,
    user_id     UUID        NOT NULL,
    payment_id  UUID,
    rule        TEXT        NOT NULL CHECK (rule IN ('amount_threshold', 'velocity', 'structuring')),
    details     JSONB       NOT NULL DEFAULT '{}'::jsonb,
    status      TEXT        NOT NULL CHECK (status IN ('open', 'cleared', 'flagged')),
    decided_by  TEXT,
    reason      TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    decided_at  TIMESTAMPTZ
);

CREATE UNIQUE INDEX aml_alerts_payment_rule_key ON aml_alerts (payment_id, rule);
CREATE INDEX aml_alerts_status_idx ON aml_alerts (status, created_at);
CREATE INDEX aml_alerts_user_idx ON aml_alerts (user_id);
