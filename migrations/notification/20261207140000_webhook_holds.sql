-- Until when a user may add no webhook: an hour after their password was replaced
-- (`user.password_changed` removes their webhooks), so that whoever holds an access
-- token issued before the change (it lives at most an hour) cannot add one back. A new
-- table: the release before it runs unchanged.
CREATE TABLE webhook_holds (
    user_id UUID PRIMARY KEY,
    until TIMESTAMPTZ NOT NULL
);
