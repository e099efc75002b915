-- The sign-up mails (a verification token, or a notice that someone tried) each account's
-- address was sent in the last hour: at most three, whoever signs up with it from
-- wherever (`api::SIGN_UP_MAILS_PER_HOUR`). Older rows are deleted as the account's next
-- sign-up counts. A new table: the release before it runs unchanged.
CREATE TABLE sign_up_mails (
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    sent_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX sign_up_mails_by_user ON sign_up_mails (user_id, sent_at);
